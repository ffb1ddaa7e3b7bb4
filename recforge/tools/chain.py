"""The nightly chain through a running Airflow's REST API: unpause the four chain DAGs, trigger ``nightly_retrain``
for a logical date, follow the runs the scheduler starts from the Assets (compress_and_validate on the candidates,
profile_variants on the validated variants, register_models on the profiles, each found by the asset events it
consumed), and report each DAG's state and wall time.

Two commands follow a chain with it: ``make chain`` on the distributed cluster (``recforge.tools.cluster.chain``)
and ``make run`` on the embedded scheduler (``recforge.tools.embedded_chain``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import requests

from recforge.core.errors import ConfigError, RecForgeError

ADMIN_USER = "admin"  # the Airflow API/UI user (simple auth manager); its password is generated, never a default
NIGHTLY = "nightly_retrain"
CHAIN = (NIGHTLY, "compress_and_validate", "profile_variants", "register_models")
FINISHED = ("success", "failed")


class ChainError(RecForgeError):
    """Airflow's API refused or did not answer."""


class AirflowApi:
    """Airflow's REST API (v2) as its admin user (a JWT from the simple auth manager)."""

    def __init__(self, url: str, password: str, user: str = ADMIN_USER):
        self.url, self.session = url.rstrip("/"), requests.Session()
        try:
            response = self.session.post(f"{self.url}/auth/token", json={"username": user, "password": password},
                                         timeout=10)
        except requests.RequestException as err:
            raise ChainError(f"Airflow API server not answering at {self.url} ({type(err).__name__}); "
                             "start the cluster: make cluster-up") from None
        if response.status_code != 201:
            raise ChainError(f"Airflow API at {self.url} refused the cluster's admin login: HTTP "
                             f"{response.status_code} {response.text[:200]}")
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, ok: Sequence[int] = (200,), **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)
        except requests.RequestException as err:
            raise ChainError(f"Airflow API {method} {path}: {type(err).__name__}: {err}") from None
        if response.status_code not in ok:
            raise ChainError(f"Airflow API {method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response

    def get(self, path: str, **params) -> dict:
        return self.call("GET", path, params=params).json()


@dataclass
class DagResult:
    """The runs of one chain DAG that belong to this chain (normally one)."""

    dag_id: str
    runs: list[dict] = field(default_factory=list)

    @property
    def state(self) -> str:
        if not self.runs:
            return "not run"
        states = {run["state"] for run in self.runs}
        return "failed" if "failed" in states else ("success" if states == {"success"} else "running")

    @property
    def wall_s(self) -> float | None:
        starts = [parse_time(run.get("start_date")) for run in self.runs]
        ends = [parse_time(run.get("end_date")) for run in self.runs]
        if not self.runs or None in starts or None in ends:
            return None
        return (max(ends) - min(starts)).total_seconds()


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def logical_date(day: str) -> str:
    try:
        return dt.date.fromisoformat(day).isoformat() + "T00:00:00Z"
    except ValueError:
        raise ConfigError(f"--date must be YYYY-MM-DD, got {day!r}") from None


def unpause(api: AirflowApi, dag_ids: Sequence[str], wait_s: float, sleep: Callable[[float], None]) -> None:
    """Unpause the DAGs, waiting up to ``wait_s`` for the DAG processor to have parsed them."""
    deadline = time.monotonic() + wait_s
    for dag_id in dag_ids:
        while api.call("PATCH", f"/dags/{dag_id}", ok=(200, 404), json={"is_paused": False}).status_code == 404:
            if time.monotonic() > deadline:
                raise ChainError(f"DAG {dag_id} is not known to the cluster's Airflow after {wait_s:.0f} s: see the "
                                 "DAG processor's log (make cluster-status) and import errors in the UI")
            sleep(2.0)


def trigger_nightly(api: AirflowApi, day: str, conf: dict, again: bool = False) -> tuple[dict, bool]:
    """(the nightly_retrain run of logical date ``day``, whether this call created it). ``again``: the date's
    finished run, if any, is replaced by a new one, as ``airflow dags test`` replaces it (``make run`` re-runs its
    day; Airflow keeps one run per logical date); else an existing run is the result (``make chain``)."""
    when = logical_date(day)
    existing = api.get(f"/dags/{NIGHTLY}/dagRuns", logical_date_gte=when, logical_date_lte=when)["dag_runs"]
    if existing and not again:
        return existing[0], False
    for run in existing:
        if run["state"] not in FINISHED:
            raise ChainError(f"{NIGHTLY} for {day} is {run['state']} (run {run['dag_run_id']}): wait for it to end "
                             "before running the date again")
        api.call("DELETE", f"/dags/{NIGHTLY}/dagRuns/{run['dag_run_id']}", ok=(204, 404))
    run_id = f"chain__{day}" + (f"__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}" if again else "")
    response = api.call("POST", f"/dags/{NIGHTLY}/dagRuns", ok=(200, 409),
                        json={"dag_run_id": run_id, "logical_date": when, "conf": conf})
    if response.status_code == 409:  # triggered at the same moment by someone else
        return api.get(f"/dags/{NIGHTLY}/dagRuns/{run_id}"), False
    return response.json(), True


def consumed_from(api: AirflowApi, dag_id: str, upstream: DagResult, checked: dict[str, bool]) -> list[dict]:
    """The asset-triggered runs of ``dag_id`` that consumed an asset event of one of ``upstream``'s runs."""
    sources = {(upstream.dag_id, run["dag_run_id"]) for run in upstream.runs}
    found = []
    for run in api.get(f"/dags/{dag_id}/dagRuns", order_by="-run_after", limit=50)["dag_runs"]:
        # a run not started yet is checked at the next poll: Airflow 3.3's upstreamAssetEvents answers HTTP 500
        # while an event's created run has no start_date (AssetEventResponse requires one)
        if run.get("run_type") != "asset_triggered" or not run.get("start_date"):
            continue
        key = run["dag_run_id"]
        if key not in checked:
            events = api.get(f"/dags/{dag_id}/dagRuns/{key}/upstreamAssetEvents")["asset_events"]
            checked[key] = any((e.get("source_dag_id"), e.get("source_run_id")) in sources for e in events)
        if checked[key]:
            found.append(run)
    return found


def follow_chain(api: AirflowApi, day: str, conf: dict, timeout_s: float = 4 * 3600, poll_s: float = 10.0,
                 start_wait_s: float = 600.0, say: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep, again: bool = False) -> list[DagResult]:
    """Trigger (or find; ``again``: always trigger) the chain of logical date ``day`` and wait until it ends or a
    DAG of it fails."""
    unpause(api, CHAIN, 180.0, sleep)
    nightly, created = trigger_nightly(api, day, conf, again)
    if created:
        say(f"triggered {NIGHTLY} for {day}: run {nightly['dag_run_id']}")
    else:
        say(f"{NIGHTLY} for {day} was already triggered (run {nightly['dag_run_id']}, {nightly['state']}): "
            "not triggering it again; following that run's chain")
    deadline = time.monotonic() + timeout_s
    results = [DagResult(NIGHTLY, [nightly])]
    checked: dict[str, bool] = {}
    for dag_id in CHAIN:
        current = results[-1] if dag_id == NIGHTLY else DagResult(dag_id)
        if dag_id != NIGHTLY:
            results.append(current)
            waited_from = time.monotonic()
            while not (runs := consumed_from(api, dag_id, results[-2], checked)):
                if time.monotonic() - waited_from > start_wait_s or time.monotonic() > deadline:
                    say(f"{dag_id}: no run started from {results[-2].dag_id}'s assets within {start_wait_s:.0f} s")
                    return results
                sleep(poll_s)
            current.runs = runs
        while True:
            current.runs = [api.get(f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}") for run in current.runs]
            if all(run["state"] in FINISHED for run in current.runs):
                break
            if time.monotonic() > deadline:
                say(f"{dag_id}: still {current.state} after the chain's {timeout_s:.0f} s")
                return results
            sleep(poll_s)
        wall = current.wall_s
        say(f"{dag_id}: {current.state}" + (f" in {wall:.0f} s" if wall is not None else "")
            + f" (run {', '.join(run['dag_run_id'] for run in current.runs)})")
        if current.state != "success":
            break
    return results


def format_results(day: str, results: list[DagResult]) -> str:
    by_dag = {r.dag_id: r for r in results}
    lines = [f"chain for {day}:"]
    for dag_id in CHAIN:
        result = by_dag.get(dag_id, DagResult(dag_id))
        wall = f"{result.wall_s:6.0f} s" if result.wall_s is not None else "       -"
        runs = ", ".join(run["dag_run_id"] for run in result.runs) or "-"
        lines.append(f"  {dag_id:<22} {result.state:<8} {wall}  {runs}")
    starts = [parse_time(run.get("start_date")) for r in results for run in r.runs]
    ends = [parse_time(run.get("end_date")) for r in results for run in r.runs]
    if starts and None not in starts and None not in ends:
        whole_s = (max(ends) - min(starts)).total_seconds()
        lines.append(f"  {'whole chain':<22} {chain_state(results):<8} {whole_s:6.0f} s")
    return "\n".join(lines)


def chain_state(results: list[DagResult]) -> str:
    states = {r.dag_id: r.state for r in results}
    return "success" if all(states.get(dag_id) == "success" for dag_id in CHAIN) else "failed"


def report(day: str, results: list[DagResult]) -> int:
    """Print the chain's table; the exit status of a chain command: 0 when all four DAGs succeeded, else 1."""
    print(format_results(day, results))
    return 0 if chain_state(results) == "success" else 1
