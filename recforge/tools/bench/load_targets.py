"""What the benchmark puts under load: the PyTorch-eager baseline, ONNX models on fixed real rows, synthetic RMC
models on their Zipf input pool, and the profiling stage's cpu-onnxruntime target serving those same rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recforge.inference.onnx import onnx_session
from recforge.pipeline.profiling.targets.cpu_onnxruntime import CpuOnnxRuntime


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch with ``threads`` intra-op threads and non-deterministic (fast) kernels, restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class TorchEagerTarget:
    """The baseline: ``model(**inputs[:n])`` in PyTorch eager (eval, no_grad) on fixed input rows."""

    def __init__(self, model: Any, inputs: Mapping[str, np.ndarray], name: str = "torch-eager-fp32"):
        import torch

        self.model, self.name = model.eval(), name
        self.feed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        self.max_batch = min(len(v) for v in self.feed.values())
        self._no_grad = torch.no_grad

    def infer(self, n_items: int) -> None:
        with self._no_grad():
            self.model(**{k: v[:n_items] for k, v in self.feed.items()})


class ArrayOnnxTarget:
    """An ONNX model in onnxruntime (``threads`` intra-op threads) on fixed input rows (the same as the baseline)."""

    def __init__(self, onnx_path: str | Path, inputs: Mapping[str, np.ndarray], threads: int = 1):
        self.session = onnx_session(onnx_path, threads)
        self.name = f"{Path(onnx_path).name}@{threads}t"
        names = [i.name for i in self.session.get_inputs()]
        self.feed = {n: np.ascontiguousarray(inputs[n]) for n in names}
        self.max_batch = min(len(v) for v in self.feed.values())

    def infer(self, n_items: int) -> None:
        self.session.run(None, {k: v[:n_items] for k, v in self.feed.items()})


class SyntheticOnnxTarget:
    """A synthetic RMC model in onnxruntime; each sub-batch is the next window of a Zipf/lognormal input pool."""

    def __init__(self, onnx_path: str | Path, pool: Any, threads: int = 1):
        self.session, self.pool = onnx_session(onnx_path, threads), pool
        self.name = f"{Path(onnx_path).name}@{threads}t"
        self.max_batch = min(1024, pool.items)

    def infer(self, n_items: int) -> None:
        self.session.run(None, self.pool.batch(n_items))


class RealRowsCpuOnnxRuntime(CpuOnnxRuntime):
    """The profiling stage's cpu-onnxruntime target, serving on fixed real rows (the baseline's) instead of example
    inputs built from the spec."""

    def __init__(self, inputs: Mapping[str, np.ndarray], threads: int):
        super().__init__(threads=threads, max_batch=min(len(v) for v in inputs.values()))
        self.rows = inputs

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> ArrayOnnxTarget:
        return ArrayOnnxTarget(onnx_path, self.rows, int(knobs.get("threads", self.threads)))

