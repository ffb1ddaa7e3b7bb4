"""Search logic of the profiling stage: latency-bounded throughput and serving-knob search (measuring is injected).

Every compressed variant is profiled on every hardware target under DeepRecSys-style traffic (Gupta et al.,
ISCA 2020): Poisson arrivals of queries of ~lognormal(5.1, 0.2) items, each query split into sub-batches.
The figure of merit is the *latency-bounded throughput* (LBT): the highest offered query rate that is sustained
while the p95 latency stays under a target (e.g. 25 ms for Wide&Deep), no more than ``max_error_rate`` of the
queries fail, and the server keeps up (achieved rate >= ``min_achieved_ratio`` x offered rate).

This module only *searches*; a load run is an injected function, so the logic is tested on closed-form
latency models and the real stage plugs in ``recforge.inference.loadgen``:

* :func:`latency_bounded_throughput` searches the offered load for one knob setting: doubling from
  ``start_qps`` until the SLO breaks, then bisection between the last good and the first bad rate until their
  relative gap is below ``tolerance``. Every probed rate is kept (p95 against offered load, for plots).
* :class:`HillClimb` (DeepRecSched: climb ordered discrete axes such as the sub-batch size and the GPU
  offload threshold to a local optimum) and :class:`GridSearch` (exhaustive, for small spaces and validation)
  search the knobs behind the one :class:`SearchStrategy` interface; :class:`LBTEvaluator` turns a
  ``Measure`` into the ``evaluate(knobs) -> LBT`` function they climb, keeping each knob setting's curve.
* :func:`deeprecsched_axes` and :func:`triton_axes` give the usual ordered axes.
* :func:`build_profile` assembles the per-(model, variant, target) profile document described by
  ``recforge/contracts/profile_schema.json``; :func:`validate_profile` checks one (ConfigError naming the JSON path).

Example::

    evaluate = LBTEvaluator(measure, p95_target_ms=25, start_qps=50, max_qps=20_000)
    result = HillClimb(deeprecsched_axes(), start={"sub_batch": 64}).search(evaluate)
    doc = build_profile(..., search=result, lbt=evaluate.result_for(result.best_knobs), ...)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import math
import numbers
import socket
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from recforge.contracts.profile import PROFILE_SCHEMA_VERSION, json_ready, mean_items_per_query, validate_profile
from recforge.core.config import config_from_dict, git_commit
from recforge.core.errors import ConfigError

DEFAULT_SUB_BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_QUEUE_DELAYS_US = (0, 50, 100, 200, 500, 1000, 2000, 5000)
MAX_TRITON_BATCH = 1 << 16
STEAL_PAUSE_S = 2.0  # pause before re-measuring a rate taken under CPU steal


# --------------------------------------------------------------------------------------------------------------
# One load run


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
        """The measurement of a ``recforge.inference.loadgen.LoadResult`` of ``window_s`` seconds of arrivals at ``rate``.

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


# --------------------------------------------------------------------------------------------------------------
# Latency-bounded throughput


