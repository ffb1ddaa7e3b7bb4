"""The interface every hardware target implements (:class:`HardwareTarget`), closing what targets hold, and
the one-line reason a target failed."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recforge.core.errors import first_line


@runtime_checkable
class HardwareTarget(Protocol):
    """One hardware + serving stack a variant is profiled on.

    A target may also have ``close()`` (called when profiling is done with it, also on failure),
    ``latency_vs_batch(load_target, batches, repeats)`` (single-request latency measured through its own serving
    stack instead of in-process onnxruntime), ``apparatus()`` (the context its measurements run in: a
    server-side target moves the load generator off its server's CPUs; :func:`apparatus_of`) and
    ``apparatus_doc()`` (where the load generator ran, the profile's ``target.apparatus``). A load target may
    have ``activate()`` (called before each use: a server-side target makes its knob setting the live one) and
    ``close()``.
    """

    name: str  # one profile per name; a real target's name is its kind (recforge.contracts.targets)
    kind: str  # the profile schema's target.kind

    def available(self) -> tuple[bool, str]:
        """(True, "") when this target can run here, else (False, why)."""
        ...

    def describe(self) -> str:
        """The device (CPU model and cores, or GPU model and memory)."""
        ...

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> Any:
        """A ``recforge.inference.loadgen`` target (name, infer(n_items)) serving ``onnx_path`` with these knobs."""
        ...


def apparatus_of(target: Any) -> contextlib.AbstractContextManager:
    """The context ``target``'s measurements run in: its ``apparatus()``, or none."""
    return target.apparatus() if hasattr(target, "apparatus") else contextlib.nullcontext()


def close_parts(*parts: Any) -> None:
    """``close()`` each part that has one (targets and load targets may hold servers or sessions)."""
    for part in parts:
        if hasattr(part, "close"):
            part.close()


def failure_reason(err: BaseException) -> str:
    """"RuntimeError: <first line of the message>": why a target was skipped, on one line."""
    return f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
