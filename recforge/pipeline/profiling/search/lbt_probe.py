"""The profiling stage's :class:`~recforge.pipeline.profiling.search.race.RateProbe`: full LBT searches and one-run
screens on the load runs of an :class:`~recforge.pipeline.profiling.lbt.LBTEvaluator`, counting every run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from recforge.pipeline.profiling.lbt import (
    LBTEvaluator,
    LBTResult,
    Measurement,
    lbt_from_config,
    near_miss,
    slo_verdict,
)
from recforge.pipeline.profiling.search.base import knob_key
from recforge.pipeline.profiling.search.race import Screen

WINNER_RAMP_FACTOR = 1.25  # the ramp step of an LBT search from a rate a challenger sustained (LBTConfig.ramp_factor)


def load_runs(result: LBTResult) -> int:
    """Load runs an LBT search took (re-measured and discarded runs included)."""
    return sum(len(p.runs) + len(p.discarded) for p in result.points)


def top_qps(config: Any) -> float:
    """The highest rate an LBT search of ``config`` may offer: its explicit ``max_qps`` or the apparatus'
    ceiling, whichever is lower (inf when neither is set)."""
    bounds = [getattr(config, name, None) for name in ("max_qps", "apparatus_ceiling_qps")]
    return min((float(b) for b in bounds if b is not None), default=math.inf)


class LBTProbe:
    """``RateProbe`` over an ``LBTEvaluator``: ``probe(knobs)`` is the evaluator's full LBT search,
    ``screen(knobs, rate)`` one load run judged by the evaluator's SLO (two for a near miss),
    ``lbt_from(knobs, rate)`` an LBT search that starts at a rate the setting just sustained (its result is
    stored in ``evaluator.results`` like any other, so that ``evaluator.result_for(best_knobs)`` finds it),
    ``recheck(knobs, lbt)`` one more run at a setting's LBT. ``runs`` counts the load runs of all four."""

    def __init__(self, evaluator: LBTEvaluator):
        self.evaluator = evaluator
        self.runs = 0
        config = evaluator.config
        self.floor_qps = float(config.start_qps)
        self.evaluation_cost = int(config.max_steps) * int(config.repeats)
        self.min_evaluation_runs = 2 * int(config.repeats)  # the sustained rate again, and one above it
        self.screen_cost = 2  # a near miss is run twice

    def __call__(self, knobs: Mapping[str, Any]) -> float:
        key = knob_key(knobs)
        known = key in self.evaluator.results
        value = self.evaluator(knobs)
        if not known:
            self.runs += load_runs(self.evaluator.results[key])
        return value

    def run_at(self, knobs: Mapping[str, Any], rate_qps: float) -> Measurement:
        """One load run; under more CPU steal than the config allows, once more, and the less-stolen one counts."""
        config = self.evaluator.config
        runs = [self.evaluator.measure(rate_qps, dict(knobs))]
        if runs[0].cpu_steal_pct > getattr(config, "max_cpu_steal_pct", math.inf) and \
                getattr(config, "steal_retries", 0) > 0:
            runs.append(self.evaluator.measure(rate_qps, dict(knobs)))
        self.runs += len(runs)
        return min(runs, key=lambda m: m.cpu_steal_pct if math.isfinite(m.cpu_steal_pct) else 0.0)

    def screen(self, knobs: Mapping[str, Any], rate_qps: float) -> Screen:
        """One load run at ``rate_qps`` (at most the apparatus' top rate), and a second one when the first missed
        narrowly (``lbt.near_miss``). The second run decides; a lucky pass costs little, since :meth:`lbt_from`
        measures the rate again before anything is believed."""
        config = self.evaluator.config
        rate_qps = min(float(rate_qps), top_qps(config))  # the apparatus cannot offer more
        run = self.run_at(knobs, rate_qps)
        passed, reason = slo_verdict(run, rate_qps, config)
        p95 = run.p95_ms
        if not passed and near_miss(run, config):
            again = self.run_at(knobs, rate_qps)
            passed, reason = slo_verdict(again, rate_qps, config)
            p95 = again.p95_ms if passed else min(p95, again.p95_ms)
        return Screen(passed, p95, reason)

    def lbt_from(self, knobs: Mapping[str, Any], rate_qps: float, max_runs: int | None = None) -> float:
        """The LBT search from ``rate_qps`` (re-measured first: a lucky screen does not carry a setting), its final
        rate confirmed by one more run, all in at most ``max_runs`` load runs when given (runs repeated under CPU
        steal aside). A setting searched before is searched again (it just sustained a rate above its LBT on
        record), and the new search replaces the stored one unless it passed nothing (then it says less than the
        earlier one, which stays)."""
        key = knob_key(knobs)
        config = self.evaluator.config
        changes: dict[str, Any] = {"start_qps": min(float(rate_qps), top_qps(config))}
        if hasattr(config, "ramp_factor"):  # a winner is rarely far above the rate it just beat: smaller steps
            changes["ramp_factor"] = min(float(config.ramp_factor), WINNER_RAMP_FACTOR)
        confirm = max_runs is None or max_runs >= 3
        if max_runs is not None:  # one run kept for the confirmation
            steps = (int(max_runs) - int(confirm)) // int(config.repeats)
            changes["max_steps"] = max(1, min(int(config.max_steps), steps))
        result = lbt_from_config(self.evaluator.measure, knobs, dataclasses.replace(config, **changes))
        self.runs += load_runs(result)
        if result.lbt_qps > 0 or key not in self.evaluator.results:
            self.evaluator.results[key] = result
        if not (confirm and result.lbt_qps > 0):
            return result.lbt_qps
        # a winner's LBT is the bar every later challenger must clear: one lucky run must not set it
        return self.recheck(knobs, result.lbt_qps, step_down=False)  # its budget kept one run for this

    def recheck(self, knobs: Mapping[str, Any], rate_qps: float, *, step_down: bool = True) -> float:
        """One more load run of ``knobs`` at ``rate_qps`` (a rate its LBT search passed): ``rate_qps`` when it
        holds again, else the highest lower rate its search passed. With ``step_down``, when that rate is more than
        a tolerance step lower (a ramp's doubling leaves 1,600 below 2,400), one run between the two decides
        first (their geometric mean; one tolerance step lower when its search passed none): dropping a setting
        to its ramp's last rung would lower the race's bar far below what it serves. The stored result keeps
        its curve; the profiling stage confirms its best setting's LBT again with its own runs."""
        config = self.evaluator.config
        again = self.run_at(knobs, rate_qps)
        if slo_verdict(again, rate_qps, config)[0]:
            return float(rate_qps)
        result = self.evaluator.results.get(knob_key(knobs))
        points = result.points if result is not None else ()
        lower = max((p.rate_qps for p in points if p.passed and p.rate_qps < rate_qps), default=0.0)
        step = float(rate_qps) * (1.0 - float(config.tolerance))
        if not step_down or lower >= step:
            return lower
        between = math.sqrt(lower * float(rate_qps)) if lower > 0 else step
        return between if slo_verdict(self.run_at(knobs, between), between, config)[0] else lower
