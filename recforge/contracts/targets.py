"""The hardware targets' one vocabulary: a target's name is its kind, everywhere.

The profiling stage measures a variant on each target; the registry keeps one champion per target (alias
``champion-<target>``); the fleet serves one target's champion. The same four names appear in profiles,
registry aliases, `make fleet-up FLEET_TARGET=...` and `make rollout TARGET=...`.
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


CPU_ONNXRUNTIME = "cpu-onnxruntime"
CPU_TRITON = "cpu-triton"
GPU_ONNXRUNTIME = "gpu-onnxruntime"
HYBRID_ONNXRUNTIME = "hybrid-onnxruntime"

TARGETS: dict[str, TargetKind] = {t.name: t for t in (
    TargetKind(CPU_ONNXRUNTIME, "cpu", "onnxruntime", "onnxruntime in-process on the CPU"),
    TargetKind(CPU_TRITON, "cpu", "tritonserver", "a real tritonserver node on the CPU (python backend + onnxruntime)"),
    TargetKind(GPU_ONNXRUNTIME, "gpu", "onnxruntime", "onnxruntime's CUDA provider (skipped without a GPU)"),
    TargetKind(HYBRID_ONNXRUNTIME, "cpu+gpu", "onnxruntime",
               "DeepRecSched split: large queries on the GPU, the rest on the CPU (skipped without a GPU)"),
)}
DEFAULT_FLEET_TARGET = CPU_TRITON


def check_target(name: str, what: str = "target") -> str:
    """``name`` when it is a known target; a ConfigError listing the known ones otherwise."""
    if name not in TARGETS:
        raise ConfigError(f"{what} {name!r} is not a hardware target; choose one of {sorted(TARGETS)}")
    return name
