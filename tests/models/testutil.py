"""Helpers shared by the recforge.models tests (a module with a unique name, not a conftest, so that
``import`` cannot pick up another test folder's conftest)."""

from __future__ import annotations

import dataclasses

from recforge.contracts.features import FeatureSpec, example_spec


def small_spec() -> FeatureSpec:
    """example_spec()'s features with small vocabularies, 3 genre slots and 5 history slots."""
    return dataclasses.replace(
        example_spec(),
        sparse_cardinalities=(30, 50, 5, 4, 3, 4),
        num_genres=8,
        genre_slots=3,
        history_length=5,
    )
