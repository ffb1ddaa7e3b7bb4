"""The knob search space of a target: which axes are searched, which knobs are fixed, where the search starts
(:func:`search_space`), which strategy searches it (:func:`knob_search`), and DeepRecSched's GPU offload thresholds
from the query sizes (:func:`offload_thresholds`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recforge.contracts.profile import mean_items_per_query
from recforge.contracts.targets import CPU_TRITON
from recforge.core.hw import cpu_count
from recforge.inference.loadgen import MAX_ITEMS, QuerySizes
from recforge.pipeline.profiling.document import load_doc
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.search.axes import deeprecsched_axes, triton_batching_axes, triton_knobs_valid
from recforge.pipeline.profiling.search.base import SearchStrategy
from recforge.pipeline.profiling.search.race import RacingCoordinateSearch
from recforge.pipeline.profiling.targets.base import HardwareTarget


def search_space(target: HardwareTarget, cfg: ProfileConfig) -> tuple[dict[str, tuple], dict[str, Any], dict]:
    """(axes, fixed knobs, start): DeepRecSched's sub-batch axis, plus intra-op threads on CPU targets, plus the
    Triton knobs on cpu-triton (``search.axes.triton_batching_axes``: instances up to the CPUs the node may use,
    queue delay, preferred batch sizes, and max_batch_size when the target offers several; a single
    max_batch_size is a fixed knob, so that a profile records it). Triton is searched from plain serving: one
    request per typical query, no preferred size, the shortest queue delay, one instance, the largest
    max_batch_size."""
    axes = dict(deeprecsched_axes(cfg.max_sub_batch, min_sub_batch=cfg.min_sub_batch))
    fixed: dict[str, Any] = {"workers": cfg.workers}
    start: dict[str, Any] = {}
    if target.kind.startswith(("cpu-", "hybrid-")):
        if len(cfg.threads) > 1:
            axes["threads"] = tuple(cfg.threads)
        else:
            fixed["threads"] = cfg.threads[0]
    if target.kind.startswith("hybrid-"):
        thresholds = cfg.gpu_thresholds or offload_thresholds(cfg.query_sizes(), seed=cfg.seed)
        axes.update(deeprecsched_axes(cfg.max_sub_batch, min_sub_batch=cfg.min_sub_batch, gpu_thresholds=thresholds))
        fixed["gpu_workers"] = cfg.gpu_workers
        start = {"gpu_threshold": thresholds[-1]}  # DeepRecSched starts CPU-only and offloads step by step
    if target.kind == CPU_TRITON:
        max_batches = tuple(getattr(target, "max_batch_sizes", (int(getattr(target, "max_batch", MAX_ITEMS)),)))
        cpus = int(getattr(target, "cpus", 0) or cpu_count())
        triton = triton_batching_axes(max_batches, max_instances=max(1, min(cfg.triton_max_instances, cpus)),
                                      queue_delays_us=cfg.triton_queue_delays_us)
        threads = {"threads": axes.pop("threads")} if "threads" in axes else {}
        # raced in this order: sub-batch and instances move the LBT most, max_batch_size least
        axes = {"sub_batch": axes["sub_batch"], **{k: v for k, v in triton.items() if k != "max_batch_size"},
                **threads, **({"max_batch_size": triton["max_batch_size"]} if "max_batch_size" in triton else {})}
        fixed["workers"] = cfg.triton_workers
        if "max_batch_size" not in axes:
            fixed["max_batch_size"] = max_batches[-1]
        # every request pays an HTTP round trip and a hop to the python backend (~2-3 ms here), so start from one
        # request per typical query (the smallest sub-batch >= the mean query) and let the search split it
        mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), axes["sub_batch"]))
        sub_batch = next((b for b in axes["sub_batch"] if b >= mean_items and b <= max_batches[-1]),
                         axes["sub_batch"][0])
        start = {"sub_batch": sub_batch, "preferred_batch": [], "queue_delay_us": triton["queue_delay_us"][0],
                 "instances": 1}
        if "max_batch_size" in axes:
            start["max_batch_size"] = max_batches[-1]
    return axes, fixed, start


def knob_search(target: HardwareTarget, cfg: ProfileConfig, axes: dict[str, tuple], fixed: dict[str, Any],
                start: dict[str, Any]) -> SearchStrategy:
    """The strategy that searches a target's space (:func:`search_space`): the racing coordinate search on every
    target (on cpu-triton, combinations Triton would refuse are skipped). It spends at most the load runs that
    ``cfg.max_evaluations`` LBT searches could have taken (``max_evaluations x max_steps x repeats``), however it
    splits them between one-run screens and full searches.

    DeepRecSched's hill climb, used here before on the onnxruntime targets, looks one step either way from the
    smallest sub-batch: with the stage's 3 evaluations it never got past 64 items, and it stops where the next
    size serves less. In-process onnxruntime serves lognormal(5.1, 0.2) queries best whole (sub-batch 256): at
    4,000 qps DLRM's p95 was 1.7-2.0 ms there against 290-310 ms at the climb's pick of 32 items (bench, 2026-11-27).
    """
    budget = cfg.max_evaluations * cfg.max_steps * cfg.repeats
    valid = triton_knobs_valid if target.kind == CPU_TRITON else None
    return RacingCoordinateSearch(axes, start, fixed=fixed, valid=valid, max_runs=budget)


OFFLOAD_FRACTIONS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0)


def offload_thresholds(sizes: QuerySizes, fractions: Sequence[float] = OFFLOAD_FRACTIONS, *, seed: int = 0,
                       n: int = 20_000) -> tuple[int, ...]:
    """GPU thresholds (ascending) that offload about these fractions of the queries, from a sample of the query
    sizes: fraction 1 is threshold 0 (everything), fraction 0 is MAX_ITEMS (nothing). Fixed item steps would
    leave the climb on a plateau: lognormal(5.1, 0.2) queries are 100-270 items, so thresholds 256 and 1024
    offload almost the same nothing, and a hill climb starting CPU-only would stop there."""
    sample = np.sort(sizes.sample(n, seed))
    out = set()
    for f in fractions:
        if f >= 1:
            out.add(0)
        elif f <= 0:
            out.add(MAX_ITEMS)
        else:  # queries of more than the (1 - f) quantile are offloaded
            out.add(int(np.quantile(sample, 1.0 - f)))
    return tuple(sorted(out))
