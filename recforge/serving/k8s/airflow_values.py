"""Helm values for the official apache-airflow chart (1.22.x): the chain with the local cluster's settings.

The local distributed mode (``make cluster-up``, docs/cluster.md) runs the chain on Celery workers that share
nothing but URIs. The same settings here:

* **CeleryExecutor** (default): the chart's unnamed worker Deployment is off (``workers.celery.enableDefault``)
  and two worker sets (``workers.celery.sets``) take its place: ``default`` (``airflow.workers`` replicas serving
  queue ``default``, ``worker_concurrency`` tasks each) and ``profiling`` (one replica serving only the profiling
  queue, one task at a time, CPU request = limit in whole cores). ``RECFORGE_PROFILING_QUEUE`` sends
  ``profile_variants``' load tests there, so a profile is never measured beside training. Redis is the broker,
  PostgreSQL the metadata database and result backend.
* **KubernetesExecutor**: one pod per task (``workers.kubernetes``), each with the profiling pod's CPU
  request = limit; no queues, no Redis.
* Every worker pod mounts an ``emptyDir`` at ``RECFORGE_HOME`` (the tasks' ``RECFORGE_WORK_DIR`` below it): local
  disk is scratch that may vanish; tasks share only the data root (``s3://``) and MLflow's proxied artifacts.
* Every Airflow container gets ``RECFORGE_NIGHTLY_SCHEDULE`` (read when the DAG processor parses
  ``nightly_retrain``), the MLflow tracking URI and the data root; ``[scheduler] task_instance_heartbeat_timeout``
  is the cluster's 90 s.

No passwords: every credential is a Secret referenced by name. Only keys that chart 1.22.x's values schema has are
written; tests/serving/test_k8s_airflow.py checks them against a documented list with the source of each key.
"""

from __future__ import annotations

from typing import Any

from recforge.serving.k8s.deploy_config import DEFAULT_QUEUE, AirflowConfig, DeployConfig
from recforge.serving.k8s.objects import MLFLOW_PORT

AIRFLOW_VERSION = "3.3.2"
RECFORGE_HOME = "/tmp/recforge"  # on a worker pod: the scratch emptyDir
SCRATCH_VOLUME = "recforge-scratch"
DEFAULT_WORKER_SET, PROFILING_WORKER_SET = "default", "profiling"
DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "12Gi"}}


def celery_worker_args(queue: str, concurrency: int) -> list[str]:
    """The worker container's arguments: ``airflow celery worker`` on one queue (the chart's image entrypoint)."""
    return ["bash", "-c", f"exec airflow celery worker --queues {queue} --concurrency {concurrency}"]


