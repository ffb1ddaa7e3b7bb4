"""ensure_features: a task on another worker gets the day's features from the data root, the same as the features
task built them; features already on this worker are used as they are."""

import json

import pandas as pd

from recforge.pipeline.data import features
from tests.pipeline.data.test_features import DAY


def test_missing_features_are_built_from_the_data_root_identically(synthetic_root, tmp_path):
    original = features.build_features(synthetic_root, DAY, tmp_path / "worker1")
    other = features.ensure_features(synthetic_root, DAY, tmp_path / "worker2")
    assert other == tmp_path / "worker2"
    for split in features.SPLITS:
        pd.testing.assert_frame_equal(pd.read_parquet(other / f"{split}.parquet"),
                                      pd.read_parquet(tmp_path / "worker1" / f"{split}.parquet"))
    assert json.loads((other / "spec.json").read_text()) == original.spec
    assert json.loads((other / "meta.json").read_text())["fingerprint"] == original.fingerprint


def test_features_on_this_worker_are_not_built_again(synthetic_root, tmp_path, monkeypatch):
    built = tmp_path / "features"
    features.build_features(synthetic_root, DAY, built)
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    monkeypatch.setattr(features, "build_features", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert features.ensure_features(synthetic_root, DAY, built) == built
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before
