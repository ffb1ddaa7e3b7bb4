"""The search strategy a run config names: ``{"strategy": "hill_climb"|"grid", "axes": {...}, ...}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.base import SearchStrategy
from recforge.pipeline.profiling.search.grid import GridSearch
from recforge.pipeline.profiling.search.hill_climb import HillClimb

STRATEGIES: dict[str, type] = {HillClimb.name: HillClimb, GridSearch.name: GridSearch}


def strategy_from_dict(d: Mapping[str, Any]) -> SearchStrategy:
    """A strategy from a run config: {"strategy": "hill_climb"|"grid", "axes": {...}, "start": {...}, ...}."""
    d = dict(d)
    kind = d.pop("strategy", HillClimb.name)
    if "axes" not in d:
        raise ConfigError("search config needs 'axes': {knob name: [ordered values]}")
    if kind not in STRATEGIES:
        raise ConfigError(f"search strategy must be 'hill_climb' or 'grid', got {kind!r}")
    try:
        return STRATEGIES[kind](**d)
    except TypeError as err:
        raise ConfigError(f"search config ({kind}): {err}") from None
