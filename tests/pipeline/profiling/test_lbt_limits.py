"""No cap on the measured axis (issue 12 item 3): the LBT search ramps up until the SLO fails, bounded only by the
apparatus ceiling (or an explicit max_qps, or the step budget), and says which limit ended it. Closed-form servers
as fake measurements (no load is generated), except the one null-target ceiling measurement at the end."""

from __future__ import annotations

import math
import uuid

import pytest

from recforge.core.errors import ConfigError
from recforge.inference.loadgen import QuerySizes
from recforge.pipeline.profiling.apparatus_ceiling import NullTarget, null_target_ceiling_qps
from recforge.pipeline.profiling.document import build_profile
from recforge.pipeline.profiling.lbt import (
    LIMIT_APPARATUS,
    LIMIT_MAX_QPS,
    LIMIT_SLO,
    LIMIT_STEPS,
    LBTConfig,
    LBTEvaluator,
    Measurement,
    confirm_lbt,
    latency_bounded_throughput,
)
from recforge.pipeline.profiling.plots import close_figure, plot_p95_vs_load
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.search.hill_climb import HillClimb
from tests.pipeline.profiling.closed_form import mm1, mm1_lbt


def never_saturates(rate: float, knobs: dict) -> Measurement:
    return Measurement(rate, 1.0, 2.0, 3.0, rate, 0, 1000)


def test_without_a_cap_the_ramp_goes_on_until_the_slo_fails():
    # an M/M/1 server of 0.1 ms: LBT ~ 9,880 qps, far above the old 2,000 qps default cap
    truth = mm1_lbt(0.1, 25.0)
    result = latency_bounded_throughput(mm1(0.1), {}, p95_target_ms=25, start_qps=20, tolerance=0.02, max_steps=40)
    assert result.limit == LIMIT_SLO and not result.capped and result.converged
    assert result.lbt_qps <= truth and (truth - result.lbt_qps) / truth < 0.02
    assert max(p.rate_qps for p in result.points) > truth  # a failing rate above the LBT bounds it
    assert result.config.max_qps is None and result.config.apparatus_ceiling_qps is None


def test_reaching_the_apparatus_ceiling_is_reported_as_a_lower_bound():
    result = latency_bounded_throughput(never_saturates, {}, p95_target_ms=25, start_qps=100,
                                        apparatus_ceiling_qps=1000)
    assert [p.rate_qps for p in result.points] == [100, 200, 400, 800, 1000]  # the ceiling itself is probed once
    assert result.lbt_qps == 1000 and result.limit == LIMIT_APPARATUS and result.capped
    assert "apparatus ceiling (1000 qps" in result.note and "lower bound" in result.note


def test_the_lower_of_ceiling_and_max_qps_is_the_limit_named():
    by_cap = latency_bounded_throughput(never_saturates, {}, p95_target_ms=25, start_qps=100, max_qps=300,
                                        apparatus_ceiling_qps=1000)
    assert by_cap.lbt_qps == 300 and by_cap.limit == LIMIT_MAX_QPS and "max_qps 300" in by_cap.note
    by_apparatus = latency_bounded_throughput(never_saturates, {}, p95_target_ms=25, start_qps=100, max_qps=5000,
                                              apparatus_ceiling_qps=1000)
    assert by_apparatus.lbt_qps == 1000 and by_apparatus.limit == LIMIT_APPARATUS


def test_a_failure_below_the_ceiling_is_an_slo_limit():
    result = latency_bounded_throughput(mm1(2.0), {}, p95_target_ms=25, start_qps=10, apparatus_ceiling_qps=50_000)
    assert result.limit == LIMIT_SLO and not result.capped and result.lbt_qps <= mm1_lbt(2.0, 25.0)


def test_step_budget_spent_while_ramping_is_a_lower_bound():
    result = latency_bounded_throughput(never_saturates, {}, p95_target_ms=25, start_qps=10, max_steps=3)
    assert result.lbt_qps == 40 and result.limit == LIMIT_STEPS and result.capped and not result.converged
    assert "lower bound" in result.note


def test_ramp_factor_sets_the_ramp_step():
    result = latency_bounded_throughput(mm1(2.0), {}, p95_target_ms=25, start_qps=10, ramp_factor=4.0)
    assert [p.rate_qps for p in result.points][:4] == [10, 40, 160, 640]  # 640 > mu = 500: fails, then bisection
    assert result.limit == LIMIT_SLO and result.lbt_qps <= mm1_lbt(2.0, 25.0)


