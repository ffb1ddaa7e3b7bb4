"""tasks.profile: hardware targets, one small real profiling run on onnxruntime CPU, failure isolation, config."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from model_defs import build_model
from model_defs.export import export_onnx
from model_defs.spec import example_spec
from tasks import profile as prof
from tasks.errors import ConfigError
from tasks.profile_search import validate_profile

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
    with caplog.at_level(logging.INFO, logger="tasks.profile"):
        found = prof.detect_targets(skipped=skipped)
    assert [t.kind for t in found] == ["cpu-onnxruntime"]
    assert isinstance(found[0], prof.HardwareTarget)
    assert skipped == {"gpu": "no CUDA device: skipped"}
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
                    "--run-id", RUN_ID, "--accuracy", json.dumps(ACCURACY), "--out", str(out), "--config", config])
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
