"""One model family's benchmark: the PyTorch-eager baseline (its thread count chosen by LBT) against RecForge's best
profiled variant, in interleaved rounds (``rounds``): LBTs, p95 at 25/50/80% of the baseline's median LBT, unloaded
latency, the apparatus' share of the latency, AUCs, roofline; every ratio a median over the rounds with its
interval."""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recforge.contracts.profile import mean_items_per_query
from recforge.inference.loadgen import LoadResult
from recforge.pipeline.compression.measure import latency_inputs
from recforge.pipeline.compression.model_folder import load_trained
from recforge.pipeline.data.features import load_split
from recforge.pipeline.profiling.document import load_doc
from recforge.tools.bench.apparatus_share import apparatus_share_figures
from recforge.tools.bench.bench_line import format_bench_line
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.lbt import (
    baseline_thread_options,
    lbt_summary,
    load_point_duration_s,
    load_run,
    measure_fn,
    profile_with_retries,
    round_lbt_search,
    search_lbt,
    single_query_ms,
    unloaded_run,
)
from recforge.tools.bench.load_targets import ArrayOnnxTarget, RealRowsCpuOnnxRuntime, TorchEagerTarget, torch_threads
from recforge.tools.bench.nightly import FamilyRun, shortlist
from recforge.tools.bench.roofline import roofline, work_per_item
from recforge.tools.bench.rounds import (
    BASELINE,
    RECFORGE,
    RESTART_FRACTION,
    RoundSide,
    ratio,
    run_rounds,
    summarize_rounds,
)
from recforge.tools.hw_limits import HardwareLimits

log = logging.getLogger(__name__)
UNLOADED_MAX_S = 5.0  # seconds of arrivals of an unloaded-latency run at most (see round_side)
__all__ = ["bench_family", "bench_line", "load_figures", "ratio"]


def load_figures(result: LoadResult) -> dict:
    """The figures of one load run that the report keeps, with the apparatus' share of the latency."""
    figures = {k: v for k, v in result.to_dict().items()
               if k in ("p50_ms", "p95_ms", "p99_ms", "achieved_qps", "items_per_s", "queries", "completed", "errors")}
    return {**figures, **apparatus_share_figures(result)}


def thread_label(threads: int) -> str:
    """The name of the baseline option with ``threads`` torch threads in the rounds' results."""
    return f"threads={threads}"


def round_side(target: Any, cfg: BenchConfig, knobs: dict, sub_batch: int, workers: int, first_start_qps: float,
               limits: list[str], context: Callable[[], Any] = contextlib.nullcontext,
               ceiling_qps: float | None = None) -> RoundSide:
    """A side of the rounds over real load runs on ``target`` (inside ``context``, e.g. the baseline's torch
    threads); each round's LBT search (``lbt.round_lbt_search``, up to ``ceiling_qps``) limit goes into
    ``limits``."""
    measure = measure_fn(lambda _k: target, cfg, sub_batch=sub_batch, workers=workers,
                         point_duration_s=cfg.round_point_duration_s)

    def lbt(start_qps: float) -> float:
        with context():
            result = round_lbt_search(measure, knobs, cfg, start_qps, ceiling_qps)
        limits.append(result.limit)
        return result.lbt_qps

    def load_point(rate: float) -> dict:
        with context():
            return load_figures(load_run(target, rate, cfg, load_point_duration_s(cfg, rate), sub_batch, workers))

    def unloaded(lbt_qps: float) -> dict:
        # a light load: unloaded_fraction of the LBT, but fast enough to take at most UNLOADED_MAX_S (a slow side),
        # and never above half the LBT
        base = lbt_qps if lbt_qps > 0 else first_start_qps
        rate = max(0.5, min(0.5 * base, max(cfg.unloaded_fraction * base, cfg.unloaded_queries / UNLOADED_MAX_S)))
        with context():
            return load_figures(unloaded_run(target, rate, cfg, sub_batch, workers))

    return RoundSide(search_lbt=lbt, load_point=load_point, unloaded=unloaded, first_start_qps=first_start_qps)


