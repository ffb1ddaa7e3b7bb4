"""`make bench`'s run-to-run stability (issue 12 item 4: two runs agree within 10%), on fake servers whose true LBTs
and latencies are known: the rounds' LBT search (``lbt.round_lbt_search``) resolves a round's LBT to its tolerance,
and the two-phase rounds (``rounds.run_rounds``) land the median ratio on the true one, the same on two "days" of
different noise and machine drift. Fake measurements only: no load is generated, no clock is read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from recforge.pipeline.profiling.lbt import Measurement
from recforge.tools.bench import compare
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.lbt import baseline_thread_options, load_point_duration_s, round_lbt_search
from recforge.tools.bench.rounds import BASELINE, RECFORGE, RESTART_FRACTION, RoundSide, run_rounds, summarize_rounds

CFG = BenchConfig()  # the defaults `make bench` runs with


@dataclass(frozen=True)
class FakeServer:
    """An M/M/1 server behind a fixed overhead: a query's latency is ``overhead_ms`` + an exponential sojourn of mean
    1 / (capacity - rate), so p95 = overhead + ln(20) / (capacity - rate); its true LBT is where that meets the
    target."""

    overhead_ms: float
    capacity_qps: float

    def p95_ms(self, rate: float) -> float:
        return self.overhead_ms + 1000.0 * math.log(20) / (self.capacity_qps - rate)

    def true_lbt(self, target_ms: float = CFG.p95_target_ms) -> float:
        return self.capacity_qps - 1000.0 * math.log(20) / (target_ms - self.overhead_ms)


class FakeMachine:
    """One "day": a load run's p95 is that of as many sampled latencies as it has queries (so a short run's p95 is
    as noisy as a real one's), and the machine's speed drifts slowly over the runs (both sides alike, as other work on
    a shared VM does)."""

    def __init__(self, seed: int, phase: float, drift: float = 0.1):
        self.rng, self.phase, self.drift = np.random.default_rng(seed), phase, drift
        self.runs = 0

    def run(self, server: FakeServer, rate: float, seconds: float) -> tuple[float, float, int]:
        """(p50 ms, p95 ms, queries) of one load run of ``seconds`` at ``rate``: inf when saturated."""
        self.runs += 1
        capacity = server.capacity_qps * (1 + self.drift * math.sin(self.runs / 30 + self.phase))
        queries = max(20, round(rate * seconds))
        if rate >= capacity:
            return math.inf, math.inf, queries
        latencies = server.overhead_ms + self.rng.exponential(1000.0 / (capacity - rate), queries)
        return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 95)), queries

    def measure(self, server: FakeServer):
        def measure(rate: float, _knobs: dict) -> Measurement:
            p50, p95, queries = self.run(server, rate, CFG.round_point_duration_s)
            achieved = rate if math.isfinite(p95) else 0.8 * rate
            return Measurement(rate, p50, p95, 1.5 * p95, achieved, errors=0, queries=queries)
        return measure

    def load_point(self, server: FakeServer, rate: float) -> dict:
        p50, p95, queries = self.run(server, rate, load_point_duration_s(CFG, rate))
        return {"p50_ms": p50, "p95_ms": p95, "queries": queries}

    def side(self, server: FakeServer, first_start_qps: float) -> RoundSide:
        return RoundSide(search_lbt=lambda start: round_lbt_search(self.measure(server), {}, CFG, start, None).lbt_qps,
                         load_point=lambda rate: self.load_point(server, rate),
                         unloaded=lambda lbt: self.load_point(server, CFG.unloaded_fraction * lbt),
                         first_start_qps=first_start_qps)


BASELINE_SERVER = FakeServer(overhead_ms=1.0, capacity_qps=1100.0)  # true LBT 975 qps
RECFORGE_SERVER = FakeServer(overhead_ms=0.5, capacity_qps=3200.0)  # true LBT 3078 qps
TRUE_LBT_RATIO = RECFORGE_SERVER.true_lbt() / BASELINE_SERVER.true_lbt()


def true_p95_ratio(fraction: float) -> float:
    rate = fraction * BASELINE_SERVER.true_lbt()
    return RECFORGE_SERVER.p95_ms(rate) / BASELINE_SERVER.p95_ms(rate)


def bench_day(seed: int, phase: float, drift: float = 0.1) -> dict:
    """One day's rounds with `make bench`'s settings; the first starts a little off the truth, as estimates are."""
    machine = FakeMachine(seed, phase, drift)
    sides = {BASELINE: machine.side(BASELINE_SERVER, 700.0), RECFORGE: machine.side(RECFORGE_SERVER, 2600.0)}
    results = run_rounds(sides, CFG.rounds, CFG.load_fractions, fallback_qps=10.0, start_spread=CFG.round_ramp_factor)
    return summarize_rounds(results, CFG.load_fraction, CFG.confidence)


def exact(server: FakeServer):
    """A noiseless measurement: the server's true p95 at the rate."""
    def measure(rate: float, _knobs: dict) -> Measurement:
        p95 = server.p95_ms(rate) if rate < server.capacity_qps else math.inf
        return Measurement(rate, p95 / 2, p95, 1.5 * p95, rate if math.isfinite(p95) else 0.8 * rate, 0, 100)
    return measure


