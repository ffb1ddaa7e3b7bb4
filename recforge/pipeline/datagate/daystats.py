"""Statistics of one day's ratings against the days before it: drift, concentration, novelty, repeats, labels.

:func:`day_statistics` takes the day's partition and every rating before it (``past``; a day is only ever
compared with earlier days) and returns a :class:`DayStatistics`: the day's value of each statistic in
:data:`STATISTICS` and the trailing references its bands need (:mod:`recforge.pipeline.datagate.bands`).
The trailing window is the last ``window_days`` partitions before the day.

The statistics (what each one catches is in docs/datagate.md):

* drift, as TensorFlow Data Validation measures it: the L-infinity distance between the day's and the
  window's value distributions of a categorical column (``linf_item``, ``linf_genre`` of the items' genres,
  ``linf_occupation`` of the users' occupations), and the Jensen-Shannon divergence (base 2, in [0, 1]) of a
  numeric one binned (``js_rating`` over 1..5). Each is given times the square root of its sample size
  (``*_scaled``: rows for item-level columns, capped at 100 for the rating, whose real day-to-day variation
  beyond 100 rows is the day's ~11 users, not sampling; distinct users for the occupation), the scale at
  which sampling noise is the same for a day of 40 rows and one of 3000, so one bound fits both;
* time of day: ``busiest_hour_user_share``, the share of the day's users active in its busiest UTC hour
  (days with at least 5 users only: one or two users are naturally all in one hour);
* concentration: ``top_user_rows`` (rows of the most active user) and ``top_item_share`` (share of rows of the
  most rated item), against the window's own per-day maxima;
* novelty: ``new_item_share`` (rows on items never rated before) against the window's maximum, and
  ``item_popularity_ratio`` (mean over rows of log(1 + the item's earlier ratings), over the same for the
  window's rows). The share of never-seen *users* is not checked: MovieLens users rate most of their
  movies in their first session, so a real median day has 70% of its rows from new users, and 100% is common;
* impossible repeats: ``repeated_pairs``, rows whose (user, item) pair was rated before or more than once
  that day (MovieLens users rate an item once);
* labels: ``label_rate`` and ``baseline_auc``, the AUC of a baseline model fitted on the past only (the
  item's smoothed mean rating) for the day's labels: a collapse means labels or keys changed meaning.

Everything is vectorised pandas over at most the whole history (~100k rows): tens of milliseconds a day.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RATING_VALUES = (1, 2, 3, 4, 5)
RATING_NOISE_ROWS = 100  # js_rating is scaled by sqrt(min(rows, this)) (see the module docstring)
MIN_USERS_FOR_HOURS = 5  # busiest_hour_user_share needs this many users in the day
MIN_REFERENCE_ROWS = 50  # window days this small do not set the window's maxima of shares
BASELINE_PRIOR = 5.0  # pseudo-ratings at the global mean in the baseline's smoothed item mean

# name -> one-line definition (Data Docs notes and the calibration table use them)
STATISTICS = {
    "linf_item_scaled": "L-inf distance of the item distribution to the window's x sqrt(rows)",
    "linf_genre_scaled": "L-inf distance of the (joined) genre distribution to the window's x sqrt(rows)",
    "linf_occupation_scaled": "L-inf distance of the (joined) occupation distribution to the window's "
                              "x sqrt(distinct users)",
    "js_rating_scaled": "Jensen-Shannon divergence of the rating distribution to the window's "
                        "x sqrt(min(rows, 100))",
    "busiest_hour_user_share": "share of the day's users active in its busiest UTC hour",
    "top_user_rows": "rows of the day's most active user",
    "top_item_share": "share of the day's rows on its most rated item",
    "new_item_share": "share of rows on items never rated before",
    "item_popularity_ratio": "mean log(1 + earlier ratings of the item) of the day's rows / the window's",
    "repeated_pairs": "rows whose (user, item) was rated before or twice that day",
    "baseline_auc_drop": "(window's AUC - day's AUC) / the day's AUC standard error, of a baseline fitted "
                         "on the past (the item's smoothed mean rating)",
}


@dataclass
class DayStatistics:
    """What :func:`day_statistics` returns: the day's values and the window's references."""

    values: dict[str, float]  # statistic -> the day's value (a statistic that cannot be computed is absent)
    reference: dict[str, float]  # the window's quantities the bands are built from
    window_days: int  # trailing partitions the window holds
    notes: list[str] = field(default_factory=list)  # statistics skipped, and why


def histogram(values: pd.Series) -> pd.Series:
    """Value -> share of the rows (sums to 1; empty for no rows)."""
    counts = values.value_counts()
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def linf(today: pd.Series, window: pd.Series) -> float:
    """L-infinity distance between two value distributions (TFDV's categorical drift measure)."""
    joined = pd.concat([histogram(today), histogram(window)], axis=1).fillna(0.0)
    return float((joined.iloc[:, 0] - joined.iloc[:, 1]).abs().max()) if len(joined) else 0.0


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms over the same bins."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return (kl(p) + kl(q)) / 2


def auc_with_error(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float] | None:
    """(ROC AUC, its Hanley-McNeil standard error), or None with only one class."""
    labels = np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    ranks = pd.Series(scores).rank().to_numpy()
    auc = (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc))
    return float(auc), float(np.sqrt(max(variance, 0.0) / (positives * negatives)))


