"""recforge.pipeline.profiling.targets: hardware targets, one small real profiling run on onnxruntime CPU, failure isolation, config."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from recforge.contracts.features import example_spec
from recforge.contracts.profile import validate_profile
from recforge.core.errors import ConfigError
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.pipeline.profiling import targets as prof

RUN_ID = uuid.uuid4().hex
ACCURACY = {"auc": 0.75, "delta_auc": -0.001}
TINY = {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400, "max_steps": 4, "tolerance": 0.5,
        "min_sub_batch": 64, "max_sub_batch": 128, "threads": [1], "workers": 2, "max_evaluations": 4,
        "latency_batches": [1, 16], "latency_repeats": 3}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = example_spec()
    folder = tmp_path_factory.mktemp("profile")
    path = export_onnx(build_model("ncf", spec).eval(), spec, folder / "ncf.onnx")
    spec_path = folder / "spec.json"
    spec_path.write_text(spec.to_json())
    return path, spec, spec_path


class Broken:
    name, kind = "broken", "cpu-onnxruntime"

    def available(self):
        return True, ""

    def describe(self):
        return "nowhere"

    def make_load_target(self, onnx_path, spec, knobs):
        raise RuntimeError("cannot open the device\nsecond line")


class Absent(Broken):
    name = "absent"

    def available(self):
        return False, "not plugged in"


def test_profile_variant_on_cpu_onnxruntime(model):
    path, spec, _ = model
    cfg = prof.ProfileConfig.from_dict(TINY)
    doc = prof.profile_variant(path, spec, prof.CpuOnnxRuntime(threads=1), family="ncf", variant="fp32",
                               variant_run_id=RUN_ID, accuracy=ACCURACY, cfg=cfg)
    validate_profile(doc)
    assert doc["latency_bounded_throughput_qps"] > 0
    assert doc["curve"] and doc["latency_vs_batch"] == sorted(doc["latency_vs_batch"], key=lambda r: r["batch"])
    assert doc["search"]["best_knobs"]["sub_batch"] in (64, 128)
    assert doc["search"]["best_knobs"]["threads"] == 1
    assert doc["target"]["kind"] == "cpu-onnxruntime" and doc["target"]["threads"] == 1
    assert doc["load"]["sub_batch_policy"] == {"mode": "searched"}
    assert doc["onnx_sha256"] == prof.file_sha256(path) and len(doc["onnx_sha256"]) == 64


def test_detect_targets_here_skips_gpu(caplog):
    skipped: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="recforge.pipeline.profiling.targets"):
        found = prof.detect_targets(skipped=skipped)
    assert [t.kind for t in found] == ["cpu-onnxruntime", "cpu-triton"]
    assert isinstance(found[0], prof.HardwareTarget)
    assert skipped == {"gpu": "no CUDA device: skipped",
                       "hybrid": "needs gpu-onnxruntime target 'gpu': no CUDA device: skipped"}
    assert "gpu skipped: no CUDA device" in caplog.text


def test_failing_target_is_reported_and_others_profile(model, tmp_path):
    path, _, spec_path = model
    cfg = prof.ProfileConfig.from_dict({**TINY, "max_sub_batch": 64, "max_steps": 2})
    profiles, skipped = prof.profile_all(path, spec_path, [Broken(), Absent(), prof.CpuOnnxRuntime()],
                                         family="ncf", variant="fp32", variant_run_id=RUN_ID,
                                         accuracy=ACCURACY, cfg=cfg)
    assert [p["target"]["name"] for p in profiles] == ["cpu"]
    assert profiles[0]["load"]["sub_batch_policy"] == {"mode": "fixed", "sub_batch": 64}
    assert skipped == {"broken": "RuntimeError: cannot open the device", "absent": "not plugged in"}


def test_cli_writes_a_profile_and_reports_errors_on_one_line(model, tmp_path, capsys):
    path, _, spec_path = model
    config = json.dumps({**TINY, "max_sub_batch": 64, "max_steps": 1, "latency_batches": [1]})
    out = tmp_path / "p.json"
    rc = prof.main(["--onnx", str(path), "--spec", str(spec_path), "--family", "ncf", "--variant", "fp32",
                    "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--out", str(out), "--config", config,
                    "--targets", "cpu,gpu"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["profiles"][0]["path"] == str(out) and summary["skipped"] == {"gpu": "no CUDA device: skipped"}
    validate_profile(json.loads(out.read_text()))
    rc = prof.main(["--onnx", str(path), "--spec", str(spec_path), "--family", "ncf", "--variant", "fp32",
                    "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--config", '{"bogus": 1}'])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ProfileConfig: unknown key(s) ['bogus']") and err.count("\n") == 1


def test_profile_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        prof.ProfileConfig.from_dict({"p95_target": 25})
    with pytest.raises(ConfigError, match="threads"):
        prof.ProfileConfig.from_dict({"threads": [1, 1]})
    with pytest.raises(ConfigError, match="point_duration_s"):
        prof.ProfileConfig.from_dict({"point_duration_s": 0})
    assert prof.ProfileConfig.from_dict({"threads": [2]}).threads == (2,)


def test_bad_run_id_is_the_callers_error(model):
    path, spec, _ = model
    with pytest.raises(ConfigError, match="variant_run_id"):
        prof.profile_all(path, spec, [prof.CpuOnnxRuntime()], family="ncf", variant="fp32", variant_run_id="local",
                         accuracy=ACCURACY, cfg=prof.ProfileConfig.from_dict(TINY))


def test_cli_refuses_unknown_targets(model, capsys):
    path, _, spec_path = model
    rc = prof.main(["--onnx", str(path), "--spec", str(spec_path), "--family", "ncf", "--variant", "fp32",
                    "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--targets", "cpu,tpu"])
    assert rc == 1 and "unknown target(s) ['tpu']" in capsys.readouterr().err


def test_profile_config_validates_the_triton_axes():
    with pytest.raises(ConfigError, match="queue_delays_us"):
        prof.ProfileConfig.from_dict({"triton_queue_delays_us": [100, 0]})
    with pytest.raises(ConfigError, match="triton_workers"):
        prof.ProfileConfig.from_dict({"triton_workers": 0})


# --------------------------------------------------------------------------------------------------------------
# cpu-triton: a real tritonserver


@pytest.mark.triton
def test_profile_variant_on_cpu_triton(model, tmp_path):
    from recforge.inference import model_repo

    path, spec, _ = model
    # a low start rate and a loose SLO: this checks the machinery on a shared 2-core machine, not the speed
    cfg = prof.ProfileConfig.from_dict({**TINY, "max_sub_batch": 64, "max_evaluations": 3, "start_qps": 20,
                                        "p95_target_ms": 250, "point_duration_s": 0.5,
                                        "triton_queue_delays_us": [0, 500], "triton_workers": 3})
    target = prof.CpuTriton(threads=1, max_batch=256, work_root=tmp_path)
    assert target.available() == (True, "")
    doc = prof.profile_variant(path, spec, target, family="ncf", variant="fp32", variant_run_id=RUN_ID,
                               accuracy=ACCURACY, cfg=cfg)
    validate_profile(doc)
    assert doc["target"]["kind"] == "cpu-triton" and "tritonserver 2." in doc["target"]["device"]
    assert doc["latency_bounded_throughput_qps"] > 0
    best = doc["search"]["best_knobs"]
    assert {"sub_batch", "preferred_batch", "queue_delay_us", "instances", "max_batch_size"} <= set(best)
    first = doc["search"]["evaluations"][0]["knobs"]  # climbed from plain serving
    assert (first["preferred_batch"], first["queue_delay_us"], first["instances"]) == ([], 0, 1)
    assert len(doc["search"]["evaluations"]) == 3 and best["max_batch_size"] == 256 and best["workers"] == 3
    assert [row["batch"] for row in doc["latency_vs_batch"]] == [1, 16]
    # the server is gone and its repository deleted once the variant is profiled
    assert target.server is None and list(tmp_path.iterdir()) == []
    # the profile turns into a serving config whose values name it
    serving = model_repo.serving_config_from_profile(doc, source="p.json")
    assert (serving.max_batch_size, serving.instance_count) == (256, best["instances"])
    assert serving.max_queue_delay_microseconds == best["queue_delay_us"]


@pytest.mark.triton
def test_a_triton_target_that_cannot_start_is_reported_and_skipped(model, tmp_path):
    path, _, spec_path = model
    cfg = prof.ProfileConfig.from_dict({**TINY, "max_sub_batch": 64, "max_steps": 1, "latency_batches": [1]})
    broken = prof.CpuTriton(server_args=["--no-such-option"], work_root=tmp_path)
    profiles, skipped = prof.profile_all(path, spec_path, [broken, prof.CpuOnnxRuntime()], family="ncf",
                                         variant="fp32", variant_run_id=RUN_ID, accuracy=ACCURACY, cfg=cfg)
    assert [p["target"]["kind"] for p in profiles] == ["cpu-onnxruntime"]
    assert skipped["cpu-triton"].startswith("TritonError: tritonserver exited with code 1 before it was ready")
    assert broken.server is None and list(tmp_path.iterdir()) == []


def test_gpu_onnxruntime_target_names_what_is_missing(monkeypatch):
    """No GPU can run here: the device list is faked to check the second reason (CUDA device, CPU-only ORT)."""
    from recforge.pipeline.profiling import targets as profile

    target = profile.GpuOnnxRuntime()
    monkeypatch.setattr(profile, "_cuda_devices", lambda: [])
    assert target.available() == (False, "no CUDA device: skipped")
    monkeypatch.setattr(profile, "_cuda_devices", lambda: ["NVIDIA H100"])
    ok, why = target.available()
    assert not ok and "NVIDIA H100 present" in why and "CUDAExecutionProvider" in why and "onnxruntime-gpu" in why
    assert target.kind == "gpu-onnxruntime" and target.describe() == "NVIDIA H100"
    assert any(t.kind == "gpu-onnxruntime" for t in profile.default_targets())


# ---------------------------------------------------------------------------------------------- hybrid CPU/GPU


class Sleeping:
    """A hardware target whose requests sleep ``fixed_ms + per_item_ms x items``: the stand-in for a GPU, which
    this project's CI does not have (and a CPU whose cost is known, so that the optimum is known)."""

    def __init__(self, name, kind, fixed_ms, per_item_ms):
        self.name, self.kind, self.fixed_ms, self.per_item_ms = name, kind, fixed_ms, per_item_ms
        self.closed = 0

    def available(self):
        return True, ""

    def describe(self):
        return f"sleeps {self.fixed_ms} ms + {self.per_item_ms} ms/item"

    def make_load_target(self, onnx_path, spec, knobs):
        from recforge.inference.loadgen import CallableTarget

        return CallableTarget.sleeping(self.fixed_ms, self.per_item_ms, name=self.name)

    def close(self):
        self.closed += 1


