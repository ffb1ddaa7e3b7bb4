"""Structured pruning of the hidden MLP units (recforge.pipeline.compression.prune)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recforge.models import build_model, resolved_hyperparams
from recforge.models.export import example_inputs, export_onnx, onnx_parity
from recforge.pipeline.compression.measure import count_parameters, macs_per_item
from recforge.pipeline.compression.prune import architecture_hyperparams, prunable_layers, prune_model
from tests.pipeline.compression.compression_testutil import (
    tiny_spec,
)


@pytest.mark.parametrize("family", ["dlrm", "din", "wide_deep", "ncf"])
def test_pruning_keeps_input_output_shapes_and_exports(family, tmp_path):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model(family, spec).eval()
    pruned = prune_model(model, spec, 0.5)
    inputs = example_inputs(spec, 16, seed=1)
    assert pruned(**inputs).shape == (16,)
    embeddings = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert {n: m.weight.shape for n, m in pruned.named_modules() if isinstance(m, nn.Embedding)} == embeddings
    before = [layer.out_features for layer in prunable_layers(model)]
    after = [layer.out_features for layer in prunable_layers(pruned)]
    assert after == [w - round(0.5 * w) for w in before]
    # the pruned architecture is again a build_model one, and exports to an ONNX graph that matches torch
    hyperparams = architecture_hyperparams(family, pruned, resolved_hyperparams(family, {}))
    build_model(family, spec, **hyperparams).load_state_dict(pruned.state_dict())
    path = export_onnx(pruned, spec, tmp_path / "pruned.onnx")
    assert onnx_parity(pruned, path, inputs) < 1e-5


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_pruning_reduces_parameters_and_macs_by_about_the_ratio(ratio):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model("dlrm", spec, embedding_dim=8, bottom_mlp=(64, 8), top_mlp=(128, 64, 1)).eval()
    pruned = prune_model(model, spec, ratio)

    def mlp_parameters(m: nn.Module) -> int:
        return sum(p.numel() for layer in m.modules() if isinstance(layer, nn.Linear) for p in layer.parameters())

    # a layer between two pruned layers loses 1 - (1 - r)^2 of its weights, one next to a fixed width loses r
    low, high = ratio - 0.05, 1 - (1 - ratio) ** 2 + 0.02
    assert low <= 1 - mlp_parameters(pruned) / mlp_parameters(model) <= high
    assert count_parameters(model) - count_parameters(pruned) == \
        mlp_parameters(model) - mlp_parameters(pruned)  # the embedding tables are untouched
    macs, pruned_macs = macs_per_item(model, spec), macs_per_item(pruned, spec)
    assert 0.75 * ratio <= 1 - pruned_macs / macs <= high
    assert macs_per_item(model, spec, batch=32) == pytest.approx(macs, rel=0.01)  # per item
