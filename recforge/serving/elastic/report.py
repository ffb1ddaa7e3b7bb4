"""What an elastic-serving run is judged by: per-step tallies (:class:`Accumulator`) turned into one
:class:`PolicyReport` per policy (SLO windows, requests over the SLO, shed/failed, node-seconds, scale reversals,
recovery after bursts), and the table that compares policies."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recforge.serving.elastic.traces import Burst

P95_SHARE = 0.05  # a p95 is within the SLO when at most 5 % of the answered requests are over it


@dataclass(frozen=True)
class PolicyReport:
    """One policy's results over one trace."""

    policy: str
    duration_s: float
    requests: int
    windows_within_slo_pct: float
    over_slo_pct: float  # of admitted requests: answered over the SLO, or failed
    shed: int
    failed: int
    node_seconds: float
    reversals_per_hour: float
    recovery_s: tuple[float, ...]  # per burst: seconds from its start until p95 is back under the SLO
    wall_s: float = 0.0

    def with_wall_s(self, wall_s: float) -> PolicyReport:
        return dataclasses.replace(self, wall_s=round(wall_s, 3))

    def to_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "recovery_s": list(self.recovery_s)}


class Accumulator:
    """Per-step tallies of a run (arrays indexed by step)."""

    def __init__(self, duration_s: float, tick_s: float, window_s: float, slo_ms: float):
        steps = max(1, math.ceil(duration_s / tick_s - 1e-9))
        self.tick_s, self.window_s, self.slo_ms = tick_s, window_s, slo_ms
        self.arrivals = np.zeros(steps)
        self.shed = np.zeros(steps)
        self.failed = np.zeros(steps)
        self.over = np.zeros(steps)
        self.node_seconds = 0.0

    def step(self, now: float, arrivals: int, shed: float, failed: float, over: float, node_seconds: float) -> None:
        i = min(int(now / self.tick_s + 1e-9), self.arrivals.size - 1)
        self.arrivals[i] += arrivals
        self.shed[i] += shed
        self.failed[i] += failed
        self.over[i] += over
        self.node_seconds += node_seconds

    def violating(self) -> np.ndarray:
        """Per step: is the p95 of its admitted requests over the SLO (failed ones count as over)."""
        admitted = self.arrivals - self.shed
        bad = self.over + self.failed
        return bad > P95_SHARE * np.maximum(admitted, 1e-9)

    def finish(self, policy: str, targets: Sequence[int], bursts: Sequence[Burst], hold_s: float) -> PolicyReport:
        per_window = max(1, round(self.window_s / self.tick_s))
        n = self.arrivals.size
        edges = np.arange(0, n, per_window)
        admitted = np.add.reduceat(self.arrivals - self.shed, edges)
        bad = np.add.reduceat(self.over + self.failed, edges)
        within = bad <= P95_SHARE * admitted
        duration = n * self.tick_s
        total_admitted = float((self.arrivals - self.shed).sum())
        return PolicyReport(
            policy=policy, duration_s=duration, requests=int(self.arrivals.sum()),
            windows_within_slo_pct=round(100.0 * float(within.mean()), 3),
            over_slo_pct=round(100.0 * float((self.over + self.failed).sum()) / max(total_admitted, 1.0), 4),
            shed=int(round(float(self.shed.sum()))), failed=int(round(float(self.failed.sum()))),
            node_seconds=round(self.node_seconds, 1),
            reversals_per_hour=round(reversals(targets) / (duration / 3600.0), 2),
            recovery_s=tuple(self.recovery(b, hold_s) for b in bursts))

    def recovery(self, burst: Burst, hold_s: float) -> float:
        """Seconds from the burst's start until the p95 stays under the SLO for ``hold_s`` (0 if it never left)."""
        bad = self.violating()
        start = int(burst.start_s / self.tick_s)
        hold = max(1, round(hold_s / self.tick_s))
        for i in range(start, bad.size):
            if not bad[i:i + hold].any():
                return round((i - start) * self.tick_s, 1)
        return round((bad.size - start) * self.tick_s, 1)


def reversals(targets: Sequence[int]) -> int:
    """Changes of direction in a sequence of node-count targets (up then down, or down then up)."""
    steps = [b - a for a, b in zip(targets, targets[1:], strict=False) if b != a]
    return sum(1 for a, b in zip(steps, steps[1:], strict=False) if (a > 0) != (b > 0))


def table(results: Sequence[PolicyReport]) -> str:
    """The comparison table; node-seconds also as a share of static peak's when it ran."""
    peak = next((r.node_seconds for r in results if r.policy == "static-peak"), None)
    head = (f"{'policy':<12} {'windows ok %':>12} {'over SLO %':>10} {'shed':>9} {'failed':>9} "
            f"{'node-s':>11} {'vs peak':>7} {'rev/h':>6} {'recovery s':>14} {'wall s':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        vs_peak = f"{r.node_seconds / peak:.2f}" if peak else "-"
        recovery = ",".join(f"{s:g}" for s in r.recovery_s) or "-"
        lines.append(f"{r.policy:<12} {r.windows_within_slo_pct:>12.2f} {r.over_slo_pct:>10.3f} {r.shed:>9} "
                     f"{r.failed:>9} {r.node_seconds:>11.0f} {vs_peak:>7} {r.reversals_per_hour:>6.2f} "
                     f"{recovery:>14} {r.wall_s:>7.1f}")
    return "\n".join(lines)
