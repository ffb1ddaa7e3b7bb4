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

:func:`check_day` is the nightly DAG's ``check`` task around it: it loads the partition and its context from
the data root, logs the Data Docs on the MLflow parent run, and raises on failure.

Importing this module does not import GX (an import of several seconds); :func:`check_partition` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from tasks.config import config_from_dict
from tasks.errors import DataCheckError

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
BATCH_DEFINITION = "whole_partition"
DOCS_SITE = "local_site"
# The Data Docs index page lists the newest validation results only: GX reads every listed result to build
# it, so an unbounded index gets slower with every nightly run.
DOCS_INDEX_LIMIT = 60
# A partial_unexpected_list of this many values is kept per failing expectation.
PARTIAL_UNEXPECTED_COUNT = 20
EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds of the partition checks (``checks:`` section of a run config)."""

    volume_window_days: int = 14  # how many trailing partitions the median row count is taken over
    min_volume_ratio: float = 0.15  # rows >= ratio * median(trailing row counts)
    max_volume_ratio: float = 20.0  # rows <= ratio * median(trailing row counts)
    label_threshold: int = 4  # label = rating >= label_threshold
    label_rate_min: float = 0.2  # bounds of the mean label of the partition
    label_rate_max: float = 0.9

    def __post_init__(self) -> None:
        if self.volume_window_days < 1:
            raise ValueError(f"volume_window_days must be >= 1, got {self.volume_window_days}")
        if not 0 <= self.min_volume_ratio <= self.max_volume_ratio:
            raise ValueError(
                "min_volume_ratio and max_volume_ratio must satisfy 0 <= min <= max,"
                f" got {self.min_volume_ratio} and {self.max_volume_ratio}"
            )
        if not RATING_MIN <= self.label_threshold <= RATING_MAX:
            raise ValueError(
                f"label_threshold must be in {RATING_MIN}..{RATING_MAX}, got {self.label_threshold}"
            )
        if not 0 <= self.label_rate_min <= self.label_rate_max <= 1:
            raise ValueError(
                "label_rate_min and label_rate_max must satisfy 0 <= label_rate_min <= label_rate_max <= 1,"
                f" got {self.label_rate_min} and {self.label_rate_max}"
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
            "statistics": _json_safe(self.statistics),
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
    config: CheckConfig = CheckConfig(),
) -> CheckReport:
    """Validate the ratings partition of ``day`` with GX, update Data Docs under ``gx_root``, and report.

    ``trailing_row_counts`` are the row counts of the partitions before ``day``, oldest first; the last
    ``config.volume_window_days`` of them set the volume bounds, and with fewer than 3 the volume
    expectation is skipped (noted in the report). Failing or unevaluable expectations (a missing column,
    say) are reported, not raised: call :meth:`CheckReport.raise_for_failure` to stop on them.
    """
    started = time.perf_counter()
    if isinstance(day, dt.datetime):
        day = day.date()
    gx_root = Path(gx_root)
    gx_root.mkdir(parents=True, exist_ok=True)
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

    with _quiet(), _locked(gx_root):
        gx = _import_gx()
        from great_expectations.core.run_identifier import RunIdentifier

        context = _context(gx, gx_root)
        runs = [
            (_checkpoint(gx, context, PARTITION, _partition_expectations(volume is not None)), ratings),
            (_checkpoint(gx, context, LABELS, _label_expectations()), labels),
        ]
        run_id = RunIdentifier(run_name=day.isoformat(), run_time=dt.datetime.now(dt.UTC))
        results, pages = [], []
        for (checkpoint, suite), frame in runs:
            outcome = checkpoint.run(
                batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=run_id
            )
            for key, validation in outcome.run_results.items():
                results.append((suite, validation, frame))
                urls = context.get_docs_sites_urls(resource_identifier=key, site_name=DOCS_SITE)
                pages += _local_pages(urls)
        found = _local_pages(context.get_docs_sites_urls(site_name=DOCS_SITE))
        index = found[0] if found else gx_root / "gx" / "uncommitted" / "data_docs" / DOCS_SITE / "index.html"

    failed: list[str] = []
    stats = {"evaluated_expectations": 0, "successful_expectations": 0, "unsuccessful_expectations": 0}
    for suite, validation, frame in results:
        order = {e.id: n for n, e in enumerate(suite.expectations)}
        for key in stats:
            stats[key] += int(validation.statistics.get(key, 0))
        for result in sorted(validation.results, key=lambda r: order.get(r.expectation_config.id, 99)):
            if not result.success:
                failed.append(_failure_line(result, frame, params))
    evaluated = stats["evaluated_expectations"]
    stats["success_percent"] = 100.0 * stats["successful_expectations"] / evaluated if evaluated else 100.0
    stats["skipped_expectations"] = 0 if volume is not None else 1
    stats["seconds"] = round(time.perf_counter() - started, 3)
    success = not failed and all(v.success for _s, v, _f in results)
    log.info("data checks of %s: %s (%d of %d failed, %.1fs)", day, "passed" if success else "FAILED",
             len(failed), evaluated, stats["seconds"])
    return CheckReport(day=day, success=success, failed=failed, statistics=stats, data_docs_index=index,
                       data_docs_dir=index.parent, notes=notes, row_count=len(ratings), data_docs_pages=pages)


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
    from tasks import config as project
    from tasks import data

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

    from tasks import config as project

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
    client.set_tag(run_id, "recforge.data_checks", "passed" if report.success else "failed")


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


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def _partition_expectations(with_volume: bool) -> list:
    import great_expectations.expectations as gxe

    exps: list = [gxe.ExpectTableColumnsToMatchSet(column_set=list(RAW_COLUMNS), exact_match=True)]
    exps += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER_DTYPES) for c in RAW_COLUMNS]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in RAW_COLUMNS]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=RATING_MIN, max_value=RATING_MAX),
        gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set=_param("known_user_ids")),
        gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=_param("known_item_ids")),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=_param("day_start"), max_value=_param("day_end"), strict_max=True
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
    ]
    if with_volume:
        exps.append(
            gxe.ExpectTableRowCountToBeBetween(min_value=_param("min_rows"), max_value=_param("max_rows"))
        )
    return exps


def _label_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnMeanToBeBetween(
            column=LABEL_COLUMN, min_value=_param("label_rate_min"), max_value=_param("label_rate_max")
        )
    ]


# --- GX project --------------------------------------------------------------------------------------


def _import_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage statistics, no network
    import great_expectations as gx

    return gx


def _context(gx, gx_root: Path):
    """The file-backed context at ``gx_root``, with analytics and progress bars off and a bounded index."""
    context = gx.get_context(mode="file", project_root_dir=gx_root)
    variables = context.variables
    if variables.config_variables_file_path:
        # GX re-reads (YAML-parses) this secrets file on every access to a config variable, a few hundred
        # times a run (~0.6 s); the project keeps no secrets, so it goes. Takes effect on a new context.
        variables.config_variables_file_path = None
        variables.save()
        context = gx.get_context(mode="file", project_root_dir=gx_root)
        variables = context.variables
    changed = False
    if variables.analytics_enabled is not False:
        variables.analytics_enabled = False
        changed = True
    bars = variables.progress_bars or {}
    if bars.get("globally") is not False or bars.get("metric_calculations") is not False:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        changed = True
    sites = dict(variables.data_docs_sites or {})
    site = dict(sites.get(DOCS_SITE) or {})
    index_builder = dict(site.get("site_index_builder") or {"class_name": "DefaultSiteIndexBuilder"})
    if site and (index_builder.get("validation_results_limit") != DOCS_INDEX_LIMIT
                 or site.get("show_how_to_buttons") is not False):
        index_builder["validation_results_limit"] = DOCS_INDEX_LIMIT
        site["site_index_builder"] = index_builder
        site["show_how_to_buttons"] = False
        sites[DOCS_SITE] = site
        variables.data_docs_sites = sites
        changed = True
    if changed:
        variables.save()
    return context


def _checkpoint(gx, context, name: str, expectations: list):
    """Add or update asset ``name`` (+ batch definition, suite, validation definition, checkpoint)."""
    from great_expectations.checkpoint import UpdateDataDocsAction

    try:
        source = context.data_sources.get(DATASOURCE)
    except KeyError:
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)
    try:
        batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=name,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT},
        )
    )
    return checkpoint, validation.suite


def _local_pages(sites: list[dict]) -> list[Path]:
    """Local paths of the file:// pages in a get_docs_sites_urls() answer."""
    urls = [site.get("site_url") or "" for site in sites]
    return [Path(unquote(urlparse(url).path)) for url in urls if url.startswith("file://")]


