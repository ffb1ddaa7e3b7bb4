"""Admission at the balancer (recforge.serving.loadbalancer.admission): the limits read from a model's config.pbtxt,
the generated rules, and the regression list of malformed KServe v2 requests sent through a real fleet.

The regression list (tests/serving/malformed.py, 27 kinds) sent straight to one bare tritonserver (2.4x, python
backend, a batching model with max_batch_size 16), as measured before admission existed:

* killed the server (connection closed, process gone: ``std::bad_alloc``): ``absurd_dim`` ([1, 10**12] with one
  value), ``absurd_batch`` ([10**12, 8] with one value);
* answered 500 (a client error): ``shape_mismatch_data``, ``negative_dim``, ``negative_batch``, ``truncated_json``,
  ``unparseable_json``, ``not_an_object``, ``inputs_not_a_list``, ``shape_not_integers``, ``float_dims``;
* no answer (the server waits for the promised body): ``huge_content_length``;
* answered 400: the other 15.

Through the balancer every kind is answered 4xx (by HAProxy, or by the node with a 500 turned into 400) and no node
dies; docs/serving.md has the table."""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
from collections import Counter

import pytest
import tritonclient.http as tritonclient_http

from recforge.contracts.features import example_spec
from recforge.contracts.headers import served_by
from recforge.core.errors import ConfigError
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb
from tests.serving.malformed import JSON, binary_request, body, malformed_requests, request, tensor, valid_request

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
DIMS = {"sparse": SPEC.num_sparse, "genres": SPEC.genre_slots, "history": SPEC.history_length,
        "dense": SPEC.num_dense}
MODEL = "recforge-ncf"
MAX_BATCH = 16


def config_pbtxt(tmp_path, max_batch: int = MAX_BATCH):
    onnx = export_onnx(build_model("ncf", SPEC).eval(), SPEC, tmp_path / "m.onnx")
    (tmp_path / "spec.json").write_text(SPEC.to_json())
    model_dir = mr.write_model_repository(tmp_path / "repo", model_name=MODEL, onnx_path=onnx,
                                          spec=tmp_path / "spec.json",
                                          serving_config=mr.ServingConfig(max_batch_size=max_batch))
    return model_dir / "config.pbtxt"


