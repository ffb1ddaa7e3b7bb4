"""The live controller's actions with fakes of the fleet and HAProxy: the mapping from the control law's decisions
and failed health to weights, drains and advisory actions; the node bounds; one tick end to end (signals read,
weights set, decisions logged); and a restart that re-reads the fleet's state instead of assuming defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError, RecForgeError
from recforge.serving.elastic.control import ControlConfig, Decision, ElasticController, FleetSignals
from recforge.serving.elastic.live import LiveConfig, LiveController, build_law
from recforge.serving.elastic.live_actions import NO_SHEDDING, apply_actions, plan_actions, shares
from recforge.serving.elastic.live_signals import node_counters
from recforge.serving.fleet.state import STATE_VERSION, write_state
from recforge.serving.loadbalancer import BalancerError, parse_show_stat
from tests.serving.elastic.test_live_signals import stat_text, triton_text


class FakeBalancer:
    """The weights' setter: records what it is told; ``refuse`` makes it fail like an unreachable socket."""

    def __init__(self, refuse: bool = False):
        self.calls: list[tuple[str, int]] = []
        self.refuse = refuse

    def set_weight(self, node: str, weight: int) -> None:
        if self.refuse:
            raise BalancerError("haproxy admin socket did not answer")
        self.calls.append((node, weight))


def decision(weights: dict[str, int], target: int = 2, **more) -> Decision:
    return Decision(now_s=1.0, target_nodes=target, weights=weights, weight_reason="weights follow measured capacity",
                    scale_reason=f"hold {target}", **more)


def plan(d: Decision | None, weights_now: dict, *, up=("node0", "node1"), unhealthy=None, last_batching="latency"):
    return plan_actions(d, weights_now=weights_now, up=list(up), unhealthy=unhealthy or {},
                        last_batching=last_batching)


# --- the action mapping ---------------------------------------------------------------------------------------------

def test_a_slow_node_gets_a_lower_weight_and_a_rescaling_changes_nothing():
    actions = plan(decision({"node0": 128, "node1": 64}), {"node0": 100, "node1": 100})
    assert [(a.kind, a.node, a.value) for a in actions] == [("weight", "node0", 128), ("weight", "node1", 64)]
    assert all(not a.advisory and "measured capacity" in a.reason for a in actions)
    # the profile's 256/256 and the law's 128/128 give the same shares: no churn
    assert plan(decision({"node0": 128, "node1": 128}), {"node0": 256, "node1": 256}) == []
    assert shares({"node0": 1, "node1": 3, "node2": None}) == {"node0": 0.25, "node1": 0.75, "node2": 0.0}


def test_a_node_whose_health_failed_is_drained_and_comes_back_when_healthy():
    actions = plan(decision({"node0": 128}), {"node0": 128, "node1": 128}, up=("node0",),
                   unhealthy={"node1": "HAProxy reports it DOWN (check L7TOUT)"})
    assert [(a.kind, a.node, a.value) for a in actions] == [("drain", "node1", 0)]
    assert "L7TOUT" in actions[0].reason
    back = plan(decision({"node0": 128, "node1": 128}), {"node0": 128, "node1": 0})
    assert [(a.kind, a.node, a.value) for a in back] == [("weight", "node1", 128)]


def test_the_law_drains_a_degraded_node():
    actions = plan(decision({"node0": 128, "node1": 0}, drained=("node1",)), {"node0": 128, "node1": 128})
    assert [(a.kind, a.node, a.value) for a in actions] == [("drain", "node1", 0)]


def test_no_change_leaves_the_last_up_node_without_traffic():
    # health drain of the only UP node (its metrics port failed) and the law's zero for the other: neither applied
    actions = plan(decision({"node1": 0}), {"node0": 128, "node1": 128}, up=("node0",),
                   unhealthy={"node0": "its metrics port does not answer (timeout)"})
    assert all(a.value != 0 or a.node != "node0" for a in actions)
    assert not any(a.node == "node0" for a in actions)


def test_shedding_and_batching_are_advisory_and_scaling_is_left_to_the_scale_planner():
    d = decision({"node0": 128, "node1": 128}, target=9, shed_fraction=0.25, shed_reason="shed 25.0%",
                 batching="throughput", batching_reason="switch to throughput-optimal batching")
    actions = {a.kind: a for a in plan(d, {"node0": 128, "node1": 128})}
    assert set(actions) == {"shed", "batching"} and all(a.advisory for a in actions.values())
    assert actions["shed"].value == 0.25 and NO_SHEDDING in actions["shed"].reason
    assert plan(decision({"node0": 128, "node1": 128}, target=2), {"node0": 128, "node1": 128}) == []
    # the target's bounds: tests/serving/elastic/test_live_scaling.py