def bench_family(run: FamilyRun, cfg: BenchConfig, limits: HardwareLimits) -> dict:
    """Baseline and RecForge of one family: the variant and its knobs chosen by profiling the short list, then
    ``cfg.rounds`` interleaved rounds (LBTs of RecForge and of each baseline thread option, then p95 at the same
    loads and unloaded latency of RecForge and the best baseline option), AUCs, roofline."""
    mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), (1,)))
    typical = max(1, round(mean_items))
    inputs = latency_inputs(load_split(run.features_dir, "test"), 1024)
    model, _, _ = load_trained(run.model_dir)
    started = time.perf_counter()
    ceiling = cfg.apparatus_ceiling_qps()

    # baseline: PyTorch eager fp32, one whole query per forward, one worker; one side of the rounds per thread count,
    # each started from a first search (short probes) from its single-query estimate
    baseline = TorchEagerTarget(model, inputs)
    lbt_limits: dict[str, list[str]] = {RECFORGE: []}
    sides: dict[str, RoundSide] = {}
    options: dict[str, dict] = {}
    first_searches = {}
    for threads in baseline_thread_options(cfg):
        label = thread_label(threads)
        option_knobs = {"sub_batch": "whole query", "workers": 1, "threads": threads}
        with torch_threads(threads):
            query_ms = single_query_ms(baseline, typical, cfg.latency_repeats)
            first_searches[label] = search_lbt(
                measure_fn(lambda _k: baseline, cfg, sub_batch=1024, workers=1,
                           point_duration_s=cfg.round_point_duration_s),
                option_knobs, cfg, cfg.start_fraction * 1000.0 / query_ms, confirm=0)
        options[label] = {"threads": threads, "knobs": option_knobs, "single_query_ms": query_ms,
                          "first_lbt_qps": first_searches[label].lbt_qps}
        lbt_limits[label] = []
        sides[label] = round_side(baseline, cfg, option_knobs, 1024, 1,
                                  max(0.5, RESTART_FRACTION * first_searches[label].lbt_qps), lbt_limits[label],
                                  lambda t=threads: torch_threads(t), ceiling)
        log.info("%s baseline (eager fp32, %d threads): single query %.2f ms, first LBT %.1f qps", run.family,
                 threads, query_ms, first_searches[label].lbt_qps)

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
    sub_batch, workers = int(knobs["sub_batch"]), int(knobs.get("workers", cfg.workers))

    # interleaved rounds: LBTs (each baseline option, RecForge, ...), then p95 at the same loads (baseline, RecForge,
    # ...)
    recforge_target = ArrayOnnxTarget(variant["onnx_path"], inputs, int(knobs.get("threads", cfg.threads[0])))
    sides[RECFORGE] = round_side(recforge_target, cfg, knobs, sub_batch, workers,
                                 max(0.5, best["latency_bounded_throughput_qps"] * RESTART_FRACTION),
                                 lbt_limits[RECFORGE], ceiling_qps=ceiling)
    # a baseline LBT of 0: a light load
    fallback = 0.5 * min(s.config.start_qps for s in first_searches.values()) / cfg.load_fraction
    results = run_rounds(sides, cfg.rounds, cfg.load_fractions, fallback_qps=fallback, baselines=tuple(options),
                         start_spread=cfg.round_ramp_factor, progress=lambda text: log.info("%s %s", run.family, text))
    rounds = summarize_rounds(results, cfg.load_fraction, cfg.confidence)
    chosen = rounds["baseline_option"]
    baseline_lbt, baseline_threads = first_searches[chosen], options[chosen]["threads"]
    for label, option in options.items():
        option["lbt_qps"] = rounds["baseline_options"][label]
    rounds["lbt_limits"] = lbt_limits
    rounds["apparatus_ceiling_qps"] = ceiling
    top_rate = max([r[s]["lbt_qps"] for r in results for s in (BASELINE, RECFORGE)]
                   + [lbt for r in results for lbt in r["baseline_options"].values()] + [1e-9])
    rounds["apparatus_ratio"] = ceiling / top_rate

    # roofline of both
    fp32 = run.variants.get("fp32", {})
    base_model, _, _ = load_trained(Path(variant["base_dir"]))
    baseline_work = work_per_item(model, inputs, fp32.get("macs_per_item") or variant["macs_per_item"], "fp32", typical)
    recforge_work = work_per_item(base_model, inputs, variant["macs_per_item"], variant["precision"], sub_batch)
    baseline_summary = lbt_summary(baseline_lbt, mean_items)
    fp32_auc = next((v["auc"] for v in run.summary["variants"] if v["variant"] == "fp32"), None)
    headline = str(cfg.load_fraction)
    result = {
        "family": run.family, "training_run_id": run.run_id,
        "baseline": {"what": f"PyTorch eager fp32, one query per forward, 1 worker, {baseline_threads} threads"
                             + (f" (the higher median LBT of {', '.join(options)})" if len(options) > 1 else ""),
                     "auc": fp32_auc, **baseline_summary, "first_lbt_qps": baseline_lbt.lbt_qps,
                     "threads": baseline_threads, "thread_options": options,
                     "lbt_qps": rounds[BASELINE]["lbt_qps"]["median"],
                     "roofline": roofline(baseline_work, limits, "fp32", baseline_summary["items_per_s"])},
        "recforge": {"variant": row["variant"], "variant_run_id": row["variant_run_id"], "precision":
                     variant["precision"], "auc": row["auc"], "delta_auc": row.get("delta_auc"), "knobs": knobs,
                     "profiled_lbt_qps": best["latency_bounded_throughput_qps"],
                     "lbt_qps": rounds[RECFORGE]["lbt_qps"]["median"], "capped": best["lbt_capped"],
                     "lbt_limit": best.get("lbt_limit"), "items_per_s": best["items_per_s"], "curve": best["curve"],
                     "latency_vs_batch": best["latency_vs_batch"],
                     "roofline": roofline(recforge_work, limits, variant["precision"], best["items_per_s"])},
        "shortlist": [{"variant": r["variant"], "lbt_qps": d["latency_bounded_throughput_qps"],
                       "best_knobs": d["search"]["best_knobs"], "summary_latency_ms_b256": r.get("latency_ms_b256")}
                      for r, _, d in profiles],
        "same_load": {"offered_qps": statistics.median(r["rates"][cfg.load_fraction] for r in results),
                      "load_fraction": cfg.load_fraction,
                      "duration_s": load_point_duration_s(cfg, results[0]["rates"][cfg.load_fraction]),
                      **{label: {"p95_ms": rounds[label]["p95_ms_at"][headline]["median"],
                                 "queries": sum(r[label]["loads"][cfg.load_fraction]["queries"] for r in results)}
                         for label in (BASELINE, RECFORGE)}},
        "rounds": rounds, "round_results": results,
        "seconds": time.perf_counter() - started,
    }
    result["lbt_ratio"] = rounds["throughput_ratio"]["median"]
    result["p95_ratio"] = rounds["latency_ratio"]["median"]
    result["auc_ratio"] = ratio(row["auc"], fp32_auc)
    result["bench_line"] = bench_line(result)
    return result


def bench_line(result: dict) -> str:
    """The family's ``bench: family=... path=inprocess ...`` line (medians over the rounds, with intervals)."""
    rounds = result["rounds"]

    def finite(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    figures = {"latency_ratio": finite(result["p95_ratio"]), "throughput_ratio": finite(result["lbt_ratio"]),
               "auc_ratio": finite(result.get("auc_ratio"))}
    for name in ("latency_ratio", "throughput_ratio"):
        figures[f"{name}_low"] = finite(rounds[name]["low"])
        figures[f"{name}_high"] = finite(rounds[name]["high"])
    figures["rounds"] = rounds["rounds"]
    return format_bench_line(result["family"], "inprocess", figures)
