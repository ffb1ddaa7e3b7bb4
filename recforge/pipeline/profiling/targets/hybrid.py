"""The ``hybrid-onnxruntime`` target: DeepRecSched's CPU+GPU scheduler (Gupta et al., ISCA 2020). Queries of
more than ``gpu_threshold`` items run whole on a GPU target, the others are split into sub-batches on the CPU
target; knobs ``sub_batch``, ``gpu_threshold`` (searched together), ``threads``, ``gpu_workers``. Available when
both parts are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.contracts.targets import HYBRID_ONNXRUNTIME
from recforge.inference.loadgen import MAX_ITEMS, Offload
from recforge.pipeline.profiling.targets.base import HardwareTarget, close_parts
from recforge.pipeline.profiling.targets.cpu_onnxruntime import CpuOnnxRuntime
from recforge.pipeline.profiling.targets.gpu_onnxruntime import GpuOnnxRuntime


class HybridLoadTarget:
    """The load target of a :class:`HybridCpuGpu` setting: ``infer`` runs on the CPU part (sub-batches); the GPU
    part takes whole queries through :meth:`offload`."""

    def __init__(self, cpu: Any, gpu: Any):
        self.cpu, self.gpu = cpu, gpu
        self.name = f"{cpu.name} + {gpu.name}"
        self.max_batch = int(getattr(cpu, "max_batch", MAX_ITEMS))

    def infer(self, n_items: int) -> None:
        self.cpu.infer(n_items)

    def offload(self, knobs: Mapping[str, Any]) -> Offload:
        return Offload(self.gpu, int(knobs["gpu_threshold"]), workers=int(knobs.get("gpu_workers", 1)))

    def close(self) -> None:
        close_parts(self.cpu, self.gpu)


class HybridCpuGpu:
    """DeepRecSched's hybrid scheduling (kind ``hybrid-onnxruntime``): one CPU target and one GPU target serve
    the same variant; the load generator sends a query of more than ``gpu_threshold`` items whole to the GPU
    (``recforge.inference.loadgen.Offload``) and splits the smaller ones into sub-batches on the CPU. The threshold is
    hill-climbed together with the sub-batch size: large queries amortise the GPU's launch and copy cost, small
    ones are cheaper on the CPU cores (DeepRecSys fig. 11: the optimal threshold moves with load and model).
    Available when both parts are; the reason names the missing part otherwise."""

    kind = name = HYBRID_ONNXRUNTIME

    def __init__(self, cpu: HardwareTarget | None = None, gpu: HardwareTarget | None = None):
        self.cpu = cpu if cpu is not None else CpuOnnxRuntime()
        self.gpu = gpu if gpu is not None else GpuOnnxRuntime()
        self.threads = int(getattr(self.cpu, "threads", 1))
        self.max_batch = int(getattr(self.cpu, "max_batch", MAX_ITEMS))

    def available(self) -> tuple[bool, str]:
        for part in (self.cpu, self.gpu):
            ok, reason = part.available()
            if not ok:
                named = f" {part.name!r}" if part.name != part.kind else ""
                return False, f"needs {part.kind} target{named}: {reason}"
        return True, ""

    def describe(self) -> str:
        return f"{self.cpu.describe()} + {self.gpu.describe()}"

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> HybridLoadTarget:
        cpu = self.cpu.make_load_target(onnx_path, spec, knobs)
        try:
            gpu = self.gpu.make_load_target(onnx_path, spec, knobs)
        except BaseException:
            close_parts(cpu)
            raise
        return HybridLoadTarget(cpu, gpu)

    def close(self) -> None:
        close_parts(self.cpu, self.gpu)

    def __repr__(self) -> str:
        return f"HybridCpuGpu(cpu={self.cpu!r}, gpu={self.gpu!r})"
