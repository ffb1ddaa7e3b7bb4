"""The fault benchmark's accounting (``recforge.tools.fault_bench``): from the valid traffic's request records, the
fleet observations and the fault's timestamps, the figures of one fault run (requests sent and lost, lost by kind,
detection and recovery seconds, p95 before / during / after); the median and min-max of each figure over repeats;
the table. Pure: every time is a number given by the caller (wall-clock seconds), nothing here reads a clock.

Definitions (docs/bench.md, "Fault figures"):

* a request is *lost* when it got no 200 (error kinds: :data:`ERROR_KINDS`);
* the fleet is *full* at an observation when the balancer runs and every node is UP in HAProxy, ready and alive;
* *detection*: the first observation at or after the fault where the victim node is out of rotation in HAProxy
  (node faults) or the balancer's process is gone (balancer faults); the supervisor's own detection is read from
  its log (:func:`supervisor_detection`);
* *recovered at*: the latest of the fault's end (a queue burst lasts; a signal is instant), the start of the last
  run of full observations (through the end), and the send time of the last lost request; the fleet *recovered*
  when that instant exists and the load ran ``settle_s`` past it;
* windows: *before* (ended before the fault), then by send time *during* (up to recovered, or the end; so a
  request in flight at the fault is in it) and *after* (recovered .. end); p95 over the answered requests of a
  window (nearest rank; None without any).
"""

from __future__ import annotations

import calendar
import math
import re
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# the kinds of a lost request: no answer (reset / closed without an answer, refused, client timeout) or an answer
# other than 200
CONNECTION_RESET, CONNECTION_REFUSED, TIMEOUT = "connection_reset", "connection_refused", "timeout"
HTTP_5XX, HTTP_4XX, OTHER = "http_5xx", "http_4xx", "other"
ERROR_KINDS = (CONNECTION_RESET, CONNECTION_REFUSED, TIMEOUT, HTTP_5XX, HTTP_4XX, OTHER)
WINDOWS = ("before", "during", "after")
# what a fault takes away, which its detection watches: a node (out of rotation in HAProxy), the balancer (process
# gone), or nothing (a graceful reload)
WATCH_NODE, WATCH_BALANCER = "node", "balancer"


def kind_of_status(status: int) -> str | None:
    """The error kind of an HTTP answer (None for 200)."""
    if status == 200:
        return None
    if 500 <= status <= 599:
        return HTTP_5XX
    if 400 <= status <= 499:
        return HTTP_4XX
    return OTHER


@dataclass(frozen=True)
class RequestRecord:
    """One valid request: its (scheduled) send time and end time (s), its HTTP status (None: no answer), its error
    kind (None: answered 200) and the node that answered (the balancer's node header)."""

    sent_at: float
    ended_at: float
    status: int | None
    error: str | None
    node: str | None = None

    @property
    def lost(self) -> bool:
        return self.error is not None

    @property
    def latency_ms(self) -> float:
        return (self.ended_at - self.sent_at) * 1000.0


@dataclass(frozen=True)
class FleetObservation:
    """One look at the fleet: the balancer's process alive, the victim node in rotation in HAProxy (None: no victim,
    or HAProxy did not answer), and the whole fleet full (balancer alive, every node UP, ready and alive)."""

    at: float
    full: bool
    balancer_alive: bool
    victim_in_rotation: bool | None = None


@dataclass(frozen=True)
class FaultTimes:
    """When the fault was injected, when the injected condition ended (the same instant for a signal; the burst's
    end for a queue fill), when the load stopped, and the supervisor's detection (from its log; None: none)."""

    fault_at: float
    cleared_at: float
    end_at: float
    supervisor_detected_at: float | None = None


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def detection_at(observations: Iterable[FleetObservation], fault_at: float, watch: str | None) -> float | None:
    """The first observation at or after ``fault_at`` showing what the fault took away (:data:`WATCH_NODE`: the
    victim out of rotation; :data:`WATCH_BALANCER`: the balancer's process gone); None if none did or ``watch`` is
    None."""
    for obs in sorted(observations, key=lambda o: o.at):
        if obs.at < fault_at:
            continue
        if watch == WATCH_NODE and obs.victim_in_rotation is False:
            return obs.at
        if watch == WATCH_BALANCER and not obs.balancer_alive:
            return obs.at
    return None