@dataclass(frozen=True)
class LBTConfig:
    """SLO and search bounds of :func:`latency_bounded_throughput` (``profile.lbt:`` section of a run config)."""

    p95_target_ms: float = 25.0  # DeepRecSys' tail-latency target of Wide&Deep
    start_qps: float = 10.0  # first offered rate probed
    max_qps: float = 10_000.0  # the ramp stops here: a variant passing at max_qps reports LBT = max_qps (capped)
    max_error_rate: float = 0.0  # fraction of queries allowed to fail
    min_achieved_ratio: float = 0.9  # achieved < ratio x offered is saturation, a failure
    tolerance: float = 0.05  # bisection stops when (first bad - last good) / first bad < tolerance
    max_steps: int = 20  # rates probed at most (each probe is `repeats` load runs)
    repeats: int = 1  # load runs per rate; the verdict uses their median percentiles (noise robustness)
    confirm: int = 0  # extra load runs at the final LBT rate before it stands (see confirm_lbt)
    # a rate whose runs saw more CPU steal than this (%) is measured again, at most steal_retries times, and the
    # least-stolen attempt decides: on a shared VM the host's bursts stall every thread, the verdict would be
    # about the host
    max_cpu_steal_pct: float = 8.0
    steal_retries: int = 2

    def __post_init__(self) -> None:
        # written as `not (ok)` so that NaN fails every check
        if not 0 < self.p95_target_ms < math.inf:
            raise ConfigError(f"LBTConfig.p95_target_ms must be a finite number > 0, got {self.p95_target_ms}")
        if not 0 < self.start_qps < math.inf:
            raise ConfigError(f"LBTConfig.start_qps must be a finite number > 0, got {self.start_qps}")
        if not self.start_qps <= self.max_qps < math.inf:
            raise ConfigError(
                f"LBTConfig.max_qps must be finite and >= start_qps ({self.start_qps}), got {self.max_qps}"
            )
        if not 0 <= self.max_error_rate < 1:
            raise ConfigError(f"LBTConfig.max_error_rate must be in [0, 1), got {self.max_error_rate}")
        if not 0 < self.min_achieved_ratio <= 1:
            raise ConfigError(f"LBTConfig.min_achieved_ratio must be in (0, 1], got {self.min_achieved_ratio}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"LBTConfig.tolerance must be in (0, 1), got {self.tolerance}")
        for key in ("max_steps", "repeats"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"LBTConfig.{key} must be an integer >= 1, got {value!r}")
        for key in ("confirm", "steal_retries"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                raise ConfigError(f"LBTConfig.{key} must be an integer in [0, 100], got {value!r}")
        if not 0 < self.max_cpu_steal_pct <= 100:
            raise ConfigError(f"LBTConfig.max_cpu_steal_pct must be in (0, 100], got {self.max_cpu_steal_pct}")

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
    capped: bool = False  # max_qps still met the SLO: the true LBT is at least lbt_qps
    converged: bool = False  # the bracket [last good, first bad] is within tolerance (or capped, or 0)
    note: str = ""

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
    max_qps: float,
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

    Ramps up by doubling from ``start_qps`` (capped at ``max_qps``) until a rate breaks the SLO, then bisects
    between the last good and the first bad rate until ``(bad - good) / bad < tolerance``; for a latency that
    grows with load the returned rate is then within ``tolerance`` below the true LBT. At most ``max_steps``
    rates are probed, each with ``repeats`` load runs whose median percentiles decide. The edge cases come
    back with a ``note``: start_qps already failing gives LBT 0; max_qps still passing gives LBT = max_qps with
    ``capped``; a step budget spent before convergence gives the last good rate with ``converged`` False.
    With ``confirm`` > 0 the final rate is re-measured before it stands (:func:`confirm_lbt`). A rate measured
    under more than ``max_cpu_steal_pct`` % CPU steal is measured again (``steal_retries`` times) and the
    least-stolen attempt decides.
    Bad bounds raise ConfigError.
    """
    config = LBTConfig(
        p95_target_ms=p95_target_ms, start_qps=start_qps, max_qps=max_qps, max_error_rate=max_error_rate,
        min_achieved_ratio=min_achieved_ratio, tolerance=tolerance, max_steps=max_steps, repeats=repeats,
        confirm=confirm, max_cpu_steal_pct=max_cpu_steal_pct, steal_retries=steal_retries,
    )
    return _search_lbt(measure, dict(knobs or {}), config)


def lbt_from_config(measure: Measure, knobs: Mapping[str, Any] | None, config: LBTConfig) -> LBTResult:
    """:func:`latency_bounded_throughput` with an :class:`LBTConfig`."""
    return _search_lbt(measure, dict(knobs or {}), config)


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


def confirm_lbt(measure: Measure, result: LBTResult, runs: int) -> LBTResult:
    """``result`` with its LBT rate re-measured ``runs`` more times: the rate stands when the median of all its
    runs meets the SLO. Otherwise it becomes a failed rate, the bisection resumes between the next lower passing
    rate and it, and the new final rate is confirmed the same way (down to LBT 0).

    One short load run can pass by luck (a quiet second on a shared machine). The search trusts every verdict, so
    a lucky pass near the top is the likeliest way to overstate an LBT, and the cheapest place to spend extra
    runs: the rest of the curve keeps one run per rate."""
    if runs < 1:
        return result
    search = _LBTSearch(measure, result.knobs, dataclasses.replace(result.config, confirm=runs), list(result.points))
    return search.confirm(result)


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

    def result(self, lbt: float, *, capped: bool = False, converged: bool = True, note: str = "") -> LBTResult:
        return LBTResult(lbt, self.knobs, self.config, self.points, capped=capped, converged=converged, note=note)

    def run(self) -> LBTResult:
        result = self.ramp()
        return self.confirm(result) if self.config.confirm else result

    def ramp(self) -> LBTResult:
        config = self.config
        first = self.probe(config.start_qps)
        if not first.passed:
            return self.result(0.0, note=f"even start_qps {config.start_qps:g} breaks the SLO ({first.reason}): the "
                                         "LBT is 0; lower start_qps to look below it")
        good = config.start_qps
        while True:  # double until the SLO breaks or max_qps passes
            if good >= config.max_qps:
                return self.result(good, capped=True, note=f"max_qps {config.max_qps:g} still meets the SLO: the "
                                                            "LBT is at least that; raise max_qps to find it")
            if len(self.points) >= config.max_steps:
                return self.result(good, converged=False, note=f"step budget ({config.max_steps}) spent while "
                                                               f"ramping up: the LBT is at least {good:g} qps")
            rate = min(2 * good, config.max_qps)
            if not self.probe(rate).passed:
                return self.bisect(good, rate)
            good = rate

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
            if good <= 0:
                lbt = 0.0
                break
            result = self.bisect(good, lbt, budget)
            lbt = result.lbt_qps
        held = f"LBT confirmed by {runs} more run(s) at {lbt:g} qps (median verdict)" if lbt > 0 else \
            f"no passing rate held up when re-measured ({runs} more run(s) each): the LBT is 0"
        if dropped:
            held = f"{', '.join(f'{r:g}' for r in dropped)} qps did not hold up when re-measured; {held}"
        return LBTResult(lbt, self.knobs, self.config, self.points, capped=result.capped and not dropped,
                         converged=result.converged, note="; ".join(n for n in (result.note, held) if n))


def _search_lbt(measure: Measure, knobs: dict, config: LBTConfig) -> LBTResult:
    return _LBTSearch(measure, knobs, config).run()


class LBTEvaluator:
    """``evaluate(knobs) -> LBT (qps)`` for the knob searches: runs :func:`latency_bounded_throughput` with one
    :class:`LBTConfig` and keeps every knob setting's :class:`LBTResult` (its curve goes into the profile)."""

    def __init__(self, measure: Measure, config: LBTConfig | None = None, **lbt_kwargs: Any):
        if config is not None and lbt_kwargs:
            raise ConfigError("LBTEvaluator: pass either config or keyword arguments, not both")
        self.measure = measure
        self.config = config if config is not None else LBTConfig(**lbt_kwargs)
        self.results: dict[str, LBTResult] = {}

    def __call__(self, knobs: Mapping[str, Any]) -> float:
        key = knob_key(knobs)
        if key not in self.results:
            self.results[key] = lbt_from_config(self.measure, knobs, self.config)
        return self.results[key].lbt_qps

    def result_for(self, knobs: Mapping[str, Any]) -> LBTResult:
        try:
            return self.results[knob_key(knobs)]
        except KeyError:
            raise ConfigError(f"LBTEvaluator: knobs {dict(knobs)} were never evaluated") from None


def knob_key(knobs: Mapping[str, Any]) -> str:
    """A canonical, hashable key of a knob setting (lists and tuples alike; key order does not matter)."""
    return json.dumps(json_ready(dict(knobs)), sort_keys=True)


# --------------------------------------------------------------------------------------------------------------
# Knob search


Evaluate = Callable[[dict], float]


@dataclass
class SearchResult:
    """Outcome of a :class:`SearchStrategy`: the best knobs, every distinct evaluation, the path taken."""

    strategy: str
    best_knobs: dict
    best_value: float
    evaluations: list[dict] = field(default_factory=list)  # [{"knobs": ..., "value": ...}] in evaluation order
    trajectory: list[dict] = field(default_factory=list)  # [{"knobs": ..., "value": ...}]: the points moved to
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


@runtime_checkable
class SearchStrategy(Protocol):
    """A search over serving knobs; ``evaluate(knobs)`` returns the latency-bounded throughput (higher is
    better). Like Triton model_analyzer's config generators, strategies know the space, not the measuring."""

    def search(self, evaluate: Evaluate) -> SearchResult: ...


def check_axes(axes: Mapping[str, Sequence[Any]]) -> dict[str, tuple]:
    """The axes as {name: tuple of values}; ConfigError unless each is a non-empty sequence of distinct values."""
    if not isinstance(axes, Mapping) or not axes:
        raise ConfigError(f"axes must be a non-empty mapping of knob name -> ordered values, got {axes!r}")
    out = {}
    for name, values in axes.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"axis names must be non-empty strings, got {name!r}")
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"axis {name!r} must be a non-empty list of values, got {values!r}")
        keys = [knob_key({"v": v}) for v in values]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"axis {name!r} has repeated values: {list(values)}")
        out[name] = tuple(values)
    return out


