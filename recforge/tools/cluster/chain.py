"""``python -m recforge.tools.cluster.chain --date D`` (``make chain DATE=D``): the nightly chain through the
running cluster's scheduler.

Unpauses the four chain DAGs, triggers ``nightly_retrain`` for the logical date D through Airflow's REST API (run id
``chain__D``), then follows the runs the scheduler starts from the Assets (``recforge.tools.chain``). Prints each
DAG's state and wall time; exits 1 unless all four succeed. A logical date that already has a nightly_retrain run is
not triggered again: that run's chain is followed and reported (one result per date).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recforge.core.cli import json_object
from recforge.core.errors import RecForgeError
from recforge.tools.chain import AirflowApi, ChainError, follow_chain, logical_date, report
from recforge.tools.cluster.cluster import Cluster


def require_postgres(cluster: Cluster) -> None:
    """ChainError naming PostgreSQL when it does not answer: without it Airflow's API answers logins but no query."""
    if not cluster.postgres.healthy():
        raise ChainError(f"PostgreSQL (Airflow's metadata DB and MLflow's store) is not reachable on "
                         f"{cluster.postgres.address}; start the cluster: make cluster-up "
                         f"(log: {cluster.postgres.log})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.cluster.chain",
                                     description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--date", required=True, help="logical date of nightly_retrain, YYYY-MM-DD")
    parser.add_argument("--conf", default="{}",
                        help="nightly_retrain params as JSON, e.g. '{\"families\": [\"dlrm\"]}'")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the whole chain")
    args = parser.parse_args(argv)
    try:
        logical_date(args.date)
        conf = json_object(args.conf, "--conf")
        cluster = Cluster.load()
        require_postgres(cluster)
        api = AirflowApi(cluster.cfg.airflow_url, cluster.postgres.secrets["airflow_admin_password"])
        results = follow_chain(api, args.date, conf, timeout_s=args.timeout)
    except RecForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return report(args.date, results)


if __name__ == "__main__":
    sys.exit(main())
