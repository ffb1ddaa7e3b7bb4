"""The distributed mode's logic without servers: settings and secrets, health waits, and following the chain
through a stand-in for Airflow's REST API (the real services: test_cluster_services.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from recforge.core.errors import ConfigError
from recforge.tools import chain
from recforge.tools.cluster.cluster import wait_healthy
from recforge.tools.cluster.postgres import ServiceError, connection_url
from recforge.tools.cluster.settings import (
    SECRET_NAMES,
    WORKERS,
    ClusterConfig,
    ClusterPaths,
    load_config,
    load_secrets,
    save_config,
)


def test_secrets_are_generated_once_distinct_and_private(tmp_path):
    paths = ClusterPaths(tmp_path / "cluster")
    with pytest.raises(ConfigError, match="no cluster state .* make cluster-up"):
        load_secrets(paths)
    first = load_secrets(paths, create=True)
    assert sorted(first) == sorted(SECRET_NAMES)
    assert len(set(first.values())) == len(SECRET_NAMES) and all(len(v) >= 32 for v in first.values())
    assert stat.S_IMODE(paths.secrets_file.stat().st_mode) == 0o600
    assert load_secrets(paths, create=True) == first  # not regenerated: the databases hold these passwords
    other = load_secrets(ClusterPaths(tmp_path / "other"), create=True)
    assert not set(other.values()) & set(first.values())  # no default, no reuse between clusters


def test_ports_are_saved_and_checked(tmp_path):
    paths = ClusterPaths(tmp_path / "cluster")
    assert load_config(paths) == ClusterConfig()
    save_config(paths, load_config(paths, {"airflow_port": 18090}))
    assert load_config(paths).airflow_port == 18090
    with pytest.raises(ConfigError, match="four different ports"):
        ClusterConfig(postgres_port=6000, redis_port=6000)
    with pytest.raises(ConfigError, match="ClusterConfig.mlflow_port"):
        load_config(paths, {"mlflow_port": 80})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(paths, {"airflow_prot": 8000})
    with pytest.raises(ConfigError, match="ClusterConfig.task_heartbeat_timeout_s"):
        load_config(paths, {"task_heartbeat_timeout_s": 5})  # shorter than a busy task's heartbeat gaps
    with pytest.raises(ConfigError, match="ClusterConfig.max_retry_delay_s"):
        load_config(paths, {"max_retry_delay_s": -1})


def test_connection_urls_use_each_services_own_role_and_password():
    secrets = {"airflow_db_password": "a-pw", "mlflow_db_password": "m-pw"}
    cfg = ClusterConfig(postgres_port=15432)
    assert connection_url(cfg, secrets, "airflow") == "postgresql+psycopg://airflow:a-pw@127.0.0.1:15432/airflow"
    assert connection_url(cfg, secrets, "mlflow").startswith("postgresql+psycopg://mlflow:m-pw@127.0.0.1:15432/")


def test_one_worker_serves_the_profiling_queue_one_task_at_a_time():
    profiling = [w for w in WORKERS if "profiling" in w.queues]
    assert len(profiling) == 1 and profiling[0].concurrency == 1
    assert all("default" in w.queues for w in WORKERS)  # a task of a lost worker can run on the other
    assert len({w.hostname for w in WORKERS}) == len(WORKERS)


class FakeService:
    title, address = "Redis", "127.0.0.1:6380"

    def __init__(self, tmp_path, answers):
        self.log = tmp_path / "redis.log"
        self.log.write_text("starting\nFatal error, can't open config file\n")
        self.answers = list(answers)

    def healthy(self):
        return self.answers.pop(0) if self.answers else False


def test_wait_healthy_returns_once_the_service_answers(tmp_path):
    service = FakeService(tmp_path, [False, False, True])
    wait_healthy(service, timeout_s=60, sleep=lambda s: None)
    assert service.answers == []


def test_a_service_that_never_answers_gives_one_line_naming_it_and_its_log(tmp_path):
    with pytest.raises(ServiceError) as err:
        wait_healthy(FakeService(tmp_path, []), timeout_s=0, sleep=lambda s: None)
    message = str(err.value)
    assert "\n" not in message and message.startswith("Redis did not answer on 127.0.0.1:6380")
    assert str(tmp_path / "redis.log") in message and "can't open config file" in message


class FakeWorker(FakeService):
    title, address = "Celery worker1", "queues default"

    def __init__(self, tmp_path, answers, running=True, grace_s=30.0):
        super().__init__(tmp_path, answers)
        self.is_running, self.reconnect_grace_s = running, grace_s

    def running(self):
        return self.is_running


def test_a_running_worker_that_reconnects_to_the_broker_is_not_restarted(tmp_path):
    from recforge.tools.cluster.cluster import answers_again

    assert answers_again(FakeWorker(tmp_path, [False, False, True]), sleep=lambda s: None)
    assert not answers_again(FakeWorker(tmp_path, [True], running=False), sleep=lambda s: None)  # dead: restart it
    assert not answers_again(FakeWorker(tmp_path, [], grace_s=0.05), sleep=lambda s: None)  # hung: restart it
    assert not answers_again(FakeService(tmp_path, [True]), sleep=lambda s: None)  # no grace: restart at once


class FakeAirflow:
    """Airflow's REST API as far as the chain follower uses it: DAG runs, their upstream asset events."""

    def __init__(self, runs: dict[str, list[dict]], events: dict[str, list[dict]]):
        self.runs, self.events, self.posted, self.unpaused = runs, events, [], []

    def call(self, method, path, ok=(200,), **kwargs):
        class Response:
            def __init__(self, code, body=None):
                self.status_code, self.body = code, body

            def json(self):
                return self.body

        if method == "PATCH":
            self.unpaused.append(path.split("/")[2])
            return Response(200)
        run = {"dag_run_id": kwargs["json"]["dag_run_id"], "state": "queued", "run_type": "manual",
               "start_date": None, "end_date": None}
        self.posted.append(kwargs["json"])
        self.runs.setdefault(chain.NIGHTLY, []).append(run)
        return Response(200, run)

    def get(self, path, **params):
        parts = path.split("/")
        dag_id = parts[2]
        if path.endswith("/upstreamAssetEvents"):
            return {"asset_events": self.events.get(parts[4], [])}
        if len(parts) == 5:
            return next(r for r in self.runs[dag_id] if r["dag_run_id"] == parts[4])
        return {"dag_runs": list(self.runs.get(dag_id, []))}


