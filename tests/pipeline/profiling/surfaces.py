"""Synthetic Triton response surfaces for the knob-search tests: each knob setting is an M/M/1 queue whose
capacity a closed-form surface gives (optionally with seeded noise per load run), so that every setting's true
LBT is known and a search's pick can be scored exactly."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from recforge.pipeline.profiling.lbt import LBTConfig, Measurement
from recforge.pipeline.profiling.search.axes import triton_knobs_valid

LN20 = math.log(20.0)
P95_TARGET_MS = 50.0
LBT_CONFIG = LBTConfig(p95_target_ms=P95_TARGET_MS, start_qps=50.0, max_qps=100_000.0, tolerance=0.05,
                       max_steps=20, steal_retries=0)

# the space of the real-server comparison (tests/pipeline/profiling/test_search_vs_grid_triton.py): 24 valid
SMALL_AXES = {"sub_batch": (64, 256), "instances": (1, 2), "queue_delay_us": (0, 1000),
              "preferred_batch": ([], [128]), "max_batch_size": (128, 512)}
SMALL_START = {"sub_batch": 256, "instances": 1, "queue_delay_us": 0, "preferred_batch": [], "max_batch_size": 512}


def true_lbt(capacity_qps: float, target_ms: float = P95_TARGET_MS) -> float:
    """The LBT of an M/M/1 queue: the p95 sojourn ln(20) / (mu - lambda) meets the target up to this rate."""
    return max(0.0, capacity_qps - LN20 / (target_ms / 1000.0))


class QueueSurface:
    """``measure(rate, knobs)`` of an M/M/1 queue of capacity ``capacity(knobs)`` (0 for knobs Triton would
    refuse), the capacity scaled by ``1 + N(0, noise)`` per run (seeded); ``runs`` counts the calls."""

    def __init__(self, capacity: Callable[[dict], float], *, noise: float = 0.0, seed: int = 0):
        self.capacity, self.noise = capacity, noise
        self.rng = random.Random(seed)
        self.runs = 0

    def true_lbt(self, knobs: dict) -> float:
        return true_lbt(self.capacity(knobs)) if triton_knobs_valid(knobs) else 0.0

    def __call__(self, rate: float, knobs: dict) -> Measurement:
        self.runs += 1
        mu = self.capacity(knobs) if triton_knobs_valid(knobs) else 0.0
        if self.noise:
            mu *= 1.0 + self.rng.gauss(0.0, self.noise)
        if rate >= mu:
            return Measurement(rate, math.inf, math.inf, math.inf, max(mu, 0.0), 0, 1000)

        def pct(q: float) -> float:
            return -math.log(1 - q) / (mu - rate) * 1000.0

        return Measurement(rate, pct(0.5), pct(0.95), pct(0.99), rate, 0, 1000)


def table(axis: str, values: dict) -> Callable[[dict], float]:
    """A factor looked up by one knob (lists are looked up as tuples)."""

    def factor(knobs: dict) -> float:
        value = knobs[axis]
        return values[tuple(value) if isinstance(value, list) else value]

    return factor


def product_surface(base: float, *factors: Callable[[dict], float]) -> Callable[[dict], float]:
    def capacity(knobs: dict) -> float:
        return base * math.prod(f(knobs) for f in factors)

    return capacity


# Flat next to the start where it matters: no preferred size vs. [256] and 0 vs. 100 µs queue delay serve alike,
# the gains are two steps away (preferred [128, 256], 500 µs); sub-batch peaks at 128, two instances help.
FLAT_NEIGHBOURS = product_surface(
    400.0,
    table("sub_batch", {32: 0.5, 64: 0.8, 128: 1.0, 256: 0.9, 512: 0.7, 1024: 0.6}),
    table("instances", {1: 1.0, 2: 1.4}),
    table("queue_delay_us", {0: 1.0, 100: 1.0, 500: 1.25, 2000: 1.1}),
    table("preferred_batch", {(): 1.0, (256,): 1.0, (128, 256): 1.15, (1024,): 0.8, (512, 1024): 0.9}),
    table("max_batch_size", {256: 1.05, 1024: 1.0}),
)

# the small space: instances and sub-batch matter most, a queue delay helps only small sub-batches (requests of
# one query batched together), a preferred size helps a little with a delay
SMALL_SURFACE = product_surface(
    500.0,
    table("sub_batch", {64: 0.85, 256: 1.0}),
    table("instances", {1: 1.0, 2: 1.5}),
    lambda k: 1.3 if k["queue_delay_us"] and k["sub_batch"] == 64 else 1.0,
    lambda k: 1.08 if k["preferred_batch"] and k["queue_delay_us"] else 1.0,
    table("max_batch_size", {128: 1.04, 512: 1.0}),
)
