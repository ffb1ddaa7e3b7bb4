"""Accuracy-parity gate of compressed variants: a pruned, distilled, INT8 or FP16 model goes on to profiling
and the registry only if it keeps accuracy parity with the full-precision (fp32) model of its family.

:func:`validate_variant` compares a variant's test-split probabilities with the fp32 model's (the
*reference*) on the same rows and returns a :class:`ParityVerdict`; every threshold is in
:class:`ParityConfig`. The variant is rejected, with one human-readable line per broken rule, when

* its test AUC is below ``min_auc_ratio`` × the reference AUC (0.999: MLPerf's DLRM "high accuracy" rule),
  or its test logloss is more than ``max_logloss_increase`` (relative) above the reference logloss;
* on any slice (each value of each ``slice_columns`` column) with at least ``min_slice_samples`` rows and
  both classes, its AUC is below ``min_slice_auc_ratio`` × the reference AUC on that slice (smaller slices
  are skipped and reported: their AUC is too noisy to gate on);
* one of its quantized embedding tables (``tables``: the reports of :mod:`recforge.pipeline.compression.table_quant`)
  is further from its fp32 table than the rowwise quantization bound allows (``check_quantization``, naming it);
* the great-expectations *prediction suite* fails on the frame of its predictions (one row per test row):
  predictions not null (NaN), within ``[prediction_min, prediction_max]`` (so also no ±inf), mean predicted
  CTR within the reference mean ± ``mean_ctr_tolerance``, and rank agreement with the reference
  (Spearman ρ) at least ``min_spearman``.

Spearman in GX: GX has no rank-correlation expectation, so the prediction frame carries a derived per-row
column ``rank_disagreement = (z_p - z_r)² / 2``, where z_p and z_r are the row's rank (ties averaged) in
the variant's and in the reference's predictions, standardised to mean 0 and variance 1. Since both z have
mean square 1, ``mean(rank_disagreement) = 1 - mean(z_p z_r) = 1 - ρ`` exactly (ρ = Pearson correlation of
the ranks = Spearman's ρ with ties handled as scipy.stats.spearmanr does), and the rule is the built-in
``expect_column_mean_to_be_between(rank_disagreement, 0..1 - min_spearman)``. The column also tells,
row by row, which predictions moved in the ranking. Ranks are taken over the rows where both predictions
are finite (the others are NaN there, and caught by the other expectations); a variant whose predictions
are all tied has no ranking: its rows get 1.0 (ρ taken as 0 by GX; reported as NaN).

The suite has no day-to-day or variant-to-variant values in it: the bounds are expectation parameters
(``{"$PARAMETER": ...}``), so one suite, validation definition and checkpoint (``parity_predictions``)
serves every variant, and each validation is a GX run named after the variant; the checkpoint updates Data
Docs under ``gx_root``. The GX plumbing is :mod:`recforge.pipeline.datagate.suites` (the project is the one
:mod:`recforge.pipeline.datagate.checks` uses; the prediction frame is an asset of the pandas data source
``recforge_predictions``).

Inputs that make parity meaningless (lengths that differ, labels that are not 0/1 or have one class,
a reference with NaN/inf, a slice column not in the split) raise :class:`DataError` instead of a verdict.
Non-finite *variant* predictions never raise: AUC/logloss become NaN and the verdict fails, saying so.

CLI (exit code 0 = passed, 2 = rejected, 1 = error)::

    python -m recforge.pipeline.parity.gate --features DIR --reference fp32.npy --candidate variant.npy \
        --name NAME [--config JSON] [--split test] [--gx-root DIR] [--reference-name fp32]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recforge.core import config as project
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, DataError, first_line
from recforge.models.embedding_bags import TableQuantization, check_quantization
from recforge.pipeline.data.features import load_split
from recforge.pipeline.datagate.suites import SuiteRun, json_safe, param, run_checkpoints
from recforge.pipeline.training.train import evaluate

if TYPE_CHECKING:
    from recforge.pipeline.data.features import Split

log = logging.getLogger(__name__)

DATASOURCE = "recforge_predictions"
SUITE = "parity_predictions"  # asset, suite, validation definition and checkpoint of the prediction frame
PREDICTION = "prediction"
REFERENCE = "reference"
RANK_DISAGREEMENT = "rank_disagreement"
REFERENCE_NAME = "fp32"
EXIT_REJECTED = 2
_NAME = re.compile(r"[\w.+\-:=@]+")  # variant names: they name the GX run, and so a Data Docs folder
_METRIC_KEY_UNSAFE = re.compile(r"[^\w.\- /]")  # MLflow metric names: alphanumerics, _ - . space /


AucRatio = Annotated[float, Field(gt=0, le=2)]  # NaN fails the bounds too
FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


@typed_config
class ParityConfig:
    """Thresholds of the parity gate (``validate:`` section of a run config)."""

    min_auc_ratio: AucRatio = 0.999  # variant test AUC >= ratio * reference test AUC (MLPerf DLRM high accuracy)
    max_logloss_increase: FiniteNonNegative = 0.01  # variant logloss <= (1 + this) * reference logloss
    slice_columns: tuple[Annotated[str, Field(min_length=1)], ...] = ("age_bucket", "gender")
    min_slice_samples: Annotated[int, Field(ge=1)] = 500  # slices with fewer rows (or one class only) are skipped
    min_slice_auc_ratio: AucRatio = 0.995  # per slice: variant AUC >= ratio * reference AUC
    prediction_min: Finite = 0.0
    prediction_max: Finite = 1.0
    mean_ctr_tolerance: FiniteNonNegative = 0.01  # |mean predicted CTR - reference mean| <= this (absolute)
    min_spearman: Annotated[float, Field(ge=-1, le=1)] = 0.99  # rank agreement with the reference predictions

    def __post_init__(self) -> None:
        if not self.prediction_min < self.prediction_max:
            raise ConfigError(
                "ParityConfig: prediction_min and prediction_max must satisfy prediction_min < prediction_max,"
                f" got {self.prediction_min} and {self.prediction_max}"
            )
        if len(set(self.slice_columns)) != len(self.slice_columns):
            raise ConfigError(f"ParityConfig.slice_columns must be distinct names, got {list(self.slice_columns)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ParityConfig:
        """Build from a plain dict; unknown keys, wrong types and bad values raise ConfigError."""
        return config_from_dict(cls, dict(d or {}))


DEFAULT_THRESHOLDS = ParityConfig()


@dataclass
class ParityVerdict:
    """Outcome of :func:`validate_variant`: ``passed`` exactly when ``reasons`` is empty."""

    name: str
    passed: bool
    reasons: list[str]  # one line per broken rule: metric rules first, then the prediction suite in suite order
    metrics: dict[str, float]  # flat, MLflow-safe keys; NaN where not computable
    slices: list[dict[str, Any]]  # one dict per slice: column, value, rows, positives, status, aucs...
    data_docs_index: Path | None
    reference_name: str = REFERENCE_NAME
    notes: list[str] = field(default_factory=list)  # e.g. skipped slices
    suite_statistics: dict[str, Any] = field(default_factory=dict)
    data_docs_pages: list[Path] = field(default_factory=list)  # this validation's result page(s)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN -> None, paths -> str)."""
        return {
            "name": self.name,
            "passed": bool(self.passed),
            "reasons": list(self.reasons),
            "metrics": json_safe(dict(self.metrics)),
            "slices": json_safe(list(self.slices)),
            "data_docs_index": str(self.data_docs_index) if self.data_docs_index else None,
            "reference_name": self.reference_name,
            "notes": list(self.notes),
            "suite_statistics": json_safe(dict(self.suite_statistics)),
            "data_docs_pages": [str(p) for p in self.data_docs_pages],
            "seconds": round(float(self.seconds), 3),
        }


