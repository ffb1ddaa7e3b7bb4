"""recforge.pipeline.profiling.summary and plots: the per-family table, the Pareto fronts and the plots, on
synthetic profiles."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from recforge.contracts.targets import CPU_ONNXRUNTIME as CPU
from recforge.contracts.targets import GPU_ONNXRUNTIME as GPU
from recforge.core.errors import RecForgeError
from recforge.pipeline.profiling.plots import close_figure, plot_latency_vs_batch, plot_p95_vs_load, plot_pareto
from recforge.pipeline.profiling.stage import summarize_profiles
from recforge.pipeline.profiling.summary import (
    family_summary,
    format_summary,
    knobs_text,
    p95_at_lbt,
    profile_row,
    profiles_asset_extra,
)
from tests.pipeline.profiling.fakes import row

# --------------------------------------------------------------------------------------------------------------
# Summaries and plots on synthetic profiles


def synthetic_doc(variant, target=CPU, lbt=800.0, auc=0.75, capped=False, run_id=None):
    curve = [{"offered_qps": q, "achieved_qps": q * (1 if q <= lbt else 0.6), "p50_ms": 1 + q / 400,
              "p95_ms": 3 + q / 100 if q <= lbt else 400.0, "p99_ms": 500.0, "errors": 0, "queries": int(q),
              "meets_slo": q <= lbt} for q in (100.0, 200.0, 400.0, lbt, 2 * lbt)]
    curve = sorted({c["offered_qps"]: c for c in curve}.values(), key=lambda c: c["offered_qps"])
    return {"model_family": "dlrm", "variant": variant, "variant_run_id": run_id or uuid.uuid4().hex,
            "target": {"name": target, "kind": "cpu-onnxruntime", "device": "test", "threads": 1},
            "p95_target_ms": 25.0, "latency_bounded_throughput_qps": lbt, "lbt_capped": capped,
            "items_per_s": lbt * 167.0, "search": {"best_knobs": {"sub_batch": 32, "threads": 1, "workers": 2}},
            "curve": curve, "latency_vs_batch": [{"batch": 1, "ms": 0.1}, {"batch": 256, "ms": 0.8}],
            "accuracy": {"auc": auc, "delta_auc": 0.0}}


def synthetic_result(variant, auc, targets_lbt, skipped=None):
    run_id = uuid.uuid4().hex
    profiles = [profile_row(synthetic_doc(variant, target, lbt, auc, run_id=run_id), f"/x/{variant}.{target}.json")
                for target, lbt in targets_lbt.items()]
    return {"family": "dlrm", "candidate_run_id": "c" * 32, "data_day": "1998-04-22", "variant": variant,
            "variant_run_id": run_id, "auc": auc, "delta_auc": auc - 0.75, "latency_ms_b256": 0.5,
            "profiles": profiles, "skipped": skipped or {}}


def test_p95_at_lbt_reads_the_curve_point_at_the_lbt():
    doc = synthetic_doc("fp32", lbt=800.0)
    assert p95_at_lbt(doc) == pytest.approx(3 + 800 / 100)
    assert p95_at_lbt({**doc, "latency_bounded_throughput_qps": 0.0}) is None


def test_family_summary_table_and_throughput_front():
    results = [synthetic_result("fp32", 0.750, {CPU: 800.0}),
               synthetic_result("pruned50", 0.749, {CPU: 1200.0}, skipped={GPU: "no CUDA device: skipped"}),
               synthetic_result("pruned75", 0.748, {CPU: 1000.0})]  # slower and worse than pruned50: off the front
    variants = [row("fp32", 1.0, 0.750), row("pruned50", 0.5, 0.749), row("pruned75", 0.6, 0.748)]
    summary = family_summary("dlrm", results, variants)
    assert [(p["variant"], p["on_front"]) for p in summary["profiles"]] == [
        ("pruned50", True), ("pruned75", False), ("fp32", True)]
    assert summary["latency_front"] == ["pruned50", "fp32"]
    assert summary["skipped"] == {"pruned50": {GPU: "no CUDA device: skipped"}}
    table = format_summary(summary)
    lines = table.splitlines()
    assert lines[2].startswith("| variant | target | LBT qps | items/s | p95 at LBT (ms) | best knobs | AUC | ΔAUC")
    assert (f"| pruned50 | {CPU} | 1,200 | 200,400 | 15.0 | sub_batch=32, threads=1, workers=2 | 0.7490 | -0.0010 "
            "| ★ |") in lines
    assert "- gpu-onnxruntime: no CUDA device: skipped (pruned50)" in lines
    assert knobs_text({"sub_batch": 256, "preferred_batch": [1, 2, 4, 8, 16, 1024], "instances": 1}) == \
        "instances=1, preferred_batch=[1,2,…,1024], sub_batch=256"
    json.dumps(summary)  # logged as summary.json: must be plain JSON
    extra = profiles_asset_extra({"dlrm": summary})
    first = extra["families"]["dlrm"]["profiles"][0]
    assert extra["families"]["dlrm"]["candidate_run_id"] == "c" * 32
    assert first["artifact_uri"] == f"runs:/{first['variant_run_id']}/profile/{CPU}.json"
    assert first["lbt_qps"] == 1200.0 and first["path"] == f"/x/pruned50.{CPU}.json"


@pytest.mark.parametrize("capped", [False, True])
def test_plots_render(capped):
    doc = synthetic_doc("fp32", lbt=400.0, capped=capped)
    results = [synthetic_result("fp32", 0.75, {CPU: 400.0, "cpu-triton": 600.0}),
               synthetic_result("pruned50", 0.749, {CPU: 800.0})]
    summary = family_summary("dlrm", results, [row("fp32", 1.0, 0.75), row("pruned50", 0.5, 0.749)])
    for figure in (plot_p95_vs_load(doc), plot_latency_vs_batch(doc), plot_pareto(summary)):
        buf = io.BytesIO()
        figure.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
        close_figure(figure)
    # a p95-vs-load plot marks the SLO and the LBT
    figure = plot_p95_vs_load(doc)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "SLO p95 25 ms" in labels and any(label.startswith("LBT 400 qps") for label in labels)
    close_figure(figure)


def test_summarize_refuses_a_run_where_nothing_was_profiled():
    results = [{**synthetic_result("fp32", 0.75, {}), "skipped": {CPU: "RuntimeError: boom"}}]
    with pytest.raises(RecForgeError, match=f"no variant was profiled on any target .*{CPU}: RuntimeError: boom"):
        summarize_profiles(results)
