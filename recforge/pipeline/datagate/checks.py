"""Data-quality checks of one daily ratings partition, run with great-expectations (GX) 1.x.

:func:`check_partition` validates a partition (``user_id``, ``item_id``, ``rating``, ``timestamp``; one
UTC day) before anything is trained on it, and returns a :class:`CheckReport`; the caller stops the run
with :meth:`CheckReport.raise_for_failure`.

How it is laid out in GX (a file-backed project rooted at ``gx_root``, Data Docs written under it):

* pandas data source ``recforge_ratings`` with two dataframe assets, each with one whole-dataframe batch
  definition: ``ratings_partition`` (the partition as stored) and ``ratings_partition_labels`` (the derived
  column ``label = rating >= label_threshold``). The derived column lives in its own frame so that the
  schema expectation can ask for the partition's *exact* column set.
* one expectation suite, validation definition and checkpoint per asset, all of the same name. The suites
  do not change from day to day: the day's values (the day's time window, the known ids, the volume and
  label-rate bounds) are passed as expectation parameters (``{"$PARAMETER": ...}``) when the checkpoint
  runs, so every definition is add-or-updated idempotently and a re-run of a day just adds a new run.
* each checkpoint updates Data Docs (``UpdateDataDocsAction``) with its validation result.

The GX plumbing (project, lock, checkpoints, runs, failure lines) is :mod:`recforge.pipeline.datagate.suites`;
this module holds the suites, their parameters and the report.

:func:`check_day` is the nightly DAG's ``check`` task around it: it loads the partition and its context from
the data root, logs the Data Docs on the MLflow parent run, and raises on failure.

Importing this module does not import GX (an import of several seconds); :func:`check_partition` does.

CLI: ``python -m recforge.pipeline.datagate.checks --date 1998-04-22 [--config '{"label_rate_max": 0.8}']``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recforge.contracts import tags
from recforge.core import config as project
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, DataCheckError
from recforge.pipeline.data import ingest as data
from recforge.pipeline.datagate.suites import SuiteRun, json_safe, param, run_checkpoints

log = logging.getLogger(__name__)

RAW_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
LABEL_COLUMN = "label"
RATING_MIN, RATING_MAX = 1, 5
# Accepted dtypes of the id/rating/timestamp columns: numpy integers and pandas' nullable integers. GX 1.x
# resolves a type name with np.dtype(name) or getattr(pandas, name), so the nullable ones are spelled by
# their class name ("Int64Dtype"); "Int64" would match nothing.
INTEGER_DTYPES = [
    *(f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)),
    *(f"{sign}Int{bits}Dtype" for sign in ("", "U") for bits in (8, 16, 32, 64)),
]

DATASOURCE = "recforge_ratings"
PARTITION = "ratings_partition"  # asset, suite, validation definition and checkpoint of the partition
LABELS = "ratings_partition_labels"  # the same for the derived label frame


@typed_config
class CheckConfig:
    """Thresholds of the partition checks (the nightly DAG's ``check_config`` param)."""

    volume_window_days: Annotated[int, Field(ge=1)] = 14  # trailing partitions the median row count is taken over
    min_volume_ratio: Annotated[float, Field(ge=0)] = 0.15  # rows >= ratio * median(trailing row counts)
    max_volume_ratio: Annotated[float, Field(ge=0)] = 20.0  # rows <= ratio * median(trailing row counts)
    label_threshold: Annotated[int, Field(ge=RATING_MIN, le=RATING_MAX)] = 4  # label = rating >= label_threshold
    label_rate_min: Annotated[float, Field(ge=0, le=1)] = 0.2  # bounds of the mean label of the partition
    label_rate_max: Annotated[float, Field(ge=0, le=1)] = 0.9

    def __post_init__(self) -> None:
        if self.min_volume_ratio > self.max_volume_ratio:
            raise ConfigError(
                f"CheckConfig.min_volume_ratio ({self.min_volume_ratio}) must be <= max_volume_ratio"
                f" ({self.max_volume_ratio})"
            )
        if self.label_rate_min > self.label_rate_max:
            raise ConfigError(
                f"CheckConfig.label_rate_min ({self.label_rate_min}) must be <= label_rate_max"
                f" ({self.label_rate_max})"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CheckConfig:
        """Build from a plain dict; unknown keys, wrong types and bad values raise ConfigError."""
        return config_from_dict(cls, d)


@dataclass
class CheckReport:
    """Outcome of :func:`check_partition`."""

    day: dt.date
    success: bool
    failed: list[str]  # one line per failed expectation, in suite order
    statistics: dict[str, Any]
    data_docs_index: Path  # index.html of the local Data Docs site
    data_docs_dir: Path
    notes: list[str] = field(default_factory=list)
    row_count: int = 0
    data_docs_pages: list[Path] = field(default_factory=list)  # this run's validation result pages

    def raise_for_failure(self) -> None:
        """Raise DataCheckError (listing every failed expectation and the Data Docs page) unless success."""
        if self.success:
            return
        evaluated = self.statistics.get("evaluated_expectations", 0)
        lines = [
            f"data checks failed for partition {self.day.isoformat()}: "
            f"{len(self.failed)} of {evaluated} expectations failed:",
            *(f"  - {line}" for line in self.failed),
            f"Data Docs: {self.data_docs_index}",
        ]
        raise DataCheckError("\n".join(lines), failed=list(self.failed), data_docs=str(self.data_docs_index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "success": self.success,
            "failed": list(self.failed),
            "statistics": json_safe(self.statistics),
            "data_docs_index": str(self.data_docs_index),
            "data_docs_dir": str(self.data_docs_dir),
            "notes": list(self.notes),
            "row_count": int(self.row_count),
            "data_docs_pages": [str(p) for p in self.data_docs_pages],
        }


def day_window(day: dt.date) -> tuple[int, int]:
    """[start, end) of ``day`` in unix seconds, UTC."""
    start = int(dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).timestamp())
    return start, start + 86_400


def volume_bounds(trailing_row_counts: Sequence[int], config: CheckConfig) -> tuple[int, int, float] | None:
    """(min rows, max rows, median) from the last ``volume_window_days`` counts; None under 3 partitions."""
    window = [int(n) for n in trailing_row_counts][-config.volume_window_days :]
    if len(window) < 3:
        return None
    median = float(statistics.median(window))
    return math.ceil(config.min_volume_ratio * median), math.floor(config.max_volume_ratio * median), median


def check_partition(
    ratings: pd.DataFrame,
    *,
    day: dt.date,
    known_user_ids: Iterable[int],
    known_item_ids: Iterable[int],
    trailing_row_counts: Sequence[int],
    gx_root: Path,
    config: CheckConfig | None = None,
) -> CheckReport:
    """Validate the ratings partition of ``day`` with GX, update Data Docs under ``gx_root``, and report.

    ``trailing_row_counts`` are the row counts of the partitions before ``day``, oldest first; the last
    ``config.volume_window_days`` of them set the volume bounds, and with fewer than 3 the volume
    expectation is skipped (noted in the report). Failing or unevaluable expectations (a missing column,
    say) are reported, not raised: call :meth:`CheckReport.raise_for_failure` to stop on them.
    """
    started = time.perf_counter()
    config = config or CheckConfig()
    if isinstance(day, dt.datetime):
        day = day.date()
    notes: list[str] = []
    day_start, day_end = day_window(day)
    users = sorted({int(u) for u in known_user_ids})
    items = sorted({int(i) for i in known_item_ids})
    volume = volume_bounds(trailing_row_counts, config)
    params: dict[str, Any] = {
        "day_start": day_start,
        "day_end": day_end,
        "known_user_ids": users,
        "known_item_ids": items,
        "label_rate_min": float(config.label_rate_min),
        "label_rate_max": float(config.label_rate_max),
    }
    if volume is None:
        notes.append(
            f"volume check skipped: only {len(trailing_row_counts)} trailing partition(s), need at least 3"
        )
    else:
        params["min_rows"], params["max_rows"], median = volume
        notes.append(
            f"volume bounds {params['min_rows']}..{params['max_rows']} rows "
            f"(median {median:g} of the last {min(len(trailing_row_counts), config.volume_window_days)} "
            "partitions)"
        )
    labels = derive_labels(ratings, config.label_threshold)
    if LABEL_COLUMN not in labels.columns:
        notes.append("label not derived: column 'rating' is missing")
    else:
        notes.append(f"label = rating >= {config.label_threshold}")

    outcome = run_checkpoints(
        gx_root,
        DATASOURCE,
        [
            SuiteRun(PARTITION, lambda: _partition_expectations(volume is not None), ratings),
            SuiteRun(LABELS, _label_expectations, labels),
        ],
        run_name=day.isoformat(),
        params=params,
        derived_from={LABEL_COLUMN: "rating"},
        unix_time_columns=("timestamp",),
    )
    failed = [f.line for f in outcome.failures]
    stats: dict[str, Any] = dict(outcome.statistics)
    evaluated = stats["evaluated_expectations"]
    stats["success_percent"] = 100.0 * stats["successful_expectations"] / evaluated if evaluated else 100.0
    stats["skipped_expectations"] = 0 if volume is not None else 1
    stats["seconds"] = round(time.perf_counter() - started, 3)
    success = outcome.success
    log.info("data checks of %s: %s (%d of %d failed, %.1fs)", day, "passed" if success else "FAILED",
             len(failed), evaluated, stats["seconds"])
    index = outcome.data_docs_index
    return CheckReport(day=day, success=success, failed=failed, statistics=stats, data_docs_index=index,
                       data_docs_dir=index.parent, notes=notes, row_count=len(ratings),
                       data_docs_pages=outcome.data_docs_pages)


def check_day(
    data_root: str,
    day: str | dt.date,
    check_config: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    gx_root: Path | None = None,
) -> dict[str, Any]:
    """The nightly DAG's ``check`` task: check the partition of ``day`` under ``data_root``, log the Data Docs
    on the MLflow parent run (when given; pass or fail), and raise DataCheckError on failure.

    Known ids come from ``users.parquet`` / ``items.parquet``; the trailing row counts from the Parquet
    footers of the partitions before ``day``. Returns :meth:`CheckReport.to_dict`.
    """

    cfg = CheckConfig.from_dict(check_config)
    day = data.parse_date(day) if isinstance(day, str) else day
    ratings = data.load_partition(data_root, day)
    users, items = data.load_dimensions(data_root)
    earlier = [d for d in data.list_partitions(data_root) if d < day][-cfg.volume_window_days :]
    report = check_partition(
        ratings,
        day=day,
        known_user_ids=users["user_id"],
        known_item_ids=items["item_id"],
        trailing_row_counts=data.partition_row_counts(data_root, earlier),
        gx_root=gx_root or project.gx_root(),
        config=cfg,
    )
    if parent_run_id:
        log_data_docs(report, parent_run_id)
    report.raise_for_failure()
    return report.to_dict()


def log_data_docs(report: CheckReport, run_id: str, artifact_path: str = "data_docs") -> None:
    """Log this check's Data Docs (index, suites, the run's validation pages, report.json) on an MLflow run.

    Only this run's pages travel (the site keeps every run's); links on the logged index to older runs'
    pages therefore lead nowhere inside MLflow.
    """
    import shutil
    import tempfile

    import mlflow

    client = mlflow.MlflowClient(project.tracking_uri())
    docs = report.data_docs_dir
    pages = [report.data_docs_index, *sorted((docs / "expectations").glob("*.html")), *report.data_docs_pages]
    with tempfile.TemporaryDirectory() as tmp:
        for page in pages:
            if page.is_file() and docs in page.parents:
                target = Path(tmp) / page.relative_to(docs)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(page, target)
        (Path(tmp) / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        client.log_artifacts(run_id, tmp, artifact_path)
    client.set_tag(run_id, tags.DATA_CHECKS, "passed" if report.success else "failed")


def derive_labels(ratings: pd.DataFrame, threshold: int) -> pd.DataFrame:
    """Frame with the derived ``label`` column: 1.0 where rating >= threshold, else 0.0, NaN where the rating
    is null or not a number; without a ``rating`` column, a frame without columns."""
    if "rating" not in ratings.columns:
        return pd.DataFrame(index=ratings.index)
    rating = pd.to_numeric(ratings["rating"], errors="coerce")
    if isinstance(rating.dtype, pd.api.extensions.ExtensionDtype):
        rating = rating.astype("float64")
    label = (rating >= threshold).astype("float64").where(rating.notna())
    return pd.DataFrame({LABEL_COLUMN: label}, index=ratings.index)


# --- suites ------------------------------------------------------------------------------------------


def _partition_expectations(with_volume: bool) -> list:
    import great_expectations.expectations as gxe

    exps: list = [gxe.ExpectTableColumnsToMatchSet(column_set=list(RAW_COLUMNS), exact_match=True)]
    exps += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER_DTYPES) for c in RAW_COLUMNS]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in RAW_COLUMNS]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=RATING_MIN, max_value=RATING_MAX),
        gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=param("known_user_ids")),
        gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=param("known_item_ids")),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=param("day_start"), max_value=param("day_end"), strict_max=True
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
    ]
    if with_volume:
        exps.append(
            gxe.ExpectTableRowCountToBeBetween(min_value=param("min_rows"), max_value=param("max_rows"))
        )
    return exps


def _label_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnMeanToBeBetween(
            column=LABEL_COLUMN, min_value=param("label_rate_min"), max_value=param("label_rate_max")
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.datagate.checks",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--date", type=data.parse_date, required=True, help="the partition's day (YYYY-MM-DD)")
    parser.add_argument("--data-root", default=None, help="data root (default: $RECFORGE_DATA_ROOT)")
    parser.add_argument("--config", default=None, help="CheckConfig fields as a JSON object")
    parser.add_argument("--gx-root", type=Path, default=None, help="great-expectations project (default: "
                        "$RECFORGE_HOME/gx)")
    args = parser.parse_args(argv)
    return run_step(lambda: check_day(args.data_root or project.data_root(), args.date,
                                      json_object(args.config), gx_root=args.gx_root))


if __name__ == "__main__":
    sys.exit(main())
