"""Kubernetes manifests generated from profiles: offline schema validation (kubernetes-validate, strict), policy
checks, derivation from the profile, and the generated Triton arguments run by the real tritonserver."""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from recforge.core.errors import ConfigError
from recforge.serving import k8s
from recforge.serving.k8s import cli as k8s_cli
from tests.conftest import REPO, free_port

K8S_DIR = REPO / "infra" / "k8s"
CONFIG = K8S_DIR / "deploy.example.json"
GENERATED = K8S_DIR / "generated"
# Oldest and newest Kubernetes minor versions the manifests are checked against (autoscaling/v2 is GA in 1.23).
K8S_VERSIONS = ("1.29.0", "1.37.0")
HELM_VALUES = ("airflow-values.yaml", "postgresql-values.yaml", "prometheus-adapter-values.yaml")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[tuple[str, dict]]:
    kustomization = _docs(GENERATED / "kustomization.yaml")[0]
    return [(name, doc) for name in kustomization["resources"] for doc in _docs(GENERATED / name)]


def _of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def _containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _triton_deployments() -> list[dict]:
    return [d for d in _of_kind("Deployment") if d["metadata"]["name"].startswith("triton-")]


def _render(tmp_path: Path, edit_profile=None, edit_config=None) -> dict[str, str]:
    """Render the example config from a copy, after editing the wide_deep CPU profile and/or the config."""
    work = tmp_path / "k8s"
    (work / "example-profiles").mkdir(parents=True)
    for src in (K8S_DIR / "example-profiles").glob("*.json"):
        doc = json.loads(src.read_text())
        if edit_profile and src.name == "wide_deep-int8-cpu-triton.json":
            edit_profile(doc)
        (work / "example-profiles" / src.name).write_text(json.dumps(doc))
    config = json.loads(CONFIG.read_text())
    if edit_config:
        edit_config(config)
    return k8s.render(k8s.deploy_config_from_dict(config, base_dir=work))


def _cpu_fleet(files: dict[str, str]) -> list[dict]:
    return [d for d in yaml.safe_load_all(files["triton-wide-deep-cpu-8c.yaml"]) if d]


def _kind(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


# --------------------------------------------------------------------------------------------------------------
# The committed output is what the generator makes, and it is valid Kubernetes


def test_committed_manifests_are_up_to_date():
    files = k8s.render(k8s.load_deploy_config(CONFIG), source=CONFIG.name)
    committed = {p.name for p in GENERATED.iterdir() if p.is_file() and p.suffix in (".yaml", ".json")}
    assert committed == set(files), "run `make k8s-manifests` and commit infra/k8s/generated"
    for name, text in files.items():
        assert (GENERATED / name).read_text() == text, f"{name} is stale: run `make k8s-manifests`"


def test_kustomization_lists_every_manifest_and_no_helm_values():
    kustomization = _docs(GENERATED / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == "recforge"
    manifests = {p.name for p in GENERATED.glob("*.yaml")} - {"kustomization.yaml", *HELM_VALUES}
    assert set(kustomization["resources"]) == manifests
    for name in manifests:
        assert all(doc.get("apiVersion") and doc.get("kind") for doc in _docs(GENERATED / name))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version):
    checked = set()
    for _name, doc in _manifests():
        # strict: additionalProperties are errors, so a misspelt field fails instead of being dropped by the API.
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"Namespace", "ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy"} <= checked


