"""The live fleet's signals for the elastic controller: each node's Triton metrics (Prometheus text) and HAProxy's
``show stat`` rows parsed into counters, and the counters of two ticks turned into the control law's
:class:`~recforge.serving.elastic.control.FleetSignals` (rates from deltas) plus the nodes whose health failed.

What is read:

- per node, from its own metrics port: ``nv_inference_request_success`` / ``_failure`` and the cumulative
  ``queue_duration_us``, ``compute_infer_duration_us``, ``request_duration_us`` (summed over the node's models and
  versions), and the 0.95 quantile of ``nv_inference_request_summary_us`` (the fleet's nodes run with
  ``summary_latencies=true``). Per tick: throughput = delta(success) / dt, queue time = delta(queue_us) /
  delta(success), p95 = the summary's quantile, or the tick's mean request duration where there is none or the
  node started less than the summary's window ago (its warm-up is still in it), 0 for a node that served nothing in
  the tick (the summary's window may still hold an old slow request);
- from HAProxy: each server's status, weight, current sessions and queue, the check result, the frontend's
  HTTP request count (the arrival rate at the balancer = its delta / dt: shed requests count, they arrived), and the
  requests the balancer shed (its ``shed`` backend's sessions; :class:`ShedCounter` keeps their total across the
  counter's restarts at a reload).

A node is unhealthy (:func:`health_problem`) when HAProxy has no row for it, reports it DOWN/MAINT, or its metrics
port does not answer; an unhealthy node is left out of the signals (the law measures only what it can read).
The query-size mix is not read yet: ``mix_cost_ratio`` is 1 (the profile's mix).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recforge.serving import loadbalancer as lb
from recforge.serving.elastic.control import FleetSignals
from recforge.serving.fleet import parse_triton_metrics

SUMMARY_LINE = re.compile(r'^nv_inference_request_summary_us\{([^}]*)\}\s+(\S+)\s*$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
OUT_OF_ROTATION = ("DOWN", "MAINT")  # HAProxy server states in which a node serves nothing


@dataclass(frozen=True)
class NodeCounters:
    """A node's cumulative Triton counters at one moment (µs sums), and its current server-side p95 (ms; NaN when
    the node reports no summary)."""

    success: float = 0.0
    failure: float = 0.0
    queue_us: float = 0.0
    compute_infer_us: float = 0.0
    request_us: float = 0.0
    p95_ms: float = math.nan


def summary_p95_ms(text: str, models: Collection[str] | None = None) -> float:
    """The largest 0.95 quantile of ``nv_inference_request_summary_us`` over the given models' versions, in ms
    (NaN when there is none or Triton reports NaN: no request in its window)."""
    worst = math.nan
    for line in text.splitlines():
        match = SUMMARY_LINE.match(line.strip())
        if not match:
            continue
        labels = dict(LABEL.findall(match.group(1)))
        if labels.get("quantile") != "0.95" or (models is not None and labels.get("model") not in models):
            continue
        try:
            value = float(match.group(2)) / 1000.0
        except ValueError:
            continue
        if math.isfinite(value) and (math.isnan(worst) or value > worst):
            worst = value
    return worst


def node_counters(text: str, models: Collection[str] | None = None) -> NodeCounters:
    """A node's counters from its Prometheus text, summed over ``models`` (all models when None) and versions."""
    totals = {"request_success": 0.0, "request_failure": 0.0, "queue_duration_us": 0.0,
              "compute_infer_duration_us": 0.0, "request_duration_us": 0.0}
    for model, versions in parse_triton_metrics(text).items():
        if models is not None and model not in models:
            continue
        for figures in versions.values():
            for key in totals:
                totals[key] += figures.get(key, 0.0)
    return NodeCounters(success=totals["request_success"], failure=totals["request_failure"],
                        queue_us=totals["queue_duration_us"], compute_infer_us=totals["compute_infer_duration_us"],
                        request_us=totals["request_duration_us"], p95_ms=summary_p95_ms(text, models))


@dataclass(frozen=True)
class ServerView:
    """One node as HAProxy sees it."""

    status: str  # UP, DOWN, DRAIN, MAINT, NOLB
    weight: int | None
    sessions: int
    queued: int
    check: str


@dataclass(frozen=True)
class BalancerView:
    """HAProxy's view at one moment: the frontend's HTTP requests so far, each server of the backend, and the
    requests shed so far by this worker (None: the balancer's config has no shedding)."""

    requests_total: float
    servers: dict[str, ServerView]
    shed_total: int | None = None


def balancer_view(rows: Sequence[Mapping[str, str]], *, backend: str = lb.BACKEND,
                  frontend: str = lb.FRONTEND) -> BalancerView:
    """:class:`BalancerView` from ``show stat`` rows (:func:`recforge.serving.loadbalancer.parse_show_stat`)."""
    requests_total = 0.0
    servers: dict[str, ServerView] = {}
    shed_total = lb.shed_requests(rows)
    for row in rows:
        name = row.get("svname")
        if row.get("pxname") == frontend and name == "FRONTEND":
            requests_total = float(count(row.get("req_tot")) or count(row.get("stot")) or 0)
        elif row.get("pxname") == backend and name not in ("BACKEND", "FRONTEND", None):
            servers[name] = ServerView(status=lb.server_status(row), weight=count(row.get("weight")),
                                       sessions=count(row.get("scur")) or 0, queued=count(row.get("qcur")) or 0,
                                       check=row.get("check_status", ""))
    return BalancerView(requests_total, servers, shed_total)


