"""The search strategy a run config names: ``{"strategy": "hill_climb"|"grid"|"coordinate_race", "axes": {...},
...}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.axes import triton_knobs_valid
from recforge.pipeline.profiling.search.base import SearchStrategy
from recforge.pipeline.profiling.search.grid import GridSearch
from recforge.pipeline.profiling.search.hill_climb import HillClimb
from recforge.pipeline.profiling.search.race import RacingCoordinateSearch

STRATEGIES: dict[str, type] = {HillClimb.name: HillClimb, GridSearch.name: GridSearch,
                               RacingCoordinateSearch.name: RacingCoordinateSearch}
CONSTRAINTS = {"triton": triton_knobs_valid}  # a run config's "valid": which knob combinations can be served


def strategy_from_dict(d: Mapping[str, Any]) -> SearchStrategy:
    """A strategy from a run config: {"strategy": "hill_climb"|"grid"|"coordinate_race", "axes": {...},
    "start": {...}, "valid": "triton", ...} (``valid`` for grid and coordinate_race only)."""
    d = dict(d)
    kind = d.pop("strategy", HillClimb.name)
    if "axes" not in d:
        raise ConfigError("search config needs 'axes': {knob name: [ordered values]}")
    if kind not in STRATEGIES:
        raise ConfigError(f"search strategy must be one of {', '.join(repr(k) for k in STRATEGIES)}, got {kind!r}")
    if "valid" in d:
        if d["valid"] not in CONSTRAINTS:
            raise ConfigError(f"search config 'valid' must be one of {sorted(CONSTRAINTS)}, got {d['valid']!r}")
        d["valid"] = CONSTRAINTS[d["valid"]]
    try:
        return STRATEGIES[kind](**d)
    except TypeError as err:
        raise ConfigError(f"search config ({kind}): {err}") from None
