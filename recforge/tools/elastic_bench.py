"""The elastic benchmark on the live fleet (``make bench-elastic``): one trace replayed against the same local Triton
fleet under four policies — static peak provisioning, static mean provisioning, Kubernetes HPA's law
(time-scaled) and RecForge's controller — each run by the fleet's controller process
(recforge.serving.elastic.live, ``LiveConfig.policy``), with the load generator on CPUs of its own.

The fleet (``$RECFORGE_HOME/elastic-bench/fleet``; a user's fleet is never touched): every node is a
``tritonserver`` with a CPU quota (``node_quota`` cores, CFS period ``cpu_period_us``) on the CPUs the apparatus
does not use, so a node is a fixed capacity and adding one adds capacity, as a Kubernetes pod with a CPU limit; at
most ``max_nodes``. The apparatus (this process's load generator, and the controller it starts) is on its own CPU
set, and HAProxy with it (recforge.core.cpusets, ``balancer_with_apparatus``; on a 2-CPU machine: CPU 0 for the
apparatus and HAProxy, CPU 1 for the nodes' quotas): a balancer on the nodes' CPU waits behind their time slices
on every request (measured: two 0.2-core nodes carried 480 q/s under the SLO with HAProxy on their CPU, 600 with it
on the apparatus', one node 300 either way; docs/elastic.md).

1. **Calibration.** A node's start time (``fleet up`` of one node to serving), then the LBT through the balancer
   of the fleet at its largest (``calibration_nodes``, default ``max_nodes``: nodes on one CPU do not add up)
   (recforge.tools.fleet_bench.search_lbt: the profile's client knobs, the SLO of the profile; the median of
   ``calibration_repeats`` searches, with latency points at 10/30/60 % of it for the curve's flat part), divided by
   its nodes. Every policy plans with the calibrated profile (the profile with the measured per-node LBT and latency
   curve: :func:`calibrated_profile`; a quota changes both), and the law's forecast horizon (``start_delay_s``) is
   the measured start time. With ``capacity_scale`` given instead, the profile's node is scaled by it (an approximation:
   latency against load stays the profile's).
2. **The trace** (recforge.serving.elastic.simulate.build_trace: a compressed diurnal day with 2x bursts by
   default, or a recforge-trace file) is scaled so its highest rate is ``peak_utilisation`` x ``max_nodes`` x the
   calibrated LBT; one seeded schedule of queries (recforge.serving.elastic.traces.schedule) is replayed under every
   policy. HPA's durations are divided by the trace's time compression, at most 15 (its 15 s sync becomes 1 s).
3. **Each policy** (in ``runs`` rounds, the order rotated each round): the fleet started with the policy's first node
   count, its controller with the policy, the replay (open loop: a late client thread counts against the latency),
   the controller's node-seconds and decisions, the fleet brought down. The figures are the simulator's
   (recforge.serving.elastic.report): % of 1-minute windows whose p95 is within the SLO, % of admitted queries over
   the SLO or failed, shed (503 from the balancer) and failed queries, node-seconds, scale reversals per hour,
   seconds to recover after each burst.
4. **The slow-node fault** (``slow_node_at_s``): that many seconds into each replay, the CPU quota of one serving
   node (the first in the fleet's state) is cut to ``slow_node_factor`` (default half) of ``node_quota``, in place,
   as a throttled pod or a noisy neighbour would; the node keeps serving and the controller has only its latency
   and throughput to notice it (:class:`SlowNode`; the run's ``slow_node`` says which node, when, and the quota).
   Its p99 against a healthy run of the same trace and calibration is issue 13's fault goal (within 1.2x).

Results: ``$RECFORGE_HOME/bench/elastic.json`` (every run, the per-second series, the calibration, the apparatus
ceiling) and ``elastic-<policy>.png`` (load, nodes, p95 and SLO over time) of each policy's last run; the table and one
``RESULT {json}`` line per policy and run on stdout.

CLI::

    python -m recforge.tools.elastic_bench [--family dlrm] [--target cpu-triton] [--config JSON]
    python -m recforge.tools.elastic_bench --capacity 1,2,3,4   # does capacity add up on this machine?

``--config`` takes :class:`ElasticBenchConfig` fields, e.g. ``'{"minutes": 6, "policies": ["hpa", "recforge"]}'``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from recforge.contracts.profile import read_profile
from recforge.core import config, cpusets
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError, first_line
from recforge.core.hw import load_average
from recforge.core.timing import utc_iso, utc_now
from recforge.inference.loadgen import run_schedule
from recforge.inference.triton import TritonHttpTarget
from recforge.serving import fleet as fl
from recforge.serving.elastic import traces
from recforge.serving.elastic.baselines import StaticPolicy
from recforge.serving.elastic.capacity import NodeModel, nodes_for
from recforge.serving.elastic.control import ControlConfig
from recforge.serving.elastic.simulate import (
    POLICIES,
    FleetSimulator,
    SimConfig,
    hpa_time_scale_for,
    make_policy,
    sized_trace,
)
from recforge.serving.fleet.config import DEFAULT_FAMILY
from recforge.tools import elastic_bench_report as rep
from recforge.tools.fleet_bench import FleetBenchConfig, calibrated_ceiling_qps, same_load_run, search_lbt

MIN_APPARATUS_RATIO = 5.0  # the load generator's ceiling against the highest rate it is used for
LOW_LOAD_POINTS = (0.1, 0.3, 0.6)  # calibration: rates as shares of the measured LBT, for the curve's flat part


@typed_config
class ElasticBenchConfig:
    """Settings of the elastic benchmark (``--config`` JSON)."""

    trace: str = "diurnal+bursts"  # diurnal, diurnal+bursts, bursts, ramp, steady, or a recforge-trace JSON file
    minutes: Annotated[float, Field(gt=0, le=60)] = 12.0  # the compressed day's length (generated traces)
    policies: tuple[str, ...] = POLICIES
    runs: Annotated[int, Field(ge=1, le=5)] = 1  # rounds of every policy, the order rotated each round
    seed: int = 0
    node_quota: Annotated[float, Field(gt=0, le=64)] = 0.2  # each node's CPU quota in cores
    cpu_period_us: Annotated[int, Field(ge=1000, le=1_000_000)] = 10_000  # the quota's CFS period
    max_nodes: Annotated[int, Field(ge=1, le=64)] = 4
    peak_utilisation: Annotated[float, Field(gt=0, le=2)] = 0.85  # the trace's highest rate / (max_nodes x LBT)
    capacity_scale: Annotated[float, Field(gt=0, le=64)] | None = None  # None: calibrated (measured LBT / profile's)
    start_delay_s: Annotated[float, Field(ge=0, le=600)] | None = None  # None: the calibration's measured start
    # a calibrated profile of an earlier run (its elastic-bench/calibrated-profile.json): no calibration, the same
    # trace as that run; give its start_delay_s too
    profile: str | None = None
    calibration_point_s: Annotated[float, Field(gt=0, le=60)] = 5.0  # per probed rate of the calibration LBT
    calibration_repeats: Annotated[int, Field(ge=1, le=9)] = 3  # LBT searches of the calibration (the median)
    # one-node starts of the calibration (the median): the first start after a `make run` reads tritonserver, the
    # python backend and onnxruntime from disk (8.0 s at stop 30, 3.1-3.3 s warm), and the controller's starts are warm
    start_repeats: Annotated[int, Field(ge=1, le=9)] = 3
    # the calibrated fleet's size (None: max_nodes); its LBT / its nodes is the node the policies plan with
    calibration_nodes: Annotated[int, Field(ge=1, le=64)] | None = None
    workers: Annotated[int, Field(ge=1, le=256)] = 48  # client threads of the replay
    sub_batch: Annotated[int, Field(ge=1, le=1024)] | None = None  # None: the profile's best_knobs.sub_batch
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0  # a query unanswered this long fails
    settle_s: Annotated[float, Field(ge=0, le=120)] = 3.0  # controller ticks before the replay starts
    interval_s: Annotated[float, Field(gt=0, le=10)] = 1.0  # the controller's tick
    # fault: this many seconds into each replay, one serving node's quota is cut to slow_node_factor x node_quota
    slow_node_at_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    slow_node_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise ConfigError(f"ElasticBenchConfig.policies: choose from {', '.join(POLICIES)}, got "
                              f"{list(self.policies)}")
        if self.node_quota > 1:
            raise ConfigError("ElasticBenchConfig.node_quota: at most 1 core (each node's CPU set is one CPU)")
        if self.profile is not None and (self.start_delay_s is None or self.capacity_scale is not None):
            raise ConfigError("ElasticBenchConfig.profile (an earlier calibration) goes with start_delay_s and "
                              "without capacity_scale")


def bench_home(home: str | Path | None = None) -> Path:
    return Path(home if home is not None else config.recforge_home()) / "elastic-bench"


def fleet_config(cfg: ElasticBenchConfig, nodes: int, target: str) -> fl.FleetConfig:
    """The bench's fleet: nodes with a CPU quota on the CPUs the apparatus leaves, the balancer on the apparatus'."""
    return fl.FleetConfig(nodes=nodes, min_nodes=1, port=0, target=target, node_cpus=1, cpu_quota=cfg.node_quota,
                          cpu_period_us=cfg.cpu_period_us, apparatus_cpus=1, share_cpus=True,
                          balancer_with_apparatus=True)


def apparatus_group(state: Mapping[str, Any]) -> cpusets.CpuGroup:
    """The load generator's CPU group: the apparatus CPUs the fleet's plan left free."""
    cpus = (state.get("placement") or {}).get("apparatus_cpus")
    if not cpus:
        raise ConfigError("the bench fleet has no apparatus CPUs in its plan (CPU placement is off)")
    return cpusets.CpuGroup(f"elastic-bench-{os.getpid()}-client",
                            cpusets.CpuPlacement(cpus=cpusets.parse_cpu_list(cpus)))


def client_knobs(profile: Mapping[str, Any], cfg: ElasticBenchConfig) -> int:
    knobs = (profile.get("search") or {}).get("best_knobs") or {}
    return int(cfg.sub_batch or knobs.get("sub_batch") or 64)


def calibration_runs(cfg: ElasticBenchConfig) -> FleetBenchConfig:
    """The load runs of the calibration and the capacity check: ``calibration_point_s`` each, the bench's seed."""
    return FleetBenchConfig(point_duration_s=cfg.calibration_point_s, seed=cfg.seed)


