"""The day's statistics (recforge.pipeline.datagate.daystats) and their bands (recforge.pipeline.datagate.bands) on
small hand-made histories: each statistic measures what it says, a short window skips the window statistics with
a note, and the bands are derived as documented."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recforge.pipeline.datagate.bands import CRITICAL, WARNING, Band, label_rate_bands, statistic_bands, volume_bands
from recforge.pipeline.datagate.daystats import auc_with_error, day_statistics, js_divergence, linf

DAY0 = 10_000 * 86_400  # a UTC midnight


def ratings(rows: list[tuple[int, int, int, int]]) -> pd.DataFrame:
    """(day index, user, item, rating) -> a ratings frame; each row one minute after the previous in its day."""
    frame = pd.DataFrame(rows, columns=["day", "user_id", "item_id", "rating"])
    frame["timestamp"] = DAY0 + frame["day"] * 86_400 + 60 * frame.groupby("day").cumcount()
    return frame[["user_id", "item_id", "rating", "timestamp"]].astype("int64")


def history(days: int, seed: int = 0) -> pd.DataFrame:
    """``days`` days of 200 ratings: 40 users, 100 items, item i rated (i % 5) + 1 mostly."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in range(days):
        for user in range(1, 41):
            for item in rng.choice(np.arange(1, 101), 5, replace=False):
                rows.append((day, user + 40 * day, int(item), int(item % 5) + 1))
    return ratings(rows)


def test_distances():
    a, b = pd.Series([1, 1, 2, 2]), pd.Series([3, 3, 3, 4])
    assert linf(a, a) == 0 and linf(a, b) == 0.75
    assert js_divergence([1, 0], [1, 0]) == 0 and js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < js_divergence([3, 1], [1, 3]) < 1
    assert auc_with_error([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == 1.0
    assert auc_with_error([1, 1], [0.1, 0.2]) is None  # one class


def test_repeats_and_concentration():
    past = ratings([(0, 1, 10, 5), (0, 2, 11, 3)])
    today = ratings([(1, 1, 10, 4), (1, 3, 12, 2), (1, 3, 12, 5), (1, 3, 13, 1)])
    stats = day_statistics(today, past)
    assert stats.values["repeated_pairs"] == 2  # (1, 10) rated before, (3, 12) twice today
    assert stats.values["top_user_rows"] == 3
    assert stats.values["top_item_share"] == 0.5
    assert stats.values["label_rate"] == 0.5
    assert any(note.startswith("window statistics skipped: only 1 earlier partition") for note in stats.notes)
    assert "linf_item_scaled" not in stats.values  # no window: skipped, not crashed


def test_window_statistics_move_with_the_corruption():
    past, today = history(10), history(11).pipe(lambda f: f[f["timestamp"] >= DAY0 + 10 * 86_400])
    clean = day_statistics(today, past, window_days=5)
    assert clean.window_days == 5 and clean.values["repeated_pairs"] == 0
    assert clean.values["baseline_auc_drop"] < 3  # the item's past mean predicts its rating
    flat = day_statistics(today.assign(rating=np.where(today["rating"] >= 4, 4, 3)), past, window_days=5)
    assert flat.values["js_rating_scaled"] > 10 * clean.values["js_rating_scaled"]
    one_item = day_statistics(today.assign(item_id=7), past, window_days=5)
    assert one_item.values["linf_item_scaled"] > 10 and one_item.values["repeated_pairs"] > 0
    shuffled = day_statistics(today.assign(rating=np.random.default_rng(1).permutation(today["rating"])), past,
                              window_days=5)
    assert shuffled.values["baseline_auc_drop"] > 8  # the hard bound: labels no longer mean what they meant


def test_bands_of_the_statistics_carry_severity_and_rule():
    past, today = history(10), history(11).pipe(lambda f: f[f["timestamp"] >= DAY0 + 10 * 86_400])
    bands = statistic_bands(day_statistics(today, past, window_days=5))
    keys = {band.key for band in bands}
    assert {"repeated_pairs_critical", "baseline_auc_drop_warning", "baseline_auc_drop_critical",
            "top_user_rows_warning", "top_item_share_warning"} <= keys
    assert all(band.rule and band.severity in (CRITICAL, WARNING) for band in bands)
    assert "linf_genre_scaled_warning" not in keys  # no items table: the genre drift is skipped


def test_volume_bands_are_a_robust_z_of_log_rows():
    hard, warning = volume_bands([100] * 10, z_warning=3.5, z_hard_low=9, z_hard_high=6, floor=0.25)
    assert (hard.severity, warning.severity) == (CRITICAL, WARNING)
    assert hard.min_value == math.ceil(100 * math.exp(-2.25)) and hard.max_value == math.floor(100 * math.exp(1.5))
    assert warning.min_value == math.ceil(100 * math.exp(-0.875))
    wide, _ = volume_bands([10, 100, 1000, 50, 500], z_warning=3.5, z_hard_low=9, z_hard_high=6, floor=0.25)
    assert wide.min_value < hard.min_value and wide.max_value > hard.max_value  # a noisy window widens them


def test_label_rate_bands():
    hard, warning = label_rate_bands(0.5, 25, z_hard=5, fixed_min=0.2, fixed_max=0.9)
    assert hard == Band("label", CRITICAL, 0.0, 1.0, hard.rule)  # 0.5 +- 5 x 0.1, clipped
    assert (warning.min_value, warning.max_value, warning.severity) == (0.2, 0.9, WARNING)
    assert label_rate_bands(None, 25, z_hard=5, fixed_min=0.2, fixed_max=0.9) == [warning]
