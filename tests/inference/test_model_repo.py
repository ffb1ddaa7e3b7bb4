"""recforge.inference.model_repo: config.pbtxt values from a profile document, both flavours, SHA-256 verification."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid

import pytest

from recforge.contracts.features import example_spec
from recforge.core.errors import ConfigError
from recforge.inference import model_repo as mr
from recforge.pipeline.profiling.document import build_profile
from recforge.pipeline.profiling.lbt import LBTEvaluator, Measurement
from recforge.pipeline.profiling.search.hill_climb import HillClimb

RUN_ID = uuid.uuid4().hex
SPEC = dataclasses.replace(example_spec(), genre_slots=3, history_length=5)


def profile_doc(kind: str, best: dict) -> dict:
    """A schema-valid profile whose search picked ``best`` (a closed-form latency model stands in for a server)."""

    def measure(rate, knobs):
        p95 = 5.0 + rate / 100.0
        return Measurement(rate, p95 / 2, p95, p95 * 1.1, rate, 0, int(rate))

    axes = {k: (v,) for k, v in best.items() if k not in ("workers", "threads", "max_batch_size")}
    fixed = {k: v for k, v in best.items() if k in ("workers", "threads", "max_batch_size")}
    evaluator = LBTEvaluator(measure, p95_target_ms=25, start_qps=100, max_qps=1600, tolerance=0.2)
    search = HillClimb(axes, fixed=fixed).search(evaluator)
    return build_profile(
        model_family="wide_deep", variant="pruned50+int8_static", variant_run_id=RUN_ID, onnx_sha256="0" * 64,
        target={"name": kind, "kind": kind, "device": "test CPU", "threads": best.get("threads", 1),
                "workers": best.get("workers", 2)},
        load={"distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
              "sub_batch_policy": {"mode": "searched"}},
        search=search, lbt=evaluator.result_for(search.best_knobs), accuracy={"auc": 0.75, "delta_auc": -0.001},
        latency_vs_batch={1: 0.4, 64: 1.5, 256: 4.0},
    )


TRITON_BEST = {"sub_batch": 64, "preferred_batch": [32, 64], "queue_delay_us": 500, "instances": 2, "threads": 1,
               "workers": 4, "max_batch_size": 256}


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"not really onnx, but the repository only copies and hashes it" * 10)
    return path


def test_serving_config_from_a_cpu_triton_profile_names_its_sources(tmp_path):
    doc = profile_doc("cpu-triton", TRITON_BEST)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    cfg = mr.serving_config_from_profile(path)
    assert (cfg.max_batch_size, cfg.preferred_batch_size, cfg.max_queue_delay_microseconds) == (256, (32, 64), 500)
    assert (cfg.instance_count, cfg.threads_per_instance, cfg.warmup_batch_sizes) == (2, 1, (1, 256))
    lbt = doc["latency_bounded_throughput_qps"]
    for key in ("max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds", "instance_count",
                "threads_per_instance"):
        assert str(path) in cfg.sources[key] and RUN_ID in cfg.sources[key] and f"LBT {lbt:g} qps" in cfg.sources[key]
    assert "search.best_knobs.queue_delay_us=500" in cfg.sources["max_queue_delay_microseconds"]
    assert "256: 4 ms" in cfg.sources["warmup_batch_sizes"]
    # no node-level queue bound: it cut a node's capacity on this Triton build (the reason is in the sources)
    assert cfg.max_queue_size == 0 and "none:" in cfg.sources["max_queue_size"]
    model_dir = mr.write_model_repository(tmp_path / "repo", model_name="m", onnx_path=tmp_path / "profile.json",
                                          spec=SPEC, serving_config=cfg)
    assert "default_queue_policy" not in mr.parse_config_pbtxt(model_dir / "config.pbtxt")["dynamic_batching"]


def test_serving_config_from_a_cpu_onnxruntime_profile_maps_workers_and_sub_batch():
    doc = profile_doc("cpu-onnxruntime", {"sub_batch": 128, "threads": 2, "workers": 3})
    cfg = mr.serving_config_from_profile(doc, source="run-42/profile.json")
    assert (cfg.max_batch_size, cfg.preferred_batch_size, cfg.instance_count, cfg.threads_per_instance) == \
        (128, (), 3, 2)
    assert "search.best_knobs.sub_batch=128" in cfg.sources["max_batch_size"]
    assert "workers=3" in cfg.sources["instance_count"] and "run-42/profile.json" in cfg.sources["instance_count"]
    assert "max_queue_delay_microseconds" not in cfg.sources  # not measured: the config says it is a default
    assert cfg.instance_kind == "KIND_CPU"


@pytest.mark.parametrize(("kind", "instance_kind"), [("gpu-onnxruntime", "KIND_GPU"), ("gpu-triton", "KIND_GPU"),
                                                     ("hybrid-onnxruntime", "KIND_CPU")])
def test_a_gpu_profile_serves_its_instances_on_the_gpu(kind, instance_kind):
    cfg = mr.serving_config_from_profile(profile_doc(kind, {"sub_batch": 256, "threads": 1, "workers": 1}))
    assert cfg.instance_kind == instance_kind and f"target.kind={kind}" in cfg.sources["instance_kind"]


@pytest.mark.parametrize("flavour", ["local", "production"])
def test_both_flavours_carry_the_contract_and_the_measured_values(tmp_path, onnx_file, flavour):
    cfg = mr.serving_config_from_profile(profile_doc("cpu-triton", TRITON_BEST), source="profiles/wd.json")
    model_dir = mr.write_model_repository(tmp_path / "repo", model_name="wide_deep", onnx_path=onnx_file, spec=SPEC,
                                          serving_config=cfg, flavour=flavour, version=3,
                                          provenance={"profile": "profiles/wd.json", "registered": "wd v7"})
    sha = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    text = (model_dir / "config.pbtxt").read_text()
    config = mr.parse_config_pbtxt(model_dir / "config.pbtxt")
    assert config["name"] == "wide_deep" and config["max_batch_size"] == 256
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("sparse", "TYPE_INT64", [6]), ("genres", "TYPE_INT64", [3]), ("history", "TYPE_INT64", [5]),
        ("dense", "TYPE_FP32", [8])]
    (output,) = config["output"]
    assert (output["name"], output["data_type"], output["dims"], output["reshape"]) == \
        ("probability", "TYPE_FP32", [1], {})  # reshape to [] (the model's [B] output)
    assert config["dynamic_batching"] == {"preferred_batch_size": [32, 64], "max_queue_delay_microseconds": 500}
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    params = mr.config_parameters(config)
    assert params == {"onnx_sha256": sha, "intra_op_thread_count": "1", "inter_op_thread_count": "1"}
    assert [w["batch_size"] for w in config["model_warmup"]] == [1, 256]
    warm = config["model_warmup"][1]["inputs"]
    assert warm["history"] == {"data_type": "TYPE_INT64", "dims": [5], "zero_data": True}
    assert warm["dense"] == {"data_type": "TYPE_FP32", "dims": [8], "random_data": True}
    # every measured value says where it came from
    line = next(ln for ln in text.splitlines() if ln.startswith("max_batch_size:"))
    assert "profiles/wd.json" in line and RUN_ID in line
    assert "# provenance registered: wd v7" in text
    assert (model_dir / "3" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    if flavour == "production":
        assert config["platform"] == "onnxruntime_onnx" and "backend" not in config
        assert not (model_dir / "3" / "model.py").exists()
    else:
        assert config["backend"] == "python" and "platform" not in config
        model_py = (model_dir / "3" / "model.py").read_text()
        assert "onnx_sha256" in model_py and "TritonPythonModel" in model_py
        compile(model_py, "model.py", "exec")
    assert mr.read_provenance(model_dir)["onnx_sha256"] == sha
    assert mr.verify_model_repository(tmp_path / "repo") == [
        {"model": "wide_deep", "version": 3, "path": str(model_dir / "3" / "model.onnx"), "sha256": sha}]


def test_verify_refuses_a_model_file_that_does_not_match_its_config(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    model_dir = mr.write_model_repository(repo, model_name="m", onnx_path=onnx_file, spec=SPEC,
                                          serving_config=mr.ServingConfig())
    expected = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    served = model_dir / "1" / "model.onnx"
    served.write_bytes(b"tampered")
    actual = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(ConfigError) as err:
        mr.verify_model_repository(repo)
    assert str(served) in str(err.value) and expected in str(err.value) and actual in str(err.value)


def test_expected_sha256_mismatch_writes_nothing(tmp_path, onnx_file):
    with pytest.raises(ConfigError, match="refusing to write"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", onnx_path=onnx_file, spec=SPEC,
                                  serving_config=mr.ServingConfig(), expected_sha256="ab" * 32)
    assert not (tmp_path / "repo").exists()


def test_verify_reports_missing_hash_and_missing_config(tmp_path, onnx_file):
    repo = tmp_path / "repo"
    model_dir = mr.write_model_repository(repo, model_name="m", onnx_path=onnx_file, spec=SPEC,
                                          serving_config=mr.ServingConfig())
    config = model_dir / "config.pbtxt"
    config.write_text("\n".join(ln for ln in config.read_text().splitlines() if "onnx_sha256" not in ln))
    with pytest.raises(ConfigError, match="no valid onnx_sha256"):
        mr.verify_model_repository(repo)
    config.unlink()
    with pytest.raises(ConfigError, match="config.pbtxt is missing"):
        mr.verify_model_repository(repo)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="preferred_batch_size"):
        mr.ServingConfig(max_batch_size=64, preferred_batch_size=(128,))
    with pytest.raises(ConfigError, match="unknown key"):
        mr.ServingConfig.from_dict({"max_batch": 64})
    assert mr.ServingConfig.from_dict({"preferred_batch_size": [8, 16]}).preferred_batch_size == (8, 16)
    with pytest.raises(ConfigError, match="not a valid Triton model config"):
        mr.parse_config_pbtxt('name: "m"\nmax_batch: 4\n')
    with pytest.raises(ConfigError, match="flavour"):
        mr.render_config_pbtxt(model_name="m", spec=SPEC, serving_config=mr.ServingConfig(), flavour="cloud",
                               onnx_sha256="0" * 64)


def test_dynamic_batching_off_writes_no_dynamic_batching_block(tmp_path, onnx_file):
    """Triton's default serving (the fleet benchmark's baseline): no dynamic_batching block at all, one instance."""
    cfg = mr.ServingConfig(max_batch_size=256, dynamic_batching=False, max_queue_delay_microseconds=0,
                           sources={"dynamic_batching": "Triton's default (fleet benchmark baseline)"})
    model_dir = mr.write_model_repository(tmp_path / "repo", model_name="m", onnx_path=onnx_file, spec=SPEC,
                                          serving_config=cfg)
    text = (model_dir / "config.pbtxt").read_text()
    config = mr.parse_config_pbtxt(model_dir / "config.pbtxt")
    assert "dynamic_batching" not in config and "max_queue_delay" not in text
    assert config["max_batch_size"] == 256 and config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert "# no dynamic_batching: each request runs on its own" in text and "fleet benchmark baseline" in text
    saved = mr.read_provenance(model_dir)["serving_config"]
    assert saved["dynamic_batching"] is False and mr.ServingConfig.from_dict(saved) == cfg
    # the default (and an old provenance without the key) keeps the block
    assert "dynamic_batching" in mr.parse_config_pbtxt(mr.render_config_pbtxt(
        model_name="m", spec=SPEC, serving_config=mr.ServingConfig.from_dict({}), flavour="local",
        onnx_sha256="0" * 64))
    with pytest.raises(ConfigError, match="needs dynamic_batching"):
        mr.ServingConfig(dynamic_batching=False, preferred_batch_size=(8,))
    with pytest.raises(ConfigError, match="dynamic_batching"):
        mr.ServingConfig.from_dict({"dynamic_batching": "no"})

