"""The generated Airflow Helm values (infra/k8s/generated/airflow-values.yaml): only keys the apache-airflow chart
1.22.x has, the local cluster's settings (profiling queue and its worker, scratch per worker pod, the nightly
schedule, the heartbeat timeout), worker pods that are valid Kubernetes, and both executors."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
import yaml

from recforge.core.errors import ConfigError
from recforge.serving import k8s
from recforge.serving.k8s.airflow_values import PROFILING_WORKER_SET
from recforge.tools.cluster.settings import DEFAULT_QUEUE, PROFILING_QUEUE, WORKERS, ClusterConfig
from tests.conftest import REPO

K8S_DIR = REPO / "infra" / "k8s"
CONFIG = K8S_DIR / "deploy.example.json"
VALUES = K8S_DIR / "generated" / "airflow-values.yaml"
K8S_VERSIONS = ("1.29.0", "1.37.0")

# The chart's values.schema.json cannot be vendored here (it is not ours to commit and no copy of the 1.22.0 tag
# could be fetched offline), so the keys we write are checked against this list, each taken from the chart's own
# material for 1.22.x:
#   P: Parameters reference, https://airflow.apache.org/docs/helm-chart/1.22.0/parameters-ref.html
#   W: "Customizing Workers", https://airflow.apache.org/docs/helm-chart/1.22.0/customizing-workers.html, and the
#      1.20.0/1.21.0 release notes moving worker keys under workers.celery / workers.kubernetes
#   S: the chart's worker-set tests, apache/airflow helm-tests/tests/helm_tests/airflow_core/test_worker_sets.py
#      (keys of workers.celery.sets[] and of workers.celery that a set overrides; sets added in #58547)
# "[]" is a list item. Subtrees below OPAQUE are checked otherwise: airflow.cfg options, and Kubernetes objects
# (validated as a Pod below).
CHART_KEYS = {
    "airflowVersion", "defaultAirflowRepository", "defaultAirflowTag", "executor",  # P (Common)
    "fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName",  # P (Airflow): Secrets holding the keys
    "data", "data.metadataSecretName", "data.resultBackendSecretName", "data.brokerUrlSecretName",  # P (Database)
    "postgresql", "postgresql.enabled",  # P (Database): the bundled PostgreSQL off
    "createUserJob", "createUserJob.defaultUser", "createUserJob.defaultUser.enabled",  # P (Jobs)
    "env", "env[]", "env[].name", "env[].value",  # P (Airflow): env of every Airflow container
    "secret", "secret[]", "secret[].envName", "secret[].secretName", "secret[].secretKey",  # P (Airflow)
    "dags", "dags.persistence", "dags.persistence.enabled", "dags.gitSync", "dags.gitSync.enabled",  # P (Airflow)
    "dags.gitSync.repo", "dags.gitSync.branch", "dags.gitSync.rev", "dags.gitSync.subPath", "dags.gitSync.depth",
    "dags.gitSync.period", "dags.gitSync.credentialsSecret",
    "config",  # P (Airflow): airflow.cfg sections
    "redis", "redis.enabled", "redis.passwordSecretName",  # P (Redis)
    "workers", "workers.celery", "workers.celery.enableDefault", "workers.celery.sets",  # S
    "workers.celery.sets[]", "workers.celery.sets[].name", "workers.celery.sets[].replicas",  # S
    "workers.celery.sets[].args", "workers.celery.sets[].resources",  # S
    "workers.celery.sets[].extraVolumes", "workers.celery.sets[].extraVolumeMounts",  # S
    "workers.kubernetes", "workers.kubernetes.resources",  # W
    "workers.kubernetes.extraVolumes", "workers.kubernetes.extraVolumeMounts",  # W (1.21.0: #64746)
}
OPAQUE = ("config", "resources", "extraVolumes", "extraVolumeMounts", "args")


def key_paths(value, path: str = ""):
    """Every key path of a values document ("a.b", "a[]" for list items), not descending into OPAQUE subtrees."""
    if path.rsplit(".", 1)[-1] in OPAQUE:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else key
            yield child_path
            yield from key_paths(child, child_path)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                yield f"{path}[]"
                yield from key_paths(item, f"{path}[]")


def unknown_keys(values: dict) -> list[str]:
    return sorted(set(key_paths(values)) - CHART_KEYS)


def render_values(tmp_path, **airflow) -> dict:
    config = json.loads(CONFIG.read_text())
    config["airflow"].update(airflow)
    work = tmp_path / "k8s"
    (work / "example-profiles").mkdir(parents=True)
    for src in (K8S_DIR / "example-profiles").glob("*.json"):
        (work / "example-profiles" / src.name).write_text(src.read_text())
    return yaml.safe_load(k8s.render(k8s.deploy_config_from_dict(config, base_dir=work))["airflow-values.yaml"])


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def kubernetes_values(tmp_path_factory) -> dict:
    return render_values(tmp_path_factory.mktemp("kube"), executor="KubernetesExecutor")


def env_of(values: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in values["env"]}


def worker_sets(values: dict) -> dict[str, dict]:
    return {s["name"]: s for s in values["workers"]["celery"]["sets"]}


def worker_pod(values: dict, worker: dict) -> dict:
    """The parts of a worker pod the values set, as a Pod (what the chart puts around them is its own)."""
    container = {"name": "worker", "image": f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}",
                 "resources": worker["resources"], "volumeMounts": worker["extraVolumeMounts"], "env": values["env"]}
    if "args" in worker:
        container["args"] = worker["args"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
            "spec": {"containers": [container], "volumes": worker["extraVolumes"]}}


# --------------------------------------------------------------------------------------------------------------
# Only keys the chart has


def test_every_key_written_is_a_chart_1_22_key(values, kubernetes_values):
    assert unknown_keys(values) == []
    assert unknown_keys(kubernetes_values) == []
    assert k8s.deploy_config_from_dict(json.loads(CONFIG.read_text())).airflow.chart_version.startswith("1.22.")


@pytest.mark.parametrize(("mutate", "unknown"), [
    (lambda v: v["workers"]["celery"].update(set=[]), "workers.celery.set"),  # misspelt: sets
    (lambda v: v["workers"]["celery"]["sets"][0].update(queues="default"), "workers.celery.sets[].queues"),
    (lambda v: v.update(webserver={"replicas": 1}), "webserver"),  # the Airflow 2 chart's section
    (lambda v: v["dags"]["gitSync"].update(credentialSecret="x"), "dags.gitSync.credentialSecret"),
])
def test_the_key_check_catches_keys_the_chart_does_not_have(values, mutate, unknown):
    broken = copy.deepcopy(values)
    mutate(broken)
    assert unknown_keys(broken)[0] == unknown


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_worker_pods_are_valid_kubernetes(values, kubernetes_values, version):
    workers = [*worker_sets(values).values(), kubernetes_values["workers"]["kubernetes"]]
    for worker in workers:
        pod = worker_pod(values, worker)
        kubernetes_validate.validate(pod, version, strict=True)
        mounted = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounted <= {v["name"] for v in pod["spec"]["volumes"]}


# --------------------------------------------------------------------------------------------------------------
# The local cluster's settings (recforge/tools/cluster, docs/cluster.md)


def test_profiling_queue_has_its_own_worker_with_dedicated_cpus(values):
    env = env_of(values)
    assert env["RECFORGE_PROFILING_QUEUE"] == PROFILING_QUEUE  # what dags/profile_variants.py reads
    sets = worker_sets(values)
    assert set(sets) == {"default", PROFILING_WORKER_SET} and values["workers"]["celery"]["enableDefault"] is False
    # the local cluster: the worker serving `profiling` runs one task at a time; the other serves only `default`
    (local_profiling,) = [w for w in WORKERS if PROFILING_QUEUE in w.queues]
    (local_default,) = [w for w in WORKERS if w.queues == (DEFAULT_QUEUE,)]
    profiling_command = sets[PROFILING_WORKER_SET]["args"][-1].split()
    assert profiling_command[-4:] == ["--queues", PROFILING_QUEUE, "--concurrency", str(local_profiling.concurrency)]
    default_command = sets["default"]["args"][-1].split()
    assert default_command[-4:] == ["--queues", DEFAULT_QUEUE, "--concurrency", str(local_default.concurrency)]
    assert values["config"]["operators"]["default_queue"] == DEFAULT_QUEUE
    assert sets[PROFILING_WORKER_SET]["replicas"] == 1 and sets["default"]["replicas"] >= 1
    resources = sets[PROFILING_WORKER_SET]["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS: never squeezed by a neighbour
    assert resources["limits"]["cpu"].isdigit()  # whole cores: exclusive under the static CPU manager


def test_every_worker_pod_has_its_own_scratch_under_recforge_home(values, kubernetes_values):
    env = env_of(values)
    home, work = env["RECFORGE_HOME"], env["RECFORGE_WORK_DIR"]
    assert work.startswith(home + "/")
    for worker in [*worker_sets(values).values(), kubernetes_values["workers"]["kubernetes"]]:
        (volume,) = worker["extraVolumes"]
        assert set(volume) == {"name", "emptyDir"} and volume["emptyDir"]["sizeLimit"].endswith("Gi")
        assert worker["extraVolumeMounts"] == [{"name": volume["name"], "mountPath": home}]
    # tasks share only URIs: the data root is object storage, artifacts go through MLflow's proxy
    assert env["RECFORGE_DATA_ROOT"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.")


def test_nightly_schedule_and_heartbeat_timeout(values):
    from airflow.timetables.interval import CronDataIntervalTimetable

    schedule = env_of(values)["RECFORGE_NIGHTLY_SCHEDULE"]
    CronDataIntervalTimetable(schedule, timezone="UTC")  # what dags/nightly_retrain.py builds from it
    timeout = values["config"]["scheduler"]["task_instance_heartbeat_timeout"]
    assert timeout == str(ClusterConfig().task_heartbeat_timeout_s)


def test_schedule_none_and_other_settings_follow_the_config(tmp_path):
    values = render_values(tmp_path, nightly_schedule="none", profiling_queue="loadtest", profiling_cpus=4,
                           workers=3, worker_concurrency=4, scratch_gi=20)
    env = env_of(values)
    assert env["RECFORGE_NIGHTLY_SCHEDULE"] == "none" and env["RECFORGE_PROFILING_QUEUE"] == "loadtest"
    sets = worker_sets(values)
    assert sets[PROFILING_WORKER_SET]["args"][-1].endswith("--queues loadtest --concurrency 1")
    assert sets[PROFILING_WORKER_SET]["resources"]["limits"]["cpu"] == "4"
    assert sets["default"]["replicas"] == 3 and sets["default"]["args"][-1].endswith("--concurrency 4")
    assert sets["default"]["extraVolumes"][0]["emptyDir"]["sizeLimit"] == "20Gi"


@pytest.mark.parametrize(("airflow", "message"), [
    ({"nightly_schedule": "every night"}, "AirflowConfig.nightly_schedule"),
    ({"nightly_schedule": "0 2 * *"}, "AirflowConfig.nightly_schedule"),
    ({"profiling_queue": DEFAULT_QUEUE}, "AirflowConfig.profiling_queue must differ"),
    ({"profiling_queue": "a queue"}, "AirflowConfig.profiling_queue"),
    ({"profiling_cpus": 0}, "AirflowConfig.profiling_cpus"),
])
def test_bad_airflow_settings_are_refused_in_one_line(tmp_path, airflow, message):
    with pytest.raises(ConfigError, match=message) as err:
        render_values(tmp_path, **airflow)
    assert "\n" not in str(err.value)


def test_kubernetes_executor_gives_every_task_pod_dedicated_cpus_and_no_queue(kubernetes_values):
    assert kubernetes_values["executor"] == "KubernetesExecutor"
    assert set(kubernetes_values["workers"]) == {"kubernetes"}
    resources = kubernetes_values["workers"]["kubernetes"]["resources"]
    assert resources["requests"] == resources["limits"]
    env = env_of(kubernetes_values)
    assert "RECFORGE_PROFILING_QUEUE" not in env and env["RECFORGE_NIGHTLY_SCHEDULE"]
    assert "operators" not in kubernetes_values["config"]


def test_mlflow_serves_the_artifacts_through_its_proxy():
    mlflow = next(d for d in yaml.safe_load_all((K8S_DIR / "generated" / "mlflow.yaml").read_text())
                  if d and d["kind"] == "Deployment")
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--serve-artifacts" in args
    assert args[args.index("--artifacts-destination") + 1].startswith("s3://")
