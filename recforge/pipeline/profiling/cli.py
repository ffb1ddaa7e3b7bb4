"""The profiling stage from a shell: ``run`` does what the profile_variants DAG does (plan -> profile ->
summarize) in this process; ``report`` prints the summary tables of a nightly run.

CLI::

    python -m recforge.pipeline.profiling.cli run [--parent-run ID | --candidate-run ID] [--families dlrm,din] \\
        [--config JSON]
    python -m recforge.pipeline.profiling.cli report [--parent-run ID]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from recforge.contracts import tags
from recforge.core.cli import json_object, run_step
from recforge.core.errors import DataError
from recforge.models.families import BASELINE_FAMILY
from recforge.pipeline.profiling.runs import experiment_id, latest_nightly_run_id, tracking_client
from recforge.pipeline.profiling.stage import run_stage


def report(parent_run_id: str = "") -> str:
    """The profile/summary.md of every candidate of the nightly run (default: the latest finished one)."""
    client = tracking_client()
    parent = parent_run_id or latest_nightly_run_id(client)
    candidates = client.search_runs([experiment_id(client)], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                    f"tags.`{tags.STAGE}` = 'train'")
    parts = []
    for cand in sorted(candidates, key=lambda r: r.data.tags.get(tags.FAMILY, "")):
        if cand.data.tags.get(tags.FAMILY) == BASELINE_FAMILY:
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:
                parts.append(Path(client.download_artifacts(cand.info.run_id, "profile/summary.md", tmp)).read_text())
        except Exception:  # noqa: BLE001 - a family without profiles
            parts.append(f"### {cand.data.tags.get(tags.FAMILY)}: not profiled (run {cand.info.run_id})\n")
    if not parts:
        raise DataError(f"nightly run {parent} has no candidates; run nightly_retrain first")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.profiling.cli",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="profile the validated variants of a nightly run (default: the latest)")
    run.add_argument("--parent-run", default="", help="MLflow run id of a nightly parent run")
    run.add_argument("--candidate-run", default="", help="MLflow run id of one family's training run")
    run.add_argument("--families", default="", help="comma-separated families (default: all)")
    run.add_argument("--config", default=None,
                     help='ProfileStageConfig as JSON, e.g. {"targets": ["cpu-onnxruntime"], "profile": {...}}')
    rep = sub.add_parser("report", help="print the profile summary tables of a nightly run (default: the latest)")
    rep.add_argument("--parent-run", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "report":
        return run_step(lambda: report(args.parent_run))
    return run_step(lambda: run_stage(
        parent_run_id=args.parent_run, candidate_run_id=args.candidate_run,
        families=[f for f in args.families.split(",") if f], stage_config=json_object(args.config)))


if __name__ == "__main__":
    sys.exit(main())
