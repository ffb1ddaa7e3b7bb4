"""ONNX export of any model family, with a dynamic batch dimension, plus a torch-vs-onnxruntime check.

The exported graph has the four inputs of ``recforge.contracts.features.INPUT_NAMES`` (all of them, even those a
family ignores, so every model is served the same way) and the one output ``OUTPUT_NAME``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from recforge.contracts.features import INPUT_NAMES, OUTPUT_NAME, FeatureSpec

MAX_BATCH = 1 << 16  # upper bound torch.export checks the batch dimension against
FORBIDDEN_OPS = frozenset({"Loop"})  # e.g. from nn.EmbeddingBag; runs element by element in onnxruntime
_EXPORT_BATCH = 4  # torch.export specialises dims of size 0/1, so trace with a batch > 1


def example_inputs(spec: FeatureSpec, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid random model inputs, keyed by input name.

    sparse ids cover each whole vocabulary (0 = unknown included); genres and history hold a random
    number (0 to all slots) of non-zero ids, left-aligned and 0-padded as in the input contract.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed)

    def padded_ids(vocabulary: int, slots: int) -> torch.Tensor:
        ids = torch.randint(1, vocabulary, (batch_size, slots), generator=generator)
        lengths = torch.randint(0, slots + 1, (batch_size, 1), generator=generator)
        return torch.where(torch.arange(slots) < lengths, ids, torch.zeros_like(ids))

    sparse = torch.stack(
        [torch.randint(0, c, (batch_size,), generator=generator) for c in spec.sparse_cardinalities], dim=1
    )
    return {
        "sparse": sparse,
        "genres": padded_ids(spec.num_genres, spec.genre_slots),
        "history": padded_ids(spec.num_items, spec.history_length),
        "dense": torch.randn(batch_size, spec.num_dense, generator=generator),
    }


def onnx_op_types(path: str | os.PathLike) -> set[str]:
    """Every op type in the ONNX model at ``path``, including subgraphs and local functions."""
    model = onnx.load(str(path), load_external_data=False)
    op_types: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            op_types.add(node.op_type)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(model.graph)
    for function in model.functions:
        for node in function.node:
            op_types.add(node.op_type)
    return op_types


def export_onnx(
    model: nn.Module,
    spec: FeatureSpec,
    path: str | os.PathLike,
    opset: int = 18,
    max_batch: int = MAX_BATCH,
) -> Path:
    """Export ``model.forward`` (probabilities) to ONNX at ``path`` and return the path.

    The batch dimension of every input and of the output is dynamic (1..max_batch). Weights are stored
    in the .onnx file itself unless the model exceeds protobuf's 2 GB limit, in which case the exporter
    writes them to an external data file next to it. Raises RuntimeError if the graph has a ``Loop``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(spec, _EXPORT_BATCH)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Every input's batch axis is the same Dim, which the exporter reports once per input.
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
            # torch's own exporter internals still use the deprecated LeafSpec check.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(
                model,
                tuple(inputs[name] for name in INPUT_NAMES),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,
                dynamic_shapes={name: {0: batch} for name in INPUT_NAMES},
            )
    finally:
        model.train(was_training)
    graph_inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    problem = None
    if graph_inputs != list(INPUT_NAMES):
        problem = f"exported graph inputs are {graph_inputs}, expected {list(INPUT_NAMES)}"
    elif forbidden := onnx_op_types(path) & FORBIDDEN_OPS:
        problem = f"exported graph contains {sorted(forbidden)} ops, which are slow in onnxruntime"
    if problem:
        path.unlink()  # so that nothing downstream picks up a rejected model
        raise RuntimeError(problem)
    return path


def onnx_parity(model: nn.Module, onnx_path: str | os.PathLike, inputs: Mapping[str, torch.Tensor]) -> float:
    """Max abs difference between ``model(**inputs)`` in torch and the ONNX model in onnxruntime."""
    import onnxruntime as ort  # imported here: only export validation needs it

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(*(inputs[name] for name in INPUT_NAMES)).numpy()
    finally:
        model.train(was_training)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    (actual,) = session.run([OUTPUT_NAME], feed)
    if actual.shape != expected.shape:
        raise ValueError(f"onnxruntime output shape {actual.shape} != torch output shape {expected.shape}")
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0
