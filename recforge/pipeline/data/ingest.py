"""Data ingest: real MovieLens-100K, checksum-verified, cut into daily Parquet partitions.

The raw files come from a PyPI wheel that ships them (``recbole==1.2.1``), because this pipeline
must run without internet access. Layout under the data root (local folder or any fsspec URL)::

    <data_root>/users.parquet                         dimension table (943 users)
    <data_root>/items.parquet                         dimension table (1682 items)
    <data_root>/ratings/date=YYYY-MM-DD/part-0.parquet   one partition per UTC day

Partitions are the system of record: ingest only adds missing days up to the run's date and
never rewrites one that exists, so a bad partition stays visible to the data checks.

CLI: ``python -m recforge.pipeline.data.ingest --date 1998-04-22``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pandas as pd

from recforge.core import config
from recforge.core.cli import run_step
from recforge.core.errors import ConfigError, DataError
from recforge.core.hashing import sha256_bytes

RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class WheelSource:
    """Files shipped inside a PyPI wheel, each pinned by SHA-256."""

    package: str
    version: str
    members: dict[str, str]  # member path in the wheel -> sha256

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ML100K = WheelSource(
    package="recbole",
    version="1.2.1",
    members={
        "recbole/dataset_example/ml-100k/ml-100k.inter": (
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
        ),
        "recbole/dataset_example/ml-100k/ml-100k.user": (
            "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"
        ),
        "recbole/dataset_example/ml-100k/ml-100k.item": (
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
        ),
    },
)


def fetch_movielens(raw_dir: Path, source: WheelSource = ML100K) -> Path:
    """Make sure the raw MovieLens files are in ``raw_dir`` with the right checksums; return the folder.

    Downloads the wheel with pip (no dependencies, nothing installed) only when a file is missing
    or does not match its checksum.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    wanted = {member: raw_dir / Path(member).name for member in source.members}
    if all(p.exists() and sha256_bytes(p.read_bytes()) == source.members[m] for m, p in wanted.items()):
        return raw_dir
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, source.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            pip_said = result.stderr.strip().splitlines()
            raise DataError(
                f"could not download {source.requirement} to extract MovieLens-100K: "
                f"{pip_said[-1] if pip_said else 'no wheel found'}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, target in wanted.items():
                data = wheel.read(member)
                digest = sha256_bytes(data)
                if digest != source.members[member]:
                    raise DataError(
                        f"checksum mismatch for {member} in {wheels[0].name}: "
                        f"got {digest}, expected {source.members[member]}"
                    )
                target.write_bytes(data)
    return raw_dir


def read_raw(raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Parse the RecBole atomic files into (ratings, users, items) with plain column names."""

    def read(name: str) -> pd.DataFrame:
        text = (raw_dir / f"ml-100k.{name}").read_bytes().decode("latin-1")
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame

    inter, user, item = read("inter"), read("user"), read("item")
    ratings = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype("int64"),
            "item_id": inter["item_id"].astype("int64"),
            "rating": inter["rating"].astype(float).astype("int64"),
            "timestamp": inter["timestamp"].astype(float).astype("int64"),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": user["user_id"].astype("int64"),
            "age": user["age"].astype("int64"),
            "gender": user["gender"],
            "occupation": user["occupation"],
            "zip_code": user["zip_code"],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item["item_id"].astype("int64"),
            "title": item["movie_title"],
            "release_year": pd.to_numeric(item["release_year"], errors="coerce").astype("Int64"),
            "genres": item["class"],
        }
    )
    return ratings, users, items


def day_of(timestamps: pd.Series) -> pd.Series:
    """UTC calendar day of unix timestamps (seconds)."""
    return pd.to_datetime(timestamps, unit="s", utc=True).dt.date


def partition_path(data_root: str, day: dt.date) -> str:
    return f"{data_root.rstrip('/')}/ratings/date={day.isoformat()}/part-0.parquet"


def _fs(data_root: str):
    fs, _ = fsspec.core.url_to_fs(data_root)
    return fs


def list_partitions(data_root: str) -> list[dt.date]:
    """Days that have a ratings partition, sorted."""
    fs = _fs(data_root)
    base = f"{data_root.rstrip('/')}/ratings"
    if not fs.exists(base):
        return []
    days = []
    for entry in fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("date="):
            days.append(dt.date.fromisoformat(name[len("date=") :]))
    return sorted(days)


def write_parquet(frame: pd.DataFrame, url: str) -> None:
    fs = _fs(url)
    parent = url.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    with fs.open(url, "wb") as fh:
        frame.to_parquet(fh, index=False)


def read_parquet(url: str) -> pd.DataFrame:
    fs = _fs(url)
    if not fs.exists(url):
        raise DataError(f"{url} does not exist; run the ingest step (make run) first")
    with fs.open(url, "rb") as fh:
        return pd.read_parquet(fh)


@dataclass(frozen=True)
class IngestResult:
    data_root: str
    written: list[str]
    partitions: int
    first_day: str
    last_day: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def ingest(raw_dir: Path, data_root: str, upto: dt.date | None = None) -> IngestResult:
    """Land the MovieLens partitions up to ``upto`` (all when None) under ``data_root``.

    Existing partitions and dimension tables are left as they are.
    """
    ratings, users, items = read_raw(raw_dir)
    days = day_of(ratings["timestamp"])
    if upto is not None and upto < days.min():
        raise DataError(f"date {upto} is before the first day of data ({days.min()})")
    fs = _fs(data_root)
    root = data_root.rstrip("/")
    written = []
    for name, table in (("users", users), ("items", items)):
        url = f"{root}/{name}.parquet"
        if not fs.exists(url):
            write_parquet(table, url)
            written.append(url)
    existing = set(list_partitions(data_root))
    for day, part in ratings.groupby(days, sort=True):
        if (upto is not None and day > upto) or day in existing:
            continue
        url = partition_path(data_root, day)
        write_parquet(part.sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True), url)
        written.append(url)
    present = list_partitions(data_root)
    return IngestResult(root, written, len(present), str(present[0]), str(present[-1]))


def load_partition(data_root: str, day: dt.date) -> pd.DataFrame:
    url = partition_path(data_root, day)
    if not _fs(data_root).exists(url):
        raise DataError(f"no ratings partition for {day} under {data_root} (expected {url})")
    return read_parquet(url)


def load_ratings(data_root: str, upto: dt.date) -> pd.DataFrame:
    """All ratings of the partitions up to and including ``upto`` (never later ones)."""
    days = [d for d in list_partitions(data_root) if d <= upto]
    if not days:
        raise DataError(f"no ratings partitions on or before {upto} under {data_root}")
    frames = [load_partition(data_root, d) for d in days]
    return pd.concat(frames, ignore_index=True)


def load_dimensions(data_root: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = data_root.rstrip("/")
    return read_parquet(f"{root}/users.parquet"), read_parquet(f"{root}/items.parquet")


def partition_row_counts(data_root: str, days: list[dt.date]) -> list[int]:
    """Row counts from Parquet footers, without reading the data."""
    import pyarrow.parquet as pq

    fs = _fs(data_root)
    counts = []
    for day in days:
        with fs.open(partition_path(data_root, day), "rb") as fh:
            counts.append(pq.ParquetFile(fh).metadata.num_rows)
    return counts


def fingerprint(data_root: str, upto: dt.date) -> str:
    """SHA-256 over the bytes of every input a run for ``upto`` reads: traces artifacts to their data."""
    fs = _fs(data_root)
    root = data_root.rstrip("/")
    digest = hashlib.sha256()
    urls = [f"{root}/users.parquet", f"{root}/items.parquet"]
    urls += [partition_path(data_root, d) for d in list_partitions(data_root) if d <= upto]
    for url in urls:
        with fs.open(url, "rb") as fh:
            digest.update(url[len(root) :].encode())
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def first_and_last_day(raw: Path | None = None) -> tuple[dt.date, dt.date]:
    """First and last day of the raw data (the last one is the default logical date of a run)."""
    ratings, _, _ = read_raw(raw or config.raw_dir())
    days = day_of(ratings["timestamp"])
    return days.min(), days.max()


def last_day(raw: Path | None = None) -> dt.date:
    return first_and_last_day(raw)[1]


class DateError(ConfigError, argparse.ArgumentTypeError):
    """A malformed date: a one-line error both for argparse (type=) and for recforge.core.cli.run_step."""


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise DateError(f"not a date (YYYY-MM-DD): {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.data.ingest",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--date", type=parse_date, help="land partitions up to this day (default: all)")
    parser.add_argument("--data-root", default=None, help="data root (default: $RECFORGE_DATA_ROOT)")
    parser.add_argument("--fetch-only", action="store_true", help="only download and verify the raw files")
    parser.add_argument("--print-last-day", action="store_true", help="print the last day of the data")
    args = parser.parse_args(argv)

    def step():
        raw = fetch_movielens(config.raw_dir())
        if args.print_last_day:
            return last_day(raw).isoformat()
        if args.fetch_only:
            return f"MovieLens-100K verified in {raw}"
        return ingest(raw, args.data_root or config.data_root(), args.date).to_dict()

    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
