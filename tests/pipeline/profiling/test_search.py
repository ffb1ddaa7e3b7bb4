"""recforge.pipeline.profiling.search: latency-bounded throughput on closed-form queueing models with known answers, knob search
(HillClimb against GridSearch) on synthetic throughput surfaces, and the profile document and its schema.

No load is generated: every "measurement" comes from a formula, so the whole module runs in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections import Counter

import jsonschema
import pytest

from recforge.contracts.profile import profile_schema
from recforge.core.errors import ConfigError
from recforge.pipeline.profiling import search as ps
from recforge.pipeline.profiling.search import (
    GridSearch,
    HillClimb,
    LBTConfig,
    LBTEvaluator,
    Measurement,
    SearchStrategy,
    build_profile,
    deeprecsched_axes,
    knob_key,
    latency_bounded_throughput,
    triton_axes,
    validate_profile,
)

LN20 = math.log(20.0)  # p95 of an exponential with rate r is ln(20) / r


def mm1(service_ms: float, queries: int = 2000) -> ps.Measure:
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


# ------------------------------------------------------------------------------------------------------- LBT search


@pytest.mark.parametrize(("service_ms", "target_ms", "tolerance"), [(2.0, 25.0, 0.05), (2.0, 25.0, 0.01),
                                                                    (0.5, 10.0, 0.02)])
def test_lbt_matches_mm1_closed_form_within_tolerance(service_ms, target_ms, tolerance):
    truth = mm1_lbt(service_ms, target_ms)  # 2 ms / 25 ms: 500 - 119.8 = 380.2 qps
    result = latency_bounded_throughput(mm1(service_ms), {"sub_batch": 64}, p95_target_ms=target_ms, start_qps=10,
                                        max_qps=100_000, tolerance=tolerance, max_steps=40)
    assert result.converged and not result.capped and result.note == ""
    assert result.lbt_qps <= truth and (truth - result.lbt_qps) / truth < tolerance
    assert result.knobs == {"sub_batch": 64}
    # every probed point is on the curve, the verdicts match the model, the LBT point is a passing one
    rates = [p.rate_qps for p in result.points]
    assert len(set(rates)) == len(rates) == result.steps == len(result.measurements)
    assert all(p.passed == (p.rate_qps <= truth) for p in result.points)
    assert result.at_lbt is not None and result.at_lbt.rate_qps == result.lbt_qps
    curve = result.curve()
    assert [row["offered_qps"] for row in curve] == sorted(rates)
    # ramp: 10, 20, 40, ... doubling until the first failure
    assert rates[:6] == [10, 20, 40, 80, 160, 320]


def test_lbt_with_max_qps_between_doublings_probes_the_cap():
    result = latency_bounded_throughput(mm1(2.0), {}, p95_target_ms=25, start_qps=100, max_qps=300)
    assert [p.rate_qps for p in result.points] == [100, 200, 300]
    assert result.capped and result.lbt_qps == 300 and "max_qps" in result.note


def test_lbt_zero_when_even_start_rate_breaks_the_slo():
    calls = []

    def slow(rate: float, knobs: dict) -> Measurement:
        calls.append(rate)
        return Measurement(rate, 60.0, 100.0, 150.0, rate, 0, 500)

    result = latency_bounded_throughput(slow, {"sub_batch": 8}, p95_target_ms=25, start_qps=5, max_qps=1000)
    assert result.lbt_qps == 0 and calls == [5] and result.at_lbt is None
    assert "start_qps" in result.note and "p95 100 ms > target 25 ms" in result.note
    assert not result.capped


def test_lbt_capped_when_max_qps_still_passes():
    fast = mm1(0.01)  # mu = 100k qps
    result = latency_bounded_throughput(fast, {}, p95_target_ms=25, start_qps=10, max_qps=640)
    assert result.lbt_qps == 640 and result.capped and result.converged
    assert [p.rate_qps for p in result.points] == [10, 20, 40, 80, 160, 320, 640]
    assert "max_qps 640 still meets the SLO" in result.note
    # start == max: one probe
    one = latency_bounded_throughput(fast, {}, p95_target_ms=25, start_qps=50, max_qps=50)
    assert one.lbt_qps == 50 and one.capped and one.steps == 1


def test_saturation_counts_as_failure_even_with_low_latency():
    """A server that sheds load keeps its p95 low, but completes at most 300 qps: offered rates above
    300 / 0.9 = 333.3 qps are not sustained."""

    def shedding(rate: float, knobs: dict) -> Measurement:
        return Measurement(rate, 2.0, 5.0, 7.0, min(rate, 300.0), 0, 1000)

    truth = 300.0 / 0.9
    result = latency_bounded_throughput(shedding, {}, p95_target_ms=25, start_qps=10, max_qps=10_000)
    assert result.lbt_qps <= truth and (truth - result.lbt_qps) / truth < 0.05 and not result.capped
    failed = [p for p in result.points if not p.passed]
    assert failed and all("saturated" in p.reason and "p95" not in p.reason for p in failed)


def test_error_rate_above_max_counts_as_failure():
    """Errors start above 200 qps: a fraction (rate - 200) / rate fails; with max 1% the LBT is 200 / 0.99."""

    def erroring(rate: float, knobs: dict) -> Measurement:
        queries = 100_000
        errors = round(queries * max(0.0, (rate - 200.0) / rate))
        return Measurement(rate, 1.0, 2.0, 3.0, rate, errors, queries)

    truth = 200.0 / 0.99
    result = latency_bounded_throughput(erroring, {}, p95_target_ms=25, max_error_rate=0.01, start_qps=10,
                                        max_qps=10_000, tolerance=0.01)
    assert result.lbt_qps <= truth and (truth - result.lbt_qps) / truth < 0.01
    strict = latency_bounded_throughput(erroring, {}, p95_target_ms=25, start_qps=10, max_qps=10_000,
                                        tolerance=0.01)
    assert strict.lbt_qps <= 200.0 and (200.0 - strict.lbt_qps) / 200.0 < 0.01
    assert any("error rate" in p.reason for p in strict.points)


def test_repeats_take_the_median_so_one_outlier_run_per_point_does_not_move_the_lbt():
    base = mm1(2.0)
    calls = Counter()

    def noisy(rate: float, knobs: dict) -> Measurement:
        calls[rate] += 1
        m = base(rate, knobs)
        if calls[rate] == 2:  # the second run at every rate hits a GC pause: p95 x 10
            return Measurement(rate, m.p50_ms, m.p95_ms * 10, m.p99_ms * 10, m.achieved_qps, 0, m.queries)
        return m

    truth = mm1_lbt(2.0, 25.0)
    result = latency_bounded_throughput(noisy, {}, p95_target_ms=25, start_qps=10, max_qps=10_000, repeats=3)
    assert (truth - result.lbt_qps) / truth < 0.05 and result.lbt_qps <= truth
    assert all(n == 3 for n in calls.values()) and all(len(p.runs) == 3 for p in result.points)
    assert all(p.measurement.queries == 3 * 2000 for p in result.points)  # counts add up over repeats
    calls.clear()
    lucky = latency_bounded_throughput(noisy, {}, p95_target_ms=25, start_qps=10, max_qps=10_000, repeats=1)
    assert lucky.lbt_qps == result.lbt_qps  # each rate's first run is clean
    calls.clear()
    for rate in (10, 20):  # runs 1 done: the next single run at these rates is the outlier
        calls[rate] = 1
    spoiled = latency_bounded_throughput(noisy, {}, p95_target_ms=25, start_qps=10, max_qps=10_000, repeats=1)
    assert spoiled.lbt_qps < truth / 2  # one bad run fails the ramp early without repeats


def test_confirm_rejects_a_lucky_pass_at_the_top_and_keeps_a_real_one():
    """A server whose true LBT is ~300 qps (M/M/1, 2.5 ms) but whose *first* run at every rate above that is lucky
    (a quiet moment: p95 / 10): one run per rate overstates the LBT; confirming the final rate with 2 more runs
    (median of 3) rejects it, and the resumed bisection ends at a rate that really holds."""
    base = mm1(2.5)
    truth = mm1_lbt(2.5, 25.0)
    calls = Counter()

    def lucky_first(rate: float, knobs: dict) -> Measurement:
        calls[rate] += 1
        m = base(rate, knobs)
        if calls[rate] == 1 and truth < rate < 1000 / 2.5:
            return Measurement(rate, m.p50_ms / 10, m.p95_ms / 10, m.p99_ms / 10, rate, 0, m.queries)
        return m

    kwargs = {"p95_target_ms": 25, "start_qps": 10, "max_qps": 10_000, "tolerance": 0.02}
    fooled = latency_bounded_throughput(lucky_first, {}, **kwargs)
    assert fooled.lbt_qps > truth * 1.05
    calls.clear()
    confirmed = latency_bounded_throughput(lucky_first, {}, confirm=2, **kwargs)
    assert truth * 0.95 <= confirmed.lbt_qps <= truth and confirmed.config.confirm == 2
    assert "did not hold up" in confirmed.note and confirmed.converged
    top = next(p for p in confirmed.points if p.rate_qps == fooled.lbt_qps)
    assert len(top.runs) == 3 and not top.passed  # the overstated rate is now a recorded failure
    assert [p for p in confirmed.points if p.rate_qps == confirmed.lbt_qps][0].passed
    # a clean server keeps its LBT, and the confirmation runs are recorded on the point
    clean = ps.confirm_lbt(base, latency_bounded_throughput(base, {}, **kwargs), 2)
    assert clean.lbt_qps == latency_bounded_throughput(base, {}, **kwargs).lbt_qps
    at_lbt = next(p for p in clean.points if p.rate_qps == clean.lbt_qps)
    assert clean.note.startswith("LBT confirmed by 2 more run(s)") and len(at_lbt.runs) == 3
    with pytest.raises(ConfigError, match="confirm"):
        LBTConfig(confirm=-1)


def test_a_rate_measured_under_cpu_steal_is_measured_again_and_the_least_stolen_attempt_decides(monkeypatch):
    """A shared VM's host takes the CPU away in bursts (steal): a run in one says more about the host than about
    the server. Such a rate is measured again and the least-stolen attempt decides, whatever the outcomes (keeping
    a pass and retrying only failures would keep lucky passes, an upward bias)."""
    monkeypatch.setattr(ps, "STEAL_PAUSE_S", 0.0)
    base = mm1(2.0)
    calls = Counter()

    def burst_at_first_run(rate: float, knobs: dict) -> Measurement:
        calls[rate] += 1
        m = base(rate, knobs)
        if calls[rate] == 1:  # every rate's first run lands in a steal burst: p95 x 50, 30 % steal
            return Measurement(rate, m.p50_ms * 50, m.p95_ms * 50, m.p99_ms * 50, m.achieved_qps, 0, m.queries, 30.0)
        return Measurement(*dataclasses.astuple(m)[:7], 0.5)

    truth = mm1_lbt(2.0, 25.0)
    kwargs = {"p95_target_ms": 25, "start_qps": 10, "max_qps": 10_000}
    result = latency_bounded_throughput(burst_at_first_run, {}, **kwargs)
    assert (truth - result.lbt_qps) / truth < 0.05 and result.lbt_qps <= truth
    assert all(len(p.discarded) == 1 and p.discarded[0].cpu_steal_pct == 30.0 for p in result.points)
    rows = result.curve()
    assert all(r["discarded_runs"] == 1 and r["cpu_steal_pct"] == 0.5 for r in rows)
    calls.clear()
    trusting = latency_bounded_throughput(burst_at_first_run, {}, steal_retries=0, **kwargs)
    assert trusting.lbt_qps == 0 and "even start_qps" in trusting.note  # the burst decided
    calls.clear()
    tolerant = latency_bounded_throughput(burst_at_first_run, {}, max_cpu_steal_pct=50.0, **kwargs)
    assert tolerant.lbt_qps == 0  # 30 % is under this limit: the failure stands
    with pytest.raises(ConfigError, match="max_cpu_steal_pct"):
        LBTConfig(max_cpu_steal_pct=0)


def test_a_lucky_pass_under_steal_does_not_stand_against_a_clean_failure(monkeypatch):
    """The outcome-independent rule: a pass taken under steal is measured again too, and a clean failure wins."""
    monkeypatch.setattr(ps, "STEAL_PAUSE_S", 0.0)
    base = mm1(2.0)
    truth = mm1_lbt(2.0, 25.0)
    calls = Counter()

    def lucky_under_steal(rate: float, knobs: dict) -> Measurement:
        calls[rate] += 1
        m = base(rate, knobs)
        if calls[rate] == 1 and rate > truth:  # above the LBT, the first run passes, in a steal burst
            return Measurement(rate, m.p50_ms / 10, 1.0, 1.0, rate, 0, m.queries, 30.0)
        return Measurement(*dataclasses.astuple(m)[:7], 0.5)

    result = latency_bounded_throughput(lucky_under_steal, {}, p95_target_ms=25, start_qps=10, max_qps=10_000)
    assert (truth - result.lbt_qps) / truth < 0.05 and result.lbt_qps <= truth


def test_measurement_from_a_load_result_corrects_poisson_noise_and_keeps_steal():
    from recforge.inference.loadgen import CallableTarget, run_open_loop

    result = run_open_loop(CallableTarget(lambda n: None), 200.0, duration_s=0.5, seed=3)
    m = Measurement.from_load(result, 200.0, 0.5)
    assert m.queries == result.queries and m.errors == 0
    assert m.achieved_qps == pytest.approx(result.achieved_qps * 200.0 / (result.queries / 0.5))
    assert 0.0 <= m.cpu_steal_pct <= 100.0 and m.cpu_steal_pct == result.cpu_steal_pct


def test_step_budget_spent_returns_last_good_rate_unconverged():
    result = latency_bounded_throughput(mm1(2.0), {}, p95_target_ms=25, start_qps=10, max_qps=10_000,
                                        tolerance=0.001, max_steps=8)
    assert result.steps == 8 and not result.converged and "step budget" in result.note
    assert 0 < result.lbt_qps <= mm1_lbt(2.0, 25.0)
    ramp = latency_bounded_throughput(mm1(2.0), {}, p95_target_ms=25, start_qps=1, max_qps=10_000, max_steps=3)
    assert ramp.lbt_qps == 4 and not ramp.converged and "ramping up" in ramp.note


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"p95_target_ms": -25.0}, "p95_target_ms"),
    ({"p95_target_ms": math.nan}, "p95_target_ms"),
    ({"start_qps": 0.0}, "start_qps"),
    ({"start_qps": 100.0, "max_qps": 50.0}, "max_qps"),
    ({"max_qps": math.inf}, "max_qps"),
    ({"tolerance": 0.0}, "tolerance"),
    ({"tolerance": 1.5}, "tolerance"),
    ({"max_error_rate": -0.1}, "max_error_rate"),
    ({"max_steps": 0}, "max_steps"),
    ({"repeats": 0}, "repeats"),
    ({"min_achieved_ratio": 0.0}, "min_achieved_ratio"),
])
def test_bad_lbt_settings_are_config_errors(kwargs, word):
    args = {"p95_target_ms": 25.0, "start_qps": 10.0, "max_qps": 1000.0, **kwargs}
    calls = []
    with pytest.raises(ConfigError, match=word):
        latency_bounded_throughput(lambda r, k: calls.append(r), {}, **args)
    assert calls == []  # nothing measured


def test_lbt_config_from_dict():
    cfg = LBTConfig.from_dict({"p95_target_ms": 25, "start_qps": 50, "max_qps": 20_000, "repeats": 3})
    assert cfg.p95_target_ms == 25.0 and cfg.repeats == 3
    with pytest.raises(ConfigError, match="unknown key"):
        LBTConfig.from_dict({"p95_target": 25})
    with pytest.raises(ConfigError, match="max_qps"):
        LBTConfig.from_dict({"start_qps": 100, "max_qps": 10})
    with pytest.raises(ConfigError, match="repeats must be int"):
        LBTConfig.from_dict({"repeats": 2.0})


def test_measure_returning_something_else_is_a_type_error():
    with pytest.raises(TypeError, match="not a Measurement"):
        latency_bounded_throughput(lambda r, k: {"p95_ms": 1}, {}, p95_target_ms=25, start_qps=1, max_qps=10)


# ------------------------------------------------------------------------------------------------------ knob search


class Counted:
    """An evaluate() that counts its calls per knob setting."""

    def __init__(self, fn):
        self.fn, self.calls = fn, Counter()

    def __call__(self, knobs: dict) -> float:
        self.calls[knob_key(knobs)] += 1
        return self.fn(knobs)


def peak_128(knobs: dict) -> float:
    """Unimodal in log2(sub_batch), peak 1000 at 128 (small sub-batches: overhead; large: no parallelism)."""
    return 1000.0 - 100.0 * (math.log2(knobs["sub_batch"]) - 7) ** 2


def peak_128_300(knobs: dict) -> float:
    """Concave in (log2 sub_batch, gpu_threshold / 50) with an interaction term; peak 2000 at (128, 300)."""
    x, y = math.log2(knobs["sub_batch"]) - 7, (knobs["gpu_threshold"] - 300) / 50
    return 2000.0 - 30 * x * x - 20 * y * y - 10 * x * y


GPU_THRESHOLDS = (50, 100, 150, 200, 250, 300, 350, 400, 450, 500)


def test_strategies_satisfy_the_protocol():
    axes = deeprecsched_axes()
    assert isinstance(HillClimb(axes), SearchStrategy) and isinstance(GridSearch(axes), SearchStrategy)


@pytest.mark.parametrize("start", [8, 64, 1024])
def test_hill_climb_finds_the_sub_batch_peak_with_fewer_evaluations_than_grid(start):
    axes = deeprecsched_axes()  # 8 .. 1024: 8 values
    assert axes == {"sub_batch": (8, 16, 32, 64, 128, 256, 512, 1024)}
    evaluate = Counted(peak_128)
    result = HillClimb(axes, start={"sub_batch": start}).search(evaluate)
    assert result.strategy == "hill_climb" and result.best_knobs == {"sub_batch": 128} and result.best_value == 1000
    assert max(evaluate.calls.values()) == 1 and len(result.evaluations) == sum(evaluate.calls.values())
    grid = GridSearch(axes).search(Counted(peak_128))
    assert grid.best_knobs == result.best_knobs and len(grid.evaluations) == 8
    assert len(result.evaluations) < len(grid.evaluations)
    # the trajectory starts at the start, climbs strictly, ends at the optimum
    values = [t["value"] for t in result.trajectory]
    assert result.trajectory[0]["knobs"] == {"sub_batch": start}
    assert result.trajectory[-1]["knobs"] == {"sub_batch": 128}
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert "local optimum" in result.note


@pytest.mark.parametrize("start", [{"sub_batch": 8, "gpu_threshold": 50}, {"sub_batch": 1024, "gpu_threshold": 500},
                                   {"sub_batch": 8, "gpu_threshold": 500}, {}])
def test_hill_climb_two_axes_matches_grid_with_far_fewer_evaluations(start):
    axes = deeprecsched_axes(gpu_thresholds=GPU_THRESHOLDS)  # 8 x 10 = 80 configurations
    climb_eval, grid_eval = Counted(peak_128_300), Counted(peak_128_300)
    climb = HillClimb(axes, start=start).search(climb_eval)
    grid = GridSearch(axes).search(grid_eval)
    assert grid.best_knobs == {"sub_batch": 128, "gpu_threshold": 300} and grid.best_value == 2000
    assert climb.best_knobs == grid.best_knobs and climb.best_value == grid.best_value
    assert len(grid.evaluations) == 80 and len(climb.evaluations) < 40
    for counted, result in ((climb_eval, climb), (grid_eval, grid)):  # memoised: nothing evaluated twice
        assert max(counted.calls.values()) == 1
        keys = [knob_key(e["knobs"]) for e in result.evaluations]
        assert len(set(keys)) == len(keys) == sum(counted.calls.values())
    # each trajectory step moves one axis by one position
    for a, b in zip(climb.trajectory, climb.trajectory[1:], strict=False):
        moves = [abs(axes[k].index(a["knobs"][k]) - axes[k].index(b["knobs"][k])) for k in axes]
        assert sorted(moves) == [0, 1] and b["value"] > a["value"]


def test_hill_climb_stops_at_a_local_optimum_that_grid_search_sees_past():
    """Two peaks: 16 (local, 500) and 512 (global, 900); climbing from 8 stops at 16."""
    values = {8: 400, 16: 500, 32: 300, 64: 200, 128: 400, 256: 700, 512: 900, 1024: 600}
    axes = deeprecsched_axes()
    climb = HillClimb(axes, start={"sub_batch": 8}).search(lambda k: values[k["sub_batch"]])
    assert climb.best_knobs == {"sub_batch": 16} and len(climb.evaluations) == 3
    assert GridSearch(axes).search(lambda k: values[k["sub_batch"]]).best_knobs == {"sub_batch": 512}


def test_hill_climb_on_a_zero_plateau_says_so_and_fixed_knobs_reach_evaluate():
    seen = []

    def nothing_passes(knobs: dict) -> float:
        seen.append(dict(knobs))
        return 0.0

    result = HillClimb(deeprecsched_axes(), start={"sub_batch": 64}, fixed={"workers": 2}).search(nothing_passes)
    assert result.best_knobs == {"workers": 2, "sub_batch": 64} and result.best_value == 0
    assert len(seen) == 3 and all(k["workers"] == 2 for k in seen)
    assert "LBT 0" in result.note


def test_hill_climb_evaluation_budget():
    result = HillClimb(deeprecsched_axes(gpu_thresholds=GPU_THRESHOLDS), max_evaluations=5).search(peak_128_300)
    assert len(result.evaluations) == 5 and "budget" in result.note


def test_min_improvement_stops_on_small_gains():
    gains = {8: 100.0, 16: 101.0, 32: 102.0, 64: 200.0, 128: 100, 256: 50, 512: 10, 1024: 1}
    climb = HillClimb(deeprecsched_axes(), min_improvement=0.05).search(lambda k: gains[k["sub_batch"]])
    assert climb.best_knobs == {"sub_batch": 8}  # +1% is noise under a 5% threshold


@pytest.mark.parametrize(("make", "word"), [
    (lambda: HillClimb({}), "non-empty"),
    (lambda: HillClimb({"sub_batch": []}), "non-empty list"),
    (lambda: HillClimb({"sub_batch": [8, 8, 16]}), "repeated"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, start={"sub_batch": 12}), "not on its axis"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, start={"threads": 2}), "not axes"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, fixed={"sub_batch": 8}), "both fixed and searched"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, max_evaluations=0), "max_evaluations"),
    (lambda: GridSearch({"sub_batch": "8,16"}), "non-empty list"),
    (lambda: deeprecsched_axes(2048), "sub-batch bounds"),
    (lambda: deeprecsched_axes(gpu_thresholds=[300, 100]), "ascending"),
    (lambda: triton_axes(0), "max_batch"),
    (lambda: triton_axes(64, queue_delays_us=[100, 0]), "queue_delays_us"),
    (lambda: ps.strategy_from_dict({"strategy": "annealing", "axes": {"sub_batch": [8]}}), "hill_climb"),
])
def test_bad_search_settings_are_config_errors(make, word):
    with pytest.raises(ConfigError, match=word):
        make()


def test_non_finite_evaluation_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        GridSearch({"sub_batch": [8, 16]}).search(lambda k: math.nan)


def test_triton_axes_are_ordered_and_hill_climb_matches_grid_on_them():
    axes = triton_axes(64, max_instances=3)
    assert list(axes) == ["preferred_batch", "queue_delay_us", "instances"]
    assert axes["preferred_batch"] == ([64], [32, 64], [16, 32, 64], [8, 16, 32, 64], [4, 8, 16, 32, 64],
                                       [2, 4, 8, 16, 32, 64], [1, 2, 4, 8, 16, 32, 64], [])
    assert axes["queue_delay_us"] == ps.DEFAULT_QUEUE_DELAYS_US and axes["instances"] == (1, 2, 3)
    assert triton_axes(48)["preferred_batch"][:2] == ([48], [32, 48])  # max_batch need not be a power of two

    def throughput(knobs: dict) -> float:  # peak: [16, 32, 64], 200 us, 2 instances
        p = axes["preferred_batch"].index(knobs["preferred_batch"])
        d = axes["queue_delay_us"].index(knobs["queue_delay_us"])
        return 500.0 - 10 * (p - 2) ** 2 - 8 * (d - 3) ** 2 - 30 * (knobs["instances"] - 2) ** 2

    climb = HillClimb(axes).search(throughput)
    grid = GridSearch(axes).search(throughput)
    assert climb.best_knobs == grid.best_knobs == {"preferred_batch": [16, 32, 64], "queue_delay_us": 200,
                                                   "instances": 2}
    assert len(climb.evaluations) < len(grid.evaluations) == 8 * 8 * 3


def test_strategy_from_dict():
    climb = ps.strategy_from_dict({"axes": {"sub_batch": [8, 16, 32]}, "start": {"sub_batch": 16}})
    assert isinstance(climb, HillClimb) and climb.start == (1,)
    assert isinstance(ps.strategy_from_dict({"strategy": "grid", "axes": {"sub_batch": [8]}}), GridSearch)
    with pytest.raises(ConfigError, match="grid"):
        ps.strategy_from_dict({"strategy": "grid", "axes": {"sub_batch": [8]}, "start": {}})


# --------------------------------------------------------------------------------------------------------- profile


def sub_batch_server(knobs: dict) -> float:
    """Mean service time (ms) of a 167-item query against the sub-batch size: per-request overhead for small
    sub-batches, lost parallelism for big ones; fastest at 128."""
    return 1.0 + 0.25 * (math.log2(knobs["sub_batch"]) - 7) ** 2


def server_measure(rate: float, knobs: dict) -> Measurement:
    return mm1(sub_batch_server(knobs))(rate, knobs)


@pytest.fixture(scope="module")
def searched():
    evaluate = LBTEvaluator(server_measure, p95_target_ms=25, start_qps=20, max_qps=50_000, tolerance=0.02)
    result = HillClimb(deeprecsched_axes(), start={"sub_batch": 32}).search(evaluate)
    return evaluate, result


def make_profile(searched, **overrides) -> dict:
    evaluate, result = searched
    kwargs = dict(
        model_family="wide_deep", variant="int8", variant_run_id=uuid.UUID(int=7).hex, onnx_sha256="ab" * 32,
        target={"name": "cpu-2c", "kind": "cpu-onnxruntime", "device": "2 vCPU x86_64", "threads": 1, "workers": 2},
        load={"distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
              "sub_batch_policy": {"mode": "searched"}},
        search=result, lbt=evaluate.result_for(result.best_knobs),
        latency_vs_batch={1: 0.2, 64: 0.9, 256: 2.7}, accuracy={"auc": 0.79, "delta_auc": -0.0004},
        measured_at="2026-03-01T02:15:00+00:00", host="profiler-1", code_version="0123abc",
    )
    kwargs.update(overrides)
    return build_profile(**kwargs)


def test_lbt_evaluator_with_hill_climb_finds_the_best_sub_batch(searched):
    evaluate, result = searched
    assert result.best_knobs == {"sub_batch": 128}
    truth = mm1_lbt(1.0, 25.0)  # 1000 - 119.8 qps
    assert result.best_value <= truth and (truth - result.best_value) / truth < 0.02
    assert len(evaluate.results) == len(result.evaluations)  # one LBT search per distinct configuration
    with pytest.raises(ConfigError, match="never evaluated"):
        evaluate.result_for({"sub_batch": 1024})


def test_schema_is_valid_draft_2020_12_and_every_property_is_described():
    schema = profile_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    undescribed = []

    def walk(node, path):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if "description" not in sub:
                    undescribed.append(f"{path}.{name}")
            for key, sub in node.items():
                if key not in ("if", "then", "else"):  # conditions restate properties described above
                    walk(sub, f"{path}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema, "$")
    assert undescribed == []
    assert set(schema["required"]) >= {"schema_version", "model_family", "variant", "variant_run_id", "onnx_sha256",
                                       "target", "load", "p95_target_ms", "search", "latency_bounded_throughput_qps",
                                       "items_per_s", "curve", "latency_vs_batch", "accuracy", "measured_at", "host",
                                       "code_version"}


def test_built_profile_validates_and_survives_a_json_round_trip(searched):
    evaluate, result = searched
    doc = make_profile(searched)
    lbt = evaluate.result_for(result.best_knobs)
    assert doc["latency_bounded_throughput_qps"] == lbt.lbt_qps == result.best_value
    assert doc["search"]["best_knobs"] == {"sub_batch": 128} and doc["search"]["strategy"] == "hill_climb"
    assert len(doc["search"]["evaluations"]) == len(result.evaluations)
    assert doc["p95_target_ms"] == 25.0 and doc["load"]["arrival"] == "poisson"
    mean_items = math.exp(5.1 + 0.2**2 / 2)  # ~167.3
    assert doc["load"]["mean_items_per_query"] == pytest.approx(mean_items)
    assert doc["items_per_s"] == pytest.approx(lbt.lbt_qps * mean_items)
    offered = [row["offered_qps"] for row in doc["curve"]]
    assert offered == sorted(offered) and len(offered) == lbt.steps
    assert doc["latency_vs_batch"] == [{"batch": 1, "ms": 0.2}, {"batch": 64, "ms": 0.9}, {"batch": 256, "ms": 2.7}]
    text = json.dumps(doc, allow_nan=False)
    validate_profile(json.loads(text))


def test_profile_with_a_saturated_point_stores_null_percentiles(searched):
    evaluate, result = searched
    # an LBT search that overshoots into saturation (mu = 1000 qps < 1280): p95 is infinite there
    lbt = ps.lbt_from_config(server_measure, {"sub_batch": 128},
                             LBTConfig(p95_target_ms=25, start_qps=10, max_qps=5000))
    assert any(not math.isfinite(p.measurement.p95_ms) for p in lbt.points)
    doc = make_profile(searched, lbt=lbt)
    assert any(row["p95_ms"] is None for row in doc["curve"])
    json.dumps(doc, allow_nan=False)


def test_defaults_fill_time_host_and_code_version(searched, monkeypatch):
    monkeypatch.setenv("RECFORGE_GIT_COMMIT", "feedbeef")
    doc = make_profile(searched, measured_at=None, host=None, code_version=None)
    assert doc["code_version"] == "feedbeef" and doc["host"]
    assert doc["measured_at"].endswith("+00:00")


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d.pop("onnx_sha256"), "$.onnx_sha256"),
    (lambda d: d["target"].pop("kind"), "$.target.kind"),
    (lambda d: d["target"].__setitem__("threads", "two"), "$.target.threads"),
    (lambda d: d["target"].__setitem__("kind", "tpu-xla"), "$.target.kind"),
    (lambda d: d.__setitem__("onnx_sha256", "XYZ"), "$.onnx_sha256"),
    (lambda d: d["curve"][1].__setitem__("p95_ms", -1.0), "$.curve[1].p95_ms"),
    (lambda d: d["curve"][0].pop("achieved_qps"), "$.curve[0].achieved_qps"),
    (lambda d: d["search"]["evaluations"][0]["knobs"].__setitem__("sub_batch", 0),
     "$.search.evaluations[0].knobs.sub_batch"),
    (lambda d: d["load"]["params"].pop("sigma"), "$.load.params.sigma"),
    (lambda d: d["accuracy"].__setitem__("auc", 1.5), "$.accuracy.auc"),
    (lambda d: d.__setitem__("measured_at", "yesterday"), "$.measured_at"),
    (lambda d: d.__setitem__("measured_at", "2026-13-01T00:00:00Z"), "$.measured_at"),
    (lambda d: d.__setitem__("schema_version", 2), "$.schema_version"),
    (lambda d: d.__setitem__("extra", 1), "$"),
    (lambda d: d.__setitem__("items_per_s", math.inf), "$.items_per_s"),
    (lambda d: d["curve"][0].__setitem__("p50_ms", d["curve"][0]["p99_ms"] + 1), "$.curve[0]"),
])
def test_invalid_profiles_fail_with_the_json_path(searched, mutate, path):
    doc = json.loads(json.dumps(make_profile(searched)))
    validate_profile(doc)
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        validate_profile(doc)
    assert f"invalid profile at {path}:" in str(info.value)


def test_build_profile_rejects_what_the_schema_rejects(searched):
    with pytest.raises(ConfigError, match=r"\$\.target\.kind"):
        make_profile(searched, target={"name": "x", "kind": "fpga", "device": "?", "threads": 1})
    with pytest.raises(ConfigError, match=r"\$\.accuracy\.delta_auc"):
        make_profile(searched, accuracy={"auc": 0.8})
    with pytest.raises(ConfigError, match="mean_items_per_query"):
        make_profile(searched, load={"distribution": "empirical", "params": {"source": "sizes.npy"},
                                     "sub_batch_policy": {"mode": "fixed", "sub_batch": 64}})
    doc = make_profile(searched, load={"distribution": "empirical", "params": {"source": "sizes.npy"},
                                       "mean_items_per_query": 150.0,
                                       "sub_batch_policy": {"mode": "fixed", "sub_batch": 64}})
    assert doc["load"]["mean_items_per_query"] == 150.0


def test_profile_of_a_variant_that_never_meets_the_slo(searched):
    _, result = searched
    lbt = latency_bounded_throughput(lambda r, k: Measurement(r, 50.0, 90.0, 120.0, r, 0, 100), {"sub_batch": 128},
                                     p95_target_ms=25, start_qps=10, max_qps=1000)
    doc = make_profile(searched, lbt=lbt)
    assert doc["latency_bounded_throughput_qps"] == 0 and doc["items_per_s"] == 0
    assert any("start_qps" in note for note in doc["notes"])
