"""The bands each statistic of a day is checked against, their severity, and how each bound was derived.

A :class:`Band` is one bound (or pair) on one statistic with a severity: ``critical`` (a hard failure: the
nightly run stops before training) or ``warning`` (the run goes on; the warning is recorded on the MLflow
parent run and in the nightly summary). :func:`statistic_bands` gives the day's bands of the statistics of
:mod:`recforge.pipeline.datagate.daystats`; :func:`volume_bands` and :func:`label_rate_bands` those of the
row count and the label rate. Each band's ``rule`` (how its bound was derived) goes into the expectation's
notes, so the Data Docs page shows it beside the bound.

Calibration (``python -m recforge.pipeline.datagate.calibrate``, every real MovieLens-100K day against the
days before it only, 28-day window): a warning bound sits just above the real days' 98th-99th percentile, a
hard bound at 1.5x the real maximum (or where no real day can be: a repeated pair). The figures quoted in
each rule are that command's output of 2026-11-26.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from recforge.pipeline.datagate.daystats import DayStatistics

CRITICAL, WARNING = "critical", "warning"  # GX's FailureSeverity values


@dataclass(frozen=True)
class Band:
    """``min_value <= statistic <= max_value`` (either side may be open) at ``severity``, derived by ``rule``."""

    statistic: str
    severity: str
    min_value: float | None
    max_value: float | None
    rule: str

    @property
    def key(self) -> str:
        """Unique name of the band (its expectation parameters are ``<key>_min`` / ``<key>_max``)."""
        return f"{self.statistic}_{self.severity}"

    def holds(self, value: float) -> bool:
        return ((self.min_value is None or value >= self.min_value)
                and (self.max_value is None or value <= self.max_value))


@dataclass(frozen=True)
class FixedBound:
    """A calibrated constant bound: ``max`` (or ``min`` when ``lower``) at ``warning`` and ``hard``."""

    warning: float | None
    hard: float | None
    rule: str
    lower: bool = False


# statistic -> calibrated constant bounds (real-day figures: calibrate's output over the 213 days)
FIXED_BOUNDS = {
    "repeated_pairs": FixedBound(None, 0, "MovieLens users rate an item once: 0 on every real day"),
    "linf_item_scaled": FixedBound(0.5, 1.5, "real days: p99 0.40, max 0.995 (a 1-row day); "
                                   "warning above p99, hard 1.5x the max"),
    "linf_genre_scaled": FixedBound(2.0, 4.2, "real days: p99 1.95, max 2.77; warning at p99, hard 1.5x the max"),
    "linf_occupation_scaled": FixedBound(2.6, 4.4, "real days: p99 2.50, max 2.92; warning above p99, "
                                         "hard 1.5x the max"),
    "js_rating_scaled": FixedBound(1.5, 3.6, "real days: p99 1.36, max 2.37; warning above p99, hard 1.5x the max"),
    "busiest_hour_user_share": FixedBound(0.8, None, "real days with >= 5 users: max 0.64; warning above 0.8, "
                                          "no hard bound (no model feature uses the hour)"),
    "item_popularity_ratio": FixedBound(0.67, 0.45, "real days: min 0.70 (p1 0.74); warning below 0.67, "
                                        "hard at 2/3 of the real min", lower=True),
    "baseline_auc_drop": FixedBound(3.5, 8.0, "real days: p98 3.77, max 5.31; warning above 3.5 standard "
                                    "errors, hard 1.5x the max"),
    # real-day figures of the model check: each day scored by the newest of 15 dlrm models trained on every 14th
    # day before it (0-14 days old: a wider spread than a nightly's 1-day-old model, so the bounds err loose)
    "model_auc_drop": FixedBound(5.3, 8.9, "real days: p98 5.09, p99 5.26, max 5.90; warning above p99, "
                                 "hard 1.5x the max"),
    "model_logloss_rise": FixedBound(5.3, 8.9, "real days: p98 5.03, p99 5.29, max 5.89; warning above p99, "
                                     "hard 1.5x the max"),
}
TOP_USER_FACTORS = (1.5, 3.0)  # top_user_rows <= factor x the window's largest user-day (warning, hard)
TOP_ITEM_FACTOR, TOP_ITEM_MIN_ROWS = 2.0, 10  # top_item_share <= max(2 x window max, 10 / rows): warning
NEW_ITEM_FACTOR, NEW_ITEM_FLOOR = 2.0, 0.1  # new_item_share <= max(2 x window max, 0.1): warning


def statistic_bands(stats: DayStatistics) -> list[Band]:
    """The day's bands of every statistic in ``stats.values`` that has one (in a fixed order)."""
    values, reference = stats.values, stats.reference
    bands: list[Band] = []
    for name, bound in FIXED_BOUNDS.items():
        if name not in values:
            continue
        for severity, limit in ((WARNING, bound.warning), (CRITICAL, bound.hard)):
            if limit is not None:
                low, high = (limit, None) if bound.lower else (None, limit)
                bands.append(Band(name, severity, low, high, bound.rule))
    if "window_max_top_user_rows" in reference:
        largest = reference["window_max_top_user_rows"]
        for severity, factor in zip((WARNING, CRITICAL), TOP_USER_FACTORS, strict=True):
            bands.append(Band("top_user_rows", severity, None, math.floor(factor * largest),
                              f"{factor:g}x the window's largest user-day (real days: at most 1.82x, p99 1.26x)"))
    if "window_max_top_item_share" in reference:
        rows = max(int(reference.get("day_rows", 0)), 1)
        bound = max(TOP_ITEM_FACTOR * reference["window_max_top_item_share"], TOP_ITEM_MIN_ROWS / rows)
        bands.append(Band("top_item_share", WARNING, None, min(bound, 1.0),
                          f"max({TOP_ITEM_FACTOR:g}x the window's largest daily share (days >= 50 rows), "
                          f"{TOP_ITEM_MIN_ROWS} rows); the hard case is linf_item_scaled"))
    if "window_max_new_item_share" in reference and "new_item_share" in values:
        bound = max(NEW_ITEM_FACTOR * reference["window_max_new_item_share"], NEW_ITEM_FLOOR)
        bands.append(Band("new_item_share", WARNING, None, min(bound, 1.0),
                          f"max({NEW_ITEM_FACTOR:g}x the window's largest daily share (days >= 50 rows), "
                          f"{NEW_ITEM_FLOOR:g})"))
    return bands


