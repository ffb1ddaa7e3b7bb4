"""The Kubernetes objects of one Triton fleet (Deployment, Service, HPA, PDB, NetworkPolicy, ServiceAccount) and
the prometheus-adapter values behind its HPA metrics.

The HPA follows the live fleet's control law (``recforge.serving.elastic.control.ControlConfig``, the deployment
config's ``control`` section) as far as HPA can express it (:func:`hpa_behavior`): its primary metric is the
items/s each pod serves against the profile's items/s at LBT x the law's ``target_utilisation`` (the law's
per-node capacity target), scale-up is immediate and unbounded (the law jumps to its forecast's node count), and
scale-down keeps the highest recommendation of ``scale_down_window_s`` (the law's window: the same rule) and
removes at most ``scale_down_step`` of the pods, at least one, per sync period (the law's per tick).
"""

from __future__ import annotations

import json
from typing import Any

from recforge.serving.elastic.control import ControlConfig
from recforge.serving.k8s.deploy_config import DeployConfig
from recforge.serving.k8s.objects import (
    ADMIN_HEADER,
    GRPC_PORT,
    HTTP_PORT,
    ITEMS_METRIC,
    METRICS_PORT,
    QUEUE_METRIC,
    RESTRICTED_APIS,
    container_security,
    http_probe,
    label_value,
    object_labels,
    s3_env,
    secret_env,
    selector,
)
from recforge.serving.k8s.sizing import FleetSizing


def triton_args(s: FleetSizing) -> list[str]:
    """tritonserver arguments of a fleet: S3 repository, no model control, restricted admin APIs."""
    restricted = ",".join(RESTRICTED_APIS)
    return [
        f"--model-repository={s.model_repository}",
        "--model-control-mode=none",  # models load at start only: a new model is a new rollout
        "--strict-readiness=true",  # ready only when every model is
        "--exit-on-error=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        # $(VAR) is expanded by the kubelet from the container env (a Secret), never written here.
        f"--http-restricted-api={restricted}:{ADMIN_HEADER}=$(TRITON_ADMIN_KEY)",
        f"--grpc-restricted-protocol={restricted}:{ADMIN_HEADER}=$(TRITON_ADMIN_KEY)",
        "--log-format=ISO8601",
    ]


def hpa_behavior(control: ControlConfig, sync_period_s: int, max_replicas: int) -> dict:
    """The HPA ``behavior`` of the control law (module docstring). HPA's dead band is the controller-manager's
    ``--horizontal-pod-autoscaler-tolerance`` (0.1 by default, the law's ``scale_down_tolerance`` default), not a
    field of the object."""
    percent = max(1, round(control.scale_down_step * 100))
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": max_replicas, "periodSeconds": sync_period_s}]},
        "scaleDown": {"stabilizationWindowSeconds": round(control.scale_down_window_s), "selectPolicy": "Max",
                      "policies": [{"type": "Percent", "value": percent, "periodSeconds": sync_period_s},
                                   {"type": "Pods", "value": 1, "periodSeconds": sync_period_s}]},
    }


