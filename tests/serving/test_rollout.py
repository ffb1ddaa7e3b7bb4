"""Rollout stage: configuration, the canary gate, the state file and the history (the real-fleet rollouts are in
tests/serving/test_rollout_fleet.py)."""

from __future__ import annotations

import math

import pytest

from recforge.contracts import tags
from recforge.core.errors import ConfigError
from recforge.serving.rollout import RolloutConfig, append_history, gate, load_state, read_history, save_state
from recforge.serving.rollout.history import json_number
from recforge.serving.rollout.plan import tag_number


def test_config_defaults_and_reference():
    cfg = RolloutConfig(model="recforge-dlrm")
    assert cfg.reference == "champion-cpu-triton"
    assert RolloutConfig(model="recforge-dlrm", version="3").reference == "3"


@pytest.mark.parametrize("bad", [
    {"model": "bad name"}, {"model": "m", "canary_weight_pct": 0}, {"model": "m", "canary_weight_pct": 80},
    {"model": "m", "max_error_rate": 2.0}, {"model": "m", "target": "CPU!"}, {"model": "m", "sizes": "zipf"},
    {"model": "m", "target": "cpu"},  # the old name of cpu-onnxruntime: targets have one vocabulary
    {"model": "m", "unknown": 1},
])
def test_config_refuses_nonsense(bad):
    with pytest.raises(ConfigError):
        RolloutConfig.from_dict(bad)


def test_config_from_dag_params_coerces_numbers():
    cfg = RolloutConfig.from_params({"model": "recforge-ncf", "target": "cpu-onnxruntime", "version": "",
                                     "canary_weight_pct": 20, "canary_duration_s": 12, "p95_slo_ms": 0,
                                     "max_error_rate": 0, "load_qps": 0})
    assert cfg.canary_duration_s == 12.0 and cfg.canary_weight_pct == 20


GOOD = {"queries": 500, "p95_ms": 8.0, "error_rate": 0.0, "canary_p95_ms": 6.0, "canary_error_rate": 0.0,
        "canary_requests": 60}


def test_gate_passes_within_limits():
    verdict = gate(GOOD, p95_slo_ms=25.0, max_error_rate=0.001)
    assert verdict.passed and verdict.reasons == []


@pytest.mark.parametrize("change, words", [
    ({"p95_ms": 40.0}, "p95 through the balancer 40.0 ms > SLO 25.0"),
    ({"canary_p95_ms": 90.0}, "canary p95 (Triton) 90.0 ms"),
    ({"error_rate": 0.01}, "error rate through the balancer 0.0100"),
    ({"canary_error_rate": 0.5}, "canary error rate 0.5000"),
    ({"queries": 0}, "completed no queries"),
    ({"canary_requests": 0}, "canary served no requests"),
    ({"p95_ms": math.nan}, "no p95 measured"),
])
def test_gate_names_every_broken_limit(change, words):
    verdict = gate(GOOD | change, p95_slo_ms=25.0, max_error_rate=0.001)
    assert not verdict.passed
    assert any(words in reason for reason in verdict.reasons), verdict.reasons


def test_gate_ignores_an_unmeasured_canary_p95():
    assert gate(GOOD | {"canary_p95_ms": math.nan}, 25.0, 0.001).passed


ATTRIBUTED = GOOD | {"canary_query_p95_ms": 9.0, "canary_request_p95_ms": 4.0, "baseline_request_p95_ms": 4.0}


@pytest.mark.parametrize("change, passed, words", [
    # a slow canary: its queries over the SLO, its requests far slower than the previous version's -> roll back
    ({"canary_query_p95_ms": 60.0, "canary_request_p95_ms": 50.0, "baseline_request_p95_ms": 10.0, "p95_ms": 40.0},
     False, "p95 of the queries the canary served 60.0 ms > SLO 25.0 ms; its requests 50.0 ms at p95 against "
            "10.0 ms on the previous version (+400%)"),
    # the whole fleet over its SLO, the canary's requests no slower than the rest: not the version's doing
    ({"canary_query_p95_ms": 33.0, "canary_request_p95_ms": 21.0, "baseline_request_p95_ms": 20.0, "p95_ms": 32.5},
     True, "the fleet is over its SLO with or without the new version"),
    # slower than the previous version, but within the SLO: recorded
    ({"canary_request_p95_ms": 8.0}, True, "the canary is slower than the previous version"),
    # the canary alone answered (one-node fleet): the SLO decides
    ({"canary_query_p95_ms": 30.0, "baseline_request_p95_ms": math.nan}, False,
     "p95 of the queries the canary served 30.0 ms > SLO 25.0 ms"),
    # attribution makes the whole-fleet p95 a warning, not a reason
    ({"p95_ms": 26.0}, True, "p95 through the balancer 26.0 ms > SLO 25.0 ms (whole fleet)"),
])
def test_gate_compares_the_canary_with_the_previous_version_under_the_same_load(change, passed, words):
    verdict = gate(ATTRIBUTED | change, p95_slo_ms=25.0, max_error_rate=0.001, max_p95_regression=0.2)
    assert verdict.passed == passed
    said = verdict.warnings if passed else verdict.reasons
    assert any(words in text for text in said), (verdict.reasons, verdict.warnings)