def robust_log_scale(counts: Sequence[int], floor: float) -> tuple[float, float]:
    """(median, scale) of log row counts: scale = 1.4826 x MAD (a normal's sigma), at least ``floor``."""
    logs = [math.log(max(int(n), 1)) for n in counts]
    center = statistics.median(logs)
    mad = statistics.median(abs(x - center) for x in logs)
    return center, max(1.4826 * mad, floor)


def volume_bands(counts: Sequence[int], *, z_warning: float, z_hard_low: float, z_hard_high: float,
                 floor: float) -> tuple[Band, Band]:
    """(hard, warning) row-count bands: a robust z-score of log(rows) against ``counts`` (the trailing days)."""
    center, scale = robust_log_scale(counts, floor)
    rule = (f"robust z of log(rows) against the trailing partitions: (log rows - median) / (1.4826 MAD of "
            f"the logs, at least {floor:g}); real days: z in [-8.4, 2.9]")
    hard = Band("rows", CRITICAL, max(math.ceil(math.exp(center - z_hard_low * scale)), 1),
                math.floor(math.exp(center + z_hard_high * scale)), f"z in [-{z_hard_low:g}, {z_hard_high:g}]: "
                + rule)
    warning = Band("rows", WARNING, math.ceil(math.exp(center - z_warning * scale)),
                   math.floor(math.exp(center + z_warning * scale)), f"|z| <= {z_warning:g}: " + rule)
    return hard, warning


def label_rate_bands(window_rate: float | None, day_users: int, *, z_hard: float, fixed_min: float,
                     fixed_max: float) -> list[Band]:
    """The label-rate bands: the fixed warning band, and (given the window's rate) a hard band of ``z_hard``
    binomial standard errors counted over the day's distinct users (a user's ratings move together)."""
    bands = [Band("label", WARNING, fixed_min, fixed_max,
                  "fixed band (CheckConfig label_rate_min/max); real days outside it: 2 of 213")]
    if window_rate is not None and day_users > 0:
        error = math.sqrt(window_rate * (1 - window_rate) / day_users)
        bands.insert(0, Band("label", CRITICAL, max(window_rate - z_hard * error, 0.0),
                             min(window_rate + z_hard * error, 1.0),
                             f"the window's rate p +- {z_hard:g} x sqrt(p(1-p) / distinct users of the day); "
                             "real days: |z| <= 1.9"))
    return bands
