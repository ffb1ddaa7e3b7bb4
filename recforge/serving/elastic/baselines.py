"""Baseline policies for the elastic benchmark: Kubernetes HPA's documented algorithm (time-scaled) and static
provisioning at the trace's peak or mean.

The HPA law (kubernetes.io, "Horizontal Pod Autoscaling", algorithm details and default behavior; docs/elastic.md):
every sync period (15 s) desired = ceil(ready x current metric / target metric), no change while the ratio is
within the tolerance (0.1); scale-down uses the highest recommendation of the stabilisation window (300 s); scale-up
has no window and at most max(+100 %, +4 pods) per 15 s; scale-down at most -100 % per 15 s. The metric here is
the per-node arrival rate against a target of ``target_utilisation`` x the profile's LBT (a "requests per second
per pod" custom metric: HPA knows neither the query mix nor a node's real speed). Every duration is divided by
``time_scale`` so the law keeps its shape on a compressed trace.
"""

from __future__ import annotations

import math
from collections import deque

from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError
from recforge.serving.elastic.capacity import NodeModel, nodes_for
from recforge.serving.elastic.control import Decision, FleetSignals
from recforge.serving.elastic.traces import Trace

EQUAL_WEIGHT = 100


@typed_config
class HpaConfig:
    """Kubernetes HPA defaults (autoscaling/v2), durations in real seconds before ``time_scale``."""

    target_utilisation: Annotated[float, Field(gt=0, le=1)] = 0.75
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.1
    sync_period_s: Annotated[float, Field(gt=0)] = 15.0
    scale_down_stabilisation_s: Annotated[float, Field(ge=0, le=3600)] = 300.0
    scale_up_stabilisation_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    scale_up_percent: Annotated[float, Field(gt=0)] = 100.0
    scale_up_pods: Annotated[int, Field(ge=1)] = 4
    scale_up_period_s: Annotated[float, Field(gt=0)] = 15.0
    scale_down_percent: Annotated[float, Field(gt=0, le=100)] = 100.0
    scale_down_period_s: Annotated[float, Field(gt=0)] = 15.0
    time_scale: Annotated[float, Field(ge=1)] = 1.0  # durations are divided by this (a compressed trace)
    min_nodes: Annotated[int, Field(ge=1)] = 1
    max_nodes: Annotated[int, Field(ge=1)] = 8

    def __post_init__(self) -> None:
        if self.min_nodes > self.max_nodes:
            raise ConfigError(f"HpaConfig: min_nodes {self.min_nodes} > max_nodes {self.max_nodes}")


def _equal_weights(signals: FleetSignals) -> dict[str, int]:
    return dict.fromkeys(signals.node_names, EQUAL_WEIGHT)


