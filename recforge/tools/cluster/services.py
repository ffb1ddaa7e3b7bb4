"""The cluster's services besides PostgreSQL: Redis, the MLflow tracking server, Airflow's API server, scheduler,
DAG processor and triggerer, and the Celery workers; each with its command, environment, log and health check."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import requests

from recforge.core import config
from recforge.tools.chain import ADMIN_USER
from recforge.tools.cluster import policy, task_scratch
from recforge.tools.cluster.postgres import connection_url
from recforge.tools.cluster.processes import running_pid, start_detached, stop_group
from recforge.tools.cluster.settings import (
    HOST,
    PROFILING_QUEUE,
    WORKERS,
    ClusterConfig,
    ClusterPaths,
    Worker,
    write_private,
)

VENV_BIN = Path(sys.executable).parent  # the project's venv: airflow, mlflow
REDIS_SERVER = os.environ.get("RECFORGE_REDIS_SERVER", "redis-server")


class ProcessService:
    """A service run as one detached process group: ``start`` launches it, ``healthy`` asks it over the network."""

    title = ""
    name = ""
    reconnect_grace_s = 0.0  # how long ``up`` waits for a running process that does not answer before restarting it

    def __init__(self, paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str]):
        self.paths, self.cfg, self.secrets = paths, cfg, secrets
        self.dir = paths.service_dir(self.name)
        self.log = self.dir / f"{self.name}.log"
        self.pidfile = self.dir / f"{self.name}.pid"
        self.address = ""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def healthy(self) -> bool:
        raise NotImplementedError

    def running(self) -> bool:
        return running_pid(self.pidfile) is not None

    def pid(self) -> int | None:
        return running_pid(self.pidfile)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        start_detached(self.argv(), self.env(), self.log, self.pidfile, cwd=self.dir)

    def stop(self) -> bool:
        return stop_group(self.pidfile)


class Redis(ProcessService):
    """Redis, the Celery broker: password required, append-only file so queued tasks survive a restart."""

    title = "Redis"
    name = "redis"

    def __init__(self, paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str]):
        super().__init__(paths, cfg, secrets)
        self.address = f"{HOST}:{cfg.redis_port}"

    @property
    def url(self) -> str:
        return f"redis://:{self.secrets['redis_password']}@{HOST}:{self.cfg.redis_port}/0"

    def argv(self) -> list[str]:
        conf = self.dir / "redis.conf"  # 0600: it holds the password (not on the command line, seen by ps)
        write_private(conf, "\n".join([
            f"bind {HOST}", f"port {self.cfg.redis_port}", "protected-mode yes",
            f"requirepass {self.secrets['redis_password']}", "daemonize no", f"dir {self.dir}",
            "appendonly yes", 'save ""', 'logfile ""']) + "\n")
        return [REDIS_SERVER, str(conf)]

    def healthy(self) -> bool:
        import redis

        client = redis.Redis(host=HOST, port=self.cfg.redis_port, password=self.secrets["redis_password"],
                             socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class Mlflow(ProcessService):
    """The MLflow tracking server on PostgreSQL; artifacts through its proxy (clients see mlflow-artifacts:/)."""

    title = "MLflow"
    name = "mlflow"

    def __init__(self, paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str]):
        super().__init__(paths, cfg, secrets)
        self.address = cfg.mlflow_url

    def argv(self) -> list[str]:
        return [str(VENV_BIN / "mlflow"), "server", "--host", HOST, "--port", str(self.cfg.mlflow_port),
                "--workers", "1", "--artifacts-destination", str(self.dir / "artifacts")]

    def env(self) -> dict[str, str]:  # the store's password through the environment, not the command line
        return dict(os.environ) | {"MLFLOW_BACKEND_STORE_URI": connection_url(self.cfg, self.secrets, "mlflow"),
                                   "MLFLOW_DISABLE_TELEMETRY": "true"}

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.address}/health", timeout=2).ok
        except requests.RequestException:
            return False


def airflow_env(paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str], work_dir: Path) -> dict[str, str]:
    """The environment of every Airflow process of the cluster (and of the tasks its workers run)."""
    db = connection_url(cfg, secrets, "airflow")
    redis_url = f"redis://:{secrets['redis_password']}@{HOST}:{cfg.redis_port}/0"
    return dict(os.environ) | {
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(config.REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": secrets["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(paths.airflow_home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db,  # psycopg 3 is async too (Airflow's default: asyncpg)
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db,
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(cfg.airflow_port),
        "AIRFLOW__API__WORKERS": "1",  # Airflow's default of 4 API server processes is too much for 2 cores
        "AIRFLOW__API__SECRET_KEY": secrets["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets["jwt_secret"],  # the same in every component
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(cfg.task_heartbeat_timeout_s),
        # the workers' Celery app: Airflow's default config, and a fresh scratch folder per task (task_scratch)
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "recforge.tools.cluster.celery_config.CELERY_CONFIG",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "RECFORGE_WORK_DIR": str(work_dir),
        "RECFORGE_PROFILING_QUEUE": PROFILING_QUEUE,
        # triggered runs only: on a cron schedule, unpausing nightly_retrain would start a run for yesterday,
        # a day MovieLens has no ratings for
        "RECFORGE_NIGHTLY_SCHEDULE": "none",
        policy.CLUSTER_ROOT_ENV: str(paths.root),  # the cluster policy's config (DAG param defaults, retry delays)
        "GX_ANALYTICS_ENABLED": "False",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
    }


def airflow_health(cfg: ClusterConfig) -> dict | None:
    """The API server's health document (metadatabase, scheduler, triggerer, dag_processor); None: no answer."""
    try:
        response = requests.get(f"{cfg.airflow_url}/api/v2/monitor/health", timeout=3)
    except requests.RequestException:
        return None
    return response.json() if response.ok else None


