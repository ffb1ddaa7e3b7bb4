"""Latency-bounded throughput (LBT): the highest offered query rate a knob setting sustains within the SLO.

Every compressed variant is profiled under DeepRecSys-style traffic (Gupta et al., ISCA 2020): Poisson arrivals
of queries of ~lognormal(5.1, 0.2) items, each split into sub-batches. The LBT is the highest offered rate
sustained while the p95 latency stays under a target (e.g. 25 ms for Wide&Deep), no more than
``max_error_rate`` of the queries fail, and the server keeps up (achieved >= ``min_achieved_ratio`` x offered).

A load run is an injected :data:`Measure`, so the logic is tested on closed-form latency models and the real
stage plugs in ``recforge.inference.loadgen``. :func:`latency_bounded_throughput` ramps up from ``start_qps``
(x ``ramp_factor`` per step) until the SLO breaks, then bisects between the last good and the first bad rate until
their relative gap is below ``tolerance``; every probed rate is kept (p95 against offered load, for plots).
:func:`confirm_lbt` re-measures the final rate; :class:`LBTEvaluator` is the ``evaluate(knobs) -> LBT`` a knob
search climbs.

The measured axis has no cap of its own: the ramp goes on until the SLO fails, bounded only by the apparatus' own
ceiling (``apparatus_ceiling_qps``: the load generator against a null target, ``apparatus_ceiling``), an explicit
``max_qps`` when a caller sets one, or the step budget. What stopped it is the result's ``limit``
(:data:`LBT_LIMITS`); every limit but ``slo`` makes the LBT a lower bound (``capped``), never a silent one.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.base import knob_key

STEAL_PAUSE_S = 2.0  # pause before re-measuring a rate taken under CPU steal
NEAR_MISS = 2.0  # a challenge whose p95 is within this many times the target is run a second time
BELOW_FIRST = 2 / 3  # a search below a failed rate starts at this fraction of it (then halves)
# what ended an LBT search's way up: a failing rate (the LBT is bracketed), the apparatus' ceiling, an explicit
# max_qps, or the step budget spent while ramping; all but "slo" leave the LBT a lower bound
LIMIT_SLO, LIMIT_APPARATUS, LIMIT_MAX_QPS, LIMIT_STEPS = "slo", "apparatus", "max_qps", "step_budget"
LBT_LIMITS = (LIMIT_SLO, LIMIT_APPARATUS, LIMIT_MAX_QPS, LIMIT_STEPS)


@dataclass(frozen=True)
class Measurement:
    """What one open-loop load run at one offered rate returns (latencies in ms, over all its queries)."""

    rate_qps: float  # offered rate
    p50_ms: float
    p95_ms: float
    p99_ms: float
    achieved_qps: float  # completed queries per second
    errors: int  # failed, dropped or timed-out queries
    queries: int  # queries issued
    cpu_steal_pct: float = math.nan  # CPU steal during the run (recforge.inference.loadgen.LoadResult.cpu_steal_pct)

    @property
    def error_rate(self) -> float:
        return self.errors / self.queries if self.queries > 0 else 1.0

    @classmethod
    def from_load(cls, result: Any, rate: float, window_s: float) -> Measurement:
        """The measurement of a ``recforge.inference.loadgen.LoadResult`` of ``window_s`` seconds of arrivals at
        ``rate``.

        Poisson noise: a short window issues fewer queries than rate x window about half the time, which the
        saturation rule (achieved >= ratio x offered) would read as falling behind. The achieved rate is scaled by
        offered / actually-issued, so that only the server's lag (completions stretching past the window) counts."""

        def ms(value: Any) -> float:
            return float(value) if value is not None and math.isfinite(value) else math.nan

        issued_qps = result.queries / window_s
        achieved = float(result.achieved_qps) * (rate / issued_qps if issued_qps > 0 else 1.0)
        return cls(rate_qps=rate, p50_ms=ms(result.p50_ms), p95_ms=ms(result.p95_ms), p99_ms=ms(result.p99_ms),
                   achieved_qps=achieved, errors=int(result.errors), queries=int(result.queries),
                   cpu_steal_pct=ms(getattr(result, "cpu_steal_pct", math.nan)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Measure = Callable[[float, dict], Measurement]
"""measure(offered_rate_qps, knobs) -> Measurement: one load run at that rate with those serving knobs."""


FiniteRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@typed_config
class LBTConfig:
    """SLO and search bounds of :func:`latency_bounded_throughput` (``profile.lbt:`` section of a run config)."""

    p95_target_ms: FiniteRate = 25.0  # DeepRecSys' tail-latency target of Wide&Deep
    start_qps: FiniteRate = 10.0  # first offered rate probed
    # an explicit bound on the ramp (None: none, the default): an LBT reaching it is reported as limited by max_qps
    max_qps: FiniteRate | None = None
    # the apparatus' own ceiling (qps its load generator sustains against a null target; None: unknown): the ramp
    # stops there and an LBT reaching it is reported as limited by the apparatus, a lower bound
    apparatus_ceiling_qps: FiniteRate | None = None
    ramp_factor: Annotated[float, Field(gt=1, le=16)] = 2.0  # the ramp multiplies the rate by this per step
    max_error_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0  # fraction of queries allowed to fail
    min_achieved_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9  # achieved < ratio x offered is saturation
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.05  # bisection stops when (bad - good) / bad < tolerance
    max_steps: Annotated[int, Field(ge=1)] = 20  # rates probed at most (each probe is `repeats` load runs)
    repeats: Annotated[int, Field(ge=1)] = 1  # load runs per rate; the verdict uses their median percentiles
    confirm: Annotated[int, Field(ge=0, le=100)] = 0  # extra load runs at the final LBT rate (see confirm_lbt)
    # a rate whose runs saw more CPU steal than this (%) is measured again, at most steal_retries times, and the
    # least-stolen attempt decides: on a shared VM the host's bursts stall every thread, the verdict would be
    # about the host
    max_cpu_steal_pct: Annotated[float, Field(gt=0, le=100)] = 8.0
    steal_retries: Annotated[int, Field(ge=0, le=100)] = 2

    def __post_init__(self) -> None:
        if self.max_qps is not None and not self.start_qps <= self.max_qps:
            raise ConfigError(f"LBTConfig.max_qps must be >= start_qps ({self.start_qps}), got {self.max_qps}")
        if self.apparatus_ceiling_qps is not None and not self.start_qps <= self.apparatus_ceiling_qps:
            raise ConfigError(f"LBTConfig.start_qps {self.start_qps} is above the apparatus ceiling "
                              f"apparatus_ceiling_qps={self.apparatus_ceiling_qps}: the load generator cannot offer it")

    @property
    def top_qps(self) -> float | None:
        """The highest rate the ramp may probe: the lower of ``max_qps`` and the apparatus ceiling (None: no bound)."""
        bounds = [b for b in (self.max_qps, self.apparatus_ceiling_qps) if b is not None]
        return min(bounds) if bounds else None

    def top_limit(self) -> str:
        """The limit reaching :attr:`top_qps` means: the apparatus when its ceiling is the lower bound."""
        if self.apparatus_ceiling_qps is not None and (self.max_qps is None or
                                                        self.apparatus_ceiling_qps <= self.max_qps):
            return LIMIT_APPARATUS
        return LIMIT_MAX_QPS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LBTConfig:
        """Build from a plain dict; unknown keys, wrong types and bad values raise ConfigError."""
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LBTPoint:
    """One probed offered rate: the (median) measurement, its SLO verdict, and the raw runs behind it."""

    rate_qps: float
    measurement: Measurement
    passed: bool
    reason: str  # why it failed ("" when it passed)
    runs: tuple[Measurement, ...]
    discarded: tuple[Measurement, ...] = ()  # failed runs taken under CPU steal above the limit, measured again


@dataclass
class LBTResult:
    """Outcome of :func:`latency_bounded_throughput` for one knob setting."""

    lbt_qps: float  # highest probed rate meeting the SLO; 0 when even start_qps breaks it
    knobs: dict
    config: LBTConfig
    points: list[LBTPoint]  # in probing order
    limit: str = LIMIT_SLO  # what ended the way up (LBT_LIMITS); all but "slo" make lbt_qps a lower bound
    converged: bool = False  # the bracket [last good, first bad] is within tolerance (or capped, or 0)
    note: str = ""

    @property
    def capped(self) -> bool:
        """Whether the LBT is a lower bound: no failing rate above it was found (apparatus ceiling, max_qps or the
        step budget ended the ramp)."""
        return self.limit != LIMIT_SLO

    @property
    def steps(self) -> int:
        """Rates probed (each one ``config.repeats`` load runs)."""
        return len(self.points)

    @property
    def measurements(self) -> list[Measurement]:
        """The (median) measurement of every probed rate, in probing order."""
        return [p.measurement for p in self.points]

    @property
    def at_lbt(self) -> Measurement | None:
        """The measurement at the LBT rate (None when the LBT is 0)."""
        return next((p.measurement for p in self.points if p.passed and p.rate_qps == self.lbt_qps), None)

    def curve(self) -> list[dict[str, Any]]:
        """The probed points sorted by offered rate, as rows of the profile's ``curve`` (a percentile that is not
        finite, e.g. no query completed, becomes None: JSON has no infinity)."""

        def ms(value: float) -> float | None:
            return float(value) if math.isfinite(value) else None

        rows = []
        for p in sorted(self.points, key=lambda p: p.rate_qps):
            row = {"offered_qps": p.rate_qps, "achieved_qps": p.measurement.achieved_qps,
                   "p50_ms": ms(p.measurement.p50_ms), "p95_ms": ms(p.measurement.p95_ms),
                   "p99_ms": ms(p.measurement.p99_ms), "errors": p.measurement.errors,
                   "queries": p.measurement.queries, "meets_slo": p.passed}
            if math.isfinite(p.measurement.cpu_steal_pct):
                row["cpu_steal_pct"] = round(p.measurement.cpu_steal_pct, 2)
            if p.discarded:
                row["discarded_runs"] = len(p.discarded)
            rows.append(row)
        return rows


def slo_verdict(measurement: Measurement, offered_qps: float, config: LBTConfig) -> tuple[bool, str]:
    """(passed, reason): the p95, error-rate and saturation rules of the SLO at one offered rate."""
    m = measurement
    reasons = []
    if m.queries <= 0:
        reasons.append("no queries were issued")
    elif m.error_rate > config.max_error_rate:
        reasons.append(f"error rate {m.error_rate:.4g} > {config.max_error_rate:g} ({m.errors}/{m.queries})")
    if not m.p95_ms <= config.p95_target_ms:  # NaN fails
        reasons.append(f"p95 {m.p95_ms:.4g} ms > target {config.p95_target_ms:g} ms")
    if not m.achieved_qps >= config.min_achieved_ratio * offered_qps:
        reasons.append(
            f"saturated: achieved {m.achieved_qps:.4g} qps < {config.min_achieved_ratio:g} x offered {offered_qps:.4g}"
        )
    return not reasons, "; ".join(reasons)


def _median_measurement(rate: float, runs: Sequence[Measurement]) -> Measurement:
    if len(runs) == 1:
        return runs[0]
    return Measurement(
        rate_qps=rate,
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p95_ms=statistics.median(r.p95_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        achieved_qps=statistics.median(r.achieved_qps for r in runs),
        errors=sum(r.errors for r in runs),
        queries=sum(r.queries for r in runs),
        cpu_steal_pct=max((r.cpu_steal_pct for r in runs), default=math.nan),
    )


def _steal(runs: Sequence[Measurement]) -> float:
    """The largest known CPU steal of the runs (0 when unknown)."""
    return max((r.cpu_steal_pct for r in runs if math.isfinite(r.cpu_steal_pct)), default=0.0)


def _stolen(runs: Sequence[Measurement], config: LBTConfig) -> bool:
    return _steal(runs) > config.max_cpu_steal_pct


def latency_bounded_throughput(
    measure: Measure,
    knobs: Mapping[str, Any] | None = None,
    *,
    p95_target_ms: float,
    max_error_rate: float = 0.0,
    start_qps: float,
    max_qps: float | None = None,
    apparatus_ceiling_qps: float | None = None,
    ramp_factor: float = 2.0,
    tolerance: float = 0.05,
    max_steps: int = 20,
    repeats: int = 1,
    min_achieved_ratio: float = 0.9,
    confirm: int = 0,
    max_cpu_steal_pct: float = 8.0,
    steal_retries: int = 2,
) -> LBTResult:
    """The highest offered rate whose p95 <= ``p95_target_ms``, error rate <= ``max_error_rate`` and achieved
    rate >= ``min_achieved_ratio`` x offered, for the serving ``knobs``.

    Ramps up from ``start_qps`` (x ``ramp_factor`` per step) until a rate breaks the SLO, then bisects between the
    last good and the first bad rate until ``(bad - good) / bad < tolerance``; for a latency that grows with load
    the returned rate is then within ``tolerance`` below the true LBT. The ramp stops short of a failure only at
    the apparatus ceiling (``apparatus_ceiling_qps``), an explicit ``max_qps`` or the step budget: the result's
    ``limit`` says which, and the LBT is then a lower bound (``capped``). At most ``max_steps`` rates are probed,
    each with ``repeats`` load runs whose median percentiles decide. The edge cases come back with a ``note``:
    start_qps already failing gives LBT 0; a step budget spent before convergence gives the last good rate with
    ``converged`` False.
    With ``confirm`` > 0 the final rate is re-measured before it stands (:func:`confirm_lbt`). A rate measured
    under more than ``max_cpu_steal_pct`` % CPU steal is measured again (``steal_retries`` times) and the
    least-stolen attempt decides.
    Bad bounds raise ConfigError.
    """
    config = LBTConfig(
        p95_target_ms=p95_target_ms, start_qps=start_qps, max_qps=max_qps, apparatus_ceiling_qps=apparatus_ceiling_qps,
        ramp_factor=ramp_factor, max_error_rate=max_error_rate,
        min_achieved_ratio=min_achieved_ratio, tolerance=tolerance, max_steps=max_steps, repeats=repeats,
        confirm=confirm, max_cpu_steal_pct=max_cpu_steal_pct, steal_retries=steal_retries,
    )
    return _LBTSearch(measure, dict(knobs or {}), config).run()


def next_ramp_rate(good: float, config: LBTConfig) -> float:
    """The ramp's next rate after the passing rate ``good``: ``ramp_factor`` x good, but no higher than the
    apparatus ceiling or max_qps (so that the top itself is probed once)."""
    rate = good * config.ramp_factor
    top = config.top_qps
    return min(rate, top) if top is not None else rate


def ceiling_note(config: LBTConfig, lbt: float) -> str:
    """The note of an LBT that reached the top of the ramp: which bound it was, and that the LBT is at least that."""
    if config.top_limit() == LIMIT_APPARATUS:
        return (f"the apparatus ceiling ({config.apparatus_ceiling_qps:g} qps: the load generator against a null "
                f"target) still meets the SLO: the LBT is at least {lbt:g} qps, a lower bound set by the apparatus")
    return f"max_qps {config.max_qps:g} still meets the SLO: the LBT is at least that; raise max_qps to find it"


def lbt_from_config(measure: Measure, knobs: Mapping[str, Any] | None, config: LBTConfig,
                    first_qps: float | None = None) -> LBTResult:
    """:func:`latency_bounded_throughput` with an :class:`LBTConfig`; the ramp starts at ``first_qps`` when given
    (a guess above ``start_qps``: when it fails, the LBT is searched below it, down to ``start_qps``)."""
    return _LBTSearch(measure, dict(knobs or {}), config).run(first_qps)


def _runs(measure: Measure, rate: float, knobs: dict, n: int) -> tuple[Measurement, ...]:
    runs = tuple(measure(rate, dict(knobs)) for _ in range(n))
    for run in runs:
        if not isinstance(run, Measurement):
            raise TypeError(f"measure({rate}, {knobs}) returned {type(run).__name__}, not a Measurement")
    return runs


def _point(rate: float, runs: tuple[Measurement, ...], config: LBTConfig) -> LBTPoint:
    median = _median_measurement(rate, runs)
    passed, reason = slo_verdict(median, rate, config)
    return LBTPoint(rate, median, passed, reason, runs)


def confirm_lbt(measure: Measure, result: LBTResult, runs: int, floor_qps: float | None = None) -> LBTResult:
    """``result`` with its LBT rate re-measured ``runs`` more times: the rate stands when the median of all its
    runs meets the SLO. Otherwise it becomes a failed rate, the bisection resumes between the next lower passing
    rate and it (none probed yet: the LBT is searched below it, down to ``floor_qps``, default the result's own
    ``start_qps``; a search that started at a rate a challenger sustained has no lower points), and the new final
    rate is confirmed the same way (down to LBT 0).

    One short load run can pass by luck (a quiet second on a shared machine). The search trusts every verdict, so
    a lucky pass near the top is the likeliest way to overstate an LBT, and the cheapest place to spend extra
    runs: the rest of the curve keeps one run per rate."""
    if runs < 1:
        return result
    floor = min(result.config.start_qps, floor_qps) if floor_qps is not None else result.config.start_qps
    config = dataclasses.replace(result.config, confirm=runs, start_qps=floor)
    return _LBTSearch(measure, result.knobs, config, list(result.points)).confirm(result)


def near_miss(measurement: Measurement, config: LBTConfig) -> bool:
    """Whether a run that failed the SLO missed it narrowly (p95 within ``NEAR_MISS`` x the target, errors within
    the SLO): near an LBT a setting a few percent better fails one short run about as often as it passes, so such a
    run is measured once more and the second decides."""
    return measurement.error_rate <= config.max_error_rate and measurement.p95_ms <= NEAR_MISS * config.p95_target_ms


def challenge_rate(measure: Measure, knobs: Mapping[str, Any] | None, config: LBTConfig,
                   rate_qps: float) -> LBTResult | None:
    """Whether ``knobs`` sustain ``rate_qps`` (a rival's LBT), and if not, the LBT below it.

    One load run at ``rate_qps`` (at most the apparatus' top rate), and a second one when the first missed narrowly
    (p95 within ``NEAR_MISS`` x the target, errors within the SLO): the second decides. None when it meets the SLO:
    the setting may beat the rival and deserves a search of its own. Otherwise the failed rate tops the bracket
    (its run stays on the curve): the search steps down from ``BELOW_FIRST`` of it (halving while failing, to
    ``start_qps`` at the lowest: below that the LBT is 0) and bisects up to the failed rate, in at most
    ``max_steps`` probed rates (the challenge included); ``confirm`` is left to the caller (:func:`confirm_lbt`).
    """
    search = _LBTSearch(measure, dict(knobs or {}), config)
    top = config.top_qps
    rate = min(float(rate_qps), top) if top is not None else float(rate_qps)
    point = search.probe(rate)
    if not point.passed and near_miss(point.measurement, config):
        search.points[-1] = point = search.runs_at(rate, config.repeats)
    if point.passed:
        return None
    return search.below(rate)


class _LBTSearch:
    """The state of one LBT search: ramp up by doubling, bisect, confirm the final rate (see
    :func:`latency_bounded_throughput`); ``points`` holds every probed rate in probing order."""

    def __init__(self, measure: Measure, knobs: dict, config: LBTConfig, points: list[LBTPoint] | None = None):
        self.measure, self.knobs, self.config = measure, knobs, config
        self.points: list[LBTPoint] = points if points is not None else []

    def probe(self, rate: float) -> LBTPoint:
        point = self.runs_at(rate, self.config.repeats)
        self.points.append(point)
        return point

    def runs_at(self, rate: float, n: int, earlier: LBTPoint | None = None) -> LBTPoint:
        """``n`` runs at ``rate`` (with ``earlier``'s runs, when given) judged together. Runs taken under CPU steal
        above the limit are measured again, at most ``steal_retries`` times after a pause (steal comes in bursts),
        and the attempt with the least steal is judged, whatever the outcomes: retrying only failures would keep
        the lucky passes and so bias the LBT upwards. The other attempts are kept on the point as discarded."""
        base = earlier.runs if earlier is not None else ()
        attempts = [_runs(self.measure, rate, self.knobs, n)]
        for _ in range(self.config.steal_retries):
            if not _stolen(attempts[-1], self.config):
                break
            time.sleep(STEAL_PAUSE_S)
            attempts.append(_runs(self.measure, rate, self.knobs, n))
        best = min(range(len(attempts)), key=lambda i: (_steal(attempts[i]), i))
        discarded = (earlier.discarded if earlier is not None else ()) + \
            tuple(run for i, runs in enumerate(attempts) if i != best for run in runs)
        point = _point(rate, base + attempts[best], self.config)
        return dataclasses.replace(point, discarded=discarded) if discarded else point

    def result(self, lbt: float, *, limit: str = LIMIT_SLO, converged: bool = True, note: str = "") -> LBTResult:
        return LBTResult(lbt, self.knobs, self.config, self.points, limit=limit, converged=converged, note=note)

    def run(self, first_qps: float | None = None) -> LBTResult:
        result = self.ramp(first_qps)
        return self.confirm(result) if self.config.confirm else result

    def ramp(self, first_qps: float | None = None) -> LBTResult:
        """Up from ``first_qps`` (default ``start_qps``; a first rate above ``start_qps`` that fails is searched
        below, :meth:`below`) until the SLO breaks, then bisect."""
        config = self.config
        good, top = max(first_qps or config.start_qps, config.start_qps), config.top_qps
        good = min(good, top) if top is not None else good
        first = self.probe(good)
        if not first.passed and good > config.start_qps:
            return self.below(good)
        if not first.passed:
            return self.result(0.0, note=f"even start_qps {config.start_qps:g} breaks the SLO ({first.reason}): the "
                                         "LBT is 0; lower start_qps to look below it")
        while True:  # up until the SLO breaks; only the apparatus ceiling, max_qps or the step budget stop it short
            if top is not None and good >= top:
                return self.result(good, limit=config.top_limit(), note=ceiling_note(config, good))
            if len(self.points) >= config.max_steps:
                return self.result(good, limit=LIMIT_STEPS, converged=False,
                                   note=f"step budget ({config.max_steps}) spent while ramping up: the LBT is at "
                                        f"least {good:g} qps (a lower bound); raise max_steps or start_qps")
            rate = next_ramp_rate(good, config)
            if not self.probe(rate).passed:
                return self.bisect(good, rate)
            good = rate

    def below(self, bad: float, budget: int | None = None) -> LBTResult:
        """The LBT under ``bad``, a rate already found failing: step down from ``BELOW_FIRST`` of it, halving while
        rates fail (0 below ``start_qps``), then bisect up to the lowest failing rate (``budget``: steps allowed in
        all, default max_steps). A rate just failed is most often a little above the LBT (a sibling variant's LBT,
        a lucky pass re-measured), so the first step down is short."""
        config = self.config
        budget = config.max_steps if budget is None else budget
        rate = max(bad * BELOW_FIRST, config.start_qps)
        while True:
            if len(self.points) >= budget:
                return self.result(0.0, converged=False,
                                   note=f"step budget ({budget}) spent stepping down from {bad:g} qps: "
                                        f"no rate at or above {rate:g} qps met the SLO")
            if self.probe(rate).passed:
                return self.bisect(rate, min(p.rate_qps for p in self.points if not p.passed and p.rate_qps > rate),
                                   budget)
            if rate <= config.start_qps:
                return self.result(0.0, note=f"even start_qps {config.start_qps:g} breaks the SLO: the LBT is 0")
            rate = max(rate / 2, config.start_qps)

    def bisect(self, good: float, bad: float, budget: int | None = None) -> LBTResult:
        """Bisect between a passing and a failing rate until their gap is within tolerance (``budget``: steps
        allowed in all, default max_steps)."""
        budget = self.config.max_steps if budget is None else budget
        while (bad - good) / bad >= self.config.tolerance:
            if len(self.points) >= budget:
                return self.result(good, converged=False,
                                   note=f"step budget ({budget}) spent before convergence: the LBT lies in "
                                        f"[{good:g}, {bad:g}) qps")
            mid = (good + bad) / 2
            if self.probe(mid).passed:
                good = mid
            else:
                bad = mid
        return self.result(good)

    def confirm(self, result: LBTResult) -> LBTResult:
        runs, lbt = self.config.confirm, result.lbt_qps
        budget = len(self.points) + self.config.max_steps  # the resumed bisections get one more step budget
        dropped: list[float] = []
        while lbt > 0:
            index = max(i for i, p in enumerate(self.points) if p.rate_qps == lbt)
            point = self.runs_at(lbt, runs, earlier=self.points[index])
            self.points[index] = point
            if point.passed:
                break
            dropped.append(lbt)
            good = max((p.rate_qps for p in self.points if p.passed and p.rate_qps < lbt), default=0.0)
            if good > 0:
                result = self.bisect(good, lbt, budget)
            elif lbt > self.config.start_qps:  # nothing passed below it yet (a search that started up here)
                result = self.below(lbt, budget)
            else:
                lbt = 0.0
                break
            lbt = result.lbt_qps
        held = f"LBT confirmed by {runs} more run(s) at {lbt:g} qps (median verdict)" if lbt > 0 else \
            f"no passing rate held up when re-measured ({runs} more run(s) each): the LBT is 0"
        if dropped:
            held = f"{', '.join(f'{r:g}' for r in dropped)} qps did not hold up when re-measured; {held}"
        limit = result.limit if not dropped else LIMIT_SLO  # a rate that did not hold up bounds the LBT from above
        return LBTResult(lbt, self.knobs, self.config, self.points, limit=limit, converged=result.converged,
                         note="; ".join(n for n in (result.note, held) if n))


WARM_START = 0.5  # a warm-started LBT search starts at this fraction of the best LBT evaluated so far


class LBTEvaluator:
    """``evaluate(knobs) -> LBT (qps)`` for the knob searches: runs :func:`latency_bounded_throughput` with one
    :class:`LBTConfig` and keeps every knob setting's :class:`LBTResult` (its curve goes into the profile).

    With ``warm_start``, every search after the first starts at ``WARM_START`` x the best LBT found so far instead
    of at ``start_qps`` (a neighbouring setting's LBT is rarely less than half of it, and one that is gets searched
    below): the ramp from ``start_qps`` to a few thousand qps is paid once per knob search, not once per setting."""

    def __init__(self, measure: Measure, config: LBTConfig | None = None, *, warm_start: bool = False,
                 **lbt_kwargs: Any):
        if config is not None and lbt_kwargs:
            raise ConfigError("LBTEvaluator: pass either config or keyword arguments, not both")
        self.measure = measure
        self.config = config if config is not None else LBTConfig(**lbt_kwargs)
        self.warm_start = warm_start
        self.results: dict[str, LBTResult] = {}

    def __call__(self, knobs: Mapping[str, Any]) -> float:
        key = knob_key(knobs)
        if key not in self.results:
            best = max((r.lbt_qps for r in self.results.values()), default=0.0)
            first = WARM_START * best if self.warm_start and best > 0 else None
            self.results[key] = lbt_from_config(self.measure, knobs, self.config, first)
        return self.results[key].lbt_qps

    def result_for(self, knobs: Mapping[str, Any]) -> LBTResult:
        try:
            return self.results[knob_key(knobs)]
        except KeyError:
            raise ConfigError(f"LBTEvaluator: knobs {dict(knobs)} were never evaluated") from None


