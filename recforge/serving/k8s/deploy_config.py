"""The deployment config (``infra/k8s/deploy.example.json``): the fleets to deploy and the settings of Triton,
storage, MLflow, Airflow and PostgreSQL, each section a typed config."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.serving.elastic.control import ControlConfig

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a Kubernetes namespace / object name (DNS-1123 label)
CELERY_QUEUE = r"^[A-Za-z0-9_.-]{1,63}$"  # an Airflow/Celery queue name
DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue: where every task without its own queue= goes
CRON_OR_NONE = r"^(none|\S+( \S+){4})$"  # a 5-field cron expression, or "none" (RECFORGE_NIGHTLY_SCHEDULE)
StringLabels = Annotated[dict[str, str], Field(min_length=1)]  # a non-empty object of string labels


@typed_config
class FleetEntry:
    """One Triton fleet: a profile document and the traffic it must carry (queries per second, as the profile)."""

    profile: Annotated[str, Field(min_length=1)]  # path of the profile JSON, relative to the deployment config file
    peak_qps: Annotated[float, Field(gt=0)]  # expected peak query rate: sets maxReplicas
    base_qps: Annotated[float, Field(ge=0)] = 0.0  # expected off-peak query rate: with min_replicas sets minReplicas
    model_name: str = ""  # Triton model name in the repository; default: the profile's model_family

    def __post_init__(self) -> None:
        if self.base_qps > self.peak_qps:
            raise ConfigError(f"FleetEntry: need base_qps <= peak_qps, got {self.base_qps}, {self.peak_qps}")


@typed_config
class TritonConfig:
    """How Triton fleets are sized and run."""

    image: str = "nvcr.io/nvidia/tritonserver:25.10-py3"
    model_bucket: str = "recforge-models"
    model_prefix: str = "triton"  # repository of a fleet: s3://<bucket>/<prefix>/<family>/<target>/
    admin_key_secret: str = "recforge-triton-admin"  # Secret with key `admin-key`: header value for restricted APIs
    # plan each replica at this fraction of its latency-bounded throughput
    target_utilization: Annotated[float, Field(gt=0, le=1)] = 0.7
    min_replicas: Annotated[int, Field(ge=1)] = 2  # at least this many replicas, for availability
    max_replicas_cap: Annotated[int, Field(ge=1)] = 64  # refuse a plan that needs more replicas than this
    # HPA target: average queue time = this fraction of the p95 SLO
    queue_time_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # the kube-controller-manager's --horizontal-pod-autoscaler-sync-period (its default): the HPA's control tick
    hpa_sync_period_s: Annotated[int, Field(ge=1, le=1800)] = 15
    # CPU for Triton's HTTP/gRPC frontends on top of instances x threads
    server_cpu: Annotated[float, Field(ge=0)] = 0.5
    memory_base_mib: Annotated[int, Field(ge=1)] = 1024
    memory_per_instance_mib: Annotated[int, Field(ge=0)] = 512
    startup_timeout_s: Annotated[int, Field(ge=1)] = 600  # time to pull the repository from S3 and load the model
    gpu_node_selector: StringLabels = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    client_pod_labels: StringLabels = field(default_factory=lambda: {"recforge.io/triton-client": "true"})
    prometheus_namespace: str = "monitoring"

    def __post_init__(self) -> None:
        if self.min_replicas > self.max_replicas_cap:
            raise ConfigError(f"TritonConfig: need min_replicas <= max_replicas_cap, got {self.min_replicas}, "
                              f"{self.max_replicas_cap}")


@typed_config
class StorageConfig:
    """S3-compatible object storage shared by Triton (model repositories), MLflow (artifacts) and Airflow (data)."""

    # e.g. https://minio.storage.svc:9000 (scheme, host and port: Triton needs the port); empty for AWS S3
    s3_endpoint: Annotated[str, Field(pattern=r"^(https?://[A-Za-z0-9.-]+:\d+)?$")] = ""
    region: str = "us-east-1"
    credentials_secret: str = "recforge-s3"  # Secret with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    data_bucket: str = "recforge-data"


@typed_config
class MlflowConfig:
    image: str = "registry.example.com/recforge/mlflow:3.17.2"  # mlflow==3.17.2 + psycopg2-binary + boto3
    replicas: Annotated[int, Field(ge=1)] = 2
    workers: Annotated[int, Field(ge=1)] = 2
    backend_store_secret: str = "recforge-mlflow-db"  # Secret with key `uri`: postgresql://user:pass@host:5432/db
    artifacts_bucket: str = "recforge-mlflow"
    artifacts_prefix: str = "artifacts"


@typed_config
class AirflowConfig:
    chart_version: str = "1.22.0"
    image_repository: str = "registry.example.com/recforge/airflow"  # apache/airflow:3.3.2 + this repo installed
    image_tag: str = "3.3.2-recforge"
    executor: Literal["CeleryExecutor", "KubernetesExecutor"] = "CeleryExecutor"
    git_repo: str = "https://git.example.com/recforge/recforge.git"
    git_branch: str = "main"
    git_sub_path: str = "dags"
    git_credentials_secret: str = "recforge-git-credentials"  # GITSYNC_USERNAME / GITSYNC_PASSWORD (+ v3 names)
    metadata_secret: str = "recforge-airflow-metadata"  # key `connection`: postgresql://...
    result_backend_secret: str = "recforge-airflow-result-backend"  # key `connection`: db+postgresql://...
    broker_url_secret: str = "recforge-airflow-broker-url"  # key `connection`: redis://:pass@host:6379/0
    redis_password_secret: str = "recforge-airflow-redis"  # key `password`
    fernet_key_secret: str = "recforge-airflow-fernet"  # key `fernet-key`
    api_secret_key_secret: str = "recforge-airflow-api-secret"  # key `api-secret-key`
    jwt_secret: str = "recforge-airflow-jwt"  # key `jwt-secret`
    # The same settings as the local cluster (recforge/tools/cluster, docs/cluster.md), as Celery worker sets:
    workers: Annotated[int, Field(ge=1)] = 2  # replicas of the `default` worker set (queue `default`)
    worker_concurrency: Annotated[int, Field(ge=1)] = 2  # tasks at once per `default` worker pod
    # RECFORGE_PROFILING_QUEUE: profile_variants' load tests go to the `profiling` worker set, one task at a time
    profiling_queue: Annotated[str, Field(pattern=CELERY_QUEUE)] = "profiling"
    # CPU request = limit of a profiling pod (whole cores: Guaranteed QoS, exclusive cores under the kubelet's
    # static CPU manager), so a profile is never measured beside another task; with KubernetesExecutor every
    # task pod gets it
    profiling_cpus: Annotated[int, Field(ge=1, le=256)] = 8
    profiling_memory_gi: Annotated[int, Field(ge=1)] = 16
    scratch_gi: Annotated[int, Field(ge=1)] = 50  # per-pod emptyDir at RECFORGE_HOME: scratch that may vanish
    # RECFORGE_NIGHTLY_SCHEDULE: nightly_retrain's cron (UTC), or "none" for triggered runs only
    nightly_schedule: Annotated[str, Field(pattern=CRON_OR_NONE)] = "0 2 * * *"
    # [scheduler] task_instance_heartbeat_timeout: a task whose worker died is failed (and retried) after this
    task_heartbeat_timeout_s: Annotated[int, Field(ge=10)] = 90

    def __post_init__(self) -> None:
        if self.profiling_queue == DEFAULT_QUEUE:
            raise ConfigError(f"AirflowConfig.profiling_queue must differ from the default queue {DEFAULT_QUEUE!r}: "
                              "profiles would be measured beside other tasks")


@typed_config
class PostgresConfig:
    chart_version: str = "16.7.27"
    auth_secret: str = "recforge-postgresql"  # keys postgres-password, password (Bitnami chart's defaults)
    initdb_secret: str = "recforge-postgresql-initdb"  # SQL that creates the airflow database and user
    storage_gi: Annotated[int, Field(ge=1)] = 50


@typed_config
class DeployConfig:
    """Everything the generator needs besides the profiles. Sections are parsed with their own typed configs."""

    namespace: Annotated[str, Field(pattern=DNS_LABEL)] = "recforge"
    p95_slo_ms: Annotated[float, Field(ge=0)] = 0.0  # 0: each profile's p95_target_ms; else profiles must meet it
    fleets: tuple[FleetEntry, ...] = ()
    triton: TritonConfig = field(default_factory=TritonConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    airflow: AirflowConfig = field(default_factory=AirflowConfig)
    postgresql: PostgresConfig = field(default_factory=PostgresConfig)
    # the live fleet's control law (recforge.serving.elastic.control): the HPA's target and behavior come from it
    control: ControlConfig = field(default_factory=ControlConfig)
    base_dir: str = "."  # folder the profile paths are relative to (the config file's folder)


SECTIONS = {"triton": TritonConfig, "storage": StorageConfig, "mlflow": MlflowConfig, "airflow": AirflowConfig,
            "postgresql": PostgresConfig, "control": ControlConfig}


def deploy_config_from_dict(values: Mapping[str, Any], base_dir: str | Path = ".") -> DeployConfig:
    """Parse a deployment config (``infra/k8s/deploy.example.json``); ConfigError on unknown keys or bad values."""
    values = dict(values)
    top = {k: v for k, v in values.items() if k not in (*SECTIONS, "fleets")}
    unknown = sorted(set(top) - {"namespace", "p95_slo_ms"})
    if unknown:
        raise ConfigError(f"DeployConfig: unknown key(s) {unknown}; valid keys are "
                          f"{sorted(['namespace', 'p95_slo_ms', 'fleets', *SECTIONS])}")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section = values.get(name) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"DeployConfig.{name} must be a JSON object, got {section!r}")
        sections[name] = config_from_dict(cls, dict(section))
    fleets = values.get("fleets") or []
    if not isinstance(fleets, list) or not fleets:
        raise ConfigError("DeployConfig.fleets must be a non-empty list of {profile, peak_qps[, base_qps]}")
    entries = tuple(config_from_dict(FleetEntry, f) for f in fleets)
    plain = config_from_dict(DeployConfig, {**top, "base_dir": str(base_dir)})  # coerces and checks the top keys
    return DeployConfig(namespace=plain.namespace, p95_slo_ms=plain.p95_slo_ms, fleets=entries,
                        base_dir=plain.base_dir, **sections)


def load_deploy_config(path: str | Path) -> DeployConfig:
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read deployment config {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"deployment config {path} must hold a JSON object")
    return deploy_config_from_dict(values, base_dir=path.parent)