def calibrate(source: fl.ModelSource, profile: Mapping[str, Any], cfg: ElasticBenchConfig, *, target: str,
              home: Path, ceiling: float | None) -> dict[str, Any]:
    """A node's start time (one node, ``fleet up`` to serving; the median of ``start_repeats``), then the LBT
    through the balancer of a fleet of ``calibration_nodes`` nodes at the quota (default ``max_nodes``), from the
    apparatus' CPUs: per node, the fleet's LBT and latency points divided by its node count (nodes that share a CPU
    do not add up: the fleet at its largest is what the trace is sized to)."""
    fleet_home = home / "calibration"
    nodes = cfg.calibration_nodes or cfg.max_nodes
    starts = [node_start_s(source, cfg, target=target, home=fleet_home) for _ in range(cfg.start_repeats)]
    start_s = statistics.median(starts)
    try:
        state = fl.up(source, fleet_config(cfg, nodes, target), home=fleet_home,
                      notes=[f"elastic bench calibration: {nodes} node(s)"])
        sub_batch = client_knobs(profile, cfg)
        profile_lbt = float(profile["latency_bounded_throughput_qps"])
        with cpusets.this_process_in(apparatus_group(state)):
            bench_cfg = calibration_runs(cfg)
            slo = float(profile["p95_target_ms"])
            searches = [fleet_lbt(state, source, profile, cfg, nodes, ceiling)
                        for _ in range(cfg.calibration_repeats)]
            # the LBT moves between searches: the median search, with every search's LBT kept
            found = sorted(searches, key=lambda f: f["lbt_qps"])[len(searches) // 2]
            found["lbt_qps_searches"] = [f["lbt_qps"] for f in searches]
            for fraction in LOW_LOAD_POINTS if found["lbt_qps"] > 0 else ():  # the flat part of the curve
                point = same_load_run(state["url"], source.model, source.spec_path, bench_cfg, sub_batch=sub_batch,
                                      workers=cfg.workers, rate=fraction * found["lbt_qps"], p95_target_ms=slo)
                found["curve"].append({key: point.get(key) for key in
                                       ("offered_qps", "achieved_qps", "p50_ms", "p95_ms", "p99_ms", "errors")})
    finally:
        fl.down(home=fleet_home)
    if not found["lbt_qps"] > 0:
        raise ConfigError(f"calibration: {nodes} node(s) at {cfg.node_quota:g} core(s) met the SLO at no rate "
                          f"({found.get('note')}); raise node_quota")
    per_node = found["lbt_qps"] / nodes
    curve = [{**row, "offered_qps": row["offered_qps"] / nodes,
              "achieved_qps": row["achieved_qps"] / nodes if row.get("achieved_qps") is not None else None}
             for row in found["curve"]]
    return {"node_start_s": round(start_s, 2), "node_start_s_runs": [round(t, 2) for t in starts], "nodes": nodes,
            "fleet_lbt_qps": found["lbt_qps"], "lbt_qps": round(per_node, 2), "profile_lbt_qps": profile_lbt,
            "capacity_scale": round(per_node / profile_lbt, 4), "p95_ms_at_lbt": found["p95_ms_at_lbt"],
            "converged": found["converged"], "capped": found["capped"], "note": found["note"],
            "fleet_lbt_qps_searches": found["lbt_qps_searches"], "sub_batch": sub_batch, "workers": cfg.workers,
            "curve": curve}


def node_start_s(source: fl.ModelSource, cfg: ElasticBenchConfig, *, target: str, home: Path) -> float:
    """Seconds from ``fleet up`` of one node at the bench's quota to its serving (then it is taken down)."""
    started = time.monotonic()
    try:
        fl.up(source, fleet_config(cfg, 1, target), home=home, notes=["elastic bench: a node's start"])
        return time.monotonic() - started
    finally:
        fl.down(home=home)


def fleet_lbt(state: Mapping[str, Any], source: fl.ModelSource, profile: Mapping[str, Any], cfg: ElasticBenchConfig,
              nodes: int, ceiling: float | None) -> dict[str, Any]:
    """One LBT search through the balancer of the bench fleet ``state`` of ``nodes`` nodes (the caller is in the
    apparatus' CPU group): the profile's client knobs and SLO, from half the profile's LBT scaled to the quota."""
    start = max(1.0, nodes * float(profile["latency_bounded_throughput_qps"]) * cfg.node_quota / 2)
    return search_lbt(state["url"], source.model, source.spec_path,
                      calibration_runs(cfg),
                      sub_batch=client_knobs(profile, cfg), workers=cfg.workers, start_qps=start,
                      p95_target_ms=float(profile["p95_target_ms"]), ceiling_qps=ceiling)


def fleet_capacity(source: fl.ModelSource, profile: Mapping[str, Any], cfg: ElasticBenchConfig,
                   counts: Sequence[int], *, target: str, home: Path,
                   ceiling: float | None) -> list[dict[str, Any]]:
    """Does capacity add up? Per node count: the LBT through the balancer of that many nodes at the bench's quota
    and placement, and, at 60 % of it for ``calibration_point_s``, the balancer's CPU (its cgroup's CPU seconds) per
    query and its cores. ``--capacity 1,2,3,4`` prints it; docs/elastic.md has the figures."""
    rows = []
    sub_batch = client_knobs(profile, cfg)
    slo = float(profile["p95_target_ms"])
    bench_cfg = calibration_runs(cfg)
    for nodes in counts:
        fleet_home = home / "capacity"
        try:
            state = fl.up(source, fleet_config(cfg, nodes, target), home=fleet_home,
                          notes=[f"elastic bench capacity: {nodes} node(s)"])
            balancer = cpusets.CpuGroup.from_state(state["balancer"]["placement"])
            with cpusets.this_process_in(apparatus_group(state)):
                found = fleet_lbt(state, source, profile, cfg, nodes, ceiling)
                before, started = balancer.usage_s(), time.monotonic()
                point = same_load_run(state["url"], source.model, source.spec_path, bench_cfg, sub_batch=sub_batch,
                                      workers=cfg.workers, rate=0.6 * found["lbt_qps"], p95_target_ms=slo) \
                    if found["lbt_qps"] > 0 else {}
                used, wall = (balancer.usage_s() or 0.0) - (before or 0.0), time.monotonic() - started
        finally:
            fl.down(home=fleet_home)
        queries = int(point.get("queries") or 0)
        row = {"nodes": nodes, "lbt_qps": found["lbt_qps"], "per_node_qps": round(found["lbt_qps"] / nodes, 1),
               "p95_ms_at_lbt": found["p95_ms_at_lbt"], "at_60pct": {k: point.get(k) for k in
                                                                   ("offered_qps", "achieved_qps", "p95_ms")},
               "balancer_ms_per_query": round(1000 * used / queries, 3) if queries and before is not None else None,
               "balancer_cores": round(used / wall, 3) if before is not None else None}
        print(f"capacity: {json.dumps(row)}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def calibrated_profile(profile: Mapping[str, Any], calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The profile of a node at the bench's quota: the measured LBT and latency-vs-load curve in place of the
    profile's (a quota changes both: a node that spends its quota early in a CFS period waits out the rest of it),
    the profile's query-cost curve kept (the mix's relative costs)."""
    rows: dict[float, dict[str, Any]] = {}
    for row in calibration["curve"]:
        if row.get("p95_ms") is not None:
            rows[float(row["offered_qps"])] = dict(row)
    if not rows:
        raise ConfigError("calibration: no probed rate has a p95; the node answered nothing")
    return {**profile, "latency_bounded_throughput_qps": float(calibration["lbt_qps"]),
            "curve": [rows[rate] for rate in sorted(rows)]}


def planned(cfg: ElasticBenchConfig, profile: Mapping[str, Any], scale: float) -> tuple[NodeModel, traces.Trace]:
    """The node model the policies plan with (the profile's, times ``scale``) and the trace sized to it."""
    model = NodeModel.from_profile(profile).scaled(scale)
    return model, sized_trace(cfg.trace, cfg.minutes, cfg.seed, cfg.max_nodes, model.lbt_qps, cfg.peak_utilisation)


def first_nodes(policy: Any, trace: traces.Trace, model: NodeModel, utilisation: float, most: int) -> int:
    """The node count a policy's run starts with: a static policy's own; otherwise what the first 10 s of the trace
    need at the planning utilisation."""
    if isinstance(policy, StaticPolicy):
        return policy.nodes
    opening = float(trace.rate_qps[: max(1, round(10 / trace.interval_s))].mean())
    return min(most, nodes_for(opening, utilisation * model.lbt_qps))


def controller_config(name: str, policy: Any, cfg: ElasticBenchConfig, scale: float, start_delay_s: float,
                      hpa_time_scale: float) -> dict[str, Any]:
    """The live controller's LiveConfig for the policy ``name``."""
    live: dict[str, Any] = {"interval_s": cfg.interval_s, "min_nodes": 1, "max_nodes": cfg.max_nodes,
                            "cores_per_node": cfg.node_quota, "capacity_scale": scale, "log_every_s": 0,
                            "scale_retry_s": 10.0}
    if isinstance(policy, StaticPolicy):
        return {**live, "policy": "static", "static_nodes": policy.nodes}
    if name == "hpa":
        return {**live, "policy": "hpa", "hpa": {"time_scale": hpa_time_scale}}
    return {**live, "policy": "recforge", "control": {"start_delay_s": start_delay_s}}


def wait_first_tick(status_file: Path, timeout_s: float = 60.0) -> None:
    """Until the controller has ticked once (its controller.json exists: a start takes seconds of imports); a
    ConfigError naming its log when it does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not status_file.exists():
        if time.monotonic() > deadline:
            raise ConfigError(f"the controller did not tick within {timeout_s:g} s; see "
                              f"{status_file.with_name('controller.log')}")
        time.sleep(0.2)


class SlowNode:
    """The slow-node fault of one replay: :meth:`arm` when the replay starts; ``cfg.slow_node_at_s`` later the CPU
    quota of the first node in the fleet's state is cut to ``cfg.slow_node_factor`` of its own, in place
    (recforge.core.cpusets.CpuGroup.set_quota). ``record`` says which node, when (seconds after arming), the quota
    before and after, or the error that kept the fault from happening (the replay goes on either way)."""

    def __init__(self, fleet_home: Path, cfg: ElasticBenchConfig):
        self.fleet_home, self.factor = fleet_home, cfg.slow_node_factor
        self.record: dict[str, Any] = {"at_s": cfg.slow_node_at_s, "factor": cfg.slow_node_factor}
        self.timer = threading.Timer(float(cfg.slow_node_at_s or 0.0), self.slow)
        self.timer.daemon = True
        self.armed_at = 0.0

    def arm(self) -> None:
        self.armed_at = time.monotonic()
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()

    def slow(self) -> None:
        try:
            state = fl.read_state(self.fleet_home) or {}
            name = sorted(state.get("nodes") or {})[0]
            placement = state["nodes"][name].get("placement")
            if not placement or placement.get("quota_cores") is None:
                raise ConfigError(f"{name} has no CPU quota to cut")
            group = cpusets.CpuGroup.from_state(placement)
            before = float(placement["quota_cores"])
            group.set_quota(before * self.factor)
            self.record.update(node=name, quota_cores_before=before, quota_cores_after=group.placement.quota_cores,
                               applied_at_s=round(time.monotonic() - self.armed_at, 2))
        except Exception as err:  # noqa: BLE001 - the replay goes on; the run says the fault did not happen
            self.record["error"] = first_line(err)
        print(f"elastic bench: slow-node fault {self.record}", file=sys.stderr, flush=True)


def run_policy(name: str, policy: Any, source: fl.ModelSource, cfg: ElasticBenchConfig, *, schedule: Any,
               trace: traces.Trace, model: NodeModel, live: Mapping[str, Any], target: str, home: Path,
               sub_batch: int, slo_ms: float) -> dict[str, Any]:
    """One policy's replay of the schedule on a fresh fleet; its report, series and the controller's figures."""
    fleet_home = home / "fleet"
    nodes = first_nodes(policy, trace, model, ControlConfig().target_utilisation, cfg.max_nodes)
    arrivals, sizes = schedule
    fault = SlowNode(fleet_home, cfg) if cfg.slow_node_at_s is not None else None
    try:
        state = fl.up(source, fleet_config(cfg, nodes, target), home=fleet_home, controller=live,
                      notes=[f"elastic bench: {name}"])
        wait_first_tick(Path(state["controller"]["status_file"]))
        time.sleep(cfg.settle_s)
        with cpusets.this_process_in(apparatus_group(state)):
            client = TritonHttpTarget(state["url"], source.model, source.spec_path, max_batch=sub_batch,
                                      seed=cfg.seed, pool=cfg.workers, timeout=cfg.timeout_s)
            try:
                started_at = time.time()
                if fault is not None:
                    fault.arm()
                result = run_schedule(client, arrivals, sizes, duration_s=trace.duration_s, sub_batch=sub_batch,
                                      workers=cfg.workers, drain_timeout_s=cfg.timeout_s, sizes_text=trace.name)
            finally:
                if fault is not None:
                    fault.cancel()
                client.close()
        entry = state["controller"]
        status = json.loads(Path(entry["status_file"]).read_text())
        targets, node_series, target_series = rep.read_decisions(entry["decisions"], started_at, trace.duration_s,
                                                                 cfg.interval_s)
    finally:
        fl.down(home=fleet_home)
    acc, series = rep.tally(result.arrival_s, result.finish_s, result.query_errors, duration_s=trace.duration_s,
                            slo_ms=slo_ms)
    series = rep.Series(**{**series.__dict__, "nodes": node_series, "target": target_series})
    node_seconds = float(status.get("node_seconds") or 0.0)
    summary = rep.policy_report(name, acc, targets, trace.bursts, node_seconds)
    return {"policy": name, "first_nodes": nodes, "controller": dict(live), "report": summary.to_dict(),
            "queries": result.queries, "answered": result.completed, "p95_ms": result.p95_ms,
            "p99_ms": result.p99_ms, "cpu_steal_pct": result.cpu_steal_pct,
            "controller_shed": (status.get("shed") or {}).get("requests"), "series": series.to_dict(),
            "slow_node": fault.record if fault is not None else None, "_series": series}


def bench(source: fl.ModelSource, cfg: ElasticBenchConfig, *, target: str, notes: Sequence[str] = (),
          home: str | Path | None = None) -> dict[str, Any]:
    """Calibrate, build the trace, run every policy ``cfg.runs`` times; the result document."""
    profile = read_profile(source.profile_path) if source.profile_path else None
    if not profile:
        raise ConfigError(f"{source.origin} has no profile: the policies need its capacity model; run `make run` "
                          "(a registered champion has one)")
    root = bench_home(home)
    root.mkdir(parents=True, exist_ok=True)
    ceiling = calibrated_ceiling_qps(home)
    started = time.monotonic()
    doc: dict[str, Any] = {"model": source.model, "version": source.version, "source": source.origin,
                           "target": target, "notes": list(notes), "settings": asdict(cfg),
                           "measured_at": utc_now(), "loadavg_before": load_average(), "runs": []}
    calibration = calibrate(source, profile, cfg, target=target, home=root, ceiling=ceiling) \
        if cfg.profile is None and (cfg.capacity_scale is None or cfg.start_delay_s is None) else {}
    start_delay = cfg.start_delay_s if cfg.start_delay_s is not None else calibration["node_start_s"]
    if cfg.profile is not None:  # an earlier run's calibration
        scale, profile_path = 1.0, Path(cfg.profile)
        planning = read_profile(profile_path)
        if planning is None:
            raise ConfigError(f"ElasticBenchConfig.profile {cfg.profile} is not a readable profile")
    elif cfg.capacity_scale is None:  # the policies plan with the profile of a node at the quota, as measured
        scale, profile_path = 1.0, root / "calibrated-profile.json"
        planning = calibrated_profile(profile, calibration)
        profile_path.write_text(json.dumps(planning, indent=1) + "\n")
    else:  # the profile's node scaled: an approximation (latency against load is the profile's)
        scale, profile_path, planning = cfg.capacity_scale, Path(source.profile_path), profile
    model, trace = planned(cfg, planning, scale)
    hpa_time_scale = hpa_time_scale_for(trace, cfg.interval_s)
    schedule = traces.schedule(trace, cfg.seed)
    peak = float(trace.rate_qps.max())
    # the profile itself too: the next run rewrites calibrated-profile.json, and --validate must plan as this run did
    doc.update(calibration=calibration, capacity_scale=scale, start_delay_s=start_delay, profile=str(profile_path),
               planned_profile=planning,
               model_lbt_qps=round(model.lbt_qps, 1), slo_p95_ms=model.slo_p95_ms,
               trace={"name": trace.name, "duration_s": trace.duration_s, "peak_qps": round(peak, 1),
                      "mean_qps": round(float(trace.rate_qps.mean()), 1), "queries": int(schedule[0].size),
                      "bursts": [vars(b) for b in trace.bursts], "hpa_time_scale": hpa_time_scale},
               apparatus={"ceiling_qps": ceiling, "peak_qps": round(peak, 1),
                          "ratio": round(ceiling / peak, 2) if ceiling else None,
                          "enough": bool(ceiling and ceiling >= MIN_APPARATUS_RATIO * peak)})
    print(f"elastic bench: {trace.name} {trace.duration_s:.0f} s, peak {peak:.0f} q/s, {schedule[0].size} queries; "
          f"node {cfg.node_quota:g} core, LBT {model.lbt_qps:.0f} q/s (scale {scale:.3f}), start {start_delay:.1f} s;"
          f" apparatus ceiling {ceiling or float('nan'):.0f} q/s", file=sys.stderr, flush=True)
    sub_batch = client_knobs(profile, cfg)
    order = list(cfg.policies)
    for run in range(cfg.runs):
        for name in order[run % len(order):] + order[:run % len(order)]:
            policy = make_policy(name, trace, model, cfg.max_nodes, hpa_time_scale=hpa_time_scale)
            live = {**controller_config(name, policy, cfg, scale, start_delay, hpa_time_scale),
                    "profile": str(profile_path)}
            entry = run_policy(name, policy, source, cfg, schedule=schedule, trace=trace, model=model, live=live,
                               target=target, home=root, sub_batch=sub_batch, slo_ms=model.slo_p95_ms)
            entry["run"] = run + 1
            series = entry.pop("_series")
            entry["plot"] = str(rep.plot_run(
                series, slo_ms=model.slo_p95_ms, bursts=trace.bursts,
                title=f"{name} on {trace.name} ({source.model}, {cfg.node_quota:g}-core nodes, run {run + 1})",
                path=Path(home if home is not None else config.recforge_home()) / "bench" / f"elastic-{name}.png"))
            doc["runs"].append(entry)
            write_results(doc, home)  # what was measured so far survives a later failure
            print(f"RESULT {json.dumps({'run': run + 1, **entry['report']})}", flush=True)
    doc["loadavg_after"] = load_average()
    doc["duration_s"] = round(time.monotonic() - started, 1)
    doc["simulated"] = simulated(doc)
    doc["validation"] = validation(doc)
    return doc


def simulated(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The simulator (recforge.serving.elastic.simulate) on the benchmark's trace, calibrated profile, node start
    time and policies: its report per policy, node-seconds in cores x seconds (the simulator counts nodes x
    seconds), for the validation of the simulator against the live runs (:func:`validation`)."""
    cfg = config.config_from_dict(ElasticBenchConfig, doc["settings"])
    model, trace = planned(cfg, planning_profile(doc), float(doc["capacity_scale"]))
    sim = SimConfig(seed=cfg.seed, start_delay_s=float(doc["start_delay_s"]), tick_s=cfg.interval_s)
    control = ControlConfig(slo_p95_ms=model.slo_p95_ms, max_nodes=cfg.max_nodes,
                            start_delay_s=float(doc["start_delay_s"]))
    out = []
    for name in cfg.policies:
        policy = make_policy(name, trace, model, cfg.max_nodes, control=control,
                             hpa_time_scale=float(doc["trace"]["hpa_time_scale"]))
        result = FleetSimulator(trace, model, policy, sim).run().to_dict()
        result["node_seconds"] = round(result["node_seconds"] * cfg.node_quota, 1)
        out.append(result)
    return out


def planning_profile(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The profile a result file's policies planned with: its own copy; a file from before the copies were kept
    names it by path, which a later run may have rewritten (calibrated-profile.json is rewritten by every
    calibration): then a ConfigError, not a validation against another run's calibration."""
    if doc.get("planned_profile"):
        return dict(doc["planned_profile"])
    path = Path(doc["profile"])
    ended = datetime.fromisoformat(doc["measured_at"]).timestamp() + float(doc.get("duration_s") or 0.0) \
        if doc.get("measured_at") else None
    if ended is not None and path.exists() and path.stat().st_mtime > ended + 60:
        raise ConfigError(f"{path}, the profile this result file's runs planned with, was rewritten after they "
                          f"ended ({utc_iso(path.stat().st_mtime)}, after {utc_iso(ended)}); the file keeps no copy "
                          "of it (results from before stop 31), so its validation cannot be redone")
    return read_profile(path) or {}


def validation(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per policy: the live runs' SLO attainment (% of 1-minute windows within the SLO, % of queries over it) and
    node-seconds (their median over the runs) beside the simulator's, and simulated / live."""
    rows = []
    for sim in doc.get("simulated") or []:
        live = [r["report"] for r in doc["runs"] if r["policy"] == sim["policy"]]
        if not live:
            continue
        row: dict[str, Any] = {"policy": sim["policy"], "runs": len(live)}
        for key in ("windows_within_slo_pct", "over_slo_pct", "node_seconds"):
            measured = statistics.median(r[key] for r in live)
            row[key] = {"live": measured, "simulated": sim[key],
                        "simulated_over_live": round(sim[key] / measured, 3) if measured else None}
        rows.append(row)
    return rows


def render_validation(rows: Sequence[Mapping[str, Any]]) -> str:
    head = (f"{'policy':<12} {'windows ok % live/sim':>22} {'over SLO % live/sim':>22} {'node-s live/sim':>18} "
            f"{'sim/live':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        w, o, n = row["windows_within_slo_pct"], row["over_slo_pct"], row["node_seconds"]
        lines.append(f"{row['policy']:<12} {w['live']:>10.2f} /{w['simulated']:>9.2f} {o['live']:>10.3f} /"
                     f"{o['simulated']:>9.3f} {n['live']:>8.1f} /{n['simulated']:>7.1f} "
                     f"{n['simulated_over_live'] if n['simulated_over_live'] is not None else '-':>8}")
    return "\n".join(lines)


def write_results(doc: Mapping[str, Any], home: str | Path | None = None) -> Path:
    path = Path(home if home is not None else config.recforge_home()) / "bench" / "elastic.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.elastic_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--family", default=os.environ.get("FLEET_FAMILY", DEFAULT_FAMILY),
                        help="model family: registry champion recforge-<family>, else the newest nightly model")
    parser.add_argument("--target", default=fl.DEFAULT_TARGET, help="hardware target (champion, profile)")
    parser.add_argument("--config", default="{}", help="ElasticBenchConfig fields as a JSON object")
    parser.add_argument("--capacity", metavar="COUNTS", default=None,
                        help="run no policy: the LBT of fleets of these node counts (e.g. 1,2,3,4) at the bench's "
                             "quota and placement, and the balancer's CPU per query")
    parser.add_argument("--validate", metavar="ELASTIC_JSON", default=None,
                        help="run no fleet: the simulator on the trace and calibration of this result file, against "
                             "its live runs (the file is updated)")
    args = parser.parse_args(argv)

    def step() -> Any:
        if args.validate:
            doc = json.loads(Path(args.validate).read_text())
            doc["simulated"] = simulated(doc)
            doc["validation"] = validation(doc)
            Path(args.validate).write_text(json.dumps(doc, indent=1, default=str) + "\n")
            print(render_validation(doc["validation"]))
            return {"json": args.validate, "validation": doc["validation"]}
        cfg = config.config_from_dict(ElasticBenchConfig, json_object(args.config))
        dest = bench_home() / "source"
        source, notes = fl.default_source(args.family, args.target, dest=dest)
        if args.capacity:
            try:
                counts = [int(n) for n in args.capacity.split(",")]
            except ValueError as err:
                raise ConfigError(f"--capacity: comma-separated node counts, got {args.capacity!r}") from err
            if not source.profile_path:
                raise ConfigError(f"{source.origin} has no profile; run `make run`")
            rows = fleet_capacity(source, read_profile(source.profile_path), cfg, counts, target=args.target,
                                  home=bench_home(), ceiling=calibrated_ceiling_qps())
            return {"capacity": rows, "node_quota": cfg.node_quota, "model": source.model, "version": source.version}
        doc = bench(source, cfg, target=args.target, notes=notes)
        path = write_results(doc)
        print(rep.render(doc["runs"]))
        print(f"\nthe simulator on the same trace and calibration, against the live runs\n"
              f"{render_validation(doc['validation'])}")
        with contextlib.suppress(KeyError):
            print(f"calibration: {json.dumps(doc['calibration'])}")
        return {"json": str(path), "duration_s": doc["duration_s"], "apparatus": doc["apparatus"],
                "capacity_scale": doc["capacity_scale"]}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
