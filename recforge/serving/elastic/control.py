"""The fleet controller's control law as a pure function of what it is told: per tick it takes the fleet's signals
(arrival rate, query-size mix, per-node throughput / p95 / queue time) and returns a :class:`Decision` (target
node count, HAProxy weights, drained nodes, batching mode, admission shedding), each part with its reason.

No I/O and no clock: the caller passes the time in the signals. The law (docs/elastic.md states it with its
parameters):

- capacity: a node carries LBT(mix) x c_i queries/s, LBT(mix) from the profile (``capacity.NodeModel``) and c_i an
  EWMA of the node's delivered / predicted capacity (read from its throughput and p95 through the profile's
  latency-utilisation curve);
- scale: per node = target_utilisation x mean c x LBT(mix); up at once to ceil(forecast / per node), forecast =
  level + rising trend x node start delay, level = the smoothed rate, or the raw arrival rate when it exceeds the
  smoothed one by ``panic_ratio`` (a burst); down only to the largest of ceil(smoothed rate / (per node x (1 -
  ``scale_down_tolerance``))) over the last ``scale_down_window_s``, at most ``scale_down_step`` of the nodes per
  tick;
- weights proportional to c_i; a node whose c_i is below ``drain_below`` both of its profile and of the median c
  of its peers (the other ready nodes), or whose p95 exceeds ``drain_p95_factor`` x both the SLO and its peers'
  median p95 for ``drain_after_ticks`` ticks, gets weight 0 (drained) and is replaced. Both bounds, because a node
  is degraded when it is slower than its profile *and* than its peers: a whole fleet slower than its profile (nodes
  sharing a CPU at the peak) or overloaded is the capacity model's and the admission's matter, and a c_i that is
  only low next to a peer's (a lightly weighted node's estimate) is noise for the weights to absorb; draining
  healthy nodes only cuts capacity. A lone node has no peers and is never drained by the law. Weights that follow
  c_i equalise the nodes' utilisation only when c_i is right: a node whose c_i is too low carries too little to be
  measured again and would stay weighed down, so while its peers are measured and it is not, its c_i relaxes
  toward its measured peers' median c with time constant ``unmeasured_relax_s`` (not below ``drain_below``: a
  degraded node's estimate stays where the measurements left it);
- batching: throughput-optimal above ``batching_high`` fleet utilisation, latency-optimal below ``batching_low``;
- admission: shed 1 - carryable / arrival when the ready nodes cannot carry the arrivals at their LBT and serve
  what is queued on them within ``queue_drain_s``; and, between ticks, the balancer answers 503 at once to a
  request that would wait more than ``admission_queue_ms`` at its node (HAProxy's per-server ``maxqueue``);
- re-profile flag: a node whose c_i, after ``reprofile_after`` informative measurements, lies outside
  [``reprofile_low``, ``reprofile_high``] does not deliver what its profile predicts (the band Nexus re-plans on):
  the decision names it, so the next nightly profiling can be asked for (nothing is changed by the flag).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError
from recforge.inference.serving_config import LATENCY_MODE, THROUGHPUT_MODE  # the modes a node's knobs switch between
from recforge.serving.elastic.capacity import NodeModel

HAPROXY_MAX_WEIGHT = 256


@dataclass(frozen=True)
class FleetSignals:
    """What the controller sees at one tick. Per-node arrays are aligned with ``node_names`` (ready nodes)."""

    now_s: float
    arrival_qps: float
    mix_cost_ratio: float  # cost of the live query mix relative to the profile's (capacity.NodeModel)
    node_names: tuple[str, ...]
    throughput_qps: np.ndarray
    p95_ms: np.ndarray
    queue_ms: np.ndarray
    starting: int = 0  # nodes asked for and not ready yet


@dataclass(frozen=True)
class Decision:
    """What to do now, and why."""

    now_s: float
    target_nodes: int
    weights: dict[str, int] = field(default_factory=dict)  # HAProxy weights of the ready nodes; 0 = drained
    drained: tuple[str, ...] = ()
    batching: str = LATENCY_MODE
    shed_fraction: float = 0.0
    max_queue_ms: float | None = None  # admission at the balancer: 503 at once for a longer wait; None: no bound
    scale_reason: str = ""
    weight_reason: str = ""
    batching_reason: str = ""
    shed_reason: str = ""
    reprofile: dict[str, float] = field(default_factory=dict)  # node -> delivered / predicted capacity, out of band
    reprofile_reason: str = ""

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r for r in (self.scale_reason, self.weight_reason, self.batching_reason, self.shed_reason,
                                 self.reprofile_reason) if r)


class Policy(Protocol):
    """A scaling policy: one decision per tick (the RecForge controller, the HPA law, static provisioning)."""

    name: str
    adapts_batching: bool  # whether the live controller applies its batching mode (a baseline keeps the deployed)

    def decide(self, signals: FleetSignals) -> Decision: ...


@typed_config
class ControlConfig:
    """Parameters of the control law (docs/elastic.md compares them with HPA's, Knative's and Ray Serve's)."""

    slo_p95_ms: Annotated[float, Field(gt=0)] = 25.0
    min_nodes: Annotated[int, Field(ge=1)] = 1
    max_nodes: Annotated[int, Field(ge=1)] = 8  # at most the machine's CPUs / cores per node (max_nodes_for_cpus)
    target_utilisation: Annotated[float, Field(gt=0, le=1)] = 0.85  # of LBT(mix): headroom for noise and trends
    rate_smoothing_s: Annotated[float, Field(ge=0, le=60)] = 3.0  # EWMA time constant of the arrival rate
    trend_window_s: Annotated[float, Field(gt=0, le=300)] = 30.0  # least-squares slope of the smoothed rate
    start_delay_s: Annotated[float, Field(ge=0, le=600)] = 15.0  # forecast horizon: how long a node takes to start
    panic_ratio: Annotated[float, Field(gt=1)] = 1.3  # a raw rate this far above the smoothed one is a burst
    scale_down_window_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    scale_down_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.1  # keep this headroom before removing a node
    scale_down_step: Annotated[float, Field(gt=0, le=1)] = 0.1  # most of the nodes removed per tick
    correction_alpha: Annotated[float, Field(gt=0, le=1)] = 0.2  # EWMA weight of a new capacity measurement
    correction_min: Annotated[float, Field(gt=0, le=1)] = 0.1
    correction_max: Annotated[float, Field(ge=1, le=4)] = 1.5
    # time constant of an unmeasured c_i's pull toward its measured peers' median (the weights' feedback loop)
    unmeasured_relax_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    min_measured_load: Annotated[float, Field(ge=0, le=1)] = 0.3  # measure c_i only above this share of saturation
    drain_below: Annotated[float, Field(ge=0, lt=1)] = 0.4  # of the profile and of the peers' median correction
    drain_p95_factor: Annotated[float, Field(gt=1)] = 2.0
    drain_after_ticks: Annotated[int, Field(ge=1)] = 5
    batching_high: Annotated[float, Field(gt=0, le=1.5)] = 0.8
    batching_low: Annotated[float, Field(gt=0, le=1.5)] = 0.6
    shed_above: Annotated[float, Field(gt=0, le=2)] = 1.0  # shed what exceeds this multiple of the ready LBT
    queue_drain_s: Annotated[float, Field(gt=0, le=60)] = 2.0  # queued queries are to be served within this
    # a longer wait at a node: 503 + Retry-After at once; about the SLO less the profile's p95 at its last steady
    # load point (25 - 20.7 ms for the fleet's DLRM profile)
    admission_queue_ms: Annotated[float, Field(gt=0)] = 5.0
    reprofile_low: Annotated[float, Field(gt=0, le=1)] = 0.8  # c_i below this: the profile overstates the node
    reprofile_high: Annotated[float, Field(ge=1, le=4)] = 1.1  # above this: it understates it
    reprofile_after: Annotated[int, Field(ge=1, le=100_000)] = 10  # informative measurements of c_i before a flag

    def __post_init__(self) -> None:
        if self.min_nodes > self.max_nodes:
            raise ConfigError(f"ControlConfig: min_nodes {self.min_nodes} > max_nodes {self.max_nodes}")
        if self.batching_low >= self.batching_high:
            raise ConfigError(f"ControlConfig: batching_low {self.batching_low} must be below batching_high "
                              f"{self.batching_high} (the switch's hysteresis band)")


def max_nodes_for_cpus(cpus: int, cores_per_node: float) -> int:
    """The most nodes of ``cores_per_node`` cores (a CPU quota may be a fraction of a core) a machine of ``cpus``
    CPUs holds (at least 1)."""
    if cores_per_node <= 0:
        raise ConfigError(f"cores_per_node must be > 0, got {cores_per_node}")
    return max(1, math.floor(cpus / cores_per_node + 1e-9))


def peer_median(values: np.ndarray) -> np.ndarray:
    """For each element, the median of the others (NaN for a lone element: no peers, so every comparison with
    them is false). One sort, O(n log n): the simulator's fleets have 1,000 nodes, every tick."""
    n = len(values)
    if n < 2:
        return np.full(n, np.nan)
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    # the others, sorted, are ``ranked`` without position rank[i]: their j-th is ranked[j] below it, ranked[j + 1]
    # from it on; their median is the mean of their ((n - 2) // 2)-th and ((n - 1) // 2)-th
    low, high = (n - 2) // 2, (n - 1) // 2
    return (np.where(low < rank, ranked[low], ranked[low + 1])
            + np.where(high < rank, ranked[high], ranked[high + 1])) / 2


class NodeCorrections:
    """Per-node EWMA of delivered / predicted capacity, the informative measurements it rests on and consecutive
    slow ticks, kept aligned with the node list (re-aligned by name only when it changes)."""

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.factor = np.ones(0)
        self.measured = np.zeros(0, dtype=int)
        self.slow_ticks = np.zeros(0, dtype=int)

    def align(self, names: tuple[str, ...]) -> None:
        if names is self.names or names == self.names:
            self.names = names
            return
        old = {name: i for i, name in enumerate(self.names)}
        index = np.array([old.get(name, -1) for name in names], dtype=int)
        known = index >= 0
        factor, measured, slow = np.ones(len(names)), np.zeros(len(names), dtype=int), np.zeros(len(names), dtype=int)
        factor[known], slow[known] = self.factor[index[known]], self.slow_ticks[index[known]]
        measured[known] = self.measured[index[known]]
        self.names, self.factor, self.measured, self.slow_ticks = names, factor, measured, slow

    def out_of_band(self, low: float, high: float, after: int) -> dict[str, float]:
        """The nodes measured at least ``after`` times whose factor lies outside [low, high], with the factor."""
        out = (self.measured >= after) & ((self.factor < low) | (self.factor > high))
        return {self.names[i]: round(float(self.factor[i]), 3) for i in np.flatnonzero(out)}


class ElasticController:
    """RecForge's controller: the control law of the module docstring, with its state between ticks."""

    name = "recforge"
    adapts_batching = True  # the live controller switches the nodes' batching mode as this law decides

    def __init__(self, model: NodeModel, config: ControlConfig | None = None):
        self.model = model
        self.config = config or ControlConfig()
        self.corrections = NodeCorrections()
        self.rate: float | None = None
        self.last_s: float | None = None
        self.rate_history: deque[tuple[float, float]] = deque()
        self.desired_history: deque[tuple[float, int]] = deque()
        self.mode = LATENCY_MODE

    # --- capacity ---------------------------------------------------------------------------------------------
    def _measure(self, s: FleetSignals) -> None:
        """Update each node's correction from its throughput and p95 (docs/elastic.md, "capacity model")."""
        c = self.config
        gain = self.model.batching_gain if self.mode == THROUGHPUT_MODE else 1.0
        delay = self.model.batching_delay_ms if self.mode == THROUGHPUT_MODE else 0.0
        saturation = self.model.saturation_at(s.mix_cost_ratio) * gain
        observed = s.throughput_qps / saturation  # utilisation if the node were as fast as profiled
        service_p95 = np.maximum(s.p95_ms - s.queue_ms - delay, 1e-6)
        effective = self.model.rho_for_p95(service_p95)  # the utilisation its latency shows
        saturated = s.queue_ms > c.slo_p95_ms / 2
        measured = np.where(saturated, observed, observed / np.maximum(effective, 1e-6))
        informative = saturated | ((observed >= c.min_measured_load) & (service_p95 > self.model.flat_p95_ms * 1.05))
        measured = np.clip(measured, c.correction_min, c.correction_max)
        f = self.corrections.factor
        f[:] = np.where(informative, (1 - c.correction_alpha) * f + c.correction_alpha * measured, f)
        self.corrections.measured += informative
        # the weights follow c: a node whose c is too low is sent too little to be measured again, so while its
        # peers are measured and it is not, its c relaxes toward theirs (not a c under drain_below: degraded)
        unmeasured = ~informative & (f >= c.drain_below)
        if informative.any() and unmeasured.any() and self.last_s is not None:
            keep = math.exp(-max(s.now_s - self.last_s, 0.0) / c.unmeasured_relax_s)
            measured_median = float(np.median(f[informative]))  # an unmeasured node's measured peers: all of them
            f[:] = np.where(unmeasured, measured_median + (f - measured_median) * keep, f)
        # slow: over drain_p95_factor x the SLO and x its peers' p95 (when every node is that slow, it is overload:
        # the scale and admission parts' matter, not a degraded node)
        slow = (s.p95_ms > c.drain_p95_factor * c.slo_p95_ms) & (s.p95_ms > c.drain_p95_factor * peer_median(s.p95_ms))
        self.corrections.slow_ticks[:] = np.where(slow, self.corrections.slow_ticks + 1, 0)

    def _smoothed_rate(self, s: FleetSignals) -> tuple[float, float]:
        """(EWMA of the arrival rate, its rising trend: the least-squares slope of the EWMA over
        ``trend_window_s``, in q/s per s; a long window keeps noise out of the forecast, bursts have the panic
        path)."""
        c = self.config
        if self.rate is None or self.last_s is None:
            self.rate = s.arrival_qps
        else:
            dt = max(s.now_s - self.last_s, 0.0)
            keep = math.exp(-dt / c.rate_smoothing_s) if c.rate_smoothing_s > 0 else 0.0
            self.rate = keep * self.rate + (1 - keep) * s.arrival_qps
        self.last_s = s.now_s
        self.rate_history.append((s.now_s, self.rate))
        while self.rate_history and self.rate_history[0][0] < s.now_s - c.trend_window_s:
            self.rate_history.popleft()
        if len(self.rate_history) < 3:
            return self.rate, 0.0
        times, rates = np.array(self.rate_history).T
        spread = times - times.mean()
        trend = float(spread @ (rates - rates.mean()) / (spread @ spread)) if spread.any() else 0.0
        return self.rate, max(trend, 0.0)

    # --- the decision -----------------------------------------------------------------------------------------
    def decide(self, s: FleetSignals) -> Decision:
        c = self.config
        self.corrections.align(s.node_names)
        self._measure(s)
        factor = self.corrections.factor
        slower = (factor < c.drain_below) & (factor < c.drain_below * peer_median(factor))
        drained_mask = slower | (self.corrections.slow_ticks >= c.drain_after_ticks)
        healthy = ~drained_mask
        lbt = self.model.lbt_at(s.mix_cost_ratio)
        mean_factor = float(factor[healthy].mean()) if healthy.any() else 1.0
        per_node = lbt * mean_factor * c.target_utilisation
        rate, trend = self._smoothed_rate(s)
        level = s.arrival_qps if s.arrival_qps > c.panic_ratio * rate else rate
        forecast = level + trend * c.start_delay_s
        desired_up = math.ceil(forecast / per_node - 1e-9)
        desired_down = math.ceil(rate / (per_node * (1 - c.scale_down_tolerance)) - 1e-9)
        target, scale_reason = self._scale(s, desired_up, desired_down, forecast, per_node, int(drained_mask.sum()))

        # what the ready nodes carry at their LBT, less what it takes to serve their queues within queue_drain_s
        queued = float((s.queue_ms[healthy] / 1000.0 * s.throughput_qps[healthy]).sum())
        carryable = max(0.0, float((lbt * factor[healthy]).sum()) * c.shed_above - queued / c.queue_drain_s)
        weights, weight_reason = self._weights(s, factor, drained_mask)
        mode, batching_reason = self._batching(s.arrival_qps, float((lbt * factor[healthy]).sum()))
        shed, shed_reason = 0.0, ""
        if s.arrival_qps > carryable:
            shed = 1.0 - carryable / s.arrival_qps if carryable > 0 else 1.0
            shed_reason = (f"shed {shed:.1%}: arrivals {s.arrival_qps:.0f} q/s > {carryable:.0f} q/s the "
                           f"{int(healthy.sum())} ready node(s) carry at LBT with {queued:.0f} queued; "
                           f"{s.starting} starting")
        reprofile = self.corrections.out_of_band(c.reprofile_low, c.reprofile_high, c.reprofile_after)
        reprofile_reason = ""
        if reprofile:
            nodes = ", ".join(f"{name} {value:.2f}x" for name, value in reprofile.items())
            reprofile_reason = (f"re-profile: live capacity {nodes} the profile's prediction (band "
                                f"[{c.reprofile_low:g}, {c.reprofile_high:g}])")
        return Decision(now_s=s.now_s, target_nodes=target, weights=weights,
                        drained=tuple(s.node_names[i] for i in np.flatnonzero(drained_mask)),
                        batching=mode, shed_fraction=shed, max_queue_ms=c.admission_queue_ms,
                        scale_reason=scale_reason, weight_reason=weight_reason,
                        batching_reason=batching_reason, shed_reason=shed_reason, reprofile=reprofile,
                        reprofile_reason=reprofile_reason)

    def _scale(self, s: FleetSignals, desired_up: int, desired_down: int, forecast: float, per_node: float,
               drained: int) -> tuple[int, str]:
        c = self.config
        current = len(s.node_names) - drained + s.starting  # nodes serving or about to; drained ones are replaced
        desired_up = min(c.max_nodes, max(c.min_nodes, desired_up))
        desired_down = min(c.max_nodes, max(c.min_nodes, desired_down))  # the window holds what can be asked for
        self.desired_history.append((s.now_s, max(desired_down, desired_up)))
        while self.desired_history and self.desired_history[0][0] < s.now_s - c.scale_down_window_s:
            self.desired_history.popleft()
        need = f"forecast {forecast:.0f} q/s / {per_node:.0f} q/s per node = {desired_up}"
        if desired_up > current:
            target, reason = desired_up, f"scale up {current} -> {desired_up}: {need}"
        else:
            window_max = max(d for _, d in self.desired_history)
            floor = current - max(1, math.floor(current * c.scale_down_step))
            target = min(current, max(window_max, floor, c.min_nodes))
            reason = (f"scale down {current} -> {target}: {need}, the most of the last "
                      f"{c.scale_down_window_s:.0f} s is {window_max}" if target < current else
                      f"hold {current}: {need}, the most of the last {c.scale_down_window_s:.0f} s is {window_max}")
        target = min(c.max_nodes, max(c.min_nodes, target))
        return target, reason

    def _weights(self, s: FleetSignals, factor: np.ndarray, drained: np.ndarray) -> tuple[dict[str, int], str]:
        if not s.node_names:
            return {}, ""
        top = float(factor[~drained].max()) if (~drained).any() else 1.0
        raw = np.where(drained, 0, np.maximum(1, np.round(HAPROXY_MAX_WEIGHT / 2 * factor / top))).astype(int)
        weights = dict(zip(s.node_names, raw.tolist(), strict=True))
        slow = [f"{s.node_names[i]} x{factor[i]:.2f}" for i in np.flatnonzero(drained | (factor < 0.9))]
        reason = "weights follow measured capacity" + (f"; slow/drained: {', '.join(slow[:5])}" if slow else "")
        return weights, reason

    def _batching(self, arrival: float, capacity: float) -> tuple[str, str]:
        c = self.config
        if capacity <= 0:
            return self.mode, f"stay {self.mode}-optimal batching: no ready node to measure load on"
        load = arrival / capacity
        before = self.mode
        if self.mode == LATENCY_MODE and load > c.batching_high:
            self.mode = THROUGHPUT_MODE
        elif self.mode == THROUGHPUT_MODE and load < c.batching_low:
            self.mode = LATENCY_MODE
        verb = "switch to" if self.mode != before else "stay"
        return self.mode, (f"{verb} {self.mode}-optimal batching: load {load:.2f} of LBT "
                           f"(band {c.batching_low:.2f}..{c.batching_high:.2f})")
