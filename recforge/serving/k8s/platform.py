"""The platform around the fleets: MLflow's objects, the namespace, and the PostgreSQL chart's Helm values (Airflow's:
``airflow_values``)."""

from __future__ import annotations

from recforge.serving.k8s.deploy_config import DeployConfig
from recforge.serving.k8s.objects import (
    MLFLOW_PORT,
    PART_OF,
    container_security,
    http_probe,
    object_labels,
    s3_env,
    secret_env,
    selector,
)


def mlflow_manifests(cfg: DeployConfig) -> list[dict]:
    m, storage, ns = cfg.mlflow, cfg.storage, cfg.namespace
    name = "mlflow"
    labels = object_labels(name, "tracking")
    artifacts = f"s3://{m.artifacts_bucket}/{m.artifacts_prefix}".rstrip("/")
    env = [
        # Read by `mlflow server` itself (click envvar): the URI with its password never appears in args.
        secret_env("MLFLOW_BACKEND_STORE_URI", m.backend_store_secret, "uri"),
        *s3_env(storage),
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ]
    if storage.s3_endpoint:
        env.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": storage.s3_endpoint})
    allowed_hosts = ",".join([name, f"{name}:{MLFLOW_PORT}", f"{name}.{ns}", f"{name}.{ns}:{MLFLOW_PORT}",
                              f"{name}.{ns}.svc", f"{name}.{ns}.svc:{MLFLOW_PORT}",
                              f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}.svc.cluster.local:{MLFLOW_PORT}",
                              "localhost:*", "10.*", "172.*", "192.168.*"])
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": m.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(name)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                        "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "mlflow",
                        "image": m.image,
                        "command": ["mlflow", "server"],
                        "args": [
                            # Inside the pod the server listens on all interfaces so the Service can reach it.
                            "--host", "0.0.0.0", "--port", str(MLFLOW_PORT), "--workers", str(m.workers),
                            "--serve-artifacts", "--artifacts-destination", artifacts,
                            "--allowed-hosts", allowed_hosts,
                        ],
                        "env": env,
                        "ports": [{"name": "http", "containerPort": MLFLOW_PORT, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "2Gi"}},
                        "startupProbe": http_probe("/health", "http", 5, 60),
                        "readinessProbe": http_probe("/health", "http", 10, 3),
                        "livenessProbe": http_probe("/health", "http", 20, 3),
                        "securityContext": container_security(),
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": selector(name),
                 "ports": [{"name": "http", "port": MLFLOW_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}}
    netpol = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podSelector": {"matchLabels": selector(name)}, "policyTypes": ["Ingress"],
                 # Airflow workers and people port-forwarding from inside the namespace.
                 "ingress": [{"from": [{"podSelector": {}}],
                              "ports": [{"protocol": "TCP", "port": MLFLOW_PORT}]}]},
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": False,
               "metadata": {"name": name, "labels": labels}}
    return [account, deployment, service, pdb, netpol]


def namespace_manifest(cfg: DeployConfig) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": cfg.namespace, "labels": {
                "app.kubernetes.io/part-of": PART_OF,
                # Triton and MLflow pods meet "restricted"; the Airflow chart's pods meet "baseline".
                "pod-security.kubernetes.io/enforce": "baseline",
                "pod-security.kubernetes.io/warn": "restricted"}}}


def postgresql_values(cfg: DeployConfig) -> dict:
    """Bitnami PostgreSQL chart values: MLflow's database (Airflow's via the init script), passwords from Secrets."""
    p = cfg.postgresql
    return {
        "auth": {"username": "mlflow", "database": "mlflow", "existingSecret": p.auth_secret,
                 "secretKeys": {"adminPasswordKey": "postgres-password", "userPasswordKey": "password"}},
        "primary": {
            "initdb": {"scriptsSecret": p.initdb_secret},
            "persistence": {"enabled": True, "size": f"{p.storage_gi}Gi"},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        },
    }

