"""The opt-in families (MT-WnD, DIEN) are compression candidates when a nightly trains them: the compression
stage plans the same bases for them as for the default deep families and builds a pruned base with its variants
(the DAG side: their candidate assets, tests/dags/test_dag_integrity.py)."""

from __future__ import annotations

import pytest
import torch

from recforge.models import build_model
from recforge.models.families import DEEP_FAMILIES, OPT_IN_FAMILIES
from recforge.pipeline.compression.config import CompressConfig
from recforge.pipeline.compression.variants import build_base_variants, plan_bases
from tests.pipeline.compression.compression_testutil import FAST, quick_train, save_model_dir, tiny_spec


def test_opt_in_families_get_the_bases_of_the_default_deep_families():
    cfg = CompressConfig.from_dict(FAST)
    expected = plan_bases(cfg, DEEP_FAMILIES[0])
    assert expected == ["fp32", "pruned25", "pruned50", "pruned75", "student"]
    for family in OPT_IN_FAMILIES:
        assert plan_bases(cfg, family) == expected


@pytest.mark.parametrize("family", OPT_IN_FAMILIES)
def test_a_trained_opt_in_family_is_pruned_into_variants(family, features, tmp_path):
    torch.manual_seed(0)
    model = quick_train(build_model(family, tiny_spec()), features, epochs=1)
    model_dir = save_model_dir(model, tiny_spec(), family, {}, tmp_path / family)
    cfg = CompressConfig.from_dict({**FAST, "finetune_epochs": 1, "precisions": ["emb_int8"]})
    variants = {v.name: v for v in build_base_variants("pruned50", model_dir, features, tmp_path / "out", cfg)}
    assert set(variants) == {"pruned50", "pruned50+emb_int8"}
    for variant in variants.values():
        assert variant.error is None, variant.error
        assert variant.family == family and variant.size_bytes > 0
    pruned = variants["pruned50"]
    assert sum(pruned.params["hidden_units_after"]) < sum(pruned.params["hidden_units_before"])  # units removed
