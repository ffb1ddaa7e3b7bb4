"""recforge.pipeline.profiling.profile_variant: one small real profiling run on onnxruntime CPU (and on a real
tritonserver, tier triton), failure isolation, the CLI, and the hybrid target's offload threshold searched end to
end on targets that sleep a known time."""

from __future__ import annotations

import json

import pytest

from recforge.contracts.profile import validate_profile
from recforge.core.errors import ConfigError
from recforge.core.hashing import sha256_file
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.profile_variant import main, profile_all, profile_variant
from recforge.pipeline.profiling.targets.cpu_onnxruntime import CpuOnnxRuntime
from recforge.pipeline.profiling.targets.cpu_triton import CpuTriton
from recforge.pipeline.profiling.targets.hybrid import HybridCpuGpu
from tests.pipeline.profiling.fakes import ACCURACY, RUN_ID, TINY, Absent, Broken, Sleeping


def test_profile_variant_on_cpu_onnxruntime(model):
    path, spec, _ = model
    cfg = ProfileConfig.from_dict(TINY)
    doc = profile_variant(path, spec, CpuOnnxRuntime(threads=1), family="ncf", variant="fp32",
                          variant_run_id=RUN_ID, accuracy=ACCURACY, cfg=cfg)
    validate_profile(doc)
    assert doc["latency_bounded_throughput_qps"] > 0
    assert doc["curve"] and doc["latency_vs_batch"] == sorted(doc["latency_vs_batch"], key=lambda r: r["batch"])
    assert doc["search"]["best_knobs"]["sub_batch"] in (64, 128)
    assert doc["search"]["best_knobs"]["threads"] == 1
    assert doc["target"]["kind"] == "cpu-onnxruntime" and doc["target"]["threads"] == 1
    assert doc["load"]["sub_batch_policy"] == {"mode": "searched"}
    assert doc["onnx_sha256"] == sha256_file(path) and len(doc["onnx_sha256"]) == 64


def test_failing_target_is_reported_and_others_profile(model, tmp_path):
    path, _, spec_path = model
    cfg = ProfileConfig.from_dict({**TINY, "max_sub_batch": 64, "max_steps": 2})
    profiles, skipped = profile_all(path, spec_path, [Broken(), Absent(), CpuOnnxRuntime()],
                                    family="ncf", variant="fp32", variant_run_id=RUN_ID,
                                    accuracy=ACCURACY, cfg=cfg)
    assert [p["target"]["name"] for p in profiles] == ["cpu-onnxruntime"]
    assert profiles[0]["load"]["sub_batch_policy"] == {"mode": "fixed", "sub_batch": 64}
    assert skipped == {"broken": "RuntimeError: cannot open the device", "absent": "not plugged in"}


