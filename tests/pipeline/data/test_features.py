import datetime as dt

import numpy as np
import pandas as pd
import pytest

from recforge.contracts.layout import Catalog
from recforge.core.errors import ConfigError, DataError
from recforge.pipeline.data import features
from recforge.pipeline.data import ingest as data

DAY = dt.date(1998, 1, 30)


@pytest.fixture
def built(synthetic_root, tmp_path):
    cfg = features.FeatureConfig(history_length=5, min_train_rows=100)
    result = features.build_features(synthetic_root, DAY, tmp_path / "features", cfg)
    return result, tmp_path / "features", synthetic_root


def test_time_split_has_no_overlap_and_respects_order(built):
    result, out, _ = built
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in features.SPLITS}
    assert frames["train"]["timestamp"].max() < frames["val"]["timestamp"].min()
    assert frames["val"]["timestamp"].max() < frames["test"]["timestamp"].min()
    total = sum(result.rows.values())
    assert result.rows["test"] >= 0.1 * total and result.rows["val"] >= 0.1 * total * 0.5


def test_split_days_are_whole_days():
    days = pd.Series([dt.date(2000, 1, d) for d in (1, 1, 2, 2, 3, 3, 4, 4, 5, 5)])
    split = features.split_days(days, 0.2, 0.2)
    assert split == {"train": [dt.date(2000, 1, d) for d in (1, 2, 3)], "val": [dt.date(2000, 1, 4)],
                     "test": [dt.date(2000, 1, 5)]}


def test_history_contains_only_earlier_liked_items():
    events = pd.DataFrame({
        "user_id": [1, 1, 1, 1, 2],
        "item_id": [10, 11, 12, 13, 10],
        "timestamp": [100, 200, 200, 300, 150],
        "rating": [5, 4, 2, 5, 5],
    })
    label = (events["rating"] >= 4).to_numpy()
    hist = features.liked_history(events, label, 3)
    assert hist[0].tolist() == [0, 0, 0]  # nothing before
    assert hist[1].tolist() == [10, 0, 0] and hist[2].tolist() == [10, 0, 0]  # same second: not each other
    assert hist[3].tolist() == [11, 10, 0]  # 12 was disliked; newest first
    assert hist[4].tolist() == [0, 0, 0]  # other user's likes do not leak


def test_past_statistics_exclude_current_and_simultaneous_events():
    events = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [1, 2, 3, 4],
                           "timestamp": [10, 20, 20, 30], "rating": [5, 1, 3, 4]})
    label = (events["rating"] >= 4).to_numpy().astype(int)
    stats = features.past_statistics(events, "user_id", label, prior_mean=3.0, prior_rate=0.5, strength=0.0001)
    assert stats["log_count"].tolist() == pytest.approx(np.log1p([0, 1, 1, 3]).tolist())
    assert stats["mean_rating"].iloc[1] == pytest.approx(5.0, abs=1e-3)
    assert stats["mean_rating"].iloc[2] == pytest.approx(5.0, abs=1e-3)
    assert stats["mean_rating"].iloc[3] == pytest.approx(3.0, abs=1e-3)
    assert stats["pos_rate"].iloc[3] == pytest.approx(1 / 3, abs=1e-3)


def test_features_do_not_change_when_future_partitions_are_added(built, tmp_path):
    _, out, root = built
    features.build_features(root, dt.date(1998, 1, 20), tmp_path / "early",
                                    features.FeatureConfig(history_length=5, min_train_rows=100))
    frame_early = pd.concat(pd.read_parquet(tmp_path / "early" / f"{s}.parquet") for s in features.SPLITS)
    assert frame_early["timestamp"].max() < pd.Timestamp("1998-01-21", tz="UTC").timestamp()
    # the same events, computed in the later run, have the same raw history and past counts
    frame_late = pd.concat(pd.read_parquet(out / f"{s}.parquet") for s in features.SPLITS)
    merged = frame_early.merge(frame_late, on=["user_id", "item_id", "timestamp"], suffixes=("_e", "_l"))
    assert len(merged) == len(frame_early)
    hist = [f"hist_{k}" for k in range(5)]
    assert (merged[[h + "_e" for h in hist]].to_numpy() == merged[[h + "_l" for h in hist]].to_numpy()).all()


def test_spec_and_inputs_match_the_model_contract(built):
    _, out, _ = built
    spec = features.load_spec(out)
    split = features.load_split(out, "train")
    assert split.sparse.shape[1] == spec.num_sparse and split.sparse.dtype == np.int64
    assert split.genres.shape[1] == spec.genre_slots and split.history.shape[1] == spec.history_length
    assert split.dense.shape[1] == spec.num_dense and split.dense.dtype == np.float32
    assert (split.sparse < np.array(spec.sparse_cardinalities)).all() and (split.sparse >= 0).all()
    assert split.genres.max() < spec.num_genres
    assert set(np.unique(split.label)) <= {0.0, 1.0}
    assert abs(split.dense.mean(axis=0)).max() < 1e-3  # standardised on the training split


def test_label_is_rating_at_least_four(built):
    _, out, root = built
    frame = pd.read_parquet(out / "train.parquet")
    ratings = data.load_ratings(root, DAY)
    joined = frame.merge(ratings, on=["user_id", "item_id", "timestamp"])
    assert ((joined["rating"] >= 4).astype(int) == joined["label"]).all()


def test_too_little_history_is_a_clear_error(synthetic_root, tmp_path):
    with pytest.raises(DataError, match="training rows up to 1998-01-03"):
        features.build_features(synthetic_root, dt.date(1998, 1, 3), tmp_path / "f",
                                features.FeatureConfig(min_train_rows=5000))


def test_feature_config_constraints_name_the_field():
    with pytest.raises(ConfigError, match=r"FeatureConfig\.test_fraction: "):
        features.FeatureConfig(test_fraction=0.5)
    with pytest.raises(ConfigError, match=r"FeatureConfig\.history_length: "):
        features.FeatureConfig(history_length=0)


def test_cli_writes_the_catalog_features_folder(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECFORGE_WORK_DIR", str(tmp_path / "work"))
    assert features.main(["--date", DAY.isoformat(), "--data-root", synthetic_root]) == 0
    out = Catalog(tmp_path / "work").features_dir(DAY)
    assert (out / "spec.json").is_file() and (out / "train.parquet").is_file()
    assert str(out) in capsys.readouterr().out
