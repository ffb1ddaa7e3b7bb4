"""The fleet's supervisor process: every ``interval_s`` it looks at each process the fleet started — the nodes (pid +
command line in this fleet's folder) and the balancer (HAProxy) — and on a crash or a hang takes a node out of
rotation, records what was on it (recforge.serving.fleet.crashes: the suspects from the balancer's request log, and
the quarantine of a request body that crashed nodes repeatedly), restarts its tritonserver from the same repository
with the same ports and settings (and batching mode: recforge.serving.fleet.batching), waits until it is ready and
warm, and puts it back at its weight. A dead balancer is started again from its generated config on the same port,
with every node's state and weight restored; a dead elastic controller (recforge.serving.elastic.live) is started
again with its config (it re-reads the fleet itself). The decisions are
:class:`~recforge.serving.fleet.supervision.RestartPolicy`'s, one per unit (node or balancer); the actions are
:class:`FleetActions` behind the narrow :class:`UnitActions` interface. Restarts, recovery seconds and the
crash-loop alarm are recorded in state.json (``nodes.<node>.supervision``, ``balancer.supervision``) and
``<fleet dir>/supervisor.log``.

Started detached by ``fleet up`` (``FleetConfig.supervise``); stopped by ``fleet down``. It exits by itself when the
state file is gone or names another supervisor. ``python -m recforge.serving.fleet.supervisor --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recforge.core.config import config_from_dict
from recforge.core.errors import RecForgeError, first_line
from recforge.core.timing import utc_now
from recforge.inference import triton as tr
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet import batching, crashes
from recforge.serving.fleet.lifecycle import start_controller
from recforge.serving.fleet.processes import (
    belongs_to_fleet,
    fleet_processes,
    group_cpu,
    placement_of,
    process_alive,
    start_node_again,
)
from recforge.serving.fleet.state import read_state, state_lock, write_state
from recforge.serving.fleet.supervision import BusyWatch, RestartPolicy, SupervisorConfig
from recforge.serving.loadbalancer.requestlog import LogTail, failed_on

LOG = logging.getLogger("recforge.fleet.supervisor")
TRITON_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64, "TYPE_INT64": np.int64,
                 "TYPE_INT32": np.int32, "TYPE_INT8": np.int8, "TYPE_UINT8": np.uint8, "TYPE_BOOL": np.bool_}
BALANCER = "balancer"  # the unit name of the fleet's HAProxy (node names are node0, node1, ...)
CONTROLLER = "controller"  # the elastic controller (recforge.serving.elastic.live): restarted when it died


class UnitActions(Protocol):
    """What the supervisor does to a unit (a node, or the balancer); the real one is :class:`FleetActions`."""

    def units(self) -> list[str]: ...

    def observe(self, unit: str) -> tuple[bool, bool]:
        """(its process is alive and the fleet's, its health check passed)."""

    def take_out(self, unit: str) -> None: ...

    def record_failure(self, unit: str, failure: str) -> None:
        """Record what was on it when it failed (the crash record)."""

    def restart(self, unit: str) -> None:
        """Start it again, wait until ready and warm, put it back in rotation; RecForgeError if that fails."""

    def record(self, unit: str, **changes: Any) -> None: ...


class FleetActions:
    """The supervisor's actions on the fleet in ``root`` (its state.json, its HAProxy, its nodes)."""

    def __init__(self, root: Path, cfg: SupervisorConfig):
        self.root = root
        self.home = root.parent
        self.cfg = cfg
        self.request_log: LogTail | None = None
        self.attributed: set[str] = set()  # unique ids of requests already named in a crash record
        self.busy = BusyWatch(cfg)

    def state(self) -> dict[str, Any]:
        state = read_state(self.home)
        if state is None:
            raise RecForgeError(f"no fleet state in {self.root}")
        return state

    def units(self) -> list[str]:
        state = self.state()
        if self.request_log is None and state.get("balancer"):
            self.request_log = LogTail(state["balancer"]["log"])
        if self.request_log is not None:
            self.request_log.poll()  # keep the failures of the last requests, for the crash records
        return ([BALANCER] if state.get("balancer") else []) + ([CONTROLLER] if state.get("controller") else []) \
            + list(state["nodes"])

    def ours(self, pid: int | None) -> bool:
        """The process is alive and is a tritonserver of this fleet (never act on a process we did not start)."""
        return bool(pid) and process_alive(pid) and belongs_to_fleet(int(pid), self.root)

    def observe(self, node: str) -> tuple[bool, bool]:
        import requests

        if node == BALANCER:
            return self.observe_balancer()
        if node == CONTROLLER:  # it serves nothing: alive is all there is to check
            alive = process_alive((self.state().get("controller") or {}).get("pid"))
            return alive, alive
        info = self.state()["nodes"][node]
        if info.get("lb_state", "ready") != "ready":  # drained by a rollout or an operator: theirs to handle
            return True, True
        if not self.ours(info.get("pid")):
            return False, False
        try:
            ok = requests.get(f"{info['url']}/v2/health/ready", timeout=self.cfg.health_timeout_s).status_code == 200
        except requests.RequestException:
            ok = False
        cpu_s, stopped = group_cpu(int(info["pid"]), self.root)
        if self.busy.busy(node, time.monotonic(), cpu_s, stopped=stopped, healthy=ok):
            LOG.info("%s: health check failed while it works (CPU in use): busy, not hung", node)
            return True, True
        return True, ok

    def observe_balancer(self) -> tuple[bool, bool]:
        balancer = self.state()["balancer"]
        if not self.ours(balancer.get("pid")):
            return False, False
        try:
            lb.HAProxy.from_state(balancer).command("show info")
        except RecForgeError:
            return True, False
        return True, True

    def take_out(self, node: str) -> None:
        if node not in (BALANCER, CONTROLLER):
            lb.HAProxy.from_state(self.state()["balancer"]).set_state(node, "maint")

    def record_failure(self, node: str, failure: str) -> None:
        """Append the crash record of ``node`` (the suspects from the request log) to crashes.jsonl, and quarantine
        the body hashes that were suspects of ``quarantine_after`` crashes."""
        if node in (BALANCER, CONTROLLER):
            return
        now = time.time()
        suspects = []
        if self.request_log is not None:
            self.request_log.poll()
            suspects = [r for r in failed_on(self.request_log.failures, node, now - self.cfg.suspect_window_s, now)
                        if r.unique_id not in self.attributed]
            self.attributed.update(r.unique_id for r in suspects)
        crashes.append_crash(self.root, crashes.crash_record(node, failure, now, suspects))
        LOG.warning("%s: %s with %d request(s) on it: %s", node, failure, len(suspects),
                    ", ".join(f"{r.method} {r.path} sha256={r.body_sha256}" for r in suspects[:5]) or "none")
        quarantined = crashes.read_quarantine(self.root)
        new = crashes.to_quarantine(crashes.read_crashes(self.root), self.cfg.quarantine_after, quarantined)
        if not new:
            return
        path = crashes.write_quarantine(self.root, [*quarantined, *new])
        proxy = lb.HAProxy.from_state(self.state()["balancer"])
        for sha in new:
            LOG.error("QUARANTINE request body sha256=%s: a suspect of %d crashes; the balancer answers it 422",
                      sha, self.cfg.quarantine_after)
            try:
                proxy.command(f"add acl {path} {sha}")
            except RecForgeError as err:  # the file has it: a restarted balancer reads it
                LOG.warning("could not add %s to the running balancer's quarantine: %s", sha, first_line(err))

    def stop_old(self, pid: int | None) -> None:
        """Kill what is left of the node's old process group (a hung server, python-backend stubs): only processes
        whose command line names this fleet's folder."""
        if not pid:
            return
        def group() -> list[int]:
            return [p for p in fleet_processes(self.root) if p == pid or process_group(p) == pid]

        for other in group():
            with contextlib.suppress(OSError):
                os.kill(other, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart_balancer(self) -> None:
        """Start HAProxy again from its generated config (same port, socket, log), then restore each node's state
        and weight as state.json has them."""
        state = self.state()
        old = lb.HAProxy.from_state(state["balancer"])
        self.stop_old(old.pid)
        proxy = lb.HAProxy(old.config_path, old.socket_path, old.log_path, old.port,
                           placement=placement_of(state["balancer"]))
        proxy.start()
        self.record(BALANCER, pid=proxy.pid)
        for name, info in state["nodes"].items():
            if info.get("lb_state", "ready") != "ready":
                proxy.set_state(name, info["lb_state"])
            if info.get("weight") is not None:
                proxy.set_weight(name, int(info["weight"]))

    def restart(self, node: str) -> None:
        if node == BALANCER:
            return self.restart_balancer()
        if node == CONTROLLER:  # it re-reads the fleet's state and HAProxy's weights itself
            entry = self.state().get("controller") or {}
            self.stop_old(entry.get("pid"))
            self.record(CONTROLLER, **start_controller(self.root, entry.get("config") or {}))
            return None
        state = self.state()
        info = state["nodes"][node]
        self.stop_old(info.get("pid"))
        models = info.get("models") or {}
        server = start_node_again(info, list(models), self.cfg.ready_timeout_s)  # its CPU set and quota too
        self.record(node, pid=server.process.pid)
        server.wait_ready()
        for model, entry in models.items():
            version = int(entry["version"])
            if not server.model_ready(model, version):  # a version staged by a rollout: load exactly it
                config = tr.model_config(server.url, model)
                config["version_policy"] = {"specific": {"versions": [version]}}
                tr.load_model(server.url, model, config=config, timeout=self.cfg.ready_timeout_s)
            warm(server.url, model, version)
        batching.restore_mode(server.url, info, state, timeout_s=self.cfg.ready_timeout_s)  # the mode it was in
        proxy = lb.HAProxy.from_state(state["balancer"])
        proxy.set_state(node, "ready")
        if info.get("weight") is not None:
            proxy.set_weight(node, int(info["weight"]))
        proxy.wait_status(node, "UP", timeout_s=self.cfg.ready_timeout_s)

    def record(self, node: str, **changes: Any) -> None:
        with state_lock(self.root):
            state = read_state(self.home)
            if state is None:
                return
            entry = {BALANCER: state.get("balancer"), CONTROLLER: state.get("controller")}.get(node) or \
                state["nodes"][node]
            entry.update(changes)
            write_state(self.root, state)


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def warm(url: str, model: str, version: int) -> None:
    """One inference of one row of zeros (valid indices for every embedding) on the node's own port. A jagged model
    (``max_batch_size: 0``, variable first dims: dense [B, Dd], indices [N], lengths [B, T]) gets one item whose
    bags are all empty: zeros for the item-major inputs and no ids."""
    config = tr.model_config(url, model)
    batched = int(config.get("max_batch_size") or 0) > 0
    inputs = {}
    for spec in config["input"]:
        dims = [int(d) for d in spec.get("dims", [])]
        if batched:
            shape = [1] + [max(d, 1) for d in dims]
        else:  # an id list (rank 1, variable) is empty; a variable first dim of an item-major input is one item
            shape = [0] if dims == [-1] else [max(d, 1) for d in dims]
        inputs[spec["name"]] = np.zeros(shape, dtype=TRITON_DTYPES[spec["data_type"]])
    tr.infer(url, model, inputs, version=version)


class Supervisor:
    """The control loop: one :class:`RestartPolicy` per unit, acting through ``actions``; ``clock`` is injected."""

    def __init__(self, actions: UnitActions, cfg: SupervisorConfig, clock: Any = time.monotonic):
        self.actions = actions
        self.cfg = cfg
        self.clock = clock
        self.policies: dict[str, RestartPolicy] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}

    def tick(self) -> None:
        for node in self.actions.units():
            policy = self.policies.setdefault(node, RestartPolicy(self.cfg))
            alive, healthy = self.actions.observe(node)
            decision = policy.observe(self.clock(), alive=alive, healthy=healthy)
            if decision.take_out:
                LOG.warning("%s failed (%s): out of rotation", node, decision.reason)
                try:
                    self.actions.take_out(node)
                except RecForgeError as err:
                    LOG.warning("%s: could not take it out of rotation: %s", node, first_line(err))
                try:
                    self.actions.record_failure(node, policy.failure or "failure")
                except (OSError, RecForgeError) as err:
                    LOG.warning("%s: could not record the failure: %s", node, first_line(err))
                self.actions.record(node, supervision=self.summary(node, "restarting", decision.reason))
            if decision.alarm:
                alarm = f"ALARM {node}: {decision.reason}; see its log and restart the fleet by hand"
                LOG.error(alarm)
                self.actions.record(node, supervision=self.summary(node, "given_up", decision.reason, alarm=alarm))
            if decision.restart:
                LOG.warning("%s: %s", node, decision.reason)
                try:
                    self.actions.restart(node)
                except Exception as err:  # any failure to bring it back is a failed restart, retried after backoff
                    policy.restart_failed(self.clock())
                    LOG.warning("%s: restart failed: %s", node, first_line(err))
                    continue
                failure = policy.failure
                recovery = policy.restarted(self.clock())
                self.history.setdefault(node, []).append({"at": utc_now(), "failure": failure,
                                                          "recovery_s": round(recovery, 2)})
                LOG.warning("%s back in rotation after %.2f s", node, recovery)
                self.actions.record(node, supervision=self.summary(node, "ok", "restarted"))

    def summary(self, node: str, status: str, reason: str, alarm: str | None = None) -> dict[str, Any]:
        return {"status": status, "reason": reason, "alarm": alarm, "restarts": self.history.get(node, [])}


def run(root: Path, cfg: SupervisorConfig) -> int:
    """Supervise the fleet in ``root`` until its state is gone or names another supervisor."""
    actions = FleetActions(root, cfg)
    supervisor = Supervisor(actions, cfg)
    LOG.info("supervising %s every %g s (pid %d): %s", root, cfg.interval_s, os.getpid(), cfg)
    while True:
        try:
            state = read_state(actions.home)
        except RecForgeError:
            state = None
        if state is None or (state.get("supervisor") or {}).get("pid") != os.getpid():
            LOG.info("the fleet's state no longer names this supervisor: exiting")
            return 0
        try:
            supervisor.tick()
        except Exception as err:  # the supervisor outlives a bad tick (a state file mid-rewrite, a busy socket)
            LOG.warning("tick failed: %s", first_line(err))
        time.sleep(cfg.interval_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.fleet.supervisor",
                                     description="Restart the fleet's crashed or hung tritonserver nodes (started "
                                                 "by `fleet up`, stopped by `fleet down`).")
    parser.add_argument("--fleet-dir", required=True, help="the fleet's folder (holds state.json)")
    parser.add_argument("--config", default="{}", help="SupervisorConfig as JSON, e.g. '{\"max_restarts\": 5}'")
    args = parser.parse_args(argv)
    cfg = config_from_dict(SupervisorConfig, json.loads(args.config))
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return run(Path(args.fleet_dir).resolve(), cfg)


if __name__ == "__main__":
    raise SystemExit(main())