def test_a_rounds_lbt_search_resolves_to_its_tolerance():
    server = BASELINE_SERVER
    truth = server.true_lbt()
    for start in (RESTART_FRACTION * truth, 0.95 * truth, 1.3 * truth, 0.5 * truth):  # below, near, above, far below
        result = round_lbt_search(exact(server), {}, CFG, start, None)
        assert truth * (1 - CFG.round_tolerance) <= result.lbt_qps <= truth, start
        assert result.limit == "slo" and result.converged and result.steps <= CFG.round_max_steps
    # the apparatus ceiling bounds it, and says so
    capped = round_lbt_search(exact(server), {}, CFG, 500.0, 600.0)
    assert capped.lbt_qps == 600.0 and capped.limit == "apparatus"
    # a side that meets the SLO nowhere: an LBT of 0 after stepping down from its start
    assert round_lbt_search(exact(FakeServer(30.0, 100.0)), {}, CFG, 80.0, None).lbt_qps == 0.0


def test_the_median_ratios_land_on_the_true_ones():
    steady = [bench_day(seed, 0.0, drift=0.0) for seed in range(10)]
    drifting = [bench_day(seed, 0.6 * seed, drift=0.1) for seed in range(10, 20)]
    for summary in steady + drifting:
        # the LBT ratio does not depend on the machine's speed here (both capacities scale alike)
        assert summary["throughput_ratio"]["median"] == pytest.approx(TRUE_LBT_RATIO, rel=0.05)
        # the p95 ratio at a fixed offered rate does (a slower machine is nearer its knee), within a few percent
        assert summary["latency_ratio"]["median"] == pytest.approx(true_p95_ratio(CFG.load_fraction), rel=0.12)
        # the loads are fixed from the baseline's median LBT: the same offered rates in every round
        assert summary["rates"][str(CFG.load_fraction)] == pytest.approx(
            CFG.load_fraction * summary[BASELINE]["lbt_qps"]["median"])

    # a round's LBT is a probed rate, within the search's resolution of the truth: the interval, widened by that,
    # holds the true ratio every day
    tol = CFG.round_tolerance
    for summary in steady + drifting:
        interval = summary["throughput_ratio"]
        assert interval["low"] * (1 - tol) <= TRUE_LBT_RATIO <= interval["high"] * (1 + tol)
    # a p95 is not quantized: 5 rounds' [min, max] covers the median 93.75% of the time, so most steady days
    truth = true_p95_ratio(CFG.load_fraction)
    assert sum(s["latency_ratio"]["low"] <= truth <= s["latency_ratio"]["high"] for s in steady) >= 8


def test_two_days_agree_within_ten_percent():
    def headline(summary: dict) -> dict:
        figures = ("latency_ratio", "throughput_ratio")
        return {("fake", "inprocess"): {name: summary[name]["median"] for name in figures}}

    for k in range(5):
        # a steady machine: what is left is the method's own noise (probe verdicts, p95s of finite runs)
        rows = compare.spreads(headline(bench_day(100 + 2 * k, 0.0, drift=0.0)),
                               headline(bench_day(101 + 2 * k, 0.0, drift=0.0)))
        assert len(rows) == 2 and all(abs(r["spread"]) <= 0.10 for r in rows), rows
        # a machine whose speed drifts +-10% over the run, differently each day: the LBT ratio still agrees (the
        # rounds pair the sides' searches); a p95 at a fixed offered rate is the machine's speed's too, so the p95
        # ratio follows the day's speed (up to 20% apart here): the lead's runs are on a quiet machine
        rows = compare.spreads(headline(bench_day(200 + 2 * k, 0.5 + k, drift=0.1)),
                               headline(bench_day(201 + 2 * k, 3.5 + k, drift=0.1)), figures=("throughput_ratio",))
        assert len(rows) == 1 and abs(rows[0]["spread"]) <= 0.10, rows


def test_load_runs_have_enough_queries_for_a_p95_and_thread_options():
    assert load_point_duration_s(CFG, 1000.0) == CFG.compare_duration_s
    assert load_point_duration_s(CFG, 100.0) == pytest.approx(CFG.min_load_queries / 100.0)
    assert load_point_duration_s(CFG, 0.0) == CFG.compare_duration_s
    assert baseline_thread_options(BenchConfig(baseline_threads=3)) == (3,)
    options = baseline_thread_options(CFG)
    assert options[0] == 1 and options == tuple(sorted(set(options)))
