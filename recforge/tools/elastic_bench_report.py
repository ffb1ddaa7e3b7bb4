"""What one policy's replay on the live fleet measured, in the simulator's terms (recforge.serving.elastic.report):
the load generator's per-query records tallied per second (arrivals, shed, failed, over the SLO), the controller's
decision log read back as the node-count target and the nodes per second, and the plot of a run (load, nodes, p95
against the SLO over time)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from recforge.serving.elastic import report
from recforge.serving.elastic.traces import Burst
from recforge.serving.loadbalancer.shedding import SHED_MARKER


@dataclass(frozen=True)
class Series:
    """Per second of a replay: offered and answered queries, the p95 of the answered ones (NaN: none), shed and
    failed queries, and the fleet's node count and the policy's target (NaN: no decision logged that second)."""

    offered: np.ndarray
    answered: np.ndarray
    p95_ms: np.ndarray
    shed: np.ndarray
    failed: np.ndarray
    nodes: np.ndarray
    target: np.ndarray

    def to_dict(self) -> dict[str, list[float | None]]:
        return {name: [None if not math.isfinite(v) else round(float(v), 3) for v in getattr(self, name)]
                for name in ("offered", "answered", "p95_ms", "shed", "failed", "nodes", "target")}


def query_outcomes(errors: Sequence[str | None], latency_ms: np.ndarray, slo_ms: float) -> dict[str, np.ndarray]:
    """Per query: shed (the balancer answered 503 itself), failed (any other error) and over (answered slower than
    ``slo_ms``); ``latency_ms`` is NaN for the queries that were not answered."""
    shed = np.array([e is not None and SHED_MARKER in e for e in errors], dtype=bool)
    failed = np.array([e is not None for e in errors], dtype=bool) & ~shed
    over = ~shed & ~failed & (np.nan_to_num(latency_ms, nan=0.0) > slo_ms)
    return {"shed": shed, "failed": failed, "over": over}


def tally(arrival_s: np.ndarray, finish_s: np.ndarray, errors: Sequence[str | None], *, duration_s: float,
          slo_ms: float, tick_s: float = 1.0, window_s: float = 60.0) -> tuple[report.Accumulator, Series]:
    """The per-second tallies of one replay (the load generator's per-query arrival and finish times, relative to
    its start, and errors) as the simulator's Accumulator, and the per-second series of the plot."""
    acc = report.Accumulator(duration_s, tick_s, window_s, slo_ms)
    latency = (np.asarray(finish_s, dtype=float) - np.asarray(arrival_s, dtype=float)) * 1000.0
    outcome = query_outcomes(errors, latency, slo_ms)
    steps = acc.arrivals.size
    index = np.minimum((np.asarray(arrival_s) / tick_s).astype(np.int64), steps - 1)
    answered = ~outcome["shed"] & ~outcome["failed"] & np.isfinite(latency)
    acc.arrivals[:] = np.bincount(index, minlength=steps)[:steps]
    acc.shed[:] = np.bincount(index, weights=outcome["shed"], minlength=steps)[:steps]
    acc.failed[:] = np.bincount(index, weights=outcome["failed"], minlength=steps)[:steps]
    acc.over[:] = np.bincount(index, weights=outcome["over"], minlength=steps)[:steps]
    p95 = np.full(steps, np.nan)
    order = np.argsort(index[answered], kind="stable")
    by_step = np.split(latency[answered][order], np.flatnonzero(np.diff(index[answered][order])) + 1)
    for step, values in zip(np.unique(index[answered]), by_step, strict=False):
        p95[step] = float(np.percentile(values, 95))
    nan = np.full(steps, np.nan)
    series = Series(offered=acc.arrivals.copy(), answered=np.bincount(index[answered], minlength=steps)[:steps]
                    .astype(float), p95_ms=p95, shed=acc.shed.copy(), failed=acc.failed.copy(), nodes=nan,
                    target=nan.copy())
    return acc, series


