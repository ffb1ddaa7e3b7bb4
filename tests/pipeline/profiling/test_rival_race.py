"""Racing a family's variants: ``lbt.challenge_rate`` (one run at a rival's LBT, the LBT below it when that fails)
and ``profile_variant.rival_screen`` on closed-form M/M/1 servers with known answers, and the race order of
``stage``. No load is generated: the whole module runs in well under a second."""

from __future__ import annotations

import dataclasses

import pytest

from recforge.pipeline.profiling.lbt import (
    BELOW_FIRST,
    LBTConfig,
    LBTEvaluator,
    Measurement,
    challenge_rate,
    confirm_lbt,
    lbt_from_config,
)
from recforge.pipeline.profiling.profile_variant import RIVAL_MARGIN, RIVAL_SCREEN, Rival, rival_screen
from recforge.pipeline.profiling.stage import family_jobs, race_order
from tests.pipeline.profiling.closed_form import mm1, mm1_lbt

CONFIG = LBTConfig(p95_target_ms=25, start_qps=10, tolerance=0.05, max_steps=20, ramp_factor=4)


def counting(measure):
    rates = []

    def wrapped(rate: float, knobs: dict) -> Measurement:
        rates.append(rate)
        return measure(rate, knobs)

    return wrapped, rates


def test_a_setting_that_sustains_the_rivals_rate_is_left_to_a_full_search():
    measure, rates = counting(mm1(2.0))  # LBT 380 qps
    assert challenge_rate(measure, {"sub_batch": 64}, CONFIG, 300.0) is None
    assert rates == [300.0]  # one run decided


def test_a_slower_setting_gets_its_lbt_below_the_failed_rate():
    truth = mm1_lbt(4.0, 25)  # 250 - 119.8 = 130.2 qps
    measure, rates = counting(mm1(4.0))
    result = challenge_rate(measure, {"sub_batch": 64}, CONFIG, 380.0)
    assert result is not None and result.converged and not result.capped
    assert result.lbt_qps <= truth and (truth - result.lbt_qps) / truth < CONFIG.tolerance
    assert rates[0] == 380.0 and rates[1] == pytest.approx(380.0 * BELOW_FIRST)  # the challenge (saturated: no
    # second run), then a short step down
    assert all(p.passed == (p.rate_qps <= truth) for p in result.points)
    assert 380.0 in [row["offered_qps"] for row in result.curve()]  # the failed challenge stays on the curve
    assert len(rates) <= CONFIG.max_steps


def test_a_near_miss_is_run_again_and_the_second_run_decides():
    calls = []

    def flaky(rate: float, knobs: dict) -> Measurement:  # the first run misses narrowly, the second passes
        calls.append(rate)
        p95 = 30.0 if len(calls) == 1 else 20.0
        return Measurement(rate, 5.0, p95, p95, rate, 0, 100)

    assert challenge_rate(flaky, {}, CONFIG, 200.0) is None and calls == [200.0, 200.0]


def test_a_setting_failing_even_the_start_rate_has_lbt_zero():
    result = challenge_rate(mm1(200.0), {}, CONFIG, 380.0)  # 5 qps of capacity: 10 qps saturates it
    assert result is not None and result.lbt_qps == 0.0 and result.points[-1].rate_qps == CONFIG.start_qps


def test_the_challenge_rate_is_bounded_by_the_apparatus():
    config = LBTConfig(p95_target_ms=25, start_qps=10, apparatus_ceiling_qps=300)
    measure, rates = counting(mm1(4.0))
    challenge_rate(measure, {}, config, 1000.0)
    assert rates[0] == 300.0


AXES = {"sub_batch": (32, 64, 128), "preferred_batch": ((), (256,))}
FIXED = {"workers": 2}
RIVAL_KNOBS = {"sub_batch": 64, "preferred_batch": [256], "workers": 2}  # as read back from a profile's JSON


def test_rival_screen_measures_a_slower_variant_below_the_rivals_lbt_at_its_knobs():
    seen = []

    def measure(rate: float, knobs: dict) -> Measurement:
        seen.append(knobs)
        return mm1(4.0)(rate, knobs)  # LBT 130 qps

    evaluator = LBTEvaluator(measure, CONFIG)
    search = rival_screen(evaluator, Rival("pruned50", RIVAL_KNOBS, 380.0), AXES, FIXED)
    assert search is not None and search.strategy == RIVAL_SCREEN
    assert search.best_knobs == RIVAL_KNOBS and all(k == RIVAL_KNOBS for k in seen)
    truth = mm1_lbt(4.0, 25)
    assert search.best_value == evaluator.result_for(RIVAL_KNOBS).lbt_qps <= truth
    assert (truth - search.best_value) / truth < CONFIG.tolerance
    (screen,) = search.screens
    assert screen["rate_qps"] == pytest.approx(380.0 * (1 + RIVAL_MARGIN)) and not screen["passed"]
    assert "pruned50" in search.note and "below" in search.note
    assert [e["knobs"] for e in search.evaluations] == [RIVAL_KNOBS]