def test_hybrid_target_climbs_the_gpu_threshold(model):
    """DeepRecSched's offload threshold, searched end to end through profile_variant: the CPU part serves the
    lognormal(5.1, 0.2) queries at ~176 queries/s (2 workers, 1 ms + 0.05 ms/item per 64-item sub-batch), the
    fake GPU at ~350/s (2 ms + 0.005 ms/item per whole query). CPU only (threshold 1024, where the climb starts)
    is the worst setting; offloading the larger queries must win by a wide margin. The p95 target (50 ms, ~5x a
    query's service time) and the low start rate leave room for thread wake-ups on a busy 2-core runner, where a
    CPU-only once failed a 25 ms target at 50 qps."""
    path, spec, _ = model
    cpu = Sleeping("cpu", "cpu-onnxruntime", 1.0, 0.05)
    gpu = Sleeping("gpu", "gpu-fake", 2.0, 0.005)
    cfg = prof.ProfileConfig.from_dict({
        **TINY, "p95_target_ms": 50.0, "point_duration_s": 0.6, "start_qps": 20, "max_qps": 1600, "max_steps": 8,
        "tolerance": 0.15,
        "min_sub_batch": 64, "max_sub_batch": 64, "gpu_thresholds": [0, 128, 164, 1024], "max_evaluations": 4})
    doc = prof.profile_variant(path, spec, prof.HybridCpuGpu(cpu, gpu), family="ncf", variant="fp32",
                               variant_run_id=RUN_ID, accuracy=ACCURACY, cfg=cfg)
    validate_profile(doc)
    assert doc["target"]["kind"] == "hybrid-onnxruntime" and doc["target"]["name"] == "hybrid"
    assert "+" in doc["target"]["device"] and cpu.closed == 1 and gpu.closed == 1
    values = {e["knobs"]["gpu_threshold"]: e["lbt_qps"] for e in doc["search"]["evaluations"]}
    best = doc["search"]["best_knobs"]
    assert best["gpu_threshold"] < 1024 and best["gpu_workers"] == 1
    assert values[1024] > 0 and doc["latency_bounded_throughput_qps"] > 1.5 * values[1024]


