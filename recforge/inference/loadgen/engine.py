"""The open-loop engine: a dispatcher thread releasing queries at their Poisson arrival times, worker threads
running sub-batches from one FIFO queue (and the offload target's own workers), and the summary of the run.

Python's cyclic garbage collector is paused while queries run (:func:`collector_paused`, as ``timeit`` does): a
full collection walks every tracked object, and the run's per-query records make that a stop of every thread.
Measured (stop 31, a 6-minute elastic replay of 122,277 queries, ``gc.callbacks`` in the load generator): gen-2
collections of 231 and 342 ms, each in a second whose p95 went over the 25 ms SLO with no other cause, while they
found 71 and 0 objects to free. Between runs the collector runs as usual."""

from __future__ import annotations

import contextlib
import gc
import math
import queue
import threading
import time

import numpy as np

from recforge.core.errors import ConfigError, first_line
from recforge.inference.loadgen.cpu_steal import cpu_times, steal_pct
from recforge.inference.loadgen.queries import QuerySizes, poisson_arrivals, sub_batches
from recforge.inference.loadgen.results import LoadResult
from recforge.inference.loadgen.settings import DEFAULT_DRAIN_TIMEOUT_S, MAX_ITEMS, check_run_settings
from recforge.inference.loadgen.targets import Offload, Target

