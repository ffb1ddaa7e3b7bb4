"""The great-expectations (GX) 1.x plumbing shared by RecForge's suites (:mod:`recforge.pipeline.datagate.checks`,
:mod:`recforge.pipeline.parity.gate`).

Every suite lives in one file-backed GX project rooted at ``gx_root`` (``gx_root/gx``, Data Docs under
``gx_root/gx/uncommitted/data_docs``). A caller describes its suites as :class:`SuiteRun` s (a name, a
factory of fresh expectations, the frame to validate) and calls :func:`run_checkpoints`, which

* opens the project (:func:`open_context`: analytics and progress bars off, no secrets file, a bounded Data
  Docs index) under an exclusive lock (:func:`locked`) and with GX's warnings muted (:func:`quiet`);
* add-or-updates, per suite, a pandas dataframe asset of the caller's data source with one whole-dataframe
  batch definition, and a suite, validation definition and checkpoint of the suite's name
  (:func:`add_or_update_checkpoint`); definitions carry no run-to-run values, those are expectation
  parameters (:func:`param`) passed when the checkpoints run, so a re-run only adds a new run;
* runs the checkpoints as one GX run (``RunIdentifier(run_name)``), each updating the Data Docs site;
* returns a :class:`SuiteOutcome`: the failed expectations as report lines (:func:`failure_line`), in suite
  order, the summed statistics, the Data Docs index and this run's validation pages.

Importing this module does not import GX (an import of several seconds); the functions that need it do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import logging
import math
import os
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

DOCS_SITE = "local_site"
# The Data Docs index page lists the newest validation results only: GX reads every listed result to build
# it, so an unbounded index gets slower with every nightly run.
DOCS_INDEX_LIMIT = 60
# Name of every asset's one batch definition (the whole dataframe). Existing projects store it: keep it.
BATCH_DEFINITION = "whole_partition"
# A partial_unexpected_list of this many values is kept per failing expectation.
PARTIAL_UNEXPECTED_COUNT = 20
EXAMPLES_SHOWN = 5  # unexpected values quoted in a failure line
LOCK_FILE = ".recforge-gx.lock"  # under gx_root; guards the whole GX project
STATISTICS = ("evaluated_expectations", "successful_expectations", "unsuccessful_expectations")


@dataclass(frozen=True)
class SuiteRun:
    """One suite to run on one frame: ``name`` names its asset, suite, validation definition and checkpoint."""

    name: str
    expectations: Callable[[], list]  # fresh expectation objects (GX ties each to the suite it is added to)
    frame: pd.DataFrame


@dataclass(frozen=True)
class Failure:
    """One failed (or unevaluable) expectation: its report line, GX type, ``column`` kwarg (if any) and GX
    severity (``critical``, ``warning`` or ``info``)."""

    line: str
    type: str
    column: str | None = None
    severity: str = "critical"


@dataclass
class SuiteOutcome:
    """What :func:`run_checkpoints` returns."""

    success: bool  # every validation succeeded (so also: no failures)
    failures: list[Failure]  # the runs in the order given, each in suite order
    statistics: dict[str, int]  # STATISTICS summed over the runs
    data_docs_index: Path  # index.html of the local Data Docs site
    data_docs_pages: list[Path] = field(default_factory=list)  # this run's validation result pages


def param(name: str) -> dict[str, str]:
    """An expectation-parameter reference: its value comes from ``expectation_parameters[name]`` at run time."""
    return {"$PARAMETER": name}


def run_checkpoints(
    gx_root: Path,
    datasource: str,
    runs: Sequence[SuiteRun],
    *,
    run_name: str,
    params: Mapping[str, Any],
    derived_from: Mapping[str, str] | None = None,
    unix_time_columns: Collection[str] = (),
) -> SuiteOutcome:
    """Run ``runs`` (assets of pandas data source ``datasource``) as GX run ``run_name`` with expectation
    parameters ``params`` on the project at ``gx_root`` (created if missing), updating its Data Docs.

    Failing or unevaluable expectations are reported, not raised. ``derived_from`` and ``unix_time_columns``
    only shape the failure lines (see :func:`failure_line`).
    """
    gx_root = Path(gx_root)
    gx_root.mkdir(parents=True, exist_ok=True)
    params = dict(params)
    with quiet(), locked(gx_root):
        import_gx()
        from great_expectations.core.run_identifier import RunIdentifier

        context = open_context(gx_root)
        checkpoints = [
            (*add_or_update_checkpoint(context, datasource, run.name, run.expectations()), run.frame) for run in runs
        ]
        run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.UTC))
        results, pages = [], []
        for checkpoint, suite, frame in checkpoints:
            ran = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=run_id)
            for key, validation in ran.run_results.items():
                results.append((suite, validation, frame))
                pages += local_pages(context.get_docs_sites_urls(resource_identifier=key, site_name=DOCS_SITE))
        found = local_pages(context.get_docs_sites_urls(site_name=DOCS_SITE))
        index = found[0] if found else gx_root / "gx" / "uncommitted" / "data_docs" / DOCS_SITE / "index.html"

    failures: list[Failure] = []
    stats = dict.fromkeys(STATISTICS, 0)
    for suite, validation, frame in results:
        order = {e.id: n for n, e in enumerate(suite.expectations)}
        for key in stats:
            stats[key] += int(validation.statistics.get(key, 0))
        for result in sorted(validation.results, key=lambda r: order.get(r.expectation_config.id, len(order))):
            if not result.success:
                config = result.expectation_config
                line = failure_line(result, frame, params, derived_from=derived_from,
                                    unix_time_columns=unix_time_columns)
                severity = getattr(config.severity, "value", config.severity) or "critical"
                failures.append(Failure(line, config.type, config.kwargs.get("column"), str(severity)))
    success = not failures and all(v.success for _s, v, _f in results)
    return SuiteOutcome(success=success, failures=failures, statistics=stats, data_docs_index=index,
                        data_docs_pages=pages)


# --- GX project --------------------------------------------------------------------------------------


def import_gx():
    """The ``great_expectations`` module, imported with usage statistics (and so network calls) off."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def open_context(gx_root: Path):
    """The file-backed context at ``gx_root``, with analytics and progress bars off and a bounded index."""
    gx = import_gx()
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


