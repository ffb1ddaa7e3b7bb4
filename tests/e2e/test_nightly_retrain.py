"""The nightly DAG, run by Airflow (`airflow dags test`) against a real MLflow server, on a small slice."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from recforge.contracts import tags
from recforge.contracts.layout import Catalog
from recforge.models.families import BASELINE_FAMILY, FAMILY_NAMES, OPT_IN_FAMILIES
from tests.e2e.conftest import REPO, make_pipeline_env, run_dag

pytestmark = pytest.mark.e2e

DAY = "1997-11-15"  # a small slice: about 40k ratings before it
FAMILIES = list(FAMILY_NAMES)
# few steps: a higher learning rate so every family gets past its random initialisation
CONF = json.dumps({"families": FAMILIES,
                   "train_config": {"max_epochs": 2, "max_train_rows": 8000, "learning_rate": 0.01}})


def _client(env):
    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


def _runs(env):
    client = _client(env)
    experiment = client.get_experiment_by_name(env["RECFORGE_EXPERIMENT"])
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, mlflow_server):
    """One nightly run on the small slice, shared by the tests of what it produces."""
    env = make_pipeline_env(tmp_path_factory.mktemp("nightly"), mlflow_server)
    return env, run_dag(env, "nightly_retrain", DAY, CONF)


def test_nightly_run_trains_every_family_and_tracks_it(nightly):
    pipeline_env, out = nightly
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    runs = _runs(pipeline_env)
    parents = [r for r in runs if r.data.tags.get(tags.KIND) == "nightly"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tags.LOGICAL_DATE] == DAY
    assert len(parent.data.tags[tags.DATA_FINGERPRINT]) == 64
    assert parent.data.tags["mlflow.source.git.commit"]

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags[tags.FAMILY] for r in children) == sorted(FAMILIES)
    client = _client(pipeline_env)
    for child in children:
        assert 0.5 < child.data.metrics["test_auc"] <= 1.0
        assert child.data.metrics["test_logloss"] > 0
        assert child.data.metrics["onnx_max_abs_diff"] < 1e-4
        history = client.get_metric_history(child.info.run_id, "val_auc")
        assert len(history) == child.data.metrics["epochs_run"] >= 1
        assert child.data.params["data_day"] == DAY
        contexts = {d.tags[0].value for d in child.inputs.dataset_inputs}
        assert contexts == {"training", "validation", "testing"}
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "model_files")}
        assert {"model_files/model.onnx", "model_files/state_dict.pt", "model_files/spec.json"} <= artifacts
        onnx_uri = child.data.tags[tags.ONNX_MODEL_URI]
        assert onnx_uri.startswith("models:/")

    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "summary.md", "data_docs"} <= parent_artifacts
    assert parent.data.metrics["test_auc.logreg"] > 0.5

    # one Airflow asset event per trained candidate, carrying its URIs
    db = Path(pipeline_env["RECFORGE_HOME"]) / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select a.uri, e.extra from asset_event e join asset a on a.id = e.asset_id").fetchall()
    events = {uri: json.loads(extra) for uri, extra in rows}
    trained = {f"recforge://candidates/{f}" for f in FAMILIES if f != BASELINE_FAMILY}
    # every candidate asset gets an event when the night ends; only the trained families' carry a candidate (the
    # opt-in families, not trained by this night's params, come without one and compression skips them)
    assert {uri for uri, extra in events.items() if extra} == trained
    assert set(events) - trained == {f"recforge://candidates/{f}" for f in OPT_IN_FAMILIES}
    for uri, extra in ((uri, extra) for uri, extra in events.items() if uri in trained):
        assert extra["family"] == uri.rsplit("/", 1)[1]
        assert extra["run_id"] in {c.info.run_id for c in children}
        assert Path(extra["onnx_path"]).exists()


def test_bad_partition_stops_the_run_before_training(pipeline_env):
    env = pipeline_env
    landed = subprocess.run([sys.executable, "-m", "recforge.pipeline.data.ingest", "--date", DAY], env=env, cwd=REPO,
                            capture_output=True, text=True)
    assert landed.returncode == 0, landed.stderr
    sys.path.insert(0, str(REPO))
    from recforge.pipeline.data import ingest as data

    root = str(Path(env["RECFORGE_HOME"]) / "data")
    day = data.parse_date(DAY)
    part = data.load_partition(root, day)
    bad = pd.concat([part, part.head(20)], ignore_index=True)  # duplicated rows
    bad.loc[:9, "rating"] = 7  # out of range
    data.write_parquet(bad, data.partition_path(root, day))

    out = run_dag(env, "nightly_retrain", DAY, CONF)
    log = out.stdout + out.stderr
    assert out.returncode != 0, "the DAG run must fail on a bad partition"
    assert "data checks failed for partition 1997-11-15" in log, log[-4000:]
    assert "rating" in log and "Data Docs" in log

    runs = _runs(env)
    parent = next(r for r in runs if r.data.tags.get(tags.KIND) == "nightly")
    assert parent.info.status == "FAILED"
    assert [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id] == []
    assert "data_docs" in {a.path for a in _client(env).list_artifacts(parent.info.run_id)}
    assert not Catalog(Path(env["RECFORGE_HOME"]) / "work").features_dir(DAY).exists()
    # the bad partition is still there for people to look at: nothing repaired or deleted it
    assert len(data.load_partition(root, day)) == len(bad)


COMPRESS_CONF = json.dumps({
    "families": ["dlrm"],
    "compress_config": {"prune_ratios": [0.5], "finetune_epochs": 1, "distill_epochs": 1, "max_train_rows": 4000,
                        "calibration_rows": 256, "latency_repeats": 3, "parity_rows": 256},
})


def test_compress_and_validate_gates_and_tracks_every_variant(nightly):
    env, nightly_out = nightly
    assert nightly_out.returncode == 0
    out = run_dag(env, "compress_and_validate", DAY, COMPRESS_CONF)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    client = _client(env)
    runs = _runs(env)
    candidate = next(r for r in runs if r.data.tags.get(tags.STAGE) == "train"
                     and r.data.tags[tags.FAMILY] == "dlrm")
    variants = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == candidate.info.run_id]
    names = sorted(r.data.tags[tags.VARIANT] for r in variants)
    assert names == sorted(f"{base}{suffix}" for base in ("fp32", "pruned50", "student")
                           for suffix in ("", "+int8_dynamic", "+int8_static", "+fp16", "+emb_int8", "+emb_int4"))
    by_name = {r.data.tags[tags.VARIANT]: r for r in variants}
    assert by_name["fp32"].data.tags[tags.PARITY] == "passed"  # the reference is at parity with itself
    for run in variants:
        assert run.data.params["technique"] and run.data.params["bits"] in {"4", "8", "16", "32"}
        assert run.data.metrics["size_bytes"] > 0 and "auc" in run.data.metrics
        if run.data.tags[tags.PARITY] == "passed":
            assert run.data.metrics["auc"] >= 0.999 * by_name["fp32"].data.metrics["auc"]
            assert [a.path for a in client.list_artifacts(run.info.run_id, "onnx")]
    assert by_name["fp32+int8_dynamic"].data.metrics["size_bytes"] < by_name["fp32"].data.metrics["size_bytes"] / 3
    artifacts = {a.path for a in client.list_artifacts(candidate.info.run_id, "compression")}
    assert artifacts == {"compression/summary.json", "compression/summary.md", "compression/auc_vs_size.png"}

    db = Path(env["RECFORGE_HOME"]) / "airflow" / "airflow.db"
    with sqlite3.connect(db) as conn:
        (extra,) = conn.execute("select e.extra from asset_event e join asset a on a.id = e.asset_id "
                                "where a.name = 'recforge_validated_variants'").fetchone()
    passed = json.loads(extra)["families"]["dlrm"]["passed"]
    assert {p["name"] for p in passed} == {n for n, r in by_name.items() if r.data.tags[tags.PARITY] == "passed"}
    assert all(Path(p["onnx_path"]).exists() for p in passed)


def test_corrupt_candidate_stops_compression_with_a_clear_message(nightly):
    env, _ = nightly
    onnx_path = Catalog(Path(env["RECFORGE_HOME"]) / "work").model_dir(DAY, "ncf") / "model.onnx"
    onnx_path.write_bytes(b"not an onnx file")
    out = run_dag(env, "compress_and_validate", DAY, json.dumps({"families": ["ncf"]}))
    assert out.returncode != 0
    assert "candidate ncf (MLflow run" in out.stdout + out.stderr
    assert "model.onnx is corrupt" in out.stdout + out.stderr
