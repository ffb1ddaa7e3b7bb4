"""Multi-task training (recforge.pipeline.training.task_labels and train.fit): MT-WnD learns like and
not_disliked labels read from the ratings partitions; DIEN and the single-task families train as before."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from recforge.core.errors import ConfigError, DataError
from recforge.pipeline.data import ingest as data
from recforge.pipeline.data.features import build_features, load_split
from recforge.pipeline.training.task_labels import TASK_NAMES, load_task_labels, secondary_threshold, task_labels
from recforge.pipeline.training.train import TrainConfig, fit, task_aucs
from tests.conftest import DAY0

DAY = DAY0 + dt.timedelta(days=29)


@pytest.fixture
def features(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_DATA_ROOT", synthetic_root)
    out = tmp_path / "features"
    build_features(synthetic_root, DAY, out)
    return out


def test_second_label_is_rating_one_star_below_the_like_threshold(features, synthetic_root):
    assert TASK_NAMES == ("like", "not_disliked") and secondary_threshold(features) == 3
    split = load_split(features, "train")
    labels = load_task_labels(features, {"train": split}, 2, synthetic_root)["train"]
    ratings = data.load_ratings(synthetic_root, DAY)
    rating = split.frame[["user_id", "item_id", "timestamp"]].merge(
        ratings, on=["user_id", "item_id", "timestamp"], how="left")["rating"].to_numpy()
    assert labels.shape == (len(split), 2) and labels.dtype == np.float32
    assert np.array_equal(labels[:, 0], (rating >= 4).astype(np.float32))  # the features' own label
    assert np.array_equal(labels[:, 0], split.label)
    assert np.array_equal(labels[:, 1], (rating >= 3).astype(np.float32))
    assert 0 < labels[:, 1].mean() < 1 and labels[:, 1].mean() > labels[:, 0].mean()


def test_bad_task_labels_are_refused(features, synthetic_root):
    split = load_split(features, "val")
    ratings = data.load_ratings(synthetic_root, DAY)
    with pytest.raises(ConfigError, match="num_tasks=3: labels are defined for 2 tasks"):
        task_labels(split.frame, split.label, ratings, 3, 3)
    missing = ratings[ratings["user_id"] != split.frame["user_id"].iloc[0]]
    with pytest.raises(DataError, match="feature rows have no rating"):
        task_labels(split.frame, split.label, missing, 3, 2)
    meta = json.loads((features / "meta.json").read_text())
    meta["config"]["label_threshold"] = 1
    (features / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="label_threshold 1 .* leaves no lower rating"):
        secondary_threshold(features)


def test_mt_wnd_trains_both_tasks_and_reports_each_auc(features, synthetic_root):
    model, history, best_epoch, _spec = fit("mt_wnd", features, TrainConfig(max_epochs=2, patience=2))
    assert len(history) == 2 and 1 <= best_epoch <= 2
    assert {"val_auc", "val_auc_like", "val_auc_not_disliked"} <= set(history[0])
    assert history[best_epoch - 1]["val_auc_like"] == pytest.approx(history[best_epoch - 1]["val_auc"])
    test = load_split(features, "test")
    aucs = task_aucs(model, test, load_task_labels(features, {"test": test}, 2, synthetic_root)["test"])
    assert set(aucs) == {"like", "not_disliked"} and all(0 <= auc <= 1 for auc in aucs.values())


@pytest.mark.parametrize("family", ["dien", "wide_deep"])
def test_single_task_families_train_on_the_features_label_alone(features, family):
    _model, history, _best, _spec = fit(family, features, TrainConfig(max_epochs=1))
    assert set(history[0]) == {"train_logloss", "val_auc", "val_logloss"}
    assert np.isfinite(history[0]["train_logloss"])


def test_frame_keys_match_the_partitions(features, synthetic_root):
    """Guard of the join: every features row has exactly one rating (user, item, second) in the partitions."""
    ratings = data.load_ratings(synthetic_root, DAY)
    frame = pd.concat([load_split(features, s).frame for s in ("train", "val", "test")])
    assert not ratings.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert len(frame) == len(ratings)
