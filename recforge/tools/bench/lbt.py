"""Latency-bounded throughput (LBT) of a benchmark target: open-loop load runs as the profiling search's
measurements, searched again from a lower starting rate when the single-query estimate was too optimistic; the
rounds' short searches; the baseline's thread-count options."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recforge.core.hw import cpu_count
from recforge.core.timing import median_ms
from recforge.inference.loadgen import LoadResult, run_open_loop
from recforge.pipeline.profiling.lbt import LBTResult, Measure, Measurement, lbt_from_config
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.profile_variant import profile_variant
from recforge.tools.bench.config import BenchConfig

MIN_QUERIES_PER_POINT = 20  # a probed rate runs at least this many queries (longer than point_duration_s if need be)
START_RETRIES = 3  # an LBT of 0 at the estimated starting rate is searched again from a 4x lower one, this often
ROUND_FLOOR = 1 / 16  # a round's LBT search steps down to this fraction of its start before it gives an LBT of 0


def baseline_thread_options(cfg: BenchConfig) -> tuple[int, ...]:
    """The baseline's torch thread counts to measure: ``cfg.baseline_threads`` when set, else 1 and all cores.
    Torch defaults to all cores, but under load its OpenMP threads spin against each other and the load generator
    (NCF's LBT: about 2,400 qps on 2 threads, 4,400 on 1); which is faster is a matter of the model and the machine,
    so both run in the LBT rounds and the higher median LBT is the baseline (``rounds.best_option``). A single-query
    timing chose before: the wrong criterion for a throughput comparison, and one timing flipped between runs."""
    return (cfg.baseline_threads,) if cfg.baseline_threads else tuple(sorted({1, cpu_count()}))


def round_lbt_search(measure: Measure, knobs: Mapping[str, Any], cfg: BenchConfig, start_qps: float,
                     ceiling_qps: float | None) -> LBTResult:
    """A round's LBT search (``BenchConfig.round_lbt_config``): the first probe at ``start_qps`` (just below the
    side's LBT so far); when it fails, the LBT is searched below it, down to ``ROUND_FLOOR`` of it."""
    config = cfg.round_lbt_config(start_qps * ROUND_FLOOR, ceiling_qps)
    return lbt_from_config(measure, knobs, config, first_qps=start_qps)


def load_point_duration_s(cfg: BenchConfig, rate: float) -> float:
    """Seconds of arrivals of a same-load p95 run at ``rate``: ``compare_duration_s``, longer where that would be
    fewer than ``min_load_queries`` queries."""
    return max(cfg.compare_duration_s, cfg.min_load_queries / rate) if rate > 0 else cfg.compare_duration_s


def single_query_ms(target: Any, items: int, repeats: int) -> float:
    """Median ms of one sub-batch of ``items`` items on ``target`` (for the LBT search's starting rate)."""
    return median_ms(lambda: target.infer(min(items, target.max_batch)), repeats, warmup=2)


def load_run(target: Any, rate: float, cfg: BenchConfig, duration_s: float, sub_batch: int, workers: int) -> LoadResult:
    return run_open_loop(target, rate, duration_s=duration_s, sizes=cfg.query_sizes(), sub_batch=sub_batch,
                         workers=workers, seed=cfg.seed, drain_timeout_s=max(2.0, 4 * cfg.p95_target_ms / 1000))


def unloaded_run(target: Any, rate: float, cfg: BenchConfig, sub_batch: int, workers: int) -> LoadResult:
    """``cfg.unloaded_queries`` queries at ``rate`` (a light load: the latency without queueing)."""
    return run_open_loop(target, rate, n_queries=cfg.unloaded_queries, sizes=cfg.query_sizes(), sub_batch=sub_batch,
                         workers=workers, seed=cfg.seed + 1, drain_timeout_s=max(2.0, 4 * cfg.p95_target_ms / 1000))


def measure_fn(target_for: Callable[[dict], Any], cfg: BenchConfig, sub_batch: int | None = None,
               workers: int | None = None, point_duration_s: float | None = None) -> Measure:
    """A ``recforge.pipeline.profiling.lbt.Measure`` over :func:`load_run` of ``point_duration_s`` (default
    ``cfg.point_duration_s``) per rate (the achieved rate corrected for Poisson noise in the number of issued
    queries, as recforge.pipeline.profiling.targets does)."""
    seconds = point_duration_s or cfg.point_duration_s

    def measure(rate: float, knobs: dict) -> Measurement:
        duration = max(seconds, MIN_QUERIES_PER_POINT / rate)  # low rates: enough queries for a p95
        result = load_run(target_for(knobs), rate, cfg, duration,
                          sub_batch or int(knobs["sub_batch"]), workers or int(knobs.get("workers", cfg.workers)))
        return Measurement.from_load(result, rate, duration)

    return measure


def search_lbt(measure: Measure, knobs: Mapping[str, Any], cfg: BenchConfig, start_qps: float,
               p95_target_ms: float | None = None, *, ramp_factor: float = 2.0,
               confirm: int | None = None) -> LBTResult:
    """LBT search from ``start_qps`` (an estimate from single-query timings or an earlier LBT, which a busy machine
    or the load generator's own overhead can make too optimistic): when even the start breaks the SLO, search again
    from a 4x lower rate, up to START_RETRIES times. No cap but the apparatus ceiling (``BenchConfig.lbt_config``)."""
    def search(start: float) -> LBTResult:
        return lbt_from_config(measure, knobs, cfg.lbt_config(start, p95_target_ms, ramp_factor=ramp_factor,
                                                              confirm=confirm))

    for _ in range(START_RETRIES):
        lbt = search(start_qps)
        if lbt.lbt_qps > 0 or start_qps <= 0.5:
            return lbt
        start_qps /= 4
    return search(start_qps)


def profile_with_retries(variant: Mapping[str, Any], row: Mapping[str, Any], family: str, target: Any,
                         accuracy: Mapping[str, float], cfg: BenchConfig, start_qps: float) -> dict:
    """``recforge.pipeline.profiling.targets.profile_variant`` with the bench's short settings; like
    :func:`search_lbt`, searched again from a 4x lower starting rate when no knob setting meets the SLO at the
    estimated one."""
    for attempt in range(START_RETRIES + 1):
        start = max(0.5, start_qps / 4**attempt)
        pcfg = ProfileConfig(p95_target_ms=cfg.p95_target_ms, point_duration_s=cfg.point_duration_s,
                             start_qps=min(start, cfg.apparatus_ceiling_qps()),
                             apparatus_ceiling_qps=cfg.apparatus_ceiling_qps(), tolerance=cfg.tolerance,
                             max_steps=cfg.max_steps,
                             sizes=cfg.sizes, min_sub_batch=cfg.min_sub_batch, max_sub_batch=cfg.max_sub_batch,
                             threads=tuple(cfg.threads), workers=cfg.workers, seed=cfg.seed,
                             max_evaluations=cfg.max_evaluations, confirm=cfg.confirm,
                             latency_batches=(1, 64, 256),
                             latency_repeats=cfg.latency_repeats)
        doc = profile_variant(variant["onnx_path"], str(Path(variant["base_dir"]) / "spec.json"), target,
                              family=family, variant=row["variant"], variant_run_id=row["variant_run_id"],
                              accuracy=accuracy, cfg=pcfg)
        if doc["latency_bounded_throughput_qps"] > 0 or start <= 0.5:
            break
    return doc


def lbt_summary(lbt: LBTResult, mean_items: float) -> dict:
    at = lbt.at_lbt
    return {"lbt_qps": lbt.lbt_qps, "capped": lbt.capped, "limit": lbt.limit, "converged": lbt.converged,
            "note": lbt.note, "apparatus_ceiling_qps": lbt.config.apparatus_ceiling_qps,
            "items_per_s": at.achieved_qps * mean_items if at else 0.0,
            "p95_ms_at_lbt": at.p95_ms if at else None, "curve": lbt.curve(), "knobs": dict(lbt.knobs)}

