"""A discrete-event simulator of the fleet (balancer + nodes) driven by a trace and a policy, and its CLI:
``python -m recforge.serving.elastic.simulate --trace diurnal --nodes 100 --policy all``.

SimPy processes: the fleet's step every ``tick_s`` (arrivals, service, then the policy's decision), each node's
start (ready after ``start_delay_s``), and an optional fault (one node slowed at a time). Requests are
aggregated, not simulated one by one (a 24 h day at 1,000 nodes is ~10^10 queries): each step draws the fleet's
Poisson arrivals, sheds the decided fraction, splits the rest over the nodes by their weights (multinomial), and
serves each node as a fluid queue of capacity saturation(mix) x speed x batching gain; what waits longer than
``queue_timeout_s`` fails. A node-step's latency is lognormal with the profile curve's p95/p99 at the node's
utilisation (``capacity.NodeModel``) shifted by its mean queue wait (and the batching delay), which gives the
expected share of its requests over the SLO. Events at the same time run in the order they were scheduled (a node
that became ready at t serves the step at t).

Reported per policy (``report.PolicyReport``): % of 1-minute windows whose p95 is within the SLO (a window passes
when <= 5 % of its admitted requests are over the SLO or failed), % of requests over the SLO (failed ones
included), shed and failed requests, node-seconds, scale reversals per hour, and seconds to recover after each
burst.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import simpy

from recforge.contracts.profile import read_profile
from recforge.core.cli import run_step
from recforge.core.config import Annotated, Field, recforge_home, typed_config
from recforge.core.errors import ConfigError
from recforge.serving.elastic import report, traces
from recforge.serving.elastic.baselines import HpaConfig, HpaPolicy, static_mean, static_peak
from recforge.serving.elastic.capacity import NodeModel, share_over
from recforge.serving.elastic.control import (
    LATENCY_MODE,
    THROUGHPUT_MODE,
    ControlConfig,
    Decision,
    ElasticController,
    FleetSignals,
    Policy,
)

STARTING, READY, REMOVING, STANDBY = 0, 1, 2, 3
POLICIES = ("static-peak", "static-mean", "hpa", "recforge")


@typed_config
class SimConfig:
    """The simulated fleet's physics."""

    tick_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    start_delay_s: Annotated[float, Field(ge=0, le=3600)] = 15.0  # process start + model load + warm-up
    warm_standby: Annotated[int, Field(ge=0)] = 0  # started nodes kept idle, activated at once (counted in cost)
    queue_timeout_s: Annotated[float, Field(gt=0)] = 2.0  # HAProxy's timeout queue: longer waits fail
    window_s: Annotated[float, Field(gt=0)] = 60.0
    recovery_hold_s: Annotated[float, Field(ge=0)] = 10.0  # recovered: p95 under the SLO for this long
    seed: int = 0
    slow_node_at_s: float | None = None  # fault: one serving node slowed to slow_node_speed from this time
    slow_node_speed: Annotated[float, Field(gt=0, le=1)] = 0.5


