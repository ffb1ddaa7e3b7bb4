"""``python -m recforge.tools.cluster up|down|status`` (``make cluster-up``, ``cluster-down``, ``cluster-status``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recforge.core.cli import json_object, run_step
from recforge.tools.cluster import cluster


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recforge.tools.cluster",
        description="The distributed mode on this machine: PostgreSQL, Redis, MLflow (proxied artifacts), Airflow "
                    "(scheduler, DAG processor, triggerer, API server, CeleryExecutor) and two Celery workers, all "
                    "on 127.0.0.1, state under $RECFORGE_HOME/cluster (docs/cluster.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start what is not running and wait until every service answers")
    start.add_argument("--config", default="{}",
                       help="ClusterConfig as JSON (ports), e.g. '{\"airflow_port\": 8091}'; saved for later commands")
    sub.add_parser("down", help="stop every service (nothing running is fine)")
    sub.add_parser("status", help="one line per service; exit status 1 unless every one answers")
    args = parser.parse_args(argv)

    if args.command == "status":
        def report() -> int:
            healthy, lines = cluster.status()
            print("\n".join(lines))
            return 0 if healthy else 1
        result: list[int] = []
        code = run_step(lambda: result.append(report()))
        return code or result[0]
    if args.command == "down":
        return run_step(cluster.down)
    return run_step(lambda: cluster.up(json_object(args.config)) and None)


if __name__ == "__main__":
    sys.exit(main())
