"""A TorchScript model with fused embedding bags (a tiny synthetic RMC, int8 rowwise tables) served by a real fleet
behind HAProxy: the balancer admits its jagged requests (dense [B, Dd], indices [N], lengths [B, T]) from the
config the nodes serve, the scores through the balancer equal the in-process TorchScript session's, a request
that cannot be valid gets a 4xx from HAProxy (or, for what only the model can see, a 400 from the node) and no
node dies, the model-repository API stays unreachable, and a node added to the running fleet serves the same
file."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
import requests

from recforge.contracts.headers import NODE_HEADER
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models.synthetic import SyntheticDLRM, synthetic_inputs
from recforge.models.synthetic_fused import TorchScriptSession, fused_variant, save_torchscript
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb
from tests.inference.triton.test_torchscript_serving import OUTPUT, TINY, beyond_own_table

MODEL = "rmc_tiny_int8"

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.integration, pytest.mark.triton,
              pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")]


def torchscript_source(folder):
    path = save_torchscript(fused_variant(SyntheticDLRM(TINY, seed=0), "int8_tables"), folder / "tiny.int8.pt")
    return fl.explicit_source(path, None, model=MODEL, version=1), path


def jagged_body(feed: dict[str, np.ndarray], **shapes: list[int]) -> bytes:
    """A KServe v2 JSON request of the jagged contract; ``shapes`` overrides an input's declared shape."""
    inputs = []
    for name, datatype in (("dense", "FP32"), ("indices", "INT64"), ("lengths", "INT64")):
        array = feed[name]
        inputs.append({"name": name, "datatype": datatype, "shape": shapes.get(name, list(array.shape)),
                       "data": array.reshape(-1).tolist()})
    return json.dumps({"inputs": inputs}).encode()


