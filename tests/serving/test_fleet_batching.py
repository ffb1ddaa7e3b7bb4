"""The batching switch on a real fleet (tritonserver + HAProxy, recforge.serving.fleet.batching): a node switched
under a light steady load from its deployed (throughput-optimal) knobs to the latency-optimal ones and back — its
loaded config changes accordingly and no request fails, neither through the balancer nor on the node's own port —;
the model-repository API stays off the balancer's port; a node the supervisor restarts comes back in the mode
state.json records."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import requests

from recforge.inference import triton as tr
from recforge.inference.serving_config import LATENCY_MODE, THROUGHPUT_MODE
from recforge.serving import fleet as fl
from recforge.serving.fleet import batching
from tests.serving.test_fleet import MODEL, feed
from tests.serving.test_fleet_supervisor import RECOVERY_BOUND_S, tiny_model_source, wait_for

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.integration, pytest.mark.triton,
              pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")]


class SteadyLoad:
    """One client thread sending small requests in turn to each of ``urls`` (a balancer, a node's own port),
    about 25 per second, recording every answer."""

    def __init__(self, urls: list[str]):
        self.urls, self.inputs = urls, feed(2, seed=3)
        self.served = dict.fromkeys(urls, 0)
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        turn = 0
        while not self.stop.wait(0.04):
            url = self.urls[turn % len(self.urls)]
            turn += 1
            try:
                tr.infer(url, MODEL, self.inputs)
                self.served[url] += 1
            except Exception as err:  # every kind of failure counts: the assertion names them
                self.failed.append(f"{url}: {err}")

    def total(self) -> int:
        return sum(self.served.values())

    def __enter__(self) -> SteadyLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def loaded(url: str) -> tuple[int, tuple[int, ...]]:
    """(queue delay, preferred batch sizes) of the model as the node has it loaded now."""
    return batching.loaded_knobs(tr.model_config(url, MODEL))


def test_a_node_switches_batching_mode_under_load_and_a_restart_keeps_its_mode(tmp_path):
    home = tmp_path / "home"
    source, _, _ = tiny_model_source(tmp_path)  # no profile: the default ServingConfig (a 100 us batching wait)
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=home,
                  supervisor=fl.SupervisorConfig(interval_s=0.5, health_timeout_s=1.0))
    root = fl.fleet_dir(home)
    node0, node1 = state["nodes"]["node0"], state["nodes"]["node1"]
    try:
        fleet = fl.Fleet(home)
        assert fleet.batching_unavailable() == ""
        deployed = loaded(node0["url"])
        assert deployed == (100, ())
        # model control is the node's own port's: the balancer does not pass it on
        through = requests.post(f"{state['url']}/v2/repository/models/{MODEL}/load", json={}, timeout=10)
        assert 400 <= through.status_code < 500, through.text

        with SteadyLoad([state["url"], node0["url"]]) as load:
            wait_for(lambda: load.total() >= 10, 30, "the load running", root / "supervisor.log")
            switched = fleet.set_batching("node0", LATENCY_MODE)
            assert switched["reloaded"] == [MODEL]
            assert loaded(node0["url"]) == (0, ())  # the latency-optimal knobs: no batching wait
            assert loaded(node1["url"]) == deployed  # node by node: the other node is as it was
            assert fl.read_state(home)["nodes"]["node0"]["batching"] == LATENCY_MODE
            assert fleet.set_batching("node0", LATENCY_MODE)["reloaded"] == []  # already in that mode
            back = fleet.set_batching("node0", THROUGHPUT_MODE)
            assert loaded(node0["url"]) == deployed
            assert fl.read_state(home)["nodes"]["node0"]["batching"] == THROUGHPUT_MODE
            after = load.served[node0["url"]]
            wait_for(lambda: load.served[node0["url"]] >= after + 5, 30, "node0 serving after the switches",
                     root / "supervisor.log")
        print(f"\nnode0 switched to latency in {switched['seconds']} s and back in {back['seconds']} s; requests "
              f"served {load.served} (balancer, node0), {len(load.failed)} failed")
        assert load.failed == []
        assert all(count > 0 for count in load.served.values())

        # node1 in latency mode, killed: the supervisor starts it from its repository and loads it in that mode
        fleet.set_batching("node1", LATENCY_MODE)
        os.kill(node1["pid"], signal.SIGKILL)
        wait_for(lambda: (fl.read_state(home)["nodes"]["node1"].get("supervision") or {}).get("restarts")
                 and fl.read_state(home)["nodes"]["node1"]["supervision"]["status"] == "ok",
                 RECOVERY_BOUND_S, "node1 restarted by the supervisor", root / "supervisor.log")
        assert fl.read_state(home)["nodes"]["node1"]["pid"] != node1["pid"]
        assert loaded(node1["url"]) == (0, ())
        assert tr.infer(node1["url"], MODEL, feed(2, seed=4))["probability"].shape == (2, 1)
    finally:
        fl.down(home=home)
    assert fl.fleet_processes(root) == []
