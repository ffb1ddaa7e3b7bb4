"""The live controller's batching switch with fakes of the fleet: the law's batching mode applied node by node (one UP,
healthy node per tick whose mode differs), through the fleet handle's ``set_batching``; advisory with the reason
where the fleet cannot switch; and the fleet side's knob sets read from a node's repository
(recforge.serving.fleet.batching)."""

from __future__ import annotations

import json
import threading

from recforge.core.errors import RecForgeError
from recforge.inference import model_repo as mr
from recforge.inference.serving_config import LATENCY_MODE, THROUGHPUT_MODE, ServingConfig
from recforge.serving.elastic.live import LiveConfig, LiveController
from recforge.serving.elastic.live_actions import NO_BATCHING, plan_actions
from recforge.serving.elastic.live_batching import BatchingSwitcher
from recforge.serving.fleet import batching
from tests.serving.elastic.test_live_controller import (
    FakeFleetIO,
    FakeNodeOperations,
    RecordingBalancer,
    decision,
    fleet_folder,
)

NODES = ("node0", "node1", "node2")
WEIGHTS = dict.fromkeys(NODES, 128)


def plan(mode: str, modes: dict | None, *, up=NODES, unhealthy=None, last_batching=THROUGHPUT_MODE, **more):
    d = decision(dict(WEIGHTS), target=3, batching=mode, batching_reason=f"switch to {mode}-optimal batching")
    return [a for a in plan_actions(d, weights_now=dict(WEIGHTS), up=list(up), unhealthy=unhealthy or {},
                                    last_batching=last_batching, batching_modes=modes, **more)
            if a.kind == "batching"]


def test_one_up_healthy_node_is_switched_per_tick():
    modes = dict.fromkeys(NODES, THROUGHPUT_MODE)
    [action] = plan(LATENCY_MODE, modes)
    assert (action.node, action.value, action.advisory) == ("node0", LATENCY_MODE, False)
    assert "3 node(s) to switch" in action.reason and "latency-optimal" in action.reason
    # node0 switched: node1 next; a node that is not UP, or whose health failed, is left as it is
    modes["node0"] = LATENCY_MODE
    assert [a.node for a in plan(LATENCY_MODE, modes, up=("node0", "node2"))] == ["node2"]
    assert [a.node for a in plan(LATENCY_MODE, modes, unhealthy={"node1": "its metrics port does not answer"})] == \
        ["node2"]
    assert plan(LATENCY_MODE, dict.fromkeys(NODES, LATENCY_MODE)) == []
    # the law goes back: the switched nodes go back, one at a time
    assert [a.node for a in plan(THROUGHPUT_MODE, modes)] == ["node0"]


def test_a_fleet_that_cannot_switch_logs_a_change_of_mode_as_advisory_with_why():
    [action] = plan(LATENCY_MODE, None, no_batching="advisory: m has no dynamic batching to switch")
    assert action.advisory and action.node is None and "no dynamic batching" in action.reason
    assert NO_BATCHING in plan(LATENCY_MODE, None)[0].reason
    assert plan(THROUGHPUT_MODE, None) == []  # no change of the law's mode: nothing to advise


class FakeFleet(RecordingBalancer):
    """The fleet handle: weights into the fake HAProxy, a batching switch recorded in the fleet's state."""

    def __init__(self, io: FakeFleetIO, state: dict, refuse_batching: bool = False):
        super().__init__(io)
        self.state, self.refuse_batching = state, refuse_batching
        self.switched: list[tuple[str, str]] = []

    def set_batching(self, node: str, mode: str) -> dict:
        if self.refuse_batching:
            raise RecForgeError(f"{node} is DOWN in the balancer, not UP; not switched")
        self.switched.append((node, mode))
        self.state["nodes"][node]["batching"] = mode
        return {"node": node, "mode": mode}


def test_a_switch_runs_in_the_background_one_at_a_time_and_reports_its_end():
    actions = plan(LATENCY_MODE, dict.fromkeys(NODES, THROUGHPUT_MODE))
    state = {"nodes": {n: {} for n in NODES}}
    fleet = FakeFleet(FakeFleetIO(), state)
    release = threading.Event()
    switcher = BatchingSwitcher(lambda node, mode: release.wait(10) and fleet.set_batching(node, mode), lambda: 0.0)
    started = switcher.submit(actions[0])
    assert started["applied"] and started["node"] == "node0"
    assert "node0 -> latency" in switcher.in_flight()
    second = switcher.submit(actions[0])  # one at a time: refused while the first runs
    assert second["applied"] is False and "still running" in second["error"]
    release.set()
    switcher.wait(10)
    [done] = switcher.finished()
    assert (done["operation"], done["node"], done["mode"], done["applied"]) == ("batching", "node0", LATENCY_MODE, True)
    assert fleet.switched == [("node0", LATENCY_MODE)] and fleet.calls == []  # no weight touched
    assert switcher.in_flight() is None and switcher.finished() == []
    failing = BatchingSwitcher(FakeFleet(FakeFleetIO(), state, refuse_batching=True).set_batching, lambda: 0.0)
    failing.submit(actions[0])
    failing.wait(10)
    [failed] = failing.finished()
    assert failed["applied"] is False and "not UP" in failed["error"]


