"""The model-based check of the data gate (recforge.pipeline.datagate.modelcheck) with a tiny real model trained on
the real MovieLens-100K days before the checked one: features built as the model's run built them, the newest model
before the day found in a nightly work folder, a collapse caught in the same GX run, a missing model skipped."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pandas as pd
import pytest

from recforge.contracts.layout import Catalog
from recforge.core.errors import ConfigError, DataCheckError
from recforge.models.export import export_onnx
from recforge.pipeline.data import ingest as data
from recforge.pipeline.data.features import FeatureConfig, Normalisation, build_features, features_with
from recforge.pipeline.datagate.bands import FIXED_BOUNDS
from recforge.pipeline.datagate.checks import CheckConfig, check_day
from recforge.pipeline.datagate.corruptions import corrupt
from recforge.pipeline.datagate.modelcheck import model_statistics, newest_model_before
from recforge.pipeline.training.train import TrainConfig, fit

MODEL_DAY = dt.date(1998, 2, 20)  # the tiny model's nightly run
DAY = dt.date(1998, 3, 10)  # the checked day: 367 rows


@pytest.fixture(scope="module")
def real_root(movielens_raw, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("movielens") / "data")
    data.ingest(movielens_raw, root)
    return root


def train_tiny_model(real_root: str, catalog: Catalog, day: dt.date) -> None:
    """A nightly run's features and a dlrm trained for one epoch on their last 20k training rows, in the nightly
    layout (model.onnx, spec.json beside the run's features)."""
    features = catalog.features_dir(day)
    build_features(real_root, day, features)
    model, _history, _epoch, spec = fit("dlrm", features, TrainConfig(max_epochs=1, max_train_rows=20_000))
    folder = catalog.model_dir(day, "dlrm")
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(spec.to_json())
    export_onnx(model, spec, folder / "model.onnx")


@pytest.fixture(scope="module")
def catalog(real_root, tmp_path_factory) -> Catalog:
    catalog = Catalog(tmp_path_factory.mktemp("work"))
    train_tiny_model(real_root, catalog, MODEL_DAY)
    return catalog


@pytest.fixture(scope="module")
def day_data(real_root):
    """(today, past, users, items) of DAY."""
    past = pd.concat([data.load_partition(real_root, d) for d in data.list_partitions(real_root) if d < DAY],
                     ignore_index=True)
    users, items = data.load_dimensions(real_root)
    return data.load_partition(real_root, DAY), past, users, items


def test_features_with_the_saved_normalisation_are_the_runs_features(real_root, catalog):
    """Every row of the run's train/val/test files is rebuilt bit for bit from the raw ratings and meta.json."""
    features = catalog.features_dir(MODEL_DAY)
    meta = json.loads((features / "meta.json").read_text())
    users, items = data.load_dimensions(real_root)
    rebuilt = features_with(data.load_ratings(real_root, MODEL_DAY), users, items, FeatureConfig(**meta["config"]),
                            Normalisation.from_meta(meta))
    stored = pd.concat([pd.read_parquet(features / f"{split}.parquet") for split in ("train", "val", "test")],
                       ignore_index=True)
    pd.testing.assert_frame_equal(rebuilt, stored, check_exact=True)


def test_newest_model_strictly_before_the_day(real_root, catalog, tmp_path):
    model, notes = newest_model_before(catalog, "dlrm", DAY)
    assert model is not None and model.day == MODEL_DAY and notes == []
    assert model.trained_through < MODEL_DAY  # the run's val/test days come after its training split
    assert newest_model_before(catalog, "dlrm", MODEL_DAY)[0] is None  # the day's own run is not before it
    none, notes = newest_model_before(catalog, "ncf", DAY)
    assert none is None and notes == [f"model check skipped: no trained ncf model before {DAY} under {catalog.root}"]
    # a model whose features predate the saved normalisation is passed over with a note
    old = Catalog(tmp_path)
    for sub in ("features", "models/dlrm"):
        (old.day_dir(MODEL_DAY) / sub).mkdir(parents=True)
    (old.model_dir(MODEL_DAY, "dlrm") / "model.onnx").write_bytes(b"")
    (old.model_dir(MODEL_DAY, "dlrm") / "spec.json").write_text(
        (catalog.model_dir(MODEL_DAY, "dlrm") / "spec.json").read_text())
    meta = json.loads((catalog.features_dir(MODEL_DAY) / "meta.json").read_text())
    del meta["prior_mean"]
    (old.features_dir(MODEL_DAY) / "meta.json").write_text(json.dumps(meta))
    none, notes = newest_model_before(old, "dlrm", DAY)
    assert none is None and "lacks ['prior_mean']" in notes[0] and notes[1].startswith("model check skipped")


def test_real_day_in_band_and_collapses_caught(catalog, day_data):
    today, past, users, items = day_data
    model, _ = newest_model_before(catalog, "dlrm", DAY)
    real = model_statistics(model, today, past, users, items)
    assert real.notes == [] and real.reference["model_day_rows"] == len(today)
    assert real.reference["model_window_auc"] > 0.6  # the tiny model learned something
    assert 1000 <= real.reference["model_reference_rows"] <= 4000
    warning = FIXED_BOUNDS["model_auc_drop"].warning
    assert real.values["model_auc_drop"] < warning and real.values["model_logloss_rise"] < warning
    for kind in ("ratings_inverted", "shuffled_labels", "novelty_explosion"):
        collapsed = model_statistics(model, corrupt(kind, today, past, users, items, seed=3), past, users, items)
        assert collapsed.values["model_auc_drop"] > warning, (kind, collapsed.values)
        assert collapsed.reference["model_window_auc"] == real.reference["model_window_auc"]  # the same past


def test_too_few_held_out_rows_skip_with_a_note(catalog, day_data):
    today, past, users, items = day_data
    model, _ = newest_model_before(catalog, "dlrm", DAY)
    trained_on_everything = dataclasses.replace(model, trained_through=DAY - dt.timedelta(days=1))
    scores = model_statistics(trained_on_everything, today, past, users, items)
    assert scores.values == {}
    assert scores.notes == [f"model check skipped: 0 trailing rows the {MODEL_DAY} model did not train on, need 200"]


def test_check_day_runs_the_model_check_in_the_statistics_suite(real_root, catalog, day_data, tmp_path):
    today, past, users, items = day_data
    report = check_day(real_root, DAY.isoformat(), None, None, gx_root=tmp_path / "gx", catalog=catalog)
    assert report["status"] != "failed" and "model_auc_drop" in report["day_statistics"]
    assert any(note.startswith(f"model check: dlrm model of {MODEL_DAY}") for note in report["notes"])
    assert report["statistics"]["model_check_seconds"] > 0
    suite_page = tmp_path / "gx/gx/uncommitted/data_docs/local_site/expectations/ratings_partition_statistics.html"
    assert "newest nightly model trained before the day" in suite_page.read_text()  # definition and bound

    root = str(tmp_path / "data")
    data.write_parquet(users, f"{root}/users.parquet")
    data.write_parquet(items, f"{root}/items.parquet")
    for day in data.list_partitions(real_root):
        if day <= DAY:
            frame = data.load_partition(real_root, day)
            if day == DAY:
                frame = corrupt("ratings_inverted", today, past, users, items, seed=3)
            data.write_parquet(frame, data.partition_path(root, day))
    with pytest.raises(DataCheckError) as failed:
        check_day(root, DAY.isoformat(), None, None, gx_root=tmp_path / "gx", catalog=catalog)
    assert "model_auc_drop <=" in str(failed.value)

    no_models = check_day(real_root, DAY.isoformat(), None, None, gx_root=tmp_path / "gx",
                          catalog=Catalog(tmp_path / "empty"))
    assert "model_auc_drop" not in no_models["day_statistics"]
    assert f"model check skipped: no trained dlrm model before {DAY} under {tmp_path / 'empty'}" in no_models["notes"]


def test_model_family_is_checked():
    assert CheckConfig(model_family="ncf").model_family == "ncf"
    with pytest.raises(ConfigError, match="model_family"):
        CheckConfig.from_dict({"model_family": "gpt"})


def test_no_real_day_after_the_model_breaks_the_hard_bounds(real_root, catalog):
    """The tiny model scores each of the 4 weeks of real days after its run (each against the days before it):
    none beyond a hard bound (the calibration's claim, on another model)."""
    users, items = data.load_dimensions(real_root)
    model, _ = newest_model_before(catalog, "dlrm", DAY)
    days = data.list_partitions(real_root)
    frames = {d: data.load_partition(real_root, d) for d in days}
    scored = 0
    for day in [d for d in days if MODEL_DAY < d <= MODEL_DAY + dt.timedelta(days=28)]:
        past = pd.concat([frames[d] for d in days if d < day], ignore_index=True)
        values = model_statistics(model, frames[day], past, users, items).values
        scored += "model_auc_drop" in values
        for name, value in values.items():
            assert value <= FIXED_BOUNDS[name].hard, (day, name, value)
    assert scored >= 20