def test_hybrid_target_names_the_missing_part(monkeypatch):
    from recforge.pipeline.profiling import targets as profile

    monkeypatch.setattr(profile, "_cuda_devices", lambda: [])
    hybrid = profile.HybridCpuGpu()
    assert hybrid.available() == (False, "needs gpu-onnxruntime target 'gpu': no CUDA device: skipped")
    assert profile.HybridCpuGpu(Sleeping("c", "cpu-onnxruntime", 1, 0), Absent()).available() == (
        False, "needs cpu-onnxruntime target 'absent': not plugged in")
    with pytest.raises(ConfigError, match="gpu_thresholds"):
        prof.ProfileConfig.from_dict({"gpu_thresholds": [256, 128]})
    with pytest.raises(ConfigError, match="gpu_workers"):
        prof.ProfileConfig.from_dict({"gpu_workers": 0})


def test_offload_thresholds_follow_the_query_sizes():
    from recforge.inference.loadgen import QuerySizes

    sizes = QuerySizes.lognormal()
    thresholds = prof.offload_thresholds(sizes)
    assert thresholds[0] == 0 and thresholds[-1] == 1024 and list(thresholds) == sorted(set(thresholds))
    sample = sizes.sample(20_000, 1)
    offloaded = [float((sample > t).mean()) for t in thresholds]
    # each step of the axis moves a real share of the queries (no plateau for the climb to stop on)
    assert offloaded == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0], abs=0.03)
    assert prof.offload_thresholds(QuerySizes.fixed(100)) == (0, 100, 1024)  # all or nothing