def read_decisions(path: str | Path, started_at: float, duration_s: float, tick_s: float = 1.0
                   ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """From the controller's decisions log: the policy's node-count target at every logged tick within the replay
    (for scale reversals), and per second the fleet's node count and the target (last value carried forward; NaN
    before the first line). ``started_at`` is the replay's start (epoch s)."""
    steps = max(1, math.ceil(duration_s / tick_s - 1e-9))
    nodes, target = np.full(steps, np.nan), np.full(steps, np.nan)
    targets: list[int] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return targets, nodes, target
    for line in lines:
        try:
            record = json.loads(line)
            at = datetime.fromisoformat(record["at"]).timestamp() - started_at
        except (ValueError, KeyError, TypeError):
            continue
        decision = record.get("decision") or {}
        # a tick's line: "nodes" is the fleet's node count (a controller's start line lists their names)
        if not 0 <= at < duration_s or "event" in record or not isinstance(record.get("nodes"), int | float):
            continue
        step = int(at / tick_s)
        nodes[step:] = float(record["nodes"])
        if "target_nodes" in decision:
            target[step:] = float(decision["target_nodes"])
            targets.append(int(decision["target_nodes"]))
    return targets, nodes, target


def policy_report(name: str, acc: report.Accumulator, targets: Sequence[int], bursts: Sequence[Burst],
                  node_seconds: float, hold_s: float = 10.0) -> report.PolicyReport:
    """The simulator's report of a live run: the controller counted the node-seconds (cores x seconds allocated)."""
    acc.node_seconds = node_seconds
    return acc.finish(name, list(targets), list(bursts), hold_s)


def plot_run(series: Series, *, slo_ms: float, title: str, path: str | Path, bursts: Sequence[Burst] = ()) -> Path:
    """Offered and answered load, nodes (and the policy's target) and the p95 per second against the SLO."""
    from recforge.pipeline.parity.plot import pyplot

    plt = pyplot()
    seconds = np.arange(series.offered.size)
    fig, (load_ax, p95_ax) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    load_ax.plot(seconds, series.offered, color="tab:gray", lw=0.8, label="offered queries/s")
    load_ax.plot(seconds, series.answered, color="tab:blue", lw=0.8, label="answered queries/s")
    if series.shed.any():
        load_ax.plot(seconds, series.shed, color="tab:orange", lw=0.8, label="shed queries/s (503)")
    load_ax.set_ylabel("queries/s")
    nodes_ax = load_ax.twinx()
    nodes_ax.step(seconds, series.nodes, where="post", color="tab:green", lw=1.5, label="nodes")
    nodes_ax.step(seconds, series.target, where="post", color="tab:green", lw=1, ls=":", label="target nodes")
    nodes_ax.set_ylabel("nodes")
    nodes_ax.set_ylim(0, max(1.0, float(np.nanmax(np.r_[series.nodes, series.target, 1.0]))) + 1)
    handles = load_ax.get_legend_handles_labels()
    extra = nodes_ax.get_legend_handles_labels()
    load_ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left", fontsize=8)
    p95_ax.plot(seconds, series.p95_ms, color="tab:purple", lw=0.8, label="p95 per second (ms)")
    p95_ax.axhline(slo_ms, color="tab:red", ls="--", lw=1, label=f"SLO {slo_ms:g} ms")
    p95_ax.set_yscale("log")
    p95_ax.set_ylabel("p95 ms")
    p95_ax.set_xlabel("seconds of the trace")
    p95_ax.legend(loc="upper left", fontsize=8)
    for burst in bursts:
        for ax in (load_ax, p95_ax):
            ax.axvspan(burst.start_s, burst.start_s + burst.duration_s, color="tab:orange", alpha=0.1)
    load_ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(results: Sequence[Mapping[str, Any]]) -> str:
    """The comparison table of every run (recforge.serving.elastic.report.table), one block per run."""
    blocks = []
    for run in sorted({r["run"] for r in results}):
        reports = [report.PolicyReport(**{**r["report"], "recovery_s": tuple(r["report"]["recovery_s"])})
                   for r in results if r["run"] == run]
        blocks.append(f"run {run}\n{report.table(reports)}")
    return "\n\n".join(blocks)
