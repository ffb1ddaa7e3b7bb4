"""register_models through Airflow (`airflow dags test`, manual trigger) on fabricated profiled runs in a real
MLflow server: the DAG registers, sets the champion, and ends by proposing the fleet and rollout commands; a family
that fails does not stop the others' registration or proposal, and the run still fails."""

from __future__ import annotations

import json

import pytest

from recforge.contracts import tags as T
from tests.e2e.conftest import make_pipeline_env, run_dag
from tests.pipeline.registry.fabricated import CPU, Pipeline, one_variant

pytestmark = pytest.mark.e2e


def pipeline_of(tmp_path, mlflow_server, monkeypatch) -> tuple[dict, Pipeline]:
    env = make_pipeline_env(tmp_path, mlflow_server)
    for key in ("MLFLOW_TRACKING_URI", "RECFORGE_EXPERIMENT", "RECFORGE_HOME"):
        monkeypatch.setenv(key, env[key])
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    return env, Pipeline(tmp_path)


def test_register_models_dag_registers_and_proposes(tmp_path, mlflow_server, monkeypatch):
    env, pipeline = pipeline_of(tmp_path, mlflow_server, monkeypatch)
    pipeline.night({"fp32": {"lbt": {CPU: 200.0}, "auc": 0.752, "size": 8000},
                    "int8": {"lbt": {CPU: 260.0}, "auc": 0.751, "size": 2000}})
    conf = json.dumps({"model_prefix": pipeline.cfg.model_prefix, "margin": 0.1})
    out = run_dag(env, "register_models", "1998-04-11", conf, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert f"proposed rollout: make rollout MODEL={pipeline.model} TARGET={CPU} VERSION=1" in out.stdout + out.stderr

    assert pipeline.aliases() == {f"champion-{CPU}": "1"}
    tags = pipeline.client.get_model_version(pipeline.model, "1").tags
    assert tags[T.VARIANT] == "int8" and tags[T.BLESSING_PREFIX + "margin"] == "0.1"
    dag_run_id = tags[T.REGISTERED_BY_DAG_RUN]
    assert dag_run_id and tags[T.ROLLOUT_PROPOSAL].startswith("make rollout ")
    proposals = list((tmp_path / "home" / "registry" / "proposals").glob("*.md"))
    assert len(proposals) == 1 and tags[T.ROLLOUT_PROPOSAL] in proposals[0].read_text()
    assert tags[T.ROLLOUT_PROPOSAL_FLEET] in proposals[0].read_text()
    history = [json.loads(line) for line in (tmp_path / "home" / "registry" / "alias_history.jsonl").open()]
    assert [(e["alias"], e["to_version"], e["dag_run_id"]) for e in history] == [(f"champion-{CPU}", "1", dag_run_id)]


def test_one_failed_family_does_not_block_the_others_proposal(tmp_path, mlflow_server, monkeypatch):
    env, pipeline = pipeline_of(tmp_path, mlflow_server, monkeypatch)
    pipeline.night(one_variant(100.0))
    pipeline.night(one_variant(100.0, sha="f" * 64), family="din", same_night=True)  # refused: another ONNX file
    conf = json.dumps({"model_prefix": pipeline.cfg.model_prefix})
    out = run_dag(env, "register_models", "1998-04-11", conf, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode != 0, "a failed family must fail the DAG run"
    assert f"proposed rollout: make rollout MODEL={pipeline.model} TARGET={CPU} VERSION=1" in log
    assert "1 family not registered: din: refusing to register din/v" in log
    assert pipeline.aliases() == {f"champion-{CPU}": "1"}
    text = next((tmp_path / "home" / "registry" / "proposals").glob("*.md")).read_text()
    assert pipeline.client.get_model_version(pipeline.model, "1").tags[T.ROLLOUT_PROPOSAL] in text
    assert "Failed:\n- din: refusing to register din/v" in text
