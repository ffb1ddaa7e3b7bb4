"""Interleaved rounds of a baseline-against-RecForge comparison, and their medians with intervals.

One measurement of two systems on a shared 2-core VM says more about the minute it was taken in than about the
systems (issue 12: DLRM's p95 ratio was 0.93 one day and 0.32 the next). So the comparison runs in rounds, the sides
interleaved (A B A B ...: :func:`interleaved_order`), every ratio is taken within a round and summarized as the median
over the rounds with an order-statistic interval (``recforge.core.intervals.median_interval``): a slow drift of the
machine weighs on both sides of a round alike, and a burst spoils one round, not the median.

:func:`run_rounds` has two phases:

1. **LBTs.** In every round each side's LBT is searched, the sides interleaved. A side's search starts a little
   below the median of its LBTs so far (:func:`round_start_qps`), shifted by a round-dependent part of one ramp step
   so that the rounds probe different rates: otherwise every round's LBT lands on the same lattice of rates and the
   median cannot average the search's resolution away. The shift differs between the sides too (each side has its
   own sequence), or their ratio would still fall on a lattice. The baseline may have several *options* (its torch
   thread counts): each is a side of its own in this phase, and the one with the highest median LBT is the
   baseline (:func:`best_option`): the baseline gets its best, judged by the figure that is compared, and a near
   tie costs little whichever way it falls.
2. **p95 at the same loads.** The offered rates are fixed once, at ``fractions`` of the baseline's *median* LBT
   (:func:`compare_rates`), and both sides run them in interleaved rounds, then their unloaded latency. Rates taken
   from each round's own baseline LBT put the baseline at a different point of its knee in every round (at 80% its
   p95 swung tenfold between rounds).

What runs a side's measurements is a :class:`RoundSide` of injected functions: load runs in the benches, fakes in the
tests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recforge.core.intervals import median_interval

BASELINE, RECFORGE = "baseline", "recforge"
RESTART_FRACTION = 0.8  # a round's LBT search starts at this fraction of the side's LBT so far
DITHER_STEP = (math.sqrt(5) - 1) / 2  # round r's start is shifted by frac(r x k x this) of a ramp step (side k >= 1)


def interleaved_order(rounds: int, labels: Sequence[str] = (BASELINE, RECFORGE)) -> list[tuple[int, str]]:
    """[(round, label)] in the order they run: every round runs every label, in the same order (A B A B ...)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be distinct and not empty, got {labels}")
    return [(r, label) for r in range(rounds) for label in labels]


@dataclass
class RoundSide:
    """How one side is measured in a round (injected)."""

    search_lbt: Callable[[float], float]  # start_qps -> LBT (qps); 0 when nothing met the SLO
    load_point: Callable[[float], Mapping[str, Any]]  # offered qps -> {"p95_ms", ...} of one load run
    unloaded: Callable[[float], Mapping[str, Any]]  # this side's median LBT -> {"p50_ms", "p95_ms", ...} at light load
    first_start_qps: float  # the first round's LBT search starts here (an earlier LBT or an estimate)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None where either is missing or not finite, or the denominator is 0."""
    if numerator is None or denominator is None or not denominator or not math.isfinite(numerator) \
            or not math.isfinite(denominator):
        return None
    return float(numerator) / float(denominator)


def compare_rates(baseline_lbt: float, fractions: Sequence[float], fallback_qps: float) -> dict[float, float]:
    """{fraction: offered qps} at the fractions of the baseline's LBT (a baseline LBT of 0: ``fallback_qps`` x the
    fraction, so that there is still a comparison at a light load)."""
    base = baseline_lbt if baseline_lbt > 0 else fallback_qps
    return {f: f * base for f in fractions}


def round_start_qps(lbts: Sequence[float], round_no: int, first_start_qps: float, spread: float = 1.0,
                    side_no: int = 0) -> float:
    """Where round ``round_no``'s LBT search of side ``side_no`` starts: ``RESTART_FRACTION`` x the median of its
    positive LBTs so far (``first_start_qps`` when there is none), times ``spread ** frac(round_no x (side_no + 1) x
    DITHER_STEP)``. With ``spread`` the search's ramp factor, the rounds' starts cover one ramp step evenly, so their
    probed rates (and the LBTs, which are probed rates) are not all on one lattice, and two sides' offsets differ by
    a different amount in every round, so their LBT ratios are not on one either; the median is taken so that one
    lucky round does not move the next start."""
    positive = [x for x in lbts if x > 0]
    if not positive:
        return first_start_qps
    return RESTART_FRACTION * statistics.median(positive) * spread ** ((round_no * (side_no + 1) * DITHER_STEP) % 1.0)


def best_option(lbts: Mapping[str, Sequence[float]], options: Sequence[str]) -> str:
    """The option with the highest median LBT over the rounds (a tie: the first listed)."""
    if not options:
        raise ValueError("options must not be empty")
    return max(options, key=lambda o: (statistics.median(lbts[o]) if lbts[o] else 0.0, -options.index(o)))


