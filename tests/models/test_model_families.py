"""Behaviour of every model family built through build_model (recforge.models) from the family registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recforge.contracts.features import example_spec
from recforge.models import FAMILIES, PRESETS, build_model, default_hyperparams
from recforge.models.dlrm import DLRM
from recforge.models.export import example_inputs
from tests.models.testutil import small_spec

# forward() of build_model(family, small_spec()) after torch.manual_seed(0), on
# example_inputs(small_spec(), 5, seed=0). Pins initialisation and the computation; if a deliberate
# change moves them, re-record by printing the outputs.
RECORDED_OUTPUTS = {
    "dlrm": [0.466298, 0.471148, 0.473714, 0.462241, 0.465713],
    "wide_deep": [0.495991, 0.580823, 0.298759, 0.595225, 0.426151],
    "ncf": [0.520910, 0.523685, 0.514961, 0.519881, 0.523547],  # with dense side features
    "din": [0.514578, 0.51203, 0.519426, 0.510227, 0.508399],
    "logreg": [0.503997, 0.588837, 0.309211, 0.598507, 0.433189],
    "mt_wnd": [0.466137, 0.182268, 0.429648, 0.230257, 0.455211],  # task 0 (like)
    "dien": [0.526385, 0.535564, 0.5416, 0.529433, 0.534693],
}


def seeded_model(family: str, **hyperparams) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(family, small_spec(), **hyperparams).eval()


def padding_tables(family: str, model: torch.nn.Module) -> list[torch.nn.Embedding]:
    """The embedding tables that genres/history ids index, whose row 0 is padding."""
    if family in ("dlrm", "wide_deep", "mt_wnd"):
        return [model.genre_pool.embedding, model.history_pool.embedding]
    if family in ("din", "dien"):
        return [model.genre_pool.embedding, model.item_embedding]
    return []  # ncf and logreg read neither genres nor history


def test_registry_lists_the_seven_families():
    assert sorted(FAMILIES) == ["dien", "din", "dlrm", "logreg", "mt_wnd", "ncf", "wide_deep"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_output_shape_and_range(family):
    model = seeded_model(family)
    with torch.no_grad():
        probability = model(**example_inputs(small_spec(), 7, seed=1))
    assert probability.shape == (7,)
    assert probability.dtype == torch.float32
    assert torch.all((probability > 0) & (probability < 1))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_is_sigmoid_of_logits(family):
    model = seeded_model(family)
    inputs = example_inputs(small_spec(), 6, seed=2)
    with torch.no_grad():
        logits = model.logits(**inputs)
        assert logits.shape == (6,)
        torch.testing.assert_close(model(**inputs), torch.sigmoid(logits))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_seeded_forward_matches_recorded_values(family):
    model = seeded_model(family)
    with torch.no_grad():
        probability = model(**example_inputs(small_spec(), 5, seed=0))
    expected = torch.tensor(RECORDED_OUTPUTS[family])
    assert torch.allclose(probability, expected, atol=1e-5), probability.tolist()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padding_row_contents_do_not_matter(family):
    model = seeded_model(family)
    inputs = example_inputs(small_spec(), 8, seed=3)
    # Row 0 of DIN's/DIEN's item table is also the "unknown" target item, so keep target items known.
    inputs["sparse"][:, small_spec().index("item_id")].clamp_(min=1)
    inputs["history"][:, -2:] = 0  # make sure there is padding
    with torch.no_grad():
        before = model(**inputs)
        for table in padding_tables(family, model):
            table.weight[0] = torch.randn(table.embedding_dim) * 10
        torch.testing.assert_close(model(**inputs), before)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_all_padding_history_and_genres_give_finite_outputs_and_grads(family):
    model = seeded_model(family).train()
    inputs = example_inputs(small_spec(), 4, seed=4)
    inputs["history"].zero_()
    inputs["genres"].zero_()
    logits = model.logits(**inputs)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("family", "hyper", "ignored"),
    [
        ("ncf", {}, ("genres", "history")),
        ("ncf", {"use_dense": False}, ("genres", "history", "dense")),
        ("logreg", {}, ("genres", "history")),
    ],
)
def test_ignored_inputs_are_accepted_but_unused(family, hyper, ignored):
    torch.manual_seed(0)
    model = build_model(family, small_spec(), **hyper).eval()
    inputs = example_inputs(small_spec(), 5, seed=5)
    other = example_inputs(small_spec(), 5, seed=6)
    with torch.no_grad():
        before = model(**inputs)
        torch.testing.assert_close(model(**{**inputs, **{name: other[name] for name in ignored}}), before)


def test_build_model_rejects_unknown_family():
    with pytest.raises(ValueError, match="unknown model family 'xgboost'; choose one of"):
        build_model("xgboost", small_spec())


def test_build_model_rejects_unknown_hyperparameter():
    with pytest.raises(ValueError, match="unknown hyperparameters \\['hidden'\\]"):
        build_model("ncf", small_spec(), hidden=3)


def test_build_model_rejects_unknown_or_unsupported_preset():
    with pytest.raises(ValueError, match="unknown preset 'rmc9'"):
        build_model("dlrm", small_spec(), preset="rmc9")
    with pytest.raises(ValueError, match="no presets"):
        build_model("ncf", small_spec(), preset="rmc1")


@pytest.mark.parametrize("preset", ["rmc1", "rmc2", "rmc3", "small"])
def test_dlrm_presets_build(preset):
    spec = example_spec()
    model = build_model("dlrm", spec, preset=preset)
    hyperparams = PRESETS["dlrm"][preset]
    assert model.embedding_dim == hyperparams["embedding_dim"]
    assert model.dense_arch.layer_sizes == hyperparams["bottom_mlp"]
    assert model.over_arch.layer_sizes == hyperparams["top_mlp"]
    with torch.no_grad():
        assert model(**example_inputs(spec, 3)).shape == (3,)


def test_dlrm_presets_follow_deeprecsys_table():
    # (embedding dim, dense-FC, predict-FC) of DeepRecSys Table I
    table_1 = {
        "rmc1": (32, (256, 128, 32), (256, 64, 1)),
        "rmc2": (64, (256, 128, 64), (512, 128, 1)),
        "rmc3": (32, (2560, 512, 32), (512, 128, 1)),
    }
    for preset, (embedding_dim, dense_fc, predict_fc) in table_1.items():
        assert PRESETS["dlrm"][preset] == {
            "embedding_dim": embedding_dim,
            "bottom_mlp": dense_fc,
            "top_mlp": predict_fc,
        }


def test_explicit_hyperparameters_override_preset():
    model = build_model("dlrm", small_spec(), preset="rmc1", top_mlp=[32, 1])  # lists, as from JSON
    assert model.over_arch.layer_sizes == (32, 1)
    assert model.embedding_dim == 32


def test_dlrm_cat_interaction_allows_any_bottom_width():
    model = build_model("dlrm", small_spec(), interaction="cat", embedding_dim=8, bottom_mlp=[12])
    with torch.no_grad():
        assert model(**example_inputs(small_spec(), 2)).shape == (2,)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_default_hyperparams_are_small(family):
    model = build_model(family, small_spec(), **default_hyperparams(family))
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert (
        default_hyperparams(family)
        == {
            "dlrm": {
                "embedding_dim": 16,
                "bottom_mlp": (64, 16),
                "top_mlp": (64, 32, 1),
                "interaction": "dot",
            },
            "wide_deep": {"embedding_dim": 16, "deep_mlp": (128, 64)},
            "ncf": {"gmf_dim": 16, "mlp_embedding_dim": 16, "mlp_layers": (64, 32, 16), "use_dense": True},
            "din": {"embedding_dim": 16, "attention_mlp": (32, 16), "mlp": (128, 64)},
            "logreg": {},
            "mt_wnd": {"embedding_dim": 16, "shared_mlp": (128, 64), "task_mlp": (32,), "num_tasks": 2},
            "dien": {"embedding_dim": 16, "interest_dim": 16, "mlp": (200, 80)},
        }[family]
    )


@pytest.mark.parametrize(
    ("family", "hyperparams", "message"),
    [
        ("dlrm", {"interaction": "sum"}, "interaction must be one of"),
        ("dlrm", {"top_mlp": (64, 2)}, "top_mlp must end with 1"),
        ("dlrm", {"embedding_dim": 8}, "bottom_mlp must end with embedding_dim=8"),
        ("dlrm", {"bottom_mlp": ()}, "bottom_mlp must be a non-empty sequence"),
        ("dlrm", {"embedding_dim": 0}, "embedding_dim must be a positive int"),
        ("wide_deep", {"deep_mlp": (64, -1)}, "every entry of deep_mlp"),
        ("wide_deep", {"embedding_dim": 1.5}, "embedding_dim must be a positive int"),
        ("ncf", {"gmf_dim": 0}, "gmf_dim"),
        ("ncf", {"mlp_layers": 32}, "mlp_layers must be a non-empty sequence"),
        ("din", {"attention_mlp": ()}, "attention_mlp"),
        ("din", {"mlp": (0,)}, "every entry of mlp"),
        ("mt_wnd", {"num_tasks": 0}, "num_tasks must be a positive int"),
        ("mt_wnd", {"task_mlp": ()}, "task_mlp must be a non-empty sequence"),
        ("mt_wnd", {"shared_mlp": (8, 0)}, "every entry of shared_mlp"),
        ("dien", {"interest_dim": 0}, "interest_dim must be a positive int"),
        ("dien", {"mlp": ()}, "mlp must be a non-empty sequence"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(family, hyperparams, message):
    with pytest.raises(ValueError, match=message):
        build_model(family, small_spec(), **hyperparams)


def test_dlrm_needs_dense_features():
    with pytest.raises(ValueError, match="at least one dense feature"):
        DLRM(dataclasses.replace(small_spec(), dense_features=()))


def test_ncf_uses_dense_side_features_by_default():
    model = seeded_model("ncf")
    inputs = example_inputs(small_spec(), 5, seed=5)
    with torch.no_grad():
        changed = model(**{**inputs, "dense": inputs["dense"] + 1.0})
    assert not torch.allclose(changed, model(**inputs))
