"""The canary gate: judge the canary window's figures against the SLO and against the previous version."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]  # why it failed (empty when it passed)
    figures: dict[str, float]
    warnings: list[str] = dataclasses.field(default_factory=list)  # recorded, not a reason to roll back


def gate(figures: Mapping[str, float], p95_slo_ms: float, max_error_rate: float,
         max_p95_regression: float = 0.2) -> GateVerdict:
    """Judge the canary window, like a canary analysis (Kayenta, Flagger): the canary against the SLO *and* against
    the nodes that still serve the previous version, under the same load at the same time.

    * Errors: the load generator's ``error_rate`` through the balancer and the canary's own ``canary_error_rate``
      (Triton's counters) must stay under ``max_error_rate``; no query at all, or no request on the canary, fails.
    * Latency, when the balancer told which node answered each request (:func:`attributed_p95`, exactly over the
      canary window): the canary fails when the p95 of the queries it served (``canary_query_p95_ms``) breaks the
      SLO and its requests' p95 (``canary_request_p95_ms``) is more than ``max_p95_regression`` above that of the
      requests the other nodes answered at the same time (``baseline_request_p95_ms``). A fleet over its SLO
      with or without the canary (an overloaded host, a load set too high) is not the new version's doing: that
      is a warning, and rolling back would not fix it. So is the canary's server-side ``canary_p95_ms``:
      Triton's summary quantiles cover a sliding window that also holds the model's load-time warm-up and the
      smoke test (a just-loaded version measured 144 ms there while its queries had 25 ms).
    * A crash of the canary node during the window (``canary_crashes``: its process changed or is gone) fails it.
    * Without attribution (a balancer of an older release), the whole fleet's ``p95_ms`` and the canary's
      server-side ``canary_p95_ms`` are judged against the SLO.
    """
    reasons, warnings = [], []
    crashes = int(figures.get("canary_crashes", 0) or 0)
    if crashes:  # whatever the latencies: a version under which a node dies is not promoted
        reasons.append(f"the canary node crashed {crashes} time(s) during the canary window (restarted by the "
                       "fleet's supervisor; `python -m recforge.serving.fleet crashes` lists the requests on it)")

    def value(key: str) -> float:
        return float(figures.get(key, math.nan))

    if figures.get("queries", 0) <= 0:
        reasons.append("the load generator completed no queries")
    fleet_p95, canary_q = value("p95_ms"), value("canary_query_p95_ms")
    canary_r, baseline_r = value("canary_request_p95_ms"), value("baseline_request_p95_ms")
    if math.isnan(fleet_p95):
        reasons.append("no p95 measured through the balancer")
    if math.isnan(canary_q):  # no attribution: the whole fleet's view decides
        if fleet_p95 > p95_slo_ms:
            reasons.append(f"p95 through the balancer {fleet_p95:.1f} ms > SLO {p95_slo_ms:.1f} ms")
    else:
        slower = canary_r / baseline_r - 1  # NaN without a baseline: the SLO alone decides
        versus = (f"; its requests {canary_r:.1f} ms at p95 against {baseline_r:.1f} ms on the previous version "
                  f"({slower:+.0%})") if not math.isnan(slower) else ""
        if canary_q > p95_slo_ms and not slower <= max_p95_regression:
            reasons.append(f"p95 of the queries the canary served {canary_q:.1f} ms > SLO {p95_slo_ms:.1f} ms"
                           + versus)
        elif canary_q > p95_slo_ms:
            warnings.append(f"p95 of the queries the canary served {canary_q:.1f} ms > SLO {p95_slo_ms:.1f} ms, "
                            f"but the previous version is as slow under the same load{versus}: the fleet is over "
                            "its SLO with or without the new version")
        elif slower > max_p95_regression:
            warnings.append(f"the canary is slower than the previous version{versus}, within the SLO "
                            f"{p95_slo_ms:.1f} ms")
        if fleet_p95 > p95_slo_ms and not reasons:
            warnings.append(f"p95 through the balancer {fleet_p95:.1f} ms > SLO {p95_slo_ms:.1f} ms (whole fleet)")
    canary_p95 = value("canary_p95_ms")
    if canary_p95 > p95_slo_ms:
        text = f"canary p95 (Triton) {canary_p95:.1f} ms > SLO {p95_slo_ms:.1f} ms"
        if math.isnan(canary_q):
            reasons.append(text)
        else:  # Triton's summary is a sliding window that also holds the load-time warm-up and the smoke test
            warnings.append(text + " (server-side sliding window, warm-up and smoke test included)")
    for key, label in (("error_rate", "error rate through the balancer"), ("canary_error_rate", "canary error rate")):
        rate = value(key)
        if not math.isnan(rate) and rate > max_error_rate:
            reasons.append(f"{label} {rate:.4f} > max {max_error_rate:.4f}")
    if figures.get("canary_requests", 1) <= 0:
        reasons.append("the canary served no requests during the canary window")
    return GateVerdict(passed=not reasons, reasons=reasons, figures=dict(figures), warnings=warnings)


def attributed_p95(result: Any, requests: Sequence[tuple[str | None, float]], canary_node: str) -> dict[str, float]:
    """The canary window's latencies by the node that answered (``recforge.contracts.headers.NODE_HEADER``):

    * ``canary_query_p95_ms`` / ``canary_queries``: queries with a sub-batch on ``canary_node`` (what its users
      felt, the SLO's unit);
    * ``canary_request_p95_ms`` / ``baseline_request_p95_ms`` (and counts): single requests answered by the canary
      and by the other nodes, side by side under the same load (a query of many sub-batches nearly always touches
      the canary, so queries alone leave too few to compare with).
    NaN where nothing was named or counted."""
    def p95(latencies: Any) -> float:
        return float(np.percentile(latencies, 95)) if len(latencies) else math.nan

    canary_q = result.latencies_by(lambda served: canary_node in served)
    canary_r = [ms for node, ms in requests if node == canary_node]
    baseline_r = [ms for node, ms in requests if node is not None and node != canary_node]
    return {"canary_query_p95_ms": p95(canary_q), "canary_queries": float(len(canary_q)),
            "canary_request_p95_ms": p95(canary_r), "canary_request_count": float(len(canary_r)),
            "baseline_request_p95_ms": p95(baseline_r), "baseline_request_count": float(len(baseline_r))}

