"""Data-quality checks of one daily ratings partition, run with great-expectations (GX) 1.x.

:func:`check_partition` validates a partition (``user_id``, ``item_id``, ``rating``, ``timestamp``; one
UTC day) before anything is trained on it, against the partitions before it, and returns a
:class:`CheckReport` with a status: ``failed`` (a hard, GX ``critical`` expectation failed: the caller stops
the run with :meth:`CheckReport.raise_for_failure`), ``warning`` (only ``warning`` expectations failed: the
run goes on, the warnings are recorded) or ``passed``.

What is checked: :func:`plan_day` gathers the day's bands (:mod:`recforge.pipeline.datagate.bands`) of the
row count, the label rate and the day's statistics (:mod:`recforge.pipeline.datagate.daystats`: drift,
concentration, novelty, repeats, a baseline model's AUC) and the scores of the last nightly's model
(:mod:`recforge.pipeline.datagate.modelcheck`); :mod:`recforge.pipeline.datagate.expectations`
turns them into three GX suites (partition, labels, statistics) run as one GX run. The suites' definitions
do not change from day to day: the day's values (time window, known ids, every bound) are expectation
parameters, so a re-run of a day just adds a new run. Each checkpoint updates Data Docs. The GX plumbing
(project, lock, checkpoints, runs, failure lines) is :mod:`recforge.pipeline.datagate.suites`.

:func:`check_day` is the nightly DAG's ``check`` task around it: it loads the partition, the earlier
partitions and the dimension tables from the data root, finds the newest nightly model before the day in the
work folder, logs the Data Docs and the outcome on the MLflow
parent run, and raises on a hard failure.

Importing this module does not import GX (an import of several seconds); :func:`check_partition` does.

CLI: ``python -m recforge.pipeline.datagate.checks --date 1998-04-22 [--config '{"label_rate_max": 0.8}']``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from recforge.contracts import tags
from recforge.contracts.layout import Catalog
from recforge.core import config as project
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, DataCheckError, DataError, first_line
from recforge.models.families import FAMILY_NAMES
from recforge.pipeline.data import ingest as data
from recforge.pipeline.datagate.bands import CRITICAL, Band, label_rate_bands, statistic_bands, volume_bands
from recforge.pipeline.datagate.daystats import day_statistics
from recforge.pipeline.datagate.docs_bundle import bundle_docs
from recforge.pipeline.datagate.expectations import (
    LABEL_COLUMN,
    LABELS,
    PARTITION,
    RATING_MAX,
    RATING_MIN,
    RAW_COLUMNS,
    STATISTICS_SUITE,
    band_expectations,
    band_params,
    band_suite,
    partition_expectations,
    statistics_frame,
)
from recforge.pipeline.datagate.modelcheck import REFERENCE_ROWS, NightlyModel, model_statistics, newest_model_before
from recforge.pipeline.datagate.suites import SuiteRun, json_safe, run_checkpoints

log = logging.getLogger(__name__)

DATASOURCE = "recforge_ratings"
WARNINGS_METRIC = "data_check_warnings"  # on the nightly parent run: how many warnings the gate raised


@typed_config
class CheckConfig:
    """Thresholds of the partition checks (the nightly DAG's ``check_config`` param). The bounds of the
    statistics are calibrated constants (:mod:`recforge.pipeline.datagate.bands`)."""

    volume_window_days: Annotated[int, Field(ge=1)] = 28  # trailing partitions the volume bands come from
    volume_z_warning: Annotated[float, Field(gt=0)] = 3.5  # |robust z of log rows| above this: warning
    volume_z_hard_low: Annotated[float, Field(gt=0)] = 9.0  # z below -this: hard failure (real min -8.4)
    volume_z_hard_high: Annotated[float, Field(gt=0)] = 6.0  # z above this: hard failure (real max 2.9)
    volume_scale_floor: Annotated[float, Field(gt=0)] = 0.25  # least robust scale of log rows
    window_days: Annotated[int, Field(ge=3)] = 28  # trailing partitions the drift statistics compare with
    statistics_suite: bool = True  # check the day's statistics (off only for data unlike MovieLens's)
    label_threshold: Annotated[int, Field(ge=RATING_MIN, le=RATING_MAX)] = 4  # label = rating >= label_threshold
    label_rate_min: Annotated[float, Field(ge=0, le=1)] = 0.2  # warning band of the mean label of the partition
    label_rate_max: Annotated[float, Field(ge=0, le=1)] = 0.9
    label_rate_z_hard: Annotated[float, Field(gt=0)] = 5.0  # hard band: window rate +- z standard errors
    model_check: bool = True  # score the day with the newest nightly model before it (skipped without one)
    model_family: Literal[FAMILY_NAMES] = "dlrm"  # whose nightly model scores the day
    model_reference_rows: Annotated[int, Field(ge=100)] = REFERENCE_ROWS  # trailing rows it scores, at most

    def __post_init__(self) -> None:
        if self.volume_z_warning > min(self.volume_z_hard_low, self.volume_z_hard_high):
            raise ConfigError(
                f"CheckConfig.volume_z_warning ({self.volume_z_warning}) must be <= volume_z_hard_low"
                f" ({self.volume_z_hard_low}) and volume_z_hard_high ({self.volume_z_hard_high})"
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
    success: bool  # no expectation failed, hard or warning
    failed: list[str]  # one line per failed expectation, in suite order; a warning's line starts "warning: "
    statistics: dict[str, Any]
    data_docs_index: Path  # index.html of the local Data Docs site
    data_docs_dir: Path
    notes: list[str] = field(default_factory=list)
    row_count: int = 0
    data_docs_pages: list[Path] = field(default_factory=list)  # this run's validation result pages
    hard_failures: list[str] = field(default_factory=list)  # the failed lines that stop the run
    warnings: list[str] = field(default_factory=list)  # the failed lines that only warn
    day_statistics: dict[str, float] = field(default_factory=dict)  # statistic -> the day's value

    @property
    def status(self) -> str:
        """``failed`` (a hard failure: stop), ``warning`` (warnings only: go on, record them) or ``passed``."""
        return "failed" if self.hard_failures else "warning" if self.warnings else "passed"

    def raise_for_failure(self) -> None:
        """Raise DataCheckError (listing every hard failure, then the warnings, and the Data Docs page) when a
        hard (critical) expectation failed; warnings alone do not raise."""
        if not self.hard_failures:
            return
        evaluated = self.statistics.get("evaluated_expectations", 0)
        lines = [
            f"data checks failed for partition {self.day.isoformat()}: "
            f"{len(self.hard_failures)} of {evaluated} expectations failed:",
            *(f"  - {line}" for line in self.hard_failures),
            *(f"  - {line}" for line in self.warnings),
            f"Data Docs: {self.data_docs_index}",
        ]
        raise DataCheckError("\n".join(lines), failed=list(self.failed), data_docs=str(self.data_docs_index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "success": self.success,
            "status": self.status,
            "failed": list(self.failed),
            "hard_failures": list(self.hard_failures),
            "warnings": list(self.warnings),
            "statistics": json_safe(self.statistics),
            "day_statistics": json_safe(self.day_statistics),
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


@dataclass
class DayPlan:
    """The day's bands (what :func:`check_partition` checks), the statistics' values and why any was skipped."""

    bands: list[Band]
    values: dict[str, float]
    notes: list[str]
    skipped: int  # band groups skipped for want of history
    seconds: float  # computing the statistics
    model_seconds: float = 0.0  # of which scoring with the nightly model


def plan_day(
    ratings: pd.DataFrame,
    *,
    trailing_row_counts: Sequence[int],
    history: pd.DataFrame | None,
    users: pd.DataFrame | None,
    items: pd.DataFrame | None,
    config: CheckConfig,
    model: NightlyModel | None = None,
) -> DayPlan:
    """The bands of the day's partition: volume (from ``trailing_row_counts``), label rate, and, given
    ``history`` (every earlier rating) and a partition with the four raw columns, the statistics of
    :mod:`recforge.pipeline.datagate.daystats` and, given ``model`` (the newest nightly model before the day),
    those of :mod:`recforge.pipeline.datagate.modelcheck`. Also :mod:`recforge.pipeline.datagate.calibrate`
    replays it."""
    started = time.perf_counter()
    notes: list[str] = []
    bands: list[Band] = []
    skipped = 0
    counts = [int(n) for n in trailing_row_counts][-config.volume_window_days:]
    if len(counts) < 3:
        notes.append(f"volume check skipped: only {len(counts)} trailing partition(s), need at least 3")
        skipped += 1
    else:
        bands += volume_bands(counts, z_warning=config.volume_z_warning, z_hard_low=config.volume_z_hard_low,
                              z_hard_high=config.volume_z_hard_high, floor=config.volume_scale_floor)
        notes.append(f"volume bands {bands[0].min_value}..{bands[0].max_value} rows (hard), "
                     f"{bands[1].min_value}..{bands[1].max_value} (warning), from the last {len(counts)} partitions")
    values: dict[str, float] = {}
    window_rate = None
    model_seconds = 0.0
    usable = set(RAW_COLUMNS) <= set(ratings.columns) and all(
        pd.api.types.is_integer_dtype(ratings[c]) and not ratings[c].isna().any() for c in RAW_COLUMNS)
    if not config.statistics_suite:
        notes.append("statistics skipped: CheckConfig.statistics_suite is off")
        skipped += 1
    elif history is None or history.empty:
        notes.append("statistics skipped: no earlier partitions to compare with")
        skipped += 1
    elif not usable:
        notes.append("statistics skipped: the partition's columns are not the four integer columns")
        skipped += 1
    else:
        stats = day_statistics(ratings, history, users=users, items=items, window_days=config.window_days,
                               label_threshold=config.label_threshold)
        notes += stats.notes
        window_rate = stats.reference.get("window_label_rate")
        if not config.model_check:
            notes.append("model check skipped: CheckConfig.model_check is off")
        elif model is not None and users is not None and items is not None:
            scores = model_statistics(model, ratings, history, users, items, window_days=config.window_days,
                                      reference_rows=config.model_reference_rows)
            stats.values.update(scores.values)
            notes += scores.notes
            model_seconds = scores.seconds
            if scores.values:
                notes.append(f"model check: {config.model_family} model of {model.day}, "
                             f"{int(scores.reference['model_reference_rows'])} trailing rows it did not train on")
        values = dict(stats.values)
        bands += statistic_bands(stats)
    day_users = int(ratings["user_id"].nunique()) if "user_id" in ratings.columns else 0
    bands += label_rate_bands(window_rate, day_users, z_hard=config.label_rate_z_hard,
                              fixed_min=config.label_rate_min, fixed_max=config.label_rate_max)
    return DayPlan(bands, values, notes, skipped, time.perf_counter() - started, model_seconds)


def check_partition(
    ratings: pd.DataFrame,
    *,
    day: dt.date,
    known_user_ids: Iterable[int],
    known_item_ids: Iterable[int],
    trailing_row_counts: Sequence[int],
    gx_root: Path,
    config: CheckConfig | None = None,
    history: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    model: NightlyModel | None = None,
) -> CheckReport:
    """Validate the ratings partition of ``day`` with GX, update Data Docs under ``gx_root``, and report.

    ``trailing_row_counts`` are the row counts of the partitions before ``day``, oldest first; the last
    ``config.volume_window_days`` of them set the volume bands, and with fewer than 3 the volume
    expectations are skipped (noted in the report). ``history`` (every rating before ``day``) and the
    ``users``/``items`` tables enable the statistics suite (drift, concentration, novelty, repeats, baseline
    AUC) and the hard label-rate band; without ``history`` they are skipped with a note. ``model`` (the newest
    nightly model before ``day``, :func:`recforge.pipeline.datagate.modelcheck.newest_model_before`) adds the
    model-based statistics to that suite. Failing or
    unevaluable expectations are reported, not raised: call :meth:`CheckReport.raise_for_failure` to stop on
    the hard ones.
    """
    started = time.perf_counter()
    config = config or CheckConfig()
    if isinstance(day, dt.datetime):
        day = day.date()
    day_start, day_end = day_window(day)
    plan = plan_day(ratings, trailing_row_counts=trailing_row_counts, history=history, users=users,
                    items=items, config=config, model=model)
    params: dict[str, Any] = {
        "day_start": day_start,
        "day_end": day_end,
        "known_user_ids": sorted({int(u) for u in known_user_ids}),
        "known_item_ids": sorted({int(i) for i in known_item_ids}),
        **band_params(plan.bands),
    }
    notes = list(plan.notes)
    labels = derive_labels(ratings, config.label_threshold)
    if LABEL_COLUMN not in labels.columns:
        notes.append("label not derived: column 'rating' is missing")
    else:
        notes.append(f"label = rating >= {config.label_threshold}")
    by_suite = {suite: [b for b in plan.bands if band_suite(b) == suite]
                for suite in (PARTITION, LABELS, STATISTICS_SUITE)}
    runs = [
        SuiteRun(PARTITION, lambda: partition_expectations(by_suite[PARTITION]), ratings),
        SuiteRun(LABELS, lambda: band_expectations(by_suite[LABELS]), labels),
    ]
    if by_suite[STATISTICS_SUITE]:
        runs.append(SuiteRun(STATISTICS_SUITE, lambda: band_expectations(by_suite[STATISTICS_SUITE]),
                             statistics_frame(plan.values)))
    outcome = run_checkpoints(gx_root, DATASOURCE, runs, run_name=day.isoformat(), params=params,
                              derived_from={LABEL_COLUMN: "rating"}, unix_time_columns=("timestamp",))
    hard = [f.line for f in outcome.failures if f.severity == CRITICAL]
    warned = [f"warning: {f.line}" for f in outcome.failures if f.severity != CRITICAL]
    failed = [f.line if f.severity == CRITICAL else f"warning: {f.line}" for f in outcome.failures]
    stats: dict[str, Any] = dict(outcome.statistics)
    evaluated = stats["evaluated_expectations"]
    stats["success_percent"] = 100.0 * stats["successful_expectations"] / evaluated if evaluated else 100.0
    stats["skipped_expectations"] = plan.skipped
    stats["seconds"] = round(time.perf_counter() - started, 3)
    stats["statistics_seconds"] = round(plan.seconds, 3)
    stats["model_check_seconds"] = round(plan.model_seconds, 3)
    log.info("data checks of %s: %s (%d hard failure(s), %d warning(s) of %d, %.1fs)", day,
             "FAILED" if hard else "passed", len(hard), len(warned), evaluated, stats["seconds"])
    index = outcome.data_docs_index
    return CheckReport(day=day, success=outcome.success, failed=failed, statistics=stats,
                       data_docs_index=index, data_docs_dir=index.parent, notes=notes, row_count=len(ratings),
                       data_docs_pages=outcome.data_docs_pages, hard_failures=hard, warnings=warned,
                       day_statistics=dict(plan.values))


def check_day(
    data_root: str,
    day: str | dt.date,
    check_config: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    gx_root: Path | None = None,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """The nightly DAG's ``check`` task: check the partition of ``day`` under ``data_root`` against the
    partitions before it, log the Data Docs and the outcome on the MLflow parent run (when given; pass,
    warning or fail), and raise DataCheckError on a hard failure.

    Known ids come from ``users.parquet`` / ``items.parquet``; the trailing row counts from the Parquet
    footers of the partitions before ``day``; the history from those partitions; the model that scores the day
    is the newest ``model_family`` model of a nightly run before ``day`` in ``catalog`` (default: the work
    folder), none needed (the check is then skipped with a note). A partition that cannot be
    read stops the run with a DataError naming the file. Returns :meth:`CheckReport.to_dict`.
    """

    cfg = CheckConfig.from_dict(check_config)
    day = data.parse_date(day) if isinstance(day, str) else day
    ratings = read_partition(data_root, day)
    users, items = data.load_dimensions(data_root)
    earlier = [d for d in data.list_partitions(data_root) if d < day]
    history = pd.concat([read_partition(data_root, d) for d in earlier], ignore_index=True) if earlier else None
    model, model_notes = (newest_model_before(catalog or Catalog.default(), cfg.model_family, day)
                          if cfg.model_check and cfg.statistics_suite else (None, []))
    report = check_partition(
        ratings,
        day=day,
        known_user_ids=users["user_id"],
        known_item_ids=items["item_id"],
        trailing_row_counts=data.partition_row_counts(data_root, earlier[-cfg.volume_window_days:]),
        gx_root=gx_root or project.gx_root(),
        config=cfg,
        history=history,
        users=users,
        items=items,
        model=model,
    )
    report.notes[:0] = model_notes
    if parent_run_id:
        log_data_docs(report, parent_run_id)
    report.raise_for_failure()
    return report.to_dict()


def read_partition(data_root: str, day: dt.date) -> pd.DataFrame:
    """The partition of ``day``; one that is not readable Parquet is a one-line DataError naming the file."""
    try:
        return data.load_partition(data_root, day)
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a truncated or non-Parquet file
        raise DataError(f"partition {day} is not readable Parquet: {data.partition_path(data_root, day)}: "
                        f"{first_line(err)}") from None


def log_data_docs(report: CheckReport, run_id: str, artifact_path: str = "data_docs") -> None:
    """Log this check's Data Docs (index, suites, the run's validation pages, report.json) on an MLflow run,
    tag it with the outcome (passed | warning | failed) and log the warnings as the metric
    ``data_check_warnings`` (their count; a metric, so a re-run may log it again) and the artifact
    ``data_docs/warnings.txt``.

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
        if report.warnings:
            (Path(tmp) / "warnings.txt").write_text("\n".join(report.warnings) + "\n")
        bundle_docs(Path(tmp))  # self-contained pages: they render offline and inside MLflow
        client.log_artifacts(run_id, tmp, artifact_path)
    client.set_tag(run_id, tags.DATA_CHECKS, report.status)
    client.log_metric(run_id, WARNINGS_METRIC, len(report.warnings))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.datagate.checks",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--date", type=data.parse_date, required=True, help="the partition's day (YYYY-MM-DD)")
    parser.add_argument("--data-root", default=None, help="data root (default: $RECFORGE_DATA_ROOT)")
    parser.add_argument("--config", default=None, help="CheckConfig fields as a JSON object")
    parser.add_argument("--gx-root", type=Path, default=None, help="great-expectations project (default: "
                        "$RECFORGE_HOME/gx)")
    parser.add_argument("--work-dir", type=Path, default=None, help="nightly work folder the model comes from "
                        "(default: $RECFORGE_WORK_DIR)")
    args = parser.parse_args(argv)
    return run_step(lambda: check_day(args.data_root or project.data_root(), args.date,
                                      json_object(args.config), gx_root=args.gx_root,
                                      catalog=Catalog(args.work_dir) if args.work_dir else None))


if __name__ == "__main__":
    sys.exit(main())
