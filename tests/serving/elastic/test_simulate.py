"""The fleet simulator: static provisioning at a load it can carry never violates, static mean provisioning
violates at the peak, runs are reproducible from their seed, bursts are recovered from, a slowed node is routed
around, and the CLI prints the table and one machine-readable line per policy."""

from __future__ import annotations

import json

import pytest

from recforge.serving.elastic import traces
from recforge.serving.elastic.baselines import StaticPolicy, static_mean
from recforge.serving.elastic.control import ControlConfig, ElasticController
from recforge.serving.elastic.report import reversals
from recforge.serving.elastic.simulate import POLICIES, FleetSimulator, SimConfig, main, make_policy


def sized(trace, model, nodes, utilisation=0.9):
    """``trace`` scaled so its highest rate is ``utilisation`` of ``nodes`` x LBT."""
    return trace.scaled(utilisation * nodes * model.lbt_qps / float(trace.rate_qps.max()))


def test_static_peak_never_violates_at_a_load_it_can_carry(node_model):
    trace = sized(traces.diurnal(minutes=5, seed=1), node_model, 6)
    result = FleetSimulator(trace, node_model, StaticPolicy("static-peak", 6, "test"), SimConfig(seed=1)).run()
    assert result.windows_within_slo_pct == 100.0
    assert result.over_slo_pct < 0.5
    assert (result.shed, result.failed) == (0, 0)
    assert result.node_seconds == pytest.approx(6 * trace.duration_s)
    assert result.requests == pytest.approx(trace.rate_qps.sum() * trace.interval_s, rel=0.01)


def test_static_mean_violates_during_the_peak(node_model):
    trace = sized(traces.diurnal(minutes=5, seed=1), node_model, 6)
    policy = static_mean(trace, node_model, 6)
    assert policy.nodes < 6
    result = FleetSimulator(trace, node_model, policy, SimConfig(seed=1)).run()
    assert result.windows_within_slo_pct < 100.0
    assert result.over_slo_pct > 5.0


def test_a_run_is_reproducible_from_its_seed(node_model):
    trace = sized(traces.with_bursts(traces.diurnal(minutes=4, seed=2)), node_model, 8)

    def run(seed):
        policy = make_policy("recforge", trace, node_model, 8)
        return FleetSimulator(trace, node_model, policy, SimConfig(seed=seed)).run().to_dict()

    first, again, other = run(5), run(5), run(6)
    first.pop("wall_s"), again.pop("wall_s"), other.pop("wall_s")
    assert first == again
    assert first["requests"] != other["requests"]


def test_the_controller_recovers_from_bursts_and_scales_with_the_day(node_model):
    trace = sized(traces.with_bursts(traces.diurnal(minutes=12, seed=0), durations_s=(10, 30, 60)), node_model, 10,
                  utilisation=0.95)
    policy = make_policy("recforge", trace, node_model, 10)
    sim = FleetSimulator(trace, node_model, policy, SimConfig(seed=0))
    result = sim.run()
    assert len(result.recovery_s) == 3
    assert max(result.recovery_s) <= 30.0
    assert result.windows_within_slo_pct >= 95.0
    peak = FleetSimulator(trace, node_model, make_policy("static-peak", trace, node_model, 10), SimConfig()).run()
    assert result.node_seconds < peak.node_seconds
    assert reversals(sim.targets) >= 1  # it did follow the day down


def test_a_slow_node_gets_less_traffic_and_a_degraded_one_is_replaced(node_model):
    trace = sized(traces.step_bursts(base_qps=1000, durations_s=(), gap_s=240), node_model, 6, utilisation=0.7)
    control = ControlConfig(min_nodes=6, max_nodes=6)

    def run(policy, speed):
        sim = FleetSimulator(trace, node_model, policy, SimConfig(seed=0, slow_node_at_s=30.0, slow_node_speed=speed))
        return sim, sim.run()

    slow, slow_result = run(ElasticController(node_model, control), 0.8)
    assert slow.names[0] == "node0" and slow.speed[0] == 0.8
    assert slow.weight[0] < 0.9 * slow.weight[1:].min()  # less traffic, still serving
    assert slow_result.windows_within_slo_pct == 100.0

    degraded, degraded_result = run(ElasticController(node_model, control), 0.5)
    equal, equal_result = run(StaticPolicy("static", 6, "test"), 0.5)
    assert "node0" not in degraded.names and len(degraded.names) == 6  # drained and replaced
    assert degraded_result.failed == 0 and equal_result.failed > 0
    assert degraded_result.over_slo_pct < 1.0 < equal_result.over_slo_pct


def test_the_cli_prints_the_table_and_a_line_per_policy(profile_file, capsys):
    assert main(["--trace", "diurnal", "--nodes", "4", "--minutes", "2", "--profile", str(profile_file)]) == 0
    out = capsys.readouterr().out
    results = [json.loads(line.removeprefix("RESULT ")) for line in out.splitlines() if line.startswith("RESULT ")]
    assert [r["policy"] for r in results] == list(POLICIES)
    assert "windows ok %" in out.splitlines()[0]


def test_the_cli_reports_a_bad_trace_on_one_line(profile_file, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert main(["--trace", str(empty), "--nodes", "4", "--profile", str(profile_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trace file") and "empty" in err and "\n" not in err
    assert main(["--policy", "nope", "--nodes", "2", "--minutes", "1", "--profile", str(profile_file)]) == 1
    assert "unknown policy" in capsys.readouterr().err