class _Memo:
    """evaluate() once per distinct point; the log of evaluations in order."""

    def __init__(self, evaluate: Evaluate, axes: dict[str, tuple], fixed: dict):
        self.evaluate, self.axes, self.fixed = evaluate, axes, fixed
        self.values: dict[tuple[int, ...], float] = {}
        self.log: list[dict] = []

    def knobs(self, point: tuple[int, ...]) -> dict:
        knobs = dict(self.fixed)
        knobs.update({name: values[i] for (name, values), i in zip(self.axes.items(), point, strict=True)})
        return knobs

    def __call__(self, point: tuple[int, ...]) -> float:
        if point not in self.values:
            knobs = self.knobs(point)
            value = self.evaluate(dict(knobs))
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"evaluate({knobs}) returned {value!r}; it must return a finite number")
            self.values[point] = float(value)
            self.log.append({"knobs": knobs, "value": float(value)})
        return self.values[point]

    def entry(self, point: tuple[int, ...]) -> dict:
        return {"knobs": self.knobs(point), "value": self.values[point]}


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
        self.fixed = dict(fixed or {})
        overlap = sorted(set(self.fixed) & set(self.axes))
        if overlap:
            raise ConfigError(f"HillClimb: knobs {overlap} are both fixed and searched")
        start = dict(start or {})
        unknown = sorted(set(start) - set(self.axes))
        if unknown:
            raise ConfigError(f"HillClimb: start has knobs {unknown} that are not axes {sorted(self.axes)}")
        point = []
        for name, values in self.axes.items():
            if name not in start:
                point.append(0)
                continue
            keys = [knob_key({"v": v}) for v in values]
            try:
                point.append(keys.index(knob_key({"v": start[name]})))
            except ValueError:
                raise ConfigError(
                    f"HillClimb: start {name}={start[name]!r} is not on its axis {list(values)}"
                ) from None
        self.start = tuple(point)
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
        memo = _Memo(evaluate, self.axes, self.fixed)
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