def scratch_volume(a: AirflowConfig) -> dict:
    return {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": f"{a.scratch_gi}Gi"}}


def scratch_mount() -> dict:
    return {"name": SCRATCH_VOLUME, "mountPath": RECFORGE_HOME}


def dedicated_resources(a: AirflowConfig) -> dict:
    """Requests = limits in whole cores: the pod is Guaranteed and can get exclusive cores."""
    size = {"cpu": str(a.profiling_cpus), "memory": f"{a.profiling_memory_gi}Gi"}
    return {"requests": dict(size), "limits": dict(size)}


def celery_worker_sets(a: AirflowConfig) -> list[dict]:
    """The two worker groups of the local cluster, as chart worker sets (one Deployment each)."""
    def worker_set(name: str, replicas: int, queue: str, concurrency: int, resources: dict) -> dict:
        return {"name": name, "replicas": replicas, "args": celery_worker_args(queue, concurrency),
                "resources": resources, "extraVolumes": [scratch_volume(a)], "extraVolumeMounts": [scratch_mount()]}

    return [worker_set(DEFAULT_WORKER_SET, a.workers, DEFAULT_QUEUE, a.worker_concurrency, DEFAULT_WORKER_RESOURCES),
            worker_set(PROFILING_WORKER_SET, 1, a.profiling_queue, 1, dedicated_resources(a))]


def airflow_env(cfg: DeployConfig) -> list[dict]:
    """Environment of every Airflow container (the chart's top-level ``env``): what the tasks and DAG files read."""
    a, storage, ns = cfg.airflow, cfg.storage, cfg.namespace
    env = [
        {"name": "MLFLOW_TRACKING_URI", "value": f"http://mlflow.{ns}.svc:{MLFLOW_PORT}"},
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
        {"name": "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "value": "false"},
        {"name": "GX_ANALYTICS_ENABLED", "value": "False"},
        {"name": "RECFORGE_DATA_ROOT", "value": f"s3://{storage.data_bucket}/data"},
        {"name": "RECFORGE_HOME", "value": RECFORGE_HOME},
        {"name": "RECFORGE_WORK_DIR", "value": f"{RECFORGE_HOME}/work"},
        {"name": "RECFORGE_NIGHTLY_SCHEDULE", "value": a.nightly_schedule},
        {"name": "AWS_DEFAULT_REGION", "value": storage.region},
    ]
    if a.executor == "CeleryExecutor":
        env.append({"name": "RECFORGE_PROFILING_QUEUE", "value": a.profiling_queue})
    if storage.s3_endpoint:
        env += [{"name": "AWS_ENDPOINT_URL_S3", "value": storage.s3_endpoint},
                {"name": "MLFLOW_S3_ENDPOINT_URL", "value": storage.s3_endpoint}]
    return env


def airflow_values(cfg: DeployConfig) -> dict:
    """Values for the official apache-airflow chart: no generated or default credentials, all from Secrets."""
    a, storage = cfg.airflow, cfg.storage
    celery = a.executor == "CeleryExecutor"
    values: dict[str, Any] = {
        "airflowVersion": AIRFLOW_VERSION,
        "defaultAirflowRepository": a.image_repository,
        "defaultAirflowTag": a.image_tag,
        "executor": a.executor,
        "fernetKeySecretName": a.fernet_key_secret,
        "apiSecretKeySecretName": a.api_secret_key_secret,
        "jwtSecretName": a.jwt_secret,
        "data": {"metadataSecretName": a.metadata_secret},
        "postgresql": {"enabled": False},  # metadata DB: the Bitnami release (postgresql-values.yaml) or external
        "createUserJob": {"defaultUser": {"enabled": False}},  # no admin/admin: create users from a Secret
        "env": airflow_env(cfg),
        "secret": [
            {"envName": "AWS_ACCESS_KEY_ID", "secretName": storage.credentials_secret,
             "secretKey": "AWS_ACCESS_KEY_ID"},
            {"envName": "AWS_SECRET_ACCESS_KEY", "secretName": storage.credentials_secret,
             "secretKey": "AWS_SECRET_ACCESS_KEY"},
        ],
        "dags": {
            "persistence": {"enabled": False},
            "gitSync": {"enabled": True, "repo": a.git_repo, "branch": a.git_branch, "rev": "HEAD",
                        "subPath": a.git_sub_path, "depth": 1, "period": "60s",
                        "credentialsSecret": a.git_credentials_secret},
        },
        "config": {
            "core": {"load_examples": "False"},
            "scheduler": {"catchup_by_default": "False",
                          "task_instance_heartbeat_timeout": str(a.task_heartbeat_timeout_s)},
        },
    }
    if celery:
        values["config"]["operators"] = {"default_queue": DEFAULT_QUEUE}
        values["data"]["resultBackendSecretName"] = a.result_backend_secret
        values["data"]["brokerUrlSecretName"] = a.broker_url_secret
        values["redis"] = {"enabled": True, "passwordSecretName": a.redis_password_secret}
        values["workers"] = {"celery": {"enableDefault": False, "sets": celery_worker_sets(a)}}
    else:
        values["redis"] = {"enabled": False}
        values["workers"] = {"kubernetes": {"resources": dedicated_resources(a),
                                            "extraVolumes": [scratch_volume(a)],
                                            "extraVolumeMounts": [scratch_mount()]}}
    return values