def finished(run_id, state="success", run_type="asset_triggered", start="2026-01-01T00:00:00Z",
             end="2026-01-01T00:01:40Z"):
    return {"dag_run_id": run_id, "state": state, "run_type": run_type, "start_date": start, "end_date": end}


def event(dag_id, run_id):
    return {"source_dag_id": dag_id, "source_run_id": run_id}


def test_an_existing_run_of_the_date_is_followed_not_triggered_again():
    api = FakeAirflow(
        runs={chain.NIGHTLY: [finished("chain__1998-04-22", run_type="manual")],
              "compress_and_validate": [finished("other", state="failed"), finished("c1")],
              "profile_variants": [finished("p1", end="2026-01-01T00:03:20Z")],
              "register_models": [finished("r1", start="2026-01-01T00:00:10Z")]},
        events={"other": [event(chain.NIGHTLY, "an older night")], "c1": [event(chain.NIGHTLY, "chain__1998-04-22")],
                "p1": [event("compress_and_validate", "c1")], "r1": [event("profile_variants", "p1")]})
    said = []
    results = chain.follow_chain(api, "1998-04-22", {}, say=said.append, sleep=lambda s: None)
    assert api.posted == [] and "not triggering it again" in said[0]
    assert sorted(api.unpaused) == sorted(chain.CHAIN)
    assert [r.dag_id for r in results] == list(chain.CHAIN)
    assert [run["dag_run_id"] for r in results for run in r.runs] == ["chain__1998-04-22", "c1", "p1", "r1"]
    assert chain.chain_state(results) == "success"
    assert [r.wall_s for r in results] == [100.0, 100.0, 200.0, 90.0]
    table = chain.format_results("1998-04-22", results)
    assert "compress_and_validate  success     100 s  c1" in table and "whole chain" in table


