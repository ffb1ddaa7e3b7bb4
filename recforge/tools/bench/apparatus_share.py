"""The apparatus' share of each query's latency, from the load generator's own timestamps.

A query's latency runs from its scheduled arrival to its last sub-batch's end. Of that, the time until the
dispatcher actually released it (``issued_s - arrival_s``) is the load generator's own lateness: the apparatus,
not the system under test. The rest (``finish_s - issued_s``: queueing for a worker, the sub-batches' inference)
is the system's. A share near 0 says the measurement is the server's; a growing one says the apparatus is near its
ceiling and the figure is partly its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def apparatus_shares(result: Any) -> np.ndarray:
    """Per completed query of a ``recforge.inference.loadgen.LoadResult``: (issued - arrival) / latency, in [0, 1]."""
    ok = np.array([e is None for e in result.query_errors], dtype=bool)
    if not ok.any():
        return np.zeros(0)
    arrival, issued, finish = (np.asarray(a, dtype=float)[ok] for a in (result.arrival_s, result.issued_s,
                                                                      result.finish_s))
    latency = finish - arrival
    lag = np.clip(issued - arrival, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(latency > 0, lag / latency, 0.0)
    return np.clip(share[np.isfinite(share)], 0.0, 1.0)


def apparatus_share_figures(result: Any) -> dict[str, float | None]:
    """{apparatus_share_median, apparatus_share_p95, apparatus_share_mean, dispatch_lag_ms_p95} of one load run
    (None without completed queries)."""
    shares = apparatus_shares(result)
    if shares.size == 0:
        return {"apparatus_share_median": None, "apparatus_share_p95": None, "apparatus_share_mean": None,
                "dispatch_lag_ms_p95": None}
    ok = np.array([e is None for e in result.query_errors], dtype=bool)
    lag = (np.asarray(result.issued_s, dtype=float)[ok] - np.asarray(result.arrival_s, dtype=float)[ok]) * 1000.0
    lag = lag[np.isfinite(lag)]

    def rounded(value: float) -> float | None:
        return round(float(value), 5) if math.isfinite(value) else None

    return {"apparatus_share_median": rounded(np.median(shares)), "apparatus_share_p95": rounded(
        np.percentile(shares, 95)), "apparatus_share_mean": rounded(shares.mean()),
        "dispatch_lag_ms_p95": rounded(np.percentile(lag, 95)) if lag.size else None}