@pytest.mark.parametrize("mutate", [
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),  # misspelt field
    lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="8000"),  # type
    lambda d: d["spec"].pop("selector"),  # required field
])
def test_the_schema_check_catches_broken_manifests(mutate):
    deployment = copy.deepcopy(_triton_deployments()[0])
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_yaml_lint():
    for path in sorted(GENERATED.glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# Generated by"), path.name
        for i, line in enumerate(text.splitlines(), 1):
            assert "\t" not in line and line == line.rstrip(), f"{path.name}:{i}: tab or trailing space"
        assert not re.search(r"[&*]id\d+", text), f"{path.name}: YAML anchors/aliases"
        assert _docs(path), path.name


# --------------------------------------------------------------------------------------------------------------
# Policies


def test_every_container_has_resources_and_probes():
    deployments = _of_kind("Deployment")
    assert {d["metadata"]["name"] for d in deployments} >= {"mlflow", "triton-wide-deep-cpu-8c"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in _containers(deployment):
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), container["name"]
            assert container["readinessProbe"]["httpGet"]["path"]
            assert container["livenessProbe"]["httpGet"]["path"]
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["image"] and ":" in container["image"]  # pinned tag, never implicit latest


def test_triton_pods_probe_triton_health_and_repository_comes_from_s3():
    deployments = _triton_deployments()
    assert len(deployments) == 3
    for deployment in deployments:
        (container,) = _containers(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
        for probe, path in (("readinessProbe", "/v2/health/ready"), ("startupProbe", "/v2/health/ready"),
                            ("livenessProbe", "/v2/health/live")):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}
        args = container["args"]
        assert any(a.startswith("--model-repository=s3://") for a in args)
        assert "--model-control-mode=none" in args
        restricted = [a for a in args if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
        assert len(restricted) == 2 and all("model-repository" in a for a in restricted)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
        assert "replicas" not in deployment["spec"]  # the HPA owns it


def test_services_expose_only_inference_ports_inside_the_cluster():
    services = _of_kind("Service")
    assert services
    for service in services:
        assert service["spec"]["type"] == "ClusterIP"
        ports = {p["port"] for p in service["spec"]["ports"]}
        if service["metadata"]["name"].startswith("triton-"):
            assert ports == {8000, 8001}  # no metrics port (8002) and nothing else
        else:
            assert ports == {5000}
    for policy in _of_kind("NetworkPolicy"):
        if policy["metadata"]["name"].startswith("triton-"):
            metrics_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8002)
            assert "namespaceSelector" in metrics_rule["from"][0]  # Prometheus' namespace only


def test_hpa_targets_its_deployment_on_the_adapter_metrics():
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    adapter = _docs(GENERATED / "prometheus-adapter-values.yaml")[0]
    items, queue = adapter["rules"]["custom"]
    assert "nv_inference_count" in items["seriesQuery"] and "rate(nv_inference_count" in items["metricsQuery"]
    assert "nv_inference_queue_duration_us" in queue["seriesQuery"]
    assert "nv_inference_request_success" in queue["metricsQuery"]
    hpas = _of_kind("HorizontalPodAutoscaler")
    assert len(hpas) == len(_triton_deployments())
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments and ref["name"] == hpa["metadata"]["name"]
        pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods_metrics == [items["name"]["as"], queue["name"]["as"]]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for pdb in _of_kind("PodDisruptionBudget"):
        selected = deployments[pdb["metadata"]["name"]]["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["selector"]["matchLabels"] == selected


def test_the_hpa_follows_the_control_laws_parameters(tmp_path):
    """The HPA's items/s target is the profile's items/s at LBT x the law's utilisation; its scale-down window and
    step are the law's; scale-up is not rate-limited (the law jumps to its forecast). A control section in the
    deployment config changes them."""
    from recforge.serving.elastic.control import ControlConfig

    def hpa_of(cfg):
        (doc,) = [d for name, text in k8s.render(cfg, source="x").items() if name.startswith("triton-wide-deep-cpu")
                  for d in yaml.safe_load_all(text) if d and d["kind"] == "HorizontalPodAutoscaler"]
        return doc["spec"]

    profile = json.loads((CONFIG.parent / "example-profiles/wide_deep-int8-cpu-triton.json").read_text())
    law = ControlConfig()
    spec = hpa_of(k8s.load_deploy_config(CONFIG))
    items = spec["metrics"][0]["pods"]
    assert items["target"] == {"type": "AverageValue",
                               "averageValue": str(round(profile["items_per_s"] * law.target_utilisation))}
    down, up = spec["behavior"]["scaleDown"], spec["behavior"]["scaleUp"]
    assert down["stabilizationWindowSeconds"] == law.scale_down_window_s
    assert {"type": "Percent", "value": round(law.scale_down_step * 100), "periodSeconds": 15} in down["policies"]
    assert up["stabilizationWindowSeconds"] == 0 and up["policies"][0]["value"] == spec["maxReplicas"]

    raw = json.loads(CONFIG.read_text())
    raw["control"] = {"target_utilisation": 0.5, "scale_down_window_s": 120, "scale_down_step": 0.25}
    raw["triton"]["hpa_sync_period_s"] = 30
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(raw))
    for name in ("example-profiles",):
        (tmp_path / name).symlink_to(CONFIG.parent / name)
    spec = hpa_of(k8s.load_deploy_config(path))
    assert spec["metrics"][0]["pods"]["target"]["averageValue"] == str(round(profile["items_per_s"] * 0.5))
    down = spec["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 120
    assert down["policies"] == [{"type": "Percent", "value": 25, "periodSeconds": 30},
                                {"type": "Pods", "value": 1, "periodSeconds": 30}]
    raw["control"] = {"scale_down_step": 0}
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="scale_down_step"):
        k8s.load_deploy_config(path)


def test_gpu_fleet_asks_for_a_gpu_and_cpu_fleets_do_not():
    by_name = {d["metadata"]["name"]: d for d in _triton_deployments()}
    gpu = by_name["triton-wide-deep-gpu-t4"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] and gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = by_name["triton-wide-deep-cpu-8c"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"] and "nodeSelector" not in cpu


SECRET_NAMES = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY$|_URI$|_URL$|CONNECTION)", re.I)


def _walk(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))
    else:
        yield path, value


