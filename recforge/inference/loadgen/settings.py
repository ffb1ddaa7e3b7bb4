"""The bounds of a load run and the checks of its settings: one-line ConfigErrors naming the setting."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recforge.core.errors import ConfigError

MIN_ITEMS, MAX_ITEMS = 1, 1024  # items per query and per sub-batch
MAX_RATE_QPS = 100_000.0
MAX_DURATION_S = 3600.0
MAX_QUERIES = 1_000_000  # per run, so that the schedule and the records stay bounded
MAX_WORKERS = 256
MAX_THREADS = 64
DEFAULT_DRAIN_TIMEOUT_S = 10.0
LOGNORMAL_MU, LOGNORMAL_SIGMA = 5.1, 0.2  # DeepRecSys' default query-size distribution
NORMAL_MEAN, NORMAL_STD = 165.0, 40.0


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int, or a ConfigError naming ``name`` and the allowed range ``[low, high]``."""
    if not _is_int(value) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = True, unit: str = "") -> float:
    """``value`` as a finite float in ``(low, high]`` (``[low, high]`` if not ``low_open``), else a ConfigError."""
    ok = _is_number(value) and math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be a number in {interval}{' ' + unit if unit else ''}, got {value!r}")
    return float(value)


def seeded_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """``rng`` itself, or a generator seeded with it (a seed must be an integer in [0, 2**63 - 1])."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None:
        check_int("seed", rng, 0, 2**63 - 1)
    return np.random.default_rng(rng)


def check_run_settings(rate_qps: float, duration_s: float | None = None, n_queries: int | None = None,
                       sub_batch: int = 64, workers: int = 2, seed: int = 0, max_queue: int | None = None,
                       drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
    """The ConfigError ``run_open_loop`` would raise for these settings, before any model is loaded."""
    check_number("rate_qps", rate_qps, 0.0, MAX_RATE_QPS, unit="queries/s")
    if (duration_s is None) == (n_queries is None):
        raise ConfigError("give exactly one of duration_s and n_queries")
    if duration_s is not None:
        check_number("duration_s", duration_s, 0.0, MAX_DURATION_S, unit="s")
        if rate_qps * duration_s > MAX_QUERIES:
            raise ConfigError(f"rate_qps * duration_s must be at most {MAX_QUERIES} queries, "
                              f"got {rate_qps * duration_s:.0f}; lower the rate or the duration")
    else:
        check_int("n_queries", n_queries, 1, MAX_QUERIES)
    check_int("sub_batch", sub_batch, 1, MAX_ITEMS)
    check_int("workers", workers, 1, MAX_WORKERS)
    check_int("seed", seed, 0, 2**63 - 1)
    if max_queue is not None:
        check_int("max_queue", max_queue, 1, MAX_QUERIES)
    check_number("drain_timeout_s", drain_timeout_s, 0.0, MAX_DURATION_S, unit="s")

