"""Front door of `make run`: check a nightly run's date and params before Airflow starts, report after it ends.

    python -m recforge.pipeline.training.nightly check --date 1998-04-22 --conf '{"families": ["din"]}'
    python -m recforge.pipeline.training.nightly report --date 1998-04-22

``check`` turns a bad date or a bad param into one line (instead of a task traceback deep in an Airflow
log); ``report`` prints the MLflow parent run of that date: the data gate's outcome (with its warnings, when
it only warned) and each family's test AUC against the baseline.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import field
from typing import Any

from recforge.contracts import tags
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.config import config_from_dict, typed_config
from recforge.core.errors import ConfigError, DataError
from recforge.models.families import FAMILY_NAMES
from recforge.pipeline.data import ingest as data
from recforge.pipeline.datagate.checks import CheckConfig
from recforge.pipeline.training.tracking import experiment_url, run_url
from recforge.pipeline.training.train import TrainConfig


@typed_config
class NightlyParams:
    """The params of a nightly_retrain run (the DAG's params; ``make run``'s CONF)."""

    families: tuple[str, ...] = FAMILY_NAMES  # families to train; logreg is the reference baseline
    train_config: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    check_config: dict[str, Any] = field(default_factory=dict)  # CheckConfig overrides

    def __post_init__(self) -> None:
        # the nested configs are checked as the DAG's tasks will build them
        TrainConfig.from_dict(self.train_config)
        TrainConfig(families=self.families)
        CheckConfig.from_dict(self.check_config)


def check_conf(day: str, conf_text: str) -> dict:
    """Validate the logical date and the DAG params the same way the DAG's tasks will."""
    date = data.parse_date(day)
    first, last = data.first_and_last_day(config.raw_dir())
    if not first <= date <= last:
        raise ConfigError(f"date {date} is outside the data ({first}..{last})")
    params = config_from_dict(NightlyParams, json_object(conf_text, "CONF"))
    return {"date": date.isoformat(), "families": list(params.families)}


def report(day: str) -> str:
    """The summary table logged on the nightly parent run of ``day``."""
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    experiment = client.get_experiment_by_name(config.experiment_name())
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"tags.`{tags.KIND}` = 'nightly' and tags.`{tags.LOGICAL_DATE}` = '{day}'",
        order_by=["start_time DESC"], max_results=1)
    if not runs:
        raise DataError(f"no nightly run for {day} in MLflow at {config.tracking_uri()}")
    run = runs[0]
    lines = [f"nightly-{day}: {run.info.status}  (MLflow run {run.info.run_id}, "
             f"{run_url(config.tracking_uri(), experiment.experiment_id, run.info.run_id)}; every run: "
             f"{experiment_url(config.tracking_uri(), experiment.experiment_id)})"]
    if run.info.status == "FINISHED":  # summary.md opens with the data gate's outcome and warnings
        with open(client.download_artifacts(run.info.run_id, "summary.md")) as fh:
            lines.append(fh.read())
        return "\n".join(lines)
    if checks := run.data.tags.get(tags.DATA_CHECKS):  # passed | warning | failed (the data gate)
        lines.append(f"data checks: {checks}")
        if checks == "warning":  # the run went on: say what the gate warned about
            with open(client.download_artifacts(run.info.run_id, "data_docs/warnings.txt")) as fh:
                lines += [f"  - {line}" for line in fh.read().splitlines()]
    if failure := run.data.tags.get(tags.FAILURE):
        lines.append(f"failure: {failure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.training.nightly",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate the date and params of a nightly run")
    check.add_argument("--date", required=True)
    check.add_argument("--conf", default="{}")
    rep = sub.add_parser("report", help="print the result of the nightly run of a date")
    rep.add_argument("--date", required=True)
    args = parser.parse_args(argv)

    if args.command == "check":
        return run_step(lambda: check_conf(args.date, args.conf))
    return run_step(lambda: report(args.date))


if __name__ == "__main__":
    sys.exit(main())
