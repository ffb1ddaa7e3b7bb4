"""The labels of multi-task families (MT-WnD): task 0 is the features' label (like: rating >= the label threshold,
4 by default), task 1 "not disliked": rating >= the threshold - 1 (3 by default).

The features files carry the label, not the rating, so task 1 is read from the ratings partitions the features
were built from, matched on (user_id, item_id, timestamp) -- one rating per user, item and second.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.core.errors import ConfigError, DataError
from recforge.pipeline.data import ingest as data

TASK_NAMES: tuple[str, ...] = ("like", "not_disliked")
KEY_COLUMNS = ["user_id", "item_id", "timestamp"]


def secondary_threshold(features_dir: Path) -> int:
    """The minimum rating of task 1: one star below the features' label threshold."""
    meta = json.loads((Path(features_dir) / "meta.json").read_text())
    threshold = int(meta.get("config", {}).get("label_threshold", 4)) - 1
    if threshold < 1:
        raise ConfigError(f"label_threshold {threshold + 1} of {features_dir} leaves no lower rating for the "
                          "second task (not_disliked = rating >= label_threshold - 1); use a threshold >= 2")
    return threshold


def task_labels(frame: pd.DataFrame, label: np.ndarray, ratings: pd.DataFrame, threshold: int,
                num_tasks: int) -> np.ndarray:
    """[N, num_tasks] float32 labels of the rows of a features ``frame``: its ``label``, then rating >= ``threshold``
    from ``ratings`` (the raw partitions). DataError if a row has no rating; ConfigError for more than 2 tasks."""
    if not 1 <= num_tasks <= len(TASK_NAMES):
        raise ConfigError(f"num_tasks={num_tasks}: labels are defined for {len(TASK_NAMES)} tasks {TASK_NAMES}")
    columns = [np.asarray(label, dtype=np.float32)]
    if num_tasks > 1:
        keys = frame[KEY_COLUMNS].astype("int64")
        table = ratings[[*KEY_COLUMNS, "rating"]].astype("int64").drop_duplicates(KEY_COLUMNS)
        rating = keys.merge(table, on=KEY_COLUMNS, how="left")["rating"]
        if rating.isna().any():
            raise DataError(f"{int(rating.isna().sum())} feature rows have no rating in the partitions; rebuild "
                            "the features from the same data root")
        columns.append((rating.to_numpy() >= threshold).astype(np.float32))
    return np.stack(columns, axis=1)


def load_task_labels(features_dir: Path, splits: dict, num_tasks: int, data_root: str) -> dict[str, np.ndarray]:
    """The [N, num_tasks] labels of each split in ``splits`` (name -> features Split) of ``features_dir``."""
    meta = json.loads((Path(features_dir) / "meta.json").read_text())
    threshold = secondary_threshold(features_dir)
    ratings = data.load_ratings(data_root, dt.date.fromisoformat(meta["day"])) if num_tasks > 1 else None
    return {name: task_labels(split.frame, split.label, ratings, threshold, num_tasks)
            for name, split in splits.items()}
