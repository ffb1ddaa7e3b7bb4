"""The in-process apparatus' own ceiling: the query rate the load generator sustains against a null target.

The LBT search (``lbt``) has no cap of its own on the offered rate: it ramps up until the SLO fails. What bounds it is
the apparatus: the DeepRecSys load generator (``recforge.inference.loadgen``) that offers the load runs in the
profiling process, and above some rate its dispatcher and worker threads, not the model, set the pace. That rate is
measured here with the same load shape (query sizes, sub-batch, workers) against a :class:`NullTarget` whose
``infer`` returns at once: a saturating open-loop run (every query released at once), whose achieved rate is the
ceiling. It takes well under a second and is measured once per process and load shape (:func:`cached_ceiling_qps`),
so a profiling stage measures it once and every variant's search reuses it.

This is the ceiling of the load generator itself (threads, queues, bookkeeping), without an HTTP client: for a
served target the client adds its own cost, which ``python -m recforge.tools.apparatus`` (``make bench-apparatus``)
measures against a null HTTP server.
"""

from __future__ import annotations

import functools

from recforge.inference.loadgen import MAX_ITEMS, MAX_RATE_QPS, QuerySizes, run_open_loop

NULL_QUERIES = 2000  # queries of the saturating run: ~0.1-0.5 s of the load generator's time
WARMUP_QUERIES = 200  # a first short run (thread start-up, allocations) that does not count


class NullTarget:
    """A model that answers at once: every cycle of a load run against it is the load generator's own."""

    name = "null"
    max_batch = MAX_ITEMS

    def infer(self, n_items: int) -> None:
        return None


def null_target_ceiling_qps(sizes: QuerySizes, *, sub_batch: int, workers: int, queries: int = NULL_QUERIES,
                            seed: int = 0) -> float:
    """Queries/s the load generator completes against :class:`NullTarget` when every one of ``queries`` queries of
    ``sizes`` is released at once and split into sub-batches of ``sub_batch`` items for ``workers`` threads."""
    target = NullTarget()
    run_open_loop(target, MAX_RATE_QPS, n_queries=WARMUP_QUERIES, sizes=sizes, sub_batch=sub_batch, workers=workers,
                  seed=seed + 1)
    result = run_open_loop(target, MAX_RATE_QPS, n_queries=queries, sizes=sizes, sub_batch=sub_batch,
                           workers=workers, seed=seed)
    return float(result.achieved_qps)


@functools.cache
def cached_ceiling_qps(sizes: str, sub_batch: int, workers: int) -> float:
    """:func:`null_target_ceiling_qps` for ``sizes`` (``QuerySizes.parse`` syntax), measured once per process."""
    return null_target_ceiling_qps(QuerySizes.parse(sizes), sub_batch=sub_batch, workers=workers)
