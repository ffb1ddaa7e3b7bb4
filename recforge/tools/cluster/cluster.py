"""Bring the whole cluster up, down, or report it: every service in dependency order, each health-checked.

``up`` starts only what does not answer yet (a second ``up`` is a no-op) and returns when every service answers;
a service that fails stops it there with one line naming the service and its log. ``down`` stops everything in
reverse order (nothing running is fine). State stays under ``$RECFORGE_HOME/cluster`` between the two.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from recforge.tools.cluster.postgres import Postgres, ServiceError
from recforge.tools.cluster.processes import last_line
from recforge.tools.cluster.services import (
    AIRFLOW_COMPONENTS,
    VENV_BIN,
    AirflowComponent,
    CeleryWorker,
    Mlflow,
    ProcessService,
    Redis,
    airflow_env,
    worker_services,
)
from recforge.tools.cluster.settings import ClusterConfig, ClusterPaths, load_config, load_secrets, save_config

START_TIMEOUT_S = {"postgres": 60, "redis": 30, "mlflow": 240, "airflow": 300, "worker": 180}
MIGRATE_TIMEOUT_S = 600


@dataclass
class Cluster:
    """The services of one cluster folder, in start order."""

    paths: ClusterPaths
    cfg: ClusterConfig
    postgres: Postgres
    redis: Redis
    mlflow: Mlflow
    airflow: list[AirflowComponent]
    workers: list[CeleryWorker]

    @classmethod
    def load(cls, paths: ClusterPaths | None = None, overrides: dict | None = None, create: bool = False) -> Cluster:
        paths = paths or ClusterPaths.default()
        cfg = load_config(paths, overrides)
        secrets = load_secrets(paths, create=create)
        return cls(paths, cfg, Postgres(paths, cfg, secrets), Redis(paths, cfg, secrets), Mlflow(paths, cfg, secrets),
                   [component(paths, cfg, secrets) for component in AIRFLOW_COMPONENTS],
                   worker_services(paths, cfg, secrets))

    @property
    def services(self) -> list:
        return [self.postgres, self.redis, self.mlflow, *self.airflow, *self.workers]


def wait_healthy(service, timeout_s: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once ``service`` answers; ServiceError naming it and its log when its process died or ``timeout_s``
    passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        if service.healthy():
            return
        if isinstance(service, ProcessService) and not service.running():
            raise ServiceError(f"{service.title} exited while starting; see {service.log} ({last_line(service.log)})")
        if time.monotonic() > deadline:
            raise ServiceError(f"{service.title} did not answer on {service.address} within {timeout_s:.0f} s; "
                               f"see {service.log} ({last_line(service.log)})")
        sleep(1.0)


def migrate_airflow_db(cluster: Cluster) -> None:
    """``airflow db migrate`` on the cluster's PostgreSQL database (idempotent)."""
    log = cluster.paths.airflow_home / "db-migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = airflow_env(cluster.paths, cluster.cfg, cluster.postgres.secrets, cluster.paths.airflow_home / "work")
    with open(log, "w") as out:
        done = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=MIGRATE_TIMEOUT_S)
    if done.returncode != 0:
        raise ServiceError(f"Airflow metadata DB migration on PostgreSQL {cluster.postgres.address} failed; see {log} "
                           f"({last_line(log)})")


def answers_again(service, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Whether a running service that does not answer now answers within its ``reconnect_grace_s`` (a Celery worker
    reconnecting to a restarted Redis: restarting it would kill the task it runs)."""
    grace_s = getattr(service, "reconnect_grace_s", 0.0)
    if not grace_s or not service.running():
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        sleep(1.0)
        if service.healthy():
            return True
    return False


def start_group(services: Sequence, timeout_s: float, say: Callable[[str], None]) -> None:
    """Start the ones that do not answer, then wait for all of them."""
    for service in services:
        if service.healthy() or answers_again(service):
            say(f"{service.title}: already running ({service.address})")
        else:
            if isinstance(service, ProcessService):
                service.stop()  # a leftover process that does not answer
            service.start()
    for service in services:
        wait_healthy(service, timeout_s)


def up(overrides: dict | None = None, paths: ClusterPaths | None = None, say: Callable[[str], None] = print) -> Cluster:
    """Start every service that is not running and wait until all answer (idempotent)."""
    paths = paths or ClusterPaths.default()
    cluster = Cluster.load(paths, overrides, create=True)
    save_config(paths, cluster.cfg)
    started = time.monotonic()
    start_group([cluster.postgres], START_TIMEOUT_S["postgres"], say)
    start_group([cluster.redis], START_TIMEOUT_S["redis"], say)
    start_group([cluster.mlflow], START_TIMEOUT_S["mlflow"], say)
    if not all(component.healthy() for component in cluster.airflow):
        migrate_airflow_db(cluster)
    start_group(cluster.airflow, START_TIMEOUT_S["airflow"], say)
    start_group(cluster.workers, START_TIMEOUT_S["worker"], say)
    say(f"cluster up in {time.monotonic() - started:.0f} s: Airflow {cluster.cfg.airflow_url} "
        f"(user admin, password in {paths.secrets_file}), MLflow {cluster.cfg.mlflow_url}")
    return cluster


def down(paths: ClusterPaths | None = None, say: Callable[[str], None] = print) -> None:
    """Stop every service, workers first, PostgreSQL last; a service that is not running is skipped."""
    paths = paths or ClusterPaths.default()
    if not paths.secrets_file.is_file():
        say(f"no cluster in {paths.root}: nothing to stop")
        return
    cluster = Cluster.load(paths)
    for service in reversed(cluster.services):
        say(f"{service.title}: {'stopped' if service.stop() else 'not running'}")


def status(paths: ClusterPaths | None = None) -> tuple[bool, list[str]]:
    """(every service answers, one line per service: name, state, address, pid, log)."""
    paths = paths or ClusterPaths.default()
    cluster = Cluster.load(paths)
    lines, all_healthy = [], True
    for service in cluster.services:
        healthy = service.healthy()
        all_healthy &= healthy
        running = service.running() if isinstance(service, ProcessService) else healthy
        state = "healthy" if healthy else ("unhealthy" if running else "down")
        pid = service.pid() if isinstance(service, ProcessService) else None
        lines.append(f"{service.title:<22} {state:<9} {service.address:<40} pid {pid or '-':<8} {service.log}")
    return all_healthy, lines