class FleetSimulator:
    """One run of a policy over a trace (:meth:`run`)."""

    def __init__(self, trace: traces.Trace, model: NodeModel, policy: Policy, config: SimConfig | None = None):
        self.trace, self.model, self.policy = trace, model, policy
        self.config = config or SimConfig()
        self.rng = np.random.default_rng(self.config.seed)
        self.state = np.zeros(0, dtype=int)
        self.speed = np.zeros(0)
        self.backlog = np.zeros(0)
        self.weight = np.zeros(0)
        self.names = np.zeros(0, dtype=object)
        self.next_id = 0
        self.mode = LATENCY_MODE
        self.shed_fraction = 0.0
        self.max_queue_ms: float | None = None
        self.env = simpy.Environment()
        self.ids = np.zeros(0, dtype=int)
        self.serving_names: tuple[str, ...] = ()
        self.serving_index = np.zeros(0, dtype=int)
        self.targets: list[int] = []
        self.bin_sizes = trace.bin_sizes
        self.bounded_p95, self.bounded_p99 = (float(x) for x in model.latency_ms(model.curve_rho[-1]))
        self.mix_ratios: dict[int, float] = {}

    # --- fleet membership ----------------------------------------------------------------------------------------
    def _node_start(self, node_id: int) -> Generator[simpy.Event, None, None]:
        """A SimPy process: node ``node_id`` is ready after the start delay (unless cancelled meanwhile)."""
        yield self.env.timeout(self.config.start_delay_s)
        found = np.flatnonzero(self.ids == node_id)
        if found.size == 0 or self.state[found[0]] != STARTING:
            return
        index = found[0]
        if self.serving_index.size:  # until the policy weights it: a typical share
            self.weight[index] = float(np.median(self.weight[self.serving_index]))
        self.state[index] = READY
        self._membership_changed()

    def _fault(self, at_s: float) -> Generator[simpy.Event, None, None]:
        """A SimPy process: one serving node slows to ``slow_node_speed`` at ``at_s``."""
        yield self.env.timeout(at_s)
        if self.serving_index.size:
            self.speed[self.serving_index[0]] = self.config.slow_node_speed

    def _steps(self, acc: report.Accumulator) -> Generator[simpy.Event, None, None]:
        """A SimPy process: the fleet's service step and the policy's decision every ``tick_s``."""
        while True:
            signals = self._serve(self.env.now, acc)
            self._apply(self.policy.decide(signals))
            self._drop_removed()
            yield self.env.timeout(self.config.tick_s)

    def _add_nodes(self, count: int, state: int) -> None:
        if count <= 0:
            return
        new_ids = np.arange(self.next_id, self.next_id + count)
        self.ids = np.concatenate([self.ids, new_ids])
        self.state = np.concatenate([self.state, np.full(count, state)])
        self.speed = np.concatenate([self.speed, np.ones(count)])
        self.backlog = np.concatenate([self.backlog, np.zeros(count)])
        self.weight = np.concatenate([self.weight, np.ones(count)])
        self.names = np.concatenate([self.names, np.array([f"node{self.next_id + k}" for k in range(count)],
                                                          dtype=object)])
        self.next_id += count
        if state == STARTING:
            for node_id in new_ids:
                self.env.process(self._node_start(int(node_id)))

    def _membership_changed(self) -> None:
        self.serving_index = np.flatnonzero(self.state == READY)
        self.serving_names = tuple(self.names[self.serving_index])

    def _drop_removed(self) -> None:
        """Forget nodes that finished draining (keeps the arrays the size of the live fleet)."""
        gone = (self.state == REMOVING) & (self.backlog <= 1e-9)
        if not gone.any():
            return
        keep = ~gone
        self.ids, self.state, self.speed = self.ids[keep], self.state[keep], self.speed[keep]
        self.backlog, self.weight = self.backlog[keep], self.weight[keep]
        self.names = self.names[keep]
        self._membership_changed()

    def _scale_to(self, decision: Decision) -> None:
        if decision.drained:
            drained = np.isin(self.names, decision.drained) & (self.state == READY)
            self.state[drained], self.weight[drained] = REMOVING, 0.0
        serving = int(((self.state == READY) | (self.state == STARTING)).sum())
        target = decision.target_nodes
        if serving < target:
            standby = np.flatnonzero(self.state == STANDBY)[: target - serving]  # activated at once
            self.state[standby] = READY
            self._add_nodes(target - serving - standby.size, STARTING)
            serving = target
        if serving > target:
            starting = np.flatnonzero(self.state == STARTING)[::-1]  # cancel the newest starts first
            ready = np.flatnonzero(self.state == READY)
            ready = ready[np.argsort(self.weight[ready], kind="stable")]  # the least capable go first
            for i in [*starting, *ready][: serving - target]:
                self.state[i], self.weight[i] = REMOVING, 0.0
        self._add_nodes(self.config.warm_standby - int((self.state == STANDBY).sum()), STANDBY)
        self._membership_changed()

    # --- one step ----------------------------------------------------------------------------------------------
    def _mix_ratio(self, now: float) -> float:
        """The query mix's cost ratio (capacity.NodeModel.mix_cost_ratio), once per mix interval."""
        index = int(now // self.trace.mix_interval_s)
        if index not in self.mix_ratios:
            self.mix_ratios[index] = self.model.mix_cost_ratio(self.bin_sizes, self.trace.mix_at(now))
        return self.mix_ratios[index]

    def _serve(self, now: float, acc: report.Accumulator) -> FleetSignals:
        c, dt = self.config, self.config.tick_s
        rate = self.trace.rate_at(now)
        ratio = self._mix_ratio(now)
        arrivals = int(self.rng.poisson(rate * dt))
        shed = int(self.rng.binomial(arrivals, self.shed_fraction)) if self.shed_fraction > 0 else 0
        admitted = arrivals - shed
        live = np.flatnonzero((self.state == READY) | (self.state == REMOVING))
        weights = np.where(self.state[live] == READY, self.weight[live], 0.0)
        failed, over = 0.0, 0.0
        per_node = np.zeros(live.size)
        if weights.sum() > 0:
            per_node = self.rng.multinomial(admitted, weights / weights.sum()).astype(float)
        else:
            failed += admitted
        throughput_mode = self.mode == THROUGHPUT_MODE
        gain = self.model.batching_gain if throughput_mode else 1.0
        delay_ms = self.model.batching_delay_ms if throughput_mode else 0.0
        capacity = self.model.saturation_at(ratio) * self.speed[live] * gain * dt  # queries per step
        before = self.backlog[live]
        total = before + per_node
        after = total - np.minimum(total, capacity)
        if self.max_queue_ms is not None:  # the balancer's admission: 503 at once rather than a long wait
            turned_away = np.maximum(after - capacity / dt * self.max_queue_ms / 1000.0, 0.0)
            after -= turned_away
            per_node = per_node - turned_away
            shed += float(turned_away.sum())
        dropped = np.maximum(after - capacity / dt * c.queue_timeout_s, 0.0)
        after -= dropped
        failed += float(dropped.sum())
        self.backlog[live] = after
        wait_ms = 1000.0 * dt * (before + after) / 2 / np.maximum(capacity, 1e-9)
        rho = np.minimum(per_node / np.maximum(capacity, 1e-9), 1.0)
        p95, p99 = self.model.latency_ms(rho)
        if self.max_queue_ms is not None:  # with a bounded queue, queueing adds at most the bound
            p95 = np.minimum(p95, self.bounded_p95 + self.max_queue_ms)
            p99 = np.minimum(p99, self.bounded_p99 + self.max_queue_ms)
        p95, p99 = p95 / self.speed[live], p99 / self.speed[live]  # a slower node serves each query slower
        over_share = share_over(self.model.slo_p95_ms - wait_ms - delay_ms, p95, p99)
        over = float((over_share * np.maximum(per_node - dropped, 0.0)).sum())
        allocated = int((self.state != REMOVING).sum() + ((self.state == REMOVING) & (self.backlog > 0)).sum())
        acc.step(now, arrivals, shed, failed, over, allocated * dt)
        serving = self.state[live] == READY
        node_p95 = wait_ms + delay_ms + p95
        return FleetSignals(now_s=now, arrival_qps=arrivals / dt, mix_cost_ratio=ratio,
                            node_names=self.serving_names,
                            throughput_qps=((per_node - dropped - after + before) / dt)[serving],
                            p95_ms=node_p95[serving], queue_ms=wait_ms[serving],
                            starting=int((self.state == STARTING).sum()))

    def _apply(self, decision: Decision) -> None:
        if not self.targets or decision.target_nodes != self.targets[-1]:
            self.targets.append(decision.target_nodes)
        self.shed_fraction = min(max(decision.shed_fraction, 0.0), 1.0)
        self.max_queue_ms = decision.max_queue_ms
        self.mode = decision.batching
        if decision.weights and tuple(decision.weights) == self.serving_names:  # the usual case: one array copy
            self.weight[self.serving_index] = np.fromiter(decision.weights.values(), float, len(decision.weights))
        elif decision.weights:
            for i, name in zip(self.serving_index, self.serving_names, strict=True):
                self.weight[i] = decision.weights.get(name, self.weight[i])
        self._scale_to(decision)

    # --- the run -----------------------------------------------------------------------------------------------
    def run(self) -> report.PolicyReport:
        c = self.config
        first = self.policy.decide(FleetSignals(0.0, self.trace.rate_at(0.0), 1.0, (), np.zeros(0), np.zeros(0),
                                                np.zeros(0)))
        self._add_nodes(first.target_nodes, READY)  # the fleet was up before the experiment
        self._membership_changed()
        self._scale_to(first)
        self.targets = [first.target_nodes]
        acc = report.Accumulator(self.trace.duration_s, c.tick_s, c.window_s, self.model.slo_p95_ms)
        self.env.process(self._steps(acc))
        if c.slow_node_at_s is not None:
            self.env.process(self._fault(c.slow_node_at_s))
        self.env.run(until=self.trace.duration_s)  # events at the end time itself are not run
        return acc.finish(self.policy.name, self.targets, self.trace.bursts, c.recovery_hold_s)


# --- policies and the CLI -------------------------------------------------------------------------------------

def make_policy(name: str, trace: traces.Trace, model: NodeModel, max_nodes: int, *, hpa_time_scale: float = 1.0,
                control: ControlConfig | None = None) -> Policy:
    """The policy called ``name`` (one of :data:`POLICIES`) for ``trace`` on a fleet of at most ``max_nodes``."""
    control = control or ControlConfig(max_nodes=max_nodes, slo_p95_ms=model.slo_p95_ms)
    # every policy plans at the same utilisation of the LBT: a like-for-like comparison
    if name == "static-peak":
        return static_peak(trace, model, max_nodes, control.target_utilisation)
    if name == "static-mean":
        return static_mean(trace, model, max_nodes, control.target_utilisation)
    if name == "hpa":
        return HpaPolicy(model, HpaConfig(max_nodes=max_nodes, time_scale=hpa_time_scale,
                                          target_utilisation=control.target_utilisation))
    if name == "recforge":
        return ElasticController(model, control)
    raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)} or all")


