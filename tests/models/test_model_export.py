"""ONNX export round trip of every family: onnxruntime agrees with torch at batch 1 and 7, no Loop."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from recforge.contracts.features import INPUT_NAMES, OUTPUT_NAME
from recforge.models import FAMILIES, build_model
from recforge.models.export import example_inputs, export_onnx, onnx_op_types, onnx_parity
from tests.models.testutil import small_spec


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Each family exported once (export takes seconds), shared by the tests below."""
    out_dir = tmp_path_factory.mktemp("onnx")
    models = {}
    for family in sorted(FAMILIES):
        torch.manual_seed(0)
        model = build_model(family, small_spec())
        models[family] = (model, export_onnx(model, small_spec(), out_dir / f"{family}.onnx"))
    return models


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("batch_size", [1, 7])
def test_onnxruntime_matches_torch(exported, family, batch_size):
    model, path = exported[family]
    assert onnx_parity(model, path, example_inputs(small_spec(), batch_size, seed=batch_size)) < 1e-5


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_graph_has_all_inputs_dynamic_batch_and_no_loop(exported, family):
    _, path = exported[family]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)  # also those the family ignores
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    for value in [*graph.input, *graph.output]:
        batch_dim = value.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value, value.name
    assert "Loop" not in onnx_op_types(path)
    assert "Gather" in onnx_op_types(path)


class EmbeddingBagModel(torch.nn.Module):
    """nn.EmbeddingBag over history: its ONNX export is a Loop, which export_onnx must reject."""

    def __init__(self):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(small_spec().num_items, 2, mode="mean", padding_idx=0)

    def forward(self, sparse, genres, history, dense):
        return torch.sigmoid(
            self.bag(history).sum(-1) + dense.sum(-1) + (sparse.sum(-1) + genres.sum(-1)) * 0
        )


def test_export_rejects_loop_and_removes_the_file(tmp_path):
    path = tmp_path / "bag.onnx"
    with pytest.raises(RuntimeError, match="Loop"):
        export_onnx(EmbeddingBagModel(), small_spec(), path)
    assert not path.exists()


def test_export_leaves_training_mode_and_writes_one_file(exported):
    model, path = exported["logreg"]
    assert model.training  # export switched to eval and back
    assert [p.name for p in path.parent.iterdir() if p.stem == "logreg"] == ["logreg.onnx"]


def test_example_inputs_follow_the_contract():
    spec = small_spec()
    inputs = example_inputs(spec, 64, seed=0)
    assert list(inputs) == list(INPUT_NAMES)
    assert inputs["sparse"].shape == (64, spec.num_sparse) and inputs["sparse"].dtype == torch.int64
    assert inputs["genres"].shape == (64, spec.genre_slots) and inputs["genres"].dtype == torch.int64
    assert inputs["history"].shape == (64, spec.history_length) and inputs["history"].dtype == torch.int64
    assert inputs["dense"].shape == (64, spec.num_dense) and inputs["dense"].dtype == torch.float32
    for column, cardinality in enumerate(spec.sparse_cardinalities):
        assert 0 <= inputs["sparse"][:, column].min() and inputs["sparse"][:, column].max() < cardinality
    for name, vocabulary in (("genres", spec.num_genres), ("history", spec.num_items)):
        ids = inputs[name]
        assert (ids == 0).any() and (ids != 0).any() and ids.max() < vocabulary
        # 0-padded at the end: once a slot is padding, all later ones are too
        assert torch.equal((ids != 0).cummin(dim=1).values, ids != 0)
    assert torch.equal(example_inputs(spec, 3, seed=1)["history"], example_inputs(spec, 3, seed=1)["history"])
    with pytest.raises(ValueError, match="batch_size"):
        example_inputs(spec, 0)