def test_applying_sets_weights_and_records_failures():
    actions = plan(decision({"node0": 128, "node1": 64}, target=3, shed_fraction=0.1), {"node0": 100, "node1": 100})
    fake = FakeBalancer()
    done = apply_actions(actions, fake)
    assert fake.calls == [("node0", 128), ("node1", 64)]
    assert [r["applied"] for r in done] == [True, True, False]  # the shedding is advisory
    failed = apply_actions(actions[:1], FakeBalancer(refuse=True))
    assert failed[0]["applied"] is False and "did not answer" in failed[0]["error"]


# --- the node bounds -------------------------------------------------------------------------------------------------

def test_the_law_never_leaves_the_bounds(node_model, profile_doc):
    cfg = LiveConfig(min_nodes=2, max_nodes=16, cores_per_node=1)
    assert cfg.bounds(cpus=4) == (2, 4)  # the machine's CPUs cap the configured 16
    assert LiveConfig(min_nodes=1).bounds(cpus=2) == (1, 2)
    with pytest.raises(ConfigError, match="min_nodes"):
        LiveConfig(min_nodes=3, cores_per_node=2).bounds(cpus=4)
    law = ElasticController(node_model, config_from_dict(ControlConfig, {"min_nodes": 2, "max_nodes": 4}))
    names = ("node0", "node1")
    for t, arrival in enumerate([0.0, 100_000.0, 0.0]):
        d = law.decide(FleetSignals(now_s=float(t), arrival_qps=arrival, mix_cost_ratio=1.0, node_names=names,
                                    throughput_qps=np.zeros(2), p95_ms=np.full(2, 5.0), queue_ms=np.zeros(2)))
        assert 2 <= d.target_nodes <= 4
    built = build_law(cfg, profile_doc, cpus=4)
    assert (built.config.min_nodes, built.config.max_nodes) == (2, 4)
    assert built.config.slo_p95_ms == node_model.slo_p95_ms
    assert build_law(cfg, None, cpus=4) is None


# --- one tick, and a restart -----------------------------------------------------------------------------------------

class FakeFleetIO:
    """The fleet's metrics ports and HAProxy stats, as the test sets them."""

    def __init__(self):
        self.requests = 0
        self.success = {"node0": 0, "node1": 0}
        self.down: set[str] = set()
        self.weights = {"node0": 128, "node1": 128}
        self.p95_us = {"node0": 9500, "node1": 9500}

    def stats(self, entry):
        text = stat_text(self.requests, node1_status="DOWN" if "node1" in self.down else "UP",
                         node1_weight=self.weights["node1"])
        return parse_show_stat(text)

    def node(self, url, timeout_s, models):
        name = url.rsplit("/", 1)[-1]
        if name in self.down:
            return None, "Read timed out"
        return node_counters(triton_text(self.success[name], 0, self.success[name] * 5000,
                                         p95_us=str(self.p95_us[name]))), ""

    def serve(self, per_node: int):
        self.requests += 2 * per_node
        for name in self.success:
            if name not in self.down:
                self.success[name] += per_node


class RecordingBalancer(FakeBalancer):
    def __init__(self, io: FakeFleetIO):
        super().__init__()
        self.io = io

    def set_weight(self, node, weight):
        super().set_weight(node, weight)
        self.io.weights[node] = weight


def fleet_folder(tmp_path, profile_path=None):
    root = tmp_path / "fleet"
    root.mkdir()
    nodes = {name: {"url": f"http://127.0.0.1:1/{name}", "metrics_url": f"http://127.0.0.1:2/{name}", "pid": None,
                    "models": {"ncf": {"version": 1}}, "lb_state": "ready", "weight": 128}
             for name in ("node0", "node1")}
    state = {"version": STATE_VERSION, "status": "up", "url": "http://127.0.0.1:3", "nodes": nodes,
             "balancer": {"config": "x", "socket": "x", "log": "x", "port": 3, "pid": None},
             "source": {"profile": str(profile_path) if profile_path else None}}
    write_state(root, state)
    return root, state


