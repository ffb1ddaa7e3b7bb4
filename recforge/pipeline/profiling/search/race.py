"""Racing coordinate search: every value of every axis challenges the incumbent with one cheap load run at the
incumbent's LBT, and only a challenger that sustains that rate gets a full LBT search.

Why not DeepRecSched's hill climb alone: it looks one step up and down each axis and trusts single noisy
comparisons, so it stops on flat neighbours (no preferred batch size vs. every power of two, a 0 vs. 100 µs queue
delay) and spends a small evaluation budget on the first axis it tries. Comparing two settings does not need
both LBTs: if the challenger cannot sustain the incumbent's LBT (plus ``margin``) it is not better, and one run
says so. So a sweep screens *every* other value of each axis for about one load run each, and the doubling ramp
of a full LBT search is only paid by winners (starting from the rate they already sustained). After the sweeps
settle, ``restarts`` off-axis settings are raced the same way, to step off a coordinate-wise optimum that needs
two knobs to change together: first the pairs of the incumbent's nearest misses (two single-knob moves that fell
just short, made at once), then far-away settings (the valid settings least like any judged so far).

The bar is only as honest as the incumbent's LBT, and an LBT search's figure is the highest rate that passed
once: a lucky run inflates it, and then every challenger must beat a rate the incumbent itself cannot hold (on a
real server, one search's 1,751 qps for a setting whose median re-measured LBT was 1,575 made every screen ask
for 14 % more than it served). So when the race settles, the incumbent's LBT is re-checked with one more load run
(``max_rechecks`` times at most); when it does not hold, it drops to the next lower rate its search passed, the
setting with the best LBT on record leads, and the settings that failed above the lowered bar race again.

A single LBT search can also come out low (one unlucky run ends its ramp), so an LBT on record is not a verdict:
a setting that no longer leads races again at the bar like any challenger (its axis neighbours in the sweeps, all
of them before the off-axis restarts), and when it sustains the bar it gets a fresh LBT search from there. On a
real server the start (the true best, 1,970 qps re-measured) had searched to below 1,700, a setting serving 12 %
less beat that, and the race ended on it, never having asked the start again.

The strategy knows the space, not the measuring: it takes a :class:`RateProbe` (``search.lbt_probe.LBTProbe``
in the profiling stage, closed-form queues in tests). Given a plain ``evaluate(knobs) -> LBT`` instead, each
screen is a full evaluation (coordinate descent over whole axes, with restarts).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.base import (
    Evaluate,
    EvaluationMemo,
    SearchResult,
    Valid,
    check_axes,
    check_fixed,
    start_point,
)

MAX_ENUMERATED = 100_000  # restart candidates are drawn from at most this many settings of the space


@dataclass(frozen=True)
class Screen:
    """One load run of a knob setting at one offered rate: did it meet the SLO, at what p95."""

    passed: bool
    p95_ms: float = math.nan
    reason: str = ""  # why it failed ("" when it passed)


@runtime_checkable
class RateProbe(Protocol):
    """What the race measures with: full LBT searches and one-run screens, with the load runs they cost."""

    runs: int  # load runs spent so far
    floor_qps: float  # the lowest rate worth probing (the LBT search's start rate)
    evaluation_cost: int  # the most load runs one full LBT search may take
    min_evaluation_runs: int  # the fewest load runs an LBT search from a sustained rate can say anything in
    screen_cost: int  # the most load runs one screen may take

    def __call__(self, knobs: dict) -> float:
        """The full LBT search of ``knobs`` (qps)."""
        ...

    def screen(self, knobs: dict, rate_qps: float) -> Screen:
        """One load run of ``knobs`` at ``rate_qps``."""
        ...

    def lbt_from(self, knobs: dict, rate_qps: float, max_runs: int | None = None) -> float:
        """The LBT of ``knobs``, searched upwards from ``rate_qps`` (a rate it just sustained in a screen) in at
        most ``max_runs`` load runs (None: the search's own step budget)."""
        ...

    def recheck(self, knobs: dict, rate_qps: float) -> float:
        """One more load run of ``knobs`` at ``rate_qps``, its LBT: ``rate_qps`` when it holds, else a lower rate
        it passed (0 when none)."""
        ...


def checked(knobs: Mapping[str, Any], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"evaluate({dict(knobs)}) returned {value!r}; it must return a finite number")
    return float(value)


class RacingCoordinateSearch:
    """Coordinate descent over whole axes in which challengers race the incumbent (see the module docstring).

    From ``start`` (default: each axis' first value) the start setting gets a full LBT search. Then, axis by
    axis, each other value (nearest first; settings ``valid`` refuses are skipped) is screened with one load run
    at ``max(incumbent LBT x (1 + margin), probe floor)``; a challenger that passes gets a full LBT search from
    that rate and, when it beats the incumbent, replaces it. A challenger that failed at a rate is not screened
    again at that rate or above; one with an LBT on record that no longer leads is (with a probe). Sweeps repeat
    until one moves nothing (at most ``max_sweeps``), then the settings with an LBT on record race again, then up
    to ``restarts`` off-axis settings are raced (pairs of near misses, then far-away settings); one that wins
    restarts the sweeps. When nothing wins, the incumbent's LBT is re-checked with one load run (at most
    ``max_rechecks`` times); when it does not hold, the bar drops and sweeps and restarts begin again.
    ``max_evaluations`` bounds the full LBT searches, ``max_runs`` the load runs (a full search from scratch is
    only started when ``probe.evaluation_cost`` runs are left; a winner's search from its sustained rate gets what
    is left), so the search does not overspend either (runs repeated under CPU steal aside).
    """

    name = "coordinate_race"

    def __init__(self, axes: Mapping[str, Sequence[Any]], start: Mapping[str, Any] | None = None, *,
                 fixed: Mapping[str, Any] | None = None, valid: Valid | None = None, margin: float = 0.03,
                 restarts: int = 4, max_sweeps: int = 4, max_rechecks: int = 2,
                 max_evaluations: int | None = None, max_runs: int | None = None):
        self.axes = check_axes(axes)
        self.fixed = check_fixed("RacingCoordinateSearch", self.axes, fixed)
        self.valid = valid
        self.start = start_point("RacingCoordinateSearch", self.axes, start)
        knobs = EvaluationMemo(checked, self.axes, self.fixed).knobs(self.start)
        if valid is not None and not valid(knobs):
            raise ConfigError(f"RacingCoordinateSearch: the start {knobs} is not a valid setting")
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0 <= margin < 1:
            raise ConfigError(f"RacingCoordinateSearch: margin must be a number in [0, 1), got {margin!r}")
        self.margin = float(margin)
        for name, value, low in (("restarts", restarts, 0), ("max_sweeps", max_sweeps, 1),
                                 ("max_rechecks", max_rechecks, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"RacingCoordinateSearch: {name} must be an integer >= {low}, got {value!r}")
        self.restarts, self.max_sweeps, self.max_rechecks = restarts, max_sweeps, max_rechecks
        for name, value in (("max_evaluations", max_evaluations), ("max_runs", max_runs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"RacingCoordinateSearch: {name} must be an integer >= 1, got {value!r}")
        self.max_evaluations, self.max_runs = max_evaluations, max_runs

    def search(self, evaluate: Evaluate | RateProbe) -> SearchResult:
        return _Race(self, evaluate).run()


class _Race:
    """The state of one :class:`RacingCoordinateSearch` run."""

    def __init__(self, spec: RacingCoordinateSearch, evaluate: Evaluate | RateProbe):
        self.spec = spec
        self.probe = evaluate if isinstance(evaluate, RateProbe) else None
        self.evaluate = evaluate
        self.memo = EvaluationMemo(checked, spec.axes, spec.fixed)  # knobs(point) only
        self.values: dict[tuple[int, ...], float] = {}  # full LBT searches
        self.failed_at: dict[tuple[int, ...], float] = {}  # rate a screen (or a full search) found it short of
        self.shortfall: dict[tuple[int, ...], float] = {}  # how short it fell (screen p95, or -LBT): lower is nearer
        self.evaluations: list[dict] = []
        self.trajectory: list[dict] = []
        self.screens: list[dict] = []
        self.rechecks: list[dict] = []  # the incumbent's LBT run again: knobs, before, after
        self.current = spec.start
        self.stopped = ""  # the budget that ended the search

    # ------------------------------------------------------------------------------------------------ measuring

    def runs(self) -> int:
        return self.probe.runs if self.probe is not None else len(self.evaluations)

    def afford(self, runs: int) -> bool:
        spec = self.spec
        if spec.max_runs is not None and self.runs() + runs > spec.max_runs:
            self.stopped = f"load-run budget ({spec.max_runs}) spent"
            return False
        return True

    def full(self, point: tuple[int, ...], from_rate: float | None = None) -> float | None:
        """A full LBT search of ``point`` (None when the budget does not allow one)."""
        spec = self.spec
        if self.evaluations:  # the start is always evaluated
            if spec.max_evaluations is not None and len(self.evaluations) >= spec.max_evaluations:
                self.stopped = f"evaluation budget ({spec.max_evaluations}) spent"
                return None
            if self.probe is None:
                if not self.afford(1):
                    return None
            elif not self.afford(self.probe.evaluation_cost if from_rate is None else
                                 self.probe.min_evaluation_runs):
                return None
        knobs = self.memo.knobs(point)
        if self.probe is None or from_rate is None:
            value = checked(knobs, self.evaluate(dict(knobs)))
        else:  # a winner's search gets what is left of the budget: a shorter search is a coarser lower bound
            left = None if self.spec.max_runs is None else self.spec.max_runs - self.probe.runs
            value = checked(knobs, self.probe.lbt_from(dict(knobs), from_rate, left))
            # a setting raced again keeps the rate it had sustained when its fresh search falls short of it
            value = max(value, self.values.get(point, 0.0))
        self.values[point] = value
        self.evaluations.append({"knobs": knobs, "value": value})
        return value

    def race_rate(self) -> float:
        """The rate a challenger must sustain: the incumbent's LBT + margin (the probe's floor while it is 0)."""
        best = self.values[self.current]
        floor = self.probe.floor_qps if self.probe is not None else 0.0
        return max(best * (1.0 + self.spec.margin), floor) if best > 0 else floor

    def challenge(self, point: tuple[int, ...]) -> bool:
        """Race ``point`` against the incumbent; True when it took the incumbent's place."""
        rate = self.race_rate()
        if point == self.current or self.failed_at.get(point, math.inf) <= rate:
            return False  # it leads, or it was judged at this bar or a lower one already
        if point in self.values and self.probe is None:
            return False  # without screens a second full evaluation says what the first did
        if self.probe is None:  # a screen is a full evaluation
            value = self.full(point)
            shortfall = -value if value is not None else math.inf
        else:
            if not self.afford(self.probe.screen_cost):
                return False
            knobs = self.memo.knobs(point)
            screen = self.probe.screen(dict(knobs), rate)
            self.screens.append({"knobs": knobs, "rate_qps": rate, "passed": screen.passed,
                                 "p95_ms": screen.p95_ms if math.isfinite(screen.p95_ms) else None})
            value = self.full(point, rate) if screen.passed else None
            shortfall = screen.p95_ms if math.isfinite(screen.p95_ms) and not screen.passed else math.inf
        best = self.values[self.current]
        if value is None or not (value > 0 and value >= rate and value > best):
            if not self.stopped:
                self.failed_at[point] = rate
                self.shortfall[point] = shortfall
            return False
        self.current = point
        self.trajectory.append({"knobs": self.memo.knobs(point), "value": value})
        return True

    # ---------------------------------------------------------------------------------------------- the search

    def is_valid(self, point: tuple[int, ...]) -> bool:
        return self.spec.valid is None or bool(self.spec.valid(self.memo.knobs(point)))

    def sweep(self) -> bool:
        """Race every other value of each axis against the incumbent, nearest first; True when one moved it."""
        moved = False
        for axis, values in enumerate(self.spec.axes.values()):
            here = self.current[axis]
            for i in sorted(range(len(values)), key=lambda i: (abs(i - here), i)):
                point = self.current[:axis] + (i,) + self.current[axis + 1:]
                if point == self.current or not self.is_valid(point):
                    continue
                moved |= self.challenge(point)
                if self.stopped:
                    return moved
        return moved

    def near_miss_pairs(self) -> list[tuple[int, ...]]:
        """Settings that make two of the incumbent's nearest-missing single-knob moves at once (two knobs that
        only help together, e.g. a queue delay and a preferred batch size), nearest first."""
        here = self.current

        def moved_axes(point: tuple[int, ...]) -> list[int]:
            return [axis for axis, (a, b) in enumerate(zip(point, here, strict=True)) if a != b]

        singles = sorted((score, point) for point, score in self.shortfall.items()
                         if math.isfinite(score) and len(moved_axes(point)) == 1)[:4]
        judged = set(self.values) | set(self.failed_at)
        pairs = []
        for (score_a, a), (score_b, b) in itertools.combinations(singles, 2):
            (axis_a,), (axis_b,) = moved_axes(a), moved_axes(b)
            if axis_a == axis_b:
                continue
            point = tuple(a[i] if i == axis_a else b[i] if i == axis_b else here[i] for i in range(len(here)))
            if point not in judged and self.is_valid(point):
                pairs.append((score_a + score_b, point))
        return [point for _, point in sorted(pairs)]

    def far_point(self) -> tuple[int, ...] | None:
        """The valid, unjudged setting least like those judged so far (most knobs differing from the nearest)."""
        judged = set(self.values) | set(self.failed_at)
        best, best_key = None, None
        ranges = (range(len(v)) for v in self.spec.axes.values())
        for point in itertools.islice(itertools.product(*ranges), MAX_ENUMERATED):
            if point in judged or not self.is_valid(point):
                continue
            distance = min(sum(a != b for a, b in zip(point, other, strict=True)) for other in judged)
            # ties: most knobs unlike the incumbent's, then the farthest along the axes (the corners first)
            key = (distance, sum(a != b for a, b in zip(point, self.current, strict=True)),
                   sum(abs(a - b) for a, b in zip(point, self.current, strict=True)))
            if best_key is None or key > best_key:
                best, best_key = point, key
        return best

    def overtaken(self) -> list[tuple[int, ...]]:
        """The settings with an LBT on record that do not lead, the best first (``challenge`` races them only with a
        probe: without screens a second full evaluation says what the first did)."""
        return sorted((p for p in self.values if p != self.current), key=lambda p: -self.values[p])

    def recheck(self) -> bool:
        """Run the incumbent once more at its LBT. True when it did not hold: its LBT dropped to the rate that
        did, and the setting with the best LBT on record leads (the race has a lower bar to race again)."""
        if self.probe is None or len(self.rechecks) >= self.spec.max_rechecks:
            return False
        before = self.values[self.current]
        if before <= 0 or not self.afford(2):  # a failed re-check may take one run lower
            return False
        knobs = self.memo.knobs(self.current)
        after = checked(knobs, self.probe.recheck(dict(knobs), before))
        self.rechecks.append({"knobs": knobs, "before": before, "after": after})
        if after >= before:
            return False
        self.failed_at[self.current] = before
        self.values[self.current] = after
        leader = max(self.values, key=lambda point: self.values[point])
        if self.values[leader] > after:
            self.current = leader
            self.trajectory.append({"knobs": self.memo.knobs(leader), "value": self.values[leader]})
        return True

    def settle(self) -> tuple[int, int, bool]:
        """Sweeps until one moves nothing, then the overtaken settings, then off-axis challengers, until one wins
        (and sweeps again) or ``restarts`` are spent: (sweeps, restarts, whether the sweep cap stopped it)."""
        spec = self.spec
        sweeps = restarts = 0
        while not self.stopped:
            moved = True
            while moved and not self.stopped:
                if sweeps >= spec.max_sweeps:
                    return sweeps, restarts, True
                moved = self.sweep()
                sweeps += 1
            jumped = False
            for point in self.overtaken():  # settings with an LBT on record race again at the bar
                if self.stopped:
                    break
                if self.challenge(point):
                    jumped = True
                    break
            while not jumped and not self.stopped and restarts < spec.restarts:
                point = next(iter(self.near_miss_pairs()), None) or self.far_point()
                if point is None:
                    break
                restarts += 1
                if self.challenge(point):
                    jumped = True
                    break
            if not jumped:
                break
        return sweeps, restarts, False

    def run(self) -> SearchResult:
        start_value = self.full(self.current)
        assert start_value is not None  # the start is always evaluated
        self.trajectory.append({"knobs": self.memo.knobs(self.current), "value": start_value})
        sweeps = restarts = 0
        while True:
            more_sweeps, more_restarts, sweep_capped = self.settle()
            sweeps, restarts = sweeps + more_sweeps, restarts + more_restarts
            if self.stopped or sweep_capped or not self.recheck():
                break
        return self.result(sweeps, restarts, sweep_capped)

    def result(self, sweeps: int, restarts: int, sweep_capped: bool) -> SearchResult:
        best = self.values[self.current]
        done = (self.stopped if self.stopped else
                f"sweep budget ({self.spec.max_sweeps}) spent while still moving" if sweep_capped else
                "stopped at a coordinate-wise optimum")
        screened = (f", {len(self.screens)} screened with one load run at the incumbent's LBT x "
                    f"{1 + self.spec.margin:g}" if self.probe is not None else "")
        runs = f"; {self.runs()} load runs" if self.probe is not None else ""
        rechecked = "".join(f"; the incumbent's LBT re-checked at {r['before']:g} qps: "
                            + ("held" if r["after"] >= r["before"] else f"lowered to {r['after']:g}")
                            for r in self.rechecks)
        note = (f"{len(self.evaluations)} full LBT searches{screened}; {done} after {sweeps} "
                f"sweep(s) and {restarts} off-axis challenger(s){rechecked}{runs}")
        if best == 0:
            note += "; no configuration raced meets the SLO (LBT 0): lower start_qps or loosen the SLO"
        return SearchResult(RacingCoordinateSearch.name, self.memo.knobs(self.current), best, self.evaluations,
                            self.trajectory, note, self.screens)
