"""Helpers shared by the recforge.models tests (a module with a unique name, not a conftest, so that
``import`` cannot pick up another test folder's conftest)."""

from __future__ import annotations

import dataclasses

from recforge.contracts.features import FeatureSpec, example_spec
from recforge.models.synthetic import DienSpec, MtWndSpec

TINY_MTWND = MtWndSpec("tiny_mt_wnd", num_tables=3, rows_per_table=1000, lookups_per_table=4, embedding_dim=8,
                       dense_features=5, shared_mlp=(16, 8), task_mlp=(6, 1), num_tasks=3)
TINY_DIEN = DienSpec("tiny_dien", num_tables=7, rows_per_table=1000, lookups_per_table=2, embedding_dim=8,
                     dense_features=5, interest_dim=6, top_mlp=(12, 1))


def small_spec() -> FeatureSpec:
    """example_spec()'s features with small vocabularies, 3 genre slots and 5 history slots."""
    return dataclasses.replace(
        example_spec(),
        sparse_cardinalities=(30, 50, 5, 4, 3, 4),
        num_genres=8,
        genre_slots=3,
        history_length=5,
    )
