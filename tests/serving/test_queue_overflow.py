"""A node whose queue is full (Triton's ``max_queue_size``) refuses new requests with 503 before running them, and
the balancer sends those to another node (``retry-on conn-failure 503``): a burst sent straight to one node's port
does not cost the clients of the balancer a request."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from tests.serving.malformed import valid_request
from tests.serving.test_fleet import MODEL, SPEC

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.triton, pytest.mark.skipif(not triton_ok, reason=f"no tritonserver: {triton_why}")]
DIMS = {"sparse": SPEC.num_sparse, "genres": SPEC.genre_slots, "history": SPEC.history_length, "dense": SPEC.num_dense}


def test_a_full_queue_answers_503_and_the_balancer_sends_the_request_to_another_node(tmp_path):
    home = tmp_path / "home"
    # slow enough that 40 concurrent requests of 64 rows queue up on one instance
    slow = export_onnx(build_model("dlrm", SPEC, top_mlp=(2048, 2048, 2048, 1)).eval(), SPEC, tmp_path / "slow.onnx")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(SPEC.to_json())
    fl.up(fl.explicit_source(slow, spec_path, model=MODEL, version=1), fl.FleetConfig(nodes=2, port=0), home=home)
    try:
        fleet = fl.Fleet(home)
        bounded = mr.ServingConfig(max_batch_size=64, max_queue_size=2, sources={"max_queue_size": "this test"})
        for node in fleet.nodes:
            fleet.stage_on_node(node, MODEL, 2, slow, spec_path, serving_config=bounded)
        fleet.refresh_admission()
        for node in fleet.nodes:  # a node is not ready while its new version loads: back UP before the clients
            fleet.balancer.wait_status(node, "UP", timeout_s=30)
        url = fleet.url
        headers, body = valid_request(DIMS, batch=8)
        burst_headers, burst_body = valid_request(DIMS, batch=64)
        direct = Counter()
        through = Counter()
        stop = threading.Event()

        def burst() -> None:  # straight to node1's own port, bypassing the balancer
            r = requests.post(f"{fleet.node('node1')['url']}/v2/models/{MODEL}/infer", data=burst_body,
                              headers=burst_headers, timeout=120)
            direct[r.status_code] += 1

        def clients() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        r = session.post(f"{url}/v2/models/{MODEL}/infer", data=body, headers=headers, timeout=60)
                        through[r.status_code] += 1
                    except requests.RequestException as err:
                        through[type(err).__name__] += 1
                    time.sleep(0.02)

        client_threads = [threading.Thread(target=clients) for _ in range(2)]
        for t in client_threads:
            t.start()
        time.sleep(0.5)
        bursts = [threading.Thread(target=burst) for _ in range(40)]
        for t in bursts:
            t.start()
        for t in bursts:
            t.join(180)
        stop.set()
        for t in client_threads:
            t.join(60)
        retried = fleet.balancer.servers()["node1"]["retries"]
        print(f"\nburst straight to node1: {dict(direct)}; clients through the balancer: {dict(through)}; "
              f"HAProxy retries on node1: {retried}")
        assert direct[503] > 0 and direct[200] > 0  # the bound refused some and served the rest
        assert set(through) == {200} and through[200] > 10, through  # the balancer's clients lost nothing
        assert retried > 0  # ... because the 503s of node1 were sent to node0
    finally:
        fl.down(home=home)
