"""The model-based check of a day: score it with the last nightly's model, compare with the trailing days.

:func:`newest_model_before` finds the model: the newest trained model of a family in the nightly work folder
(:class:`recforge.contracts.layout.Catalog`) from a run *before* the day, with the normalisation and feature
config its features were built with (``<model folder>/../../features/meta.json``). It needs no MLflow.

:func:`model_statistics` builds the features of the day's rows and of a bounded, seeded sample of the trailing
rows exactly as that run built its training features (:func:`recforge.pipeline.data.features.features_with`:
same vocabularies, priors and dense mean/std; every feature from the ratings before the row only), scores them
with onnxruntime, and compares the model's AUC and logloss on the day with the same model's on the reference
rows: the rows of the last ``window_days`` partitions before the day that the model did not train on (after
its training split; a model's scores on its own training rows would be optimistic). A collapse means the
labels, the keys or the features no longer mean what they meant, whatever their schema says:

* ``model_auc_drop``: (reference AUC - day AUC) / the day's AUC standard error (Hanley-McNeil, at least 0.01);
* ``model_logloss_rise``: (day logloss - reference logloss) / the standard error of the day's mean logloss.

Their bands are in :mod:`recforge.pipeline.datagate.bands`; a day without a model before it, or with too few
reference rows or one label class, skips them with a note. About 0.4 s a night on the 100K history (1 s at
most; the features of every earlier rating, then one onnxruntime call on the day and the sample).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.contracts.features import FeatureSpec
from recforge.contracts.layout import Catalog
from recforge.core.errors import DataError, first_line
from recforge.inference.onnx import onnx_predict
from recforge.pipeline.data.features import FeatureConfig, Normalisation, features_with, split_of
from recforge.pipeline.datagate.daystats import auc_with_error

REFERENCE_ROWS = 4000  # at most this many trailing rows are scored (a seeded sample)
MIN_REFERENCE_ROWS = 200  # fewer trailing held-out rows: the check is skipped
MIN_STANDARD_ERROR = 0.01  # floor of both standard errors (a tiny day's estimate is itself noisy)
PROBABILITY_CLIP = 1e-7

# name -> one-line definition (Data Docs notes and the calibration table use them)
MODEL_STATISTICS = {
    "model_auc_drop": "(AUC on the trailing held-out rows - AUC on the day) / the day's AUC standard error, "
                      "of the newest nightly model trained before the day",
    "model_logloss_rise": "(logloss on the day - logloss on the trailing held-out rows) / the standard error "
                          "of the day's mean logloss, of the same model",
}


@dataclass(frozen=True)
class NightlyModel:
    """A trained model of a nightly run and what its features were built with."""

    day: dt.date  # the nightly run (logical date) that trained it
    family: str
    onnx_path: Path
    spec: FeatureSpec
    feature_config: FeatureConfig
    normalisation: Normalisation
    trained_through: dt.date  # last day of its training split

    @classmethod
    def load(cls, model_dir: str | Path, family: str) -> NightlyModel:
        """The model in ``model_dir`` (a nightly layout); a DataError naming what is missing or unreadable."""
        model_dir = Path(model_dir)
        meta_path = Catalog.features_of(model_dir) / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            spec = FeatureSpec.from_json((model_dir / "spec.json").read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"model {model_dir} has no readable spec.json or {meta_path}: {first_line(err)}") from None
        return cls(dt.date.fromisoformat(model_dir.parent.parent.name), family, model_dir / "model.onnx", spec,
                   FeatureConfig(**meta["config"]), Normalisation.from_meta(meta),
                   dt.date.fromisoformat(meta["days"]["train"][1]))


def newest_model_before(catalog: Catalog, family: str, day: dt.date) -> tuple[NightlyModel | None, list[str]]:
    """(model, notes): the newest ``family`` model of a nightly run before ``day`` under ``catalog`` that can be
    loaded (notes say which could not), or None with a note saying why the check is skipped."""
    notes: list[str] = []
    for day_dir in catalog.trained_days(family):
        try:
            if dt.date.fromisoformat(day_dir.name) >= day:
                continue
        except ValueError:
            continue  # not a day folder
        try:
            return NightlyModel.load(catalog.model_dir(day_dir.name, family), family), notes
        except DataError as err:
            notes.append(f"model check: {first_line(err)}")
    notes.append(f"model check skipped: no trained {family} model before {day} under {catalog.root}")
    return None, notes


@dataclass
class ModelScores:
    """What :func:`model_statistics` returns."""

    values: dict[str, float]  # statistic -> the day's value (absent when skipped)
    reference: dict[str, float]  # the AUCs, loglosses and row counts behind them
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def logloss_per_row(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))


def model_statistics(
    model: NightlyModel,
    today: pd.DataFrame,
    past: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    *,
    window_days: int = 28,
    reference_rows: int = REFERENCE_ROWS,
    seed: int = 0,
) -> ModelScores:
    """Score ``today`` (one partition) and the trailing held-out rows of ``past`` (every earlier rating) with
    ``model`` and compare (see the module docstring)."""
    started = time.perf_counter()
    columns = ["user_id", "item_id", "rating", "timestamp"]
    scores = ModelScores({}, {"model_day": float(model.day.toordinal())})
    if today.empty:
        scores.notes.append("model check skipped: no rows")
        return scores
    day_start = int(today["timestamp"].min()) // 86_400 * 86_400
    features = features_with(pd.concat([past[columns], today[columns]], ignore_index=True).astype("int64"),
                             users, items, model.feature_config, model.normalisation)
    row_day = features["timestamp"].to_numpy(np.int64) // 86_400
    is_today = row_day >= day_start // 86_400
    trailing_days = np.unique(row_day[~is_today])[-window_days:]
    held_out = dt.date.fromordinal(model.trained_through.toordinal() + 1)
    first_held_out = (held_out - dt.date(1970, 1, 1)).days
    reference = np.flatnonzero(np.isin(row_day, trailing_days) & (row_day >= first_held_out) & ~is_today)
    if len(reference) > reference_rows:
        reference = np.sort(np.random.default_rng(seed).choice(reference, reference_rows, replace=False))
    if len(reference) < MIN_REFERENCE_ROWS:
        scores.notes.append(f"model check skipped: {len(reference)} trailing rows the {model.day} model did not "
                            f"train on, need {MIN_REFERENCE_ROWS}")
        return scores
    chosen = features.iloc[np.concatenate([np.flatnonzero(is_today), reference])]
    split = split_of(chosen.reset_index(drop=True), model.spec)
    split.sparse = np.where(split.sparse < np.asarray(model.spec.sparse_cardinalities), split.sparse, 0)
    probabilities = onnx_predict(model.onnx_path, split)
    days_rows = int(is_today.sum())
    labels = split.label.astype(np.float64)
    day_labels, reference_labels = labels[:days_rows], labels[days_rows:]
    day_scores, reference_scores = probabilities[:days_rows], probabilities[days_rows:]
    day_auc = auc_with_error(day_labels, day_scores)
    reference_auc = auc_with_error(reference_labels, reference_scores)
    day_loss = logloss_per_row(day_labels, day_scores)
    reference_loss = logloss_per_row(reference_labels, reference_scores)
    scores.reference.update({"model_reference_rows": float(len(reference)), "model_day_rows": float(days_rows),
                             "model_day_logloss": float(day_loss.mean()),
                             "model_window_logloss": float(reference_loss.mean())})
    loss_error = max(float(day_loss.std()) / np.sqrt(days_rows), MIN_STANDARD_ERROR)
    scores.values["model_logloss_rise"] = (float(day_loss.mean()) - float(reference_loss.mean())) / loss_error
    if day_auc is None or reference_auc is None:
        scores.notes.append("model AUC skipped: the day or the trailing rows have one label class only")
    else:
        scores.reference.update({"model_day_auc": day_auc[0], "model_window_auc": reference_auc[0]})
        scores.values["model_auc_drop"] = (reference_auc[0] - day_auc[0]) / max(day_auc[1], MIN_STANDARD_ERROR)
    scores.seconds = time.perf_counter() - started
    return scores
