"""`make run`'s chain as users get it nightly: Airflow's own scheduler (LocalExecutor) runs nightly_retrain for a
triggered date and then compress_and_validate, profile_variants and register_models from the Assets each one
publishes (`infra/local/airflow.sh chain`), in an isolated Airflow home against the real MLflow server, on one family
and a small slice. Afterwards the services it started are stopped and the chain DAGs paused again."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from pathlib import Path

import mlflow
import pytest

from recforge.contracts import tags
from recforge.core.ports import free_ports
from recforge.tools.chain import CHAIN
from tests.e2e.conftest import REPO, make_pipeline_env

pytestmark = pytest.mark.e2e

DAY = "1997-11-15"
CONF = json.dumps({"families": ["ncf"], "train_config": {"max_epochs": 1, "max_train_rows": 6000}})


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_scheduler_runs_the_whole_chain_from_one_trigger(tmp_path, mlflow_server):
    env = make_pipeline_env(tmp_path, mlflow_server) | {"AIRFLOW_PORT": str(free_ports(1)[0])}
    out = subprocess.run([str(REPO / "infra/local/airflow.sh"), "chain", DAY, "-c", CONF], env=env,
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = out.stdout[out.stdout.index(f"chain for {DAY}:"):]
    for dag_id in CHAIN:
        assert f"{dag_id} " in table and "success" in table.split(dag_id, 1)[1].splitlines()[0], table

    # the scheduler started the downstream DAGs itself: asset-triggered runs, in the chain's order
    db = sqlite3.connect(Path(env["RECFORGE_HOME"]) / "airflow" / "airflow.db")
    runs = dict(db.execute("select dag_id, run_type from dag_run").fetchall())
    assert runs == {"nightly_retrain": "manual", "compress_and_validate": "asset_triggered",
                    "profile_variants": "asset_triggered", "register_models": "asset_triggered"}
    # what make run started, it stopped; what it unpaused, it paused again
    assert not listening(int(env["AIRFLOW_PORT"]))
    assert not list((Path(env["RECFORGE_HOME"]) / "airflow").glob("*.pid"))
    paused = dict(db.execute("select dag_id, is_paused from dag where dag_id in (?, ?, ?, ?)", CHAIN).fetchall())
    assert paused == dict.fromkeys(CHAIN, 1)

    # and the chain's end result: a model version in MLflow's registry, registered by the scheduled register run
    register_run = db.execute("select run_id from dag_run where dag_id = 'register_models'").fetchone()[0]
    versions = mlflow.MlflowClient(mlflow_server).search_model_versions("name = 'recforge-ncf'")
    assert [v for v in versions if v.tags.get(tags.REGISTERED_BY_DAG_RUN) == register_run], \
        [(v.version, v.tags.get(tags.REGISTERED_BY_DAG_RUN)) for v in versions]
