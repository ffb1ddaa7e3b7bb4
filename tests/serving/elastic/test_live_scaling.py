"""The live controller's scale-out and scale-in with a fake fleet: the target is clamped to the bounds, one node
operation at a time (the loop keeps ticking while a node starts), scale-in only after the law's stabilisation
window and the drained node first, a failed add reported and held back before the next try, and node-seconds
counted with starting nodes included."""

from __future__ import annotations

import json
import threading

import numpy as np

from recforge.serving.elastic.control import ControlConfig, Decision, ElasticController, FleetSignals
from recforge.serving.elastic.live import LiveConfig
from recforge.serving.elastic.live_actions import Action
from recforge.serving.elastic.live_scaling import NodeOperator, plan_scale, removal_candidate
from recforge.serving.fleet.state import write_state
from tests.serving.elastic.test_live_controller import FakeFleetIO, FakeNodeOperations, controller, fleet_folder


def decision(target: int) -> Decision:
    return Decision(now_s=1.0, target_nodes=target, scale_reason=f"law wants {target}")


def scale(target: int, *, nodes_now=2, managed=None, unhealthy=(), low=1, high=4, in_flight=None, blocked=None):
    managed = {"node0": 128, "node1": 128} if managed is None else managed
    return plan_scale(decision(target), nodes_now=nodes_now, managed=managed, unhealthy=list(unhealthy),
                      min_nodes=low, max_nodes=high, in_flight=in_flight, blocked=blocked)


# --- the plan ----------------------------------------------------------------------------------------------------

def test_the_target_is_bounded_and_one_node_is_added_or_removed_per_operation():
    up = scale(9, high=4)  # 9 asked, the machine holds 4
    assert (up.kind, up.node, up.value, up.advisory) == ("scale", None, 4, False)
    assert "add a node (2 -> 3 of 4)" in up.reason and "bounds [1, 4]" in up.reason
    down = scale(0, nodes_now=3, managed={"node0": 128, "node1": 128, "node2": 128}, low=2)
    assert (down.node, down.value, down.advisory) == ("node2", 2, False)  # never below the minimum; the newest
    assert scale(2) is None and scale(1, low=2) is None  # at the target, or the minimum
    assert scale(0, nodes_now=1, managed={"node0": 128}) is None


def test_nothing_starts_while_an_operation_runs_or_after_a_failure():
    waiting = scale(3, in_flight="add a new node running for 4.0 s")
    assert waiting.advisory and "waiting: add a new node" in waiting.reason
    held = scale(3, blocked="the last add failed 5 s ago")
    assert held.advisory and "not now: the last add failed" in held.reason
    assert not scale(1, blocked="the last add failed 5 s ago").advisory  # a failed add does not block a removal
    # a node the controller does not own (an operator drained it, or it is starting): no removal
    assert scale(1, nodes_now=3).advisory


def test_the_node_out_of_rotation_is_removed_first():
    assert removal_candidate({"node0": 128, "node1": 0, "node2": 128}, []) == "node1"
    assert removal_candidate({"node0": 128, "node1": 128, "node2": 128}, ["node0"]) == "node0"
    assert removal_candidate({"node0": 128, "node10": 128, "node9": 128}, []) == "node10"
    assert removal_candidate({"node0": 128}, []) is None


def test_a_node_drained_in_the_same_tick_is_the_one_removed():
    """A slow node drained this tick and a scale-in decided in the same tick: the drained node goes, not a healthy
    one (a live slow-node run removed node1 while node0 was drained, and had no ready node for 5 s)."""
    from recforge.serving.elastic.live import weights_after

    applied = [{"kind": "drain", "node": "node0", "value": 0, "applied": True},
               {"kind": "weight", "node": "node2", "value": 64, "applied": False},  # failed: its weight stays
               {"kind": "shed", "node": None, "value": 0.1, "applied": True}]
    weights = weights_after(["node0", "node1", "node2"], {"node0": 128, "node1": 128, "node2": 128}, applied)
    assert weights == {"node0": 0, "node1": 128, "node2": 128}
    assert removal_candidate(weights, []) == "node0"
    assert scale(2, nodes_now=3, managed=weights).node == "node0"
    assert weights_after(["node0", "node1"], {"node0": 128}, []) == {"node0": 128, "node1": None}


def test_scale_in_waits_for_the_laws_stabilisation_window(node_model):
    law = ElasticController(node_model, ControlConfig(min_nodes=1, max_nodes=4, scale_down_window_s=60.0))
    names = ("node0", "node1", "node2")
    removed_at = None
    for t in range(0, 120):
        arrival = 1500.0 if t < 10 else 50.0  # three nodes' worth for 10 s, then next to nothing
        d = law.decide(FleetSignals(now_s=float(t), arrival_qps=arrival, mix_cost_ratio=1.0, node_names=names,
                                    throughput_qps=np.full(3, arrival / 3), p95_ms=np.full(3, 8.0),
                                    queue_ms=np.zeros(3)))
        action = plan_scale(d, nodes_now=3, managed=dict.fromkeys(names, 128), unhealthy=[], min_nodes=1,
                            max_nodes=4, in_flight=None, blocked=None)
        if action is not None and action.node is not None:
            removed_at = t
            break
    # one node would carry 50 q/s from t = 11 on, but the law holds 3 for its 60 s window after the high load
    assert removed_at is not None and 60 <= removed_at <= 75


