"""The knob search space of a target: which axes are climbed, which knobs are fixed, where the climb starts
(:func:`search_space`), and DeepRecSched's GPU offload thresholds from the query sizes (:func:`offload_thresholds`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recforge.contracts.profile import mean_items_per_query
from recforge.contracts.targets import CPU_TRITON
from recforge.inference.loadgen import MAX_ITEMS, QuerySizes
from recforge.pipeline.profiling.document import load_doc
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.search.axes import deeprecsched_axes, triton_axes
from recforge.pipeline.profiling.targets.base import HardwareTarget


def search_space(target: HardwareTarget, cfg: ProfileConfig) -> tuple[dict[str, tuple], dict[str, Any], dict]:
    """(axes, fixed knobs, start): DeepRecSched's sub-batch axis, plus intra-op threads on CPU targets, plus the
    Triton axes on cpu-triton (climbed from plain serving: one request per typical query, no preferred size, the
    shortest queue delay, one instance; the Triton max_batch_size is a fixed knob, so that a profile records it)."""
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
        triton = triton_axes(cfg.max_sub_batch, max_instances=cfg.triton_max_instances,
                             queue_delays_us=cfg.triton_queue_delays_us)
        axes.update(triton)
        fixed["workers"] = cfg.triton_workers
        fixed["max_batch_size"] = int(getattr(target, "max_batch", MAX_ITEMS))
        # every request pays an HTTP round trip and a hop to the python backend (~2-3 ms here), so start from one
        # request per typical query (the smallest sub-batch >= the mean query) and let the climb split it
        mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), axes["sub_batch"]))
        sub_batch = next((b for b in axes["sub_batch"] if b >= mean_items), axes["sub_batch"][-1])
        start = {"sub_batch": sub_batch, "preferred_batch": [], "queue_delay_us": triton["queue_delay_us"][0],
                 "instances": 1}
    return axes, fixed, start


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