def build_trace(spec: str, minutes: float, seed: int) -> traces.Trace:
    """A generated trace (diurnal, diurnal+bursts, bursts, ramp, steady) or the trace file at ``spec``."""
    if spec == "diurnal":
        return traces.diurnal(minutes=minutes, seed=seed)
    if spec == "diurnal+bursts":
        return traces.with_bursts(traces.diurnal(minutes=minutes, seed=seed))
    if spec == "bursts":
        return traces.step_bursts(seed=seed)
    if spec == "ramp":
        return traces.ramp(minutes=minutes, seed=seed)
    if spec == "steady":
        return traces.step_bursts(durations_s=(), gap_s=minutes * 60, seed=seed)
    return traces.load_trace(spec)


def sized_trace(spec: str, minutes: float, seed: int, nodes: int, node_lbt_qps: float,
                peak_utilisation: float) -> traces.Trace:
    """The trace ``spec`` (:func:`build_trace`) scaled so its highest rate is ``peak_utilisation`` x ``nodes`` x
    ``node_lbt_qps``: static peak provisioning at that utilisation is then ``nodes``."""
    raw = build_trace(spec, minutes, seed)
    return raw.scaled(peak_utilisation * nodes * node_lbt_qps / float(raw.rate_qps.max()))


def hpa_time_scale_for(trace: traces.Trace, tick_s: float) -> float:
    """HPA's durations are divided by the trace's time compression, at most so far that its 15 s sync period is one
    control tick."""
    return max(1.0, min(float(trace.meta.get("time_compression", 1.0)), 15.0 / tick_s))


