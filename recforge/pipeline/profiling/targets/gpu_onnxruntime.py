"""The ``gpu-onnxruntime`` target: onnxruntime's CUDA provider. Available when a CUDA device is present and
onnxruntime has the CUDA provider, skipped with the missing piece named otherwise. Not run on a GPU in this
project's CI (none there); FP16 variants are profiled only when it is available."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.contracts.targets import GPU_ONNXRUNTIME
from recforge.core.errors import ConfigError
from recforge.core.timing import median_ms
from recforge.inference.loadgen import MAX_ITEMS, OnnxTarget


def cuda_devices() -> list[str]:
    """Names of the CUDA devices here ([] when none): torch's view, else ``nvidia-smi -L`` (this venv's torch is
    the CPU wheel, which sees no GPU even on a GPU machine)."""
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_properties(i).name for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA install is "no device" here
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [line.split(":", 1)[1].split("(")[0].strip() for line in out.stdout.splitlines()
                if line.startswith("GPU ")] if out.returncode == 0 else []
    return []


class GpuOnnxRuntime:
    """onnxruntime's CUDA execution provider (kind ``gpu-onnxruntime``): the same ONNX variant, the same load
    generator, sub-batches run on the GPU. Available when a CUDA device is present *and* onnxruntime has the
    CUDA provider (the ``onnxruntime-gpu`` build); skipped with the missing piece named otherwise."""

    kind = name = GPU_ONNXRUNTIME

    def __init__(self, *, device_index: int = 0, max_batch: int = MAX_ITEMS, seed: int = 0):
        self.device_index, self.max_batch, self.seed = device_index, max_batch, seed
        self.threads = 1  # host threads per session; the GPU does the work

    def available(self) -> tuple[bool, str]:
        devices = cuda_devices()
        if not devices:
            return False, "no CUDA device: skipped"
        try:
            import onnxruntime as ort
        except ImportError as err:
            return False, f"onnxruntime is not importable: {err}"
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, (f"CUDA device {devices[0]} present, but onnxruntime {ort.__version__} has no "
                           "CUDAExecutionProvider (the serving environment needs onnxruntime-gpu): skipped")
        return True, ""

    def describe(self) -> str:
        devices = cuda_devices()
        return devices[self.device_index] if len(devices) > self.device_index else "CUDA device"

    def providers(self) -> list[Any]:
        return [("CUDAExecutionProvider", {"device_id": self.device_index}), "CPUExecutionProvider"]

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> OnnxTarget:
        target = OnnxTarget(onnx_path, spec, threads=1, max_batch=self.max_batch, seed=self.seed,
                            providers=self.providers())
        if "CUDAExecutionProvider" not in target.session.get_providers():
            raise ConfigError(f"target {self.name}: onnxruntime fell back to the CPU for {onnx_path}")
        return target

    def latency_vs_batch(self, load_target: OnnxTarget, batches: Sequence[int], repeats: int) -> dict[int, float]:
        """{batch: median ms of one request alone} on the GPU session (host-device copies included)."""
        return {b: median_ms(lambda b=b: load_target.infer(b), repeats, warmup=1)  # warm-up: kernel selection
                for b in sorted(set(int(b) for b in batches if int(b) <= load_target.max_batch))}

    def __repr__(self) -> str:
        return f"GpuOnnxRuntime(device={self.device_index})"
