"""Timing a call the way every stage reports it (the median of repeated runs after a warm-up), and the UTC
timestamp every record carries."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any


def median_ms(call: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median milliseconds of ``repeats`` calls of ``call`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def utc_now() -> str:
    """Now in UTC, ISO 8601 to the second (the timestamp of state files, histories and measurements)."""
    return utc_iso(time.time())


def utc_iso(epoch_s: float) -> str:
    """A Unix time in UTC, ISO 8601 to the second (as :func:`utc_now` writes it)."""
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="seconds")