def test_a_failed_dag_ends_the_chain_and_its_state_is_failed():
    api = FakeAirflow(runs={"compress_and_validate": [finished("c1", state="failed")]},
                      events={"c1": [event(chain.NIGHTLY, "chain__1998-04-23")]})

    def nightly_finishes(_):
        for run in api.runs[chain.NIGHTLY]:
            run.update(state="success", start_date="2026-01-01T00:00:00Z", end_date="2026-01-01T00:00:05Z")

    results = chain.follow_chain(api, "1998-04-23", {"families": ["dlrm"]}, say=lambda s: None,
                                 sleep=nightly_finishes)
    assert api.posted == [{"dag_run_id": "chain__1998-04-23", "logical_date": "1998-04-23T00:00:00Z",
                           "conf": {"families": ["dlrm"]}}]
    assert [(r.dag_id, r.state) for r in results] == [(chain.NIGHTLY, "success"), ("compress_and_validate", "failed")]
    assert chain.chain_state(results) == "failed"
    assert "profile_variants       not run" in chain.format_results("1998-04-23", results)


def test_a_bad_date_is_refused():
    with pytest.raises(ConfigError, match="--date must be YYYY-MM-DD"):
        chain.logical_date("22.04.1998")


def test_stopping_a_service_also_stops_what_it_started_in_a_session_of_its_own(tmp_path):
    import os
    import time

    from recforge.serving.pids import pid_alive
    from recforge.tools.cluster.processes import descendants, running_pid, start_detached, stop_group

    pidfile = tmp_path / "svc.pid"
    # the service starts a child in its own session (as a task's tritonserver does): not in the service's group
    pid = start_detached(["sh", "-c", "setsid sleep 300 & exec sleep 300"], os.environ, tmp_path / "svc.log", pidfile)
    def in_their_own_sessions(children: list[int]) -> bool:
        try:  # a child found between its fork and its setsid is still in the service's group: wait for the setsid
            return bool(children) and all(os.getpgid(c) != pid for c in children)
        except ProcessLookupError:
            return False

    for _ in range(100):
        children = descendants(pid)
        if in_their_own_sessions(children):
            break
        time.sleep(0.05)
    assert running_pid(pidfile) == pid and in_their_own_sessions(children)
    assert stop_group(pidfile, timeout_s=10) is True
    assert not pid_alive(pid) and not any(pid_alive(c) for c in children)
    assert not pidfile.exists() and stop_group(pidfile) is False  # nothing left: fine


def test_a_killed_services_leftovers_are_stopped_by_the_restart_path(tmp_path):
    """A SIGKILLed worker's task child in a session of its own (a tritonserver) is reparented to init: no longer
    below the worker, it is found by the marker its environment inherited, and stopped when the service restarts."""
    import os
    import signal
    import time

    from recforge.serving.pids import pid_alive
    from recforge.tools.cluster.processes import (
        descendants,
        marked_processes,
        running_pid,
        start_detached,
        stop_group,
    )

    pidfile = tmp_path / "worker.pid"
    pid = start_detached(["sh", "-c", "setsid sleep 300 & exec sleep 300"], os.environ, tmp_path / "w.log", pidfile)
    for _ in range(400):  # up to 20 s on a busy machine
        if children := descendants(pid):
            break
        time.sleep(0.05)
    assert children and sorted(marked_processes(pidfile)) == sorted([pid, *children])
    os.killpg(pid, signal.SIGKILL)  # the worker's group dies; its child in another session does not
    for _ in range(400):
        if running_pid(pidfile) is None:
            break
        time.sleep(0.05)
    os.waitpid(pid, 0)
    assert running_pid(pidfile) is None and all(pid_alive(c) for c in children)
    assert stop_group(pidfile) is False  # the service was not running, but what it left is stopped
    assert not any(pid_alive(c) for c in children) and marked_processes(pidfile) == []


