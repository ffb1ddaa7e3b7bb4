"""The elastic benchmark's parts that need no fleet: the replay schedule of a trace, the tallies of a replay in the
simulator's terms, the controller's decision log read back, the calibrated profile and each policy's controller
config. (The benchmark itself starts a fleet per policy: `make bench-elastic`, docs/elastic.md.)"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest

from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import CallableTarget, run_schedule
from recforge.serving.elastic import traces
from recforge.serving.elastic.baselines import StaticPolicy
from recforge.serving.elastic.live import LiveConfig
from recforge.tools import elastic_bench as eb
from recforge.tools import elastic_bench_report as rep


def test_a_schedule_replays_the_trace_rates_and_mix_and_is_seeded():
    trace = traces.with_bursts(traces.diurnal(minutes=2, peak_qps=200, seed=1))
    arrivals, sizes = traces.schedule(trace, seed=3)
    assert arrivals.size == sizes.size
    assert np.all(np.diff(arrivals) >= 0) and arrivals[0] >= 0 and arrivals[-1] < trace.duration_s
    per_second = np.bincount(arrivals.astype(int), minlength=trace.rate_qps.size)
    # Poisson counts: the total within 4 standard deviations of the trace's, and the bursts are there
    assert abs(per_second.sum() - trace.rate_qps.sum()) < 4 * np.sqrt(trace.rate_qps.sum())
    burst = trace.bursts[0]
    inside = per_second[int(burst.start_s):int(burst.start_s + burst.duration_s)].mean()
    before = per_second[int(burst.start_s) - 10:int(burst.start_s)].mean()
    assert inside > 1.5 * before
    # sizes come from the mix's bins: lognormal(5.1..5.2, 0.2) puts them in [64, 512)
    assert sizes.min() >= 1 and sizes.max() <= 1024 and 120 < sizes.mean() < 260
    again = traces.schedule(trace, seed=3)
    assert np.array_equal(again[0], arrivals) and np.array_equal(again[1], sizes)
    assert traces.schedule(trace.scaled(0.0), seed=3)[0].size == 0


def test_run_schedule_sends_each_query_at_its_time_and_refuses_a_bad_schedule():
    target = CallableTarget.sleeping(0.2)
    arrivals = np.array([0.0, 0.05, 0.1, 0.3])
    result = run_schedule(target, arrivals, np.array([10, 300, 1, 64]), duration_s=0.5, sub_batch=128, workers=2)
    assert result.queries == 4 and result.completed == 4 and result.errors == 0
    assert result.items.tolist() == [10, 300, 1, 64]
    assert np.all(result.issued_s >= arrivals - 1e-3)
    with pytest.raises(ConfigError, match="non-decreasing"):
        run_schedule(target, np.array([0.2, 0.1]), np.array([1, 1]), duration_s=1.0)
    with pytest.raises(ConfigError, match="one length"):
        run_schedule(target, np.array([0.1]), np.array([1, 1]), duration_s=1.0)
    with pytest.raises(ConfigError, match="query sizes"):
        run_schedule(target, np.array([0.1]), np.array([0]), duration_s=1.0)


def test_tally_counts_shed_failed_and_slow_queries_per_second():
    arrival = np.array([0.1, 0.2, 0.3, 0.4, 1.1, 1.2, 2.5])
    latency_s = np.array([0.010, 0.030, np.nan, np.nan, 0.005, 0.040, 0.002])
    errors = [None, None, "TritonError: HTTP 503: {\"error\":\"the fleet is overloaded: this request was shed\"}",
              "TritonError: HTTP 400: bad input", None, None, None]
    acc, series = rep.tally(arrival, arrival + latency_s, errors, duration_s=3.0, slo_ms=25.0)
    assert acc.arrivals.tolist() == [4, 2, 1]
    assert acc.shed.tolist() == [1, 0, 0] and acc.failed.tolist() == [1, 0, 0]
    assert acc.over.tolist() == [1, 1, 0]  # 30 ms and 40 ms answers are over a 25 ms SLO
    assert series.answered.tolist() == [2, 2, 1]
    assert series.p95_ms[2] == pytest.approx(2.0)
    report = rep.policy_report("recforge", acc, [1, 2, 2], [], node_seconds=12.5)
    assert report.requests == 7 and report.shed == 1 and report.failed == 1 and report.node_seconds == 12.5
    # 3 bad of 6 admitted (2 over the SLO, 1 failed)
    assert report.over_slo_pct == pytest.approx(50.0)


def test_the_decision_log_gives_the_targets_and_the_nodes_per_second(tmp_path):
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

    def at(seconds: float) -> str:
        return datetime.fromtimestamp(start + seconds, tz=UTC).isoformat()

    lines = [{"at": at(-5), "event": "start"},
             {"at": at(0.5), "nodes": 1, "decision": {"target_nodes": 2}},
             {"at": at(2.2), "nodes": 2, "decision": {"target_nodes": 2}},
             {"at": at(3.1), "nodes": 2},  # no law: no target
             {"at": at(3.5), "event": "start", "nodes": ["node0", "node1"]},  # a controller that started late
             "not json",
             {"at": at(9.0), "nodes": 3, "decision": {"target_nodes": 3}}]  # after the replay
    path = tmp_path / "decisions.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    targets, nodes, target = rep.read_decisions(path, start, duration_s=5.0)
    assert targets == [2, 2]
    assert nodes.tolist() == [1, 1, 2, 2, 2] and target.tolist() == [2, 2, 2, 2, 2]
    assert rep.read_decisions(tmp_path / "missing", start, 5.0)[0] == []


def test_the_calibrated_profile_carries_the_measured_lbt_and_curve(profile_doc):
    calibration = {"lbt_qps": 80.0, "curve": [
        {"offered_qps": 100.0, "achieved_qps": 99.0, "p50_ms": 9.0, "p95_ms": 40.0, "p99_ms": 50.0},
        {"offered_qps": 8.0, "achieved_qps": 8.0, "p50_ms": 5.0, "p95_ms": 8.0, "p99_ms": 9.0},
        {"offered_qps": 50.0, "achieved_qps": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None}]}
    calibrated = eb.calibrated_profile(profile_doc, calibration)
    assert calibrated["latency_bounded_throughput_qps"] == 80.0
    assert [row["offered_qps"] for row in calibrated["curve"]] == [8.0, 100.0]  # sorted, rows without a p95 dropped
    assert calibrated["latency_vs_batch"] == profile_doc["latency_vs_batch"]
    with pytest.raises(ConfigError, match="no probed rate"):
        eb.calibrated_profile(profile_doc, {"lbt_qps": 1.0, "curve": [calibration["curve"][2]]})


def test_the_calibration_times_one_node_and_divides_the_largest_fleet_by_its_nodes(monkeypatch, tmp_path,
                                                                                      profile_doc):
    """Injected measurements: one node is started for the start time, then a fleet of max_nodes; the fleet's LBT
    (median of the searches) and its latency points become per-node figures."""
    started, searched = [], iter([900.0, 960.0, 600.0])

    def up(source, cfg, home, notes):
        started.append(cfg.nodes)
        return {"url": "http://127.0.0.1:1", "placement": {"apparatus_cpus": "0"}}

    def search(*args, **kwargs):
        lbt = next(searched)
        return {"lbt_qps": lbt, "p95_ms_at_lbt": 20.0, "converged": True, "capped": False, "note": "",
                "curve": [{"offered_qps": lbt, "achieved_qps": lbt, "p95_ms": 20.0}]}

    def point(*args, rate, **kwargs):
        return {"offered_qps": rate, "achieved_qps": rate, "p50_ms": 3.0, "p95_ms": 5.0, "p99_ms": 7.0, "errors": 0}

    monkeypatch.setattr(eb.fl, "up", up)
    monkeypatch.setattr(eb.fl, "down", lambda home: None)
    monkeypatch.setattr(eb, "search_lbt", search)
    monkeypatch.setattr(eb, "same_load_run", point)
    monkeypatch.setattr(eb.cpusets, "this_process_in", lambda group: contextlib.nullcontext())
    cfg = eb.ElasticBenchConfig(max_nodes=4)
    source = SimpleNamespace(model="m", spec_path="spec.json")
    found = eb.calibrate(source, profile_doc, cfg, target="cpu-triton", home=tmp_path, ceiling=None)
    assert started == [1, 1, 1, 4]  # three one-node starts (the median is the start time), then the fleet
    assert len(found["node_start_s_runs"]) == 3
    assert found["node_start_s"] == sorted(found["node_start_s_runs"])[1]
    assert (found["nodes"], found["fleet_lbt_qps"], found["lbt_qps"]) == (4, 900.0, 225.0)
    assert found["fleet_lbt_qps_searches"] == [900.0, 960.0, 600.0]
    assert [row["offered_qps"] for row in found["curve"]] == [225.0, 22.5, 67.5, 135.0]
    assert found["capacity_scale"] == round(225.0 / profile_doc["latency_bounded_throughput_qps"], 4)
    searched = iter([500.0, 500.0, 500.0])
    started.clear()
    two = eb.calibrate(source, profile_doc, eb.ElasticBenchConfig(max_nodes=4, calibration_nodes=2),
                       target="cpu-triton", home=tmp_path, ceiling=None)
    assert started == [1, 1, 1, 2] and two["lbt_qps"] == 250.0


def test_each_policy_gets_its_controller_config(node_model):
    cfg = eb.ElasticBenchConfig(node_quota=0.25, max_nodes=4)
    static = StaticPolicy("static-peak", 3, "peak")
    live = eb.controller_config("static-peak", static, cfg, 1.0, 4.0, 15.0)
    assert live["policy"] == "static" and live["static_nodes"] == 3 and live["cores_per_node"] == 0.25
    assert eb.controller_config("hpa", object(), cfg, 1.0, 4.0, 15.0)["hpa"] == {"time_scale": 15.0}
    recforge = eb.controller_config("recforge", object(), cfg, 1.0, 4.0, 15.0)
    assert recforge["control"] == {"start_delay_s": 4.0}
    for config in (live, recforge):  # every one is a LiveConfig the controller accepts
        config_from_dict(LiveConfig, config)
    trace = traces.diurnal(minutes=1, peak_qps=4 * node_model.lbt_qps)
    assert eb.first_nodes(static, trace, node_model, 0.85, 4) == 3
    assert 1 <= eb.first_nodes(object(), trace, node_model, 0.85, 4) <= 2  # the trough is a quarter of the peak


def test_a_bad_bench_config_is_refused():
    with pytest.raises(ConfigError, match="policies"):
        eb.ElasticBenchConfig(policies=("hpa", "k8s"))
    with pytest.raises(ConfigError, match="node_quota"):
        eb.ElasticBenchConfig(node_quota=1.5)
    with pytest.raises(ConfigError, match="start_delay_s"):
        eb.ElasticBenchConfig(profile="calibrated-profile.json")


def test_the_slow_node_fault_cuts_the_first_nodes_quota_in_place(tmp_path, monkeypatch):
    """SlowNode on a fleet state whose nodes have CPU groups under a fake cgroup root: node0's quota is halved in its
    cgroup file, node1's is not; a node without a quota leaves the record's error and raises nothing."""
    from recforge.core import cpusets as cs
    from recforge.serving import fleet as fl
    from recforge.serving.fleet.state import STATE_VERSION
    from tests.core.test_cpusets import make_fake_cgroup_root

    root = make_fake_cgroup_root(tmp_path / "cgroup", "0-1")
    monkeypatch.setenv(cs.CGROUP_ROOT_ENV, str(root))
    placements = {name: cs.CpuGroup(f"eb-{name}", cs.CpuPlacement(cpus=(1,), quota_cores=0.2, period_us=10_000))
                  .create().to_state() for name in ("node1", "node0")}
    fleet_home = tmp_path / "fleet"
    fl.fleet_dir(fleet_home).mkdir(parents=True)
    state = {"version": STATE_VERSION,
             "nodes": {name: {"placement": placement} for name, placement in placements.items()}}
    (fl.fleet_dir(fleet_home) / "state.json").write_text(json.dumps(state))
    cfg = eb.ElasticBenchConfig(slow_node_at_s=0.05)
    fault = eb.SlowNode(fleet_home, cfg)
    fault.arm()
    fault.timer.join(5)
    assert fault.record["node"] == "node0" and "error" not in fault.record, fault.record
    assert (fault.record["quota_cores_before"], fault.record["quota_cores_after"]) == (0.2, 0.1)
    assert fault.record["applied_at_s"] >= 0.05
    assert (root / "cpu" / "recforge" / "eb-node0" / "cpu.cfs_quota_us").read_text() == "1000"
    assert (root / "cpu" / "recforge" / "eb-node1" / "cpu.cfs_quota_us").read_text() == "2000"

    state["nodes"]["node0"]["placement"]["quota_cores"] = None
    (fl.fleet_dir(fleet_home) / "state.json").write_text(json.dumps(state))
    unlimited = eb.SlowNode(fleet_home, cfg)
    unlimited.slow()
    assert unlimited.record["error"] == "node0 has no CPU quota to cut" and "node" not in unlimited.record
    with pytest.raises(ConfigError, match="slow_node_factor"):
        eb.ElasticBenchConfig(slow_node_at_s=10, slow_node_factor=1.0)


def test_the_simulator_is_set_against_the_live_runs_on_the_same_trace_and_calibration(tmp_path, profile_doc):
    profile = tmp_path / "calibrated-profile.json"
    profile.write_text(json.dumps(profile_doc))
    settings = {**eb.ElasticBenchConfig(minutes=1, max_nodes=2, node_quota=0.5,
                                        policies=("static-peak", "recforge")).__dict__}
    settings["policies"] = list(settings["policies"])
    live = {"windows_within_slo_pct": 100.0, "over_slo_pct": 0.5, "node_seconds": 50.0}
    doc = {"settings": settings, "profile": str(profile), "capacity_scale": 1.0, "start_delay_s": 4.0,
           "trace": {"hpa_time_scale": 15.0},
           "runs": [{"policy": "static-peak", "report": live}, {"policy": "static-peak", "report": {**live,
                                                                                               "node_seconds": 70.0}}]}
    simulated = eb.simulated(doc)
    assert [s["policy"] for s in simulated] == ["static-peak", "recforge"]
    # static peak: 2 nodes x 60 s x 0.5 core each (the simulator counts nodes x seconds)
    assert simulated[0]["node_seconds"] == pytest.approx(60.0)
    doc["simulated"] = simulated
    rows = eb.validation(doc)
    assert [r["policy"] for r in rows] == ["static-peak"]  # recforge has no live run to compare with
    assert rows[0]["runs"] == 2 and rows[0]["node_seconds"]["live"] == 60.0  # the median of 50 and 70
    assert rows[0]["node_seconds"]["simulated_over_live"] == pytest.approx(1.0)
    assert "static-peak" in eb.render_validation(rows)


def test_a_result_file_is_validated_with_the_profile_its_runs_planned_with(tmp_path, profile_doc):
    """The result keeps the profile its policies planned with: the next calibration rewrites the file it names,
    and a validation against that would simulate another run's fleet. A result without its copy whose profile file
    was rewritten after the run is refused, naming the file."""
    settings = {**eb.ElasticBenchConfig(minutes=1, max_nodes=2, policies=("static-peak",)).__dict__}
    settings["policies"] = list(settings["policies"])
    profile = tmp_path / "calibrated-profile.json"
    profile.write_text(json.dumps(profile_doc))
    doc = {"settings": settings, "profile": str(profile), "capacity_scale": 1.0, "start_delay_s": 4.0,
           "trace": {"hpa_time_scale": 15.0}, "runs": [], "measured_at": "2026-11-27T10:00:00+00:00",
           "duration_s": 60.0, "planned_profile": profile_doc}
    kept = eb.simulated(doc)
    slower = {**profile_doc, "latency_bounded_throughput_qps": profile_doc["latency_bounded_throughput_qps"] / 4}
    profile.write_text(json.dumps(slower))  # a later calibration rewrites the file
    assert eb.simulated(doc) == kept
    assert eb.planning_profile(doc) == profile_doc
    del doc["planned_profile"]
    with pytest.raises(ConfigError, match="was rewritten after"):
        eb.simulated(doc)
    doc["measured_at"] = eb.utc_now()  # a file written during the run it belongs to is that run's
    assert eb.planning_profile(doc) == slower
