"""The elastic controller as its own process on the live fleet: every ``interval_s`` it reads the fleet's signals
(each node's Triton metrics, HAProxy's stats over its runtime socket: recforge.serving.elastic.live_signals), asks
the control law (:class:`~recforge.serving.elastic.control.ElasticController`, with the capacity model of the
fleet's profile) for a decision, applies what the fleet can do — weights, drains, the balancer's shed fraction
(recforge.serving.elastic.live_actions), each node's batching mode, one node at a time in a background thread
(recforge.serving.elastic.live_batching; reloaded through the node's own repository API:
recforge.serving.fleet.batching), and the target node count, one node added or removed at a time in a
background thread (recforge.serving.elastic.live_scaling, through recforge.serving.fleet.scaling) — and logs the
rest as advisory.

Files in the fleet's folder (paths in state.json's ``controller`` entry):

    controller-decisions.jsonl  one JSON line per decision that applied something or advised something new (time,
                                signals, actions, reasons), and one at least every ``log_every_s`` otherwise
    controller.json             the last tick (time, signals, weights, the law's per-node corrections and how many
                                measurements each rests on, ``reprofile``: the nodes whose live capacity left the
                                profile's band, node -> delivered / predicted), the node
                                operation in flight, the node-seconds so far (cores x seconds allocated), and
                                ``shed``: the fraction the balancer sheds and the requests it shed so far
    controller.log              the process's messages

Started by ``fleet up`` (``make fleet-up``; not with ``FLEET_CONTROLLER=0``), stopped by ``fleet down``. It
registers its pid in state.json and exits by itself when the state is gone or names another controller. A
controller that dies leaves the fleet as it was (weights stay in HAProxy); one started again (``python -m
recforge.serving.elastic.live``) reads the nodes from state.json, the weights from HAProxy and the law's per-node
corrections and node-seconds from controller.json instead of assuming defaults, and finishes a node operation the
dead one left half done. Without a profile (none given, none in the fleet's
source) the law is off and only health drains are done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from recforge.contracts.profile import read_profile
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, RecForgeError, first_line
from recforge.core.hw import cpu_count
from recforge.core.timing import utc_now
from recforge.serving import loadbalancer as lb
from recforge.serving.elastic.baselines import HpaConfig, HpaPolicy, StaticPolicy
from recforge.serving.elastic.capacity import NodeModel
from recforge.serving.elastic.control import ControlConfig, ElasticController, Policy, max_nodes_for_cpus
from recforge.serving.elastic.live_actions import Action, BalancerControl, apply_actions, plan_actions
from recforge.serving.elastic.live_batching import BatchingSwitcher
from recforge.serving.elastic.live_scaling import NodeOperations, NodeOperator, plan_scale
from recforge.serving.elastic.live_signals import (
    SUMMARY_WINDOW_S,
    NodeCounters,
    ShedCounter,
    SignalTracker,
    balancer_view,
    health_problem,
    node_counters,
    signals_record,
)
from recforge.serving.fleet import Fleet, fleet_dir, process_alive, read_state, scaling, served_versions
from recforge.serving.fleet.batching import node_mode, switch_unavailable
from recforge.serving.fleet.state import profile_path as fleet_profile_path
from recforge.serving.fleet.state import state_lock, write_state

LOG = logging.getLogger("recforge.elastic.live")
DECISIONS_FILE, STATUS_FILE, LOG_FILE = "controller-decisions.jsonl", "controller.json", "controller.log"
LIVE_POLICIES = ("recforge", "hpa", "static")


@typed_config
class LiveConfig:
    """The live controller's settings (the law's own parameters go in ``control``: ControlConfig fields)."""

    interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # the control loop's period
    profile: str | None = None  # the capacity model's profile; None: the fleet source's profile
    min_nodes: Annotated[int, Field(ge=1, le=256)] = 1
    max_nodes: Annotated[int, Field(ge=0, le=256)] = 0  # 0: as many as the machine's CPUs hold
    cores_per_node: Annotated[float, Field(gt=0, le=256)] = 1.0  # a node's cores (its CPU quota: may be a fraction)
    metrics_timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.5  # a node's metrics port slower than this: unhealthy
    share_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.05  # weights are applied when a share moves more
    shed_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.02  # the shed fraction is applied when it moves more
    shed: bool = True  # shed the law's fraction at the balancer (False: the fraction is advisory)
    log_every_s: Annotated[float, Field(ge=0, le=3600)] = 30.0  # a "hold" line at least this often (0: every tick)
    control: dict[str, float | int] = dataclasses.field(default_factory=dict)  # ControlConfig overrides
    scale: bool = True  # add and remove nodes as the law's target asks (False: the target is advisory)
    scale_retry_s: Annotated[float, Field(ge=0, le=3600)] = 60.0  # after a failed add, no add for this long
    # the policy: RecForge's law, or a baseline of the elastic benchmark (recforge.serving.elastic.baselines):
    # Kubernetes HPA's algorithm (``hpa``: HpaConfig overrides, e.g. time_scale) or a fixed ``static_nodes``
    policy: str = "recforge"
    hpa: dict[str, float | int] = dataclasses.field(default_factory=dict)
    static_nodes: Annotated[int, Field(ge=0, le=256)] = 0
    # the profile's node capacity times this: a node of other cores than the profile's (e.g. a CPU quota of 0.2
    # core against a profile measured on one CPU); the law's per-node corrections measure the rest
    capacity_scale: Annotated[float, Field(gt=0, le=256)] = 1.0
    # a node's Triton latency summary is trusted this long after the controller first saw it or it restarted (the
    # summary covers about the last minute, and a new node's warm-up is in it): the tick's mean stands in until then
    summary_window_s: Annotated[float, Field(ge=0, le=3600)] = SUMMARY_WINDOW_S

    def __post_init__(self) -> None:
        if self.policy not in LIVE_POLICIES:
            raise ConfigError(f"LiveConfig.policy must be one of {', '.join(LIVE_POLICIES)}, got {self.policy!r}")
        if self.policy == "static" and not self.static_nodes:
            raise ConfigError("LiveConfig.policy static needs static_nodes >= 1")

    def bounds(self, cpus: int, fleet: tuple[int, int] | None = None) -> tuple[int, int]:
        """(min, max) nodes: never below ``min_nodes``, never above what ``cpus`` CPUs hold; within ``fleet``'s
        bounds too when given (recforge.serving.fleet.scaling.node_bounds: FLEET_MIN_NODES, the CPU placement)."""
        most = max_nodes_for_cpus(cpus, self.cores_per_node)
        most = min(most, self.max_nodes) if self.max_nodes else most
        if fleet is not None:  # the tighter bounds win (a fleet min above the CPUs' max: the max)
            most = min(most, fleet[1])
            return min(max(self.min_nodes, fleet[0]), most), most
        if self.min_nodes > most:
            raise ConfigError(f"LiveConfig.min_nodes {self.min_nodes} is above the {most} node(s) of "
                              f"{self.cores_per_node} core(s) this machine's {cpus} CPUs hold (or max_nodes)")
        return self.min_nodes, most


def build_law(cfg: LiveConfig, profile: Mapping[str, Any] | None, cpus: int) -> Policy | None:
    """The policy (``cfg.policy``) with the profile's capacity model, scaled by ``cfg.capacity_scale``, and the node
    bounds (None without a profile). Only RecForge's law adapts batching and sheds: a baseline's decisions keep the
    deployed knobs (its ``adapts_batching`` is False, recforge.serving.elastic.baselines) and shed nothing."""
    if not profile:
        return None
    model = NodeModel.from_profile(profile).scaled(cfg.capacity_scale)
    low, high = cfg.bounds(cpus)
    if cfg.policy == "static":
        policy: Any = StaticPolicy("static", min(high, max(low, cfg.static_nodes)), "LiveConfig.static_nodes")
    elif cfg.policy == "hpa":
        hpa = {"target_utilisation": ControlConfig().target_utilisation, **cfg.hpa, "min_nodes": low,
               "max_nodes": high}
        policy = HpaPolicy(model, config_from_dict(HpaConfig, hpa))
    else:
        control = config_from_dict(ControlConfig, {"slo_p95_ms": model.slo_p95_ms, **cfg.control,
                                                   "min_nodes": low, "max_nodes": high})
        return ElasticController(model, control)
    return policy


def read_metrics(url: str, timeout_s: float, models: Sequence[str]) -> tuple[NodeCounters | None, str]:
    """(the node's counters, "") or (None, why it could not be read)."""
    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as err:
        return None, first_line(err) or type(err).__name__
    return node_counters(response.text, set(models) or None), ""


class LiveController:
    """The loop's state between ticks: the law, the signal tracker, the last weights and what was logged."""

    def __init__(self, root: Path, cfg: LiveConfig, *, clock: Any = time.monotonic, cpus: int | None = None,
                 read_stats: Any = None, read_node: Any = None, control: BalancerControl | None = None,
                 operations: NodeOperations | None = None, fleet_bounds: Any = None, read_shed: Any = None):
        """``read_stats(balancer entry) -> show stat rows``, ``read_node(metrics url, timeout, models) ->
        (counters | None, error)``, ``control`` (the weights' setter; default: the fleet handle), ``operations``
        (add_node / remove_node; default: the fleet handle) and ``fleet_bounds(state) -> (min, max)`` (default:
        recforge.serving.fleet.scaling.node_bounds) and ``read_shed(balancer entry) -> fraction shed now | None``
        are the controller's I/O, injected by the tests."""
        self.root, self.home, self.cfg, self.clock = root, root.parent, cfg, clock
        self.cpus = cpus or cpu_count()
        self.read_stats = read_stats or (lambda entry: lb.HAProxy.from_state(entry).stats())
        self.read_node = read_node or read_metrics
        self.read_shed = read_shed or (lambda entry: lb.HAProxy.from_state(entry).shed_fraction())
        self.shed_now: float | None = None  # the fraction the balancer sheds, as last read or set
        self.shed_count = ShedCounter()  # the requests it shed, across its counter's restarts
        self.control = control
        self.fleet_bounds = fleet_bounds or scaling.node_bounds
        self.operator = NodeOperator(operations or LazyFleet(self.home), clock, retry_after_s=cfg.scale_retry_s)
        self.switcher = BatchingSwitcher(lambda node, mode: (self.control or Fleet(self.home)).set_batching(node, mode),
                                         clock)
        self.node_seconds = 0.0  # cores x seconds allocated, starting nodes included
        self.last_tick_s: float | None = None
        self.pid = os.getpid()
        self.tracker = SignalTracker(cfg.summary_window_s)
        self.law: Policy | None = None
        self.entry: dict[str, Any] = {}
        self.ticks = 0
        self.last_logged_s = -math.inf
        self.last_batching: str | None = None
        self.last_advice: list[tuple[str, str]] = []  # the advisory actions last logged (repeats are not)
        self.last_reprofile: list[str] = []  # the nodes last logged as due a re-profile

    # --- start: registration and what a restart re-reads ---------------------------------------------------------
    def register(self) -> dict[str, Any]:
        """Name this process as the fleet's controller in state.json; ConfigError when another one runs."""
        with state_lock(self.root):
            state = read_state(self.home)
            if state is None:
                raise ConfigError(f"no fleet state in {self.root}; run `make fleet-up` first")
            entry = dict(state.get("controller") or {})
            other = entry.get("pid")
            if other and other != self.pid and process_alive(other):
                raise ConfigError(f"the fleet's controller already runs (pid {other}); stop it first")
            entry.update(pid=self.pid, decisions=entry.get("decisions") or str(self.root / DECISIONS_FILE),
                         status_file=entry.get("status_file") or str(self.root / STATUS_FILE),
                         log=entry.get("log") or str(self.root / LOG_FILE),
                         config=dataclasses.asdict(self.cfg), started_at=utc_now())
            state["controller"] = entry
            write_state(self.root, state)
        self.entry = entry
        return state

    def start(self) -> None:
        """Register, build the law from the profile, and re-read what a previous controller left: the weights in
        HAProxy and the law's per-node corrections (controller.json)."""
        state = self.register()
        profile_path = self.cfg.profile or fleet_profile_path(state)
        self.law = build_law(self.cfg, read_profile(profile_path) if profile_path else None, self.cpus)
        weights: dict[str, Any] = {}
        try:
            weights = {n: s.weight for n, s in balancer_view(self.read_stats(state["balancer"])).servers.items()}
        except (RecForgeError, KeyError, TypeError) as err:
            LOG.warning("could not read the weights from HAProxy: %s", first_line(err))
        restored = self.restore_corrections()
        self.read_shed_now(state)
        resumed = []
        if self.cfg.scale:
            try:
                resumed = scaling.resume_interrupted(self.home)
            except RecForgeError as err:
                LOG.warning("could not finish an interrupted node operation: %s", first_line(err))
        low, high = self.cfg.bounds(self.cpus, self.fleet_bounds(state))
        self.log_decision({"event": "start", "pid": self.pid, "nodes": sorted(state.get("nodes") or {}),
                           "weights_in_haproxy": weights, "corrections_restored": restored,
                           "node_seconds_restored": self.node_seconds, "resumed": resumed,
                           "shed_in_haproxy": self.shed_now, "shed_requests_restored": self.shed_count.total,
                           "profile": profile_path, "bounds": [low, high], "policy": self.cfg.policy,
                           "capacity_scale": self.cfg.capacity_scale,
                           "law": "on" if self.law else "off: no profile (health drains only)"})
        LOG.info("controlling %s every %g s (pid %d), nodes in [%d, %d], law %s", self.root, self.cfg.interval_s,
                 self.pid, low, high, "on" if self.law else "off (no profile)")

    def restore_corrections(self) -> dict[str, float]:
        """The law's per-node capacity corrections (and the node-seconds so far) as the last controller saved them."""
        try:
            status = json.loads(Path(self.entry["status_file"]).read_text())
        except (OSError, ValueError):
            return {}
        self.node_seconds = float(status.get("node_seconds") or 0.0)
        self.shed_count = ShedCounter.from_dict(status.get("shed"))
        saved = status.get("corrections") or {}
        measured = status.get("corrections_measured") or {}
        if not isinstance(self.law, ElasticController):  # a baseline has no per-node corrections
            return {}
        names = tuple(saved)
        self.law.corrections.align(names)
        for i, name in enumerate(names):
            self.law.corrections.factor[i] = float(saved[name])
            self.law.corrections.measured[i] = int(measured.get(name) or 0)
        return {name: float(value) for name, value in saved.items()}

    # --- one tick ------------------------------------------------------------------------------------------------
    def tick(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        """Read, decide, act, log; the decision record (None when the fleet is not up)."""
        if state.get("status") != "up":
            return None
        now = self.clock()
        view = balancer_view(self.read_stats(state["balancer"]))
        self.shed_count.update(view.shed_total)
        # the fraction shed now, read from HAProxy (a restarted balancer sheds nothing); None: a config without it
        shed_now = self.shed_now = self.read_shed_now(state) if view.shed_total is not None else None
        nodes = state.get("nodes") or {}
        counters: dict[str, NodeCounters] = {}
        problems: dict[str, str] = {}
        for name, node in nodes.items():
            models = list(node.get("models") or {})
            found, error = self.read_node(node["metrics_url"], self.cfg.metrics_timeout_s, models)
            problem = health_problem(view.servers.get(name), found, error)
            if problem:
                problems[name] = problem
            else:
                counters[name] = found  # type: ignore[assignment]
        # nodes a rollout or an operator drained are theirs; while nodes serve different versions (a rollout's
        # canary), the weights are the rollout's too
        managed = [n for n, node in nodes.items() if node.get("lb_state", "ready") == "ready"]
        versions = {json.dumps(served_versions(node), sort_keys=True) for node in nodes.values()}
        hands_off = len(versions) > 1
        healthy = [n for n in managed if n in counters]
        signals = self.tracker.update(now, view, counters, healthy)
        if signals is not None:  # a node being added counts: the law does not ask for it twice
            signals = dataclasses.replace(signals, starting=self.operator.starting())
        decision = self.law.decide(signals) if self.law is not None and signals is not None else None
        low, high = self.cfg.bounds(self.cpus, self.fleet_bounds(state))
        weights_now = {n: view.servers[n].weight for n in managed if n in view.servers}
        no_switch = switch_unavailable(state)  # "" when the nodes' batching mode can be switched
        if not no_switch and self.law is not None and not self.law.adapts_batching:
            no_switch = f"the {self.cfg.policy} policy keeps the deployed knobs"
        batching_modes = None if no_switch else {n: node_mode(nodes[n]) for n in managed}
        actions = [] if hands_off else plan_actions(
            decision, weights_now=weights_now, up=[n for n, s in view.servers.items() if s.status == "UP"],
            unhealthy={n: p for n, p in problems.items() if n in weights_now}, last_batching=self.last_batching,
            share_tolerance=self.cfg.share_tolerance,
            batching_modes=batching_modes if self.switcher.in_flight() is None else {},  # one switch at a time
            no_batching=f"advisory: {no_switch}", shed_now=shed_now, shed_tolerance=self.cfg.shed_tolerance)
        if not self.cfg.shed:
            actions = [dataclasses.replace(a, advisory=True, reason=f"{a.reason}; advisory: LiveConfig.shed is off")
                       if a.kind == "shed" and not a.advisory else a for a in actions]
        if decision is not None:
            self.last_batching = decision.batching
        switches = [a for a in actions if a.kind == "batching" and not a.advisory]  # run in the background
        others = [a for a in actions if a not in switches]
        applied = apply_actions(others, self.control or Fleet(self.home)) if others else []
        applied += [self.switcher.submit(a) for a in switches]
        for done in applied:
            if done["kind"] == "shed" and done["applied"]:
                self.shed_now = float(done["value"])
        scale = None if hands_off else plan_scale(
            decision, nodes_now=len(nodes), managed=weights_after(managed, weights_now, applied),
            unhealthy=list(problems), min_nodes=low, max_nodes=high, in_flight=self.operator.in_flight(),
            blocked=self.operator.blocked())
        if scale is not None:
            applied.append(self.apply_scale(scale))
        finished = self.operator.finished()
        switched = self.switcher.finished()  # batching switches that ended since the last tick (seconds, or why not)
        self.count_node_seconds(now, nodes)
        self.ticks += 1
        record = {"at": utc_now(), "tick": self.ticks, "signals": signals_record(signals, problems),
                  "actions": applied, "weights_before": weights_now, "nodes": len(nodes),
                  "shed": self.shed_view()}
        if batching_modes is not None:  # each node's batching mode before this tick's switch
            record["batching_modes"] = batching_modes
        if finished:  # node operations that ended since the last tick: added (with seconds) or failed (why)
            record["node_operations"] = finished
        if switched:
            record["batching_switches"] = switched
        if hands_off:
            record["hands_off"] = "nodes serve different model versions (a rollout): weights left to it"
        if decision is not None:
            record["decision"] = {"target_nodes": decision.target_nodes, "weights": decision.weights,
                                  "drained": list(decision.drained), "batching": decision.batching,
                                  "shed_fraction": round(decision.shed_fraction, 4), "reprofile": decision.reprofile,
                                  "reasons": list(decision.reasons)}
        self.write_status(record)
        advice = sorted((a["kind"], json.dumps(a["value"])) for a in applied if a["advisory"])
        flagged = sorted(decision.reprofile) if decision is not None else self.last_reprofile
        if any(not a["advisory"] for a in applied) or advice != self.last_advice or finished or switched or \
                flagged != self.last_reprofile or now - self.last_logged_s >= self.cfg.log_every_s:
            self.log_decision(record)
            self.last_logged_s, self.last_advice, self.last_reprofile = now, advice, flagged
        return record

    def apply_scale(self, action: Action) -> dict[str, Any]:
        """Start the node operation of a scale action (in the background); the action as logged."""
        record = action.to_dict()
        if action.advisory:
            record["applied"] = False
        elif not self.cfg.scale:
            record.update(advisory=True, applied=False, reason=f"{action.reason}; advisory: LiveConfig.scale is off")
        else:
            record["applied"] = self.operator.submit(action)  # started; its end is logged as a node operation
        return record

    def read_shed_now(self, state: Mapping[str, Any]) -> float | None:
        """The fraction the balancer sheds now (None: its config has no shedding); the last one known when HAProxy
        does not answer."""
        try:
            self.shed_now = self.read_shed(state["balancer"])
        except (RecForgeError, KeyError, TypeError) as err:
            LOG.warning("could not read the shed fraction from HAProxy: %s", first_line(err))
        return self.shed_now

    def shed_view(self) -> dict[str, Any]:
        """The shed fraction in effect and the requests shed so far, for the log and controller.json."""
        return {"fraction": self.shed_now, "requests": self.shed_count.total}

    def count_node_seconds(self, now: float, nodes: Mapping[str, Any]) -> None:
        """Add the cores allocated since the last tick (every node in state.json, starting ones included)."""
        if self.last_tick_s is not None and now > self.last_tick_s:
            cores = sum(scaling.node_cores(node, self.cfg.cores_per_node) for node in nodes.values())
            self.node_seconds += cores * (now - self.last_tick_s)
        self.last_tick_s = now

    def write_status(self, record: Mapping[str, Any]) -> None:
        corrections, measured = {}, {}
        if isinstance(self.law, ElasticController):
            names, factor = self.law.corrections.names, self.law.corrections.factor
            corrections = {name: round(float(factor[i]), 4) for i, name in enumerate(names)}
            measured = {name: int(self.law.corrections.measured[i]) for i, name in enumerate(names)}
        status = {"pid": self.pid, "last_tick_at": record["at"], "ticks": self.ticks, "law": self.law is not None,
                  "batching": self.last_batching, "batching_switch": self.switcher.in_flight(),
                  "corrections": corrections, "corrections_measured": measured,
                  "reprofile": (record.get("decision") or {}).get("reprofile") or {},
                  "node_seconds": round(self.node_seconds, 3), "node_operation": self.operator.in_flight(),
                  "shed": {**self.shed_view(), **self.shed_count.to_dict()},
                  "last": record}
        path = Path(self.entry["status_file"])
        tmp = path.with_name(f".{path.name}.{self.pid}.tmp")
        tmp.write_text(json.dumps(status, default=str) + "\n")
        os.replace(tmp, path)

    def log_decision(self, record: Mapping[str, Any]) -> None:
        with open(self.entry["decisions"], "a") as log:
            log.write(json.dumps({"at": utc_now(), **record}, default=str) + "\n")

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Tick until the fleet's state is gone or names another controller."""
        self.start()
        while True:
            started = self.clock()
            try:
                state = read_state(self.home)
            except RecForgeError as err:  # unreadable: try again next tick
                LOG.warning("state unreadable: %s", first_line(err))
                state = {"controller": {"pid": self.pid}}
            if state is None or (state.get("controller") or {}).get("pid") != self.pid:
                LOG.info("the fleet's state no longer names this controller: exiting")
                return 0
            try:
                self.tick(state)
            except Exception as err:  # the controller outlives a bad tick (a busy socket, a node mid-restart)
                LOG.warning("tick failed: %s", first_line(err))
            time.sleep(max(0.0, self.cfg.interval_s - (self.clock() - started)))


class LazyFleet:
    """The fleet handle, opened when a node operation needs it (a controller starts before it has any to do)."""

    def __init__(self, home: Path):
        self.home = home

    def add_node(self) -> dict[str, Any]:
        return Fleet(self.home).add_node()

    def remove_node(self, name: str) -> dict[str, Any]:
        return Fleet(self.home).remove_node(name)


def weights_after(managed: Sequence[str], weights_now: Mapping[str, int], applied: Sequence[Mapping[str, Any]]
                  ) -> dict[str, int | None]:
    """Each managed node's weight once this tick's applied weight and drain actions took effect: the scale-in choice
    (live_scaling.removal_candidate) must see a node drained in this very tick as out of rotation, or it removes a
    healthy node and leaves the drained one alone (a live slow-node run once had no ready node for 5 s that way)."""
    weights: dict[str, int | None] = {n: weights_now.get(n) for n in managed}
    for done in applied:
        if done.get("kind") in ("weight", "drain") and done.get("applied") and done.get("node") in weights:
            weights[done["node"]] = int(done["value"])
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.elastic.live",
                                     description="The fleet's elastic controller (started by `fleet up`, stopped "
                                                 "by `fleet down`); run by hand to restart one that died.")
    parser.add_argument("--fleet-dir", help="the fleet's folder (holds state.json; default $RECFORGE_HOME/fleet)")
    parser.add_argument("--config", default=None,
                        help="LiveConfig as JSON, e.g. '{\"interval_s\": 2}' (default: the last controller's)")
    args = parser.parse_args(argv)
    root = Path(args.fleet_dir).resolve() if args.fleet_dir else fleet_dir()
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = json.loads(args.config) if args.config else \
            ((read_state(root.parent) or {}).get("controller") or {}).get("config") or {}
        controller = LiveController(root, config_from_dict(LiveConfig, config))
        return controller.run()
    except RecForgeError as err:
        LOG.error("%s", first_line(err))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
