"""What a load run measured: the :class:`LoadResult` summary with its per-query arrays, and one
:class:`QueryRecord` per query."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class QueryRecord:
    """One query of a run; times in seconds from the start of the run (NaN: never happened)."""

    arrival_s: float  # scheduled arrival: latency counts from here
    issued_s: float  # when the dispatcher actually released it
    start_s: float  # when its first sub-batch began
    finish_s: float  # when its last sub-batch ended
    items: int
    error: str | None

    @property
    def latency_ms(self) -> float:
        return (self.finish_s - self.arrival_s) * 1000.0


def _stat(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


@dataclass
class LoadResult:
    """Outcome of :func:`run_open_loop`. Latencies (ms) are over the queries completed without error."""

    target: str
    sizes: str
    sub_batch: int
    workers: int
    offered_qps: float  # the configured Poisson rate
    achieved_qps: float  # completed queries / wall time
    items_per_s: float  # items of completed queries / wall time
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    mean_wait_ms: float  # mean queueing delay: arrival to first sub-batch start (completed queries)
    queries: int  # arrivals issued
    completed: int
    errors: int  # target errors + dropped + timed_out
    dropped: int  # rejected at arrival: max_queue queries were already waiting
    timed_out: int  # unfinished when the drain timeout expired
    mean_items: float  # items per issued query
    duration_s: float  # measurement window: start to the later of the last completion and the arrival window's
    # end (duration_s, or the last arrival with n_queries); to the give-up time if queries timed out
    first_error: str | None = None
    offloaded: int = 0  # issued queries sent whole to the Offload target (0 without one)
    offload_threshold: int | None = None  # items; None: no offload
    offload_p95_ms: float = math.nan  # p95 of the completed offloaded queries
    # CPU steal (%) during the run: time the hypervisor ran other guests while ours wanted the CPU. On a shared VM
    # it comes in bursts that stall every thread for milliseconds; a run taken in one measures the host, not us.
    cpu_steal_pct: float = math.nan
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    arrival_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    issued_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    start_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    finish_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    query_errors: list[str | None] = field(default_factory=list, repr=False)
    served_by: list[tuple[str, ...]] = field(default_factory=list, repr=False)  # per issued query: what answered

    _ARRAYS = ("latencies_ms", "arrival_s", "issued_s", "start_s", "finish_s", "items", "query_errors", "served_by")

    def latencies_by(self, served: Callable[[tuple[str, ...]], bool]) -> np.ndarray:
        """Latencies (ms) of the queries completed without error whose ``served_by`` satisfies ``served``."""
        ok = [e is None for e in self.query_errors]
        picked = [served(s) for s, good in zip(self.served_by, ok, strict=True) if good]
        return self.latencies_ms[np.array(picked, dtype=bool)] if picked else np.zeros(0)

    def records(self) -> list[QueryRecord]:
        """One :class:`QueryRecord` per issued query, in arrival order."""
        return [QueryRecord(float(a), float(i), float(s), float(f), int(n), e) for a, i, s, f, n, e in zip(
            self.arrival_s, self.issued_s, self.start_s, self.finish_s, self.items, self.query_errors, strict=True)]

    def to_dict(self, include_latencies: bool = False) -> dict[str, Any]:
        """The summary as plain JSON-able values (NaN becomes None); per-query latencies only on request."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in self._ARRAYS:
                continue
            value = getattr(self, name)
            out[name] = _stat(value) if isinstance(value, float) else value
        if include_latencies:
            out["latencies_ms"] = [round(float(x), 4) for x in self.latencies_ms]
        return out