def _secret_problems(name: str, text: str) -> list[str]:
    """Literal credentials in one generated file: URLs with user:password, AWS key ids, password-like keys with
    values, and sensitive env vars given a value instead of a secretKeyRef."""
    problems = []
    if re.search(r"://[^/\s:@]*:[^/\s@]+@", text):
        problems.append(f"{name}: credentials in a URL")
    if re.search(r"AKIA[0-9A-Z]{16}", text):
        problems.append(f"{name}: an AWS access key id")
    scrubbed = (text.replace("passwordSecretName", "").replace("PasswordKey", "").replace("secretKeyRef", "")
                .replace("secretKey: AWS_", ""))
    if re.search(r"(?i)\b(password|passwd|secretKey|fernetKey|token)\s*[:=]\s*['\"]?[^\s'\"{}~]+", scrubbed):
        problems.append(f"{name}: a password-like key with a value")
    if name.endswith(".yaml"):
        for doc in (d for d in yaml.safe_load_all(text) if d):
            for path, value in _walk(doc):
                env_name = _env_name(doc, path) if path and path[-1] == "value" else None
                if env_name and SECRET_NAMES.search(env_name) and not (
                        env_name.endswith(("_ENDPOINT_URL", "_URL_S3", "TRACKING_URI")) and "@" not in str(value)):
                    problems.append(f"{name}: env {env_name} has a literal value")
    return problems


def test_no_literal_secrets_anywhere():
    texts = {p.name: p.read_text() for p in GENERATED.iterdir() if p.is_file()}
    texts["deploy.example.json"] = CONFIG.read_text()
    for name, text in texts.items():
        assert _secret_problems(name, text) == []


@pytest.mark.parametrize("text", [
    "env:\n- name: DB_PASSWORD\n  value: hunter2\n",
    "env:\n- name: MLFLOW_BACKEND_STORE_URI\n  value: postgresql://db/mlflow\n",
    "data:\n  brokerUrl: redis://:s3cret@redis:6379/0\n",
    "redis:\n  password: s3cret\n",
    "fernetKey: abcdefg\n",
    "aws: AKIAABCDEFGHIJKLMNOP\n",
])
def test_the_secret_scan_catches_literal_credentials(text):
    assert _secret_problems("bad.yaml", text)


def _env_name(doc, path):
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node.get("name") if isinstance(node, dict) else None


def test_airflow_and_postgres_values_reference_existing_secrets():
    airflow = _docs(GENERATED / "airflow-values.yaml")[0]
    assert airflow["executor"] in ("CeleryExecutor", "KubernetesExecutor")
    assert airflow["postgresql"]["enabled"] is False
    assert airflow["createUserJob"]["defaultUser"]["enabled"] is False
    assert airflow["dags"]["gitSync"]["enabled"] is True and airflow["dags"]["gitSync"]["credentialsSecret"]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert airflow[key]
    assert airflow["data"]["metadataSecretName"] and "metadataConnection" not in airflow["data"]
    assert airflow["redis"]["passwordSecretName"] and "password" not in airflow["redis"]
    postgres = _docs(GENERATED / "postgresql-values.yaml")[0]
    assert postgres["auth"]["existingSecret"] and "password" not in postgres["auth"]
    mlflow = next(d for d in _of_kind("Deployment") if d["metadata"]["name"] == "mlflow")
    (container,) = _containers(mlflow)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"] == "uri"
    assert "--backend-store-uri" not in container["args"]
    assert container["args"][container["args"].index("--artifacts-destination") + 1].startswith("s3://")


def test_kubernetes_executor_drops_celery_secrets(tmp_path):
    files = _render(tmp_path, edit_config=lambda c: c["airflow"].update(executor="KubernetesExecutor"))
    values = yaml.safe_load(files["airflow-values.yaml"])
    assert values["executor"] == "KubernetesExecutor" and values["redis"] == {"enabled": False}
    assert "brokerUrlSecretName" not in values["data"]


# --------------------------------------------------------------------------------------------------------------
# Values come from the profile


