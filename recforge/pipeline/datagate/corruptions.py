"""Corruptions of a day's ratings that keep every column's type and range: what a schema check lets through.

Each kind in :data:`CORRUPTIONS` is a function ``(today, past, users, items, rng) -> frame | None`` that returns
a corrupted copy of ``today`` with the same four int64 columns, known user and item ids, ratings in 1..5,
timestamps inside the day and unique (user, item, timestamp) rows (so it passes the schema suite), or None where
the kind cannot be applied to that day. The tests and the calibration command
(:mod:`recforge.pipeline.datagate.calibrate`) feed them to the data gate, which must catch each (as a hard
failure or a warning).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Corruption = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, np.random.Generator],
                      "pd.DataFrame | None"]
COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """The four columns as int64, sorted as ingest writes them, without rows repeating a (user, item,
    timestamp) (the schema suite catches those already: a corruption here must get past it)."""
    frame = frame[list(COLUMNS)].astype("int64").drop_duplicates(["user_id", "item_id", "timestamp"])
    return frame.sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True)


def shuffled_labels(today, past, users, items, rng):
    """The ratings permuted across the day's rows (rating distribution and label rate unchanged)."""
    return _sorted(today.assign(rating=rng.permutation(today["rating"].to_numpy())))


def ratings_inverted(today, past, users, items, rng):
    """Every rating r becomes 6 - r (a scale read the wrong way round)."""
    return _sorted(today.assign(rating=6 - today["rating"]))


def ratings_flattened(today, past, users, items, rng):
    """Ratings squeezed to 3 and 4 (labels unchanged: liked stays liked)."""
    return _sorted(today.assign(rating=np.where(today["rating"] >= 4, 4, 3)))


def user_flood(today, past, users, items, rng):
    """One known user rates, that day, twice as many items as any user ever did in a day."""
    user = int(rng.choice(users["user_id"].to_numpy()))
    per_user_day = past.groupby([past["timestamp"] // 86_400, "user_id"]).size()
    wanted = 2 * int(per_user_day.max()) if len(per_user_day) else 2 * len(today)
    rated = set(past.loc[past["user_id"] == user, "item_id"]) | set(today.loc[today["user_id"] == user, "item_id"])
    free = np.setdiff1d(items["item_id"].to_numpy(), np.fromiter(rated, int, len(rated)))
    chosen = rng.choice(free, min(wanted, len(free)), replace=False)
    start = int(today["timestamp"].min()) // 86_400 * 86_400
    flood = pd.DataFrame({"user_id": user, "item_id": chosen, "rating": rng.integers(1, 6, len(chosen)),
                          "timestamp": rng.integers(start, start + 86_400, len(chosen))})
    return _sorted(pd.concat([today, flood], ignore_index=True))


def items_permuted(today, past, users, items, rng):
    """Item ids mapped through a random permutation of the catalogue (a scrambled id mapping)."""
    ids = items["item_id"].to_numpy()
    mapping = pd.Series(rng.permutation(ids), index=ids)
    return _sorted(today.assign(item_id=today["item_id"].map(mapping)))


def timestamps_one_hour(today, past, users, items, rng):
    """Every timestamp moved into one hour of the day (minutes and seconds kept)."""
    start = int(today["timestamp"].min()) // 86_400 * 86_400
    hour = int(rng.integers(0, 24))
    return _sorted(today.assign(timestamp=start + hour * 3600 + today["timestamp"] % 3600))


def user_ids_remapped(today, past, users, items, rng):
    """User ids mapped through a random permutation of the known users (a scrambled id mapping)."""
    ids = users["user_id"].to_numpy()
    mapping = pd.Series(rng.permutation(ids), index=ids)
    return _sorted(today.assign(user_id=today["user_id"].map(mapping)))


def duplicated_day(today, past, users, items, rng):
    """The previous partition delivered again, its timestamps moved into this day."""
    if past.empty:
        return None
    days = past["timestamp"] // 86_400
    previous = past[days == days.max()]
    shift = (int(today["timestamp"].min()) // 86_400 - int(days.max())) * 86_400
    return _sorted(previous.assign(timestamp=previous["timestamp"] + shift))


def single_item_dominating(today, past, users, items, rng):
    """A third of the day's rows re-keyed to one item."""
    item = int(rng.choice(items["item_id"].to_numpy()))
    rows = rng.choice(len(today), max(1, len(today) // 3), replace=False)
    item_ids = today["item_id"].to_numpy().copy()
    item_ids[rows] = item
    return _sorted(today.assign(item_id=item_ids))


def novelty_explosion(today, past, users, items, rng):
    """The day's items replaced by the catalogue's long tail (the items with the fewest earlier ratings)."""
    counts = past["item_id"].value_counts().reindex(items["item_id"], fill_value=0)
    tail = counts.sort_values(kind="stable").index.to_numpy()[: max(len(today), 50)]
    return _sorted(today.assign(item_id=rng.choice(tail, len(today))))


def genre_join_broken(today, past, users, items, rng):
    """Item keys off by half the catalogue: each row joins another movie (its genres, year, history)."""
    ids = np.sort(items["item_id"].to_numpy())
    position = pd.Series(np.arange(len(ids)), index=ids)
    shifted = ids[(today["item_id"].map(position).to_numpy() + len(ids) // 2) % len(ids)]
    return _sorted(today.assign(item_id=shifted))


CORRUPTIONS: dict[str, Corruption] = {
    "shuffled_labels": shuffled_labels,
    "ratings_inverted": ratings_inverted,
    "ratings_flattened": ratings_flattened,
    "user_flood": user_flood,
    "items_permuted": items_permuted,
    "timestamps_one_hour": timestamps_one_hour,
    "user_ids_remapped": user_ids_remapped,
    "duplicated_day": duplicated_day,
    "single_item_dominating": single_item_dominating,
    "novelty_explosion": novelty_explosion,
    "genre_join_broken": genre_join_broken,
}


def corrupt(kind: str, today: pd.DataFrame, past: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
            seed: int = 0) -> pd.DataFrame | None:
    """``today`` corrupted by ``kind`` (seeded), or None where the kind does not apply to it."""
    return CORRUPTIONS[kind](today, past, users, items, np.random.default_rng(seed))
