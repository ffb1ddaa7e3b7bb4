"""The one named-tensor contract shared by features, models, ONNX export and serving.

Every model family takes the same four inputs and returns one output, so a variant of any
family can be exported, validated, profiled and served by the same code:

==========  =========  ===========  ==================================================
name        dtype      shape        meaning
==========  =========  ===========  ==================================================
sparse      int64      [B, F]       one categorical id per sparse feature (0 = unknown)
genres      int64      [B, G]       multi-valued item genres, 0-padded
history     int64      [B, L]       user's most recent liked items before the event,
                                    most recent first, 0-padded (item id vocabulary)
dense       float32    [B, Dd]      standardised dense features
probability float32    [B]          predicted P(rating >= 4)
==========  =========  ===========  ==================================================

B = batch, F = number of sparse features, G = genre slots, L = history length,
Dd = number of dense features. Index 0 of every vocabulary is reserved for padding/unknown.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

INPUT_NAMES: tuple[str, ...] = ("sparse", "genres", "history", "dense")
OUTPUT_NAME = "probability"


@dataclass(frozen=True)
class FeatureSpec:
    """Shapes and vocabulary sizes of the model inputs (see module docstring)."""

    sparse_features: tuple[str, ...]
    sparse_cardinalities: tuple[int, ...]  # vocabulary size per sparse feature, incl. index 0
    num_genres: int  # genre vocabulary size incl. padding index 0
    genre_slots: int  # G
    history_length: int  # L
    dense_features: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.sparse_features) != len(self.sparse_cardinalities):
            raise ValueError(
                f"{len(self.sparse_features)} sparse features but "
                f"{len(self.sparse_cardinalities)} cardinalities"
            )
        if any(c < 2 for c in self.sparse_cardinalities):
            raise ValueError(f"every sparse cardinality must be >= 2, got {self.sparse_cardinalities}")
        for name in ("user_id", "item_id"):
            if name not in self.sparse_features:
                raise ValueError(f"sparse_features must include {name!r}")
        if self.num_genres < 2 or self.genre_slots < 1 or self.history_length < 1:
            raise ValueError("num_genres >= 2, genre_slots >= 1 and history_length >= 1 are required")

    @property
    def num_sparse(self) -> int:
        return len(self.sparse_features)

    @property
    def num_dense(self) -> int:
        return len(self.dense_features)

    def cardinality(self, feature: str) -> int:
        return self.sparse_cardinalities[self.index(feature)]

    def index(self, feature: str) -> int:
        """Column of ``feature`` in the ``sparse`` tensor."""
        return self.sparse_features.index(feature)

    @property
    def num_items(self) -> int:
        """Vocabulary of the ``history`` tensor (the item-id vocabulary)."""
        return self.cardinality("item_id")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        return cls(
            sparse_features=tuple(raw["sparse_features"]),
            sparse_cardinalities=tuple(int(c) for c in raw["sparse_cardinalities"]),
            num_genres=int(raw["num_genres"]),
            genre_slots=int(raw["genre_slots"]),
            history_length=int(raw["history_length"]),
            dense_features=tuple(raw["dense_features"]),
        )


def example_spec() -> FeatureSpec:
    """A small spec with MovieLens-100K's shape, for tests and docs."""
    return FeatureSpec(
        sparse_features=("user_id", "item_id", "occupation", "zip_prefix", "gender", "age_bucket"),
        sparse_cardinalities=(944, 1683, 22, 11, 3, 8),
        num_genres=20,
        genre_slots=6,
        history_length=20,
        dense_features=(
            "age",
            "release_year",
            "user_log_count",
            "user_mean_rating",
            "user_pos_rate",
            "item_log_count",
            "item_mean_rating",
            "item_pos_rate",
        ),
    )
