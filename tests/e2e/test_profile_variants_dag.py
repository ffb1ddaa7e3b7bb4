"""profile_variants after nightly_retrain and compress_and_validate, run by Airflow against a real MLflow server on
a small slice (one family, the fp32 base only, a tiny profiling budget)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import mlflow
import pytest

from recforge.contracts import tags
from recforge.contracts.targets import CPU_ONNXRUNTIME as CPU
from tests.e2e.conftest import make_pipeline_env, run_dag

pytestmark = pytest.mark.e2e

DAY = "1997-11-15"
NIGHTLY_CONF = {"families": ["dlrm"], "train_config": {"max_epochs": 1, "max_train_rows": 4000, "learning_rate": 0.01}}
COMPRESS_CONF = {"families": ["dlrm"], "compress_config": {"prune_ratios": [], "student": False,
                                                           "precisions": ["int8_dynamic", "fp16"],
                                                           "latency_repeats": 3, "parity_rows": 256}}
PROFILE_CONF = {"targets": [CPU, "gpu-onnxruntime", "tpu-v9"],
                "profile_config": {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400, "max_steps": 4,
                                   "tolerance": 0.5, "min_sub_batch": 64, "max_sub_batch": 128,
                                   "max_evaluations": 2, "latency_batches": [1, 64], "latency_repeats": 3}}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, mlflow_server):
    """A nightly run of one family and its compressed, validated variants."""
    env = make_pipeline_env(tmp_path_factory.mktemp("profile"), mlflow_server)
    for dag_id, conf in (("nightly_retrain", NIGHTLY_CONF), ("compress_and_validate", COMPRESS_CONF)):
        out = run_dag(env, dag_id, DAY, json.dumps(conf))
        assert out.returncode == 0, f"{dag_id}: {(out.stdout + out.stderr)[-4000:]}"
    return env


def test_profile_variants_logs_profiles_and_emits_the_profiles_asset(compressed):
    env = compressed
    out = run_dag(env, "profile_variants", DAY, json.dumps(PROFILE_CONF))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "skipped dlrm/fp32 on tpu-v9: unknown target 'tpu-v9'" in log

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["RECFORGE_EXPERIMENT"])
    runs = client.search_runs([experiment.experiment_id])
    candidate = next(r for r in runs if r.data.tags.get(tags.STAGE) == "train")
    variants = {r.data.tags[tags.VARIANT]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == candidate.info.run_id}
    profiled = {name: r for name, r in variants.items() if f"lbt_qps.{CPU}" in r.data.metrics}
    assert "fp32" in profiled  # the reference is always profiled
    assert "fp32+fp16" not in profiled  # fp16 is for GPU targets
    for run in profiled.values():
        assert run.data.tags[tags.PARITY] == "passed"
        assert run.data.tags[tags.PROFILED_TARGETS] == CPU
        assert "tpu-v9: unknown target" in run.data.tags[tags.PROFILE_SKIPPED]
        assert run.data.metrics[f"lbt_qps.{CPU}"] > 0 and run.data.metrics[f"items_per_s.{CPU}"] > 0
        assert {a.path for a in client.list_artifacts(run.info.run_id, "profile")} >= {
            f"profile/{CPU}.json", f"profile/{CPU}_p95_vs_load.png", f"profile/{CPU}_latency_vs_batch.png"}
    assert {a.path for a in client.list_artifacts(candidate.info.run_id, "profile")} == {
        "profile/summary.json", "profile/summary.md", "profile/pareto.png"}

    db = Path(env["RECFORGE_HOME"]) / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        (extra,) = conn.execute("select e.extra from asset_event e join asset a on a.id = e.asset_id "
                                "where a.name = 'recforge_profiles'").fetchone()
    family = json.loads(extra)["families"]["dlrm"]
    assert family["candidate_run_id"] == candidate.info.run_id
    assert {p["variant"] for p in family["profiles"]} == set(profiled)
    for p in family["profiles"]:
        assert p["target"] == p["kind"] == CPU
        assert p["artifact_uri"] == f"runs:/{p['variant_run_id']}/profile/{CPU}.json"
        doc = json.loads(Path(p["path"]).read_text())
        assert doc["variant_run_id"] == p["variant_run_id"] == profiled[p["variant"]].info.run_id
        assert doc["latency_bounded_throughput_qps"] == p["lbt_qps"]
        assert Path(p["path"]).parent == Path(env["RECFORGE_HOME"]) / "work" / DAY / "profiles" / "dlrm"