def test_a_ceiling_rate_that_does_not_hold_up_is_no_longer_a_limit():
    flips = {"n": 0}

    def lucky_at_the_top(rate: float, knobs: dict) -> Measurement:
        if rate >= 1000:  # passes once, then fails when re-measured
            flips["n"] += 1
            return Measurement(rate, 1.0, 2.0 if flips["n"] == 1 else 99.0, 3.0, rate, 0, 1000)
        return never_saturates(rate, knobs)

    first = latency_bounded_throughput(lucky_at_the_top, {}, p95_target_ms=25, start_qps=250,
                                       apparatus_ceiling_qps=1000)
    assert first.limit == LIMIT_APPARATUS
    confirmed = confirm_lbt(lucky_at_the_top, first, runs=2)
    assert confirmed.lbt_qps < 1000 and confirmed.limit == LIMIT_SLO and not confirmed.capped


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"start_qps": 2000.0, "apparatus_ceiling_qps": 1000.0}, "apparatus_ceiling_qps"),
    ({"apparatus_ceiling_qps": math.inf}, "apparatus_ceiling_qps"),
    ({"ramp_factor": 1.0}, "ramp_factor"),
])
def test_bad_ceiling_settings_are_config_errors(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        LBTConfig(**{"p95_target_ms": 25.0, "start_qps": 10.0, **kwargs})


def test_profile_config_has_no_cap_and_takes_the_ceiling():
    cfg = ProfileConfig()
    assert cfg.max_qps is None and cfg.apparatus_ceiling_qps is None and cfg.ramp_factor == 4.0
    given = ProfileConfig(start_qps=50, apparatus_ceiling_qps=4000, ramp_factor=3).lbt_config()
    assert given.apparatus_ceiling_qps == 4000 and given.max_qps is None and given.ramp_factor == 3
    assert ProfileConfig(start_qps=50).lbt_config(measure_ceiling=False).apparatus_ceiling_qps is None
    assert ProfileConfig(max_qps=400, start_qps=100).lbt_config(measure_ceiling=False).max_qps == 400


def profile_of(search, lbt) -> dict:
    return build_profile(
        model_family="dlrm", variant="fp32", variant_run_id=uuid.UUID(int=3).hex, onnx_sha256="cd" * 32,
        target={"name": "cpu-onnxruntime", "kind": "cpu-onnxruntime", "device": "cpu", "threads": 1, "workers": 2},
        load={"distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
              "sub_batch_policy": {"mode": "searched"}},
        search=search, lbt=lbt, accuracy={"auc": 0.78, "delta_auc": 0.0}, measured_at="2026-11-26T06:00:00+00:00",
        host="h", code_version="abc")


def test_profile_document_says_what_limited_the_lbt():
    evaluate = LBTEvaluator(never_saturates, LBTConfig(p95_target_ms=25, start_qps=100, apparatus_ceiling_qps=800))
    search = HillClimb({"sub_batch": (64, 128)}, start={"sub_batch": 64}).search(evaluate)
    doc = profile_of(search, evaluate.result_for(search.best_knobs))
    assert doc["lbt_limit"] == LIMIT_APPARATUS and doc["lbt_capped"] is True
    assert doc["apparatus_ceiling_qps"] == 800 and doc["latency_bounded_throughput_qps"] == 800
    assert "max_qps" not in doc["search"]["lbt_search"] and doc["search"]["lbt_search"]["ramp_factor"] == 2.0
    assert any("apparatus ceiling 800 qps = 1.0x the LBT" in n for n in doc["notes"])
    figure = plot_p95_vs_load(doc)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    close_figure(figure)
    assert any("capped at the apparatus ceiling" in label for label in labels)
    assert any(label.startswith("apparatus ceiling 800 qps") for label in labels)
    uncapped = LBTEvaluator(mm1(2.0), LBTConfig(p95_target_ms=25, start_qps=10, apparatus_ceiling_qps=50_000))
    uncapped({"sub_batch": 64})
    doc = profile_of(search, uncapped.result_for({"sub_batch": 64}))
    assert doc["lbt_limit"] == LIMIT_SLO and doc["lbt_capped"] is False


def test_null_target_ceiling_is_the_load_generators_own_rate():
    assert NullTarget().infer(64) is None
    ceiling = null_target_ceiling_qps(QuerySizes.lognormal(), sub_batch=32, workers=2, queries=300)
    assert math.isfinite(ceiling) and ceiling > 0