def full_since(observations: Iterable[FleetObservation], after: float) -> float | None:
    """The start of the last run of full observations at or after ``after`` that lasts to the last observation;
    None when the last observation is not full (or there is none)."""
    since = None
    for obs in sorted(observations, key=lambda o: o.at):
        if obs.at < after:
            continue
        if obs.full:
            since = obs.at if since is None else since
        else:
            since = None
    return since


def recovered_at(records: Iterable[RequestRecord], observations: Iterable[FleetObservation],
                 times: FaultTimes) -> float | None:
    """The instant from which the fleet was full and no request sent was lost (see the module docstring); None when
    the fleet is not full at the last observation."""
    full = full_since(observations, times.fault_at)
    if full is None:
        return None
    lost = [r.sent_at for r in records if r.lost and r.ended_at >= times.fault_at]
    return max([times.cleared_at, full, *lost])


def window_of(record: RequestRecord, fault_at: float, recovered: float | None) -> str:
    if record.ended_at < fault_at:
        return "before"
    if recovered is None or record.sent_at < recovered:
        return "during"
    return "after"


def fault_figures(records: Sequence[RequestRecord], observations: Sequence[FleetObservation], times: FaultTimes, *,
                  watch: str | None, settle_s: float) -> dict[str, Any]:
    """The figures of one fault run (a JSON-ready dict; seconds relative to the fault, latencies in ms)."""
    recovered = recovered_at(records, observations, times)
    ran_past = recovered is not None and times.end_at - recovered >= settle_s
    answered_after = any(not r.lost and recovered is not None and r.sent_at >= recovered for r in records)
    latencies: dict[str, list[float]] = {w: [] for w in WINDOWS}
    counts = {w: 0 for w in WINDOWS}
    lost_by_window = {w: 0 for w in WINDOWS}
    lost_by_kind = {kind: 0 for kind in ERROR_KINDS}
    served: dict[str, int] = {}
    for record in records:
        window = window_of(record, times.fault_at, recovered)
        counts[window] += 1
        if record.lost:
            lost_by_window[window] += 1
            lost_by_kind[record.error if record.error in lost_by_kind else OTHER] += 1
        else:
            latencies[window].append(record.latency_ms)
            if record.node:
                served[record.node] = served.get(record.node, 0) + 1
    detected = detection_at(observations, times.fault_at, watch)

    def since_fault(at: float | None) -> float | None:
        return None if at is None else round(at - times.fault_at, 3)

    lost = sum(lost_by_window.values())
    return {
        "sent": len(records), "lost": lost, "lost_by_kind": lost_by_kind,
        "lost_rate": round(lost / len(records), 5) if records else None,
        "requests": counts, "lost_by_window": lost_by_window,
        "detection_s": since_fault(detected),
        "supervisor_detection_s": since_fault(times.supervisor_detected_at),
        "recovery_s": since_fault(recovered) if ran_past else None,
        "recovered": bool(ran_past and answered_after),
        "fault_duration_s": round(times.cleared_at - times.fault_at, 3),
        "observed_s": round(times.end_at - times.fault_at, 3),
        "p95_ms": {w: None if (v := p95(latencies[w])) is None else round(v, 2) for w in WINDOWS},
        "served_by": dict(sorted(served.items())),
    }


# --------------------------------------------------------------------------------------------------------------
# The supervisor's log

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (WARNING|ERROR) (.*)$")


