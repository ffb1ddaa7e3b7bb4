"""The whole chain through the cluster's scheduler on its two Celery workers, and the faults of issue 17: every
task's scratch folder deleted when it ends, a worker SIGKILLed in the middle of a training task, Redis restarted
mid-run, the same logical date triggered twice, PostgreSQL unreachable when the chain starts.

One cluster for the module (real PostgreSQL, Redis, MLflow, Airflow with the CeleryExecutor, two workers) on free
ports, with a small chain: one family trained for one epoch on a few thousand rows, one precision, one profiled
target with a short load test (the cluster's DAG param defaults, ``dag_params``), retries after at most 5 s.
The tests run in file order: the chain of the first is what the second triggers again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from recforge.contracts import tags
from recforge.core.ports import free_ports
from recforge.tools.chain import AirflowApi
from recforge.tools.cluster.processes import marked_processes, running_pid
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CLUSTER_SH = REPO / "infra/cluster/cluster.sh"
WORKER_NAMES = ("worker1", "worker2")
FAMILY = "dlrm"
CHAINED_DAY = "1998-04-22"  # the day of the module's first whole chain (fixture first_chain), then triggered again
NIGHTLY_CONF = {"families": [FAMILY], "train_config": {"max_epochs": 1, "max_train_rows": 3000}}
SMALL_CHAIN = {  # the downstream DAGs run asset-triggered, with their params' defaults: these, in this cluster
    "compress_and_validate": {"compress_config": {"prune_ratios": [], "student": False,
                                                  "precisions": ["int8_dynamic"], "latency_repeats": 3,
                                                  "parity_rows": 256}},
    "profile_variants": {"targets": ["cpu-onnxruntime"], "stage_config": {"max_variants_per_family": 1},
                         "profile_config": {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400,
                                            "max_steps": 4, "tolerance": 0.5, "min_sub_batch": 64,
                                            "max_sub_batch": 128, "max_evaluations": 2, "latency_batches": [1, 64],
                                            "latency_repeats": 3}},
}
CHAIN_TIMEOUT_S = 720


class Cluster:
    """The module's cluster: its environment, folders, Airflow API and MLflow client."""

    def __init__(self, env: dict):
        self.env = env
        self.root = Path(env["RECFORGE_HOME"]) / "cluster"
        self.cfg = json.loads((self.root / "cluster.json").read_text())
        self.secrets = json.loads((self.root / "secrets.json").read_text())

    def api(self) -> AirflowApi:
        return AirflowApi(f"http://127.0.0.1:{self.cfg['airflow_port']}", self.secrets["airflow_admin_password"])

    def mlflow(self):
        import mlflow

        return mlflow.MlflowClient(f"http://127.0.0.1:{self.cfg['mlflow_port']}")

    def scratch_events(self, worker: str) -> list[dict]:
        path = self.root / "workers" / worker / "scratch.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def running_on(self, label_prefix: str, since: float) -> str | None:
        """The worker whose scratch holds the folder of a running task whose label starts with ``label_prefix``,
        created at ``since`` (time.time()) or later: an earlier test's chain has tasks of the same label, and a killed
        worker's last folder has a "created" line and no "deleted" one."""
        for worker in WORKER_NAMES:
            events = [e for e in self.scratch_events(worker) if e["at"] >= since]
            created = {e["dir"] for e in events if e["event"] == "created" and e["task"].startswith(label_prefix)}
            if created - {e["dir"] for e in events if e["event"] == "deleted"}:
                return worker
        return None

    def worker_pidfile(self, worker: str) -> Path:
        return self.root / "workers" / worker / "worker.pid"


