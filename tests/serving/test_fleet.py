"""recforge.serving.fleet with real tritonserver nodes behind a real haproxy: up, inference through the balancer, model
control refused there, staging a version on one node through its own port (and back), Triton metrics per node,
a node killed under open-loop load, down leaving no process; plus the parts that need no server."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import requests

from recforge.contracts import tags as T
from recforge.contracts.features import example_spec
from recforge.core.errors import ConfigError
from recforge.core.ports import free_ports
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import example_inputs, export_onnx
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
MODEL = "recforge-ncf"

METRICS_TEXT = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="recforge-ncf",version="2"} 40
nv_inference_request_failure{model="recforge-ncf",version="2",reason="BACKEND"} 3
nv_inference_count{model="recforge-ncf",version="2"} 320
nv_inference_exec_count{model="recforge-ncf",version="2"} 10
nv_inference_queue_duration_us{model="recforge-ncf",version="2"} 2000
nv_inference_compute_infer_duration_us{model="recforge-ncf",version="2"} 80000
nv_inference_request_success{model="other",version="1"} 0
nv_cpu_utilization 0.5
"""


# ---------------------------------------------------------------------------------------------- no server needed


def test_triton_metrics_are_parsed_per_model_and_version():
    metrics = fl.parse_triton_metrics(METRICS_TEXT)
    figures = metrics[MODEL]["2"]
    assert figures["request_success"] == 40 and figures["request_failure"] == 3 and figures["count"] == 320
    assert figures["avg_queue_us"] == 50 and figures["avg_compute_infer_us"] == 2000
    assert metrics["other"]["1"] == {"request_success": 0.0}  # no averages without their durations
    assert "nv_cpu_utilization" not in json.dumps(metrics)


def test_config_and_sources_refuse_bad_input_on_one_line(tmp_path, monkeypatch):
    for bad in ({"nodes": 0}, {"nodes": 17}, {"port": 70000}, {"target": "a b"}, {"unknown": 1},
                {"target": "cpu"}, {"target": "gpu-onnxruntime"}):
        with pytest.raises(ConfigError):
            fl.FleetConfig.from_dict(bad)
    # every CPU target the registry can propose a champion for is a fleet target (make fleet-up FLEET_TARGET=...)
    assert fl.fleet_targets() == ["cpu-onnxruntime", "cpu-triton"]
    for target in fl.fleet_targets():
        assert fl.FleetConfig.from_dict({"target": target}).target == target
    monkeypatch.setenv("RECFORGE_WORK_DIR", str(tmp_path / "work"))
    with pytest.raises(ConfigError, match=r"no trained dlrm model under .*; run `make nightly` \(or `make run`\)"):
        fl.nightly_source("dlrm")
    day = tmp_path / "work" / "1998-04-22" / "models" / "dlrm"
    day.mkdir(parents=True)
    (day / "model.onnx").write_bytes(b"x")
    (day / "model.json").write_text(json.dumps({"run_id": "abc"}))
    source = fl.nightly_source("dlrm")
    assert (source.model, source.version, source.onnx_path) == ("recforge-dlrm", 1, str(day / "model.onnx"))
    assert source.origin == "nightly 1998-04-22 dlrm/fp32, training run abc"
    with pytest.raises(ConfigError, match="--model-file .* is not a file"):
        fl.explicit_source(tmp_path / "missing.onnx", day / "model.json")
    with pytest.raises(ConfigError, match="no fleet is running"):
        fl.Fleet(home=tmp_path)
    assert fl.down(home=tmp_path)["stopped"] == []  # idempotent on nothing
    assert fl.status(home=tmp_path)["status"] == "down"


# ---------------------------------------------------------------------------------------------- real fleet

triton_ok, triton_why = tr.check_installation()
needs_triton = pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")


def feed(n: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in example_inputs(SPEC, n, seed).items()}