def post(url: str, body: bytes) -> tuple[int, str, str]:
    """(status, body text, the node that answered or "balancer")."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", f"/v2/models/{MODEL}/infer", body=body,
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, answer.read().decode(errors="replace"), answer.getheader(NODE_HEADER) or "balancer"
    finally:
        connection.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchscript_fleet")
    source, path = torchscript_source(folder)
    home = folder / "home"
    state = fl.up(source, fl.FleetConfig(nodes=1, port=0, check_inter_ms=200), home=home)
    try:
        yield state, home, TorchScriptSession(path, TINY)
    finally:
        fl.down(home=home)


def test_the_balancer_admits_the_jagged_contract_read_from_the_served_config(fleet):
    state, home, _ = fleet
    limits = lb.read_limits(fl.fleet_dir(home) / "node0" / "repo" / MODEL / "config.pbtxt")
    assert [(i.name, i.datatype, i.dims, i.leading) for i in limits.inputs] == [
        ("dense", "FP32", (TINY.dense_features,), lb.admission.ITEMS), ("indices", "INT64", (), lb.admission.IDS),
        ("lengths", "INT64", (TINY.num_tables,), lb.admission.ITEMS)]
    assert limits.max_batch_size == mr.ServingConfig().max_batch_size
    assert limits.max_ids == mr.max_ids_per_request(TINY, limits.max_batch_size)
    assert limits.max_body_bytes == (limits.max_batch_size * (TINY.dense_features + TINY.num_tables)
                                     + limits.max_ids) * 32 + 65536
    entry = fl.read_state(home)["nodes"]["node0"]["models"][MODEL]
    assert entry["model_format"] == "torchscript" and len(entry["model_sha256"]) == 64


def test_scores_through_the_balancer_equal_the_in_process_session(fleet):
    state, _, session = fleet
    for batch, seed in ((1, 1), (16, 2), (32, 3), (7, 4)):
        feed = synthetic_inputs(TINY, batch, seed=seed)
        out = tr.infer(state["url"], MODEL, feed)[OUTPUT]
        np.testing.assert_allclose(out, session.run(feed), rtol=1e-5, atol=1e-6)
    status, text, node = post(state["url"], jagged_body(synthetic_inputs(TINY, 2, seed=5)))
    assert (status, node) == (200, "node0"), text
    empty = {"dense": np.zeros((1, TINY.dense_features), np.float32), "indices": np.zeros(0, np.int64),
             "lengths": np.zeros((1, TINY.num_tables), np.int64)}  # every bag empty: admitted, answered
    assert post(state["url"], jagged_body(empty))[0] == 200


def bad_requests(limits: lb.AdmissionLimits) -> dict[str, tuple[bytes, str, str]]:
    """kind -> (body, who answers: "balancer" or "node", a phrase of the answer)."""
    feed = synthetic_inputs(TINY, 4, seed=4)
    too_many_items = synthetic_inputs(TINY, limits.max_batch_size + 1, seed=5)
    ids = int(feed["indices"].shape[0])
    return {
        "too many items": (jagged_body(too_many_items), "balancer", "max_items_per_request"),
        "too many ids": (jagged_body(feed, indices=[limits.max_ids + 1]), "balancer", "max_ids_per_request"),
        "items differ": (jagged_body({**feed, "dense": feed["dense"][:2]}), "balancer", "same first dimension"),
        "absurd dense dim": (jagged_body(feed, dense=[1, 10**12]), "balancer", "must have shape"),
        "wrong rank": (jagged_body(feed, indices=[ids, 1]), "balancer", "dimensions"),
        "no items": (jagged_body(feed, dense=[0, TINY.dense_features]), "balancer", "from 1 to"),
        "wrong datatype": (jagged_body(feed).replace(b'"INT64"', b'"INT32"', 1), "balancer", "datatype INT64"),
        "id beyond its table": (jagged_body(beyond_own_table(feed)), "node", "embedding table 'tiny.table1'"),
        "lengths do not add up": (jagged_body({**feed, "indices": feed["indices"][:-1]}), "node", "lengths add up"),
    }


def test_a_request_that_cannot_be_valid_gets_a_4xx_and_no_node_dies(fleet):
    state, home, _ = fleet
    limits = lb.read_limits(fl.fleet_dir(home) / "node0" / "repo" / MODEL / "config.pbtxt")
    outcome = {kind: post(state["url"], body) for kind, (body, _, _) in bad_requests(limits).items()}
    for kind, (_, who, phrase) in bad_requests(limits).items():
        status, text, answered_by = outcome[kind]
        assert status == 400 and phrase in text, (kind, status, text[:300])
        assert (answered_by == "balancer") == (who == "balancer"), (kind, answered_by, text[:300])
    for path in ("/v2/repository/index", f"/v2/repository/models/{MODEL}/unload"):
        assert requests.post(f"{state['url']}{path}", timeout=5).status_code == 403, path
    for node in fl.read_state(home)["nodes"].values():
        assert fl.process_alive(node["pid"]) and tr.model_ready(node["url"], MODEL, 1)
    assert post(state["url"], jagged_body(synthetic_inputs(TINY, 3, seed=9)))[0] == 200


def test_a_node_added_to_the_running_fleet_serves_the_same_file(fleet):
    state, home, session = fleet
    added = fl.Fleet(home).add_node()
    try:
        assert added["status"] == "done", added
        node = fl.read_state(home)["nodes"][added["node"]]
        same = ("version", "model_format", "model_sha256")
        assert [node["models"][MODEL][k] for k in same] == \
            [fl.read_state(home)["nodes"]["node0"]["models"][MODEL][k] for k in same]
        assert node["models"][MODEL]["copied_from"] == "node0"
        feed = synthetic_inputs(TINY, 5, seed=11)
        np.testing.assert_allclose(tr.infer(node["url"], MODEL, feed)[OUTPUT], session.run(feed), rtol=1e-5,
                                   atol=1e-6)
        answered = set()
        for seed in range(6):  # round robin through the balancer: both nodes answer
            status, text, by = post(state["url"], jagged_body(synthetic_inputs(TINY, 2, seed=seed)))
            assert status == 200, text
            answered.add(by)
        assert answered == {"node0", added["node"]}
    finally:
        fl.Fleet(home).remove_node(added["node"])
