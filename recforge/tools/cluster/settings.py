"""The distributed mode's settings: where it keeps its state, its ports and workers, and its generated secrets.

Everything lives under ``$RECFORGE_HOME/cluster``::

    cluster.json            ports (ClusterConfig), written by the first ``up``, read by every later command
    secrets.json            generated passwords and keys (mode 0600; never defaults, never in the repo)
    postgres/               PostgreSQL's data directory and log (owned by the user PostgreSQL runs as)
    redis/                  redis.conf (0600: it holds the password), append-only file, log
    mlflow/                 the tracking server's log; artifacts/ = its proxied artifact store
    airflow/                AIRFLOW_HOME: logs of the scheduler, DAG processor, triggerer, API server, task logs
    workers/<name>/work/    each Celery worker's scratch directory: every task gets a fresh folder in it, deleted when
                            the task ends (recforge.tools.cluster.task_scratch); scratch.jsonl records each one
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recforge.core import config
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError

HOST = "127.0.0.1"  # every service binds here only
DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue
PROFILING_QUEUE = "profiling"  # profile_variants' load tests (dags/profile_variants.py reads RECFORGE_PROFILING_QUEUE)
DATABASES = ("airflow", "mlflow")  # one database (and one owner role of the same name) per service
SECRET_NAMES = ("postgres_password", "airflow_db_password", "mlflow_db_password", "redis_password",
                "airflow_admin_password", "jwt_secret", "api_secret_key", "fernet_key")
Port = Annotated[int, Field(ge=1024, le=65535)]


@dataclass(frozen=True)
class Worker:
    """One Celery worker: the queues it serves and how many tasks it runs at once."""

    name: str
    queues: tuple[str, ...]
    concurrency: int

    @property
    def hostname(self) -> str:
        """Its Celery node name (unique per broker, so per cluster)."""
        return f"{self.name}@recforge"


# Both serve the default queue (a task on a killed worker is retried on the other); only worker2 serves the
# profiling queue, one task at a time, so a profile is never measured beside another task of that worker.
WORKERS = (Worker("worker1", (DEFAULT_QUEUE,), 2), Worker("worker2", (DEFAULT_QUEUE, PROFILING_QUEUE), 1))


@typed_config
class ClusterConfig:
    """The ports of the cluster's services on 127.0.0.1 and how its Airflow treats tasks
    (``make cluster-up CLUSTER_CONF='{...}'``).

    ``dag_params``: per DAG id, defaults of that DAG's params in this cluster (e.g. a small trial cluster's
    ``{"compress_and_validate": {"compress_config": {"precisions": ["int8_dynamic"]}}}``), applied by the cluster's
    Airflow policy (recforge.tools.cluster.policy) to every run, the asset-triggered ones included.
    ``max_retry_delay_s``: a task's retry waits at most this long (unset: what the DAG says).
    """

    postgres_port: Port = 5433
    redis_port: Port = 6380
    mlflow_port: Port = 5050
    airflow_port: Port = 8090
    # a task whose worker died is failed (and retried) after this long without a heartbeat (Airflow's default: 300 s)
    task_heartbeat_timeout_s: Annotated[int, Field(ge=20, le=3600)] = 90
    dag_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_retry_delay_s: Annotated[int, Field(ge=0, le=86400)] | None = None

    def __post_init__(self) -> None:
        ports = [self.postgres_port, self.redis_port, self.mlflow_port, self.airflow_port]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"ClusterConfig: the services need four different ports, got {ports}")

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://{HOST}:{self.airflow_port}"


@dataclass(frozen=True)
class ClusterPaths:
    """The folders and files of one cluster's state (root: ``$RECFORGE_HOME/cluster``)."""

    root: Path

    @classmethod
    def default(cls) -> ClusterPaths:
        return cls(config.recforge_home() / "cluster")

    @property
    def config_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    def service_dir(self, service: str) -> Path:
        return self.root / service

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    def worker_scratch(self, worker: str) -> Path:
        return self.root / "workers" / worker / "work"

    def scratch_log(self, worker: str) -> Path:
        """One JSON line per task folder created in and deleted from ``worker``'s scratch."""
        return self.root / "workers" / worker / "scratch.jsonl"


def load_config(paths: ClusterPaths, overrides: dict | None = None) -> ClusterConfig:
    """The saved ports (``cluster.json``) with ``overrides`` applied; defaults when nothing is saved."""
    saved = json.loads(paths.config_file.read_text()) if paths.config_file.is_file() else {}
    return config_from_dict(ClusterConfig, saved | dict(overrides or {}))


def save_config(paths: ClusterPaths, cfg: ClusterConfig) -> None:
    """Write ``cluster.json`` when it changes, atomically: the cluster policy reads it at every DAG parse, so a
    running cluster must never see it half-written (``up`` saves it again while tasks run)."""
    text = json.dumps(asdict(cfg), indent=2) + "\n"
    if paths.config_file.is_file() and paths.config_file.read_text() == text:
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.config_file.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(paths.config_file)


def new_secret(name: str) -> str:
    """A fresh random value for secret ``name`` (URL-safe: it goes into connection URLs)."""
    if name == "fernet_key":  # Airflow's Fernet key: 32 url-safe base64-encoded bytes
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_urlsafe(24)


def load_secrets(paths: ClusterPaths, create: bool = False) -> dict[str, str]:
    """The cluster's generated secrets; with ``create``, generates the missing ones into a 0600 file."""
    current: dict[str, str] = {}
    if paths.secrets_file.is_file():
        current = json.loads(paths.secrets_file.read_text())
    elif not create:
        raise ConfigError(f"no cluster state in {paths.root} (no secrets.json); run make cluster-up first")
    missing = [name for name in SECRET_NAMES if not current.get(name)]
    if missing and create:
        current |= {name: new_secret(name) for name in missing}
        write_private(paths.secrets_file, json.dumps(current, indent=2) + "\n")
    return current


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)