def reference(onnx_path, inputs):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["probability"], inputs)[0]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A 2-node fleet of a tiny NCF model (home in a temporary folder), stopped at the end."""
    folder = tmp_path_factory.mktemp("fleet")
    home = folder / "home"
    onnx_v1 = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "v1.onnx")
    onnx_v2 = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "v2.onnx")  # other random weights
    spec_path = folder / "spec.json"
    spec_path.write_text(SPEC.to_json())
    source = fl.explicit_source(onnx_v1, spec_path, model=MODEL, version=1)
    started = time.monotonic()
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=home)
    print(f"fleet up (2 nodes + haproxy): {time.monotonic() - started:.1f} s")
    try:
        yield {"home": home, "state": state, "v1": onnx_v1, "v2": onnx_v2, "spec": spec_path}
    finally:
        fl.down(home=home)


@pytest.mark.triton
@needs_triton
def test_up_serves_through_the_balancer_and_refuses_model_control_there(fleet):
    state, home = fleet["state"], fleet["home"]
    assert state["status"] == "up" and set(state["nodes"]) == {"node0", "node1"}
    assert state["url"].startswith("http://127.0.0.1:")
    for node in state["nodes"].values():
        assert node["url"].startswith("http://127.0.0.1:") and fl.process_alive(node["pid"])
        assert node["models"] == {MODEL: {**node["models"][MODEL], "version": 1}}
        assert node["weight"] == lb.EQUAL_WEIGHT  # no profile: equal weights
    on_disk = json.loads((fl.fleet_dir(home) / "state.json").read_text())
    assert on_disk["nodes"]["node1"]["grpc_port"] == state["nodes"]["node1"]["grpc_port"]
    inputs = feed(8, seed=1)
    out = tr.infer(state["url"], MODEL, inputs)
    np.testing.assert_allclose(out["probability"][:, 0], reference(fleet["v1"], inputs), rtol=1e-5, atol=1e-6)
    # each answer through the balancer names its node (the canary gate attributes queries with it); a node's own
    # port names none
    through = tr.TritonHttpTarget(state["url"], MODEL, fleet["spec"], max_batch=8, pool=2)
    direct = tr.TritonHttpTarget(state["nodes"]["node0"]["url"], MODEL, fleet["spec"], max_batch=8, pool=2)
    try:
        assert {through.infer(4) for _ in range(8)} == {"node0", "node1"} and direct.infer(4) is None
    finally:
        through.close()
        direct.close()
    # model control and statistics never pass the balancer; they do work on a node's own port. The model's config
    # is read-only and passes (perf_analyzer and the client SDK read it first)
    assert requests.post(state["url"] + "/v2/repository/index", json={}, timeout=5).status_code == 403
    assert requests.post(f"{state['url']}/v2/repository/models/{MODEL}/unload", json={}, timeout=5).status_code == 403
    assert requests.get(f"{state['url']}/v2/models/{MODEL}/config", timeout=5).json()["name"] == MODEL
    assert requests.get(f"{state['url']}/v2/models/{MODEL}/stats", timeout=5).status_code == 403
    assert requests.get(state["url"] + "/metrics", timeout=5).status_code == 403
    assert requests.get(state["url"] + f"/v2/models/{MODEL}/ready", timeout=5).status_code == 200
    assert {m["name"] for m in tr.repository_index(state["nodes"]["node0"]["url"])} == {MODEL}
    view = fl.status(home=home)
    assert view["status"] == "up" and all(n["balancer"]["status"] == "UP" for n in view["nodes"].values())
    with pytest.raises(ConfigError, match="already running"):
        fl.up(fl.explicit_source(fleet["v1"], fleet["spec"], model=MODEL), fl.FleetConfig(port=0), home=home)


@pytest.mark.triton
@needs_triton
def test_stage_a_version_on_one_node_and_back_with_metrics(fleet):
    handle = fl.Fleet(home=fleet["home"])
    node1 = handle.node("node1")["url"]
    inputs = feed(4, seed=2)
    with pytest.raises(ConfigError, match="SHA-256"):
        handle.stage_on_node("node1", MODEL, 2, fleet["v2"], fleet["spec"], expected_sha256="0" * 64)
    assert tr.model_ready(node1, MODEL, 1) and not tr.model_ready(node1, MODEL, 2)  # nothing changed

    handle.drain("node1")
    assert handle.balancer.servers()["node1"]["status"] == "DRAIN"
    entry = handle.stage_on_node("node1", MODEL, 2, fleet["v2"], fleet["spec"])
    assert entry["version"] == 2 and tr.model_ready(node1, MODEL, 2) and not tr.model_ready(node1, MODEL, 1)
    np.testing.assert_allclose(tr.infer(node1, MODEL, inputs)["probability"][:, 0], reference(fleet["v2"], inputs),
                               rtol=1e-5, atol=1e-6)
    # while node1 drains, the balancer sends everything to node0 (still v1)
    for _ in range(5):
        np.testing.assert_allclose(tr.infer(handle.url, MODEL, inputs)["probability"][:, 0],
                                   reference(fleet["v1"], inputs), rtol=1e-5, atol=1e-6)
    assert fl.read_state(fleet["home"])["nodes"]["node1"]["models"][MODEL]["version"] == 2
    metrics = handle.node_metrics("node1")
    assert metrics[MODEL]["2"]["request_success"] >= 1 and metrics[MODEL]["2"]["request_failure"] == 0
    assert "queue_duration_us" in metrics[MODEL]["2"] and "compute_infer_duration_us" in metrics[MODEL]["2"]

    handle.stage_on_node("node1", MODEL, 1, fleet["v1"], fleet["spec"])  # back to v1: a lower version loads too
    assert tr.model_ready(node1, MODEL, 1) and not tr.model_ready(node1, MODEL, 2)
    handle.ready("node1")
    handle.set_weight("node1", 50)
    handle.balancer.wait_status("node1", "UP", timeout_s=10)
    servers = handle.balancer.servers()
    assert servers["node1"]["weight"] == 50 and fl.read_state(fleet["home"])["nodes"]["node1"]["weight"] == 50
    handle.set_weight("node1", lb.EQUAL_WEIGHT)


@pytest.mark.triton
@needs_triton
def test_a_node_killed_under_load_loses_at_most_its_in_flight_requests(fleet):
    from recforge.inference.loadgen import QuerySizes, run_open_loop

    handle = fl.Fleet(home=fleet["home"])
    target = tr.TritonHttpTarget(handle.url, MODEL, SPEC, max_batch=16, pool=8)
    victim = handle.node("node1")
    before = handle.balancer.servers()["node1"]["total_sessions"]

    def kill() -> None:
        os.killpg(victim["pid"], signal.SIGKILL)  # the server and its python-backend stub

    timer = threading.Timer(1.5, kill)
    timer.start()
    try:
        result = run_open_loop(target, 40.0, duration_s=4.0, sizes=QuerySizes.fixed(16), sub_batch=16, workers=4,
                               seed=3, drain_timeout_s=10)
    finally:
        timer.cancel()
        target.close()
    servers = handle.balancer.servers()
    print(f"node killed under load: {result.errors} of {result.queries} queries lost "
          f"(first error: {result.first_error}); node1 served {servers['node1']['total_sessions'] - before} "
          f"before it died, redispatched {servers['node1']['redispatches']}")
    assert servers["node1"]["total_sessions"] > before  # the victim was serving when it died
    assert result.errors <= 4, result.first_error  # at most the in-flight ones (workers = 4)
    assert result.completed >= result.queries - 4
    handle.balancer.wait_status("node1", "DOWN", timeout_s=5)
    assert tr.infer(handle.url, MODEL, feed(2, seed=5))["probability"].shape == (2, 1)
    assert fl.status(home=fleet["home"])["status"] == "degraded"


@pytest.mark.triton
@needs_triton
def test_down_stops_everything_including_leftovers_and_is_idempotent(fleet):
    home = fleet["home"]
    root = fl.fleet_dir(home)
    assert fl.fleet_processes(root)
    # a leftover the state file does not know (an haproxy of a crashed `up`): down finds it by its folder
    stray_dir = root / "haproxy-stray"
    port = free_ports(1)[0]
    config = lb.write_config(stray_dir / "haproxy.cfg", [lb.BackendNode("node0", 1)], port=port,
                             socket_path=stray_dir / "admin.sock")
    stray = lb.HAProxy(config, stray_dir / "admin.sock", stray_dir / "haproxy.log", port).start()
    result = fl.down(home=home)
    assert any(s.startswith("haproxy") for s in result["stopped"])
    assert any(s.startswith("node0") for s in result["stopped"])
    assert any(s.startswith("leftover haproxy") for s in result["stopped"]), result
    assert fl.fleet_processes(root) == [] and not stray.running()
    assert not (root / "state.json").exists() and fl.status(home=home)["status"] == "down"
    assert fl.down(home=home)["stopped"] == []


def test_registry_source_fetches_the_champion_with_its_spec(mlflow_server, tmp_path, monkeypatch):
    """The --from-registry hook against a real MLflow server: the champion-<target> version's ONNX file (SHA-256
    checked), and the feature spec of its training run (the variant run's parent)."""
    import hashlib

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, tmp_path / "model.int8_static.onnx")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(SPEC.to_json())
    experiment = client.create_experiment(f"fleet-registry-{time.time_ns()}")
    with mlflow.start_run(experiment_id=experiment) as training:
        mlflow.log_artifact(str(spec_path), "model_files")
        with mlflow.start_run(experiment_id=experiment, nested=True) as variant:
            mlflow.log_artifact(str(onnx_path), "onnx")
    name = f"recforge-fleettest-{time.time_ns()}"
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{variant.info.run_id}/onnx/{onnx_path.name}",
                                          run_id=variant.info.run_id,
                                          tags={T.ONNX_SHA256: hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                                                T.FAMILY: "ncf", T.VARIANT: "int8_static"})
    with pytest.raises(ConfigError, match="no alias champion-cpu-onnxruntime"):
        fl.registry_source(name, "cpu-onnxruntime", tmp_path / "dl0")
    client.set_registered_model_alias(name, "champion-cpu-onnxruntime", version.version)
    source = fl.registry_source(name, "cpu-onnxruntime", tmp_path / "dl")
    assert (source.model, source.version) == (name, int(version.version))
    assert open(source.onnx_path, "rb").read() == onnx_path.read_bytes()
    assert json.loads(open(source.spec_path).read()) == json.loads(SPEC.to_json())
    assert training.info.run_id and source.expected_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert source.origin.startswith(f"registry {name}@champion-cpu-onnxruntime v{version.version} (ncf/int8_static")