def test_rival_screen_searches_a_faster_variant_upwards_from_the_rivals_lbt():
    rates = []

    def measure(rate: float, knobs: dict) -> Measurement:
        assert knobs == RIVAL_KNOBS
        rates.append(rate)
        return mm1(1.0)(rate, knobs)  # LBT 880 qps: keeps up with a 380 qps rival

    evaluator = LBTEvaluator(measure, CONFIG)
    search = rival_screen(evaluator, Rival("pruned50", RIVAL_KNOBS, 380.0), AXES, FIXED)
    assert search is not None and search.strategy == RIVAL_SCREEN and search.screens[0]["passed"]
    truth = mm1_lbt(1.0, 25)
    assert 380.0 < search.best_value <= truth
    assert min(rates) >= 380.0 * (1 + RIVAL_MARGIN) - 1e-9  # never below the rate it sustained
    assert "searched from there" in search.note and evaluator.result_for(RIVAL_KNOBS).lbt_qps >= search.best_value


def test_a_lucky_pass_of_the_challenge_is_searched_below_when_it_does_not_hold_up():
    calls = []

    def measure(rate: float, knobs: dict) -> Measurement:  # LBT 130 qps, but the challenge's one run passes
        calls.append(rate)
        if len(calls) == 1:
            return Measurement(rate, 5.0, 10.0, 12.0, rate, 0, 200)
        return mm1(4.0)(rate, knobs)

    evaluator = LBTEvaluator(measure, CONFIG)
    search = rival_screen(evaluator, Rival("pruned50", RIVAL_KNOBS, 380.0), AXES, FIXED)
    truth = mm1_lbt(4.0, 25)
    assert search is not None and search.screens[0]["passed"]
    assert 0 < search.best_value <= truth and (truth - search.best_value) / truth < CONFIG.tolerance


@pytest.mark.parametrize("knobs", [
    {"sub_batch": 16, "preferred_batch": [], "workers": 2},  # a value the space does not have
    {"sub_batch": 64, "preferred_batch": [], "workers": 4},  # another fixed knob
    {"sub_batch": 64, "workers": 2},  # a knob missing
])
def test_rival_knobs_outside_the_space_or_without_an_lbt_are_not_raced(knobs):
    def never(rate: float, knobs: dict) -> Measurement:
        raise AssertionError("nothing should be measured")

    evaluator = LBTEvaluator(never, CONFIG)
    assert rival_screen(evaluator, Rival("other", knobs, 380.0), AXES, FIXED) is None
    assert rival_screen(evaluator, Rival("other", RIVAL_KNOBS, 0.0), AXES, FIXED) is None


def test_variants_race_fastest_first_and_group_per_family():
    jobs = [{"family": "dlrm", "variant": "fp32", "latency_ms_b256": 3.0},
            {"family": "ncf", "variant": "fp32", "latency_ms_b256": 1.0},
            {"family": "dlrm", "variant": "unmeasured", "latency_ms_b256": None},
            {"family": "dlrm", "variant": "pruned50", "latency_ms_b256": 1.5}]
    grouped = family_jobs(jobs)
    assert [g["family"] for g in grouped] == ["dlrm", "ncf"]
    assert [j["variant"] for j in race_order(grouped[0]["variants"])] == ["pruned50", "fp32", "unmeasured"]


def test_a_warm_started_evaluator_starts_later_searches_at_half_the_best_lbt():
    calls: list[tuple[int, float]] = []
    # LBT 380 qps, and 166.7 - 119.8 = 46.9 qps: less than half of 380, so found below the warm start
    servers = {64: mm1(2.0), 128: mm1(6.0)}

    def measure(rate: float, knobs: dict) -> Measurement:
        calls.append((knobs["sub_batch"], rate))
        return servers[knobs["sub_batch"]](rate, knobs)

    evaluator = LBTEvaluator(measure, CONFIG, warm_start=True)
    first = evaluator({"sub_batch": 64})
    assert calls[0] == (64, CONFIG.start_qps)
    second = evaluator({"sub_batch": 128})
    later = [rate for knob, rate in calls if knob == 128]
    assert later[0] == pytest.approx(0.5 * first)  # not from start_qps again
    truth = mm1_lbt(6.0, 25)
    assert second <= truth and (truth - second) / truth < CONFIG.tolerance
    cold = LBTEvaluator(measure, CONFIG)
    cold({"sub_batch": 64})
    calls.clear()
    cold({"sub_batch": 128})
    assert calls[0] == (128, CONFIG.start_qps)


def test_a_confirmation_that_fails_at_the_bottom_of_a_search_from_a_high_rate_searches_below():
    # an LBT search that started at 300 qps (a rate a lucky screen sustained) on a server whose LBT is 130 qps:
    # made to pass there once, it has no lower point to fall back on
    lucky = {"left": 1}

    def measure(rate: float, knobs: dict) -> Measurement:
        if lucky["left"] and rate == 300.0:
            lucky["left"] -= 1
            return Measurement(rate, 5.0, 10.0, 12.0, rate, 0, 200)
        return mm1(4.0)(rate, knobs)

    high = dataclasses.replace(CONFIG, start_qps=300.0, max_steps=2)
    found = lbt_from_config(measure, {}, high)
    assert found.lbt_qps == 300.0
    truth = mm1_lbt(4.0, 25)
    confirmed = confirm_lbt(measure, found, 2, floor_qps=CONFIG.start_qps)
    assert 0 < confirmed.lbt_qps <= truth and "did not hold up" in confirmed.note
    assert confirm_lbt(measure, found, 2).lbt_qps == 0.0  # without a floor below it: nothing to fall back on
