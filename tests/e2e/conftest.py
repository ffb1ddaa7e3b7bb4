"""Real services for the end-to-end tier: an MLflow tracking server and an Airflow home, both throwaway."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("RECFORGE_VENV", REPO / ".venv")) / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and a local artifact root."""
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(state / "server.log", "w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{state}/mlflow.db", "--artifacts-destination", str(state / "art")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(state / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not become healthy in 120 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def make_pipeline_env(root: Path, mlflow_url: str) -> dict:
    """Environment of one isolated pipeline: its own RECFORGE_HOME, Airflow DB and MLflow experiment."""
    from tasks import config

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
