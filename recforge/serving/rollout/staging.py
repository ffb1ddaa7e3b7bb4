"""Changing one fleet node for a rollout: drain it and stage a version on it through its own port (never the
balancer), put it back in rotation, restore touched nodes to their previous version (rollback); and step 2, the
canary node staged."""

from __future__ import annotations

import time
from typing import Any

from recforge.core.errors import RecForgeError, first_line
from recforge.serving.fleet import Fleet
from recforge.serving.rollout.config import RolloutFailed
from recforge.serving.rollout.history import save_state


def stage_node(fleet: Fleet, plan: dict[str, Any], node: str) -> None:
    """Drain ``node``, then load the new version on it through its own port (never the balancer)."""
    new = plan["new"]
    if node not in plan["touched"]:
        plan["touched"].append(node)
    save_state(plan)  # before the node changes: rollback must know it was touched
    fleet.drain(node, timeout_s=plan["config"]["drain_timeout_s"])
    try:
        fleet.stage_on_node(node, plan["model"], int(new["version"]), new["onnx"], new["spec"],
                            serving_config=new["serving_config"], expected_sha256=new["onnx_sha256"],
                            provenance={"registry": f"{plan['model']} v{new['version']}", "rollout": plan["rollout_id"],
                                        "variant": new["variant"], "source_run_id": new["run_id"]},
                            timeout_s=plan["config"]["load_timeout_s"])
    except RecForgeError as err:
        plan["error"] = f"{plan['model']} v{new['version']} failed to load on {node}: {first_line(err)}"
        save_state(plan)
        raise RolloutFailed(plan["error"]) from None


def back_in_rotation(fleet: Fleet, node: str, weight: int) -> None:
    """``node`` at ``weight`` and ready in the balancer, and back only once its health checks pass (UP): draining
    the next node before that would leave no node to serve."""
    fleet.set_weight(node, weight)
    fleet.ready(node)
    fleet.balancer.wait_status(node, "UP", timeout_s=30)


def stage_canary(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 2: the canary node drained and given the new version (it stays drained until the canary step)."""
    if plan["noop"]:
        return plan
    fleet = Fleet()
    t0 = time.monotonic()
    stage_node(fleet, plan, plan["canary_node"])
    fleet.refresh_admission()  # old and new versions side by side: admit what both accept
    plan["figures"]["canary_stage_s"] = round(time.monotonic() - t0, 2)
    plan["status"] = "canary_staged"
    save_state(plan)
    return plan


def server_ready(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def restore_nodes(fleet: Fleet, plan: dict[str, Any]) -> list[str]:
    """Put every touched node back on its previous version and weight; returns the problems (empty: all restored)."""
    problems = []
    for node in plan["touched"]:
        before = plan["nodes"][node]
        try:
            fleet.drain(node, timeout_s=plan["config"]["drain_timeout_s"])
            fleet.stage_on_node(node, plan["model"], int(before["version"]), before["onnx"], plan["new"]["spec"],
                                serving_config=before["serving_config"], expected_sha256=before["onnx_sha256"],
                                provenance={"rollback_of": plan["rollout_id"]},
                                timeout_s=plan["config"]["load_timeout_s"])
            if not server_ready(fleet.node(node)["url"]):
                # Triton keeps the state of a version that failed to load and then never reports ready again
                # (strict readiness): a clean restart of the drained node on the restored version only
                fleet.restart_node(node, plan["model"], int(before["version"]))
            if before.get("lb_state", "ready") == "ready":
                back_in_rotation(fleet, node, int(before["weight"] or 100))
            else:
                fleet.set_weight(node, int(before["weight"] or 100))
        except Exception as err:  # keep restoring the others; report every node that could not be restored
            problems.append(f"{node}: {first_line(err)}")
    try:
        fleet.refresh_admission()
    except Exception as err:
        problems.append(f"balancer admission: {first_line(err)}")
    return problems

