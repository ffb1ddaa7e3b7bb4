"""The rollout DAG's ``rollback`` task is skipped, not failed, when the rollout failed before it touched the fleet;
a real rollback still fails (the DAG's leaves are checked in test_dag_integrity.py)."""

from __future__ import annotations

import pytest

from recforge.serving.rollout import RolloutFailed, rollback_and_fail
from recforge.serving.rollout.outcome import NothingToRollBack


def test_nothing_to_roll_back_without_a_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path))
    with pytest.raises(NothingToRollBack, match="failed before it resolved a plan; the fleet was not touched"):
        rollback_and_fail(dag_run_id="manual__2026-11-26T00:00:00+00:00")


def test_nothing_to_roll_back_is_still_a_failed_rollout():
    # callers that catch RolloutFailed (the CLI, outcome.run) keep treating it as a failed rollout
    assert issubclass(NothingToRollBack, RolloutFailed)
