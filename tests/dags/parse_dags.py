"""Parse the DAG folder the way the scheduler does, with the database made unreachable.

Run as a script (a fresh interpreter, so nothing imported by the tests leaks in); prints JSON:
import errors, heavy modules imported while parsing, DB connection attempts, and each DAG's policy facts.
"""

import copy
import json
import os
import sys

HEAVY = ("torch", "mlflow", "onnxruntime", "great_expectations", "onnx", "sklearn", "pandas")

import sqlalchemy.engine  # noqa: E402

attempts = []


def _refuse(self, *args, **kwargs):
    attempts.append(str(self.url))
    raise RuntimeError("DAG parsing must not touch the metadata database")


sqlalchemy.engine.Engine.connect = _refuse
sqlalchemy.engine.Engine.raw_connection = _refuse
before = set(sys.modules)

from pathlib import Path  # noqa: E402

from airflow.dag_processing.dagbag import BundleDagBag  # noqa: E402

after_import = set(sys.modules)
folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
# as the dag-processor does: the bundle (DAG folder) is importable by its DAG files
bag = BundleDagBag(dag_folder=folder, bundle_path=folder)
parsed_modules = set(sys.modules) - after_import


def asset_uris(condition) -> list[str]:
    """URIs of the assets an asset-scheduled DAG waits for (an Asset, or AssetAny/AssetAll of them)."""
    if condition is None:
        return []
    if hasattr(condition, "objects"):
        return sorted(uri for part in condition.objects for uri in asset_uris(part))
    return [condition.uri] if hasattr(condition, "uri") else []  # e.g. the null asset of a cron schedule


def params_problem(dag) -> str | None:
    """Why the DAG's params, all at their defaults, would not pass validation (None: they do)."""
    try:
        copy.deepcopy(dag.params).validate()
    except Exception as err:  # ParamValidationError
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags),
        "catchup": dag.catchup,
        "schedule": getattr(dag.timetable, "summary", str(dag.timetable)),
        "timetable": type(dag.timetable).__name__,
        "description": dag.description,
        "tasks": {
            t.task_id: {"retries": t.retries, "trigger_rule": getattr(t.trigger_rule, "value", str(t.trigger_rule)),
                        "upstream": sorted(t.upstream_task_ids), "downstream": sorted(t.downstream_task_ids),
                        "map_index_template": getattr(t, "map_index_template", None)}
            for t in dag.tasks
        },
        "params": {k: {"title": (v.schema or {}).get("title"), "default": v.value if v.has_value else None,
                       "has_default": v.has_value, "schema": v.schema}
                   for k, v in dag.params.items()},
        "params_problem": params_problem(dag),
        "scheduled_on": asset_uris(getattr(dag.timetable, "asset_condition", None)),
        "max_active_runs": dag.max_active_runs,
        "start_date": dag.start_date.isoformat() if dag.start_date else None,
    }
print(json.dumps({
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "heavy_modules": sorted({m.split(".")[0] for m in parsed_modules} & set(HEAVY)),
    "db_attempts": attempts,
    "dags": dags,
}))