def test_gate_keeps_the_error_limits_with_attribution_and_reads_triton_p95_as_a_warning():
    verdict = gate(ATTRIBUTED | {"canary_p95_ms": 90.0, "canary_error_rate": 0.5}, 25.0, 0.001)
    assert not verdict.passed and verdict.reasons == ["canary error rate 0.5000 > max 0.0010"]
    assert verdict.warnings == ["canary p95 (Triton) 90.0 ms > SLO 25.0 ms (server-side sliding window, warm-up "
                                "and smoke test included)"]
    assert gate(ATTRIBUTED, 25.0, 0.001).passed and gate(ATTRIBUTED, 25.0, 0.001).warnings == []


def test_attributed_p95_splits_queries_and_requests_by_the_node_that_answered():
    from recforge.inference.loadgen import CallableTarget, QuerySizes, run_open_loop
    from recforge.serving.rollout import attributed_p95

    calls = iter(range(10**6))

    def answer(n_items: int) -> str:  # every 4th request lands on the canary node0
        return "node0" if next(calls) % 4 == 0 else "node1"

    result = run_open_loop(CallableTarget(answer), 500.0, n_queries=200, sizes=QuerySizes.fixed(100), sub_batch=50,
                           workers=1, seed=0)
    requests = [("node0", 30.0)] * 10 + [("node1", 10.0)] * 30 + [(None, 99.0)]
    figures = attributed_p95(result, requests, "node0")
    assert figures["canary_queries"] == sum("node0" in s for s in result.served_by) == 100  # 2 requests per query
    assert figures["canary_query_p95_ms"] >= 0
    assert (figures["canary_request_p95_ms"], figures["canary_request_count"]) == (30.0, 10.0)
    assert (figures["baseline_request_p95_ms"], figures["baseline_request_count"]) == (10.0, 30.0)
    nobody = attributed_p95(run_open_loop(CallableTarget(lambda n: None), 500.0, n_queries=10, workers=1), [],
                            "node0")
    assert math.isnan(nobody["canary_query_p95_ms"]) and nobody["canary_queries"] == 0
    assert math.isnan(nobody["baseline_request_p95_ms"])


def test_state_file_and_history_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path))
    plan = {"rollout_id": "manual__2026-11-23T10:00:00+00:00", "model": "m", "nodes": {"n0": {"version": "2"}}}
    save_state(plan)
    assert load_state(plan["rollout_id"]) == plan
    assert load_state("other") is None
    append_history({"model": "m", "outcome": "promoted"})
    append_history({"model": "x", "outcome": "rolled_back"})
    assert [r["outcome"] for r in read_history("m")] == ["promoted"]
    assert len(read_history()) == 2
    with pytest.raises(ConfigError):
        save_state({"rollout_id": "../../etc/passwd"})


def test_plan_numbers_are_json_without_nan():
    """A plan goes through XCom (strict JSON) between the DAG's tasks: a missing figure is None, never NaN."""
    assert tag_number({}, tags.LBT_QPS) is None and tag_number({tags.LBT_QPS: "12.5"}, tags.LBT_QPS) == 12.5
    assert json_number(math.nan) is None and json_number(math.inf) is None and json_number(3.0) == 3.0


def test_gate_fails_a_canary_whose_node_crashed_whatever_its_latencies():
    verdict = gate(GOOD | {"canary_crashes": 1.0}, p95_slo_ms=25.0, max_error_rate=1.0)
    assert not verdict.passed and any("crashed 1 time" in r for r in verdict.reasons), verdict.reasons
    assert gate(GOOD | {"canary_crashes": 0.0}, 25.0, 0.001).passed