def validate_variant(
    name: str,
    probabilities: np.ndarray,
    reference: np.ndarray,
    split: Split | tuple[np.ndarray, pd.DataFrame],
    *,
    gx_root: Path,
    config: ParityConfig = DEFAULT_THRESHOLDS,
    reference_name: str = REFERENCE_NAME,
    tables: Sequence[TableQuantization | Mapping[str, Any]] = (),
) -> ParityVerdict:
    """Check variant ``name``'s test-split ``probabilities`` for parity with the ``reference`` model's.

    ``split`` is a :class:`recforge.pipeline.data.features.Split` or ``(labels, frame)``: 0/1 labels and a frame
    with the ``config.slice_columns``, row-aligned with both probability arrays. Runs the prediction suite with GX
    (Data Docs under ``gx_root``). ``tables``: the variant's quantized-table reports (``TableQuantization`` or its
    ``to_dict()``). Raises DataError for inputs that make the comparison meaningless.
    """
    started = time.perf_counter()
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise ConfigError(f"variant name must be letters, digits and _ . + - : = @ (it names a GX run), got {name!r}")
    labels, frame = _labels_and_frame(split)
    n = len(labels)
    probs = _as_vector(probabilities, f"predictions of {name}", n)
    ref = _as_vector(reference, f"predictions of the reference {reference_name}", n)
    if not np.isfinite(ref).all():
        bad = int((~np.isfinite(ref)).sum())
        raise DataError(f"the reference {reference_name} has {bad} non-finite (NaN/inf) predictions of {n}")
    missing = [c for c in config.slice_columns if c not in frame.columns]
    if missing:
        raise DataError(f"slice column(s) {missing} not in the split's columns {sorted(map(str, frame.columns))}")

    reasons: list[str] = []
    try:
        check_quantization([_table_report(t) for t in tables])
    except DataError as err:  # names the table
        reasons.append(first_line(err))
    notes: list[str] = []
    finite = np.isfinite(probs)
    nonfinite = int(n - finite.sum())
    ref_metrics = evaluate(labels, ref)
    metrics: dict[str, float] = {"rows": float(n), "nonfinite_predictions": float(nonfinite)}
    if nonfinite:
        var_metrics = {"auc": math.nan, "logloss": math.nan}
        reasons.append(
            f"{nonfinite} of {n} predictions are not finite (NaN/inf): test AUC, logloss and slice AUCs not computed"
        )
    else:
        var_metrics = evaluate(labels, probs)
    auc, ref_auc = var_metrics["auc"], ref_metrics["auc"]
    logloss, ref_logloss = var_metrics["logloss"], ref_metrics["logloss"]
    metrics.update(
        auc=auc,
        ref_auc=ref_auc,
        delta_auc=auc - ref_auc,
        auc_ratio=auc / ref_auc if ref_auc > 0 else math.nan,
        logloss=logloss,
        ref_logloss=ref_logloss,
        delta_logloss=logloss - ref_logloss,
        logloss_increase=(logloss - ref_logloss) / ref_logloss if ref_logloss > 0 else math.nan,
    )
    if not nonfinite:
        auc_floor = config.min_auc_ratio * ref_auc
        if not auc >= auc_floor:
            reasons.append(
                f"test AUC {auc:.4f} < {config.min_auc_ratio:g} × {reference_name} {ref_auc:.4f} = {auc_floor:.4f}"
            )
        logloss_ceiling = (1 + config.max_logloss_increase) * ref_logloss
        if not logloss <= logloss_ceiling:
            reasons.append(
                f"test logloss {logloss:.4f} > (1 + {config.max_logloss_increase:g}) × {reference_name}"
                f" {ref_logloss:.4f} = {logloss_ceiling:.4f}"
            )

    slices = _slices(labels, frame, probs, ref, config, evaluate_variant=not nonfinite, reference_name=reference_name)
    ratios = []
    for s in slices:
        key = _metric_key(f"{s['column']}.{s['value']}")
        metrics[f"slice_rows.{key}"] = float(s["rows"])
        if s["status"] == "skipped":
            notes.append(f"slice {s['column']}={s['value']} skipped: {s['reason']}")
            continue
        metrics[f"slice_ref_auc.{key}"] = s["ref_auc"]
        metrics[f"slice_auc.{key}"] = s["auc"]
        metrics[f"slice_auc_ratio.{key}"] = s["auc_ratio"]
        ratios.append(s["auc_ratio"])
        if s["status"] == "failed":
            reasons.append(s["reason"])
    evaluated = [s for s in slices if s["status"] != "skipped"]
    metrics["slices_evaluated"] = float(len(evaluated))
    metrics["slices_skipped"] = float(len(slices) - len(evaluated))
    metrics["worst_slice_auc_ratio"] = float(min(ratios)) if ratios and not nonfinite else math.nan

    disagreement, spearman = rank_disagreement(probs, ref)
    mean_ctr = float(np.mean(probs)) if not nonfinite else math.nan
    ref_mean = float(np.mean(ref))
    metrics.update(spearman=spearman, mean_ctr=mean_ctr, ref_mean_ctr=ref_mean, delta_mean_ctr=mean_ctr - ref_mean)

    predictions = pd.DataFrame({PREDICTION: probs, REFERENCE: ref, RANK_DISAGREEMENT: disagreement})
    params = {
        "prediction_min": float(config.prediction_min),
        "prediction_max": float(config.prediction_max),
        "mean_ctr_min": ref_mean - config.mean_ctr_tolerance,
        "mean_ctr_max": ref_mean + config.mean_ctr_tolerance,
        "max_rank_disagreement": 1.0 - config.min_spearman,
    }
    outcome = run_checkpoints(
        gx_root, DATASOURCE, [SuiteRun(SUITE, _prediction_expectations, predictions)], run_name=name, params=params
    )
    stats, index, pages = outcome.statistics, outcome.data_docs_index, outcome.data_docs_pages
    for failure in outcome.failures:
        line = failure.line
        if failure.type == "expect_column_mean_to_be_between" and failure.column == RANK_DISAGREEMENT:
            if not math.isnan(spearman):
                rho = f"{spearman:.4f}"
            elif n - nonfinite < 2:
                rho = "undefined (fewer than 2 finite predictions)"
            else:
                rho = "undefined (no ranking: the variant's or the reference's predictions are all tied)"
            line += f" = 1 - Spearman ρ {rho}, need ρ >= {config.min_spearman:g}"
        reasons.append(f"prediction suite: {line}")
    if not outcome.success and not outcome.failures:
        reasons.append("prediction suite: validation failed without a failing expectation")
    metrics["suite_unsuccessful_expectations"] = float(stats.get("unsuccessful_expectations", 0))

    seconds = time.perf_counter() - started
    verdict = ParityVerdict(
        name=name, passed=not reasons, reasons=reasons, metrics={k: float(v) for k, v in metrics.items()},
        slices=slices, data_docs_index=index, reference_name=reference_name, notes=notes,
        suite_statistics=stats, data_docs_pages=pages, seconds=seconds,
    )
    log.info("parity of %s vs %s: %s (AUC %.4f vs %.4f, %d reason(s), %.1fs)", name, reference_name,
             "passed" if verdict.passed else "REJECTED", auc, ref_auc, len(reasons), seconds)
    return verdict