_collector_lock = threading.Lock()
_collector_holds = 0  # runs in progress that paused the collector (runs may overlap in threads)
_collector_was_enabled = False


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for the duration (nested and concurrent uses count); on again after
    the last one ends, if it was on before the first."""
    global _collector_holds, _collector_was_enabled
    with _collector_lock:
        if _collector_holds == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_holds += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_holds -= 1
            if _collector_holds == 0 and _collector_was_enabled:
                gc.enable()


class _Run:
    """Shared state of one run: the dispatcher, the workers and the supervisor (the calling thread)."""

    def __init__(self, target: Target, arrivals: np.ndarray, sizes: np.ndarray, sub_batch: int, workers: int,
                 max_queue: int | None, offload: Offload | None = None):
        n = len(arrivals)
        self.target, self.arrivals, self.sizes = target, arrivals, sizes
        self.sub_batch, self.n_workers, self.max_queue = sub_batch, workers, max_queue
        self.offload = offload
        self.offloaded = np.zeros(n, dtype=bool)
        self.served_by: list[set[str] | None] = [None] * n
        self.issued = np.full(n, np.nan)
        self.start = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.remaining = np.zeros(n, dtype=np.int64)
        self.errors: list[str | None] = [None] * n
        self.issued_count = 0
        self.waiting = 0  # queries issued whose first sub-batch has not started
        self.dropped = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set by the supervisor: skip all remaining work, record nothing more
        self.tasks: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.offload_tasks: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def dispatch(self) -> None:
        try:
            for qi, due in enumerate(self.arrivals):
                delay = due - self.now()
                if delay > 0 and self.stop.wait(delay):
                    return
                if self.stop.is_set():
                    return
                with self.lock:
                    self.issued[qi] = self.now()
                    self.issued_count = qi + 1
                    if self.max_queue is not None and self.waiting >= self.max_queue:
                        self.errors[qi] = f"dropped: {self.waiting} queries already waiting (max_queue)"
                        self.dropped += 1
                        continue
                    n = int(self.sizes[qi])
                    to_offload = self.offload is not None and self.offload.takes(n)
                    if to_offload:
                        parts = sub_batches(n, self.offload.max_batch)
                        self.offloaded[qi] = True
                    else:
                        parts = sub_batches(n, self.sub_batch)
                    self.remaining[qi] = len(parts)
                    self.waiting += 1
                tasks = self.offload_tasks if to_offload else self.tasks
                for n_items in parts:
                    tasks.put((qi, n_items))
        finally:
            for _ in range(self.n_workers):
                self.tasks.put(None)
            for _ in range(self.offload.workers if self.offload is not None else 0):
                self.offload_tasks.put(None)

    def work(self, offload: bool = False) -> None:
        tasks = self.offload_tasks if offload else self.tasks
        target = self.offload.target if offload else self.target
        while True:
            task = tasks.get()
            if task is None:
                return
            qi, n_items = task
            with self.lock:
                if self.stop.is_set():
                    continue
                if math.isnan(self.start[qi]):
                    self.start[qi] = self.now()
                    self.waiting -= 1
                failed = self.errors[qi] is not None
            error, served = None, None
            if not failed:  # a query whose sub-batch failed skips its other sub-batches
                try:
                    served = target.infer(n_items)
                except Exception as err:  # any failure of the target is the query's error
                    error = f"{type(err).__name__}: {first_line(err)}"
            with self.lock:
                if self.stop.is_set():
                    continue
                if error and self.errors[qi] is None:
                    self.errors[qi] = error
                if isinstance(served, str):
                    if self.served_by[qi] is None:
                        self.served_by[qi] = set()
                    self.served_by[qi].add(served)
                self.remaining[qi] -= 1
                if self.remaining[qi] == 0:
                    self.finish[qi] = self.now()


def run_open_loop(target: Target, rate_qps: float, *, duration_s: float | None = None, n_queries: int | None = None,
                  sizes: QuerySizes | None = None, sub_batch: int = 64, workers: int = 2, seed: int = 0,
                  max_queue: int | None = None, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                  offload: Offload | None = None) -> LoadResult:
    """Drive ``target`` with Poisson queries at ``rate_qps`` for ``duration_s`` seconds (or ``n_queries``).

    Query sizes come from ``sizes`` (default: DeepRecSys' lognormal); each query is split into sub-batches of
    at most ``sub_batch`` items, run by ``workers`` threads; with ``offload``, queries above its threshold run
    whole on its target instead. ``seed`` fixes the arrival schedule and the sizes.
    The call returns at most about ``drain_timeout_s`` after the last arrival.
    """
    check_run_settings(rate_qps, duration_s, n_queries, sub_batch, workers, seed, max_queue, drain_timeout_s)
    if not isinstance(target, Target):
        raise ConfigError(f"target must have a name and an infer(n_items) method, got {target!r}")
    if offload is not None and not isinstance(offload, Offload):
        raise ConfigError(f"offload must be an Offload, got {offload!r}")
    sizes = sizes if sizes is not None else QuerySizes.lognormal()
    if not isinstance(sizes, QuerySizes):
        raise ConfigError(f"sizes must be a QuerySizes, got {sizes!r}")
    arrival_rng, size_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    arrivals = poisson_arrivals(rate_qps, duration_s, n_queries, arrival_rng)
    query_sizes = sizes.sample(len(arrivals), size_rng)
    return _run(target, arrivals, query_sizes, sizes.describe(), float(rate_qps), duration_s, sub_batch=sub_batch,
                workers=workers, max_queue=max_queue, drain_timeout_s=drain_timeout_s, offload=offload)


def run_schedule(target: Target, arrivals_s: np.ndarray, sizes: np.ndarray, *, duration_s: float,
                 sizes_text: str = "schedule", sub_batch: int = 64, workers: int = 2, max_queue: int | None = None,
                 drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> LoadResult:
    """Drive ``target`` with a given schedule: query i of ``sizes[i]`` items arrives at ``arrivals_s[i]`` seconds
    (non-decreasing, within ``duration_s``), e.g. a trace's time-varying rate and query-size mix
    (recforge.serving.elastic.traces.schedule). Otherwise as :func:`run_open_loop`."""
    arrivals = np.asarray(arrivals_s, dtype=float)
    query_sizes = np.asarray(sizes, dtype=np.int64)
    if arrivals.ndim != 1 or arrivals.shape != query_sizes.shape:
        raise ConfigError(f"run_schedule: arrivals and sizes must be 1-d and of one length, got shapes "
                          f"{arrivals.shape} and {query_sizes.shape}")
    if arrivals.size and (np.any(np.diff(arrivals) < 0) or arrivals[0] < 0 or arrivals[-1] > duration_s):
        raise ConfigError(f"run_schedule: arrival times must be non-decreasing within [0, {duration_s:g}] s")
    if query_sizes.size and (query_sizes.min() < 1 or query_sizes.max() > MAX_ITEMS):
        raise ConfigError(f"run_schedule: query sizes must be in [1, {MAX_ITEMS}] items")
    check_run_settings(max(1.0, arrivals.size / max(duration_s, 1e-9)), duration_s, None, sub_batch, workers, 0,
                       max_queue, drain_timeout_s)
    return _run(target, arrivals, query_sizes, sizes_text, arrivals.size / max(duration_s, 1e-9), duration_s,
                sub_batch=sub_batch, workers=workers, max_queue=max_queue, drain_timeout_s=drain_timeout_s)


def _run(target: Target, arrivals: np.ndarray, query_sizes: np.ndarray, sizes_text: str, rate_qps: float,
         duration_s: float | None, *, sub_batch: int, workers: int, max_queue: int | None, drain_timeout_s: float,
         offload: Offload | None = None) -> LoadResult:
    max_batch = getattr(target, "max_batch", MAX_ITEMS)
    if sub_batch > max_batch:
        raise ConfigError(f"sub_batch must be an integer in [1, {max_batch}] (the target's max_batch), "
                          f"got {sub_batch}")
    run = _Run(target, arrivals, query_sizes, sub_batch, workers, max_queue, offload)
    dispatcher = threading.Thread(target=run.dispatch, name="loadgen-dispatch", daemon=True)
    pool = [threading.Thread(target=run.work, name=f"loadgen-worker-{i}", daemon=True) for i in range(workers)]
    pool += [threading.Thread(target=run.work, args=(True,), name=f"loadgen-offload-{i}", daemon=True)
             for i in range(offload.workers if offload is not None else 0)]
    schedule_end = float(arrivals[-1]) if len(arrivals) else 0.0
    window_end = duration_s if duration_s is not None else schedule_end  # the offered-load window
    cpu_before = cpu_times()
    run.t0 = time.perf_counter()
    try:
        with collector_paused():
            for thread in pool:
                thread.start()
            dispatcher.start()
            dispatcher.join(timeout=schedule_end + drain_timeout_s + 1.0)
            deadline = time.perf_counter() + drain_timeout_s
            for thread in pool:
                thread.join(timeout=max(0.0, deadline - time.perf_counter()))
    finally:
        with run.lock:
            run.stop.set()  # from here on, threads still running record nothing
            end = run.now()
            issued = run.issued_count
            errors = list(run.errors[:issued])
            finish = run.finish[:issued].copy()
            start = run.start[:issued].copy()
            issued_at = run.issued[:issued].copy()
            offloaded = run.offloaded[:issued].copy()
            served_by = [tuple(sorted(s)) if s else () for s in run.served_by[:issued]]
    steal = steal_pct(cpu_before, cpu_times())
    arrival = arrivals[:issued]
    items = query_sizes[:issued]
    timed_out = 0
    for qi in range(issued):
        if errors[qi] is None and math.isnan(finish[qi]):
            errors[qi] = f"timed out: unfinished {drain_timeout_s:g} s after the last arrival"
            timed_out += 1
    ok = np.array([e is None for e in errors], dtype=bool)
    latencies = (finish[ok] - arrival[ok]) * 1000.0
    waits = (start[ok] - arrival[ok]) * 1000.0
    finished = finish[~np.isnan(finish)]
    wall = max(float(finished.max()) if finished.size else 0.0, window_end, end if timed_out else 0.0, 1e-9)
    completed = int(ok.sum())

    def pct(q: float) -> float:
        return float(np.percentile(latencies, q)) if completed else math.nan

    offloaded_ok = offloaded[ok]

    return LoadResult(
        target=str(getattr(target, "name", type(target).__name__)),
        sizes=sizes_text,
        sub_batch=sub_batch,
        workers=workers,
        offered_qps=float(rate_qps),
        achieved_qps=completed / wall,
        items_per_s=float(items[ok].sum()) / wall,
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        mean_ms=float(latencies.mean()) if completed else math.nan,
        max_ms=float(latencies.max()) if completed else math.nan,
        mean_wait_ms=float(waits.mean()) if completed else math.nan,
        queries=issued,
        completed=completed,
        errors=issued - completed,
        dropped=run.dropped,
        timed_out=timed_out,
        mean_items=float(items.mean()) if issued else math.nan,
        duration_s=wall,
        first_error=next((e for e in errors if e is not None), None),
        offloaded=int(offloaded.sum()),
        offload_threshold=offload.threshold if offload is not None else None,
        offload_p95_ms=float(np.percentile(latencies[offloaded_ok], 95)) if offloaded_ok.any() else math.nan,
        cpu_steal_pct=steal,
        latencies_ms=latencies,
        arrival_s=arrival.copy(),
        issued_s=issued_at,
        start_s=start,
        finish_s=finish,
        items=items.copy(),
        query_errors=errors,
        served_by=served_by,
    )

