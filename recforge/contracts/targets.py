"""The hardware targets' one vocabulary: a target's name is its kind, everywhere.

The profiling stage measures a variant on each target; the registry keeps one champion per target (alias
``champion-<target>``); the fleet serves one target's champion. The same names appear in profiles (``target.name``
and ``target.kind``), registry aliases, `make fleet-up FLEET_TARGET=...` and `make rollout TARGET=...`.
``recforge/contracts/profile_schema.json`` lists the same kinds (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

from recforge.core.errors import ConfigError


@dataclass(frozen=True)
class TargetKind:
    name: str
    device: str  # "cpu" | "gpu" | "cpu+gpu"
    runtime: str  # what executes the ONNX graph while profiling
    summary: str
    profiled_here: bool = True  # the profiling stage of this build implements it


CPU_ONNXRUNTIME = "cpu-onnxruntime"
CPU_TRITON = "cpu-triton"
GPU_ONNXRUNTIME = "gpu-onnxruntime"
GPU_TRITON = "gpu-triton"
HYBRID_ONNXRUNTIME = "hybrid-onnxruntime"

TARGETS: dict[str, TargetKind] = {t.name: t for t in (
    TargetKind(CPU_ONNXRUNTIME, "cpu", "onnxruntime", "onnxruntime in-process on the CPU"),
    TargetKind(CPU_TRITON, "cpu", "tritonserver", "a real tritonserver node on the CPU (python backend + onnxruntime)"),
    TargetKind(GPU_ONNXRUNTIME, "gpu", "onnxruntime", "onnxruntime's CUDA provider (skipped without a GPU)"),
    TargetKind(HYBRID_ONNXRUNTIME, "cpu+gpu", "onnxruntime",
               "DeepRecSched split: large queries on the GPU, the rest on the CPU (skipped without a GPU)"),
    # sized by the Kubernetes generator from profiles measured on a GPU Triton node (NGC image, onnxruntime
    # backend); this build has no tritonserver that runs on a GPU, so it does not profile it itself
    TargetKind(GPU_TRITON, "gpu", "tritonserver", "a tritonserver node on a GPU (profiled outside this build)",
               profiled_here=False),
)}
PROFILED_TARGETS: tuple[str, ...] = tuple(name for name, t in TARGETS.items() if t.profiled_here)
DEFAULT_FLEET_TARGET = CPU_TRITON


def check_target(name: str, what: str = "target") -> str:
    """``name`` when it is a known target; a ConfigError listing the known ones otherwise."""
    if name not in TARGETS:
        raise ConfigError(f"{what} {name!r} is not a hardware target; choose one of {sorted(TARGETS)}")
    return name


def device_of(name: str) -> str:
    """The device a known target runs on: "cpu", "gpu" or "cpu+gpu"."""
    return TARGETS[check_target(name)].device
