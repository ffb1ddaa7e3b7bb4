"""What the load generator drives: the :class:`Target` interface, a callable and an onnxruntime target, the
feature-spec file reader they share, and the CPU/accelerator :class:`Offload` split."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recforge.contracts.features import OUTPUT_NAME, FeatureSpec
from recforge.core.errors import ConfigError, first_line
from recforge.inference.loadgen.settings import MAX_ITEMS, MAX_THREADS, MAX_WORKERS, check_int, check_number
from recforge.inference.onnx import onnx_session
from recforge.models.export import example_inputs


@runtime_checkable
class Target(Protocol):
    """What the load generator drives: ``infer(n)`` runs one sub-batch of ``n`` items (the target owns its
    inputs) and must be safe to call from several threads at once. ``max_batch`` (optional) bounds ``n``. If
    ``infer`` returns a string (e.g. the fleet node that answered), it is recorded in the query's ``served_by``."""

    name: str
    def infer(self, n_items: int) -> None: ...


class CallableTarget:
    """A target that calls ``fn(n_items)``: for tests and synthetic latency models."""

    def __init__(self, fn: Callable[[int], Any], name: str | None = None, max_batch: int = MAX_ITEMS):
        if not callable(fn):
            raise ConfigError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.max_batch = check_int("max_batch", max_batch, 1, MAX_ITEMS)

    @classmethod
    def sleeping(cls, fixed_ms: float, per_item_ms: float = 0.0, name: str | None = None) -> CallableTarget:
        """A synthetic server whose sub-batch of n items takes ``fixed_ms + per_item_ms * n`` (sleeps)."""
        fixed_ms = check_number("fixed_ms", fixed_ms, 0.0, 60_000.0, low_open=False, unit="ms")
        per_item_ms = check_number("per_item_ms", per_item_ms, 0.0, 60_000.0, low_open=False, unit="ms")

        def sleep(n_items: int) -> None:
            time.sleep((fixed_ms + per_item_ms * n_items) / 1000.0)

        return cls(sleep, name or f"sleep({fixed_ms:g}ms + {per_item_ms:g}ms/item)")

    def infer(self, n_items: int) -> Any:
        return self.fn(n_items)


def load_spec(spec: FeatureSpec | str | Path) -> FeatureSpec:
    """A FeatureSpec, or one read from a spec JSON file (as training writes next to a model)."""
    if isinstance(spec, FeatureSpec):
        return spec
    path = Path(spec)
    try:
        return FeatureSpec.from_json(path.read_text())
    except OSError as err:
        raise ConfigError(f"spec file {path} cannot be read: {err.strerror or err}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"spec file {path} is not a feature spec: {first_line(err)}") from None


class OnnxTarget:
    """An ONNX model of the named-tensor contract in onnxruntime (``threads`` intra-op threads).

    Inputs for ``max_batch`` rows are built once from ``recforge.models.export.example_inputs(spec, max_batch,
    seed)``; a sub-batch of n items runs on their first n rows (views, no copies). One session is shared by
    all workers (``InferenceSession.run`` is thread-safe). The constructor runs the model once at
    ``max_batch`` (warm-up, and a check that the model takes inputs of this spec).
    """

    def __init__(self, onnx_path: str | Path, spec: FeatureSpec | str | Path, threads: int = 1,
                 max_batch: int = MAX_ITEMS, seed: int = 0, providers: Sequence[Any] | None = None):
        self.threads = check_int("threads", threads, 1, MAX_THREADS)
        self.max_batch = check_int("max_batch", max_batch, 1, MAX_ITEMS)
        seed = check_int("seed", seed, 0, 2**63 - 1)
        self.path = Path(onnx_path)
        self.name = self.path.name
        self.spec = load_spec(spec)
        if not self.path.is_file():
            raise ConfigError(f"onnx_path {self.path} is not a file")
        try:
            self.session = onnx_session(self.path, self.threads, providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ConfigError(f"onnx_path {self.path} cannot be loaded by onnxruntime: {first_line(err)}") from None
        built = example_inputs(self.spec, self.max_batch, seed)
        inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in built.items()}
        names = [i.name for i in self.session.get_inputs()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ConfigError(f"onnx_path {self.path} has inputs {missing} outside the contract {sorted(inputs)}")
        self._inputs = {n: inputs[n] for n in names}
        self._outputs = [OUTPUT_NAME] if OUTPUT_NAME in [o.name for o in self.session.get_outputs()] else None
        try:
            self.infer(self.max_batch)
            self.infer(1)
        except Exception as err:
            raise ConfigError(f"onnx_path {self.path} does not run on inputs of this spec: "
                              f"{first_line(err)}") from None

    def infer(self, n_items: int) -> None:
        if not 1 <= n_items <= self.max_batch:
            raise ValueError(f"sub-batch of {n_items} items outside [1, {self.max_batch}] (max_batch)")
        self.session.run(self._outputs, {name: array[:n_items] for name, array in self._inputs.items()})


@dataclass(frozen=True)
class Offload:
    """DeepRecSched's CPU/accelerator split (Gupta et al., ISCA 2020, sec. 5): a query of more than ``threshold``
    items goes whole to ``target`` (e.g. a GPU session), run by ``workers`` threads of its own (one per stream);
    smaller queries stay on the CPU workers, split into sub-batches. Large queries amortise the accelerator's
    fixed launch and copy cost, small ones would only queue behind them. A query larger than the target's
    ``max_batch`` is cut into requests of ``max_batch`` items, all on the accelerator."""

    target: Target
    threshold: int  # items; a query of more items is offloaded (MAX_ITEMS: nothing is)
    workers: int = 1

    def __post_init__(self) -> None:
        # not a typed_config: it is built with positional arguments, and typed_config's errors would name those
        # by position ("Offload.1") instead of by field
        if not isinstance(self.target, Target):
            raise ConfigError(f"offload target must have a name and an infer(n_items) method, got {self.target!r}")
        check_int("offload threshold", self.threshold, 0, MAX_ITEMS)
        check_int("offload workers", self.workers, 1, MAX_WORKERS)

    @property
    def max_batch(self) -> int:
        return int(getattr(self.target, "max_batch", MAX_ITEMS))

    def takes(self, n_items: int) -> bool:
        return n_items > self.threshold