class HpaPolicy:
    """Kubernetes HPA's replica calculation and default behavior, on the per-node arrival rate."""

    name = "hpa"
    adapts_batching = False  # the live controller keeps the deployed batching knobs

    def __init__(self, model: NodeModel, config: HpaConfig | None = None):
        self.model = model
        self.config = config or HpaConfig()
        self.replicas: int | None = None
        self.last_sync: float | None = None
        self.recommendations: deque[tuple[float, int]] = deque()
        self.changes: deque[tuple[float, int]] = deque()  # (time, replicas added (+) or removed (-))
        self.reason = ""

    def _scaled(self, seconds: float) -> float:
        return seconds / self.config.time_scale

    def decide(self, s: FleetSignals) -> Decision:
        c = self.config
        if self.replicas is None:  # the fleet as found; an empty one sized from the metric
            found = len(s.node_names) + s.starting
            initial = found or math.ceil(s.arrival_qps / (c.target_utilisation * self.model.lbt_qps) - 1e-9)
            self.replicas = min(c.max_nodes, max(c.min_nodes, initial))
        if self.last_sync is None or s.now_s - self.last_sync >= self._scaled(c.sync_period_s) - 1e-9:
            self.last_sync = s.now_s
            self._sync(s)
        return Decision(now_s=s.now_s, target_nodes=self.replicas, weights=_equal_weights(s),
                        scale_reason=self.reason, weight_reason="equal weights (HPA does not weight)")

    def _sync(self, s: FleetSignals) -> None:
        c = self.config
        ready = len(s.node_names)
        current = self.replicas
        target_metric = c.target_utilisation * self.model.lbt_qps
        if ready == 0:
            recommendation, why = current, "no ready node: no metric"
        else:
            ratio = (s.arrival_qps / ready) / target_metric
            if abs(ratio - 1.0) <= c.tolerance:
                recommendation, why = current, f"ratio {ratio:.2f} within tolerance {c.tolerance}"
            else:
                recommendation = math.ceil(ready * ratio - 1e-9)
                why = f"ceil({ready} ready x {ratio:.2f}) = {recommendation}"
        recommendation = min(c.max_nodes, max(c.min_nodes, recommendation))
        self.recommendations.append((s.now_s, recommendation))
        horizon = max(self._scaled(c.scale_down_stabilisation_s), self._scaled(c.scale_up_stabilisation_s))
        while self.recommendations and self.recommendations[0][0] < s.now_s - horizon:
            self.recommendations.popleft()
        down_window = [r for t, r in self.recommendations
                       if t >= s.now_s - self._scaled(c.scale_down_stabilisation_s)]
        up_window = [r for t, r in self.recommendations if t >= s.now_s - self._scaled(c.scale_up_stabilisation_s)]
        stabilised = current
        if recommendation > current:
            stabilised = max(current, min(up_window))
        elif recommendation < current:
            stabilised = min(current, max(down_window))
        self.replicas = self._rate_limited(s.now_s, current, stabilised)
        self.reason = f"hpa: {why}; stabilised {stabilised}; replicas {current} -> {self.replicas}"

    def _rate_limited(self, now: float, current: int, wanted: int) -> int:
        c = self.config
        period = max(self._scaled(c.scale_up_period_s), self._scaled(c.scale_down_period_s))
        while self.changes and self.changes[0][0] <= now - period:
            self.changes.popleft()
        if wanted > current:
            added = sum(d for t, d in self.changes if d > 0 and t > now - self._scaled(c.scale_up_period_s))
            start = current - added  # replicas at the start of the period
            limit = max(math.ceil(start * (1 + c.scale_up_percent / 100)), start + c.scale_up_pods)
            new = min(wanted, max(current, limit))
        elif wanted < current:
            removed = -sum(d for t, d in self.changes if d < 0 and t > now - self._scaled(c.scale_down_period_s))
            start = current + removed
            limit = math.ceil(start * (1 - c.scale_down_percent / 100))
            new = max(wanted, min(current, limit))
        else:
            return current
        if new != current:
            self.changes.append((now, new - current))
        return new


class StaticPolicy:
    """A fixed node count (static provisioning): equal weights, no shedding, no batching switch."""

    adapts_batching = False

    def __init__(self, name: str, nodes: int, why: str):
        self.name = name
        self.nodes = nodes
        self.why = why

    def decide(self, s: FleetSignals) -> Decision:
        return Decision(now_s=s.now_s, target_nodes=self.nodes, weights=_equal_weights(s),
                        scale_reason=f"static {self.nodes}: {self.why}", weight_reason="equal weights")


def static_peak(trace: Trace, model: NodeModel, max_nodes: int, utilisation: float = 1.0) -> StaticPolicy:
    """Provisioned for the trace's highest rate at ``utilisation`` x the LBT (at the mix of that moment)."""
    peak_at = int(trace.rate_qps.argmax())
    ratio = model.mix_cost_ratio(trace.bin_sizes, trace.mix_at(peak_at * trace.interval_s))
    per_node = utilisation * model.lbt_at(ratio)
    nodes = min(max_nodes, nodes_for(float(trace.rate_qps[peak_at]), per_node))
    return StaticPolicy("static-peak", nodes, f"peak {trace.rate_qps[peak_at]:.0f} q/s at {per_node:.0f} q/s per "
                                              f"node ({utilisation:.0%} of LBT)")


def static_mean(trace: Trace, model: NodeModel, max_nodes: int, utilisation: float = 1.0) -> StaticPolicy:
    """Provisioned for the trace's mean rate at ``utilisation`` x the LBT (at the trace's mean mix)."""
    ratio = model.mix_cost_ratio(trace.bin_sizes, trace.size_mix.mean(axis=0))
    per_node = utilisation * model.lbt_at(ratio)
    mean = float(trace.rate_qps.mean())
    nodes = min(max_nodes, nodes_for(mean, per_node))
    return StaticPolicy("static-mean", nodes, f"mean {mean:.0f} q/s at {per_node:.0f} q/s per node "
                                              f"({utilisation:.0%} of LBT)")
