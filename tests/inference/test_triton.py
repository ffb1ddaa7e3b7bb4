"""recforge.inference.triton against a real tritonserver (nvidia-pytriton wheel, python backend) serving a tiny
exported model: outputs equal onnxruntime's, dynamic batches are split back per request, malformed requests get a
4xx and the server keeps serving, and a model whose file does not match its config's SHA-256 is refused at load."""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
import onnxruntime as ort
import pytest

from recforge.contracts.features import example_spec
from recforge.core.errors import ConfigError
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import example_inputs, export_onnx

pytestmark = pytest.mark.triton
SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
BATCH_OF_8 = mr.ServingConfig(max_batch_size=8, preferred_batch_size=(8,), max_queue_delay_microseconds=10_000_000,
                              warmup_batch_sizes=(1, 8))


def ports() -> dict:
    from recforge.core.ports import free_ports

    http, grpc, metrics = free_ports(3)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}


def feed(n: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in example_inputs(SPEC, n, seed).items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, onnx path, repo): models "tiny" (plain), "batched" (waits for batches of exactly 8 requests) and
    "tampered" (model.onnx replaced after the config was written) in one repository; the first two loaded."""
    folder = tmp_path_factory.mktemp("triton")
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "ncf.onnx")
    other = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "other.onnx")  # other random weights
    repo = folder / "repo"
    mr.write_model_repository(repo, model_name="tiny", onnx_path=onnx_path, spec=SPEC,
                              serving_config=mr.ServingConfig(max_batch_size=16, max_queue_delay_microseconds=100))
    mr.write_model_repository(repo, model_name="batched", onnx_path=onnx_path, spec=SPEC, serving_config=BATCH_OF_8)
    tampered = mr.write_model_repository(repo, model_name="tampered", onnx_path=onnx_path, spec=SPEC,
                                         serving_config=mr.ServingConfig())
    (tampered / "1" / "model.onnx").write_bytes(other.read_bytes())
    server = tr.TritonServer(repo, **ports(), log_path=folder / "server.log", load_models=["tiny", "batched"])
    with server:
        yield server, onnx_path, repo
    assert not server.alive()


def reference(onnx_path, inputs):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["probability"], inputs)[0]


def test_outputs_match_onnxruntime(served):
    server, onnx_path, _ = served
    inputs = feed(16, seed=1)
    out = tr.infer(server.url, "tiny", inputs)
    assert out["probability"].shape == (16, 1) and out["probability"].dtype == np.float32
    np.testing.assert_allclose(out["probability"][:, 0], reference(onnx_path, inputs), rtol=1e-5, atol=1e-6)
    assert server.model_ready("tiny") and server.model_ready("tiny", 1) and not server.model_ready("tampered")
    config = tr.model_config(server.url, "tiny")
    assert config["max_batch_size"] == 16 and config["backend"] == "python"


def test_a_dynamic_batch_is_one_run_split_back_per_request(served):
    server, onnx_path, _ = served
    before = model_stats(server, "batched")
    inputs = [feed(1, seed=10 + i) for i in range(8)]
    inputs[3] = {**inputs[3], "sparse": inputs[3]["sparse"] + 1000}  # an id outside its vocabulary
    results: dict[int, object] = {}

    def send(i):
        try:
            results[i] = tr.infer(server.url, "batched", inputs[i])["probability"]
        except tr.TritonError as err:
            results[i] = err

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = model_stats(server, "batched")
    # preferred_batch_size 8 with a 10 s queue delay: the 8 requests ran as one batch (model.py then re-ran them
    # one by one, so that only the bad one failed)
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["execution_count"] - before["execution_count"] == 1
    assert isinstance(results[3], tr.TritonError) and results[3].status == 400 and "Gather" in str(results[3])
    for i in (0, 1, 2, 4, 5, 6, 7):
        np.testing.assert_allclose(results[i][:, 0], reference(onnx_path, inputs[i]), rtol=1e-5, atol=1e-6)


def model_stats(server, model):
    response = server.http.get(f"{server.url}/v2/models/{model}/stats", timeout=10)
    stats = response.json()["model_stats"][0]
    return {"inference_count": stats["inference_count"], "execution_count": stats["execution_count"]}


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "missing input", "batch too big",
                                  "batch sizes differ", "unknown input", "id out of range"])
def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(served, case):
    server, onnx_path, _ = served
    good = feed(4, seed=2)
    bad = {
        "wrong shape": {**good, "sparse": good["sparse"][:, :3]},
        "wrong dtype": {**good, "dense": good["dense"].astype(np.float64)},
        "missing input": {k: v for k, v in good.items() if k != "history"},
        "batch too big": feed(17, seed=3),
        "batch sizes differ": {**good, "dense": good["dense"][:2]},
        "unknown input": {**good, "bogus": good["dense"]},
        "id out of range": {**good, "sparse": good["sparse"] + 10_000},
    }[case]
    with pytest.raises(tr.TritonError) as err:
        tr.infer(server.url, "tiny", bad)
    assert 400 <= err.value.status < 500, str(err.value)
    assert server.alive() and server.ready()
    np.testing.assert_allclose(tr.infer(server.url, "tiny", good)["probability"][:, 0], reference(onnx_path, good),
                               rtol=1e-5, atol=1e-6)


def test_a_model_whose_file_does_not_match_its_hash_is_refused(served):
    server, _, repo = served
    with pytest.raises(ConfigError, match="tampered/1/model.onnx: SHA-256 .* does not match"):
        mr.verify_model_repository(repo)
    with pytest.raises(tr.TritonError, match="SHA-256 mismatch") as err:
        server.load_model("tampered")
    assert err.value.status == 400
    assert not server.model_ready("tampered") and server.model_ready("tiny")


def test_load_unload_and_reload_with_a_new_config(served):
    server, onnx_path, repo = served
    mr.write_model_repository(repo, model_name="reloaded", onnx_path=onnx_path, spec=SPEC,
                              serving_config=mr.ServingConfig(max_batch_size=4))
    server.load_model("reloaded")
    assert tr.model_config(server.url, "reloaded")["max_batch_size"] == 4
    mr.write_model_repository(repo, model_name="reloaded", onnx_path=onnx_path, spec=SPEC,
                              serving_config=mr.ServingConfig(max_batch_size=8, instance_count=2))
    server.load_model("reloaded")  # re-reads config.pbtxt
    config = tr.model_config(server.url, "reloaded")
    assert config["max_batch_size"] == 8 and config["instance_group"][0]["count"] == 2
    assert tr.infer(server.url, "reloaded", feed(8, seed=4))["probability"].shape == (8, 1)
    server.unload_model("reloaded")
    assert not server.model_ready("reloaded")


def test_loadgen_target_counts_refusals_as_errors(served):
    from recforge.inference.loadgen import QuerySizes, run_open_loop

    server, _, _ = served
    with pytest.raises(ConfigError, match="does not serve inputs of this spec.*HTTP 400.*batch-size must be <= 16"):
        tr.TritonHttpTarget(server.url, "tiny", SPEC, max_batch=32)
    target = tr.TritonHttpTarget(server.url, "tiny", SPEC, max_batch=16, pool=2)
    try:
        ok = run_open_loop(target, 50, n_queries=20, sizes=QuerySizes.fixed(20), sub_batch=16, workers=2)
        assert (ok.completed, ok.errors, ok.mean_items) == (20, 0, 20)
        target._path = target._path.replace("/tiny/", "/no_such_model/")  # every request is now refused
        refused = run_open_loop(target, 50, n_queries=5, sizes=QuerySizes.fixed(20), sub_batch=16, workers=2)
        assert refused.errors == 5 and refused.first_error.startswith("TritonError: HTTP 404: Request for unknown")
    finally:
        target.close()


def test_a_server_that_cannot_start_raises_with_its_log(tmp_path):
    (tmp_path / "repo").mkdir()
    server = tr.TritonServer(tmp_path / "repo", **ports(), log_path=tmp_path / "server.log",
                             extra_args=["--no-such-option"])
    with pytest.raises(tr.TritonError, match="exited with code 1 before it was ready(.|\n)*"
                                             "unrecognized option '--no-such-option'"):
        with server:
            pass
    assert not server.alive()
    with pytest.raises(ConfigError, match="not a folder"):
        tr.TritonServer(tmp_path / "nowhere", **ports(), log_path=tmp_path / "x.log").start()


def test_server_environment_puts_this_python_first():
    env = tr.server_env({"PATH": "/usr/bin", "LD_LIBRARY_PATH": ""})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(__import__("sys").executable)
    assert env["LD_LIBRARY_PATH"] == str(tr.server_libs_dir())
    backends = tr.prepare_backends()
    assert sorted(p.name for p in (backends / "python").iterdir() if p.is_file() and p.name[0] != ".") == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
