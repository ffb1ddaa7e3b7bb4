"""Exhaustive grid search over the knob axes (small spaces, and validating the other strategies)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.base import (
    Evaluate,
    EvaluationMemo,
    SearchResult,
    Valid,
    check_axes,
    check_fixed,
)


class GridSearch:
    """Every combination of the axes (for small spaces, and to validate the other strategies); the first best
    wins ties. The trajectory is the sequence of running bests. With ``valid``, combinations it refuses (e.g. a
    preferred batch size above max_batch_size) are skipped, not evaluated."""

    name = "grid"

    def __init__(self, axes: Mapping[str, Sequence[Any]], *, fixed: Mapping[str, Any] | None = None,
                 valid: Valid | None = None):
        self.axes = check_axes(axes)
        self.fixed = check_fixed("GridSearch", self.axes, fixed)
        self.valid = valid

    def points(self) -> list[tuple[int, ...]]:
        """The valid points of the grid (tuples of axis indices), in evaluation order."""
        memo = EvaluationMemo(lambda knobs: 0.0, self.axes, self.fixed)
        return [point for point in itertools.product(*(range(len(v)) for v in self.axes.values()))
                if self.valid is None or self.valid(memo.knobs(point))]

    def search(self, evaluate: Evaluate) -> SearchResult:
        memo = EvaluationMemo(evaluate, self.axes, self.fixed)
        best, trajectory = None, []
        points = self.points()
        if not points:
            raise ConfigError("GridSearch: no combination of the axes is valid")
        for point in points:
            value = memo(point)
            if best is None or value > memo.values[best]:
                best = point
                trajectory.append(memo.entry(point))
        assert best is not None  # points is not empty
        size = len(memo.log)
        skipped = math.prod(len(v) for v in self.axes.values()) - size
        return SearchResult(self.name, memo.knobs(best), memo.values[best], memo.log, trajectory,
                            f"exhaustive over {size} configurations"
                            + (f" ({skipped} invalid combinations skipped)" if skipped else ""))
