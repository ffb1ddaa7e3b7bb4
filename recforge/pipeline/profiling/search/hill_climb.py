"""DeepRecSched's hill climbing over ordered discrete knob axes (Gupta et al., ISCA 2020)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.base import (
    Evaluate,
    EvaluationMemo,
    SearchResult,
    check_axes,
    check_fixed,
    start_point,
)


class HillClimb:
    """DeepRecSched's hill climbing over ordered discrete axes (e.g. sub-batch size, GPU offload threshold).

    From ``start`` (default: each axis' first value; DeepRecSched starts from small batches) it evaluates the
    neighbours one step up and down each axis and moves to the best one that improves on the current value by
    more than ``min_improvement`` (relative); it stops at a local optimum or after ``max_evaluations``.
    Evaluations are memoised: no point is evaluated twice. ``fixed`` knobs are passed with every point.
    """

    name = "hill_climb"

    def __init__(self, axes: Mapping[str, Sequence[Any]], start: Mapping[str, Any] | None = None, *,
                 fixed: Mapping[str, Any] | None = None, min_improvement: float = 0.0,
                 max_evaluations: int | None = None):
        self.axes = check_axes(axes)
        self.fixed = check_fixed("HillClimb", self.axes, fixed)
        self.start = start_point("HillClimb", self.axes, start)
        if not 0 <= min_improvement < math.inf:
            raise ConfigError(f"HillClimb: min_improvement must be a finite number >= 0, got {min_improvement}")
        self.min_improvement = float(min_improvement)
        if max_evaluations is not None and (not isinstance(max_evaluations, int) or max_evaluations < 1):
            raise ConfigError(f"HillClimb: max_evaluations must be an integer >= 1, got {max_evaluations!r}")
        self.max_evaluations = max_evaluations

    def _neighbours(self, point: tuple[int, ...]) -> list[tuple[int, ...]]:
        out = []
        for axis, values in enumerate(self.axes.values()):
            for step in (-1, 1):
                i = point[axis] + step
                if 0 <= i < len(values):
                    out.append(point[:axis] + (i,) + point[axis + 1:])
        return out

    def search(self, evaluate: Evaluate) -> SearchResult:
        memo = EvaluationMemo(evaluate, self.axes, self.fixed)
        current = self.start
        memo(current)
        trajectory = [memo.entry(current)]
        note = ""
        while True:
            best_next, best_value = None, memo.values[current]
            threshold = best_value + abs(best_value) * self.min_improvement
            budget_hit = False
            for neighbour in self._neighbours(current):
                if neighbour not in memo.values and self.max_evaluations is not None \
                        and len(memo.log) >= self.max_evaluations:
                    budget_hit = True
                    break
                value = memo(neighbour)
                if value > threshold and value > best_value:
                    best_next, best_value = neighbour, value
            if best_next is None:
                if budget_hit:
                    note = f"evaluation budget ({self.max_evaluations}) spent before reaching a local optimum"
                else:
                    note = "stopped at a local optimum"
                break
            current = best_next
            trajectory.append(memo.entry(current))
        if memo.values[current] == 0:
            note += "; no configuration near the start meets the SLO (LBT 0): try another start or GridSearch"
        return SearchResult(self.name, memo.knobs(current), memo.values[current], memo.log, trajectory, note)
