"""recforge.pipeline.profiling.lbt: latency-bounded throughput on closed-form queueing models with known answers.

No load is generated: every "measurement" comes from a formula (closed_form.py), so the module runs in about a
second.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling import lbt as lbt_module
from recforge.pipeline.profiling.lbt import (
    LBTConfig,
    Measurement,
    confirm_lbt,
    latency_bounded_throughput,
)
from tests.pipeline.profiling.closed_form import mm1, mm1_lbt

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
    clean = confirm_lbt(base, latency_bounded_throughput(base, {}, **kwargs), 2)
    assert clean.lbt_qps == latency_bounded_throughput(base, {}, **kwargs).lbt_qps
    at_lbt = next(p for p in clean.points if p.rate_qps == clean.lbt_qps)
    assert clean.note.startswith("LBT confirmed by 2 more run(s)") and len(at_lbt.runs) == 3
    with pytest.raises(ConfigError, match="confirm"):
        LBTConfig(confirm=-1)


def test_a_rate_measured_under_cpu_steal_is_measured_again_and_the_least_stolen_attempt_decides(monkeypatch):
    """A shared VM's host takes the CPU away in bursts (steal): a run in one says more about the host than about
    the server. Such a rate is measured again and the least-stolen attempt decides, whatever the outcomes (keeping
    a pass and retrying only failures would keep lucky passes, an upward bias)."""
    monkeypatch.setattr(lbt_module, "STEAL_PAUSE_S", 0.0)
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
    monkeypatch.setattr(lbt_module, "STEAL_PAUSE_S", 0.0)
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