def served_from(root, state, serving_config: ServingConfig, model_format: str = "onnx") -> None:
    """Give each node a repository whose provenance says how its model was deployed."""
    for name, node in state["nodes"].items():
        model_dir = root / name / "repo" / "ncf"
        model_dir.mkdir(parents=True)
        (model_dir / mr.PROVENANCE_FILE).write_text(json.dumps(
            {"model_format": model_format, "serving_config": serving_config.to_dict()}))
        node["repo"] = str(root / name / "repo")


def test_the_fleet_side_knob_sets_come_from_the_node_repository(tmp_path):
    root, state = fleet_folder(tmp_path)
    assert "no model repository" in batching.switch_unavailable(state)
    served_from(root, state, ServingConfig(preferred_batch_size=(8,), max_queue_delay_microseconds=300))
    assert batching.switch_unavailable(state) == ""
    sets = batching.knob_sets(state["nodes"]["node0"]["repo"], "ncf")
    assert sets[THROUGHPUT_MODE].max_queue_delay_microseconds == 300
    loaded = {"name": "ncf", "max_batch_size": 256, "version_policy": {"specific": {"versions": [2]}},
              "dynamic_batching": {"preferred_batch_size": [8], "max_queue_delay_microseconds": 300,
                                   "default_queue_policy": {"max_queue_size": 4}}}
    assert batching.loaded_knobs(loaded) == (300, (8,))
    override = batching.with_knobs(loaded, sets[LATENCY_MODE])
    assert batching.loaded_knobs(override) == (0, ())
    # Triton shows a config without a preference as preferring max_batch_size: the same as none
    assert batching.loaded_knobs({**loaded, "dynamic_batching": {"preferred_batch_size": [256]}}) == (0, ())
    assert override["version_policy"] == loaded["version_policy"]  # the version it serves stays
    assert override["dynamic_batching"]["default_queue_policy"] == {"max_queue_size": 4}
    assert batching.loaded_knobs(loaded) == (300, (8,))  # the loaded config is not changed in place
    assert batching.node_mode(state["nodes"]["node0"]) == THROUGHPUT_MODE  # none recorded: as deployed


def test_a_model_without_a_batching_wait_to_remove_cannot_switch(tmp_path):
    root, state = fleet_folder(tmp_path)
    served_from(root, state, ServingConfig(dynamic_batching=False), model_format="torchscript")
    assert "no dynamic batching" in batching.switch_unavailable(state)
    (tmp_path / "other").mkdir()
    root, state = fleet_folder(tmp_path / "other")
    served_from(root, state, ServingConfig(max_queue_delay_microseconds=0))
    assert "the same" in batching.switch_unavailable(state)


def test_ticks_switch_the_nodes_one_by_one_to_the_laws_mode(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    served_from(root, state, ServingConfig())  # the default: a 100 us batching wait
    io, now = FakeFleetIO(), [0.0]
    fleet = FakeFleet(io, state)
    live = LiveController(root, LiveConfig(min_nodes=2, log_every_s=60), clock=lambda: now[0], cpus=2,
                          read_stats=io.stats, read_node=io.node, control=fleet, operations=FakeNodeOperations(),
                          fleet_bounds=lambda s: (1, 2), read_shed=lambda entry: None)
    live.start()
    live.tick(state)  # the first tick only records
    records = []
    for _ in range(3):
        now[0] += 1.0
        io.serve(20)  # a light load: the law stays latency-optimal
        records.append(live.tick(state))
        live.switcher.wait(10)
    assert all(r["decision"]["batching"] == LATENCY_MODE for r in records)
    assert fleet.switched == [("node0", LATENCY_MODE), ("node1", LATENCY_MODE)]  # one per tick, then none
    assert records[0]["batching_modes"] == {"node0": THROUGHPUT_MODE, "node1": THROUGHPUT_MODE}
    assert records[2]["batching_modes"] == {"node0": LATENCY_MODE, "node1": LATENCY_MODE}
    switch = next(a for a in records[1]["actions"] if a["kind"] == "batching")
    assert switch["applied"] and not switch["advisory"] and switch["node"] == "node1"
    ended = [(o["operation"], o["node"], o["applied"]) for r in records for o in r.get("batching_switches", [])]
    assert ended == [("batching", "node0", True), ("batching", "node1", True)]  # each switch's end is logged too
    logged = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]
    assert [a["node"] for d in logged for a in d.get("actions", []) if a["kind"] == "batching"] == \
        ["node0", "node1"]  # each switch is logged although log_every_s is long