@contextlib.contextmanager
def _locked(gx_root: Path) -> Iterator[None]:
    """Serialise runs on one GX project: the suites and the project config are shared files."""
    with open(gx_root / ".recforge-checks.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """GX logs a warning for every expectation it cannot evaluate; the report says it once, better."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# --- report lines ------------------------------------------------------------------------------------


def _failure_line(result, frame: pd.DataFrame, params: dict[str, Any]) -> str:
    config = result.expectation_config
    kind = config.type
    kwargs = {k: _resolve(v, params) for k, v in dict(config.kwargs).items()}
    head = f"{kind}({_describe(kind, kwargs)})"
    info = result.exception_info or {}
    error = _exception_message(info)
    if error is not None:
        wanted = [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list") or [])
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            reason = ", ".join(f"column '{c}'" for c in missing)
            if missing == [LABEL_COLUMN]:
                reason += " (derived from rating)"
            return f"{head}: not evaluated, {reason} missing"
        return f"{head}: not evaluated, {error}"
    return f"{head}: {_observed(kind, result.result or {}, kwargs, frame)}"


def _describe(kind: str, kw: dict[str, Any]) -> str:
    column = kw.get("column")
    if kind == "expect_table_columns_to_match_set":
        return ", ".join(kw.get("column_set") or []) + (", exact" if kw.get("exact_match", True) else "")
    if kind == "expect_column_values_to_be_in_type_list":
        return f"{column}, integer"
    if kind == "expect_column_values_to_be_in_set":
        values = kw.get("value_set") or []
        return f"{column} in {len(values)} known ids"
    if kind == "expect_compound_columns_to_be_unique":
        return ", ".join(kw.get("column_list") or [])
    if kind == "expect_table_row_count_to_be_between":
        return f"{kw.get('min_value')}..{kw.get('max_value')} rows"
    if column == "timestamp" and kind == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        return f"timestamp, [{_fmt(lo)}, {_fmt(hi)}) = [{_utc(lo)}, {_utc(hi)})"
    if "min_value" in kw or "max_value" in kw:
        return f"{column}, {_fmt(kw.get('min_value'))}..{_fmt(kw.get('max_value'))}"
    return str(column or "")


def _observed(kind: str, res: dict[str, Any], kw: dict[str, Any], frame: pd.DataFrame) -> str:
    if kind == "expect_table_columns_to_match_set":
        mismatched = (res.get("details") or {}).get("mismatched") or {}
        parts = []
        if mismatched.get("missing"):
            parts.append(f"missing {sorted(mismatched['missing'])}")
        if mismatched.get("unexpected"):
            parts.append(f"unexpected {sorted(mismatched['unexpected'])}")
        return "; ".join(parts) or f"observed {res.get('observed_value')}"
    if kind == "expect_column_values_to_be_in_type_list":
        column = kw.get("column")
        dtype = frame[column].dtype if column in frame.columns else res.get("observed_value")
        return f"observed dtype {dtype}"
    if kind == "expect_table_row_count_to_be_between":
        return f"observed {res.get('observed_value')} rows"
    if "unexpected_count" in res:
        line = f"{res['unexpected_count']} of {res.get('element_count')} rows unexpected"
        examples = _examples(res.get("partial_unexpected_list") or [])
        if examples and kind != "expect_column_values_to_not_be_null":
            line += f", e.g. {examples}"
        return line
    observed = res.get("observed_value")
    if kind == "expect_column_mean_to_be_between" and isinstance(observed, float):
        return f"observed {observed:.3f}"
    return f"observed {_fmt(observed)}"


def _examples(values: list) -> list:
    """A few distinct unexpected values (sorted where they can be); rows of a compound key as tuples."""
    distinct: list = []
    for value in values:
        value = _json_safe(value)
        if isinstance(value, dict):
            value = tuple(value.values())
        if value not in distinct:
            distinct.append(value)
    try:
        distinct.sort()
    except TypeError:
        pass
    return distinct[:EXAMPLES_SHOWN]


def _exception_message(info: dict) -> str | None:
    """First line of the exception GX caught for an expectation, or None when it raised none."""
    if not info:
        return None
    entries = [info] if "raised_exception" in info or "exception_message" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and (entry.get("raised_exception") or entry.get("exception_message")):
            message = str(entry.get("exception_message") or "error").strip().splitlines()
            return message[0] if message else "error"
    return None


def _resolve(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, dict) and "$PARAMETER" in value:
        return params.get(value["$PARAMETER"], value)
    return value


def _utc(seconds: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(int(seconds), dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    except (TypeError, ValueError, OverflowError):
        return str(seconds)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, float) and math.isnan(value):
            return None
        return value
    if dataclasses.is_dataclass(value):
        return _json_safe(dataclasses.asdict(value))
    return str(value)
