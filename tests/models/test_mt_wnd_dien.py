"""What MT-WnD and DIEN add to the zoo: MT-WnD's task heads (task 0 served), DIEN's order-sensitive, target-specific
interest, pruning of both, and both families' DeepRecSys-scale synthetic presets (shapes, presets, ONNX round trip)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from recforge.models import build_model, resolved_hyperparams
from recforge.models.dien import SyntheticDIEN
from recforge.models.export import example_inputs, export_onnx, onnx_op_types, onnx_parity
from recforge.models.mt_wnd import SyntheticMtWnd
from recforge.models.synthetic import (
    DEFAULT_TABLE_ROWS_SCALE,
    DIEN_SPEC,
    FAMILY_SPECS,
    INPUT_NAMES,
    MTWND_SPEC,
    OUTPUT_NAME,
    DienSpec,
    MtWndSpec,
    RmcSpec,
    SyntheticDLRM,
    export_synthetic_onnx,
    family_spec,
    synthetic_inputs,
    torch_inputs,
)
from recforge.pipeline.compression.prune import architecture_hyperparams, prunable_layers, prune_model
from tests.models.testutil import TINY_DIEN, TINY_MTWND, small_spec


def test_mt_wnd_task_logits_have_one_column_per_task_and_task_0_is_served():
    torch.manual_seed(0)
    model = build_model("mt_wnd", small_spec(), num_tasks=2).eval()
    inputs = example_inputs(small_spec(), 6, seed=1)
    with torch.no_grad():
        task_logits = model.task_logits(**inputs)
        assert task_logits.shape == (6, 2)
        torch.testing.assert_close(model.logits(**inputs), task_logits[:, 0])
        assert not torch.allclose(task_logits[:, 0], task_logits[:, 1])  # heads of their own
    single = build_model("mt_wnd", small_spec(), num_tasks=1)
    assert single.task_logits(**inputs).shape == (6, 1)


def test_mt_wnd_heads_share_the_bottom():
    torch.manual_seed(0)
    model = build_model("mt_wnd", small_spec())
    inputs = example_inputs(small_spec(), 8, seed=2)
    model.task_logits(**inputs)[:, 1].sum().backward()  # the second task's loss alone
    assert model.shared_mlp.layers[0].weight.grad.abs().sum() > 0  # trains the shared bottom
    head_0_grad = model.task_heads.heads[0].layers[0].weight.grad
    assert head_0_grad is None or not head_0_grad.any()  # not the first task's head


def test_dien_interest_depends_on_history_order_and_target():
    torch.manual_seed(0)
    model = build_model("dien", small_spec()).eval()
    inputs = example_inputs(small_spec(), 16, seed=3)
    inputs["history"] = torch.randint(1, small_spec().num_items, (16, small_spec().history_length))
    reordered = {**inputs, "history": inputs["history"].flip(1)}
    with torch.no_grad():
        before = model(**inputs)
        # a GRU reads a sequence: the same items in another order are another history (DIN's pooling is not)
        assert not torch.allclose(model(**reordered), before)
        target = model.item_embedding(inputs["sparse"][:, model.item_column])
        interest = model.interest(model.item_embedding(inputs["history"]), target, torch.ones(16, 5))
        other = model.interest(model.item_embedding(inputs["history"]), target.roll(1, 0), torch.ones(16, 5))
    assert interest.shape == (16, model.interest.interest_dim)
    assert not torch.allclose(interest, other)  # the attention makes the evolved interest target-specific


def test_synthetic_presets_follow_deeprecsys_configs():
    assert sorted(FAMILY_SPECS) == ["dien", "mt_wnd"]
    for spec in (MTWND_SPEC, DIEN_SPEC):  # 43 tables, D = 32, one id per table, 512 dense features
        assert (spec.num_tables, spec.rows_per_table, spec.lookups_per_table, spec.embedding_dim,
                spec.dense_features) == (43, 500_000, 1, 32, 512)
    assert MTWND_SPEC.shared_mlp == (1024, 512) and MTWND_SPEC.task_mlp == (256, 128, 1)
    assert MTWND_SPEC.num_tasks == 2 and MTWND_SPEC.interaction_dim == 512 + 43 * 32
    assert DIEN_SPEC.top_mlp == (200, 80, 1) and DIEN_SPEC.interest_dim == 64 and DIEN_SPEC.sequence_length == 40
    assert family_spec("dien").rows_per_table == round(500_000 * DEFAULT_TABLE_ROWS_SCALE)
    assert family_spec("mt_wnd", 1.0).table_bytes == 43 * 500_000 * 32 * 4
    assert DIEN_SPEC.lookups_per_item == 43
    with pytest.raises(ValueError, match="unknown synthetic model"):
        family_spec("rmc1")
    with pytest.raises(ValueError, match="task_mlp must end with 1"):
        MtWndSpec("bad", 2, 100, 1, 4, 3, (4,), (4, 2), 2)
    with pytest.raises(ValueError, match="num_tables must be >= 4"):
        DienSpec("bad", 3, 100, 1, 4, 3, 4, (4, 1))


@pytest.mark.parametrize(("model_class", "spec"), [(SyntheticMtWnd, TINY_MTWND), (SyntheticDIEN, TINY_DIEN)])
def test_synthetic_models_forward_and_export_match_onnxruntime(tmp_path, model_class, spec):
    model = model_class(spec, seed=0)
    inputs = torch_inputs(synthetic_inputs(spec, 9, seed=1))
    with torch.no_grad():
        probability = model(**inputs)
    assert probability.shape == (9,) and torch.all((probability > 0) & (probability < 1))
    assert torch.equal(model_class(spec, seed=0)(**inputs), probability)  # seeded weights
    path = export_synthetic_onnx(model, tmp_path / f"{spec.name}.onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES) and [o.name for o in graph.output] == [OUTPUT_NAME]
    assert "Loop" not in onnx_op_types(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 9, 40):
        feed = synthetic_inputs(spec, batch, seed=batch)
        (actual,) = session.run([OUTPUT_NAME], feed)
        with torch.no_grad():
            expected = model(**torch_inputs(feed)).numpy()
        assert actual.shape == (batch,)
        assert np.max(np.abs(actual - expected)) < 1e-5


@pytest.mark.parametrize("model_class, spec", [
    (SyntheticDLRM, RmcSpec("tiny_rmc", 3, 1000, 4, 8, 5, (16, 8), (12, 1))),
    (SyntheticMtWnd, TINY_MTWND), (SyntheticDIEN, TINY_DIEN)], ids=["rmc", "mt_wnd", "dien"])
def test_mlp_macs_per_item_counts_every_linear_layer_the_model_runs(model_class, spec):
    """The physical limit's compute term (2 x MACs per item / GEMM peak) rests on the spec's count: here it is
    checked against the multiply-accumulates of every Linear call of a real forward pass."""
    model = model_class(spec, seed=0)
    macs = [0]

    def count(module, args, _out):
        macs[0] += module.out_features * args[0].numel()  # rows x in_features x out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(**torch_inputs(synthetic_inputs(spec, 8, seed=1)))
    for hook in hooks:
        hook.remove()
    assert macs[0] / 8 == spec.mlp_macs_per_item


def test_synthetic_mt_wnd_has_a_head_per_task():
    model = SyntheticMtWnd(TINY_MTWND, seed=0)
    inputs = torch_inputs(synthetic_inputs(TINY_MTWND, 4, seed=2))
    with torch.no_grad():
        task_logits = model.task_logits(**inputs)
        assert task_logits.shape == (4, 3)
        torch.testing.assert_close(model(**inputs), torch.sigmoid(task_logits[:, 0]))


@pytest.mark.parametrize("family", ["mt_wnd", "dien"])
def test_pruned_model_is_again_a_build_model_architecture(family, tmp_path):
    """Compression's structured pruning works on the new families: hidden MLP units go, the GRUs, embeddings and
    the one served output stay, and the pruned weights load into ``build_model`` with the read-back widths."""
    spec = small_spec()
    torch.manual_seed(0)
    model = build_model(family, spec).eval()
    pruned = prune_model(model, spec, 0.5)
    before = [layer.out_features for layer in prunable_layers(model)]
    assert [layer.out_features for layer in prunable_layers(pruned)] == [w - round(0.5 * w) for w in before]
    hyperparams = architecture_hyperparams(family, pruned, resolved_hyperparams(family, {}))
    build_model(family, spec, **hyperparams).load_state_dict(pruned.state_dict())
    inputs = example_inputs(spec, 9, seed=4)
    path = export_onnx(pruned, spec, tmp_path / "pruned.onnx")
    assert onnx_parity(pruned, path, inputs) < 1e-5
