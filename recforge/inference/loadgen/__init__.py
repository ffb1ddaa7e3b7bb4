"""Open-loop load generator after DeepRecSys (Gupta et al., ISCA 2020): Poisson queries of many items each.

A *query* is one user request that ranks N candidate items (N = items per query, drawn from
:class:`QuerySizes`; DeepRecSys' production-like default is lognormal(mu=5.1, sigma=0.2), mean ~167).
The server splits a query into *sub-batches* of at most ``sub_batch`` items; ``workers`` threads run
sub-batches from one FIFO queue, so the sub-batches of one query run in parallel when workers are free
and one after another otherwise. A query's latency runs from its (scheduled) arrival until its last
sub-batch finished, so queueing delay counts.

The load is OPEN LOOP: a dispatcher thread releases queries at Poisson arrival times
(:func:`poisson_arrivals`) whatever the server's progress, so a server slower than the offered rate
shows as a growing tail latency instead of a silently lower offered rate (no coordinated omission).
With an :class:`Offload` (DeepRecSched's hybrid scheduling), a query of more than ``threshold`` items is not
split: it runs whole on the offload target (the accelerator, served by its own worker threads), and only the
smaller queries are split into sub-batches for the CPU workers.

Issuing stops at the end of the schedule; in-flight work then gets ``drain_timeout_s`` to finish, and
queries still unfinished after that count as errors (``timed_out``). With ``max_queue``, a query that
arrives while ``max_queue`` queries wait to start is dropped (``dropped``, also an error).

onnxruntime and numpy release the GIL while they compute, so worker threads run sub-batches truly in
parallel (give each session ``threads`` intra-op threads; workers x threads should not exceed the cores).

The modules: ``settings`` (bounds and checks of a run's settings), ``queries`` (query sizes, Poisson arrivals,
sub-batches), ``targets`` (the Target interface, callable/onnxruntime targets, Offload), ``engine`` (the open-loop
run), ``results`` (LoadResult, QueryRecord), ``cpu_steal`` (/proc/stat steal), ``cli``
(``python -m recforge.inference.loadgen --help``). This package exports the public names of all of them.
"""

from recforge.inference.loadgen.cpu_steal import cpu_times, steal_pct
from recforge.inference.loadgen.engine import run_open_loop, run_schedule
from recforge.inference.loadgen.queries import QuerySizes, poisson_arrivals, sub_batches
from recforge.inference.loadgen.results import LoadResult, QueryRecord
from recforge.inference.loadgen.settings import (
    DEFAULT_DRAIN_TIMEOUT_S,
    MAX_DURATION_S,
    MAX_ITEMS,
    MAX_QUERIES,
    MAX_RATE_QPS,
    MAX_THREADS,
    MAX_WORKERS,
    MIN_ITEMS,
    check_int,
    check_number,
    check_run_settings,
)
from recforge.inference.loadgen.targets import CallableTarget, Offload, OnnxTarget, Target, load_spec

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT_S", "MAX_DURATION_S", "MAX_ITEMS", "MAX_QUERIES", "MAX_RATE_QPS", "MAX_THREADS",
    "MAX_WORKERS", "MIN_ITEMS", "CallableTarget", "LoadResult", "Offload", "OnnxTarget", "QueryRecord", "QuerySizes",
    "Target", "check_int", "check_number", "check_run_settings", "cpu_times", "load_spec", "poisson_arrivals",
    "run_open_loop", "run_schedule", "steal_pct", "sub_batches",
]
