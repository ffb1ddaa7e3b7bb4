"""Kubernetes manifests and Helm values for the multi-machine deployment, generated from profile documents.

What runs on one machine here (``infra/local``: MLflow, Airflow standalone, a Triton fleet) runs on a cluster as:

* one Triton fleet per profiled (model family, target): ``Deployment`` (NGC Triton image, onnxruntime backend, model
  repository pulled from S3-compatible storage, ``--model-control-mode=none``), ``Service`` (ClusterIP, http 8000 and
  grpc 8001 only), ``HorizontalPodAutoscaler`` (autoscaling/v2) on Triton's average queue time per request,
  ``PodDisruptionBudget``, ``NetworkPolicy`` and ``ServiceAccount``;
* prometheus-adapter Helm values with the rule that turns ``nv_inference_queue_duration_us`` into that pods metric;
* MLflow: ``Deployment`` + ``Service``, PostgreSQL backend store and S3 artifact store, credentials from Secrets;
* Helm values for the official apache-airflow chart with the local cluster's settings (CeleryExecutor worker sets
  ``default`` and ``profiling``, or KubernetesExecutor; per-pod scratch, DAGs via git-sync) and for the Bitnami
  PostgreSQL chart.

The profile document (``recforge/contracts/profile_schema.json``) is the source of truth: CPU requests come from
the best knobs' Triton instances x intra-op threads, replica bounds from the latency-bounded throughput against the
expected traffic, and the HPA target from the p95 SLO. Secrets are referenced by name only; nothing here holds a
password.

Modules: ``deploy_config`` (the deployment config), ``sizing`` (a fleet sized from its profile), ``objects``
(shared manifest pieces), ``fleet`` (Triton fleets, prometheus-adapter), ``platform`` (MLflow, namespace, PostgreSQL
Helm values), ``airflow_values`` (the Airflow chart's values), ``render`` (the files), ``cli``.

CLI: ``python -m recforge.serving.k8s --config infra/k8s/deploy.example.json --out infra/k8s/generated`` (``make
k8s-manifests``). Usage of the output: ``infra/k8s/README.md``.
"""

from recforge.serving.k8s.airflow_values import airflow_values
from recforge.serving.k8s.deploy_config import (
    AirflowConfig,
    DeployConfig,
    FleetEntry,
    MlflowConfig,
    PostgresConfig,
    StorageConfig,
    TritonConfig,
    deploy_config_from_dict,
    load_deploy_config,
)
from recforge.serving.k8s.fleet import prometheus_adapter_values, triton_args, triton_manifests
from recforge.serving.k8s.objects import ADMIN_HEADER, QUEUE_METRIC, RESTRICTED_APIS
from recforge.serving.k8s.platform import mlflow_manifests, namespace_manifest, postgresql_values
from recforge.serving.k8s.render import generate, render
from recforge.serving.k8s.sizing import FleetSizing, fleet_sizing, size_fleets

__all__ = [
    "ADMIN_HEADER", "QUEUE_METRIC", "RESTRICTED_APIS", "AirflowConfig", "DeployConfig", "FleetEntry", "FleetSizing",
    "MlflowConfig", "PostgresConfig", "StorageConfig", "TritonConfig", "airflow_values", "deploy_config_from_dict",
    "fleet_sizing", "generate", "load_deploy_config", "mlflow_manifests", "namespace_manifest",
    "postgresql_values", "prometheus_adapter_values", "render", "size_fleets", "triton_args", "triton_manifests",
]