def default_profile() -> Path:
    return recforge_home() / "fleet" / "source" / "profile.json"


def simulate(trace_spec: str, nodes: int, policies: Sequence[str], *, profile: str | Path | None = None,
             minutes: float = 12.0, peak_utilisation: float | None = None, hpa_time_scale: float | None = None,
             sim: SimConfig | None = None) -> list[report.PolicyReport]:
    """Run each policy over the trace, sized so its highest rate is ``peak_utilisation`` x ``nodes`` x LBT (by
    default the policies' target utilisation: static peak provisioning is then ``nodes``)."""
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {nodes}")
    sim = sim or SimConfig()
    path = Path(profile) if profile else default_profile()
    doc = read_profile(path)
    if doc is None or not path.exists():
        raise ConfigError(f"no profile at {path}; pass --profile (a profile JSON of recforge.pipeline.profiling)")
    model = NodeModel.from_profile(doc)
    if peak_utilisation is None:
        peak_utilisation = ControlConfig().target_utilisation
    trace = sized_trace(trace_spec, minutes, sim.seed, nodes, model.lbt_qps, peak_utilisation)
    if hpa_time_scale is None:  # HPA's 15 s sync period maps to at most one control tick
        hpa_time_scale = hpa_time_scale_for(trace, sim.tick_s)
    results = []
    for name in policies:
        policy = make_policy(name, trace, model, nodes, hpa_time_scale=max(1.0, hpa_time_scale))
        started = time.perf_counter()
        result = FleetSimulator(trace, model, policy, sim).run()
        results.append(result.with_wall_s(time.perf_counter() - started))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.elastic.simulate",
                                     description="Simulate the fleet under scaling policies over a load trace.")
    parser.add_argument("--trace", default="diurnal",
                        help="diurnal, diurnal+bursts, bursts, ramp, steady, or a recforge-trace JSON file")
    parser.add_argument("--nodes", type=int, default=100, help="the most nodes the fleet may have (its machines)")
    parser.add_argument("--policy", default="all", help=f"all or one of {', '.join(POLICIES)}")
    parser.add_argument("--minutes", type=float, default=12.0, help="length of a generated day (1440: real time)")
    parser.add_argument("--profile", default=None, help=f"profile JSON (default {default_profile()})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-delay", type=float, default=15.0, help="seconds for a node to become ready")
    parser.add_argument("--standby", type=int, default=0, help="warm standby nodes")
    parser.add_argument("--peak-utilisation", type=float, default=None,
                        help="the trace's highest rate as a share of nodes x LBT (default: the target "
                             "utilisation, 0.85, so static peak provisioning is --nodes)")
    parser.add_argument("--hpa-time-scale", type=float, default=None,
                        help="divide HPA's durations by this (default: the trace's compression, at most 15)")
    args = parser.parse_args(argv)
    policies = POLICIES if args.policy == "all" else (args.policy,)

    def step() -> None:
        sim = SimConfig(seed=args.seed, start_delay_s=args.start_delay, warm_standby=args.standby)
        results = simulate(args.trace, args.nodes, policies, profile=args.profile, minutes=args.minutes,
                           peak_utilisation=args.peak_utilisation, hpa_time_scale=args.hpa_time_scale, sim=sim)
        print(report.table(results))
        for result in results:
            print("RESULT " + json.dumps(result.to_dict(), sort_keys=True))

    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
