"""The elastic controller on a real 2-node fleet (tritonserver + HAProxy): started by ``fleet up``, it drains a
node that stops answering (SIGSTOP) through HAProxy's runtime API with the reason in its decisions log, gives it
its weight back once it answers again, and a controller killed with SIGKILL leaves both nodes serving through the
balancer; one started again re-reads the weights from HAProxy; ``fleet down`` stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recforge.inference import triton as tr
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb
from tests.serving.test_fleet import MODEL
from tests.serving.test_fleet_supervisor import tiny_model_source
from tests.waiting import poll

BOUND_S = 30.0  # the controller ticks every 0.5 s; HAProxy marks a node DOWN after 2 checks 200 ms apart

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.integration, pytest.mark.triton,
              pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")]


def decisions(root: Path) -> list[dict]:
    path = root / "controller-decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, what: str, root: Path, timeout_s: float = BOUND_S):
    def detail() -> str:
        log = (root / "controller.log").read_text() if (root / "controller.log").exists() else ""
        return f"controller log: {log[-2000:]}; decisions: {decisions(root)[-3:]}"

    return poll(predicate, what, timeout_s, detail)


def weights(state: dict) -> dict[str, int]:
    return {name: view["weight"] for name, view in lb.HAProxy.from_state(state["balancer"]).servers().items()}


def nodes_serving(url: str, spec_path: Path) -> set[str]:
    through = tr.TritonHttpTarget(url, MODEL, spec_path, max_batch=4, pool=2)
    try:
        return {through.infer(4) for _ in range(12)}
    finally:
        through.close()


def test_the_controller_drains_a_stopped_node_and_its_death_leaves_the_fleet_serving(tmp_path, profile_file):
    home = tmp_path / "home"
    source, _, spec_path = tiny_model_source(tmp_path)
    config = {"interval_s": 0.5, "log_every_s": 0, "profile": str(profile_file)}
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=home, controller=config)
    root = fl.fleet_dir(home)
    stopped_node = None
    try:
        controller_pid = state["controller"]["pid"]
        wait_for(lambda: (fl.status(home=home)["controller"] or {}).get("ticks", 0) >= 2, "two ticks", root)
        view = fl.status(home=home)["controller"]
        assert view["running"] and view["pid"] == controller_pid and view["law"] and view["last_tick_at"]
        assert decisions(root)[0]["event"] == "start"
        assert nodes_serving(state["url"], spec_path) == {"node0", "node1"}

        stopped_node = fl.read_state(home)["nodes"]["node1"]["pid"]
        os.kill(stopped_node, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: weights(state)["node1"] == 0, "node1 drained (weight 0 in HAProxy)", root)
        print(f"\nnode1 stopped (SIGSTOP): drained by the controller {time.monotonic() - stopped_at:.2f} s later")
        drain = next(d for d in reversed(decisions(root)) for a in d.get("actions", [])
                     if a["node"] == "node1" and a["kind"] == "drain")
        action = next(a for a in drain["actions"] if a["node"] == "node1")
        assert action["applied"] and action["value"] == 0
        assert "metrics port" in action["reason"] or "DOWN" in action["reason"], action
        assert "node1" in drain["signals"]["unhealthy"] and "node1" not in drain["signals"].get("nodes", {})
        assert fl.read_state(home)["nodes"]["node1"]["weight"] == 0  # kept in state.json for a supervisor restart
        assert weights(state)["node0"] > 0  # never the whole fleet out

        os.kill(stopped_node, signal.SIGCONT)
        stopped_node = None
        wait_for(lambda: weights(state)["node1"] > 0, "node1 back in rotation", root)
        restored = weights(state)

        os.kill(controller_pid, signal.SIGKILL)
        wait_for(lambda: not fl.process_alive(controller_pid), "the controller gone", root)
        assert weights(state) == restored  # the fleet as it was
        assert nodes_serving(state["url"], spec_path) == {"node0", "node1"}
        view = fl.status(home=home)
        assert view["status"] == "up" and view["controller"]["running"] is False

        # started again by hand: it re-reads the nodes and the weights (and its config) from the fleet
        again = subprocess.Popen([sys.executable, "-m", "recforge.serving.elastic.live", "--fleet-dir", str(root)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        start = wait_for(lambda: next((d for d in decisions(root) if d.get("event") == "start"
                                       and d.get("pid") == again.pid), None), "the new controller's start", root)
        assert start["weights_in_haproxy"] == restored and start["nodes"] == ["node0", "node1"]
        assert fl.read_state(home)["controller"]["pid"] == again.pid
    finally:
        if stopped_node:
            os.kill(stopped_node, signal.SIGCONT)
        result = fl.down(home=home)
    assert any(s.startswith("controller") for s in result["stopped"]), result
    assert fl.fleet_processes(root) == []


def test_the_supervisor_restarts_a_killed_controller_which_rereads_the_fleet(tmp_path, profile_file):
    home = tmp_path / "home"
    source, _, spec_path = tiny_model_source(tmp_path)
    config = {"interval_s": 0.5, "log_every_s": 0, "profile": str(profile_file)}
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=home, controller=config,
                  supervisor=fl.SupervisorConfig(interval_s=0.5, health_timeout_s=1.0))
    root = fl.fleet_dir(home)
    try:
        first = state["controller"]["pid"]
        wait_for(lambda: (fl.status(home=home)["controller"] or {}).get("ticks", 0) >= 2, "two ticks", root)
        before = weights(state)
        os.kill(first, signal.SIGKILL)
        entry = wait_for(lambda: (lambda e: e if e.get("pid") != first and fl.process_alive(e.get("pid")) else None)(
            fl.read_state(home)["controller"]), "a new controller started by the supervisor", root)
        assert entry["config"] == {**entry["config"], **config}  # started again with its config
        assert (entry.get("supervision") or {}).get("status") in ("restarting", "ok", None)
        start = wait_for(lambda: next((d for d in decisions(root) if d.get("event") == "start"
                                       and d.get("pid") == entry["pid"]), None), "the new controller's start", root)
        assert start["weights_in_haproxy"] == before
        assert nodes_serving(state["url"], spec_path) == {"node0", "node1"}
    finally:
        result = fl.down(home=home)
    assert any(s.startswith("controller") for s in result["stopped"]), result
    assert fl.fleet_processes(root) == []
