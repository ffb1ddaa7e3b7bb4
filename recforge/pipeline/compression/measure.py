"""Measurements of a model and its ONNX variants: parameters, MACs per item, ONNX-vs-torch parity, latency."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.contracts.features import INPUT_NAMES
from recforge.core.errors import DataError
from recforge.core.timing import median_ms
from recforge.inference.onnx import numpy_inputs, onnx_predict
from recforge.models.export import example_inputs

if TYPE_CHECKING:
    import torch
    from torch import nn

    from recforge.contracts.features import FeatureSpec
    from recforge.pipeline.data.features import Split


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_item(model: nn.Module, spec: FeatureSpec, batch: int = 8) -> float:
    """Multiply-accumulates per scored item, as torch-pruning's op counter counts them (Linear, matmul, ...).

    The inputs are passed positionally, so the counter sees the batch size and returns MACs at batch B / B.
    """
    import torch_pruning as tp

    inputs = example_inputs(spec, batch)
    was_training = model.training
    model.eval()
    try:
        macs, _ = tp.utils.count_ops_and_params(model, tuple(inputs[n] for n in INPUT_NAMES))
    finally:
        model.train(was_training)
    return float(macs)


def _torch_inputs(inputs: Split | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(v) for k, v in numpy_inputs(inputs).items()}


def onnx_max_abs_diff(model: nn.Module, onnx_path: str | Path, inputs: Split | Mapping[str, Any]) -> float:
    """Max |torch probability - onnxruntime probability| over ``inputs``."""
    import torch

    model.eval()
    with torch.no_grad():
        expected = model(**_torch_inputs(inputs)).numpy().astype(np.float64)
    actual = onnx_predict(onnx_path, inputs)
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0


def torch_latency_ms(model: nn.Module, inputs: Split | Mapping[str, Any], threads: int = 2,
                     repeats: int = 100, warmup: int = 10) -> float:
    """Median milliseconds of one PyTorch eager forward (eval, no_grad) over ``inputs``, ``threads`` threads.

    Measured as served: with deterministic algorithms off (``recforge.pipeline.training.train.seed_everything``
    turns them on for the whole process, which slows CPU inference), restored afterwards.
    """
    import torch

    feed = _torch_inputs(inputs)
    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    model.eval()
    try:
        with torch.no_grad():
            return median_ms(lambda: model(**feed), repeats, warmup)
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def latency_inputs(split: Split, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` rows of ``split`` (rows repeated if it is shorter)."""
    inputs = numpy_inputs(split)
    rows = len(inputs["sparse"])
    if rows == 0:
        raise DataError("cannot measure latency on an empty split")
    index = np.arange(batch) % rows
    return {k: np.ascontiguousarray(v[index]) for k, v in inputs.items()}