def cluster_sh(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def start_chain(env: dict, day: str, conf: dict = NIGHTLY_CONF) -> subprocess.Popen:
    return subprocess.Popen([str(CLUSTER_SH), "chain", "--date", day, "--conf", json.dumps(conf),
                             "--timeout", str(CHAIN_TIMEOUT_S)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(chain: subprocess.Popen) -> str:
    out, _ = chain.communicate(timeout=CHAIN_TIMEOUT_S + 120)
    print(out)  # the per-DAG table: state and wall time of each DAG of the chain
    return out


def wait_for(what: str, condition, timeout_s: float, chain: subprocess.Popen | None = None, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (found := condition()):
            return found
        if chain is not None and chain.poll() is not None:
            pytest.fail(f"the chain ended before {what}: {chain.stdout.read()}")
        time.sleep(poll_s)
    pytest.fail(f"no {what} within {timeout_s:.0f} s")


def chain_runs(out: str) -> dict[str, list[str]]:
    """{dag_id: run ids} from the chain's table."""
    runs = {}
    for dag_id in ("nightly_retrain", "compress_and_validate", "profile_variants", "register_models"):
        line = re.search(rf"^  {dag_id}\s+(\S+)\s+.*?s  (.+)$", out, re.M)
        runs[dag_id] = line.group(2).split(", ") if line else []
    return runs


def parent_run(client, day: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{tags.AIRFLOW_RUN_ID}` = 'chain__{day}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def training_runs(client, parent, view=None):
    from mlflow.entities import ViewType

    return client.search_runs(
        [parent.info.experiment_id], run_view_type=view or ViewType.ACTIVE_ONLY,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{tags.FAMILY}` = '{FAMILY}' "
                      f"and tags.`{tags.STAGE}` = 'train'")


def assert_no_duplicates(client, day: str) -> None:
    """One training run of the family under the night's parent, one variant run per variant name under it, one
    registry version per (variant run, target)."""
    trained = training_runs(client, parent_run(client, day))
    assert len(trained) == 1 and trained[0].info.status == "FINISHED", [(r.info.run_id, r.info.status)
                                                                         for r in trained]
    candidate = trained[0].info.run_id
    variants = client.search_runs([trained[0].info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{candidate}'")
    names = [r.data.tags.get(tags.VARIANT) for r in variants]
    assert names and len(names) == len(set(names)), names
    versions = client.search_model_versions(f"name = 'recforge-{FAMILY}'")
    identities = [v.tags.get(tags.IDENTITY) for v in versions]
    assert len(identities) == len(set(identities)), identities
    variant_ids = {r.info.run_id for r in variants}
    tonight = [v.version for v in versions if v.tags.get(tags.IDENTITY, "").split(":")[0] in variant_ids]
    assert len(tonight) == 1, tonight  # one profiled target: one version of this night's best variant


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster, up for the module's tests (its own RECFORGE_HOME in /tmp, which PostgreSQL's user may enter)."""
    from recforge.core import config

    home = Path(tempfile.mkdtemp(prefix="recforge-cluster-faults-", dir="/tmp"))
    home.chmod(0o711)
    env = os.environ | {"RECFORGE_HOME": str(home), "RECFORGE_RAW_DIR": str(config.raw_dir()),
                        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    env.pop("MLFLOW_TRACKING_URI", None)
    pg, redis, mlflow_port, airflow = free_ports(4)
    conf = {"postgres_port": pg, "redis_port": redis, "mlflow_port": mlflow_port, "airflow_port": airflow,
            "dag_params": SMALL_CHAIN, "max_retry_delay_s": 5, "task_heartbeat_timeout_s": 60}
    started = time.monotonic()
    up = cluster_sh(env, "up", "--config", json.dumps(conf))
    print(f"cluster up in {time.monotonic() - started:.0f} s")
    logs = tmp_path_factory.mktemp("cluster-logs")  # kept by pytest after the cluster's folder is removed
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield Cluster(env)
    finally:
        cluster_sh(env, "down", timeout=300)
        shutil.copytree(home / "cluster" / "airflow", logs / "airflow", ignore=shutil.ignore_patterns("*.pid", "*.cfg",
                        "passwords.json"), dirs_exist_ok=True)
        shutil.copytree(home / "cluster" / "workers", logs / "workers", ignore=shutil.ignore_patterns("work"),
                        dirs_exist_ok=True)
        print(f"the cluster's Airflow and worker logs: {logs}")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def first_chain(cluster) -> str:
    """The output of the module's first whole chain (of CHAINED_DAY), run once for the tests that look at it."""
    return finish(start_chain(cluster.env, CHAINED_DAY))


def test_the_whole_chain_on_two_workers_each_task_in_a_scratch_folder_deleted_when_it_ends(cluster, first_chain):
    day, out = CHAINED_DAY, first_chain
    assert re.search(r"whole chain\s+success", out), out
    runs = chain_runs(out)
    assert all(len(ids) == 1 for ids in runs.values()), runs

    # every task that ran had a scratch folder of its own on its worker, created before and deleted after it
    api = cluster.api()
    ran = []
    for dag_id, (run_id,) in runs.items():
        for ti in api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]:
            if ti["state"] == "success":
                index = f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""
                ran.append(f"{dag_id}/{ti['task_id']}{index}#{ti['try_number']}")

    def scratch_of_tasks():
        events = {worker: cluster.scratch_events(worker) for worker in WORKER_NAMES}
        created = {e["task"]: (worker, e["dir"]) for worker in WORKER_NAMES for e in events[worker]
                   if e["event"] == "created"}
        deleted = {e["task"]: e for worker in WORKER_NAMES for e in events[worker] if e["event"] == "deleted"}
        return created, deleted

    # a task's folder is deleted right after its process ended, which can be a moment after its success was recorded
    wait_for("deletion of every task's folder", lambda: set(ran) <= set(scratch_of_tasks()[1]), 30)
    created, deleted = scratch_of_tasks()
    assert set(ran) <= set(created) and set(ran) <= set(deleted), (sorted(ran), sorted(created), sorted(deleted))
    assert len({created[task][1] for task in ran}) == len(ran)  # one folder per task
    assert deleted["nightly_retrain/train[0]#1"]["files"] >= 4  # its model files were written there, then deleted
    assert all(not Path(created[task][1]).exists() for task in ran)
    for worker in WORKER_NAMES:  # nothing left in either worker's scratch
        assert list((cluster.root / "workers" / worker / "work").iterdir()) == [], worker
    # both workers ran tasks of the chain; the load test only on worker2, the profiling queue's worker
    assert {created[task][0] for task in ran} == set(WORKER_NAMES)
    assert {created[task][0] for task in ran if task.startswith("profile_variants/profile[")} == {"worker2"}
    print("tasks per worker:", {w: sum(created[t][0] == w for t in ran) for w in WORKER_NAMES})

    # the chain registered this night's best variant, with its champion alias
    client = cluster.mlflow()
    model = client.get_registered_model(f"recforge-{FAMILY}")
    assert "champion-cpu-onnxruntime" in model.aliases, model.aliases
    assert_no_duplicates(client, day)


def test_the_same_logical_date_twice_gives_one_result(cluster, first_chain):
    assert re.search(r"whole chain\s+success", first_chain), first_chain
    client = cluster.mlflow()
    versions_before = sorted(v.version for v in client.search_model_versions(f"name = 'recforge-{FAMILY}'"))
    again = cluster_sh(cluster.env, "chain", "--date", CHAINED_DAY, "--conf", json.dumps(NIGHTLY_CONF),
                       "--timeout", "120", timeout=300)
    said = again.stdout + again.stderr
    assert again.returncode == 0, said
    assert f"was already triggered (run chain__{CHAINED_DAY}" in said and "not triggering it again" in said
    assert re.search(r"whole chain\s+success", again.stdout), said
    midnight = f"{CHAINED_DAY}T00:00:00Z"
    runs = cluster.api().get("/dags/nightly_retrain/dagRuns", logical_date_gte=midnight,
                             logical_date_lte=midnight)["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == [f"chain__{CHAINED_DAY}"]
    assert sorted(v.version for v in client.search_model_versions(f"name = 'recforge-{FAMILY}'")) == versions_before


def test_a_worker_killed_in_the_middle_of_training_is_replaced_by_the_other_without_duplicates(cluster):
    day = "1998-04-15"
    client = cluster.mlflow()
    # more rows and epochs than the other chains: the training run stays open long enough to be caught
    conf = {"families": [FAMILY], "train_config": {"max_epochs": 2, "max_train_rows": 20000}}
    started = time.time()
    chain = start_chain(cluster.env, day, conf)

    def training_in_progress():
        worker = cluster.running_on("nightly_retrain/train[0]#1", started)
        if worker is None:
            return None
        try:
            open_runs = [r for r in training_runs(client, parent_run(client, day)) if r.info.status == "RUNNING"]
        except AssertionError:  # the parent run is not there yet
            return None
        return worker if open_runs else None

    victim = wait_for("training run in progress", training_in_progress, 480, chain, poll_s=0.3)
    survivor = next(w for w in WORKER_NAMES if w != victim)
    pid = running_pid(cluster.worker_pidfile(victim))
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the worker, its pool and the task it runs, at once
    killed_at = time.monotonic()
    wait_for(f"{victim}'s processes to end", lambda: not marked_processes(cluster.worker_pidfile(victim)), 30)

    # the scheduler fails the task when its heartbeats stop, and the retry runs on the other worker
    wait_for("retry on the surviving worker",
             lambda: cluster.running_on("nightly_retrain/train[0]#2", started) == survivor, 420, chain, poll_s=2)
    print(f"{victim} killed; attempt 2 started on {survivor} {time.monotonic() - killed_at:.0f} s later")
    restart = cluster_sh(cluster.env, "up")  # brings the killed worker back (the profiling queue is worker2's)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert restart.stdout.count("already running") == 8, restart.stdout
    wiped = [e for e in cluster.scratch_events(victim) if e["event"] == "wiped at start"]
    assert wiped[-1]["entries"] == 1  # the killed task's folder, deleted before the worker came back

    out = finish(chain)
    assert re.search(r"whole chain\s+success", out), out
    tis = cluster.api().get(f"/dags/nightly_retrain/dagRuns/chain__{day}/taskInstances")["task_instances"]
    train = next(ti for ti in tis if ti["task_id"] == "train")
    assert train["state"] == "success" and train["try_number"] == 2, train

    # the first attempt's training run is gone (deleted by the retry), not a second child of the night
    from mlflow.entities import ViewType

    parent = parent_run(client, day)
    discarded = training_runs(client, parent, ViewType.DELETED_ONLY)
    assert [r.info.status for r in discarded] == ["KILLED"]
    assert_no_duplicates(client, day)


def test_redis_restarted_mid_run_the_chain_completes(cluster):
    """Redis stops while a task runs; ``make cluster-up`` starts it again and leaves the workers alone: they
    reconnect to the broker (restarting them would kill the running task)."""
    from recforge.tools.cluster.cluster import Cluster as Services
    from recforge.tools.cluster.settings import ClusterPaths

    day = "1998-04-08"
    started = time.time()
    chain = start_chain(cluster.env, day)
    wait_for("training task", lambda: cluster.running_on("nightly_retrain/train[0]#1", started), 480, chain,
             poll_s=0.3)
    services = Services.load(ClusterPaths(cluster.root))
    redis, workers = services.redis, {w.name: w.pid() for w in services.workers}
    redis_pid = redis.pid()
    assert redis.stop()  # while the training runs and the tasks after it are not queued yet
    assert not redis.healthy()
    time.sleep(5)
    up = cluster_sh(cluster.env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.count("already running") == 8 and "Redis: already running" not in up.stdout, up.stdout
    restarted_at = time.time()
    assert redis.healthy() and redis.pid() != redis_pid
    out = finish(chain)
    assert re.search(r"whole chain\s+success", out), out
    assert {w.name: w.pid() for w in services.workers} == workers  # the workers reconnected, not restarted
    # every downstream DAG ran through the restarted broker (the nightly's last tasks may or may not have been
    # sent before Redis stopped: that depends on when the short training ended)
    after = [e for w in WORKER_NAMES for e in cluster.scratch_events(w) if e["at"] > restarted_at]
    assert {e["task"].split("/")[0] for e in after if e["event"] == "created"} >= {
        "compress_and_validate", "profile_variants", "register_models"}
    assert_no_duplicates(cluster.mlflow(), day)


def test_postgresql_unreachable_when_the_chain_starts_is_one_error_naming_it(cluster):
    from recforge.tools.cluster.cluster import Cluster as Services
    from recforge.tools.cluster.settings import ClusterPaths

    postgres = Services.load(ClusterPaths(cluster.root)).postgres
    assert postgres.stop()
    chain = cluster_sh(cluster.env, "chain", "--date", "1998-04-01", "--timeout", "60", timeout=120)
    assert chain.returncode == 1
    errors = [line for line in chain.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, chain.stderr
    assert errors[0].startswith(f"error: PostgreSQL (Airflow's metadata DB and MLflow's store) is not reachable on "
                                f"127.0.0.1:{cluster.cfg['postgres_port']}; start the cluster: make cluster-up")
