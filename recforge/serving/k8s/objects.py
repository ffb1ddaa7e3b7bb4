"""Pieces every generated manifest shares: ports, labels, Secret-backed env vars, probes, container security."""

from __future__ import annotations

import re

from recforge.serving.k8s.deploy_config import StorageConfig

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MLFLOW_PORT = 5000
# Name of the pods metric that prometheus-adapter serves from Triton's queue-time counters (see _adapter_rule).
QUEUE_METRIC = "triton_queue_time_per_request_us"
# Name of the pods metric served from Triton's inference count: items (rows) inferred per second.
ITEMS_METRIC = "triton_items_per_second"
# Header that unlocks Triton's restricted APIs inside the pod; its value comes from a Secret.
ADMIN_HEADER = "recforge-admin-key"
# APIs nobody outside the pod needs; health, metadata and inference stay open to the Service's clients.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
PART_OF = "recforge"


def object_labels(name: str, component: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PART_OF, **extra}


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def s3_env(storage: StorageConfig) -> list[dict]:
    env = [
        secret_env("AWS_ACCESS_KEY_ID", storage.credentials_secret, "AWS_ACCESS_KEY_ID"),
        secret_env("AWS_SECRET_ACCESS_KEY", storage.credentials_secret, "AWS_SECRET_ACCESS_KEY"),
        {"name": "AWS_DEFAULT_REGION", "value": storage.region},
    ]
    return env


def container_security() -> dict:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def http_probe(path: str, port: str, period: int, failures: int, timeout: int = 2) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def label_value(value: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")
    return out

