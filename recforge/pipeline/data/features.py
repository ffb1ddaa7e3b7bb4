"""Features for a run on logical date D: built from partitions up to D only, split by time.

Every feature of an event at time t is computed from events strictly before t (events in the
same second count as simultaneous, not as past), so nothing leaks from the future:

* sparse ids: user, item, occupation, zip prefix, gender, age bucket (index 0 = unknown)
* genres: the item's genres, multi-valued, 0-padded
* history: the user's most recently liked items (rating >= 4) before t, most recent first
* dense: age, release year, and user/item rating statistics of the past (count, smoothed mean
  rating, smoothed positive rate), standardised with the training split's mean/std
* label: rating >= 4

Split: whole days, latest first: the test split is the shortest run of final days holding at
least ``test_fraction`` of the rows, validation the same before it, training everything earlier.

Output folder: ``train.parquet``, ``val.parquet``, ``test.parquet``, ``spec.json`` (the model
input contract, see recforge.contracts.features) and ``meta.json`` (split days, counts, normalisation,
data fingerprint). :func:`features_with` builds the same features for other rows with a saved
:class:`Normalisation` (the data gate scores a day with the last nightly's model this way).

CLI: ``python -m recforge.pipeline.data.features --date 1998-04-22 --out DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.contracts.features import FeatureSpec
from recforge.contracts.layout import Catalog
from recforge.core import config
from recforge.core.cli import run_step
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import DataError
from recforge.pipeline.data import ingest as data

SPARSE_FEATURES = ("user_id", "item_id", "occupation", "zip_prefix", "gender", "age_bucket")
DENSE_FEATURES = (
    "age",
    "release_year",
    "user_log_count",
    "user_mean_rating",
    "user_pos_rate",
    "item_log_count",
    "item_mean_rating",
    "item_pos_rate",
)
AGE_BUCKET_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups
SPLITS = ("train", "val", "test")


@typed_config
class FeatureConfig:
    """How features are built and split (the module docstring explains each)."""

    history_length: Annotated[int, Field(ge=1)] = 20  # liked items kept per event
    genre_slots: Annotated[int, Field(ge=1)] = 6  # genres kept per item
    label_threshold: Annotated[int, Field(ge=1, le=5)] = 4  # label = rating >= label_threshold
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    prior_strength: Annotated[float, Field(ge=0)] = 5.0  # pseudo-counts pulling sparse users/items to the global mean
    min_train_rows: Annotated[int, Field(ge=0)] = 1000


@dataclass
class FeatureResult:
    out_dir: str
    day: str
    fingerprint: str
    rows: dict[str, int]
    days: dict[str, list[str]]
    label_rate: dict[str, float]
    spec: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sparse_vocabularies(users: pd.DataFrame, items: pd.DataFrame) -> dict[str, dict]:
    """Category -> index (from 1) per categorical user attribute; ids are used as they are."""
    return {
        "occupation": _vocab(users["occupation"]),
        "zip_prefix": _vocab(zip_prefix(users["zip_code"])),
        "gender": _vocab(users["gender"]),
        "genres": _vocab(pd.Series([g for gs in items["genres"] for g in gs.split()])),
    }


def _vocab(values: pd.Series) -> dict:
    return {v: i + 1 for i, v in enumerate(sorted(set(values)))}


def zip_prefix(zip_codes: pd.Series) -> pd.Series:
    """First digit of a US zip code (a coarse region); "other" for foreign/malformed codes."""
    first = zip_codes.astype(str).str[:1]
    return first.where(first.str.isdigit(), "other")


def age_bucket(age: pd.Series) -> np.ndarray:
    return np.digitize(age.to_numpy(), AGE_BUCKET_EDGES) + 1  # 1..7, 0 stays "unknown"


def past_statistics(events: pd.DataFrame, key: str, label: np.ndarray, prior_mean: float,
                    prior_rate: float, strength: float) -> pd.DataFrame:
    """Count, smoothed mean rating and smoothed positive rate of ``key``'s events strictly before each event.

    ``events`` must be sorted by timestamp. Events of the same key in the same second see the same
    (earlier) statistics, so simultaneous events do not leak into each other.
    """
    frame = pd.DataFrame({key: events[key].to_numpy(), "ts": events["timestamp"].to_numpy(),
                          "rating": events["rating"].to_numpy(), "pos": label})
    grouped = frame.groupby(key, sort=False)
    frame["n"] = grouped.cumcount()
    frame["sum_rating"] = grouped["rating"].cumsum() - frame["rating"]
    frame["sum_pos"] = grouped["pos"].cumsum() - frame["pos"]
    ties = frame.groupby([key, "ts"], sort=False)
    n = ties["n"].transform("first").to_numpy(dtype=float)
    sum_rating = ties["sum_rating"].transform("first").to_numpy(dtype=float)
    sum_pos = ties["sum_pos"].transform("first").to_numpy(dtype=float)
    return pd.DataFrame({
        "log_count": np.log1p(n),
        "mean_rating": (sum_rating + strength * prior_mean) / (n + strength),
        "pos_rate": (sum_pos + strength * prior_rate) / (n + strength),
    }, index=events.index)


def liked_history(events: pd.DataFrame, label: np.ndarray, length: int) -> np.ndarray:
    """[N, length] int64: each event's user's last ``length`` liked items strictly before it, newest first."""
    out = np.zeros((len(events), length), dtype=np.int64)
    users = events["user_id"].to_numpy()
    items = events["item_id"].to_numpy()
    stamps = events["timestamp"].to_numpy()
    order = np.lexsort((stamps, users))  # by user, then time
    liked: list[int] = []
    i = 0
    while i < len(order):
        user = users[order[i]]
        liked = []
        while i < len(order) and users[order[i]] == user:
            # one tie group: same user, same second; all see the history before it
            j = i
            while j < len(order) and users[order[j]] == user and stamps[order[j]] == stamps[order[i]]:
                j += 1
            recent = liked[-length:][::-1]
            for k in range(i, j):
                out[order[k], : len(recent)] = recent
            liked.extend(int(items[order[k]]) for k in range(i, j) if label[order[k]])
            i = j
    return out


def split_days(days: pd.Series, test_fraction: float, val_fraction: float) -> dict[str, list[dt.date]]:
    """Assign whole days to train/val/test, latest days to test (see module docstring)."""
    counts = days.value_counts().sort_index(ascending=False)  # newest first
    total = counts.sum()
    cumulative = counts.cumsum()
    n_test = int(np.searchsorted(cumulative.to_numpy(), test_fraction * total) + 1)
    n_val = int(np.searchsorted(cumulative.to_numpy(), (test_fraction + val_fraction) * total) + 1) - n_test
    ordered = list(counts.index)
    test, val, train = ordered[:n_test], ordered[n_test : n_test + max(n_val, 1)], ordered[n_test + max(n_val, 1) :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


@dataclass(frozen=True)
class Normalisation:
    """What a run's features were built with, beyond the raw data (saved in ``meta.json``): the vocabularies,
    the training split's priors of the past statistics and release-year fill, and the dense mean/std."""

    vocabularies: dict[str, dict]
    prior_mean: float
    prior_rate: float
    release_year_fill: float
    dense_mean: dict[str, float]
    dense_std: dict[str, float]

    @classmethod
    def from_meta(cls, meta: dict) -> Normalisation:
        """From a features folder's ``meta.json``; a DataError when it predates the saved priors."""
        missing = [k for k in ("prior_mean", "prior_rate", "release_year_fill", "dense_mean") if k not in meta]
        if missing:
            raise DataError(f"features meta.json of {meta.get('day')} lacks {missing}: built before the "
                            "normalisation was saved; rebuild the features of that day")
        return cls(meta["vocabularies"], float(meta["prior_mean"]), float(meta["prior_rate"]),
                   float(meta["release_year_fill"]), meta["dense_mean"], meta["dense_std"])