class GridSearch:
    """Every combination of the axes (for small spaces, and to validate :class:`HillClimb`); the first best wins
    ties. The trajectory is the sequence of running bests."""

    name = "grid"

    def __init__(self, axes: Mapping[str, Sequence[Any]], *, fixed: Mapping[str, Any] | None = None):
        self.axes = check_axes(axes)
        self.fixed = dict(fixed or {})
        overlap = sorted(set(self.fixed) & set(self.axes))
        if overlap:
            raise ConfigError(f"GridSearch: knobs {overlap} are both fixed and searched")

    def search(self, evaluate: Evaluate) -> SearchResult:
        memo = _Memo(evaluate, self.axes, self.fixed)
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


def strategy_from_dict(d: Mapping[str, Any]) -> SearchStrategy:
    """A strategy from a run config: {"strategy": "hill_climb"|"grid", "axes": {...}, "start": {...}, ...}."""
    d = dict(d)
    kind = d.pop("strategy", "hill_climb")
    if "axes" not in d:
        raise ConfigError("search config needs 'axes': {knob name: [ordered values]}")
    try:
        if kind == "hill_climb":
            return HillClimb(**d)
        if kind == "grid":
            return GridSearch(**d)
    except TypeError as err:
        raise ConfigError(f"search config ({kind}): {err}") from None
    raise ConfigError(f"search strategy must be 'hill_climb' or 'grid', got {kind!r}")


