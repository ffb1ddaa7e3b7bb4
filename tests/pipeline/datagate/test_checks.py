"""Data checks of a daily ratings partition (recforge.pipeline.datagate.checks): a clean partition passes, each kind
of corruption fails with a line that names the expectation and the column, and the Data Docs site is written."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from recforge.core.errors import ConfigError, DataCheckError
from recforge.pipeline.datagate.checks import CheckConfig, CheckReport, check_partition, day_window

DAY = dt.date(1998, 2, 14)
USERS = range(1, 944)  # MovieLens-100K: 943 users, 1682 items
ITEMS = range(1, 1683)
TRAILING = [380, 395, 402, 410, 388, 420, 399, 405, 391, 415, 384, 400, 397, 408]  # 14 days, median 399.5


def clean_partition(rows: int = 400, seed: int = 7) -> pd.DataFrame:
    """A realistic day: MovieLens ids, ~55% of ratings >= 4, timestamps inside DAY, sorted by time."""
    rng = np.random.default_rng(seed)
    start, end = day_window(DAY)
    frame = pd.DataFrame({
        "user_id": rng.integers(1, 944, rows + 20),
        "item_id": rng.integers(1, 1683, rows + 20),
        "rating": rng.choice([1, 2, 3, 4, 5], rows + 20, p=[0.06, 0.12, 0.27, 0.33, 0.22]),
        "timestamp": rng.integers(start, end, rows + 20),
    }).astype("int64")
    frame = frame.drop_duplicates(["user_id", "item_id", "timestamp"]).head(rows)
    return frame.sort_values("timestamp").reset_index(drop=True)


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    frame = clean_partition()
    assert len(frame) == 400 and 0.45 < (frame["rating"] >= 4).mean() < 0.65
    return frame


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory):
    """One GX project for the module: every check after the first re-runs the same day on it."""
    return tmp_path_factory.mktemp("gx")


def run(frame: pd.DataFrame, gx_root, trailing=TRAILING, **config) -> CheckReport:
    return check_partition(frame, day=DAY, known_user_ids=USERS, known_item_ids=ITEMS,
                           trailing_row_counts=trailing, gx_root=gx_root, config=CheckConfig(**config))


@pytest.fixture(scope="module")
def clean_report(clean, gx_root) -> CheckReport:
    return run(clean, gx_root)


def test_clean_partition_passes(clean_report, clean):
    report = clean_report
    assert report.success, report.failed
    assert report.failed == []
    assert report.row_count == len(clean)
    # 14 on the partition + its hard and warning row-count bands, the label's warning band; no history: the
    # statistics suite (and the hard label band) are skipped
    assert report.statistics["evaluated_expectations"] == 17
    assert report.statistics["successful_expectations"] == 17
    assert report.statistics["skipped_expectations"] == 1
    assert report.status == "passed" and report.hard_failures == [] and report.warnings == []
    assert any("volume bands 43..1790 rows (hard), 167..958 (warning)" in note for note in report.notes), report.notes
    assert any(note.startswith("statistics skipped: no earlier partitions") for note in report.notes)
    report.raise_for_failure()  # no-op


def test_data_docs_written(clean_report, gx_root):
    index = clean_report.data_docs_index
    assert index.name == "index.html" and index.is_file()
    assert index.parent == clean_report.data_docs_dir
    assert gx_root in index.parents
    pages = list((clean_report.data_docs_dir / "validations").rglob("*.html"))
    assert {p.relative_to(clean_report.data_docs_dir).parts[1] for p in pages} == {
        "ratings_partition", "ratings_partition_labels"}
    assert DAY.isoformat() in index.read_text()  # the run is named after the day


def test_to_dict_is_json(clean_report):
    data = json.loads(json.dumps(clean_report.to_dict()))
    assert data["day"] == "1998-02-14" and data["success"] is True
    assert data["data_docs_index"].endswith("index.html")
    assert data["statistics"]["evaluated_expectations"] == 17
    assert data["status"] == "passed" and data["warnings"] == []


def _set(column: str, rows: slice, values) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[rows, column] = values
        return frame
    return corrupt


def _with_nulls(column: str, dtype: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame[column] = frame[column].astype(dtype)
        frame.loc[10:12, column] = None
        return frame
    return corrupt


def _shift_time(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    start, end = day_window(DAY)
    frame.loc[0:3, "timestamp"] = [start - 1, start - 3600, end, end + 86_400]
    return frame


CORRUPTIONS = {
    # name: (corruption, how the failure lines start (all of them, in suite order), text in the first line)
    "rating out of range": (
        _set("rating", slice(0, 4), [0, 7, 9, 7, 0]),
        ["expect_column_values_to_be_between(rating, 1..5)"], "5 of 400 rows unexpected, e.g. [0, 7, 9]"),
    "unknown user id": (
        _set("user_id", slice(5, 7), [944, 5000, 0]),
        ["expect_column_values_to_be_in_set(user_id in 943 known ids)"], "3 of 400 rows unexpected"),
    "unknown item id": (
        _set("item_id", slice(5, 6), [1683, 99999]),
        ["expect_column_values_to_be_in_set(item_id in 1682 known ids)"], "e.g. [1683, 99999]"),
    "duplicated rows": (
        lambda f: pd.concat([f, f.iloc[:12]], ignore_index=True),
        ["expect_compound_columns_to_be_unique(user_id, item_id, timestamp)"],
        "24 of 412 rows unexpected, e.g. [("),
    "a tenth of the usual rows": (  # robust z of log rows below -9 (hard) and -3.5 (warning)
        lambda f: f.iloc[:40].reset_index(drop=True),
        ["expect_table_row_count_to_be_between(43..1790 rows)",
         "warning: expect_table_row_count_to_be_between(167..958 rows)"], "observed 40 rows"),
    "timestamp outside the day": (
        _shift_time,
        ["expect_column_values_to_be_between(timestamp, [887414400, 887500800)"],
         "4 of 400 rows unexpected, e.g. [887410800, 887414399, 887500800, 887587200]"),
    "nulls (nullable Int64)": (
        _with_nulls("user_id", "Int64"),
        ["expect_column_values_to_not_be_null(user_id)"], "3 of 400 rows unexpected"),
    "nulls (NaN turns the column float)": (
        _with_nulls("item_id", "float64"),
        ["expect_column_values_to_be_in_type_list(item_id, integer)",
         "expect_column_values_to_not_be_null(item_id)"], "observed dtype float64"),
    "label rate too high": (
        _set("rating", slice(None), 5),
        ["warning: expect_column_mean_to_be_between(label, 0.2..0.9)"], "observed 1.000"),
    "label rate too low": (
        _set("rating", slice(None), 2),
        ["warning: expect_column_mean_to_be_between(label, 0.2..0.9)"], "observed 0.000"),
    "extra column": (
        lambda f: f.assign(label=1),
        ["expect_table_columns_to_match_set(user_id, item_id, rating, timestamp, exact)"],
        "unexpected ['label']"),
    "float timestamps": (
        lambda f: f.assign(timestamp=f["timestamp"].astype("float64")),
        ["expect_column_values_to_be_in_type_list(timestamp, integer)"], "observed dtype float64"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_fails_naming_the_expectation(name, clean, gx_root):
    corrupt, expected, detail = CORRUPTIONS[name]
    report = run(corrupt(clean), gx_root)
    assert not report.success
    assert len(report.failed) == len(expected), report.failed  # exactly these fail, nothing else
    for line, head in zip(report.failed, expected, strict=True):
        assert line.startswith(head), report.failed
    assert detail in report.failed[0], report.failed[0]
    assert report.statistics["unsuccessful_expectations"] == len(expected)


def test_missing_column_reported_not_raised(clean, gx_root, capfd):
    capfd.readouterr()
    report = run(clean.drop(columns=["item_id"]), gx_root)
    assert not report.success
    assert report.failed[0] == (
        "expect_table_columns_to_match_set(user_id, item_id, rating, timestamp, exact): missing ['item_id']")
    assert report.failed[1:] == [
        f"{head}: not evaluated, column 'item_id' missing" for head in (
            "expect_column_values_to_be_in_type_list(item_id, integer)",
            "expect_column_values_to_not_be_null(item_id)",
            "expect_column_values_to_be_in_set(item_id in 1682 known ids)",
            "expect_compound_columns_to_be_unique(user_id, item_id, timestamp)",
        )
    ]
    assert report.statistics["evaluated_expectations"] == 17
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err  # progress bars are off
    assert "Traceback" not in out + err


def test_missing_rating_fails_the_label_too(clean, gx_root):
    report = run(clean.drop(columns=["rating"]), gx_root)
    assert report.failed[-1] == ("warning: expect_column_mean_to_be_between(label, 0.2..0.9): "
                                 "not evaluated, column 'label' (derived from rating) missing")
    assert any("label not derived" in note for note in report.notes)


def test_raise_for_failure_message(clean, gx_root):
    report = run(CORRUPTIONS["rating out of range"][0](clean), gx_root)
    with pytest.raises(DataCheckError) as caught:
        report.raise_for_failure()
    error = caught.value
    message = str(error)
    assert message.startswith(
        "data checks failed for partition 1998-02-14: 1 of 17 expectations failed:\n"
        "  - expect_column_values_to_be_between(rating, 1..5): 5 of 400 rows unexpected")
    assert message.endswith(f"\nData Docs: {report.data_docs_index}")
    assert error.failed == report.failed
    assert error.data_docs == str(report.data_docs_index)
    assert report.data_docs_index.is_file()


def test_few_trailing_partitions_skip_volume_only(clean, tmp_path):
    tiny = clean.iloc[:40].reset_index(drop=True)  # would fail the volume check with a full window
    report = run(tiny, tmp_path, trailing=[400, 410])
    assert report.success, report.failed
    assert report.statistics["skipped_expectations"] == 2  # the volume bands and the statistics suite
    assert report.statistics["evaluated_expectations"] == 15
    assert any(note.startswith("volume check skipped: only 2 trailing partition(s)") for note in report.notes)


def test_rerun_same_day_is_idempotent(clean, tmp_path):
    first = run(clean, tmp_path)
    second = run(clean, tmp_path)
    assert first.success and second.success
    runs_of_day = second.data_docs_dir / "validations" / "ratings_partition" / DAY.isoformat()
    pages = list(runs_of_day.rglob("*.html"))
    assert len(pages) == 2  # one page per run, definitions updated in place
    assert len(list((tmp_path / "gx" / "expectations").glob("*.json"))) == 2


def test_config_from_dict():
    config = CheckConfig.from_dict({"volume_z_warning": 3, "volume_window_days": 7, "volume_z_hard_high": 5})
    assert config == CheckConfig(volume_z_warning=3.0, volume_window_days=7, volume_z_hard_high=5.0)
    assert CheckConfig.from_dict({}) == CheckConfig()
    with pytest.raises(ConfigError, match="volume_z_warnin"):
        CheckConfig.from_dict({"volume_z_warnin": 0.2})
    with pytest.raises(ConfigError, match="min_volume_ratio"):  # the ratio band is gone: refused, not ignored
        CheckConfig.from_dict({"min_volume_ratio": 0.2})
    with pytest.raises(ConfigError, match="volume_window_days"):
        CheckConfig.from_dict({"volume_window_days": "14"})
    with pytest.raises(ConfigError, match="label_threshold"):
        CheckConfig.from_dict({"label_threshold": 4.0})
    with pytest.raises(ConfigError, match="label_rate_min"):
        CheckConfig.from_dict({"label_rate_min": 0.95})


def test_config_thresholds_are_applied(clean, gx_root):
    rate = (clean["rating"] >= 4).mean()
    report = run(clean, gx_root, label_rate_max=0.5)
    assert report.failed == [f"warning: expect_column_mean_to_be_between(label, 0.2..0.5): observed {rate:#.4g}"]
    assert report.status == "warning"
    report.raise_for_failure()  # a warning does not stop the run
    assert run(clean, gx_root, label_threshold=5, label_rate_min=0.1, label_rate_max=0.3).success


def test_check_day_logs_data_docs_on_the_parent_run_and_stops(synthetic_root, tmp_path, monkeypatch):
    import mlflow

    from recforge.pipeline.data import ingest as data
    from recforge.pipeline.datagate.checks import check_day

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("checks", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    last = data.list_partitions(synthetic_root)[-1]
    bad_day = last + dt.timedelta(days=1)
    bad = data.load_partition(synthetic_root, last)
    bad["timestamp"] += 86_400
    bad = pd.concat([bad, bad.head(5)], ignore_index=True)  # duplicated rows
    bad.loc[:2, "rating"] = 7
    data.write_parquet(bad, data.partition_path(synthetic_root, bad_day))

    with pytest.raises(DataCheckError) as caught:
        check_day(synthetic_root, bad_day.isoformat(), {"volume_window_days": 7}, parent,
                  gx_root=tmp_path / "gx")
    message = str(caught.value)
    # 16 on the partition and labels, 20 on the day's statistics against the 30 synthetic days before it
    assert message.startswith(f"data checks failed for partition {bad_day}: 3 of 36 expectations failed:")
    assert "expect_column_mean_to_be_between(repeated_pairs <= 0): observed 85.00" in message
    assert f"expect_column_values_to_be_between(rating, 1..5): 3 of {len(bad)} rows unexpected" in message
    assert "expect_compound_columns_to_be_unique(user_id, item_id, timestamp)" in message
    logged = {a.path for a in client.list_artifacts(parent, "data_docs")}
    assert {"data_docs/index.html", "data_docs/report.json", "data_docs/validations",
            "data_docs/expectations"} <= logged
    assert client.get_run(parent).data.tags["recforge.data_checks"] == "failed"
    with pytest.raises(ConfigError, match="min_volume"):
        check_day(synthetic_root, bad_day.isoformat(), {"min_volume": 0.1}, None, gx_root=tmp_path / "gx")


def test_cli_checks_a_day_and_prints_the_report(synthetic_root, tmp_path, capsys):
    from recforge.pipeline.data import ingest as data
    from recforge.pipeline.datagate.checks import main

    last = data.list_partitions(synthetic_root)[-1]
    assert main(["--date", last.isoformat(), "--data-root", synthetic_root, "--gx-root", str(tmp_path / "gx"),
                 "--config", '{"volume_window_days": 7, "statistics_suite": false}']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["success"] and report["day"] == last.isoformat()


def test_cli_bad_config_is_one_line(synthetic_root, tmp_path, capsys):
    from recforge.pipeline.datagate.checks import main

    assert main(["--date", "1998-01-05", "--data-root", synthetic_root, "--gx-root", str(tmp_path / "gx"),
                 "--config", '{"label_rate_min": 0.95}']) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CheckConfig.label_rate_min") and err.count("\n") == 1


def test_config_constraints_name_the_field():
    with pytest.raises(ConfigError, match=r"CheckConfig\.volume_window_days: .*greater than or equal to 1"):
        CheckConfig(volume_window_days=0)
    with pytest.raises(ConfigError, match=r"CheckConfig\.label_threshold: .*less than or equal to 5"):
        CheckConfig(label_threshold=6)
    with pytest.raises(ConfigError, match=r"CheckConfig\.volume_z_warning .*volume_z_hard_low"):
        CheckConfig(volume_z_warning=7.0, volume_z_hard_high=6.0)