class FakeNodeOperations:
    """add_node / remove_node of the fleet: records what it is asked (``fail``: every add fails)."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, str | None]] = []
        self.fail = fail

    def add_node(self):
        self.calls.append(("add", None))
        if self.fail:
            raise RecForgeError("node2 did not start: tritonserver exited with code 1")
        return {"node": "node2", "seconds": 12.0}

    def remove_node(self, name):
        self.calls.append(("remove", name))
        return {"node": name, "seconds": 1.0, "in_flight_left": 0}


def controller(root, io, clock, cfg=None, operations=None, bounds=(1, 2)):
    # the fakes' summary p95 is the latency of now: trusted at once (a young node: test_live_signals)
    cfg = cfg or LiveConfig(min_nodes=2, log_every_s=0, summary_window_s=0)
    return LiveController(root, cfg, clock=clock, cpus=2, read_stats=io.stats,
                          read_node=io.node, control=RecordingBalancer(io),
                          operations=operations or FakeNodeOperations(), fleet_bounds=lambda state: bounds)


def test_a_tick_drains_a_failed_node_logs_why_and_a_restart_rereads_the_state(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    live = controller(root, io, lambda: now[0])
    live.start()
    assert live.law is not None  # the fleet source's profile
    assert json.loads((root / "state.json").read_text())["controller"]["pid"] == live.pid
    assert live.tick(state)["actions"] == []  # the first tick only records
    now[0] += 1.0
    io.serve(50)
    assert live.tick(state)["actions"] == []  # healthy, equal shares: nothing to do
    io.down.add("node1")
    now[0] += 1.0
    record = live.tick(state)
    assert [(a["kind"], a["node"], a["value"], a["applied"]) for a in record["actions"]] == \
        [("drain", "node1", 0, True)]
    assert live.control.calls == [("node1", 0)]
    logged = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]
    assert logged[0]["event"] == "start" and logged[0]["bounds"] == [2, 2]
    drain = logged[-1]
    assert drain["actions"][0]["node"] == "node1" and "DOWN" in drain["actions"][0]["reason"]
    assert "node1" in drain["signals"]["unhealthy"] and set(drain["signals"]["nodes"]) == {"node0"}
    assert {"at", "signals", "actions", "decision"} <= set(drain)

    # node1 is healthy again: the law gives it its weight back
    io.down.clear()
    now[0] += 1.0
    io.serve(50)
    assert [(a["node"], a["value"]) for a in live.tick(state)["actions"]] == [("node1", 128)]

    # a new controller (the old one died) re-reads the weights from HAProxy and the law's corrections
    status = json.loads((root / "controller.json").read_text())
    status["corrections"] = {"node0": 1.0, "node1": 0.3}  # as a controller that measured a slow node1 saved it
    status["corrections_measured"] = {"node0": 40, "node1": 40}
    (root / "controller.json").write_text(json.dumps(status))
    io.weights["node1"] = 0
    again = controller(root, io, lambda: now[0])
    again.start()
    start = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()][-1]
    assert start["event"] == "start" and start["weights_in_haproxy"] == {"node0": 128, "node1": 0}
    assert start["corrections_restored"] == {"node0": 1.0, "node1": 0.3}
    for _ in range(2):
        now[0] += 1.0
        io.serve(50)
        record = again.tick(state)
    assert record["decision"]["weights"]["node1"] == 0 and record["actions"] == []  # still drained, as it was
    assert again.control.calls == []
    # the restored measurements count: node1's capacity is still far below its profile's, a re-profile is due
    assert record["decision"]["reprofile"] == {"node1": 0.3}
    saved = json.loads((root / "controller.json").read_text())
    assert saved["reprofile"] == {"node1": 0.3} and saved["corrections_measured"]["node1"] >= 40


def test_a_second_controller_is_refused_and_without_a_profile_the_law_is_off(tmp_path):
    root, state = fleet_folder(tmp_path)
    io = FakeFleetIO()
    first = controller(root, io, lambda: 0.0)
    first.start()
    assert first.law is None
    state_now = json.loads((root / "state.json").read_text())
    state_now["controller"]["pid"] = 1  # pid 1 runs: another controller
    write_state(root, state_now)
    with pytest.raises(ConfigError, match="already runs"):
        controller(root, io, lambda: 0.0).start()


def test_a_rollout_in_progress_keeps_the_controller_off_the_weights(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    state["nodes"]["node1"]["models"] = {"ncf": {"version": 2}}  # the canary serves the new version
    io, now = FakeFleetIO(), [0.0]
    live = controller(root, io, lambda: now[0])
    live.start()
    live.tick(state)
    io.down.add("node1")
    now[0] += 1.0
    record = live.tick(state)
    assert record["actions"] == [] and "rollout" in record["hands_off"]


def test_the_supervisor_restarts_a_dead_controller_with_its_config(tmp_path, monkeypatch):
    from recforge.serving.fleet import supervisor as sv

    root, state = fleet_folder(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state["controller"] = {"pid": dead.pid, "config": {"interval_s": 2.0}, "log": str(root / "controller.log")}
    write_state(root, state)
    started = []

    def fake_start(folder, config):
        started.append((folder, config))
        return {"pid": os.getpid(), "config": dict(config), "log": str(folder / "controller.log")}

    monkeypatch.setattr(sv, "start_controller", fake_start)
    actions = sv.FleetActions(root, sv.SupervisorConfig())
    assert sv.CONTROLLER in actions.units()
    assert actions.observe(sv.CONTROLLER) == (False, False)
    actions.take_out(sv.CONTROLLER)  # nothing to take out of the balancer
    actions.record_failure(sv.CONTROLLER, "crash")  # no crash record: it served no request
    assert not (root / "crashes.jsonl").exists()
    actions.restart(sv.CONTROLLER)
    assert started == [(root, {"interval_s": 2.0})]
    entry = json.loads((root / "state.json").read_text())["controller"]
    assert entry["pid"] == os.getpid() and actions.observe(sv.CONTROLLER) == (True, True)


def test_an_advisory_scale_in_is_logged_when_it_is_new_not_every_tick(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    operations = FakeNodeOperations()
    live = controller(root, io, lambda: now[0], LiveConfig(min_nodes=1, log_every_s=60, scale=False), operations)
    live.start()
    records = []
    for _ in range(4):
        io.serve(50)
        records.append(live.tick(state))
        now[0] += 1.0
    scale = [a for a in records[-1]["actions"] if a["kind"] == "scale"]
    assert scale and scale[0]["value"] == 1 and scale[0]["advisory"] and not scale[0]["applied"]
    assert "scale down 2 -> 1" in scale[0]["reason"]  # low load: one node would do
    logged = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]
    # start, the first tick (the heartbeat), the first tick advising the scale-in; not its repeats
    assert [bool([a for a in d.get("actions", []) if a["kind"] == "scale"]) for d in logged] == [False, False, True]
    assert live.control.calls == [] and operations.calls == []  # LiveConfig.scale off: nothing added or removed


def test_fleet_up_refuses_a_bad_controller_config_before_starting_anything(tmp_path, monkeypatch, capsys):
    from recforge.serving.fleet import cli

    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path))
    code = cli.main(["up", "--onnx", str(tmp_path / "m.onnx"), "--spec", str(tmp_path / "spec.json"),
                     "--controller-config", '{"interval_s": -1}'])
    out = capsys.readouterr()
    assert code != 0 and "LiveConfig.interval_s" in out.out + out.err
    assert not (tmp_path / "fleet" / "state.json").exists()


def test_a_node_slower_than_its_profile_gets_less_traffic(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    io.p95_us["node1"] = 20_000  # at the same 300 q/s node1's p95 is what the profile shows near saturation
    live = controller(root, io, lambda: now[0])
    live.start()
    for _ in range(12):
        io.serve(300)  # 300 q/s per node: 0.41 of the profile's saturation, enough to measure capacity
        record = live.tick(state)
        now[0] += 1.0
    assert io.weights["node1"] < io.weights["node0"] / 2, io.weights
    weight_actions = [c for c in live.control.calls if c[0] == "node1"]
    assert weight_actions and all(w > 0 for _, w in weight_actions)  # less traffic, not drained
    logged = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]
    slow = [a for d in logged for a in d.get("actions", []) if a["node"] == "node1" and a["kind"] == "weight"]
    assert slow and "slow/drained: node1" in slow[-1]["reason"]
    assert record["signals"]["nodes"]["node1"]["p95_ms"] == 20.0


# --- the benchmark's baselines on the live fleet ----------------------------------------------------------------------

def test_the_live_controller_runs_a_baseline_policy_or_the_law_on_a_scaled_capacity(profile_doc, node_model):
    hpa = build_law(LiveConfig(policy="hpa", hpa={"time_scale": 15}, max_nodes=4), profile_doc, cpus=4)
    assert hpa.name == "hpa" and hpa.config.time_scale == 15 and hpa.config.max_nodes == 4
    assert hpa.adapts_batching is False
    static = build_law(LiveConfig(policy="static", static_nodes=9), profile_doc, cpus=4)
    assert static.nodes == 4 and static.adapts_batching is False  # clamped to what the CPUs hold
    law = build_law(LiveConfig(capacity_scale=0.25), profile_doc, cpus=4)
    assert law.model.lbt_qps == pytest.approx(0.25 * node_model.lbt_qps)
    assert getattr(law, "adapts_batching", True)
    with pytest.raises(ConfigError, match="policy"):
        LiveConfig(policy="k8s")
    with pytest.raises(ConfigError, match="static_nodes"):
        LiveConfig(policy="static")
    # a node of a fraction of a core (its CPU quota): as many as the quotas the CPUs hold
    assert LiveConfig(cores_per_node=0.25, max_nodes=0).bounds(cpus=1) == (1, 4)


def test_a_baseline_keeps_the_deployed_batching_and_has_no_corrections(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    live = controller(root, io, lambda: now[0], LiveConfig(policy="hpa", min_nodes=2, log_every_s=0, scale=False))
    live.start()
    for _ in range(3):
        io.serve(300)
        record = live.tick(state)
        now[0] += 1.0
    assert "batching_modes" not in record  # the fleet's knobs are not switched by a baseline
    assert all(a["kind"] != "batching" or a["advisory"] for a in record["actions"])
    status = json.loads((root / "controller.json").read_text())
    assert status["corrections"] == {} and record["decision"]["reasons"][0].startswith("hpa:")