def gate(verdicts: Iterable[ParityVerdict | Mapping[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """(names that passed, in order; {rejected name: reasons}) of verdicts or their ``to_dict()``s."""
    passed: list[str] = []
    rejected: dict[str, list[str]] = {}
    for verdict in verdicts:
        if isinstance(verdict, Mapping):
            name, ok, reasons = verdict["name"], bool(verdict["passed"]), list(verdict.get("reasons") or [])
        else:
            name, ok, reasons = verdict.name, bool(verdict.passed), list(verdict.reasons)
        if name in passed or name in rejected:
            raise ValueError(f"two verdicts for variant {name!r}")
        if ok and not reasons:
            passed.append(name)
        else:
            rejected[name] = reasons or ["rejected (no reason recorded)"]
    return passed, rejected


def rank_disagreement(probabilities: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """(per-row ``(z_p - z_r)² / 2`` of the standardised ranks, Spearman ρ = 1 - its mean).

    Ranks are over the rows where both are finite (NaN elsewhere). When either side is all tied there is
    no ranking: those rows are 1.0 and ρ is NaN.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    column = np.full(len(p), np.nan)
    ok = np.isfinite(p) & np.isfinite(r)
    if ok.sum() < 2:
        return column, math.nan
    zp, zr = _standardised_ranks(p[ok]), _standardised_ranks(r[ok])
    if zp is None or zr is None:
        column[ok] = 1.0
        return column, math.nan
    column[ok] = 0.5 * (zp - zr) ** 2
    return column, float(1.0 - column[ok].mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.parity.gate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="features folder of the run")
    parser.add_argument("--reference", type=Path, required=True, help=".npy of the fp32 model's probabilities")
    parser.add_argument("--candidate", type=Path, required=True, help=".npy of the variant's probabilities")
    parser.add_argument("--name", required=True, help="variant name, e.g. fp32+int8_static")
    parser.add_argument("--config", default="{}", help="ParityConfig overrides as JSON")
    parser.add_argument("--split", default="test", help="split the probabilities are of (default: test)")
    parser.add_argument("--gx-root", type=Path, help="GX project folder (default: the project's)")
    parser.add_argument("--reference-name", default=REFERENCE_NAME, help="name of the reference in reasons")
    args = parser.parse_args(argv)

    outcome: dict[str, bool] = {}

    def step() -> dict[str, Any]:
        overrides = json_object(args.config)
        cfg = ParityConfig.from_dict(overrides)
        split = load_split(args.features, args.split)
        verdict = validate_variant(
            args.name, _load_npy(args.candidate), _load_npy(args.reference), split,
            gx_root=args.gx_root or project.gx_root(), config=cfg, reference_name=args.reference_name,
        )
        outcome["passed"] = verdict.passed
        return verdict.to_dict()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    code = run_step(step)
    return code if code else (0 if outcome.get("passed") else EXIT_REJECTED)


# --- metrics -----------------------------------------------------------------------------------------


def _labels_and_frame(split: Any) -> tuple[np.ndarray, pd.DataFrame]:
    if hasattr(split, "label") and hasattr(split, "frame"):
        labels, frame = split.label, split.frame
    elif isinstance(split, Sequence) and len(split) == 2:
        labels, frame = split
    else:
        raise TypeError("split must be a recforge.pipeline.data.features.Split or (labels, frame), "
                        f"got {type(split).__name__}")
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if not isinstance(frame, pd.DataFrame) or len(frame) != len(labels):
        raise DataError(
            f"the split's frame must be a DataFrame of {len(labels)} rows (one per label), "
            f"got {type(frame).__name__} of {len(frame) if hasattr(frame, '__len__') else '?'} rows"
        )
    if len(labels) == 0:
        raise DataError("the split has no rows")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise DataError("labels must all be 0 or 1")
    if labels.min() == labels.max():
        raise DataError(f"labels are all {labels[0]:g}: AUC needs both classes")
    return labels, frame.reset_index(drop=True)


def _table_report(table: TableQuantization | Mapping[str, Any]) -> TableQuantization:
    if isinstance(table, TableQuantization):
        return table
    names = {f.name for f in dataclasses.fields(TableQuantization)}
    return TableQuantization(**{k: v for k, v in table.items() if k in names})


def _as_vector(values: Any, what: str, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1 or len(array) != n:
        raise DataError(f"{what}: expected {n} values (one per row of the split), got shape {array.shape}")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what}: not numeric (dtype {array.dtype})") from None


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _slices(
    labels: np.ndarray, frame: pd.DataFrame, probs: np.ndarray, ref: np.ndarray, config: ParityConfig, *,
    evaluate_variant: bool, reference_name: str = REFERENCE_NAME,
) -> list[dict[str, Any]]:
    out = []
    for column in config.slice_columns:
        series = frame[column]
        values = series.dropna().unique()
        try:
            values = sorted(values)
        except TypeError:
            values = sorted(values, key=str)
        for value in values:
            mask = (series == value).fillna(False).to_numpy(dtype=bool)
            y = labels[mask]
            positives = int(y.sum())
            value = value.item() if hasattr(value, "item") else value
            entry: dict[str, Any] = {"column": column, "value": value, "rows": int(mask.sum()),
                                     "positives": positives}
            if entry["rows"] < config.min_slice_samples:
                entry.update(status="skipped", reason=f"{entry['rows']} rows < {config.min_slice_samples}")
            elif positives in (0, entry["rows"]):
                entry.update(status="skipped", reason="one class only")
            else:
                ref_auc = _auc(y, ref[mask])
                auc = _auc(y, probs[mask]) if evaluate_variant else math.nan
                ratio = auc / ref_auc if ref_auc > 0 else math.nan
                floor = config.min_slice_auc_ratio * ref_auc
                entry.update(auc=auc, ref_auc=ref_auc, auc_ratio=ratio, min_auc=floor)
                if not evaluate_variant:
                    entry.update(status="not_evaluated", reason="non-finite predictions")
                elif auc >= floor:
                    entry.update(status="passed")
                else:
                    entry.update(
                        status="failed",
                        reason=(f"slice {column}={value} ({entry['rows']} rows): AUC {auc:.4f} < "
                                f"{config.min_slice_auc_ratio:g} × {reference_name} {ref_auc:.4f} = {floor:.4f}"),
                    )
            out.append(entry)
    return out


def _standardised_ranks(x: np.ndarray) -> np.ndarray | None:
    from scipy.stats import rankdata

    ranks = rankdata(x)  # ties get their average rank
    ranks -= ranks.mean()
    scale = math.sqrt(float(np.mean(ranks**2)))
    if scale < 1e-12 * len(x):  # all tied
        return None
    return ranks / scale


def _metric_key(text: str) -> str:
    return _METRIC_KEY_UNSAFE.sub("_", text)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npy file: {err}") from None


# --- prediction suite --------------------------------------------------------------------------------


def _prediction_expectations() -> list:
    """Fresh expectation objects (GX ties each to the suite it is added to, so they are never reused)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column=PREDICTION),
        gxe.ExpectColumnValuesToBeBetween(
            column=PREDICTION, min_value=param("prediction_min"), max_value=param("prediction_max")
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column=PREDICTION, min_value=param("mean_ctr_min"), max_value=param("mean_ctr_max")
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column=RANK_DISAGREEMENT, min_value=0.0, max_value=param("max_rank_disagreement")
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