def count(value: str | None) -> int | None:
    """An integer column of ``show stat`` (None when empty or not a number)."""
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def health_problem(server: ServerView | None, counters: NodeCounters | None, metrics_error: str = "") -> str:
    """Why a node counts as unhealthy ("" when it is healthy)."""
    if server is None:
        return "not in the balancer's backend"
    if server.status in OUT_OF_ROTATION:
        return f"HAProxy reports it {server.status} (check {server.check or 'none'})"
    if counters is None:
        return f"its metrics port does not answer ({metrics_error or 'no answer'})"
    return ""


SUMMARY_WINDOW_S = 60.0  # Triton's latency summaries are over about the last minute (measured: docs/elastic.md)


class SignalTracker:
    """Turns the counters of successive ticks into :class:`FleetSignals` (rates from deltas). The first tick only
    records (it has nothing to take a delta from)."""

    def __init__(self, summary_window_s: float = SUMMARY_WINDOW_S) -> None:
        self.last_s: float | None = None
        self.last_requests: float | None = None
        self.last_nodes: dict[str, NodeCounters] = {}
        self.summary_window_s = summary_window_s
        self.fresh_since: dict[str, float] = {}  # when a node's counters were first seen, or began again

    def update(self, now_s: float, view: BalancerView, counters: Mapping[str, NodeCounters],
               nodes: Sequence[str]) -> FleetSignals | None:
        """The signals of ``nodes`` (healthy, in the order given) since the last call; None on the first."""
        previous_s, previous_requests, previous_nodes = self.last_s, self.last_requests, self.last_nodes
        self.last_s, self.last_requests = now_s, view.requests_total
        self.last_nodes = {**previous_nodes, **counters}
        for name in counters:  # first seen now (a node added, or every node when the controller starts)
            self.fresh_since.setdefault(name, now_s)
        if previous_s is None or previous_requests is None or now_s <= previous_s:
            return None
        dt = now_s - previous_s
        throughput, p95, queue = [], [], []
        for name in nodes:
            now, before = counters[name], previous_nodes.get(name)
            done = now.success - before.success if before is not None else 0.0
            if done < 0:  # the node restarted: its counters began again
                done = 0.0
                self.fresh_since[name] = previous_s
            queue_us = now.queue_us - before.queue_us if before is not None and done else 0.0
            request_us = now.request_us - before.request_us if before is not None and done else 0.0
            throughput.append(done / dt)
            queue.append(max(queue_us, 0.0) / done / 1000.0 if done else 0.0)
            mean_ms = max(request_us, 0.0) / done / 1000.0 if done else 0.0
            # an idle node has no latency now (Triton's summary still shows its last window, e.g. a cold start);
            # a node younger than the summary's window has its warm-up in it (model_warmup at max_batch_size is
            # that many requests at once): the tick's mean request time stands in until the warm-up has aged out
            young = now_s - self.fresh_since.get(name, -math.inf) < self.summary_window_s
            summary = now.p95_ms if math.isfinite(now.p95_ms) and not young else mean_ms
            p95.append(summary if done else 0.0)
        arrival = max(view.requests_total - previous_requests, 0.0) / dt
        return FleetSignals(now_s=now_s, arrival_qps=arrival, mix_cost_ratio=1.0, node_names=tuple(nodes),
                            throughput_qps=np.array(throughput, dtype=float), p95_ms=np.array(p95, dtype=float),
                            queue_ms=np.array(queue, dtype=float))


class ShedCounter:
    """The requests the balancer shed, counted across the restarts of HAProxy's counter (a reload or a restart of
    the balancer starts it from 0): a reading below the last one is a new counter, counted whole."""

    def __init__(self, total: int = 0, last_seen: int = 0):
        self.total = total
        self.last_seen = last_seen

    def update(self, counter: int | None) -> int:
        """Count a reading of HAProxy's counter (None: no shedding there, nothing counted); the total."""
        if counter is not None:
            self.total += counter - self.last_seen if counter >= self.last_seen else counter
            self.last_seen = counter
        return self.total

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.total, "haproxy_counter": self.last_seen}

    @classmethod
    def from_dict(cls, saved: Mapping[str, object] | None) -> ShedCounter:
        """The counter as :meth:`to_dict` saved it (a restarted controller goes on from it)."""
        saved = saved or {}
        try:
            return cls(int(saved.get("requests") or 0), int(saved.get("haproxy_counter") or 0))
        except (TypeError, ValueError):
            return cls()


def signals_record(signals: FleetSignals | None, problems: Mapping[str, str]) -> dict:
    """The signals of a tick as JSON for the decisions log (rounded)."""
    record: dict = {"unhealthy": dict(problems)}
    if signals is not None:
        record["arrival_qps"] = round(signals.arrival_qps, 2)
        record["nodes"] = {name: {"throughput_qps": round(float(signals.throughput_qps[i]), 2),
                                  "p95_ms": round(float(signals.p95_ms[i]), 3),
                                  "queue_ms": round(float(signals.queue_ms[i]), 3)}
                           for i, name in enumerate(signals.node_names)}
    return record
