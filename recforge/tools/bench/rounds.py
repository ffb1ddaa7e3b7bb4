"""Interleaved rounds of a baseline-against-RecForge comparison, and their medians with intervals.

One measurement of two systems on a shared 2-core VM says more about the minute it was taken in than about the
systems (issue 12: DLRM's p95 ratio was 0.93 one day and 0.32 the next). So the comparison runs in rounds, the two
sides interleaved (A B A B ...: :func:`interleaved_order`), and every ratio is taken within a round, then summarized
as the median over the rounds with an order-statistic interval (``intervals.median_interval``): a slow drift of
the machine weighs on both sides of a round alike, and a burst spoils one round, not the median.

In each round each side gets: its LBT (searched from its previous round's LBT, so a round's search is a few probes),
p95 at ``load_fractions`` of the *baseline's* LBT of the same round (the baseline runs first in every round, so the
offered rates are known when RecForge runs; both sides see the same rates), and its unloaded latency. What runs a
side's measurements is a :class:`RoundSide` of injected functions: load runs in the benches, fakes in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recforge.tools.bench.intervals import median_interval

BASELINE, RECFORGE = "baseline", "recforge"
RESTART_FRACTION = 0.8  # a round's LBT search starts at this fraction of the side's previous LBT


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
    unloaded: Callable[[float], Mapping[str, Any]]  # this side's LBT -> {"p50_ms", "p95_ms", ...} at light load
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


def run_rounds(sides: Mapping[str, RoundSide], rounds: int, fractions: Sequence[float], *,
               fallback_qps: float, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The rounds, interleaved (:func:`interleaved_order`, baseline first); one dict per round:
    {"round", "baseline": {"lbt_qps", "loads": {fraction: figures}, "unloaded"}, "recforge": {...}, "rates"}."""
    labels = (BASELINE, *[label for label in sides if label != BASELINE])
    if BASELINE not in sides:
        raise ValueError(f"sides must include {BASELINE!r}, got {list(sides)}")
    start = {label: side.first_start_qps for label, side in sides.items()}
    results: list[dict[str, Any]] = [{"round": r} for r in range(rounds)]
    for r, label in interleaved_order(rounds, labels):
        side = sides[label]
        lbt = float(side.search_lbt(start[label]))
        if lbt > 0:
            start[label] = RESTART_FRACTION * lbt
        if label == BASELINE:
            results[r]["rates"] = compare_rates(lbt, fractions, fallback_qps)
        loads = {f: dict(side.load_point(rate)) for f, rate in results[r]["rates"].items()}
        results[r][label] = {"lbt_qps": lbt, "loads": loads, "unloaded": dict(side.unloaded(lbt))}
        if progress is not None:
            progress(f"round {r + 1}/{rounds} {label}: LBT {lbt:.1f} qps, p95 "
                     + ", ".join(f"{loads[f].get('p95_ms', math.nan):.2f} ms at {rate:.0f} qps"
                                 for f, rate in results[r]["rates"].items()))
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
    and apparatus share (where the load figures carry one)."""
    per_round = [round_ratios(r, headline_fraction) for r in results]
    fractions = list(results[0][BASELINE]["loads"]) if results else []

    def interval(values) -> dict[str, Any]:
        return median_interval(list(values), confidence).to_dict()

    out: dict[str, Any] = {
        "rounds": len(results), "headline_fraction": headline_fraction,
        "latency_ratio": interval(r["latency_ratio"] for r in per_round),
        "throughput_ratio": interval(r["throughput_ratio"] for r in per_round),
        "unloaded_ratio": interval(r["unloaded_ratio"] for r in per_round),
        "latency_ratio_at": {str(f): interval(r["latency_ratio_at"].get(f) for r in per_round) for f in fractions},
        "per_round": per_round,
    }
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