def supervisor_detection(log_text: str, fault_at: float, subject: str, *, tz_offset_s: float | None = None,
                         ) -> float | None:
    """The time (epoch s) of the supervisor's first WARNING/ERROR line at or after ``fault_at`` naming ``subject``
    (a node name; for the balancer: ``haproxy`` or ``balancer``) as failed / out of rotation / gone. The log's
    timestamps are local time (``logging``'s asctime); ``tz_offset_s`` (seconds east of UTC) converts them,
    default this machine's."""
    subjects = ("haproxy", "balancer") if subject in ("haproxy", "balancer") else (subject,)
    for line in log_text.splitlines():
        match = LOG_LINE.match(line.strip())
        if not match:
            continue
        stamp, millis, _level, message = match.groups()
        text = message.lower()
        if not any(re.search(rf"\b{re.escape(s)}\b", text) for s in subjects):
            continue
        if not any(word in text for word in ("failed", "out of rotation", "gone", "exited", "dead", "down")):
            continue
        parsed = time.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        at = time.mktime(parsed) if tz_offset_s is None else calendar.timegm(parsed) - tz_offset_s
        at += int(millis) / 1000.0
        if at >= fault_at - 0.001:  # the log keeps milliseconds; the fault time more
            return at
    return None


# --------------------------------------------------------------------------------------------------------------
# Repeats

SUMMARY_FIGURES = ("sent", "lost", "detection_s", "supervisor_detection_s", "recovery_s")


def interval(values: Iterable[float | None]) -> dict[str, Any]:
    """Median, min and max of the values that are not None, with how many there were (``n``)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median and min-max over the repeats of one fault (``runs``: their :func:`fault_figures`, each with
    ``hand_started``): every figure of :data:`SUMMARY_FIGURES`, the lost requests per kind, the p95 per window,
    and how many repeats recovered."""
    out: dict[str, Any] = {"repeats": len(runs), "recovered": sum(bool(r["recovered"]) for r in runs),
                           "hand_started": any(bool(r.get("hand_started")) for r in runs)}
    for name in SUMMARY_FIGURES:
        out[name] = interval(r.get(name) for r in runs)
    out["lost_by_kind"] = {kind: interval(r["lost_by_kind"].get(kind, 0) for r in runs) for kind in ERROR_KINDS}
    out["p95_ms"] = {w: interval(r["p95_ms"].get(w) for r in runs) for w in WINDOWS}
    return out


# --------------------------------------------------------------------------------------------------------------
# The table


def format_interval(figure: Mapping[str, Any], digits: int = 1) -> str:
    """``median (min–max)``; one value when all are equal; ``–`` for none."""
    if not figure or figure.get("n", 0) == 0:
        return "–"

    def fmt(value: float) -> str:
        return f"{value:.{digits}f}" if digits else f"{value:.0f}"

    if figure["min"] == figure["max"]:
        return fmt(figure["median"])
    return f"{fmt(figure['median'])} ({fmt(figure['min'])}–{fmt(figure['max'])})"


def lost_kinds(summary: Mapping[str, Any]) -> str:
    """The kinds with lost requests in any repeat, each as its median (min–max)."""
    parts = [f"{kind} {format_interval(fig, 0)}" for kind, fig in summary["lost_by_kind"].items()
             if fig.get("max")]
    return ", ".join(parts) or "none"


def render_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The markdown table of every fault's summary (median (min–max) over the repeats)."""
    lines = ["| fault | recovered | sent | lost | lost by kind | detection s | supervisor detection s | recovery s "
             "| p95 ms before | p95 ms during | p95 ms after | hand-started |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for fault, s in summaries.items():
        lines.append(
            f"| {fault} | {s['recovered']}/{s['repeats']} | {format_interval(s['sent'], 0)} | "
            f"{format_interval(s['lost'], 0)} | {lost_kinds(s)} | {format_interval(s['detection_s'], 2)} | "
            f"{format_interval(s['supervisor_detection_s'], 2)} | {format_interval(s['recovery_s'], 2)} | "
            f"{format_interval(s['p95_ms']['before'])} | {format_interval(s['p95_ms']['during'])} | "
            f"{format_interval(s['p95_ms']['after'])} | {'yes' if s['hand_started'] else 'none'} |")
    return "\n".join(lines) + "\n"