def feature_columns(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, cfg: FeatureConfig,
                    vocab: dict[str, dict], prior_mean: float, prior_rate: float,
                    release_year_fill: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, dense) of ``ratings`` (sorted by time): the table's sparse ids, genres, history, label and
    timestamp, and the dense features before standardisation. ``users``/``items`` are indexed by id."""
    label = (ratings["rating"].to_numpy() >= cfg.label_threshold).astype(np.int64)
    user_rows = users.reindex(ratings["user_id"])
    item_rows = items.reindex(ratings["item_id"])
    columns: dict[str, np.ndarray] = {
        "user_id": ratings["user_id"].to_numpy(),
        "item_id": ratings["item_id"].to_numpy(),
        "occupation": user_rows["occupation"].map(vocab["occupation"]).fillna(0).to_numpy(np.int64),
        "zip_prefix": zip_prefix(user_rows["zip_code"].fillna("")).map(vocab["zip_prefix"]).fillna(0)
        .to_numpy(np.int64),
        "gender": user_rows["gender"].map(vocab["gender"]).fillna(0).to_numpy(np.int64),
        "age_bucket": np.where(user_rows["age"].isna(), 0, age_bucket(user_rows["age"].fillna(0))),
    }
    genre_ids = np.zeros((len(ratings), cfg.genre_slots), dtype=np.int64)
    item_genres = {
        item_id: [vocab["genres"][g] for g in gs.split()][: cfg.genre_slots]
        for item_id, gs in items["genres"].items()
    }
    for row, item_id in enumerate(columns["item_id"]):
        gs = item_genres.get(item_id, [])
        genre_ids[row, : len(gs)] = gs
    history = liked_history(ratings, label, cfg.history_length)

    user_stats = past_statistics(ratings, "user_id", label, prior_mean, prior_rate, cfg.prior_strength)
    item_stats = past_statistics(ratings, "item_id", label, prior_mean, prior_rate, cfg.prior_strength)
    dense = pd.DataFrame({
        "age": user_rows["age"].astype(float).fillna(float(users["age"].median())).to_numpy(),
        "release_year": item_rows["release_year"].astype("float64").fillna(release_year_fill).to_numpy(),
        "user_log_count": user_stats["log_count"].to_numpy(),
        "user_mean_rating": user_stats["mean_rating"].to_numpy(),
        "user_pos_rate": user_stats["pos_rate"].to_numpy(),
        "item_log_count": item_stats["log_count"].to_numpy(),
        "item_mean_rating": item_stats["mean_rating"].to_numpy(),
        "item_pos_rate": item_stats["pos_rate"].to_numpy(),
    })

    table = pd.DataFrame({name: columns[name].astype(np.int64) for name in SPARSE_FEATURES})
    for k in range(cfg.genre_slots):
        table[f"genre_{k}"] = genre_ids[:, k]
    for k in range(cfg.history_length):
        table[f"hist_{k}"] = history[:, k]
    table["label"] = label
    table["timestamp"] = ratings["timestamp"].to_numpy()
    return table, dense


def with_dense(table: pd.DataFrame, dense: pd.DataFrame, mean: pd.Series, std: pd.Series) -> pd.DataFrame:
    """``table`` with the dense features standardised by ``mean``/``std``, in DENSE_FEATURES order before the
    label (the features files' column order)."""
    scaled = ((dense - mean) / std).astype("float32")
    head = table.drop(columns=["label", "timestamp"])
    return pd.concat([head, scaled[list(DENSE_FEATURES)], table[["label", "timestamp"]]], axis=1)


def features_with(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, cfg: FeatureConfig,
                  normalisation: Normalisation) -> pd.DataFrame:
    """The features of every row of ``ratings`` (the four raw columns: every rating up to the rows wanted, the
    history their features come from), built exactly as a run whose ``normalisation`` and ``cfg`` were saved
    built them; rows sorted by time as ``build_features`` sorts them."""
    ratings = ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    table, dense = feature_columns(ratings, users.set_index("user_id"), items.set_index("item_id"), cfg,
                                   normalisation.vocabularies, normalisation.prior_mean, normalisation.prior_rate,
                                   normalisation.release_year_fill)
    mean = pd.Series(normalisation.dense_mean)[list(DENSE_FEATURES)]
    std = pd.Series(normalisation.dense_std)[list(DENSE_FEATURES)]
    return with_dense(table, dense, mean, std)


def build_features(data_root: str, day: dt.date, out_dir: Path,
                   cfg: FeatureConfig | None = None) -> FeatureResult:
    cfg = cfg or FeatureConfig()
    ratings = data.load_ratings(data_root, day)
    users, items = data.load_dimensions(data_root)
    ratings = ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    label = (ratings["rating"].to_numpy() >= cfg.label_threshold).astype(np.int64)
    event_days = data.day_of(ratings["timestamp"])
    split_of_day = split_days(event_days, cfg.test_fraction, cfg.val_fraction)
    if sum(event_days.isin(split_of_day["train"])) < cfg.min_train_rows:
        raise DataError(
            f"only {sum(event_days.isin(split_of_day['train']))} training rows up to {day}; "
            f"need at least {cfg.min_train_rows} (min_train_rows): choose a later date"
        )

    vocab = sparse_vocabularies(users, items)
    users = users.set_index("user_id")
    items = items.set_index("item_id")
    train_mask = event_days.isin(split_of_day["train"]).to_numpy()
    prior_mean = float(ratings["rating"][train_mask].mean())
    prior_rate = float(label[train_mask].mean())
    release_year = items.reindex(ratings["item_id"])["release_year"].astype("float64")
    release_year_fill = float(release_year[train_mask].median())
    table, dense = feature_columns(ratings, users, items, cfg, vocab, prior_mean, prior_rate, release_year_fill)
    mean = dense[train_mask].mean()
    std = dense[train_mask].std(ddof=0).replace(0.0, 1.0)
    table = with_dense(table, dense, mean, std)

    spec = FeatureSpec(
        sparse_features=SPARSE_FEATURES,
        sparse_cardinalities=(
            int(users.index.max()) + 1,
            int(items.index.max()) + 1,
            len(vocab["occupation"]) + 1,
            len(vocab["zip_prefix"]) + 1,
            len(vocab["gender"]) + 1,
            len(AGE_BUCKET_EDGES) + 2,
        ),
        num_genres=len(vocab["genres"]) + 1,
        genre_slots=cfg.genre_slots,
        history_length=cfg.history_length,
        dense_features=DENSE_FEATURES,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, label_rate = {}, {}
    for split in SPLITS:
        mask = event_days.isin(split_of_day[split]).to_numpy()
        part = table[mask].reset_index(drop=True)
        part.to_parquet(out_dir / f"{split}.parquet", index=False)
        rows[split] = len(part)
        label_rate[split] = round(float(part["label"].mean()), 4)
    (out_dir / "spec.json").write_text(spec.to_json())
    result = FeatureResult(
        out_dir=str(out_dir),
        day=day.isoformat(),
        fingerprint=data.fingerprint(data_root, day),
        rows=rows,
        days={s: [split_of_day[s][0].isoformat(), split_of_day[s][-1].isoformat()] for s in SPLITS},
        label_rate=label_rate,
        spec=json.loads(spec.to_json()),
    )
    meta = result.to_dict() | {
        "config": asdict(cfg),
        "dense_mean": mean.to_dict(),
        "dense_std": std.to_dict(),
        "vocabularies": vocab,
        "prior_mean": prior_mean,
        "prior_rate": prior_rate,
        "release_year_fill": release_year_fill,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return result


def ensure_features(data_root: str, day: dt.date, out_dir: Path) -> Path:
    """``out_dir`` with the features of partition ``day``: as they are when this machine has them, else built again
    from the data root (deterministic, so a Celery worker other than the one that ran the features task gets the
    same files: tasks share the data root and MLflow, not a disk)."""
    out_dir = Path(out_dir)
    if not (out_dir / "meta.json").is_file():  # meta.json is written last
        build_features(data_root, day, out_dir)
    return out_dir


@dataclass
class Split:
    """One split as numpy arrays, named as the model inputs (recforge.contracts.features)."""

    sparse: np.ndarray
    genres: np.ndarray
    history: np.ndarray
    dense: np.ndarray
    label: np.ndarray
    frame: pd.DataFrame  # the raw columns, for slicing by attribute

    def __len__(self) -> int:
        return len(self.label)

    def inputs(self) -> dict[str, np.ndarray]:
        return {"sparse": self.sparse, "genres": self.genres, "history": self.history, "dense": self.dense}


def load_split(features_dir: Path, split: str) -> Split:
    path = Path(features_dir) / f"{split}.parquet"
    if not path.exists():
        raise DataError(f"{path} is missing; run the features step for this date first")
    return split_of(pd.read_parquet(path), load_spec(features_dir))


def split_of(frame: pd.DataFrame, spec: FeatureSpec) -> Split:
    """A features frame (the columns ``build_features`` writes) as the model's input arrays."""
    return Split(
        sparse=frame[list(spec.sparse_features)].to_numpy(np.int64),
        genres=frame[[f"genre_{k}" for k in range(spec.genre_slots)]].to_numpy(np.int64),
        history=frame[[f"hist_{k}" for k in range(spec.history_length)]].to_numpy(np.int64),
        dense=frame[list(spec.dense_features)].to_numpy(np.float32),
        label=frame["label"].to_numpy(np.float32),
        frame=frame,
    )


def load_spec(features_dir: Path) -> FeatureSpec:
    path = Path(features_dir) / "spec.json"
    if not path.exists():
        raise DataError(f"{path} is missing; run the features step for this date first")
    return FeatureSpec.from_json(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.data.features",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--date", type=data.parse_date, required=True, help="logical date D (YYYY-MM-DD)")
    parser.add_argument("--out", type=Path, help="output folder (default: $RECFORGE_WORK_DIR/<date>/features)")
    parser.add_argument("--data-root", default=None, help="data root (default: $RECFORGE_DATA_ROOT)")
    args = parser.parse_args(argv)

    out = args.out or Catalog.default().features_dir(args.date)
    return run_step(lambda: build_features(args.data_root or config.data_root(), args.date, out).to_dict())


if __name__ == "__main__":
    sys.exit(main())
