"""How a rollout ends: step 5 (promote every other node in turn) or the rollback after any failed step, and the
outcome recorded in the state file, the rollout history and the MLflow model version's tags.

:func:`run` runs the ``rollout`` DAG's steps in order in one process (the tests drive the fleet through it); the
DAG itself (``make rollout``) calls the same step functions, one task each.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from recforge.contracts import tags
from recforge.contracts.registry import mlflow_client
from recforge.core.errors import first_line
from recforge.core.timing import utc_now
from recforge.serving.fleet import Fleet
from recforge.serving.rollout.canary import canary
from recforge.serving.rollout.config import RolloutConfig, RolloutFailed
from recforge.serving.rollout.history import append_history, load_state, save_state
from recforge.serving.rollout.plan import resolve_plan
from recforge.serving.rollout.smoke import smoke_test
from recforge.serving.rollout.staging import back_in_rotation, restore_nodes, stage_canary, stage_node

log = logging.getLogger(__name__)


class NothingToRollBack(RolloutFailed):
    """The rollout failed before it resolved a plan: no node was touched, so there is nothing to restore (the
    ``rollout`` DAG's ``rollback`` task is then skipped, not failed)."""


def promote(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 5: every other node in turn drained, updated, smoke-tested and put back at its weight; then the canary
    gets its own weight back. Records the outcome."""
    if plan["noop"]:
        finish(plan, "noop", [])
        return plan
    fleet = Fleet()
    for node in plan["nodes"]:
        if node == plan["canary_node"]:
            continue
        stage_node(fleet, plan, node)
        smoke_test(plan, node)
        back_in_rotation(fleet, node, int(plan["nodes"][node]["weight"] or 100))
        plan["updated"].append(node)
        save_state(plan)
    canary_node = plan["canary_node"]
    fleet.set_weight(canary_node, int(plan["nodes"][canary_node]["weight"] or 100))
    fleet.refresh_admission()  # every node serves the new version: admit what it accepts
    plan["updated"].insert(0, canary_node)
    plan["status"] = "promoted"
    finish(plan, "promoted", [])
    return plan


def rollback_and_fail(*, dag_run_id: str, reason: str = "") -> None:
    """After a failed step: restore the previous version and weights on every node the rollout touched (read from
    the state file), record the outcome with its figures, and raise RolloutFailed (the DAG run fails);
    NothingToRollBack when the rollout failed before it had a plan."""
    plan = load_state(dag_run_id)
    if plan is None:
        raise NothingToRollBack(f"rollout {dag_run_id} failed before it resolved a plan; the fleet was not touched")
    why = reason or (("; ".join(plan.get("gate", {}).get("reasons", [])) or plan.get("error", ""))
                     or f"a step failed after status {plan['status']!r}")
    problems: list[str] = []
    if plan["touched"]:
        problems = restore_nodes(Fleet(), plan)
    breach = plan["figures"].get("breach_detected_at")
    if breach:
        plan["figures"]["breach_to_rollback_s"] = round(time.time() - float(breach), 2)
    plan["status"] = "rolled_back" if not problems else "rollback_incomplete"
    finish(plan, plan["status"], [why] + problems)
    raise RolloutFailed(f"rollout of {plan['model']} v{plan['new']['version']} {plan['status'].replace('_', ' ')}: "
                        f"{why}" + (f"; NOT restored: {'; '.join(problems)}" if problems else
                                    f"; previous versions serving again on {plan['touched'] or 'no touched node'}"))


def finish(plan: dict[str, Any], outcome: str, reasons: list[str]) -> None:
    """The outcome into the state file, the rollout history and the MLflow model version's tags."""
    plan["figures"]["wall_s"] = round(time.time() - float(plan["started"]), 2)
    plan["outcome"], plan["finished_at"], plan["reasons"] = outcome, utc_now(), reasons
    save_state(plan)
    record = {"rollout_id": plan["rollout_id"], "model": plan["model"], "target": plan["target"],
              "version": plan["new"]["version"], "variant": plan["new"].get("variant"), "outcome": outcome,
              "reasons": reasons, "started_at": plan["started_at"], "finished_at": plan["finished_at"],
              "previous_versions": {n: v["version"] for n, v in plan["nodes"].items()},
              "figures": {k: v for k, v in plan["figures"].items() if k != "breach_detected_at"},
              "gate": plan.get("gate")}
    append_history(record)
    try:
        client = mlflow_client()
        client.set_model_version_tag(plan["model"], str(plan["new"]["version"]), tags.ROLLOUT_PREFIX + outcome,
                                     json.dumps({"at": plan["finished_at"], "rollout_id": plan["rollout_id"],
                                                 "target": plan["target"], "reasons": reasons,
                                                 "figures": record["figures"]}, default=str)[:5000])
        client.set_model_version_tag(plan["model"], str(plan["new"]["version"]), tags.ROLLOUT_LAST,
                                     f"{outcome} {plan['finished_at']} ({plan['rollout_id']})")
    except Exception as err:  # the fleet is what matters; a registry hiccup must not hide the outcome
        log.warning("rollout outcome not written to MLflow: %s", err)


def run(cfg: RolloutConfig) -> dict[str, Any]:
    """The whole rollout in one process: the ``rollout`` DAG's steps in order (``make rollout`` runs the DAG),
    rollback on any failure after the plan exists. Returns the record of the outcome; RolloutFailed after a rollback."""
    plan = resolve_plan(cfg)
    try:
        for step in (stage_canary, smoke_test, canary, promote):
            plan = step(plan)
    except Exception as err:
        saved = load_state(plan["rollout_id"]) or plan
        saved["error"] = first_line(err)
        save_state(saved)
        rollback_and_fail(dag_run_id=plan["rollout_id"], reason=saved["error"])
    return summary(plan)


def summary(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {"rollout_id": plan["rollout_id"], "model": plan["model"], "version": plan["new"]["version"],
            "variant": plan["new"].get("variant"), "outcome": plan.get("outcome"), "updated": plan.get("updated"),
            "figures": plan["figures"], "gate": plan.get("gate")}


