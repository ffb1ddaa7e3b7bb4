"""One model family's benchmark: the PyTorch-eager baseline against RecForge's best profiled variant (LBTs, p95 at
the same offered load, AUCs, roofline)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from recforge.contracts.profile import mean_items_per_query
from recforge.inference.loadgen import LoadResult
from recforge.pipeline.compression.measure import latency_inputs
from recforge.pipeline.compression.model_folder import load_trained
from recforge.pipeline.data.features import load_split
from recforge.pipeline.profiling.document import load_doc
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.lbt import (
    baseline_thread_count,
    lbt_summary,
    load_run,
    measure_fn,
    profile_with_retries,
    search_lbt,
    single_query_ms,
)
from recforge.tools.bench.load_targets import ArrayOnnxTarget, RealRowsCpuOnnxRuntime, TorchEagerTarget, torch_threads
from recforge.tools.bench.nightly import FamilyRun, shortlist
from recforge.tools.bench.roofline import roofline, work_per_item
from recforge.tools.hw_limits import HardwareLimits

log = logging.getLogger(__name__)


def bench_family(run: FamilyRun, cfg: BenchConfig, limits: HardwareLimits) -> dict:
    """Baseline and RecForge of one family: LBTs, same-load p95, AUCs, roofline."""
    mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), (1,)))
    typical = max(1, round(mean_items))
    inputs = latency_inputs(load_split(run.features_dir, "test"), 1024)
    model, _, _ = load_trained(run.model_dir)
    started = time.perf_counter()

    # baseline: PyTorch eager fp32, one whole query per forward, one worker
    baseline = TorchEagerTarget(model, inputs)
    baseline_threads, query_ms = baseline_thread_count(baseline, typical, cfg)
    with torch_threads(baseline_threads):
        baseline_lbt = search_lbt(measure_fn(lambda _k: baseline, cfg, sub_batch=1024, workers=1),
                                  {"sub_batch": "whole query", "workers": 1, "threads": baseline_threads},
                                  cfg, cfg.start_fraction * 1000.0 / query_ms)
    log.info("%s baseline (eager fp32): LBT %.1f qps", run.family, baseline_lbt.lbt_qps)

    # RecForge: profile the short list, keep the best LBT
    rows = shortlist(run, cfg.shortlist)
    target = RealRowsCpuOnnxRuntime(inputs, cfg.threads[0])
    profiles = []
    for row in rows:
        variant = run.variants[row["variant"]]
        probe = ArrayOnnxTarget(variant["onnx_path"], inputs, 1)
        capacity = cfg.workers * 1000.0 / single_query_ms(probe, typical, cfg.latency_repeats)
        accuracy = {"auc": row["auc"], "delta_auc": row.get("delta_auc") or 0.0}
        doc = profile_with_retries(variant, row, run.family, target, accuracy, cfg, cfg.start_fraction * capacity)
        profiles.append((row, variant, doc))
        log.info("%s %s: LBT %.1f qps at %s", run.family, row["variant"], doc["latency_bounded_throughput_qps"],
                 doc["search"]["best_knobs"])
    row, variant, best = max(profiles, key=lambda p: p[2]["latency_bounded_throughput_qps"])
    knobs = best["search"]["best_knobs"]

    # the same offered load for both
    # (a baseline failing even its starting rate is compared at half that rate)
    rate = cfg.load_fraction * baseline_lbt.lbt_qps if baseline_lbt.lbt_qps > 0 else 0.5 * baseline_lbt.config.start_qps
    with torch_threads(baseline_threads):
        base_at = load_run(baseline, rate, cfg, cfg.compare_duration_s, 1024, 1)
    recforge_target = ArrayOnnxTarget(variant["onnx_path"], inputs, int(knobs.get("threads", cfg.threads[0])))
    ours_at = load_run(recforge_target, rate, cfg, cfg.compare_duration_s, int(knobs["sub_batch"]),
                       int(knobs.get("workers", cfg.workers)))

    # roofline of both
    fp32 = run.variants.get("fp32", {})
    base_model, _, _ = load_trained(Path(variant["base_dir"]))
    baseline_work = work_per_item(model, inputs, fp32.get("macs_per_item") or variant["macs_per_item"], "fp32", typical)
    recforge_work = work_per_item(base_model, inputs, variant["macs_per_item"], variant["precision"],
                                  int(knobs["sub_batch"]))
    baseline_summary = lbt_summary(baseline_lbt, mean_items)
    fp32_auc = next((v["auc"] for v in run.summary["variants"] if v["variant"] == "fp32"), None)
    result = {
        "family": run.family, "training_run_id": run.run_id,
        "baseline": {"what": f"PyTorch eager fp32, one query per forward, 1 worker, {baseline_threads} threads",
                     "auc": fp32_auc, **baseline_summary,
                     "roofline": roofline(baseline_work, limits, "fp32", baseline_summary["items_per_s"])},
        "recforge": {"variant": row["variant"], "variant_run_id": row["variant_run_id"], "precision":
                     variant["precision"], "auc": row["auc"], "delta_auc": row.get("delta_auc"), "knobs": knobs,
                     "lbt_qps": best["latency_bounded_throughput_qps"], "capped": best["lbt_capped"],
                     "items_per_s": best["items_per_s"], "curve": best["curve"],
                     "latency_vs_batch": best["latency_vs_batch"],
                     "roofline": roofline(recforge_work, limits, variant["precision"], best["items_per_s"])},
        "shortlist": [{"variant": r["variant"], "lbt_qps": d["latency_bounded_throughput_qps"],
                       "best_knobs": d["search"]["best_knobs"], "summary_latency_ms_b256": r.get("latency_ms_b256")}
                      for r, _, d in profiles],
        "same_load": {"offered_qps": rate, "load_fraction": cfg.load_fraction, "duration_s": cfg.compare_duration_s,
                      "baseline": load_figures(base_at), "recforge": load_figures(ours_at)},
        "seconds": time.perf_counter() - started,
    }
    result["lbt_ratio"] = ratio(result["recforge"]["lbt_qps"], result["baseline"]["lbt_qps"])
    result["p95_ratio"] = ratio(result["same_load"]["recforge"]["p95_ms"], result["same_load"]["baseline"]["p95_ms"])
    return result


def load_figures(result: LoadResult) -> dict:
    return {k: v for k, v in result.to_dict().items()
            if k in ("p50_ms", "p95_ms", "p99_ms", "achieved_qps", "items_per_s", "queries", "completed", "errors")}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not denominator or not math.isfinite(numerator) \
            or not math.isfinite(denominator):
        return None
    return float(numerator) / float(denominator)