def triton_manifests(s: FleetSizing, cfg: DeployConfig) -> list[dict]:
    t = cfg.triton
    labels = object_labels(s.name, "inference", **{"recforge.io/model-family": label_value(s.model_family),
                                            "recforge.io/target": label_value(s.target_name)})
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": f"{s.cpu_millis}m", "memory": f"{s.memory_mib}Mi"},
        "limits": {"cpu": f"{s.cpu_millis}m", "memory": f"{s.memory_mib}Mi"},
    }
    if s.gpu:
        resources["requests"]["nvidia.com/gpu"] = 1
        resources["limits"]["nvidia.com/gpu"] = 1
    pod_spec: dict[str, Any] = {
        "serviceAccountName": s.name,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 45,  # Triton waits up to 30 s for in-flight inferences
        "containers": [{
            "name": "tritonserver",
            "image": t.image,
            "command": ["tritonserver"],
            "args": triton_args(s),
            "env": [
                *s3_env(cfg.storage),
                secret_env("TRITON_ADMIN_KEY", t.admin_key_secret, "admin-key"),
            ],
            "ports": [
                {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            ],
            "resources": resources,
            "startupProbe": http_probe("/v2/health/ready", "http", 5, max(1, t.startup_timeout_s // 5)),
            "readinessProbe": http_probe("/v2/health/ready", "http", 5, 3),
            "livenessProbe": http_probe("/v2/health/live", "http", 10, 3),
            "securityContext": container_security(),
            # The S3 repository is copied to a local temp folder before loading: /tmp must be writable.
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}],
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(s.name)},
        }],
    }
    if s.gpu:
        pod_spec["nodeSelector"] = dict(t.gpu_node_selector)
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    annotations = {
        "recforge.io/variant": s.variant,
        "recforge.io/variant-run-id": s.variant_run_id,
        "recforge.io/onnx-sha256": s.onnx_sha256,
        "recforge.io/target-kind": s.target_kind,
        "recforge.io/latency-bounded-throughput-qps": f"{s.lbt_qps:g}",
        "recforge.io/sizing": json.dumps(s.basis, sort_keys=True),
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": s.name, "labels": labels, "annotations": annotations},
        "spec": {
            # No `replicas`: the HPA owns the count (a fixed value here would fight it on every apply).
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(s.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        # Prometheus scrapes the metrics port on the pod; the Service does not expose it.
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                        # A new model (sha) changes the pod template, so it rolls out (model control is none).
                        "recforge.io/onnx-sha256": s.onnx_sha256,
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": s.name, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": selector(s.name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": s.name, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": s.name},
            "minReplicas": s.min_replicas,
            "maxReplicas": s.max_replicas,
            "metrics": [
                # the law's target: each pod at the law's utilisation of its profiled capacity (items/s at LBT)
                {"type": "Pods", "pods": {
                    "metric": {"name": ITEMS_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(s.items_target_per_s)},
                }},
                # queueing means the capacity model is off (another mix, a slow node): scale on it too
                {"type": "Pods", "pods": {
                    "metric": {"name": QUEUE_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(s.queue_time_target_us)},
                }},
                # Backstop when the adapter is down: CPU against the instances x threads request.
                {"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 85}}},
            ],
            "behavior": hpa_behavior(cfg.control, t.hpa_sync_period_s, s.max_replicas),
        },
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": s.name, "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(s.name)}},
    }
    netpol = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": s.name, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": selector(s.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": dict(t.client_pod_labels)}}],
                 "ports": [{"protocol": "TCP", "port": HTTP_PORT}, {"protocol": "TCP", "port": GRPC_PORT}]},
                {"from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": t.prometheus_namespace}}}],
                 "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": False,
               "metadata": {"name": s.name, "labels": labels}}
    return [account, deployment, service, hpa, pdb, netpol]


def adapter_rule() -> dict:
    """prometheus-adapter rule: average queue time per request (us) of each Triton pod over the last minute.

    Both counters are cumulative per (model, version); the ratio of their rates is the mean time a request
    waited in the scheduler queue. clamp_min keeps an idle pod at 0 instead of NaN.
    """
    return {
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": QUEUE_METRIC},
        "metricsQuery": (
            "sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
            " / clamp_min(sum(rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>),"
            " 0.001)"
        ),
    }


def items_rule() -> dict:
    """prometheus-adapter rule: items (rows) each Triton pod inferred per second over the last minute
    (``nv_inference_count`` counts inferences, a batch of n rows as n)."""
    return {
        "seriesQuery": 'nv_inference_count{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_count$", "as": ITEMS_METRIC},
        "metricsQuery": "sum(rate(nv_inference_count{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)",
    }


def prometheus_adapter_values(cfg: DeployConfig) -> dict:
    return {
        "prometheus": {"url": f"http://prometheus-server.{cfg.triton.prometheus_namespace}.svc", "port": 80},
        "rules": {"default": False, "custom": [items_rule(), adapter_rule()]},
    }