def test_cli_writes_a_profile_and_reports_errors_on_one_line(model, tmp_path, capsys):
    path, _, spec_path = model
    config = json.dumps({**TINY, "max_sub_batch": 64, "max_steps": 1, "latency_batches": [1]})
    out = tmp_path / "p.json"
    rc = main(["--onnx", str(path), "--spec", str(spec_path), "--family", "ncf", "--variant", "fp32",
               "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--out", str(out), "--config", config,
               "--targets", "cpu-onnxruntime,gpu-onnxruntime"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["profiles"][0]["path"] == str(out) and summary["skipped"] == {
        "gpu-onnxruntime": "no CUDA device: skipped"}
    validate_profile(json.loads(out.read_text()))
    rc = main(["--onnx", str(path), "--spec", str(spec_path), "--family", "ncf", "--variant", "fp32",
               "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--config", '{"bogus": 1}'])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ProfileConfig: unknown key(s) ['bogus']") and err.count("\n") == 1


def test_bad_run_id_is_the_callers_error(model):
    path, spec, _ = model
    with pytest.raises(ConfigError, match="variant_run_id"):
        profile_all(path, spec, [CpuOnnxRuntime()], family="ncf", variant="fp32", variant_run_id="local",
                    accuracy=ACCURACY, cfg=ProfileConfig.from_dict(TINY))


def test_cli_refuses_unknown_targets(model, capsys):
    path, _, spec_path = model
    rc = main(["--onnx", str(path), "--spec", str(spec_path), "--family", "ncf", "--variant", "fp32",
               "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--targets", "cpu-onnxruntime,tpu"])
    assert rc == 1 and "unknown target(s) ['tpu']" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# cpu-triton: a real tritonserver


@pytest.mark.triton
def test_profile_variant_on_cpu_triton(model, tmp_path):
    from recforge.inference import model_repo

    path, spec, _ = model
    # a low start rate and a loose SLO: this checks the machinery on a shared 2-core machine, not the speed
    cfg = ProfileConfig.from_dict({**TINY, "max_sub_batch": 64, "max_evaluations": 3, "start_qps": 20,
                                   "p95_target_ms": 250, "point_duration_s": 0.5,
                                   "triton_queue_delays_us": [0, 500], "triton_workers": 3})
    target = CpuTriton(threads=1, max_batch=256, work_root=tmp_path)
    assert target.available() == (True, "")
    doc = profile_variant(path, spec, target, family="ncf", variant="fp32", variant_run_id=RUN_ID,
                          accuracy=ACCURACY, cfg=cfg)
    validate_profile(doc)
    assert doc["target"]["kind"] == "cpu-triton" and "tritonserver 2." in doc["target"]["device"]
    assert doc["latency_bounded_throughput_qps"] > 0
    best = doc["search"]["best_knobs"]
    assert {"sub_batch", "preferred_batch", "queue_delay_us", "instances", "max_batch_size"} <= set(best)
    first = doc["search"]["evaluations"][0]["knobs"]  # raced from plain serving
    assert (first["preferred_batch"], first["queue_delay_us"], first["instances"]) == ([], 0, 1)
    # the racing search: one-run screens of the other Triton settings, within the load runs of 3 LBT searches
    assert doc["search"]["strategy"] == "coordinate_race"
    note = next(n for n in doc["notes"] if "screened with one load run" in n)
    assert int(note.rsplit("; ", 1)[1].split()[0]) <= 3 * cfg.max_steps + 2  # "...; N load runs"
    assert best["max_batch_size"] == 256 and best["workers"] == 3
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
    cfg = ProfileConfig.from_dict({**TINY, "max_sub_batch": 64, "max_steps": 1, "latency_batches": [1]})
    broken = CpuTriton(server_args=["--no-such-option"], work_root=tmp_path)
    profiles, skipped = profile_all(path, spec_path, [broken, CpuOnnxRuntime()], family="ncf",
                                    variant="fp32", variant_run_id=RUN_ID, accuracy=ACCURACY, cfg=cfg)
    assert [p["target"]["kind"] for p in profiles] == ["cpu-onnxruntime"]
    assert skipped["cpu-triton"].startswith("TritonError: tritonserver exited with code 1 before it was ready")
    assert broken.server is None and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- hybrid CPU/GPU


@pytest.mark.perf  # real sleeps and real load runs decide which threshold wins
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
    cfg = ProfileConfig.from_dict({
        **TINY, "p95_target_ms": 50.0, "point_duration_s": 0.6, "start_qps": 20, "max_qps": 1600, "max_steps": 8,
        "tolerance": 0.15,
        "min_sub_batch": 64, "max_sub_batch": 64, "gpu_thresholds": [0, 128, 164, 1024], "max_evaluations": 4})
    doc = profile_variant(path, spec, HybridCpuGpu(cpu, gpu), family="ncf", variant="fp32",
                          variant_run_id=RUN_ID, accuracy=ACCURACY, cfg=cfg)
    validate_profile(doc)
    assert doc["target"]["kind"] == "hybrid-onnxruntime" and doc["target"]["name"] == "hybrid-onnxruntime"
    assert "+" in doc["target"]["device"] and cpu.closed == 1 and gpu.closed == 1
    values = {e["knobs"]["gpu_threshold"]: e["lbt_qps"] for e in doc["search"]["evaluations"]}
    best = doc["search"]["best_knobs"]
    assert best["gpu_threshold"] < 1024 and best["gpu_workers"] == 1
    assert values[1024] > 0 and doc["latency_bounded_throughput_qps"] > 1.5 * values[1024]


