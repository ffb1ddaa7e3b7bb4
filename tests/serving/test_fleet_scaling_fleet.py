"""Adding and removing a node of a real running fleet (tritonserver + HAProxy + the supervisor), while a client sends
valid requests through the balancer: no request fails; the added node serves through the balancer (HAProxy's
counters); the balancer's admission rejects malformed requests on it too and the model-repository API stays
unreachable through the balancer; the removed node is stopped, gone from HAProxy, state.json and `fleet status`,
and the supervisor does not start it again; an added node that dies is restarted by the supervisor. And the elastic
controller doing it by itself: under load it adds a node, when the load stops it removes it again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from recforge.contracts.headers import NODE_HEADER
from recforge.inference import triton as tr
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb
from recforge.serving.pids import cmdline
from tests.serving.elastic.conftest import PROFILE
from tests.serving.malformed import malformed_requests, valid_request
from tests.serving.test_admission import DIMS, post
from tests.serving.test_fleet import MODEL
from tests.serving.test_fleet_supervisor import tiny_model_source
from tests.waiting import poll

BOUND_S = 90.0  # a CPU tritonserver with the python backend starts in ~5-20 s on a loaded 2-core machine

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.integration, pytest.mark.triton,
              pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")]


class Client(threading.Thread):
    """Valid inference requests through the balancer, one after another (about 20 a second), on one keep-alive
    session; counts the answers by node and keeps every failure."""

    def __init__(self, url: str, pause_s: float = 0.05):
        super().__init__(daemon=True)
        self.pause_s = pause_s
        self.url = f"{url}/v2/models/{MODEL}/infer"
        self.headers, self.body = valid_request(DIMS, batch=2)
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.halt.is_set():
                try:
                    answer = session.post(self.url, data=self.body, headers=self.headers, timeout=30)
                    if answer.status_code == 200:
                        self.served[answer.headers.get(NODE_HEADER, "?")] += 1
                    else:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except requests.RequestException as err:
                    self.failures.append(repr(err))
                time.sleep(self.pause_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def wait_for(predicate, what: str, timeout_s: float = BOUND_S):
    return poll(predicate, what, timeout_s)


def node_processes(root, name: str) -> list[int]:
    marker = str(root / name / "repo")
    return [pid for pid in fl.fleet_processes(root) if any(marker in arg for arg in cmdline(pid))]


def test_a_node_is_added_and_removed_under_load_without_a_failed_request(tmp_path):
    home = tmp_path / "home"
    source, _, _ = tiny_model_source(tmp_path)
    state = fl.up(source, fl.FleetConfig(nodes=1, port=0, check_inter_ms=200), home=home,
                  supervisor=fl.SupervisorConfig(interval_s=0.5, health_timeout_s=1.0))
    root = fl.fleet_dir(home)
    client = Client(state["url"])
    client.start()
    try:
        wait_for(lambda: client.served["node0"] >= 5, "requests served by node0")
        fleet = fl.Fleet(home)
        added = fleet.add_node()
        print(f"\nnode1 added under load in {added['seconds']:.2f} s ({added['attempts']} attempt(s))")
        assert (added["node"], added["status"], added["attempts"]) == ("node1", "done", 1)
        node1 = fl.read_state(home)["nodes"]["node1"]
        assert node1["lb_state"] == "ready" and fl.process_alive(node1["pid"])
        assert node1["models"][MODEL]["version"] == 1 and tr.model_ready(node1["url"], MODEL, 1)
        proxy = lb.HAProxy.from_state(fl.read_state(home)["balancer"])
        assert f"server node1 127.0.0.1:{node1['http_port']}" in proxy.config_path.read_text()
        wait_for(lambda: (proxy.servers()["node1"]["total_sessions"] or 0) > 0, "node1 in HAProxy's counters")
        wait_for(lambda: client.served["node1"] > 0, "the client served by node1")
        assert proxy.servers()["node1"]["status"] == "UP"
        assert proxy.servers()["node1"]["weight"] == proxy.servers()["node0"]["weight"]

        # the balancer's admission applies to the new node as to the old: with node0 drained, node1 gets every
        # request, and a malformed one is still answered 4xx
        fleet.drain("node0")
        limits = lb.read_limits(root / "node1" / "repo" / MODEL / "config.pbtxt")
        assert post(state["url"], *valid_request(DIMS))[2] == "node1"
        outcome = {kind: post(state["url"], headers, body)
                   for kind, headers, body in malformed_requests(DIMS, limits.max_batch_size, limits.max_body_bytes)}
        assert all(isinstance(s, int) and 400 <= s < 500 for s, _, _ in outcome.values()), outcome
        assert outcome["shape_not_integers"][:1] == (400,) and outcome["shape_not_integers"][2] == "node1"
        for path in ("/v2/repository/index", f"/v2/repository/models/{MODEL}/unload",
                     f"/v2/repository/models/{MODEL}/load"):
            assert requests.post(f"{state['url']}{path}", timeout=5).status_code == 403, path
        assert requests.get(f"{state['url']}/v2/models/stats", timeout=5).status_code == 403
        assert fl.process_alive(node1["pid"]) and tr.model_ready(node1["url"], MODEL, 1)
        fleet.ready("node0")
        wait_for(lambda: proxy.servers()["node0"]["status"] == "UP", "node0 back in rotation")

        served_before = client.served["node1"]
        removed = fleet.remove_node("node1")
        print(f"node1 removed under load in {removed['seconds']:.2f} s, {removed['in_flight_left']} in flight left")
        assert removed["status"] == "done" and removed["in_flight_left"] == 0
        assert client.served["node1"] >= served_before
        after = fl.read_state(home)
        assert set(after["nodes"]) == {"node0"} and after["scaling"]["last"]["operation"] == "remove"
        assert set(proxy.servers()) == {"node0"} and "server node1" not in proxy.config_path.read_text()
        view = fl.status(home=home)
        assert set(view["nodes"]) == {"node0"} and view["status"] == "up"
        assert view["scaling"]["last"]["node"] == "node1" and not fl.process_alive(node1["pid"])
        served_now = client.served["node0"]
        wait_for(lambda: client.served["node0"] >= served_now + 10, "requests served by node0 after the removal")
        time.sleep(2.0)  # four supervisor intervals: it does not start the removed node again
        assert node_processes(root, "node1") == []
        assert "node1" not in (root / "supervisor.log").read_text()
    finally:
        client.stop()
        if client.failures or client.is_alive():
            fl.down(home=home)
    assert client.failures == [], client.failures[:5]
    print(f"requests through the balancer while adding and removing: {dict(client.served)}, 0 failed")

    try:
        # an added node that dies is restarted by the supervisor, like any other
        again = fl.Fleet(home).add_node()
        assert again["node"] == "node1"
        victim = fl.read_state(home)["nodes"]["node1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        supervision = wait_for(lambda: (lambda s: s if s.get("status") == "ok" and s.get("restarts") else None)(
            fl.read_state(home)["nodes"]["node1"].get("supervision") or {}), "node1 restarted by the supervisor")
        assert supervision["restarts"][0]["failure"] == "crash"
        assert fl.process_alive(fl.read_state(home)["nodes"]["node1"]["pid"])
        assert fl.status(home=home)["status"] == "up"
    finally:
        fl.down(home=home)
    assert fl.fleet_processes(root) == []


def test_the_controller_adds_a_node_under_load_and_removes_it_when_the_load_stops(tmp_path):
    """The fleet's DLRM profile scaled down to 10 q/s per node, so that a client on this machine is more than one
    node's load."""
    home = tmp_path / "home"
    source, _, _ = tiny_model_source(tmp_path)
    scale = 70.0
    profile = {**PROFILE, "latency_bounded_throughput_qps": PROFILE["latency_bounded_throughput_qps"] / scale,
               "curve": [{**row, "offered_qps": row["offered_qps"] / scale, "achieved_qps": row["achieved_qps"] / scale}
                         for row in PROFILE["curve"]]}
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(profile))
    # shedding off: at 7x the scaled profile's capacity the law sheds (503s), and this test counts every non-200
    # as a failure of the node operations (shedding on a real balancer: tests/serving/test_load_shedding.py)
    config = {"interval_s": 0.5, "log_every_s": 0, "profile": str(profile_path), "min_nodes": 1, "shed": False,
              "control": {"scale_down_window_s": 5.0}}
    state = fl.up(source, fl.FleetConfig(nodes=1, port=0, check_inter_ms=200), home=home, controller=config)
    root = fl.fleet_dir(home)
    client = Client(state["url"], pause_s=0.01)
    client.start()
    try:
        wait_for(lambda: "node1" in fl.read_state(home)["nodes"], "the controller adding node1")
        wait_for(lambda: fl.read_state(home)["nodes"]["node1"].get("lb_state") == "ready", "node1 in rotation")
        wait_for(lambda: client.served["node1"] > 0, "the client served by node1")
        client.stop()
        wait_for(lambda: set(fl.read_state(home)["nodes"]) == {"node0"}, "the controller removing node1")

        def decisions():
            return [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]

        def operations():
            return [op for r in decisions() for op in r.get("node_operations", [])]

        wait_for(lambda: len(operations()) >= 2, "the removal's end in the decisions log", timeout_s=30)
        scales = [a for r in decisions() for a in r.get("actions", []) if a["kind"] == "scale" and a["applied"]]
        assert [a["node"] for a in scales] == [None, "node1"], scales  # one add, then the removal of node1
        assert [(op["operation"], op["node"], op["applied"]) for op in operations()] == \
            [("add", "node1", True), ("remove", "node1", True)], operations()
        status = json.loads((root / "controller.json").read_text())
        assert status["node_seconds"] > 0
        print(f"\ncontroller: {scales[0]['reason']}\n            {scales[1]['reason']}\n"
              f"node operations {[(op['operation'], op.get('seconds')) for op in operations()]}, "
              f"node-seconds {status['node_seconds']:.1f}, requests {dict(client.served)}")
    finally:
        client.stop()
        fl.down(home=home)
    assert client.failures == [], client.failures[:5]