class AirflowComponent(ProcessService):
    """One of ``airflow api-server|scheduler|dag-processor|triggerer``; healthy when the API server says so."""

    health_key = ""  # its entry in the API server's health document ("" = the API server itself)

    def __init__(self, paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str]):
        super().__init__(paths, cfg, secrets)
        self.dir = paths.airflow_home
        self.log = self.dir / f"{self.name}.log"
        self.pidfile = self.dir / f"{self.name}.pid"
        self.address = cfg.airflow_url if self.name == "api-server" else "(reports to the API server)"

    def argv(self) -> list[str]:
        # task logs are files under base_log_folder that the API server reads itself: no log server on 0.0.0.0
        skip_logs = ["--skip-serve-logs"] if self.name in ("scheduler", "triggerer") else []
        return [str(VENV_BIN / "airflow"), self.name, *skip_logs]

    def env(self) -> dict[str, str]:
        return airflow_env(self.paths, self.cfg, self.secrets, self.paths.airflow_home / "work")

    def start(self) -> None:
        write_private(self.paths.airflow_home / "passwords.json",
                      json.dumps({ADMIN_USER: self.secrets["airflow_admin_password"]}) + "\n")
        policy.install(self.paths.airflow_home)
        super().start()

    def healthy(self) -> bool:
        health = airflow_health(self.cfg)
        if health is None or not self.health_key:
            return health is not None
        return (health.get(self.health_key) or {}).get("status") == "healthy"


class ApiServer(AirflowComponent):
    title, name, health_key = "Airflow API server", "api-server", ""


class Scheduler(AirflowComponent):
    title, name, health_key = "Airflow scheduler", "scheduler", "scheduler"


class DagProcessor(AirflowComponent):
    title, name, health_key = "Airflow DAG processor", "dag-processor", "dag_processor"


class Triggerer(AirflowComponent):
    title, name, health_key = "Airflow triggerer", "triggerer", "triggerer"


class CeleryWorker(ProcessService):
    """``airflow celery worker`` with its queues and concurrency and its own scratch directory; healthy when it
    answers a Celery ping through the broker."""

    reconnect_grace_s = 30.0  # after a broker restart Celery reconnects with growing pauses (2, 4, 6 ... s)

    def __init__(self, paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str], worker: Worker):
        self.worker = worker
        self.name = worker.name
        self.title = f"Celery {worker.name}"
        super().__init__(paths, cfg, secrets)
        self.dir = paths.root / "workers" / worker.name
        self.log = self.dir / "worker.log"
        self.pidfile = self.dir / "worker.pid"
        self.scratch = paths.worker_scratch(worker.name)
        self.address = f"queues {','.join(worker.queues)}, concurrency {worker.concurrency}"

    def argv(self) -> list[str]:
        return [str(VENV_BIN / "airflow"), "celery", "worker", "--queues", ",".join(self.worker.queues),
                "--concurrency", str(self.worker.concurrency), "--celery-hostname", self.worker.hostname,
                "--skip-serve-logs"]

    def env(self) -> dict[str, str]:
        return airflow_env(self.paths, self.cfg, self.secrets, self.scratch) | {
            task_scratch.SCRATCH_ROOT_ENV: str(self.scratch),
            task_scratch.SCRATCH_LOG_ENV: str(self.paths.scratch_log(self.worker.name))}

    def start(self) -> None:
        """Start with an empty scratch: what is left in it is a killed worker's (``stop`` ended its processes)."""
        left = task_scratch.wipe(self.scratch)
        task_scratch.record({"event": "wiped at start", "entries": left}, self.paths.scratch_log(self.worker.name))
        policy.install(self.paths.airflow_home)
        super().start()

    def healthy(self) -> bool:
        from celery import Celery

        if not self.running():
            return False
        app = Celery(broker=f"redis://:{self.secrets['redis_password']}@{HOST}:{self.cfg.redis_port}/0")
        # a broker that does not answer makes this ping fail, not wait for it
        app.conf.update(broker_connection_timeout=2, broker_connection_retry=False,
                        broker_transport_options={"max_retries": 1})
        try:
            replies = app.control.ping(destination=[self.worker.hostname], timeout=2.0)
        except Exception:  # noqa: BLE001 - broker down or refusing: not healthy, whatever the error
            return False
        finally:
            app.close()
        return any(self.worker.hostname in reply for reply in replies)

    def stop(self) -> bool:
        return stop_group(self.pidfile, timeout_s=20.0)  # a warm shutdown waits for running tasks: not forever


AIRFLOW_COMPONENTS = (ApiServer, Scheduler, DagProcessor, Triggerer)


def worker_services(paths: ClusterPaths, cfg: ClusterConfig, secrets: dict[str, str]) -> list[CeleryWorker]:
    return [CeleryWorker(paths, cfg, secrets, worker) for worker in WORKERS]
