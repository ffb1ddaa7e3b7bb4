"""Rollout proposals, the end of the nightly chain: for every version that became champion, the commands a release
manager runs to serve its target and roll it out. Touches no fleet.

A proposal is two commands that work as printed: the fleet that serves the target
(``make fleet-up FLEET_FAMILY=<family> FLEET_TARGET=<target>``, unless one serves it already) and the canary
rollout (``make rollout MODEL=<model> TARGET=<target> VERSION=<version>``). Only a version that is its target's
champion, on a CPU target of ``recforge.contracts.targets`` (the local fleet's nodes are CPU tritonservers), is
proposed; a champion of a GPU or hybrid target (profiled only on a machine with a GPU) is listed as not proposed,
with the reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.contracts import tags as T
from recforge.contracts.registry import CHAMPION, MODEL_PREFIX, alias, mlflow_client, model_aliases
from recforge.contracts.targets import TARGETS
from recforge.core import config
from recforge.pipeline.registry.policy import CHAMPION_DECISIONS

log = logging.getLogger(__name__)


def rollout_command(model: str, target: str, version: str) -> str:
    return f"make rollout MODEL={model} TARGET={target} VERSION={version}"


def fleet_command(model: str, family: str, target: str) -> str:
    """The command that starts a fleet serving ``champion-<target>`` of ``model``. ``make fleet-up`` serves the
    registered model ``recforge-<family>``; a model of another prefix is served with ``--from-registry``."""
    if model == MODEL_PREFIX + family:
        return f"make fleet-up FLEET_FAMILY={family} FLEET_TARGET={target}"
    return f".venv/bin/python -m recforge.serving.fleet up --target {target} --from-registry {model} {target}"


def why_not_servable(model: str, target: str, version: str, aliases: Mapping[str, str]) -> str:
    """Why a fleet cannot serve ``version`` as the champion of ``target`` ("" when it can)."""
    if target not in TARGETS:
        return (f"{target!r} is not a hardware target (one of {sorted(TARGETS)}); "
                "re-profile it under one of those names")
    if TARGETS[target].device != "cpu":
        return (f"{target} runs on {TARGETS[target].device}; the local fleet's tritonserver nodes serve CPU targets "
                f"only ({sorted(n for n, t in TARGETS.items() if t.device == 'cpu')}): serve its champion on a "
                f"{TARGETS[target].device} deployment")
    champion = aliases.get(alias(CHAMPION, target))
    if champion != version:
        return f"it is no longer {alias(CHAMPION, target)} (now v{champion or '-'}) of {model}"
    return ""


def propose_rollout(results: Sequence[Mapping[str, Any]], *, candidates: Sequence[Mapping[str, str]] = (),
                    dag_run_id: str = "") -> dict[str, Any]:
    """For every version of ``results`` (of :func:`recforge.pipeline.registry.stage.register_family`) that became
    champion, the fleet and rollout commands (tags ``recforge.rollout_proposal`` and
    ``recforge.rollout_proposal_fleet`` on the version, and ``$RECFORGE_HOME/registry/proposals/<run>.md``).

    ``results`` may hold a failed family as {family, error}; a family of ``candidates`` with no result at all (its
    register task failed) is listed as failed too. Returns {proposals, not_promoted, not_proposed, failed, path}."""
    client = mlflow_client() if results else None
    proposals, unchanged, not_proposed = [], [], []
    for r in results:
        if "error" in r:
            continue
        aliases = model_aliases(client, r["model"])
        for target, t in sorted((r.get("targets") or {}).items()):
            if t["decision"] not in CHAMPION_DECISIONS:
                unchanged.append(f"{r['model']} {target}: v{t['version']} not promoted ({t['reason']})")
                continue
            if why := why_not_servable(r["model"], target, t["version"], aliases):
                not_proposed.append(f"{r['model']} {target}: v{t['version']} not proposed ({why})")
                continue
            proposal = {"model": r["model"], "family": r["family"], "target": target, "version": t["version"],
                        "variant": t["variant"], "decision": t["decision"], "reason": t["reason"],
                        "fleet_command": fleet_command(r["model"], r["family"], target),
                        "command": rollout_command(r["model"], target, t["version"])}
            client.set_model_version_tag(r["model"], t["version"], T.ROLLOUT_PROPOSAL, proposal["command"])
            client.set_model_version_tag(r["model"], t["version"], T.ROLLOUT_PROPOSAL_FLEET,
                                         proposal["fleet_command"])
            proposals.append(proposal)
    registered = {r["family"] for r in results}
    errors = [f"{r['family']}: {r['error']}" for r in results if "error" in r]
    errors += [f"{c['family']}: its register task failed (training run {c['candidate_run_id']}); see its log"
               for c in candidates if c["family"] not in registered]
    path = write_proposals(proposals, unchanged, not_proposed, errors, dag_run_id)
    for p in proposals:
        log.info("proposed: %s, then %s", p["fleet_command"], p["command"])
    return {"proposals": proposals, "not_promoted": unchanged, "not_proposed": not_proposed, "failed": errors,
            "path": path}


def write_proposals(proposals: Sequence[Mapping[str, Any]], unchanged: Sequence[str], not_proposed: Sequence[str],
                    errors: Sequence[str], dag_run_id: str) -> str:
    """``$RECFORGE_HOME/registry/proposals/<run>.md``: what a release manager reads; returns its path."""
    lines = [f"# Rollout proposals of register_models run {dag_run_id or '(cli)'}", ""]
    for p in proposals:
        lines += [f"- {p['model']} v{p['version']} on {p['target']} ({p['variant']}): {p['reason']}",
                  f"  - `{p['fleet_command']}`  # unless a fleet serves {p['model']} on {p['target']} already "
                  "(`make fleet-down` stops another)",
                  f"  - `{p['command']}`"]
    lines += [] if proposals else ["- none"]
    lines += ["", "Not promoted:", *[f"- {u}" for u in unchanged]] if unchanged else []
    lines += ["", "Not proposed:", *[f"- {u}" for u in not_proposed]] if not_proposed else []
    lines += ["", "Failed:", *[f"- {e}" for e in errors]] if errors else []
    lines += ["", "Nothing was rolled out: start the target's fleet (the first command), then run the rollout "
              "command for the canary rollout."]
    file_name = re.sub(r"[^A-Za-z0-9_.-]", "_", dag_run_id or "cli") + ".md"
    path = config.recforge_home() / "registry" / "proposals" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)
