"""Adding and removing a node of a running fleet, the parts that need no server: the node bounds (the fleet's
minimum, what the CPUs hold with and without placement), the cores a node is allocated, the new node's name and
repository (exactly the served version, its SHA-256 checked), no add during a rollout, and a node that fails to
start: retried once, then reported in state.json and forgotten, the fleet as it was. The real fleet:
tests/serving/test_fleet_scaling_fleet.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.hashing import sha256_file
from recforge.inference import triton as tr
from recforge.serving.fleet import scaling
from recforge.serving.fleet.config import FleetConfig
from recforge.serving.fleet.state import STATE_VERSION, read_state, write_state


def fleet_state(tmp_path, *, nodes=("node0",), config=None, versions=None):
    root = tmp_path / "fleet"
    entries = {}
    for name in nodes:
        model_dir = root / name / "repo" / "ncf"
        for version in (1, 2):
            (model_dir / str(version)).mkdir(parents=True)
            (model_dir / str(version) / "model.onnx").write_bytes(f"onnx v{version}".encode())
        (model_dir / "config.pbtxt").write_text('name: "ncf"\n')
        version = (versions or {}).get(name, 1)
        entries[name] = {"url": "http://127.0.0.1:1", "pid": None, "repo": str(root / name / "repo"),
                         "lb_state": "ready", "weight": 256,
                         "models": {"ncf": {"version": version,
                                            "onnx_sha256": sha256_file(model_dir / str(version) / "model.onnx")}}}
    state = {"version": STATE_VERSION, "status": "up", "url": "http://127.0.0.1:3", "nodes": entries,
             "target": "cpu-triton", "balancer": {"config": "x", "socket": "x", "log": "x", "port": 3, "pid": None},
             "config": dict(config or {"nodes": len(nodes)})}
    write_state(root, state)
    return root, state


def test_the_bounds_are_the_fleets_minimum_and_what_the_cpus_hold(tmp_path):
    _, state = fleet_state(tmp_path, config={"nodes": 2, "min_nodes": 2})
    assert scaling.node_bounds(state, host=(0, 1)) == (2, 2)  # placement off: one node per CPU
    assert scaling.node_bounds(state, host=tuple(range(64))) == (2, 16)  # never above the fleet's 16
    placed = {"config": {"nodes": 1, "node_cpus": 2}, "nodes": {}}
    # disjoint sets: 1 CPU for the load generator, 1 for the balancer, then 2 per node
    assert scaling.node_bounds(placed, host=tuple(range(8))) == (1, 3)
    assert scaling.node_bounds({"nodes": {"node0": {}}}, host=(0, 1, 2, 3)) == (1, 4)  # a fleet without a config
    # by default scale-in stops at the nodes `fleet up` started
    assert scaling.node_bounds({"config": {"nodes": 2}, "nodes": {}}, host=(0, 1, 2, 3)) == (2, 4)
    # shared CPUs and a quota (the elastic bench's nodes): as many quotas as the CPUs after the apparatus hold
    quotas = {"config": {"nodes": 1, "node_cpus": 1, "cpu_quota": 0.2, "share_cpus": True}, "nodes": {}}
    assert scaling.node_bounds(quotas, host=(0, 1)) == (1, 5)
    with pytest.raises(ConfigError, match="min_nodes"):
        FleetConfig(nodes=1, min_nodes=2)
    # the quota's CFS period reaches every node's placement
    plan = FleetConfig(nodes=2, node_cpus=1, cpu_quota=0.25, cpu_period_us=10_000, share_cpus=True).cpu_plan((0, 1))
    assert {plan.placements[n].period_us for n in ("node0", "node1")} == {10_000}
    assert plan.placements["node0"].quota_us == 2500 and plan.placements["apparatus"].quota_cores is None


def test_a_nodes_cores_are_its_quota_else_its_cpu_set():
    assert scaling.node_cores({"placement": {"cpus": "2-3", "quota_cores": 1.5}}) == 1.5
    assert scaling.node_cores({"placement": {"cpus": "2-3", "quota_cores": None}}) == 2.0
    assert scaling.node_cores({}, default=1.0) == 1.0


def test_names_retries_and_the_copied_repository(tmp_path):
    assert scaling.free_node_name({"node0": {}, "node2": {}}) == "node1"
    calls = []

    def flaky(number):
        calls.append(number)
        if number == 1:
            raise RecForgeError("port taken")
        return "server"

    assert scaling.with_one_retry(flaky) == ("server", ["attempt 1: port taken"]) and calls == [1, 2]
    result, errors = scaling.with_one_retry(lambda n: (_ for _ in ()).throw(RecForgeError(f"no {n}")))
    assert result is None and errors == ["attempt 1: no 1", "attempt 2: no 2"]

    root, state = fleet_state(tmp_path, versions={"node0": 2})
    reference, models = scaling.served_models(state)
    assert reference == "node0" and models["ncf"]["version"] == 2
    target = tmp_path / "new" / "repo"
    scaling.copy_served_repository(root / "node0" / "repo", target, models)
    assert sorted(p.name for p in (target / "ncf").iterdir()) == ["2", "config.pbtxt"]  # only the served version
    (root / "node0" / "repo" / "ncf" / "2" / "model.onnx").write_bytes(b"changed on disk")
    with pytest.raises(RecForgeError, match="SHA-256"):
        scaling.copy_served_repository(root / "node0" / "repo", target, models)


def test_no_node_is_added_while_nodes_serve_different_versions(tmp_path):
    _, state = fleet_state(tmp_path, nodes=("node0", "node1"), versions={"node1": 2})
    with pytest.raises(ConfigError, match="rollout"):
        scaling.served_models(state)


class NeverReady:
    """A tritonserver that starts and exits before it is ready."""

    started: list[int] = []

    def __init__(self, repo, *, http_port, **kwargs):
        self.http_port = http_port
        self.url, self.metrics_url = f"http://127.0.0.1:{http_port}", "x"
        self.process = type("P", (), {"pid": None})()

    def start(self):
        NeverReady.started.append(self.http_port)
        return self

    def wait_ready(self, timeout=None):
        raise tr.TritonError("tritonserver exited with code 1 before it was ready")

    def stop(self, timeout=20.0):
        return 1


def test_a_node_that_fails_to_start_is_retried_once_then_reported(tmp_path, monkeypatch):
    root, state = fleet_state(tmp_path, config={"nodes": 1})
    monkeypatch.setattr(tr, "TritonServer", NeverReady)
    monkeypatch.setattr(scaling, "node_bounds", lambda state: (1, 4))
    NeverReady.started = []
    with pytest.raises(RecForgeError, match="adding node1 failed twice") as failure:
        scaling.add_node(tmp_path)
    assert "\n" not in str(failure.value)
    assert len(NeverReady.started) == 2 and len(set(NeverReady.started)) == 2  # retried once, on fresh ports
    after = read_state(tmp_path)
    assert set(after["nodes"]) == {"node0"}  # forgotten: the fleet as it was
    failed = after["scaling"]["failures"][-1]
    assert failed["operation"] == "add" and failed["node"] == "node1" and len(failed["errors"]) == 2
    assert "exited with code 1" in failed["errors"][1] and after["scaling"]["last"]["status"] == "failed"


def test_add_and_remove_respect_the_bounds(tmp_path, monkeypatch):
    root, state = fleet_state(tmp_path, nodes=("node0", "node1"), config={"nodes": 2, "min_nodes": 2})
    monkeypatch.setattr(scaling, "node_bounds", lambda state: (2, 2))
    with pytest.raises(ConfigError, match="the most this machine's CPUs hold"):
        scaling.add_node(tmp_path)
    with pytest.raises(ConfigError, match="fewest"):
        scaling.remove_node("node1", tmp_path)
    with pytest.raises(ConfigError, match="not in the fleet"):
        scaling.remove_node("node7", tmp_path)
    assert json.loads((root / "state.json").read_text())["nodes"].keys() == {"node0", "node1"}


def test_an_add_left_half_done_by_a_dead_controller_is_abandoned(tmp_path):
    root, state = fleet_state(tmp_path, nodes=("node0", "node1"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state["nodes"]["node1"].update(lb_state="starting", pid=dead.pid, added_epoch_s=time.time())
    write_state(root, state)
    assert scaling.resume_interrupted(tmp_path) == ["abandoned the add of node1"]
    after = read_state(tmp_path)
    assert set(after["nodes"]) == {"node0"} and after["scaling"]["failures"][-1]["node"] == "node1"
    assert "interrupted" in after["scaling"]["failures"][-1]["errors"][0]
    assert scaling.resume_interrupted(tmp_path) == []  # nothing left to finish
