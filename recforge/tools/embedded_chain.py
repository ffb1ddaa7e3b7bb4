"""``python -m recforge.tools.embedded_chain --date D [--conf JSON]`` (``make run``): the nightly chain through the
embedded Airflow's own scheduler.

The embedded Airflow (``infra/local/airflow.sh start``: API server, scheduler with the LocalExecutor, DAG processor
and triggerer over the SQLite metadata DB) runs the chain as the cluster runs it (``make chain``; both follow it with
``recforge.tools.chain``): the four chain DAGs are unpaused, a *new* nightly_retrain run is triggered for the
logical date D through the REST API, and the scheduler starts compress_and_validate, profile_variants and
register_models from the Assets each one publishes. This module follows those runs, prints each DAG's state and wall
time, and for a DAG that failed, its failed tasks and where their logs are. Exit status 0 when all four succeed.

When ``make run`` started the scheduler itself (``infra/local/airflow.sh chain``), two flags keep one chain from
running into another: ``--fail-leftovers`` marks runs that an interrupted ``make run`` left queued or running failed
before triggering (no scheduler was running, so none of them is in progress), and ``--pause-after`` pauses the chain
DAGs at the end, so that the asset events of a later ``make nightly`` (``airflow dags test``) queue no runs for a
scheduler that is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recforge.core.cli import json_object
from recforge.core.errors import ConfigError, RecForgeError
from recforge.tools.chain import (
    ADMIN_USER,
    CHAIN,
    AirflowApi,
    ChainError,
    DagResult,
    follow_chain,
    logical_date,
    report,
)

PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # written by the API server at its first start


def airflow_home() -> Path:
    home = os.environ.get("AIRFLOW_HOME")
    if not home:
        raise ConfigError("AIRFLOW_HOME is not set: run this through infra/local/airflow.sh (make run)")
    return Path(home)


def api_url() -> str:
    return f"http://{os.environ.get('AIRFLOW__API__HOST', '127.0.0.1')}:{os.environ.get('AIRFLOW__API__PORT', '8080')}"


def admin_password(home: Path) -> str:
    """The admin password the embedded API server generated (simple auth manager)."""
    path = home / PASSWORDS_FILE
    try:
        return json.loads(path.read_text())[ADMIN_USER]
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"no {ADMIN_USER} password in {path} ({type(err).__name__}): is the embedded API server "
                          "running? (infra/local/airflow.sh start)") from None


def failed_tasks(api: AirflowApi, result: DagResult, home: Path) -> list[str]:
    """One line per failed task instance of ``result``'s runs: task (map index), try, its log folder."""
    lines = []
    for run in result.runs:
        run_id = run["dag_run_id"]
        for ti in api.get(f"/dags/{result.dag_id}/dagRuns/{run_id}/taskInstances", state="failed")["task_instances"]:
            index = ti.get("map_index", -1)
            name = ti["task_id"] + (f"[{ti.get('rendered_map_index') or index}]" if index is not None and index >= 0
                                    else "")
            folder = home / "logs" / f"dag_id={result.dag_id}" / f"run_id={run_id}" / f"task_id={ti['task_id']}"
            lines.append(f"  failed: {result.dag_id}.{name} (try {ti.get('try_number')}; log: {folder})")
    return lines


def pause(api: AirflowApi) -> None:
    """Pause the chain DAGs (best effort: an error here must not hide the chain's own)."""
    for dag_id in CHAIN:
        try:
            api.call("PATCH", f"/dags/{dag_id}", ok=(200, 404), json={"is_paused": True})
        except ChainError as err:
            print(f"warning: {dag_id} not paused again: {err}", file=sys.stderr)


def fail_leftovers(api: AirflowApi, say=print) -> list[str]:
    """Mark the chain DAGs' queued and running runs failed: called when no scheduler was running, they are left
    over from an interrupted ``make run`` and would otherwise start beside this chain (a profile measured beside a
    training). Returns "dag_id/run_id" of each."""
    marked = []
    for dag_id in CHAIN:
        for state in ("queued", "running"):
            for run in api.get(f"/dags/{dag_id}/dagRuns", state=state)["dag_runs"]:
                api.call("PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
                marked.append(f"{dag_id}/{run['dag_run_id']}")
                say(f"{dag_id} run {run['dag_run_id']} was {state} with no scheduler running (an interrupted "
                    "make run): marked failed")
    return marked


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.embedded_chain",
                                     description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--date", required=True, help="logical date of nightly_retrain, YYYY-MM-DD")
    parser.add_argument("--conf", default="{}", help="nightly_retrain params as JSON")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for the whole chain")
    parser.add_argument("--pause-after", action="store_true", help="pause the chain DAGs again at the end")
    parser.add_argument("--fail-leftovers", action="store_true",
                        help="first mark queued/running runs of the chain DAGs failed (no scheduler was running)")
    args = parser.parse_args(argv)
    try:
        logical_date(args.date)
        conf = json_object(args.conf, "--conf")
        home = airflow_home()
        api = AirflowApi(api_url(), admin_password(home))
        if args.fail_leftovers:
            fail_leftovers(api)
        try:
            results = follow_chain(api, args.date, conf, timeout_s=args.timeout, poll_s=2.0, again=True)
            for result in results:
                if result.state == "failed":
                    print("\n".join(failed_tasks(api, result, home)))
        finally:
            if args.pause_after:
                pause(api)
    except RecForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return report(args.date, results)


if __name__ == "__main__":
    sys.exit(main())