# --------------------------------------------------------------------------------------------------------------
# Axes


def _powers_of_two(low: int, high: int) -> list[int]:
    out, v = [], 1
    while v <= high:
        if v >= low:
            out.append(v)
        v *= 2
    return out


def deeprecsched_axes(max_sub_batch: int = 1024, *, min_sub_batch: int = 8,
                      gpu_thresholds: Sequence[int] | None = None) -> dict[str, tuple]:
    """DeepRecSched's axes: ``sub_batch`` over the powers of two in [min_sub_batch, max_sub_batch] and, when a
    GPU exists, ``gpu_threshold`` (queries of more items than this go to the GPU), ascending."""
    if not isinstance(min_sub_batch, int) or not isinstance(max_sub_batch, int) or not \
            1 <= min_sub_batch <= max_sub_batch <= 1024:
        raise ConfigError(f"sub-batch bounds must be integers with 1 <= min <= max <= 1024, got "
                          f"{min_sub_batch!r}, {max_sub_batch!r}")
    sub_batches = _powers_of_two(min_sub_batch, max_sub_batch)
    if not sub_batches:
        raise ConfigError(f"no power of two in [{min_sub_batch}, {max_sub_batch}]")
    axes: dict[str, tuple] = {"sub_batch": tuple(sub_batches)}
    if gpu_thresholds is not None:
        thresholds = list(gpu_thresholds)
        if not thresholds or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in thresholds) \
                or thresholds != sorted(set(thresholds)):
            raise ConfigError(f"gpu_thresholds must be distinct integers >= 0 in ascending order, got {thresholds}")
        axes["gpu_threshold"] = tuple(thresholds)
    return check_axes(axes)


def triton_axes(max_batch: int, *, max_instances: int = 4,
                queue_delays_us: Sequence[int] = DEFAULT_QUEUE_DELAYS_US) -> dict[str, tuple]:
    """Triton dynamic-batching knobs as ordered axes for :class:`HillClimb`:

    * ``preferred_batch``: preferred batch size sets, from strictest to most permissive: ``[max_batch]`` (wait
      for full batches), then adding the next lower power of two each step (``[max/2, max]``, ...), down to
      every power of two, and last ``[]`` (no preference: dispatch whatever has arrived);
    * ``queue_delay_us``: max_queue_delay_microseconds candidates, ascending;
    * ``instances``: instance_group counts 1..max_instances.
    """
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_TRITON_BATCH:
        raise ConfigError(f"max_batch must be an integer in [1, {MAX_TRITON_BATCH}], got {max_batch!r}")
    if not isinstance(max_instances, int) or isinstance(max_instances, bool) or not 1 <= max_instances <= 64:
        raise ConfigError(f"max_instances must be an integer in [1, 64], got {max_instances!r}")
    delays = list(queue_delays_us)
    if not delays or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in delays) \
            or delays != sorted(set(delays)):
        raise ConfigError(f"queue_delays_us must be distinct integers >= 0 in ascending order, got {delays}")
    sizes = sorted(set(_powers_of_two(1, max_batch) + [max_batch]), reverse=True)  # max_batch first
    preferred = [sorted(sizes[: k + 1]) for k in range(len(sizes))] + [[]]
    return check_axes({
        "preferred_batch": tuple(preferred),
        "queue_delay_us": tuple(delays),
        "instances": tuple(range(1, max_instances + 1)),
    })