def test_limits_come_from_the_served_config_pbtxt(tmp_path):
    limits = lb.read_limits(config_pbtxt(tmp_path))
    assert (limits.model, limits.max_batch_size) == (MODEL, MAX_BATCH)
    assert [(i.name, i.datatype, i.dims) for i in limits.inputs] == [
        ("sparse", "INT64", (6,)), ("genres", "INT64", (3,)), ("history", "INT64", (5,)), ("dense", "FP32", (8,))]
    assert limits.max_body_bytes == MAX_BATCH * (6 + 3 + 5 + 8) * 32 + 65536
    with pytest.raises(ConfigError, match="max_batch_size >= 1"):
        lb.limits_from_model_config({"name": "x", "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [2]}]},
                                    "test")
    with pytest.raises(ConfigError, match="variable dims"):
        lb.limits_from_model_config({"name": "x", "max_batch_size": 4,
                                     "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [-1]}]}, "test")


def test_generated_config_admits_with_provenance_and_never_retries_a_request_that_reached_a_node(tmp_path):
    limits = lb.read_limits(config_pbtxt(tmp_path))
    path = lb.write_config(tmp_path / "haproxy.cfg", [lb.BackendNode("node0", 8001)], port=18090,
                           socket_path=tmp_path / "admin.sock", admission=limits)  # haproxy -c accepts it
    lines = [line.strip() for line in path.read_text().splitlines()]
    assert f"# from {tmp_path / 'repo' / MODEL / 'config.pbtxt'}." in lines
    assert any(line.startswith("# Body limit 76800 bytes = max_batch_size 16 x 22 values per row") for line in lines)
    assert any(line.startswith("tune.bufsize 143360") for line in lines)  # the largest admitted body fits
    assert any("return status 413" in line and "req.hdr_val(content-length) gt 76800" in line for line in lines)
    assert any("var(txn.batch0) -m int 1:16" in line for line in lines)
    # the admission rules come before the route allowlist's first allow (an allow ends the rule list)
    first_allow = next(i for i, line in enumerate(lines) if line.startswith("http-request allow"))
    assert max(i for i, line in enumerate(lines) if "http-request return" in line) < first_allow
    assert "retry-on conn-failure 503" in lines and not any("empty-response" in line for line in lines)
    text = lb.render_config([lb.BackendNode("node0", 8001)], port=18090, socket_path=tmp_path / "admin.sock")
    assert "json_query" not in text and "tune.bufsize 131072" in text  # no model: no admission
    assert "req.body,sha2(256),hex,lower" in text  # the request log's body hash is there with or without it
    # json_query reads one copy of the JSON: a binary request's header, never the tensor bytes after it
    assert not any("req.body,json_query" in line for line in lines)
    assert "http-request set-var(txn.json) req.body,bytes(0,4096) if infer METH_POST binary" in lines


def jagged_config(max_items: int = 32, max_ids: int = 1152) -> dict:
    """The parsed config.pbtxt of a jagged model (a TorchScript model with fused bags: model_repo writes it)."""
    parameters = {"max_items_per_request": {"string_value": str(max_items)},
                  "max_ids_per_request": {"string_value": str(max_ids)}}
    return {"name": "rmc", "max_batch_size": 0, "parameters": parameters, "input": [
        {"name": "dense", "data_type": "TYPE_FP32", "dims": [-1, 13]},
        {"name": "indices", "data_type": "TYPE_INT64", "dims": [-1]},
        {"name": "lengths", "data_type": "TYPE_INT64", "dims": [-1, 3]}]}


def test_a_jagged_model_is_admitted_by_items_and_ids(tmp_path):
    """dense and lengths are item-major (B in [1, 32], the same B), indices the id list (N in [0, 1152]); the body
    limit counts both; a jagged config without its limits, or with a fixed first dim, is refused."""
    limits = lb.limits_from_model_config(jagged_config(), "test")
    assert [(i.name, i.dims, i.leading) for i in limits.inputs] == [
        ("dense", (13,), "items"), ("indices", (), "ids"), ("lengths", (3,), "items")]
    assert (limits.max_batch_size, limits.max_ids) == (32, 1152)
    assert limits.max_body_bytes == (32 * (13 + 3) + 1152) * 32 + 65536
    assert "at most 32 items (B) and 1152 ids (N)" in limits.describe()
    path = lb.write_config(tmp_path / "haproxy.cfg", [lb.BackendNode("node0", 8001)], port=18090,
                           socket_path=tmp_path / "admin.sock", admission=limits)  # haproxy -c accepts it
    text = path.read_text()
    assert "{ var(txn.name0) -m str indices } !{ var(txn.batch0) -m int 0:1152 }" in text
    assert "{ var(txn.name0) -m str dense } !{ var(txn.batch0) -m int 1:32 }" in text
    assert "set-var(txn.items_dim) var(txn.batch1) if infer METH_POST { var(txn.name1) -m str dense lengths }" \
        in text
    assert "txn.ids_dim" not in text  # one id list: nothing to agree with
    without = {**jagged_config(), "parameters": {}}
    with pytest.raises(ConfigError, match="max_batch_size >= 1\\) or a jagged one"):
        lb.limits_from_model_config(without, "test")
    fixed = jagged_config()
    fixed["input"][0]["dims"] = [4, 13]
    with pytest.raises(ConfigError, match="start with a variable dimension"):
        lb.limits_from_model_config(fixed, "test")


# ---------------------------------------------------------------------------------------------- real fleet

triton_ok, triton_why = tr.check_installation()
needs_triton = pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")


def post(url: str, headers: dict[str, str], body: bytes, timeout_s: float = 15) -> tuple[int | str, str, str]:
    """POST body to the model's infer route on a fresh connection, with the headers as given (a Content-Length
    there is sent as is); (status or "no answer", body text, the node that answered or "balancer")."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        connection.putrequest("POST", f"/v2/models/{MODEL}/infer", skip_accept_encoding=True)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            connection.putheader(key, value)
        connection.endheaders()
        try:
            connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the whole body was sent: read the answer
        response = connection.getresponse()
        return (response.status, response.read().decode(errors="replace"),
                served_by(response.headers) or "balancer")
    except (OSError, http.client.HTTPException) as err:
        return "no answer", repr(err), ""
    finally:
        connection.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("admission")
    onnx = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "m.onnx")
    spec_path = folder / "spec.json"
    spec_path.write_text(SPEC.to_json())
    source = fl.explicit_source(onnx, spec_path, model=MODEL)
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=folder / "home")
    try:
        yield {"home": folder / "home", "state": state}
    finally:
        fl.down(home=folder / "home")


@pytest.mark.triton
@needs_triton
def test_malformed_requests_get_4xx_and_no_node_dies(fleet):
    state = fleet["state"]
    handle = fl.Fleet(home=fleet["home"])
    limits = lb.read_limits(fl.fleet_dir(fleet["home"]) / "node0" / "repo" / MODEL / "config.pbtxt")
    assert post(state["url"], *valid_request(DIMS))[0] == 200
    outcome = {kind: post(state["url"], headers, body)
               for kind, headers, body in malformed_requests(DIMS, limits.max_batch_size, limits.max_body_bytes)}
    print("\n".join(f"{kind}: {status} from {by}: {text[:150]}" for kind, (status, text, by) in outcome.items()))
    assert all(isinstance(s, int) and 400 <= s < 500 for s, _, _ in outcome.values()), outcome
    assert all(json.loads(text)["error"] for _, text, _ in outcome.values())  # a JSON error naming the problem
    for kind in ("absurd_dim", "absurd_batch"):  # the ones that killed a bare node: answered by HAProxy
        assert outcome[kind][2] == "balancer", outcome[kind]
    assert outcome["huge_content_length"][0] == 413 and outcome["body_over_limit"][0] == 413
    # what HAProxy cannot see reaches a node; Triton's 500 for a request it cannot parse becomes 400, its message kept
    status, text, by = outcome["shape_not_integers"]
    assert (status, by in state["nodes"]) == (400, True) and "Unable to parse 'shape'" in text, text
    time.sleep(1.0)  # two health checks
    for name, node in state["nodes"].items():
        assert fl.process_alive(node["pid"]), f"{name} died"
        assert tr.model_ready(node["url"], MODEL, 1), f"{name} does not serve"
    assert {s["status"] for s in handle.balancer.servers().values()} == {"UP"}
    by_status = Counter(status for status, _, _ in outcome.values())
    by_answerer = Counter("balancer" if by == "balancer" else "node" for _, _, by in outcome.values())
    print(f"regression list: {len(outcome)} kinds, statuses {dict(by_status)}, answered by {dict(by_answerer)}, "
          f"nodes alive {sum(fl.process_alive(n['pid']) for n in state['nodes'].values())}/{len(state['nodes'])}")
    answered = [post(state["url"], *valid_request(DIMS, batch=b))[0] for b in (1, limits.max_batch_size)]
    assert answered == [200, 200]
    # valid binary-data requests pass, and so does the longest JSON a client writes: max_batch_size rows of
    # negative floats with 17 significant digits and an exponent
    assert post(state["url"], *binary_request(DIMS, limits.max_batch_size))[0] == 200
    rows = limits.max_batch_size
    dense = tensor("dense", rows, DIMS, data=[-1.2345678901234567e-05] * rows * DIMS["dense"])
    longest = body(request(rows, DIMS, dense=dense))
    assert post(state["url"], JSON, longest)[0] == 200, len(longest)


@pytest.mark.triton
@needs_triton
def test_model_config_and_metadata_are_readable_through_the_balancer(fleet):
    import requests

    url = fleet["state"]["url"]
    config = requests.get(f"{url}/v2/models/{MODEL}/config", timeout=5)
    assert config.status_code == 200 and config.json()["max_batch_size"] >= 1
    assert requests.get(f"{url}/v2/models/{MODEL}/versions/1/config", timeout=5).status_code == 200
    metadata = requests.get(f"{url}/v2/models/{MODEL}", timeout=5).json()
    assert {i["name"] for i in metadata["inputs"]} == set(DIMS)
    client = tritonclient_http.InferenceServerClient(url.removeprefix("http://"))  # the Triton client SDK
    assert client.get_model_config(MODEL)["name"] == MODEL
    assert {i["name"] for i in client.get_model_metadata(MODEL, "1")["inputs"]} == set(DIMS)
    client.close()
    for method, path in (("POST", f"/v2/models/{MODEL}/config"), ("GET", f"/v2/models/{MODEL}/stats"),
                         ("POST", "/v2/repository/index"), ("POST", f"/v2/repository/models/{MODEL}/unload"),
                         ("GET", "/v2/logging"), ("GET", "/v2/trace/setting"), ("GET", "/v2/systemsharedmemory/status"),
                         ("GET", "/v2/cudasharedmemory/status")):
        assert requests.request(method, url + path, timeout=5).status_code == 403, (method, path)
