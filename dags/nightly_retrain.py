"""nightly_retrain: ingest -> check -> features -> train (one mapped task per model family) -> publish.

Runs daily at 02:00 UTC for the previous day's partition (the data interval [D 02:00, D+1 02:00)
has logical date D). ``RECFORGE_NIGHTLY_SCHEDULE`` (read when the file is parsed) sets another cron expression,
or ``none`` for triggered runs only: the embedded mode and the local cluster replay MovieLens, which has no
partition for yesterday, so there a scheduled run could only fail (docs/training.md).
Thin wiring only: every task is a shim over a function in ``recforge.pipeline``, imported
inside the task so parsing this file never imports torch, mlflow, onnxruntime or great_expectations.
A hard data-check failure stops the run before training; the parent MLflow run is then marked FAILED
with the check's Data Docs attached, and nothing registered or deployed changes. A data-check warning lets
the run go on; it is recorded on the parent run (tag recforge.data_checks=warning, metric
data_check_warnings, data_docs/warnings.txt) and printed by `nightly report`.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable
from recforge_assets import CANDIDATE_ASSETS

from recforge.models.families import FAMILY_NAMES  # torch-free: only the names

NIGHTLY_CRON = "0 2 * * *"


def _schedule() -> CronDataIntervalTimetable | None:
    """The nightly's timetable: ``RECFORGE_NIGHTLY_SCHEDULE`` (a cron expression, or ``none``), else NIGHTLY_CRON."""
    cron = os.environ.get("RECFORGE_NIGHTLY_SCHEDULE", "").strip() or NIGHTLY_CRON
    return None if cron.lower() == "none" else CronDataIntervalTimetable(cron, timezone="UTC")


def _day() -> str:
    """The partition this run processes: its logical date (the start of its data interval)."""
    return get_current_context()["logical_date"].date().isoformat()


def _params() -> dict:
    return dict(get_current_context()["params"])


@dag(
    dag_id="nightly_retrain",
    schedule=_schedule(),
    # Far back on purpose: catchup is off, and a logical date before start_date would make
    # `airflow dags test` "succeed" without running any task.
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
    description="Nightly: ingest, check and featurize the day's ratings, train every model family, publish candidates",
    max_active_runs=1,
    tags=["recforge", "nightly", "training"],
    default_args={"owner": "recforge", "retries": 2, "retry_delay": timedelta(minutes=5)},
    doc_md=__doc__,
    params={
        "families": Param(list(FAMILY_NAMES), type="array", items={"type": "string"}, examples=list(FAMILY_NAMES),
                          title="Model families",
                          description="Families to train; logreg is the reference baseline."),
        "train_config": Param({}, type="object", title="Training overrides",
                              description="TrainConfig fields, e.g. {\"max_epochs\": 3, \"max_train_rows\": 5000}."),
        "check_config": Param({}, type="object", title="Data-check overrides",
                              description="CheckConfig fields, e.g. {\"volume_z_warning\": 4.0}."),
    },
)
def nightly_retrain():
    @task
    def ingest() -> dict:
        from recforge.core import config
        from recforge.pipeline.data import ingest as data

        raw = data.fetch_movielens(config.raw_dir())
        return data.ingest(raw, config.data_root(), data.parse_date(_day())).to_dict()

    @task
    def open_run(ingested: dict) -> str:
        from recforge.contracts import tags
        from recforge.core import config
        from recforge.pipeline.data import ingest as data
        from recforge.pipeline.training import train

        day = data.parse_date(_day())
        ctx = get_current_context()
        return train.open_parent_run(_day(), data.fingerprint(config.data_root(), day), ctx["run_id"],
                                     {tags.DAG_ID: ctx["dag"].dag_id})

    @task(retries=0)  # bad data does not get better by retrying
    def check(parent_run_id: str) -> dict:
        from recforge.core import config
        from recforge.pipeline.datagate import checks

        return checks.check_day(config.data_root(), _day(), _params()["check_config"], parent_run_id)

    @task
    def features(checked: dict) -> dict:
        from recforge.contracts.layout import Catalog
        from recforge.core import config
        from recforge.pipeline.data import ingest as data
        from recforge.pipeline.data.features import build_features

        out = Catalog.default().features_dir(_day())
        return build_features(config.data_root(), data.parse_date(_day()), out).to_dict()

    @task
    def families() -> list[str]:
        from recforge.pipeline.training.train import TrainConfig

        return list(TrainConfig.from_dict({"families": _params()["families"]}).families)

    # each training uses every core; each mapped task is named by its family in the UI (not 0..4)
    @task(max_active_tis_per_dagrun=1, map_index_template="{{ task.op_kwargs['family'] }}")
    def train(family: str, feature_set: dict, parent_run_id: str) -> dict:
        from recforge.contracts.layout import Catalog
        from recforge.core import config
        from recforge.pipeline.data import ingest as data
        from recforge.pipeline.data.features import ensure_features
        from recforge.pipeline.training import train

        cfg = train.TrainConfig.from_dict(_params()["train_config"])
        catalog = Catalog.default()
        out = catalog.model_dir(_day(), family)
        # this worker's copy of the day's features (feature_set["out_dir"] is another worker's when the features
        # task ran there: tasks share the data root and MLflow, not a disk)
        features_dir = ensure_features(config.data_root(), data.parse_date(_day()), catalog.features_dir(_day()))
        return train.train_family(family, features_dir, out, cfg, parent_run_id).to_dict()

    @task(outlets=list(CANDIDATE_ASSETS.values()))
    def publish(results: list[dict], parent_run_id: str) -> dict:
        from recforge.pipeline.training import train

        summary = train.close_parent_run(parent_run_id, list(results))
        events = get_current_context()["outlet_events"]
        for result in results:
            if result["family"] in CANDIDATE_ASSETS:
                events[CANDIDATE_ASSETS[result["family"]]].extra = {
                    key: result[key] for key in ("family", "run_id", "onnx_model_uri", "model_dir",
                                                 "onnx_path", "test_auc")
                } | {"parent_run_id": parent_run_id, "data_day": _day()}
        return summary

    @task(trigger_rule="one_failed", retries=0)
    def mark_failed(parent_run_id: str) -> None:
        """Mark the MLflow parent run FAILED, then fail itself: as the DAG's only leaf it decides the run state."""
        from recforge.pipeline.training import train

        train.fail_parent_run(parent_run_id)
        raise RuntimeError(f"an upstream task failed; MLflow parent run {parent_run_id} is marked FAILED")

    ingested = ingest()
    parent = open_run(ingested)
    checked = check(parent)
    feature_set = features(checked)
    results = train.partial(feature_set=feature_set, parent_run_id=parent).expand(family=families())
    published = publish(results, parent)
    [checked, feature_set, results, published] >> mark_failed(parent)


nightly_retrain()