# --------------------------------------------------------------------------------------------------------------
# Profile documents


def build_profile(
    *,
    model_family: str,
    variant: str,
    variant_run_id: str,
    onnx_sha256: str,
    target: Mapping[str, Any],
    load: Mapping[str, Any],
    search: SearchResult,
    lbt: LBTResult,
    accuracy: Mapping[str, float],
    latency_vs_batch: Mapping[int, float] | Sequence[Mapping[str, Any]] = (),
    measured_at: dt.datetime | str | None = None,
    host: str | None = None,
    code_version: str | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The profile document of one (model, variant, target), validated against ``recforge/contracts/profile_schema.json``.

    ``lbt`` is the LBT search at ``search.best_knobs`` (``LBTEvaluator.result_for(best_knobs)``): its curve and
    SLO go into the document. ``target`` is {name, kind, device, threads}; ``load`` is {distribution, params,
    sub_batch_policy[, mean_items_per_query]} (arrival defaults to "poisson"). ``items_per_s`` is the achieved
    query rate at the LBT times the mean items per query. ``latency_vs_batch`` is {batch: ms} or rows
    [{batch, ms}]. ``measured_at`` defaults to now (UTC), ``host`` to this host name, ``code_version`` to the
    git commit. Raises ConfigError when the result is not a valid profile.
    """
    load_doc = {"arrival": "poisson", **json_ready(dict(load))}
    load_doc["mean_items_per_query"] = mean_items_per_query(load_doc)
    at = lbt.at_lbt
    items_per_s = at.achieved_qps * load_doc["mean_items_per_query"] if at is not None else 0.0
    if isinstance(latency_vs_batch, Mapping):
        batch_rows = [{"batch": int(b), "ms": float(ms)} for b, ms in sorted(latency_vs_batch.items())]
    else:
        batch_rows = [json_ready(dict(row)) for row in latency_vs_batch]
    if isinstance(measured_at, dt.datetime):
        measured_at = measured_at.isoformat()
    all_notes = [n for n in (*notes, search.note, lbt.note) if n]
    doc = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "model_family": model_family,
        "variant": variant,
        "variant_run_id": variant_run_id,
        "onnx_sha256": onnx_sha256,
        "target": json_ready(dict(target)),
        "load": load_doc,
        "p95_target_ms": lbt.config.p95_target_ms,
        "slo": {"max_error_rate": lbt.config.max_error_rate, "min_achieved_ratio": lbt.config.min_achieved_ratio},
        "search": {
            "strategy": search.strategy,
            "lbt_search": {k: v for k, v in lbt.config.to_dict().items()
                           if k not in ("p95_target_ms", "max_error_rate", "min_achieved_ratio")},
            "evaluations": [{"knobs": json_ready(e["knobs"]), "lbt_qps": e["value"]} for e in search.evaluations],
            "trajectory": [{"knobs": json_ready(e["knobs"]), "lbt_qps": e["value"]} for e in search.trajectory],
            "best_knobs": json_ready(search.best_knobs),
        },
        "latency_bounded_throughput_qps": lbt.lbt_qps,
        "lbt_capped": lbt.capped,
        "items_per_s": items_per_s,
        "curve": lbt.curve(),
        "latency_vs_batch": batch_rows,
        "accuracy": json_ready(dict(accuracy)),
        "measured_at": measured_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": host or socket.gethostname(),
        "code_version": code_version or git_commit(),
        "notes": all_notes,
    }
    validate_profile(doc)
    return doc
