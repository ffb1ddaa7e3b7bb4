"""recforge.pipeline.profiling.selection: which validated variants are profiled (the AUC/latency Pareto front,
the fp32 reference, GPU-only precisions)."""

from __future__ import annotations

from recforge.pipeline.profiling.selection import pareto_front, precision_of, select_variants
from recforge.pipeline.profiling.stage import merge_extras
from recforge.pipeline.profiling.stage_config import ProfileStageConfig
from tests.pipeline.profiling.fakes import row

# --------------------------------------------------------------------------------------------------------------
# Selection


def test_pareto_front_keeps_the_undominated_fastest_first():
    rows = [row("fp32", 1.0, 0.750), row("a", 0.5, 0.749), row("b", 0.6, 0.748),  # b: slower and worse than a
            row("c", 0.4, 0.747), row("d", 1.2, 0.751), row("e", 0.5, 0.749),  # e ties a: first one kept
            row("f", None, 0.9), row("g", 0.1, float("nan"))]  # no numbers: never on the front
    front = pareto_front(rows, "latency_ms_b256", "auc")
    assert [r["name"] for r in front] == ["c", "a", "fp32", "d"]


def test_pareto_front_with_equal_cost_keeps_the_more_accurate():
    rows = [row("low", 0.5, 0.70), row("high", 0.5, 0.72)]
    assert [r["name"] for r in pareto_front(rows, "latency_ms_b256", "auc")] == ["high"]


def test_select_takes_the_front_up_to_the_limit_and_always_the_reference():
    cfg = ProfileStageConfig(max_variants_per_family=2)
    rows = [row("fp32", 1.0, 0.750), row("pruned50", 0.5, 0.749), row("pruned75", 0.4, 0.747),
            row("student", 0.3, 0.746), row("pruned25", 0.45, 0.740),  # pruned25: dominated
            row("student+int8_static", 0.2, 0.760, passed=False)]  # rejected: never selected
    chosen = select_variants(rows, cfg)
    assert [(r["name"], why.split(" ")[0]) for r, why in chosen] == [
        ("student", "Pareto"), ("pruned75", "Pareto"), ("fp32", "fp32")]
    # fp32 on the front is not profiled twice, and the reference can be left out
    assert [r["name"] for r, _ in select_variants(rows, ProfileStageConfig(max_variants_per_family=5))] == [
        "student", "pruned75", "pruned50", "fp32"]
    no_ref = ProfileStageConfig(max_variants_per_family=1, include_reference=False)
    assert [r["name"] for r, _ in select_variants(rows, no_ref)] == ["student"]


def test_gpu_only_precisions_are_selected_only_with_a_gpu():
    rows = [row("fp32", 1.0, 0.75), row("fp32+fp16", 0.3, 0.75), row("pruned50", 0.6, 0.749)]
    cfg = ProfileStageConfig()
    assert [r["name"] for r, _ in select_variants(rows, cfg)] == ["pruned50", "fp32"]
    assert [r["name"] for r, _ in select_variants(rows, cfg, gpu_available=True)] == ["fp32+fp16"] + ["fp32"]
    assert precision_of("pruned50+int8_static") == "int8_static" and precision_of("student") == "fp32"


def test_merge_extras_newest_event_wins_per_family():
    old = {"families": {"dlrm": {"candidate_run_id": "old", "passed": []}, "ncf": {"candidate_run_id": "n"}}}
    new = {"families": {"dlrm": {"candidate_run_id": "new", "passed": []}}}
    merged = merge_extras([old, None, {}, new])
    assert merged["dlrm"]["candidate_run_id"] == "new" and merged["ncf"]["candidate_run_id"] == "n"
