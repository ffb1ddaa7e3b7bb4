"""`make run`'s chain through the embedded scheduler (recforge.tools.embedded_chain) against a fake Airflow API: a
date is run again (the finished run replaced, as `airflow dags test` did), never beside a run still in progress;
leftovers of an interrupted run are failed first; a run the scheduler has not started yet is not asked for its
asset events (Airflow 3.3 answers HTTP 500 there). The real scheduler runs the chain in tests/e2e/test_make_run.py."""

from __future__ import annotations

import json

import pytest

from recforge.tools import chain, embedded_chain
from tests.tools.test_cluster import FakeAirflow, event, finished


class RecordingAirflow(FakeAirflow):
    """FakeAirflow that also records DELETE and run-state PATCH calls and filters runs by state."""

    def __init__(self, runs, events):
        super().__init__(runs, events)
        self.deleted, self.patched = [], []

    def call(self, method, path, ok=(200,), **kwargs):
        parts = path.split("/")
        if method == "DELETE":
            self.deleted.append(parts[4])
            self.runs[parts[2]] = [r for r in self.runs[parts[2]] if r["dag_run_id"] != parts[4]]
            return type("Response", (), {"status_code": 204})()
        if method == "PATCH" and len(parts) == 5:
            self.patched.append((parts[2], parts[4], kwargs["json"]))
            return type("Response", (), {"status_code": 200})()
        return super().call(method, path, ok, **kwargs)

    def get(self, path, **params):
        out = super().get(path, **params)
        if "state" in params and "dag_runs" in out:
            out = {"dag_runs": [r for r in out["dag_runs"] if r["state"] == params["state"]]}
        if path.endswith("/upstreamAssetEvents"):
            run = next(r for runs in self.runs.values() for r in runs if r["dag_run_id"] == path.split("/")[4])
            if not run.get("start_date"):
                raise chain.ChainError("HTTP 500 (AssetEventResponse: start_date None)")
        return out


def test_running_a_date_again_replaces_its_finished_run():
    api = RecordingAirflow(runs={chain.NIGHTLY: [finished("chain__1998-04-22", run_type="manual")]}, events={})
    run, created = chain.trigger_nightly(api, "1998-04-22", {"families": ["ncf"]}, again=True)
    assert created and api.deleted == ["chain__1998-04-22"]
    assert run["dag_run_id"].startswith("chain__1998-04-22__") and run["dag_run_id"] != "chain__1998-04-22"
    assert api.posted[0]["logical_date"] == "1998-04-22T00:00:00Z" and api.posted[0]["conf"] == {"families": ["ncf"]}


def test_a_date_whose_run_is_in_progress_is_not_run_again():
    api = RecordingAirflow(runs={chain.NIGHTLY: [finished("chain__1998-04-22", state="running")]}, events={})
    with pytest.raises(chain.ChainError, match="is running .*wait for it"):
        chain.trigger_nightly(api, "1998-04-22", {}, again=True)
    assert api.deleted == [] and api.posted == []


def test_a_downstream_run_not_started_yet_is_looked_at_again_at_the_next_poll():
    queued = finished("c1", state="queued", start=None, end=None)
    api = RecordingAirflow(runs={"compress_and_validate": [queued]}, events={"c1": [event(chain.NIGHTLY, "n1")]})
    upstream = chain.DagResult(chain.NIGHTLY, [finished("n1", run_type="manual")])
    checked: dict[str, bool] = {}
    assert chain.consumed_from(api, "compress_and_validate", upstream, checked) == []
    assert checked == {}  # not decided: asked again once it has started
    queued.update(state="running", start_date="2026-01-01T00:00:00Z")
    assert [r["dag_run_id"] for r in chain.consumed_from(api, "compress_and_validate", upstream, checked)] == ["c1"]


def test_leftovers_of_an_interrupted_run_are_marked_failed_and_named():
    api = RecordingAirflow(runs={"profile_variants": [finished("p-old", state="queued", start=None, end=None),
                                                      finished("p-done")],
                                 "compress_and_validate": [finished("c-old", state="running", end=None)]},
                           events={})
    said = []
    marked = embedded_chain.fail_leftovers(api, say=said.append)
    assert sorted(marked) == ["compress_and_validate/c-old", "profile_variants/p-old"]
    assert sorted((dag, run) for dag, run, body in api.patched if body == {"state": "failed"}) == \
        [("compress_and_validate", "c-old"), ("profile_variants", "p-old")]
    assert all("interrupted" in line for line in said) and len(said) == 2


def test_the_admin_password_comes_from_the_api_servers_file(tmp_path):
    (tmp_path / embedded_chain.PASSWORDS_FILE).write_text(json.dumps({"admin": "s3cret"}))
    assert embedded_chain.admin_password(tmp_path) == "s3cret"
    with pytest.raises(embedded_chain.ConfigError, match="is the embedded API server running"):
        embedded_chain.admin_password(tmp_path / "elsewhere")
