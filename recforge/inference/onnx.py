"""Running an ONNX model with onnxruntime: sessions, batched predictions, single-batch latency.

Shared by compression (parity of exported graphs), the parity gate, profiling and the load generator. ``inputs``
is anything with an ``inputs()`` method returning named arrays (a features Split) or a mapping of arrays/tensors
named as ``recforge.contracts.features.INPUT_NAMES``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.features import INPUT_NAMES, OUTPUT_NAME
from recforge.core.timing import median_ms


def onnx_session(onnx_path: str | Path, threads: int = 2, providers: Sequence[Any] | None = None) -> Any:
    """A session with all graph optimisations, ``threads`` intra-op threads and sequential execution, on the CPU
    unless ``providers`` says otherwise (e.g. CUDA first, CPU as fallback)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=list(providers or ["CPUExecutionProvider"]))


def numpy_inputs(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    raw = inputs.inputs() if hasattr(inputs, "inputs") else inputs
    return {name: np.ascontiguousarray(raw[name].numpy() if hasattr(raw[name], "numpy") else raw[name])
            for name in INPUT_NAMES}


def onnx_predict(onnx_path: str | Path, split: Mapping[str, Any], batch_size: int = 8192,
                 threads: int = 2) -> np.ndarray:
    """Probabilities of the ONNX model for every row of ``split`` (a Split or a dict of input arrays)."""
    session = onnx_session(onnx_path, threads)
    inputs = numpy_inputs(split)
    rows = len(inputs["sparse"])
    out = [session.run([OUTPUT_NAME], {k: v[s:s + batch_size] for k, v in inputs.items()})[0]
           for s in range(0, rows, batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def onnx_latency_ms(onnx_path: str | Path, inputs: Mapping[str, Any], threads: int = 2,
                    repeats: int = 100, warmup: int = 10) -> float:
    """Median milliseconds of one onnxruntime run over ``inputs`` (one batch), ``threads`` intra-op threads."""
    session = onnx_session(onnx_path, threads)
    feed = numpy_inputs(inputs)
    return median_ms(lambda: session.run([OUTPUT_NAME], feed), repeats, warmup)
