"""The Airflow UI as the release manager uses it, in headless Chromium against a real Airflow API server: the DAG
list explains each DAG, the rollout form submits with only the model chosen, and a failed rollout shows why in the
task's log view, with its real start date and duration, and a skipped (not failed) rollback.

The failed rollout is a real run of the ``rollout`` DAG through infra/local/airflow.sh (as ``make rollout`` runs
it) with no fleet running, for a logical date of the data (1998), as the nightly runs have. The grid's mapped
``train`` tasks come from a real, small ``nightly_retrain`` run (two families, one epoch, the MovieLens download of
``make setup``) against the ``mlflow_server`` fixture."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.ui.airflow_browser import AIRFLOW_SH, AirflowServer, Screenshots, chromium, page_text, quote, wait_for

pytestmark = pytest.mark.integration
DAG_IDS = {"nightly_retrain", "compress_and_validate", "profile_variants", "register_models", "rollout"}
DATA_DAY = "1998-04-22"  # the logical date of the failed rollout: a day of the data, far before its wall-clock run
NIGHTLY_DAY = "1997-11-15"  # a small slice of the data (as tests/e2e/test_nightly_retrain.py)
NIGHTLY_FAMILIES = ["logreg", "dlrm"]
NIGHTLY_CONF = {"families": NIGHTLY_FAMILIES, "train_config": {"max_epochs": 1, "max_train_rows": 2000}}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    server = AirflowServer(tmp_path_factory.mktemp("airflow_ui"))
    server.start()
    try:
        server.started_at = datetime.now(UTC)
        # no fleet is running: `resolve` fails before anything is touched (the run also stores the DAGs in the DB)
        out = server.airflow("test", "rollout", DATA_DAY, "-c", json.dumps({"model": "recforge-dlrm"}))
        assert out.returncode != 0, "a rollout without a fleet must fail:\n" + out.stdout[-3000:]
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nightly_run(airflow, mlflow_server) -> dict:
    """A small real nightly run in the UI's Airflow: ingest -> checks -> features -> one mapped train per family."""
    from recforge.core import config

    env = airflow.env | {"MLFLOW_TRACKING_URI": mlflow_server, "RECFORGE_RAW_DIR": str(config.raw_dir()),
                         "RECFORGE_EXPERIMENT": f"ui-airflow-{airflow.port}", "MLFLOW_DISABLE_TELEMETRY": "true",
                         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "GX_ANALYTICS_ENABLED": "False"}
    out = subprocess.run([str(AIRFLOW_SH), "test", "nightly_retrain", NIGHTLY_DAY, "-c", json.dumps(NIGHTLY_CONF)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    runs = [run for run in airflow.dag_runs("nightly_retrain") if run["logical_date"].startswith(NIGHTLY_DAY)]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def browser():
    with chromium() as session:
        yield session


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    shots = Screenshots(tmp_path_factory.mktemp("airflow_screenshots"))
    yield shots
    shots.write_index()


@pytest.fixture(scope="module")
def failed_run(airflow) -> dict:
    runs = [run for run in airflow.dag_runs("rollout") if run["logical_date"].startswith(DATA_DAY)]
    assert len(runs) == 1, runs
    return runs[0]


def test_the_dag_list_shows_each_dags_description(airflow, browser, screenshots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    descriptions = {dag["dag_id"]: dag["description"] for dag in airflow.api("dags")["dags"]}
    assert set(descriptions) == DAG_IDS and all(descriptions.values()), descriptions
    browser.get(f"{airflow.url}/dags")
    for dag_id in sorted(DAG_IDS):  # rollout last: its tooltip is the one in the screenshot
        link = wait_for(lambda dag_id=dag_id: browser.find_elements(By.LINK_TEXT, dag_id), f"{dag_id} listed")[0]
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
        away = browser.find_element(By.TAG_NAME, "h2") if browser.find_elements(By.TAG_NAME, "h2") else None
        if away is not None:  # leave the previous name first, so its tooltip closes
            ActionChains(browser).move_to_element(away).perform()
        ActionChains(browser).move_to_element(link).perform()
        wait_for(lambda dag_id=dag_id: any(" ".join(tip.text.split()) == descriptions[dag_id]
                                           for tip in browser.find_elements(By.CSS_SELECTOR, "[role=tooltip]")),
                 f"the description of {dag_id} shown on its name")
    screenshots.take(browser, "airflow-dag-list",
                     "the DAG list, the rollout DAG's description shown as the tooltip of its name")


def test_the_rollout_form_submits_with_only_the_model_chosen(airflow, browser, screenshots):
    from selenium.webdriver.common.by import By

    before = {run["dag_run_id"] for run in airflow.dag_runs("rollout")}
    browser.get(f"{airflow.url}/dags/rollout")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"), "Trigger")[0].click()
    model = wait_for(lambda: browser.find_elements(By.ID, "element_model"), "the model field")[0]

    def submit_button():
        buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, "[role=dialog] button") if b.text == "Trigger"]
        return buttons[0] if buttons else None

    assert not wait_for(submit_button, "the form's Trigger button").is_enabled(), "the model must be chosen first"
    form = page_text(browser)
    assert "This field is required" in form.split("Registered model")[1].split("Hardware target")[0]
    assert "cpu-triton: a real tritonserver node" in form  # the target: a choice list, its default shown by name
    model.send_keys("recforge-dlrm")
    wait_for(lambda: submit_button().is_enabled(), "the Trigger button enabled once the model is chosen")
    assert "This field is required" not in page_text(browser)
    screenshots.take(browser, "airflow-rollout-trigger-form",
                     "the rollout trigger form: model typed (proposals recforge-<family>), target a choice list, "
                     "version empty (champion-<target>), every other field at its default")
    submit_button().click()
    runs = wait_for(lambda: [r for r in airflow.dag_runs("rollout") if r["dag_run_id"] not in before],
                    "the run the form started")
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["run_type"] == "manual" and run["state"] in {"queued", "running"}, run
    conf = run["conf"]
    assert conf["model"] == "recforge-dlrm" and conf["target"] == "cpu-triton" and conf["version"] is None, conf
    assert conf["canary_weight_pct"] == 10 and conf["config"] == {}, conf
    wait_for(lambda: run["dag_run_id"] in page_text(browser) or "triggered" in page_text(browser).lower(),
             "the UI acknowledging the new run")
    screenshots.take(browser, "airflow-rollout-triggered", f"the rollout DAG after the form started run "
                                                           f"{run['dag_run_id']}")


def test_a_failed_tasks_reason_is_in_its_log_view(airflow, browser, screenshots, failed_run):
    assert failed_run["state"] == "failed"
    run_id = failed_run["dag_run_id"]
    browser.get(f"{airflow.url}/dags/rollout/runs/{quote(run_id)}/tasks/resolve")
    wait_for(lambda: "ConfigError: no fleet is running" in page_text(browser),
             "the failure's reason in the task's log view")
    text = page_text(browser)
    assert "Log file not found" not in text and "Failed" in text
    screenshots.take(browser, "airflow-failed-task-log",
                     "the log view of the rollout's failed resolve task, ending with the reason: "
                     "ConfigError: no fleet is running ...; run `make fleet-up` first")


def test_the_failed_rollout_run_has_its_real_dates_and_a_skipped_rollback(airflow, browser, screenshots,
                                                                          failed_run):
    # nothing was touched: rollback is skipped, and the run fails through its step (report upstream-failed)
    states = airflow.task_states("rollout", failed_run["dag_run_id"])
    assert states["resolve"] == "failed" and states["rollback"] == "skipped", states
    assert states["report"] == "upstream_failed", states
    # the logical date is the data's day; the run started and ended when it really ran
    start = datetime.fromisoformat(failed_run["start_date"])
    end = datetime.fromisoformat(failed_run["end_date"])
    assert airflow.started_at - timedelta(seconds=5) <= start <= end <= datetime.now(UTC), failed_run
    assert end - start < timedelta(minutes=10)
    browser.get(f"{airflow.url}/dags/rollout/runs/{quote(failed_run['dag_run_id'])}")
    text = wait_for(lambda: (t := page_text(browser)) and "Start Date" in t and "Duration" in t and t,
                    "the run's details")
    shown: dict[str, str] = {}  # the run's header (the task table below has columns of the same names)
    for label, value in re.findall(r"^(Logical Date|Start Date|Duration)\n(.+)$", text, flags=re.MULTILINE):
        shown.setdefault(label, value)
    assert shown["Logical Date"].startswith(DATA_DAY), shown
    assert shown["Start Date"].startswith(start.strftime("%Y-%m-%d")), shown
    assert re.fullmatch(r"\d\d:\d\d:\d\d(\.\d+)?", shown["Duration"]), shown  # no "10444d 23h"
    screenshots.take(browser, "airflow-failed-run",
                     f"the failed rollout run: logical date {DATA_DAY}, start date today, duration "
                     f"{shown['Duration']}; resolve failed, rollback skipped")


def test_the_grid_names_mapped_train_tasks_by_family(airflow, browser, screenshots, nightly_run):
    from selenium.webdriver.common.by import By

    run_id = nightly_run["dag_run_id"]
    mapped = airflow.api(f"dags/nightly_retrain/dagRuns/{quote(run_id)}/taskInstances/train/listMapped")
    names = {ti["map_index"]: ti["rendered_map_index"] for ti in mapped["task_instances"]}
    assert sorted(names.values()) == sorted(NIGHTLY_FAMILIES), names  # map_index_template, not 0..1
    browser.get(f"{airflow.url}/dags/nightly_retrain/runs/{quote(run_id)}/tasks/train/mapped")
    wait_for(lambda: all(family in page_text(browser) for family in NIGHTLY_FAMILIES),
             "the mapped train tasks listed by family", timeout=60)
    cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "td")]
    assert set(NIGHTLY_FAMILIES) <= set(cells), cells[:40]
    screenshots.take(browser, "airflow-nightly-mapped-train",
                     f"the nightly run's mapped train tasks, one per family ({', '.join(NIGHTLY_FAMILIES)}), "
                     "named by family instead of 0..N")
