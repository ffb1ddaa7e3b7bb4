"""The distributed mode on the real services: PostgreSQL, Redis, MLflow, Airflow (CeleryExecutor) and two Celery
workers started by infra/cluster/cluster.sh on free ports of 127.0.0.1, with their own RECFORGE_HOME."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from recforge.core.ports import free_ports
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CLUSTER_SH = REPO / "infra/cluster/cluster.sh"
SERVICES = ("PostgreSQL", "Redis", "MLflow", "Airflow API server", "Airflow scheduler", "Airflow DAG processor",
            "Airflow triggerer", "Celery worker1", "Celery worker2")


@pytest.fixture
def cluster_env(tmp_path):
    """A RECFORGE_HOME of the test's own. As root, PostgreSQL runs as user postgres, who must enter its folder: pytest's
    temporary folders are private to root (and pytest makes them private again when another session starts), so the
    home is a folder of /tmp that others may enter, linked from tmp_path."""
    home = Path(tempfile.mkdtemp(prefix="recforge-cluster-test-", dir="/tmp"))
    home.chmod(0o711)
    (tmp_path / "home").symlink_to(home)
    env = os.environ | {"RECFORGE_HOME": str(home), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    yield env
    subprocess.run([str(CLUSTER_SH), "down"], env=env, capture_output=True, timeout=300)
    shutil.rmtree(home, ignore_errors=True)


def cluster(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def status_lines(env: dict) -> tuple[int, dict[str, str]]:
    out = cluster(env, "status", timeout=120)
    return out.returncode, {title: line for line in out.stdout.splitlines() for title in SERVICES
                            if line.startswith(title + " ")}


def ports_config() -> str:
    pg, redis, mlflow, airflow = free_ports(4)
    return (f'{{"postgres_port": {pg}, "redis_port": {redis}, "mlflow_port": {mlflow}, '
            f'"airflow_port": {airflow}}}')


def tracked_files_text() -> str:
    names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True,
                           check=True).stdout.split("\0")
    texts = []
    for name in filter(None, names):
        try:
            texts.append((REPO / name).read_text(errors="ignore"))
        except OSError:
            continue
    return "\n".join(texts)


def test_up_status_up_again_down_down_again(cluster_env):
    import json

    import mlflow

    home = Path(cluster_env["RECFORGE_HOME"])
    up = cluster(cluster_env, "up", "--config", ports_config())
    assert up.returncode == 0, up.stdout + up.stderr
    code, lines = status_lines(cluster_env)
    assert code == 0 and sorted(lines) == sorted(SERVICES), lines
    assert all(" healthy " in line for line in lines.values()), lines

    # generated secrets: private, and in no file the repo tracks nor on any process's command line
    secrets_file = home / "cluster/secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    secrets = json.loads(secrets_file.read_text())
    tracked = tracked_files_text()
    assert not [name for name, value in secrets.items() if value in tracked]
    cmdlines = "\n".join(p.read_bytes().decode(errors="ignore") for p in Path("/proc").glob("[0-9]*/cmdline")
                         if p.exists())
    assert not [name for name, value in secrets.items() if value in cmdlines]

    # MLflow proxies the artifacts: the client gets an mlflow-artifacts:/ URI, the file lands in the cluster's store
    cfg = json.loads((home / "cluster/cluster.json").read_text())
    client = mlflow.MlflowClient(f"http://127.0.0.1:{cfg['mlflow_port']}")
    run = client.create_run(client.create_experiment("cluster-test"))
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [p.read_text() for p in (home / "cluster/mlflow/artifacts").rglob("note.txt")] == ["hello"]

    pids = {title: line.split(" pid ")[1].split()[0] for title, line in lines.items()}
    again = cluster(cluster_env, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == len(SERVICES), again.stdout
    _, lines_again = status_lines(cluster_env)
    assert {title: line.split(" pid ")[1].split()[0] for title, line in lines_again.items()} == pids

    down = cluster(cluster_env, "down", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    code, lines = status_lines(cluster_env)
    assert code == 1 and all(" down " in line for line in lines.values()), lines
    down_again = cluster(cluster_env, "down", timeout=300)
    assert down_again.returncode == 0 and down_again.stdout.count("not running") == len(SERVICES), down_again.stdout


def test_postgresql_unreachable_at_start_is_one_clear_error_naming_it(cluster_env):
    config = ports_config()
    import json

    pg_port = json.loads(config)["postgres_port"]
    with socket.socket() as squatter:  # something else holds PostgreSQL's port
        squatter.bind(("127.0.0.1", pg_port))
        squatter.listen()
        up = cluster(cluster_env, "up", "--config", config, timeout=300)
    assert up.returncode == 1
    errors = [line for line in up.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, up.stderr
    assert errors[0].startswith(f"error: PostgreSQL did not start on 127.0.0.1:{pg_port}; see ")
    assert str(Path(cluster_env["RECFORGE_HOME"]) / "cluster/postgres/postgres.log") in errors[0]
    code, lines = status_lines(cluster_env)  # nothing after PostgreSQL was started
    assert code == 1 and all(" down " in line for line in lines.values()), lines

    chain = subprocess.run(["make", "-s", "--no-print-directory", "chain", "DATE=1998-04-22"], cwd=REPO,
                           env=cluster_env, capture_output=True, text=True, timeout=120)
    assert chain.returncode != 0
    errors = [line for line in chain.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert len(errors) == 1, chain.stderr
    assert errors[0].startswith(f"error: PostgreSQL (Airflow's metadata DB and MLflow's store) is not reachable on "
                                f"127.0.0.1:{pg_port}; start the cluster: make cluster-up")


def test_the_chain_runs_through_the_scheduler_on_the_workers_and_a_date_is_triggered_once(cluster_env):
    import json

    import requests

    from recforge.core import config

    env = cluster_env | {"RECFORGE_RAW_DIR": str(config.raw_dir()),  # the verified download of `make setup`
                         "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}  # the workers log each task they run
    up = cluster(env, "up", "--config", ports_config())
    assert up.returncode == 0, up.stdout + up.stderr
    # the reference family alone, one epoch: the nightly DAG is all this test waits for (then 1 s for the rest)
    conf = '{"families": ["logreg"], "train_config": {"max_epochs": 1, "max_train_rows": 3000}}'
    first = cluster(env, "chain", "--date", "1998-04-22", "--conf", conf, "--timeout", "300")
    said = first.stdout + first.stderr
    assert "triggered nightly_retrain for 1998-04-22: run chain__1998-04-22" in first.stdout, said
    assert "nightly_retrain: success" in first.stdout, said
    assert first.returncode == (0 if re.search(r"whole chain\s+success", first.stdout) else 1), said

    home = Path(env["RECFORGE_HOME"]) / "cluster"
    cfg = json.loads((home / "cluster.json").read_text())
    secrets = json.loads((home / "secrets.json").read_text())
    url = f"http://127.0.0.1:{cfg['airflow_port']}"
    login = {"username": "admin", "password": secrets["airflow_admin_password"]}
    token = requests.post(f"{url}/auth/token", json=login, timeout=10).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    tasks = requests.get(f"{url}/api/v2/dags/nightly_retrain/dagRuns/chain__1998-04-22/taskInstances", headers=auth,
                         timeout=10).json()["task_instances"]
    done = {ti["task_id"] for ti in tasks if ti["state"] == "success"}
    assert {"ingest", "open_run", "check", "features", "train", "publish"} <= done, tasks
    ran = {w: (home / "workers" / w / "worker.log").read_text().count("Executing workload in Celery")
           for w in ("worker1", "worker2")}
    assert sum(ran.values()) >= len(done), ran  # every task went through a Celery worker
    assert {ti["queue"] for ti in tasks if ti["task_id"] in done} == {"default"}

    second = cluster(env, "chain", "--date", "1998-04-22", "--conf", conf, "--timeout", "1")
    assert "was already triggered (run chain__1998-04-22" in second.stdout, second.stdout + second.stderr
    assert "not triggering it again" in second.stdout
    runs = requests.get(f"{url}/api/v2/dags/nightly_retrain/dagRuns", headers=auth,
                        params={"logical_date_gte": "1998-04-22T00:00:00Z", "logical_date_lte": "1998-04-22T00:00:00Z"},
                        timeout=10).json()["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == ["chain__1998-04-22"]