def baseline_scores(fit: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """The baseline model: each row's item's mean rating in ``fit``, smoothed towards the global mean."""
    if fit.empty:
        return np.zeros(len(rows))
    overall = float(fit["rating"].mean())
    per_item = fit.groupby("item_id")["rating"].agg(["sum", "count"])
    smoothed = (per_item["sum"] + BASELINE_PRIOR * overall) / (per_item["count"] + BASELINE_PRIOR)
    return rows["item_id"].map(smoothed).fillna(overall).to_numpy(float)


def utc_day(timestamps: pd.Series) -> pd.Series:
    """Days since the epoch (UTC) of unix seconds: a cheap day key."""
    return timestamps.to_numpy(np.int64) // 86_400


def day_statistics(
    today: pd.DataFrame,
    past: pd.DataFrame,
    *,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    window_days: int = 28,
    label_threshold: int = 4,
) -> DayStatistics:
    """Statistics of ``today`` (one partition) against ``past`` (every earlier rating; its last
    ``window_days`` days are the window). ``users``/``items`` are the dimension tables the occupation and
    genres are joined from (those statistics are skipped without them)."""
    today = today[["user_id", "item_id", "rating", "timestamp"]].astype("int64")
    past = past[["user_id", "item_id", "rating", "timestamp"]].astype("int64")
    notes: list[str] = []
    values: dict[str, float] = {}
    reference: dict[str, float] = {}
    past_day = utc_day(past["timestamp"])
    window_keys = np.unique(past_day)[-window_days:]
    in_window = np.isin(past_day, window_keys)
    window, window_day = past[in_window], past_day[in_window]
    rows = len(today)
    if rows == 0:
        return DayStatistics(values, reference, len(window_keys), ["no rows: every statistic skipped"])
    day_users = int(today["user_id"].nunique())
    reference["day_rows"], reference["day_users"] = float(rows), float(day_users)

    # impossible repeats need no window: any earlier rating of the pair, or the pair twice today
    earlier_pairs = pd.MultiIndex.from_frame(past[["user_id", "item_id"]])
    pairs = pd.MultiIndex.from_frame(today[["user_id", "item_id"]])
    values["repeated_pairs"] = float(pairs.isin(earlier_pairs).sum() + pairs.duplicated(keep="first").sum())
    values["top_user_rows"] = float(today["user_id"].value_counts().iloc[0])
    values["top_item_share"] = float(today["item_id"].value_counts().iloc[0] / rows)
    if day_users >= MIN_USERS_FOR_HOURS:
        hours = (today["timestamp"] // 3600) % 24
        values["busiest_hour_user_share"] = float(today.groupby(hours)["user_id"].nunique().max() / day_users)
    else:
        notes.append(f"busiest-hour share skipped: {day_users} user(s) that day, need {MIN_USERS_FOR_HOURS}")
    values["label_rate"] = float((today["rating"] >= label_threshold).mean())

    if len(window_keys) < 3:
        notes.append(f"window statistics skipped: only {len(window_keys)} earlier partition(s), need at least 3")
        return DayStatistics(values, reference, len(window_keys), notes)

    values["linf_item_scaled"] = linf(today["item_id"], window["item_id"]) * np.sqrt(rows)
    values["js_rating_scaled"] = js_divergence(
        today["rating"].value_counts().reindex(RATING_VALUES, fill_value=0),
        window["rating"].value_counts().reindex(RATING_VALUES, fill_value=0)) * np.sqrt(min(rows, RATING_NOISE_ROWS))
    if items is not None and "genres" in items.columns:
        genres = items.set_index("item_id")["genres"].fillna("").astype(str).str.split()
        values["linf_genre_scaled"] = linf(today["item_id"].map(genres).explode().dropna(),
                                           window["item_id"].map(genres).explode().dropna()) * np.sqrt(rows)
    else:
        notes.append("genre drift skipped: no items table with genres")
    if users is not None and "occupation" in users.columns:
        occupation = users.set_index("user_id")["occupation"]
        values["linf_occupation_scaled"] = linf(today["user_id"].map(occupation),
                                                window["user_id"].map(occupation)) * np.sqrt(day_users)
    else:
        notes.append("occupation drift skipped: no users table with occupations")

    window_per_day = window.assign(day=window_day)
    reference["window_max_top_user_rows"] = float(window_per_day.groupby(["day", "user_id"]).size().max())
    day_rows = window_per_day.groupby("day").size()
    sizable = day_rows[day_rows >= MIN_REFERENCE_ROWS].index
    top_item = window_per_day.groupby(["day", "item_id"]).size().groupby("day").max()
    reference["window_max_top_item_share"] = float((top_item / day_rows)[sizable].max()) if len(sizable) else 1.0
    reference["window_label_rate"] = float((window["rating"] >= label_threshold).mean())

    first_rated = past.assign(day=past_day).groupby("item_id")["day"].min()
    values["new_item_share"] = float((~today["item_id"].isin(first_rated.index)).mean())
    new_in_window = pd.Series(window["item_id"].map(first_rated).to_numpy() == window_day).groupby(window_day)
    reference["window_max_new_item_share"] = float(new_in_window.mean()[sizable].max()) if len(sizable) else 1.0

    item_counts = past["item_id"].value_counts()
    today_popularity = np.log1p(today["item_id"].map(item_counts).fillna(0)).mean()
    window_popularity = np.log1p(window["item_id"].map(item_counts).fillna(0)).mean()
    values["item_popularity_ratio"] = float(today_popularity / window_popularity) if window_popularity else 1.0

    fit = past[past_day < window_keys[0]]
    window_auc = auc_with_error(window["rating"] >= label_threshold, baseline_scores(fit, window))
    day_auc = auc_with_error(today["rating"] >= label_threshold, baseline_scores(past, today))
    if fit.empty or window_auc is None:
        notes.append("baseline AUC skipped: no ratings before the window to fit the baseline on")
    elif day_auc is None:
        notes.append("baseline AUC skipped: the day has one label class only")
    else:
        reference["window_baseline_auc"], reference["baseline_auc"] = window_auc[0], day_auc[0]
        values["baseline_auc_drop"] = (window_auc[0] - day_auc[0]) / max(day_auc[1], 0.01)
    return DayStatistics(values, reference, len(window_keys), notes)