def run_rounds(sides: Mapping[str, RoundSide], rounds: int, fractions: Sequence[float], *, fallback_qps: float,
               baselines: Sequence[str] = (BASELINE,), start_spread: float = 1.0,
               progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The two phases (module docstring): LBTs of every side in interleaved rounds (the ``baselines`` options
    first), then p95 of the chosen baseline and the other sides at ``fractions`` of the chosen baseline's median LBT,
    interleaved, and each side's unloaded latency. One dict per round::

        {"round", "rates": {fraction: qps}, "baseline_option": chosen, "baseline_options": {option: LBT},
         "baseline": {"lbt_qps", "loads": {fraction: figures}, "unloaded"}, "recforge": {...}}

    ``start_spread`` is the LBT searches' ramp factor (see :func:`round_start_qps`)."""
    missing = [label for label in baselines if label not in sides]
    if not baselines or missing:
        raise ValueError(f"sides must include the baseline options {list(baselines)}, got {list(sides)}")
    others = [label for label in sides if label not in baselines]
    say = progress or (lambda _text: None)

    lbts: dict[str, list[float]] = {label: [] for label in (*baselines, *others)}
    side_no = {label: k for k, label in enumerate(lbts)}
    for r, label in interleaved_order(rounds, list(lbts)):
        side = sides[label]
        start = round_start_qps(lbts[label], r, side.first_start_qps, start_spread, side_no[label])
        lbts[label].append(float(side.search_lbt(start)))
        say(f"round {r + 1}/{rounds} {label}: LBT {lbts[label][-1]:.1f} qps")
    chosen = best_option(lbts, baselines)
    medians = {label: statistics.median(values) for label, values in lbts.items()}
    rates = compare_rates(medians[chosen], fractions, fallback_qps)
    say(f"baseline {chosen} (median LBT {medians[chosen]:.1f} qps); same loads at "
        + ", ".join(f"{rate:.0f} qps" for rate in rates.values()))

    results: list[dict[str, Any]] = [{"round": r, "rates": dict(rates), "baseline_option": chosen,
                                      "baseline_options": {o: lbts[o][r] for o in baselines}} for r in range(rounds)]
    for r, label in interleaved_order(rounds, [chosen, *others]):
        side = sides[label]
        loads = {f: dict(side.load_point(rate)) for f, rate in rates.items()}
        results[r][BASELINE if label == chosen else label] = {
            "lbt_qps": lbts[label][r], "loads": loads, "unloaded": dict(side.unloaded(medians[label]))}
        say(f"round {r + 1}/{rounds} {label}: p95 " + ", ".join(
            f"{loads[f].get('p95_ms', math.nan):.2f} ms at {rate:.0f} qps" for f, rate in rates.items()))
    return results


def round_ratios(result: Mapping[str, Any], headline_fraction: float) -> dict[str, Any]:
    """One round's ratios, RecForge over baseline: p95 at each load fraction, the headline's, LBT, unloaded p50."""
    b, o = result[BASELINE], result[RECFORGE]
    p95 = {f: ratio(o["loads"][f].get("p95_ms"), b["loads"][f].get("p95_ms")) for f in b["loads"]}
    return {"latency_ratio": p95.get(headline_fraction), "latency_ratio_at": p95,
            "throughput_ratio": ratio(o["lbt_qps"], b["lbt_qps"]),
            "unloaded_ratio": ratio(o["unloaded"].get("p50_ms"), b["unloaded"].get("p50_ms"))}


def summarize_rounds(results: Sequence[Mapping[str, Any]], headline_fraction: float,
                     confidence: float = 0.95) -> dict[str, Any]:
    """Medians with intervals over the rounds: every ratio, each side's LBT, p95 at each fraction, unloaded p50/p95
    and apparatus share (where the load figures carry one), each baseline option's LBT, and the offered rates."""
    per_round = [round_ratios(r, headline_fraction) for r in results]
    fractions = list(results[0][BASELINE]["loads"]) if results else []

    def interval(values) -> dict[str, Any]:
        return median_interval(list(values), confidence).to_dict()

    out: dict[str, Any] = {
        "rounds": len(results), "headline_fraction": headline_fraction,
        "rates": {str(f): rate for f, rate in (results[0].get("rates") or {}).items()} if results else {},
        "latency_ratio": interval(r["latency_ratio"] for r in per_round),
        "throughput_ratio": interval(r["throughput_ratio"] for r in per_round),
        "unloaded_ratio": interval(r["unloaded_ratio"] for r in per_round),
        "latency_ratio_at": {str(f): interval(r["latency_ratio_at"].get(f) for r in per_round) for f in fractions},
        "per_round": per_round,
    }
    if results and "baseline_options" in results[0]:
        out["baseline_option"] = results[0]["baseline_option"]
        out["baseline_options"] = {o: interval(r["baseline_options"][o] for r in results)
                                   for o in results[0]["baseline_options"]}
    for label in (BASELINE, RECFORGE):
        side = [r[label] for r in results]
        out[label] = {
            "lbt_qps": interval(s["lbt_qps"] for s in side),
            "p95_ms_at": {str(f): interval(s["loads"][f].get("p95_ms") for s in side) for f in fractions},
            "unloaded_p50_ms": interval(s["unloaded"].get("p50_ms") for s in side),
            "unloaded_p95_ms": interval(s["unloaded"].get("p95_ms") for s in side),
            "apparatus_share_at": {str(f): interval(s["loads"][f].get("apparatus_share_median") for s in side)
                                   for f in fractions},
        }
    return out
