"""Closed-form queueing models with known answers: the fake measurements the LBT and search tests run on."""

from __future__ import annotations

import math

from recforge.pipeline.profiling.lbt import Measure, Measurement

LN20 = math.log(20.0)  # p95 of an exponential with rate r is ln(20) / r


def mm1(service_ms: float, queries: int = 2000) -> Measure:
    """An M/M/1 server with mean service time ``service_ms``: the sojourn time is exponential with rate
    mu - lambda, so p_q = -ln(1 - q) / (mu - lambda); at or beyond mu the queue grows without bound (saturated)."""
    mu = 1000.0 / service_ms  # qps

    def measure(rate: float, knobs: dict) -> Measurement:
        if rate >= mu:
            return Measurement(rate, math.inf, math.inf, math.inf, mu, 0, queries)
        pct = lambda q: -math.log(1 - q) / (mu - rate) * 1000.0  # noqa: E731
        return Measurement(rate, pct(0.5), pct(0.95), pct(0.99), rate, 0, queries)

    return measure


def mm1_lbt(service_ms: float, target_ms: float) -> float:
    """Largest lambda with p95 <= target: mu - ln(20) / target."""
    return 1000.0 / service_ms - LN20 / (target_ms / 1000.0)
