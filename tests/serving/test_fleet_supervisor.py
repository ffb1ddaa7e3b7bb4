"""The fleet supervisor against a real 2-node fleet: a node's tritonserver killed with SIGKILL comes back (ready, in
rotation at its weight, serving through the balancer) without a process started by the test, `fleet status`
reports the restart with its recovery seconds; a hung node (SIGSTOP) is restarted too; and `fleet down` stops the
supervisor."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from recforge.serving.fleet import crashes
from tests.serving.malformed import valid_request
from tests.serving.test_fleet import MODEL, SPEC, feed, reference
from tests.waiting import poll

RECOVERY_BOUND_S = 90.0  # a CPU tritonserver with the python backend starts in ~5-20 s on a loaded 2-core machine

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.triton,
              pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])


def tiny_model_source(folder: Path) -> tuple[fl.ModelSource, Path, Path]:
    """The tiny NCF model of these tests exported to ``folder``: (its fleet source, the ONNX file, the spec)."""
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "v1.onnx")
    spec_path = folder / "spec.json"
    spec_path.write_text(SPEC.to_json())
    return fl.explicit_source(onnx_path, spec_path, model=MODEL, version=1), onnx_path, spec_path


def test_a_killed_node_is_restarted_by_the_supervisor_and_down_stops_it(tmp_path):
    home = tmp_path / "home"
    source, onnx_path, spec_path = tiny_model_source(tmp_path)
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=home,
                  supervisor=fl.SupervisorConfig(interval_s=0.5, health_timeout_s=1.0))
    try:
        supervisor_pid = state["supervisor"]["pid"]
        assert fl.process_alive(supervisor_pid) and fl.status(home=home)["supervisor"]["running"]
        victim = state["nodes"]["node1"]
        os.kill(victim["pid"], signal.SIGKILL)  # the tritonserver only (its stubs are the supervisor's to clean)
        killed_at = time.monotonic()
        deadline = killed_at + RECOVERY_BOUND_S
        supervision: dict = {}
        while time.monotonic() < deadline:
            supervision = fl.read_state(home)["nodes"]["node1"].get("supervision") or {}
            if supervision.get("status") == "ok" and supervision.get("restarts"):
                break
            time.sleep(0.2)
        waited = time.monotonic() - killed_at
        assert supervision.get("status") == "ok", (supervision, (fl.fleet_dir(home) / "supervisor.log").read_text())
        restart = supervision["restarts"][0]
        print(f"\nnode1 killed (SIGKILL): back in rotation {restart['recovery_s']:.2f} s after the crash was "
              f"detected, {waited:.2f} s after the kill")
        assert restart["failure"] == "crash" and 0 < restart["recovery_s"] < RECOVERY_BOUND_S

        new = fl.read_state(home)["nodes"]["node1"]
        assert new["pid"] != victim["pid"] and fl.process_alive(new["pid"])
        assert parent_pid(new["pid"]) == supervisor_pid  # started by the supervisor, not by this test
        assert (new["http_port"], new["grpc_port"], new["repo"]) == (victim["http_port"], victim["grpc_port"],
                                                                    victim["repo"])
        assert tr.model_ready(new["url"], MODEL, 1)
        view = fl.status(home=home)
        assert view["status"] == "up" and view["alarms"] == []
        assert view["nodes"]["node1"]["balancer"]["status"] == "UP"
        assert view["nodes"]["node1"]["balancer"]["weight"] == victim["weight"]
        assert view["nodes"]["node1"]["supervision"]["restarts"][0]["recovery_s"] == restart["recovery_s"]
        inputs = feed(4, seed=7)
        np.testing.assert_allclose(tr.infer(state["url"], MODEL, inputs)["probability"][:, 0],
                                   reference(onnx_path, inputs), rtol=1e-5, atol=1e-6)
        through = tr.TritonHttpTarget(state["url"], MODEL, spec_path, max_batch=4, pool=2)
        try:
            assert {through.infer(4) for _ in range(8)} == {"node0", "node1"}  # node1 serves through the balancer
        finally:
            through.close()

        # a hung node (SIGSTOP: alive, answers nothing) is found by its failing health checks and restarted
        hung = fl.read_state(home)["nodes"]["node0"]
        os.kill(hung["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        deadline = stopped_at + RECOVERY_BOUND_S
        while time.monotonic() < deadline:
            supervision = fl.read_state(home)["nodes"]["node0"].get("supervision") or {}
            if supervision.get("status") == "ok" and supervision.get("restarts"):
                break
            time.sleep(0.2)
        assert supervision.get("status") == "ok", (supervision, (fl.fleet_dir(home) / "supervisor.log").read_text())
        restart = supervision["restarts"][0]
        print(f"node0 hung (SIGSTOP): back in rotation {restart['recovery_s']:.2f} s after the hang was detected, "
              f"{time.monotonic() - stopped_at:.2f} s after SIGSTOP")
        assert restart["failure"] == "hang" and not fl.process_alive(hung["pid"])
        assert fl.status(home=home)["status"] == "up"
        assert tr.infer(state["url"], MODEL, feed(2, seed=8))["probability"].shape == (2, 1)
    finally:
        result = fl.down(home=home)
    assert any(s.startswith("supervisor") for s in result["stopped"]), result
    assert not fl.process_alive(supervisor_pid) and fl.fleet_processes(fl.fleet_dir(home)) == []


def wait_for(predicate, timeout_s: float, what: str, log: Path):
    return poll(predicate, what, timeout_s, lambda: f"supervisor log:\n{log.read_text()[-3000:]}")


def test_a_request_on_a_node_that_crashes_twice_is_recorded_then_quarantined_and_a_dead_balancer_restarts(
        tmp_path):
    """A request in flight on a node when it dies is a suspect of that crash (crashes.jsonl, `fleet crashes`); in
    flight at a second crash it is quarantined: the balancer answers it 422 while other requests are served. The
    test holds the request on a node by stopping the node (SIGSTOP) before sending it, then kills the node."""
    home = tmp_path / "home"
    source, _, _ = tiny_model_source(tmp_path)
    # slow health checks: the balancer keeps sending to the stopped node until the test kills it
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=5000), home=home,
                  supervisor=fl.SupervisorConfig(interval_s=0.5, quarantine_after=2, unhealthy_after=50))
    root = fl.fleet_dir(home)
    log = root / "supervisor.log"
    dims = {"sparse": SPEC.num_sparse, "genres": SPEC.genre_slots, "history": SPEC.history_length,
            "dense": SPEC.num_dense}
    headers, poison = valid_request(dims, batch=3)
    sha = hashlib.sha256(poison).hexdigest()
    url = f"{state['url']}/v2/models/{MODEL}/infer"
    try:
        fleet = fl.Fleet(home)
        for crash in (1, 2):
            victim = fl.read_state(home)["nodes"]["node1"]
            fleet.set_weight("node0", 0)  # every new request goes to node1
            os.kill(victim["pid"], signal.SIGSTOP)
            answers: list = []
            sender = threading.Thread(target=lambda answers=answers: answers.append(
                requests.post(url, data=poison, headers=headers, timeout=60).status_code))
            sender.start()
            time.sleep(1.0)  # the request is on node1, which answers nothing
            os.kill(victim["pid"], signal.SIGKILL)
            sender.join(60)
            assert answers and answers[0] >= 500  # lost with its node, not sent to node0 (no poison retries)
            fleet.set_weight("node0", victim["weight"] or 100)
            records = wait_for(lambda n=crash: len(crashes.read_crashes(root)) >= n and crashes.read_crashes(root),
                               60, f"crash record {crash}", log)
            assert records[-1]["node"] == "node1" and records[-1]["failure"] == "crash"
            assert sha in [s["body_sha256"] for s in records[-1]["suspects"]], records[-1]
            wait_for(lambda n=crash: (fl.read_state(home)["nodes"]["node1"].get("supervision") or {}).get("status")
                     == "ok" and len(fl.read_state(home)["nodes"]["node1"]["supervision"]["restarts"]) == n,
                     RECOVERY_BOUND_S, f"restart {crash} of node1", log)
            if crash == 1:  # one crash: recorded, not quarantined (a node killed from outside has suspects too)
                assert crashes.read_quarantine(root) == []
                assert requests.post(url, data=poison, headers=headers, timeout=30).status_code == 200
        assert crashes.read_quarantine(root) == [sha]
        refused = requests.post(url, data=poison, headers=headers, timeout=30)
        assert refused.status_code == 422 and "quarantined" in refused.json()["error"]
        _, other = valid_request(dims, batch=2)
        assert requests.post(url, data=other, headers=headers, timeout=30).status_code == 200
        view = fl.status(home=home)
        assert view["crashes"]["count"] == 2 and view["crashes"]["quarantined"] == [sha]

        # a dead balancer is started again on the same port, with the quarantine and the weights
        balancer = fl.read_state(home)["balancer"]
        os.kill(balancer["pid"], signal.SIGKILL)
        wait_for(lambda: (fl.read_state(home)["balancer"].get("supervision") or {}).get("status") == "ok",
                 60, "the balancer's restart", log)
        new = fl.read_state(home)["balancer"]
        assert new["pid"] != balancer["pid"] and new["port"] == balancer["port"]
        assert parent_pid(new["pid"]) == state["supervisor"]["pid"]
        assert requests.post(url, data=poison, headers=headers, timeout=30).status_code == 422
        assert requests.post(url, data=other, headers=headers, timeout=30).status_code == 200
        assert fl.status(home=home)["status"] == "up"
    finally:
        fl.down(home=home)
    assert fl.fleet_processes(root) == []
