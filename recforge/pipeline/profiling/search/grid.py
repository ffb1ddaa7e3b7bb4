"""Exhaustive grid search over the knob axes (small spaces, and validating :class:`HillClimb`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.pipeline.profiling.search.base import Evaluate, EvaluationMemo, SearchResult, check_axes, check_fixed


class GridSearch:
    """Every combination of the axes (for small spaces, and to validate ``HillClimb``); the first best wins
    ties. The trajectory is the sequence of running bests."""

    name = "grid"

    def __init__(self, axes: Mapping[str, Sequence[Any]], *, fixed: Mapping[str, Any] | None = None):
        self.axes = check_axes(axes)
        self.fixed = check_fixed("GridSearch", self.axes, fixed)

    def search(self, evaluate: Evaluate) -> SearchResult:
        memo = EvaluationMemo(evaluate, self.axes, self.fixed)
        best, trajectory = None, []
        for point in itertools.product(*(range(len(v)) for v in self.axes.values())):
            value = memo(point)
            if best is None or value > memo.values[best]:
                best = point
                trajectory.append(memo.entry(point))
        assert best is not None  # check_axes: every axis has a value
        size = len(memo.log)
        return SearchResult(self.name, memo.knobs(best), memo.values[best], memo.log, trajectory,
                            f"exhaustive over {size} configurations")