def test_each_task_gets_a_scratch_folder_of_its_own_deleted_when_it_ends(tmp_path, monkeypatch):
    import json

    from recforge.tools.cluster import task_scratch

    root, log = tmp_path / "work", tmp_path / "scratch.jsonl"
    root.mkdir()
    monkeypatch.setenv(task_scratch.SCRATCH_ROOT_ENV, str(root))
    monkeypatch.setenv(task_scratch.SCRATCH_LOG_ENV, str(log))
    monkeypatch.setenv(task_scratch.WORK_DIR_ENV, str(root))
    workload = json.dumps({"ti": {"dag_id": "nightly_retrain", "task_id": "train", "map_index": 2, "try_number": 1,
                                  "run_id": "chain__1998-04-22"}})
    task_scratch.open_task_scratch(task_id="0123456789abcdef", args=(workload,))
    folder = Path(os.environ[task_scratch.WORK_DIR_ENV])
    assert folder.parent == root and folder.is_dir() and folder.name.startswith("nightly_retrain_train_2_1-")
    (folder / "models").mkdir()
    (folder / "models/model.onnx").write_bytes(b"12345")
    task_scratch.delete_task_scratch(task_id="0123456789abcdef", args=(workload,))
    assert not folder.exists() and os.environ[task_scratch.WORK_DIR_ENV] == str(root)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["task"]) for e in events] == [("created", "nightly_retrain/train[2]#1"),
                                                         ("deleted", "nightly_retrain/train[2]#1")]
    assert events[1]["files"] == 1 and events[1]["bytes"] == 5
    (root / "left-by-a-killed-task").mkdir()
    assert task_scratch.wipe(root) == 1 and list(root.iterdir()) == []


def test_outside_a_worker_the_scratch_handlers_do_nothing(tmp_path, monkeypatch):
    from recforge.tools.cluster import task_scratch

    monkeypatch.delenv(task_scratch.SCRATCH_ROOT_ENV, raising=False)
    monkeypatch.setenv(task_scratch.WORK_DIR_ENV, str(tmp_path))
    task_scratch.open_task_scratch(task_id="x", args=("{}",))
    task_scratch.delete_task_scratch(task_id="x", args=("{}",))
    assert os.environ[task_scratch.WORK_DIR_ENV] == str(tmp_path) and list(tmp_path.iterdir()) == []


def test_the_cluster_policy_sets_param_defaults_and_caps_retry_delays(tmp_path, monkeypatch):
    import datetime as dt

    from airflow.sdk import DAG, Param
    from airflow.sdk.bases.operator import BaseOperator
    from airflow.sdk.definitions.param import process_params
    from airflow.sdk.exceptions import ParamValidationError

    from recforge.tools.cluster import policy

    def small_dag() -> DAG:
        with DAG("compress_and_validate", schedule=None,
                 params={"compress_config": Param({}, type="object", title="Compression overrides"),
                         "families": Param(None, type=["null", "array"])}) as dag:
            BaseOperator(task_id="t", retries=1, retry_delay=dt.timedelta(minutes=5))
        return dag

    paths = ClusterPaths(tmp_path / "cluster")
    save_config(paths, load_config(paths, {"dag_params": {"compress_and_validate": {
        "compress_config": {"precisions": ["int8_dynamic"]}, "not_a_param": 1}}, "max_retry_delay_s": 5}))
    monkeypatch.delenv(policy.CLUSTER_ROOT_ENV, raising=False)
    dag = small_dag()
    policy.dag_policy(dag)  # outside a cluster: nothing changes
    assert process_params(dag, dag.tasks[0], {}, suppress_exception=False)["compress_config"] == {}

    monkeypatch.setenv(policy.CLUSTER_ROOT_ENV, str(paths.root))
    policy.dag_policy(dag)
    policy.task_policy(dag.tasks[0])
    params = process_params(dag, dag.tasks[0], {}, suppress_exception=False)
    assert params["compress_config"] == {"precisions": ["int8_dynamic"]} and "not_a_param" not in params
    assert dag.params.get_param("compress_config").schema["title"] == "Compression overrides"
    assert process_params(dag, dag.tasks[0], {"compress_config": {}}, suppress_exception=False)[
        "compress_config"] == {}  # a trigger's conf still wins
    assert dag.tasks[0].retry_delay == dt.timedelta(seconds=5)

    save_config(paths, load_config(paths, {"dag_params": {"compress_and_validate": {"compress_config": [1]}}}))
    with pytest.raises(ParamValidationError):  # a default that breaks the param's schema is refused
        policy.dag_policy(small_dag())
    assert policy.install(tmp_path / "airflow").read_text() == policy.LOCAL_SETTINGS
