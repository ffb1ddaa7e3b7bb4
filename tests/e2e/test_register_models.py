"""register_models through Airflow (`airflow dags test`, manual trigger) on fabricated profiled runs in a real
MLflow server: the DAG registers, sets the champion, and ends by proposing the rollout command."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import make_pipeline_env, run_dag
from tests.pipeline.registry.test_stage import Pipeline

pytestmark = pytest.mark.e2e


def test_register_models_dag_registers_and_proposes(tmp_path, mlflow_server, monkeypatch):
    env = make_pipeline_env(tmp_path, mlflow_server)
    for key in ("MLFLOW_TRACKING_URI", "RECFORGE_EXPERIMENT", "RECFORGE_HOME"):
        monkeypatch.setenv(key, env[key])
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    pipeline = Pipeline(tmp_path)
    pipeline.night({"fp32": {"lbt": {"cpu": 200.0}, "auc": 0.752, "size": 8000},
                    "int8": {"lbt": {"cpu": 260.0}, "auc": 0.751, "size": 2000}})
    conf = json.dumps({"model_prefix": pipeline.cfg.model_prefix, "margin": 0.1})
    out = run_dag(env, "register_models", "1998-04-11", conf, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert f"proposed rollout: make rollout MODEL={pipeline.model} TARGET=cpu VERSION=1" in out.stdout + out.stderr

    assert pipeline.aliases() == {"champion-cpu": "1"}
    tags = pipeline.client.get_model_version(pipeline.model, "1").tags
    assert tags["recforge.variant"] == "int8" and tags["recforge.blessing.margin"] == "0.1"
    dag_run_id = tags["recforge.registered_by_dag_run"]
    assert dag_run_id and tags["recforge.rollout_proposal"].startswith("make rollout ")
    proposals = list((tmp_path / "home" / "registry" / "proposals").glob("*.md"))
    assert len(proposals) == 1 and tags["recforge.rollout_proposal"] in proposals[0].read_text()
    history = [json.loads(line) for line in (tmp_path / "home" / "registry" / "alias_history.jsonl").open()]
    assert [(e["alias"], e["to_version"], e["dag_run_id"]) for e in history] == [("champion-cpu", "1", dag_run_id)]