# --- the operator ------------------------------------------------------------------------------------------------

class BlockingOperations(FakeNodeOperations):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def add_node(self):
        self.calls.append(("add", None))
        self.release.wait(10)
        return {"node": "node2", "seconds": 3.0}


def test_one_operation_at_a_time_in_the_background_and_a_failure_holds_adds_back():
    now = [0.0]
    operations = BlockingOperations()
    operator = NodeOperator(operations, lambda: now[0], retry_after_s=60)
    add = Action("scale", None, 3, "add a node")
    assert operator.submit(add) and operator.starting() == 1
    now[0] = 2.0
    assert not operator.submit(add) and not operator.submit(Action("scale", "node1", 1, "remove node1"))
    assert operator.in_flight() == "add a new node running for 2.0 s" and operator.finished() == []
    operations.release.set()
    operator.wait(10)
    assert operations.calls == [("add", None)] and operator.starting() == 0 and operator.in_flight() is None
    [done] = operator.finished()
    assert done["applied"] and done["node"] == "node2" and done["reason"] == "add a node"

    failing = NodeOperator(FakeNodeOperations(fail=True), lambda: now[0], retry_after_s=60)
    failing.submit(add)
    failing.wait(10)
    [failed] = failing.finished()
    assert not failed["applied"] and "did not start" in failed["error"]
    assert "the last add failed" in failing.blocked()
    now[0] += 61
    assert failing.blocked() is None  # tried again after the back-off, never waited on


# --- the controller ----------------------------------------------------------------------------------------------

def ticks(live, io, state, now, count, per_node):
    records = []
    for _ in range(count):
        io.serve(per_node)
        records.append(live.tick(state))
        live.operator.wait(10)
        now[0] += 1.0
    return records


def test_the_controller_adds_a_node_under_load_logs_it_and_counts_node_seconds(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    operations = FakeNodeOperations()
    live = controller(root, io, lambda: now[0], LiveConfig(min_nodes=1, max_nodes=4, log_every_s=60), operations,
                      bounds=(1, 3))
    live.cpus = 4
    live.start()
    records = ticks(live, io, state, now, 3, per_node=700)  # 1,400 q/s: more than two nodes at 0.85 x LBT
    assert operations.calls == [("add", None)] * 2  # one per tick once the previous one ended
    first = next(a for r in records for a in r["actions"] if a["kind"] == "scale")
    assert first["applied"] and first["node"] is None and first["value"] == 3  # the fleet's bound: 3
    assert "add a node (2 -> 3 of 3)" in first["reason"]
    done = [op for r in records for op in r.get("node_operations", [])]
    assert done and done[0]["applied"] and done[0]["node"] == "node2"
    logged = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]
    assert any(d.get("node_operations") for d in logged) and any(
        a["kind"] == "scale" and a["applied"] for d in logged for a in d.get("actions", []))
    status = json.loads((root / "controller.json").read_text())
    assert status["node_seconds"] == 2 * 2.0  # two nodes x 1 core x the 2 s between the 3 ticks

    state["nodes"]["node2"] = {**state["nodes"]["node1"], "lb_state": "starting",
                               "placement": {"cpus": "2-3", "quota_cores": None}}  # a starting 2-CPU node counts
    write_state(root, state)
    live.tick(state)
    assert json.loads((root / "controller.json").read_text())["node_seconds"] == 4.0 + (1 + 1 + 2) * 1.0


def test_a_failed_add_is_reported_and_not_retried_at_once(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    operations = FakeNodeOperations(fail=True)
    live = controller(root, io, lambda: now[0], LiveConfig(min_nodes=1, max_nodes=4, log_every_s=60,
                                                           scale_retry_s=30), operations, bounds=(1, 3))
    live.cpus = 4
    live.start()
    records = ticks(live, io, state, now, 5, per_node=1000)
    assert operations.calls == [("add", None)]  # the fleet retried the start itself; the controller waits
    failed = next(op for r in records for op in r.get("node_operations", []))
    assert not failed["applied"] and "did not start" in failed["error"]
    held = [a for a in records[-1]["actions"] if a["kind"] == "scale"]
    assert held and held[0]["advisory"] and "the last add failed" in held[0]["reason"]
    ticks(live, io, state, now, 30, per_node=1000)  # 30 s after the failure it is tried again, once
    assert operations.calls == [("add", None)] * 2


def test_the_controller_removes_the_drained_node_when_load_falls(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = FakeFleetIO(), [0.0]
    operations = RemovingOperations(state)
    live = controller(root, io, lambda: now[0], LiveConfig(min_nodes=1, log_every_s=60), operations)
    live.start()
    records = ticks(live, io, state, now, 6, per_node=50)  # 100 q/s: one node carries it
    assert operations.calls == [("remove", "node1")]  # the newest: no node was out of rotation; then at the target
    removal = next(a for r in records for a in r["actions"] if a["kind"] == "scale")
    assert removal["applied"] and removal["node"] == "node1" and "remove node1 (2 -> 1 of 1)" in removal["reason"]
    assert records[-1]["nodes"] == 1


class RemovingOperations(FakeNodeOperations):
    """Removes the node from the state the ticks read, as the fleet does from state.json."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def remove_node(self, name):
        self.state["nodes"].pop(name)
        return super().remove_node(name)
