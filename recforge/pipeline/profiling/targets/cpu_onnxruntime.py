"""The ``cpu-onnxruntime`` target: onnxruntime's CPU provider in-process; knobs ``threads`` (intra-op),
``sub_batch``, ``workers``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.contracts.targets import CPU_ONNXRUNTIME
from recforge.core.errors import ConfigError
from recforge.core.hw import cpu_count, cpu_model
from recforge.inference.loadgen import MAX_ITEMS, OnnxTarget


class CpuOnnxRuntime:
    """onnxruntime on the CPU (``recforge.inference.loadgen.OnnxTarget``); ``threads`` is the default intra-op
    thread count, overridden by a ``threads`` knob."""

    kind = name = CPU_ONNXRUNTIME

    def __init__(self, threads: int = 1, *, max_batch: int = MAX_ITEMS, seed: int = 0):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"CpuOnnxRuntime.threads must be an integer >= 1, got {threads!r}")
        self.threads, self.max_batch, self.seed = threads, max_batch, seed

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as err:
            return False, f"onnxruntime is not importable: {err}"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return False, "onnxruntime has no CPUExecutionProvider"
        return True, ""

    def describe(self) -> str:
        return f"{cpu_model()}, {cpu_count()} cores"

    def apparatus_doc(self) -> dict[str, str]:
        """The load generator calls the session in its own process (the profile's ``target.apparatus``)."""
        return {"placement": "in-process"}

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> OnnxTarget:
        return OnnxTarget(onnx_path, spec, threads=int(knobs.get("threads", self.threads)),
                          max_batch=self.max_batch, seed=self.seed)

    def __repr__(self) -> str:
        return f"CpuOnnxRuntime(threads={self.threads})"