def test_cpu_and_replicas_follow_the_profile(tmp_path):
    base = _cpu_fleet(_render(tmp_path / "a"))
    deployment = _kind(base, "Deployment")
    assert _containers(deployment)[0]["resources"]["requests"]["cpu"] == "6500m"  # 3 instances x 2 threads + 0.5
    assert _kind(base, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 12  # ceil(2000 / (240 x 0.7))

    def more_instances_faster(doc):
        doc["search"]["best_knobs"]["instances"] = 4
        doc["target"]["threads"] = 1
        doc["latency_bounded_throughput_qps"] = 480.0

    changed = _cpu_fleet(_render(tmp_path / "b", edit_profile=more_instances_faster))
    assert _containers(_kind(changed, "Deployment"))[0]["resources"]["limits"]["cpu"] == "4500m"
    assert _kind(changed, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 6  # ceil(2000 / (480 x 0.7))
    args = _containers(_kind(changed, "Deployment"))[0]["args"]
    assert args == _containers(deployment)[0]["args"]  # same repository path: same family and target


def test_slo_sets_the_hpa_queue_time_target(tmp_path):
    def stricter(config):
        config["p95_slo_ms"] = 40  # the profiles' 25 ms meets it; the HPA target scales with the SLO
    hpa = _kind(_cpu_fleet(_render(tmp_path, edit_config=stricter)), "HorizontalPodAutoscaler")
    pods = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods" and
                m["pods"]["metric"]["name"] == k8s.QUEUE_METRIC)
    assert pods["pods"]["target"]["averageValue"] == "8000"  # 0.2 x 40 ms in us


@pytest.mark.parametrize(("edit_profile", "edit_config", "message"), [
    (lambda d: d.update(latency_bounded_throughput_qps=0.0), None, "LBT 0"),
    (None, lambda c: c.update(p95_slo_ms=10), "looser than the deployment SLO"),
    (None, lambda c: c["fleets"].append(dict(c["fleets"][0])), "same (family, target)"),
    (None, lambda c: c["fleets"][0].update(peak_qps=1e6), "max_replicas_cap"),
    (None, lambda c: c.update(replicas=3), "unknown key"),
    (None, lambda c: c["triton"].update(gpu_node_selector=["gpu"]), "gpu_node_selector"),
    (None, lambda c: c["storage"].update(s3_endpoint="minio:9000"), "s3_endpoint"),
    (lambda d: d["target"].pop("threads"), None, "invalid profile"),
])
def test_bad_inputs_are_refused_with_a_clear_error(tmp_path, edit_profile, edit_config, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _render(tmp_path, edit_profile=edit_profile, edit_config=edit_config)


def test_cli_writes_the_manifests_and_reports_errors_on_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert k8s_cli.main(["--config", str(CONFIG), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fleets"]["triton-wide-deep-cpu-8c"] == {"replicas": "2..12", "cpu": "6500m", "gpu": False}
    assert (out / "kustomization.yaml").read_text() == (GENERATED / "kustomization.yaml").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"namespace": "Not_A_Label", "fleets": []}))
    assert k8s_cli.main(["--config", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------------------
# The generated Triton arguments, run by the real tritonserver


def test_real_tritonserver_accepts_the_generated_args_and_hides_the_repository_api(tmp_path):
    from recforge.inference.triton import server_env, tritonserver_binary

    (container,) = _containers(_triton_deployments()[0])
    key = secrets.token_hex(8)
    http, grpc, metrics = free_port(), free_port(), free_port()
    ports = {"--http-port": http, "--grpc-port": grpc, "--metrics-port": metrics}
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        if flag == "--model-repository":  # S3 is not reachable here: an empty local repository
            arg = f"--model-repository={tmp_path / 'repo'}"
        elif flag in ports:
            arg = f"{flag}={ports[flag]}"
        args.append(arg.replace("$(TRITON_ADMIN_KEY)", key))  # what the kubelet does from the Secret
    (tmp_path / "repo").mkdir()
    cmd = [str(tritonserver_binary()), *args, "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
           "--metrics-address=127.0.0.1", f"--backend-directory={tmp_path / 'backends'}"]
    log = open(tmp_path / "triton.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-2000:]
            try:
                ready = requests.get(base + container["readinessProbe"]["httpGet"]["path"], timeout=2)
                if ready.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "tritonserver not ready in 60 s"
            time.sleep(0.3)
        assert requests.get(base + container["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        # Through the Service, without the in-pod header: the repository API is refused.
        assert requests.post(base + "/v2/repository/index", timeout=5).status_code == 403
        assert requests.get(base + "/v2/models/stats", timeout=5).status_code == 403
        # With the header (only inside the pod): readable, but model control `none` refuses to load anything.
        assert requests.post(base + "/v2/repository/index", headers={k8s.ADMIN_HEADER: key}, timeout=5).ok
        load = requests.post(base + "/v2/repository/models/x/load", headers={k8s.ADMIN_HEADER: key}, timeout=5)
        assert load.status_code >= 400
        assert requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).ok
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
