"""The register stage: the best profiled variant per (family, target) into the MLflow registry; rollout proposals.

What the ``register_models`` DAG and the CLI call; the rollout proposal ends the nightly chain.

Per trained family (:func:`register_family`, its training run found by
:func:`~recforge.pipeline.registry.candidates.find_profiled_candidates`) and per target:

1. :func:`~recforge.pipeline.registry.policy.select_best` picks the parity-passing variant with the highest
   latency-bounded throughput (LBT); ties go to the higher test AUC, then to the smaller model;
2. :func:`~recforge.pipeline.registry.versions.register_version` makes it a version of the registered model
   ``<prefix><family>`` (``recforge-dlrm``), its source the very ONNX file the profile measured (SHA-256 checked);
3. :func:`~recforge.pipeline.registry.aliases.promote_if_better` moves ``champion-<target>`` to it only when it
   beats the champion by the margin (the old one becomes ``previous-<target>``; every move is in the alias
   history).

:func:`register_all` registers many families; one that fails does not stop the others. Then
:func:`~recforge.pipeline.registry.proposals.propose_rollout` writes, for every new champion, the fleet and rollout
commands a release manager runs; it touches no fleet. ``recforge.contracts.registry.champion`` gives the rollout
stage what it serves.

CLI::

    python -m recforge.pipeline.registry.stage [--family F | --candidate-run RUN_ID | --parent-run RUN_ID]
                                               [--config JSON] [--no-propose]
    python -m recforge.pipeline.registry.stage show [--family F] [--target T] [--history N] [--json]
    python -m recforge.pipeline.registry.stage rollback --family F --target T [--reason TEXT]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.contracts.registry import CHAMPION, MODEL_PREFIX, PREVIOUS, alias, mlflow_client, model_aliases
from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError, DataError, RecForgeError, first_line
from recforge.pipeline.registry.aliases import promote_if_better, rollback_alias
from recforge.pipeline.registry.candidates import data_partition, find_profiled_candidates, load_profiled_variants
from recforge.pipeline.registry.policy import RegisterConfig, model_name, select_best
from recforge.pipeline.registry.proposals import propose_rollout
from recforge.pipeline.registry.show import format_show, show
from recforge.pipeline.registry.versions import register_version

log = logging.getLogger(__name__)


def register_family(candidate_run_id: str, *, cfg: RegisterConfig | Mapping[str, Any] | None = None,
                    dag_run_id: str = "") -> dict[str, Any]:
    """Select, register and judge the best variant per target of one trained family (its training run).

    Returns {family, model, candidate_run_id, targets: {target: {version, created, variant, lbt_qps, auc,
    decision, reason, champion, previous}}, skipped: [why]}. DataError when no variant is eligible anywhere."""
    if not isinstance(cfg, RegisterConfig):
        cfg = RegisterConfig.from_dict(cfg)
    variants, problems = load_profiled_variants(candidate_run_id)
    skipped = problems + [f"{v.family}/{v.variant} on {v.target}: {v.eligible()[1]}"
                          for v in variants if not v.eligible()[0]]
    chosen = select_best(variants)
    if not chosen:
        raise DataError(f"training run {candidate_run_id}: no parity-passing variant with a profile and LBT > 0 "
                        f"({'; '.join(skipped) or 'no variant runs'}); run profile_variants first")
    partition = data_partition(candidate_run_id)
    family = next(iter(chosen))[0]
    result: dict[str, Any] = {"family": family, "model": model_name(family, cfg),
                              "candidate_run_id": candidate_run_id, "targets": {}, "skipped": skipped}
    for (_family, target), choice in chosen.items():
        registered = register_version(choice, partition, cfg=cfg, dag_run_id=dag_run_id)
        blessing = promote_if_better(registered.model, registered.version, target, cfg=cfg, dag_run_id=dag_run_id)
        aliases = model_aliases(mlflow_client(), registered.model)
        result["targets"][target] = {
            "version": registered.version, "created": registered.created, "variant": choice.variant,
            "variant_run_id": choice.run_id, "lbt_qps": choice.lbt_qps, "auc": choice.auc,
            "decision": blessing.decision, "reason": blessing.reason, "compared_with": blessing.compared_with,
            "champion": aliases.get(alias(CHAMPION, target)), "previous": aliases.get(alias(PREVIOUS, target))}
    return result


def register_candidate(candidate: Mapping[str, str], *, cfg: RegisterConfig | Mapping[str, Any] | None = None,
                       dag_run_id: str = "") -> dict[str, Any]:
    """:func:`register_family` of one {family, candidate_run_id}; a RecForgeError (bad data or config: retrying
    cannot help) comes back as {family, candidate_run_id, error: one line}, so the other families go on."""
    try:
        return register_family(candidate["candidate_run_id"], cfg=cfg, dag_run_id=dag_run_id)
    except RecForgeError as err:
        log.error("register %s: %s", candidate["family"], err)
        return {"family": candidate["family"], "candidate_run_id": candidate["candidate_run_id"],
                "error": first_line(err)}


def register_all(candidates: Sequence[Mapping[str, str]], *, cfg: RegisterConfig | Mapping[str, Any] | None = None,
                 dag_run_id: str = "") -> list[dict[str, Any]]:
    """:func:`register_candidate` for each {family, candidate_run_id}: a family that fails is reported on one line
    (``error``) and the others go on. RecForgeError when every family failed."""
    results = [register_candidate(c, cfg=cfg, dag_run_id=dag_run_id) for c in candidates]
    if results and all("error" in r for r in results):
        raise RecForgeError("no family registered: " + "; ".join(f"{r['family']}: {r['error']}" for r in results))
    return results


def failed_families(proposal: Mapping[str, Any]) -> str:
    """"" when every family registered, else one line naming the failed ones (for the DAG's last task)."""
    failed = proposal["failed"]
    if not failed:
        return ""
    return (f"{len(failed)} famil{'y' if len(failed) == 1 else 'ies'} not registered: {'; '.join(failed)} "
            f"(the other families' rollouts are proposed in {proposal['path']})")


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["register", *argv]
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.registry.stage",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register the best profiled variants (the default command)")
    reg.add_argument("--family", action="append", help="family to register (repeatable; default: all profiled)")
    reg.add_argument("--candidate-run", default="", help="MLflow run id of one family's training run")
    reg.add_argument("--parent-run", default="", help="nightly parent run (default: the latest finished one)")
    reg.add_argument("--config", default="{}", help="RegisterConfig fields as JSON, e.g. '{\"margin\": 0.1}'")
    reg.add_argument("--dag-run-id", default="cli", help="recorded in tags and the alias history")
    reg.add_argument("--no-propose", action="store_true", help="do not write the rollout proposal")
    sh = sub.add_parser("show", help="print champions, previous versions and the alias history")
    sh.add_argument("--family", action="append", default=[])
    sh.add_argument("--target", default="")
    sh.add_argument("--history", type=int, default=10, help="last N alias moves per model (0: none)")
    sh.add_argument("--prefix", default=MODEL_PREFIX, help="registered model name prefix")
    sh.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="champion-<target> back to previous-<target>")
    rb.add_argument("--family", default="")
    rb.add_argument("--model", default="", help="registered model name (default: <prefix><family>)")
    rb.add_argument("--target", required=True)
    rb.add_argument("--reason", default="manual rollback")
    args = parser.parse_args(argv)

    def step():
        if args.command == "show":
            state = show(families=args.family, target=args.target, history=args.history,
                         cfg=RegisterConfig(model_prefix=args.prefix))
            return state if args.json else format_show(state)
        if args.command == "rollback":
            if not (args.model or args.family):
                raise ConfigError("rollback needs --model or --family")
            return rollback_alias(args.model or model_name(args.family), args.target, reason=args.reason,
                                  dag_run_id="cli")
        overrides = json_object(args.config)
        if args.family:
            overrides["families"] = args.family
        cfg = RegisterConfig.from_dict(overrides)
        candidates = find_profiled_candidates(parent_run_id=args.parent_run, candidate_run_id=args.candidate_run,
                                              families=cfg.families)
        results = register_all(candidates, cfg=cfg, dag_run_id=args.dag_run_id)
        out: dict[str, Any] = {"results": results}
        if not args.no_propose:
            out["proposal"] = propose_rollout(results, candidates=candidates, dag_run_id=args.dag_run_id)
        return out

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
