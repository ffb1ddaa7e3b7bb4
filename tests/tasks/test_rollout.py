"""Rollout stage: configuration, the canary gate, the state file and the history (the real-fleet rollouts are in
tests/serving/test_rollout_fleet.py)."""

from __future__ import annotations

import math

import pytest

from tasks.errors import ConfigError
from tasks.rollout import RolloutConfig, append_history, gate, load_state, read_history, save_state


def test_config_defaults_and_reference():
    cfg = RolloutConfig(model="recforge-dlrm")
    assert cfg.reference == "champion-cpu-triton"
    assert RolloutConfig(model="recforge-dlrm", version="3").reference == "3"


@pytest.mark.parametrize("bad", [
    {"model": "bad name"}, {"model": "m", "canary_weight_pct": 0}, {"model": "m", "canary_weight_pct": 80},
    {"model": "m", "max_error_rate": 2.0}, {"model": "m", "target": "CPU!"}, {"model": "m", "sizes": "zipf"},
    {"model": "m", "unknown": 1},
])
def test_config_refuses_nonsense(bad):
    with pytest.raises(ConfigError):
        RolloutConfig.from_dict(bad)


def test_config_from_dag_params_coerces_numbers():
    cfg = RolloutConfig.from_params({"model": "recforge-ncf", "target": "cpu", "version": "", "canary_weight_pct": 20,
                                     "canary_duration_s": 12, "p95_slo_ms": 0, "max_error_rate": 0, "load_qps": 0})
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
