"""End-to-end tier: an isolated pipeline (Airflow home + MLflow experiment) per test, on the real MLflow server
of the root conftest (``mlflow_server``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO  # noqa: F401  (re-exported for the e2e tests)


def make_pipeline_env(root: Path, mlflow_url: str) -> dict:
    """Environment of one isolated pipeline: its own RECFORGE_HOME, Airflow DB and MLflow experiment."""
    from recforge.core import config

    env = os.environ | {
        "RECFORGE_HOME": str(root / "home"),
        "RECFORGE_RAW_DIR": str(config.raw_dir()),  # reuse the verified download of `make setup`
        "MLFLOW_TRACKING_URI": mlflow_url,
        "RECFORGE_EXPERIMENT": f"e2e-{root.name}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "False",
    }
    out = subprocess.run([str(REPO / "infra/local/airflow.sh"), "init"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return env


@pytest.fixture
def pipeline_env(tmp_path, mlflow_server):
    return make_pipeline_env(tmp_path, mlflow_server)


def run_dag(env: dict, dag_id: str, day: str, conf: str = "{}", timeout: int = 1200):
    return subprocess.run([str(REPO / "infra/local/airflow.sh"), "test", dag_id, day, "-c", conf],
                          env=env, capture_output=True, text=True, timeout=timeout)
