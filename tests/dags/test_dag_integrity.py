"""DAG tests as Airflow recommends: no import errors, light parsing, no DB access, policy checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recforge.contracts.targets import CPU_TRITON, TARGETS
from recforge.models.families import DEEP_FAMILIES, FAMILY_NAMES, OPT_IN_FAMILIES

REPO = Path(__file__).resolve().parents[2]


def parse_dags(home: Path, **extra_env: str) -> dict:
    """What tests/dags/parse_dags.py reports of the DAG folder, parsed in a fresh process with ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if k != "RECFORGE_NIGHTLY_SCHEDULE"} | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # a database that cannot exist: any connection attempt fails and is recorded
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/no/such/dir/airflow.db",
    } | extra_env
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("parse_dags.py"))],
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    return parse_dags(tmp_path_factory.mktemp("airflow_home"))


def test_no_import_errors(parsed):
    assert parsed["import_errors"] == {}
    assert "nightly_retrain" in parsed["dags"]


def test_parsing_imports_no_heavy_libraries(parsed):
    assert parsed["heavy_modules"] == []


def test_parsing_touches_no_database(parsed):
    assert parsed["db_attempts"] == []


def test_every_dag_follows_the_policy(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert "recforge" in dag["tags"], dag_id
        assert dag["catchup"] is False, dag_id
        for task_id, task in dag["tasks"].items():
            # retries everywhere, except where retrying cannot help (bad data, failure bookkeeping) and in the
            # rollout, whose steps change a live fleet: a retried gate would judge a fleet it already changed
            if task_id not in {"check", "mark_failed"} and dag_id != "rollout":
                assert task["retries"] >= 1, f"{dag_id}.{task_id}"
        for name, param in dag["params"].items():
            assert param["title"], f"{dag_id} param {name} has no title"
        assert dag["description"], f"{dag_id} has no description (the DAG list shows it)"


def test_every_trigger_form_submits_with_its_defaults(parsed):
    """An optional Param left empty is None (its type allows null), never "" or []: the UI form treats an empty
    field of a non-null type as missing and refuses to submit. Only the rollout's model must be chosen."""
    for dag_id, dag in parsed["dags"].items():
        def allows_null(param) -> bool:
            return "null" in param["schema"].get("type", [])

        required = {name for name, param in dag["params"].items()
                    if not param["has_default"] and not allows_null(param)}
        assert required == ({"model"} if dag_id == "rollout" else set()), dag_id
        if not required:
            assert dag["params_problem"] is None, f"{dag_id}: {dag['params_problem']}"
        for name, param in dag["params"].items():
            if param["default"] in ("", []) or not param["has_default"] and name not in required:
                assert param["default"] is None and allows_null(param), f"{dag_id} param {name}: empty default"


def test_mapped_tasks_are_named_in_the_ui(parsed):
    """Mapped task instances show a name (map_index_template), not 0..n."""
    templates = {dag_id: {task_id: task["map_index_template"] for task_id, task in dag["tasks"].items()
                          if task["map_index_template"]} for dag_id, dag in parsed["dags"].items()}
    assert templates["nightly_retrain"] == {"train": "{{ task.op_kwargs['family'] }}"}
    assert set(templates["compress_and_validate"]) == {"variants"}
    assert set(templates["profile_variants"]) == {"profile"}
    assert set(templates["register_models"]) == {"register"}


def test_nightly_schedule_comes_from_the_environment(tmp_path):
    """RECFORGE_NIGHTLY_SCHEDULE: another cron expression, or none (triggered runs only: the embedded mode)."""
    dags = parse_dags(tmp_path, RECFORGE_NIGHTLY_SCHEDULE="none")["dags"]
    assert dags["nightly_retrain"]["timetable"] == "NullTimetable"
    assert dags["compress_and_validate"]["timetable"] == "AssetTriggeredTimetable"  # the chain is unchanged
    dags = parse_dags(tmp_path, RECFORGE_NIGHTLY_SCHEDULE="30 3 * * *")["dags"]
    assert dags["nightly_retrain"]["timetable"] == "CronDataIntervalTimetable"
    assert dags["nightly_retrain"]["schedule"] == "30 3 * * *"


def test_nightly_retrain_schedule_and_shape(parsed):
    dag = parsed["dags"]["nightly_retrain"]
    assert dag["timetable"] == "CronDataIntervalTimetable"
    assert dag["schedule"] == "0 2 * * *"
    assert {"ingest", "open_run", "check", "features", "train", "publish", "mark_failed"} <= set(dag["tasks"])
    assert dag["tasks"]["check"]["retries"] == 0
    assert dag["tasks"]["mark_failed"]["trigger_rule"] == "one_failed"
    assert dag["max_active_runs"] == 1
    # a logical date before start_date runs no task at all and still "succeeds": cover all the data
    assert dag["start_date"] <= "1997-09-20"


def test_family_lists_come_from_the_registry(parsed):
    assert parsed["dags"]["nightly_retrain"]["params"]["families"]["default"] == list(FAMILY_NAMES)
    # compression runs on any deep family's candidate, the opt-in ones (mt_wnd, dien) included when a nightly
    # trains them (the baseline is never compressed); the nightly's default families stay without them
    expected = sorted(f"recforge://candidates/{family}" for family in (*DEEP_FAMILIES, *OPT_IN_FAMILIES))
    assert parsed["dags"]["compress_and_validate"]["scheduled_on"] == expected
    assert not set(OPT_IN_FAMILIES) & set(parsed["dags"]["nightly_retrain"]["params"]["families"]["default"])


def test_rollout_is_manual_and_rolls_back_on_any_failure(parsed):
    dag = parsed["dags"]["rollout"]
    assert dag["timetable"] == "NullTimetable"  # schedule=None: only a person triggers it
    assert dag["max_active_runs"] == 1
    assert {"model", "target", "version", "canary_weight_pct", "canary_duration_s", "p95_slo_ms",
            "max_error_rate"} <= set(dag["params"])
    assert all(task["retries"] == 0 for task in dag["tasks"].values())
    assert dag["tasks"]["rollback"]["trigger_rule"] == "one_failed"
    assert set(dag["tasks"]["rollback"]["upstream"]) == {"resolve", "stage_canary", "smoke_test", "canary", "promote"}
    # the run's state comes from its leaves: a failed step leaves `report` upstream-failed, so the run fails even
    # when `rollback` is skipped because nothing was touched
    leaves = {task_id for task_id, task in dag["tasks"].items() if not task["downstream"]}
    assert leaves == {"report", "rollback"}
    assert dag["tasks"]["report"]["upstream"] == ["promote"]
    assert dag["tasks"]["report"]["trigger_rule"] == "all_success"


def test_rollout_form_offers_the_targets_and_the_registered_models(parsed):
    params = parsed["dags"]["rollout"]["params"]
    target = params["target"]
    assert target["default"] == CPU_TRITON and target["schema"]["enum"] == list(TARGETS)
    assert set(target["schema"]["values_display"]) == set(TARGETS)
    # proposals, not a closed list: a registry can hold other names (register_models' model_prefix)
    assert params["model"]["schema"]["examples"] == [f"recforge-{family}" for family in DEEP_FAMILIES]
    assert params["version"]["default"] is None  # empty: champion-<target>
