"""The promotion policy without a server: selection of the variant to register, the judgement against the
champion, and RegisterConfig's checks."""

from __future__ import annotations

import uuid

import pytest

from recforge.contracts import registry
from recforge.contracts import tags as T
from recforge.contracts.targets import CPU_TRITON
from recforge.core.errors import ConfigError
from recforge.pipeline.registry import policy, versions
from recforge.pipeline.registry.policy import ProfiledVariant, RegisterConfig
from tests.pipeline.registry.fabricated import CPU, FAMILY, profile_doc


def pv(variant: str, lbt: float, auc: float, size: float | None, *, target: str = CPU, parity: str = "passed",
       family: str = FAMILY) -> ProfiledVariant:
    doc = profile_doc(variant=variant, run_id=uuid.uuid4().hex, sha="0" * 64, target=target, lbt=lbt, auc=auc,
                      family=family)
    return ProfiledVariant(profile=doc, parity=parity, size_bytes=size)


def test_select_best_ranks_by_lbt_then_auc_then_size():
    variants = [
        pv("fast_rejected", 900, 0.80, 10, parity="rejected"),  # fastest, but failed the parity gate
        pv("never_meets_slo", 0, 0.80, 10),
        pv("slow", 100, 0.80, 10),
        pv("fast_low_auc", 300, 0.74, 10),
        pv("fast_big", 300, 0.75, 4000),
        pv("fast_small", 300, 0.75, 2000),
        pv("triton_a", 50, 0.75, 100, target=CPU_TRITON),
        pv("triton_b", 60, 0.70, 100, target=CPU_TRITON),
        pv("other_family", 999, 0.75, 1, family="din"),
    ]
    best = policy.select_best(variants)
    assert {k: v.variant for k, v in best.items()} == {
        ("din", CPU): "other_family", (FAMILY, CPU): "fast_small", (FAMILY, CPU_TRITON): "triton_b"}
    assert policy.select_best([pv("a", 300, 0.75, None), pv("b", 300, 0.75, 10)])[(FAMILY, CPU)].variant == "b"
    assert policy.select_best(variants[:2]) == {}
    assert "parity rejected" in variants[0].eligible()[1]
    assert "LBT 0" in variants[1].eligible()[1]


def test_judge_margin_and_auc_tolerance():
    cfg = RegisterConfig(margin=0.05, max_auc_drop=0.001)
    inc = {T.LBT_QPS: "100.0", T.AUC: "0.75", T.PROFILE_HOST: "a"}

    def decide(lbt, auc, host="a"):
        new = {T.LBT_QPS: str(lbt), T.AUC: str(auc), T.PROFILE_HOST: host}
        return policy.judge(new, "3", inc, cfg, version="4")

    assert decide(105.0, 0.7495).decision == "promoted"  # exactly the margin, AUC within the tolerance
    assert decide(104.9, 0.76).decision == "kept_incumbent"
    assert decide(200.0, 0.7485).decision == "kept_incumbent"
    assert "different hosts" in decide(200.0, 0.75, host="b").reason
    assert policy.judge(inc, None, None, cfg, version="1").decision == "first_champion"
    other_slo = {T.LBT_QPS: "900", T.AUC: "0.8", T.P95_TARGET_MS: "50.0"}
    assert "another SLO" in policy.judge(other_slo, "3", inc | {T.P95_TARGET_MS: "25.0"}, cfg,
                                         version="4").reason
    with pytest.raises(ConfigError, match="margin"):
        RegisterConfig.from_dict({"margin": -0.1})
    with pytest.raises(ConfigError, match="unknown key"):
        RegisterConfig.from_dict({"margn": 0.1})
    with pytest.raises(ConfigError, match="alias"):
        registry.alias("champion", "gpu/t4")


def test_lbts_measured_with_another_apparatus_do_not_compare():
    cfg = RegisterConfig(margin=0.05, max_auc_drop=0.001)
    isolated = "isolated: server 1 CPU(s), load generator 1 CPU(s)"
    incumbent = {T.LBT_QPS: "3000.0", T.AUC: "0.75", T.TARGET_KIND: CPU_TRITON}  # registered before the tag
    new = {T.LBT_QPS: "1500.0", T.AUC: "0.75", T.TARGET_KIND: CPU_TRITON, T.PROFILE_APPARATUS: isolated}
    kept = policy.judge(new, "3", incumbent, cfg, version="4")
    assert kept.decision == "kept_incumbent" and kept.lbt_gain is None  # not "-50 %": the figures do not compare
    assert f"another apparatus ({isolated}) than incumbent v3 (shared)" in kept.reason
    assert policy.judge(new | {T.LBT_QPS: "1600.0"}, "4", new, cfg, version="5").decision == "promoted"
    # an in-process target registered before the tag was measured as it is now
    old_onnx = {T.LBT_QPS: "1000.0", T.AUC: "0.75", T.TARGET_KIND: CPU}
    new_onnx = old_onnx | {T.LBT_QPS: "1100.0", T.PROFILE_APPARATUS: "in-process"}
    assert policy.judge(new_onnx, "3", old_onnx, cfg, version="4").decision == "promoted"
    assert policy.legacy_apparatus(CPU_TRITON) == "shared" and policy.legacy_apparatus(CPU) == "in-process"


def test_register_config_names_the_field_it_refuses():
    for bad, field in (({"margin": 10}, "margin"), ({"max_auc_drop": 1.5}, "max_auc_drop"),
                       ({"model_prefix": "a b"}, "model_prefix"), ({"families": "dlrm"}, "families")):
        with pytest.raises(ConfigError, match=rf"RegisterConfig\.{field}"):
            RegisterConfig.from_dict(bad)
    cfg = RegisterConfig.from_dict({"families": ["dlrm", "din"], "margin": 1})
    assert cfg.families == ("dlrm", "din") and cfg.margin == 1.0
    assert policy.model_name("din", cfg) == registry.MODEL_PREFIX + "din"


def test_blessing_tags_round_trip():
    blessing = policy.judge({T.LBT_QPS: "130", T.AUC: "0.75"}, "3", {T.LBT_QPS: "100", T.AUC: "0.75"},
                            RegisterConfig(), version="4", dag_run_id="night-2")
    tags = blessing.tags()
    assert tags[T.BLESSING_PREFIX + "decision"] == "promoted" and tags[T.BLESSING_PREFIX + "lbt_gain"] == "0.3"
    assert all(k.startswith(T.BLESSING_PREFIX) for k in tags)
    again = policy.Blessing.from_tags(tags | {T.AUC: "0.75"})
    assert again.rerun and again.champion and again.lbt_gain == pytest.approx(0.3)
    assert policy.Blessing.from_tags({T.AUC: "0.75"}) is None


def test_a_profiles_apparatus_as_the_registry_compares_it():
    assert versions.apparatus_text({"kind": CPU_TRITON, "apparatus": {
        "placement": "isolated", "server_cpus": "1-2", "client_cpus": "0"}}) == \
        "isolated: server 2 CPU(s), load generator 1 CPU(s)"
    assert versions.apparatus_text({"kind": CPU_TRITON}) == "shared"  # a profile from before it was recorded
    assert versions.apparatus_text({"kind": CPU, "apparatus": {"placement": "in-process"}}) == "in-process"