def add_or_update_checkpoint(context, datasource: str, name: str, expectations: list):
    """(checkpoint, suite) of asset ``name`` of pandas data source ``datasource``: the data source, asset and
    batch definition are added if missing; suite, validation definition and checkpoint (all named ``name``;
    SUMMARY results, Data Docs updated) are add-or-updated."""
    gx = import_gx()
    from great_expectations.checkpoint import UpdateDataDocsAction

    try:
        source = context.data_sources.get(datasource)
    except KeyError:
        source = context.data_sources.add_pandas(datasource)
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


def local_pages(sites: list[dict]) -> list[Path]:
    """Local paths of the file:// pages in a get_docs_sites_urls() answer."""
    urls = [site.get("site_url") or "" for site in sites]
    return [Path(unquote(urlparse(url).path)) for url in urls if url.startswith("file://")]


@contextlib.contextmanager
def locked(gx_root: Path) -> Iterator[None]:
    """Serialise runs on one GX project (``gx_root/.recforge-gx.lock``): definitions and config are shared files."""
    with open(Path(gx_root) / LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """GX logs a warning for every expectation it cannot evaluate; the failure lines say it once, better."""
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


def failure_line(
    result,
    frame: pd.DataFrame,
    params: Mapping[str, Any],
    *,
    derived_from: Mapping[str, str] | None = None,
    unix_time_columns: Collection[str] = (),
) -> str:
    """One line for a failed expectation result: ``type(what it asks): what was observed``, parameters
    resolved from ``params``; an expectation GX could not evaluate says why (a missing column, say).

    ``derived_from`` maps a derived column to what it is derived from (said when it is missing);
    bounds on a ``unix_time_columns`` column are also shown as UTC times.
    """
    config = result.expectation_config
    kind = config.type
    kwargs = {k: _resolve(v, params) for k, v in dict(config.kwargs).items()}
    head = f"{kind}({_describe(kind, kwargs, unix_time_columns)})"
    info = result.exception_info or {}
    error = _exception_message(info)
    if error is not None:
        wanted = [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list") or [])
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            reason = ", ".join(f"column '{c}'" for c in missing)
            if len(missing) == 1 and missing[0] in (derived_from or {}):
                reason += f" (derived from {derived_from[missing[0]]})"
            return f"{head}: not evaluated, {reason} missing"
        return f"{head}: not evaluated, {error}"
    return f"{head}: {_observed(kind, result.result or {}, kwargs, frame)}"


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars unwrapped, NaN -> None, dataclasses as dicts, else str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
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
        return json_safe(dataclasses.asdict(value))
    return str(value)


def _describe(kind: str, kw: dict[str, Any], unix_time_columns: Collection[str]) -> str:
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
    if column in unix_time_columns and kind == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        return f"{column}, [{_fmt(lo)}, {_fmt(hi)}) = [{_utc(lo)}, {_utc(hi)})"
    if kw.get("min_value") is None and kw.get("max_value") is not None:
        return f"{column} <= {_fmt(kw['max_value'])}"
    if kw.get("max_value") is None and kw.get("min_value") is not None:
        return f"{column} >= {_fmt(kw['min_value'])}"
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
        return f"observed {observed:#.4g}"  # 4 significant digits, trailing zeros kept: 0.01235, 1.000
    return f"observed {_fmt(observed)}"


def _examples(values: list) -> list:
    """A few distinct unexpected values (sorted where they can be); rows of a compound key as tuples."""
    distinct: list = []
    for value in values:
        value = json_safe(value)
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


def _resolve(value: Any, params: Mapping[str, Any]) -> Any:
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
