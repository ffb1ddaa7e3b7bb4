"""The fleet's supervisor process: every ``interval_s`` it looks at each node the fleet started (pid + command line
in this fleet's folder), and on a crash or a hang takes the node out of rotation, restarts its tritonserver from the
same repository with the same ports and settings, waits until it is ready and warm, and puts it back at its weight.
The decisions are :class:`~recforge.serving.fleet.supervision.RestartPolicy`'s; the actions are
:class:`FleetNodeActions` behind the narrow :class:`NodeActions` interface. Restarts, recovery seconds and the
crash-loop alarm are recorded in state.json (``nodes.<node>.supervision``) and ``<fleet dir>/supervisor.log``.

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
from recforge.inference import triton as tr
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet.processes import belongs_to_fleet, fleet_processes, process_alive
from recforge.serving.fleet.state import read_state, state_lock, utc_now, write_state
from recforge.serving.fleet.supervision import RestartPolicy, SupervisorConfig

LOG = logging.getLogger("recforge.fleet.supervisor")
TRITON_DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64, "TYPE_INT64": np.int64,
                 "TYPE_INT32": np.int32, "TYPE_INT8": np.int8, "TYPE_UINT8": np.uint8, "TYPE_BOOL": np.bool_}
SERVER_ARGS = ["--metrics-config=summary_latencies=true"]  # as `fleet up` starts the nodes


class NodeActions(Protocol):
    """What the supervisor does to a node; the real one is :class:`FleetNodeActions`."""

    def nodes(self) -> list[str]: ...

    def observe(self, node: str) -> tuple[bool, bool]:
        """(its process is alive and the fleet's, its health check passed)."""

    def take_out(self, node: str) -> None: ...

    def restart(self, node: str) -> None:
        """Start it again, wait until ready and warm, put it back in rotation; RecForgeError if that fails."""

    def record(self, node: str, **changes: Any) -> None: ...


class FleetNodeActions:
    """The supervisor's actions on the fleet in ``root`` (its state.json, its HAProxy, its nodes)."""

    def __init__(self, root: Path, cfg: SupervisorConfig):
        self.root = root
        self.home = root.parent
        self.cfg = cfg

    def state(self) -> dict[str, Any]:
        state = read_state(self.home)
        if state is None:
            raise RecForgeError(f"no fleet state in {self.root}")
        return state

    def nodes(self) -> list[str]:
        return list(self.state()["nodes"])

    def ours(self, pid: int | None) -> bool:
        """The process is alive and is a tritonserver of this fleet (never act on a process we did not start)."""
        return bool(pid) and process_alive(pid) and belongs_to_fleet(int(pid), self.root)

    def observe(self, node: str) -> tuple[bool, bool]:
        import requests

        info = self.state()["nodes"][node]
        if info.get("lb_state", "ready") != "ready":  # drained by a rollout or an operator: theirs to handle
            return True, True
        if not self.ours(info.get("pid")):
            return False, False
        try:
            ok = requests.get(f"{info['url']}/v2/health/ready", timeout=self.cfg.health_timeout_s).status_code == 200
        except requests.RequestException:
            ok = False
        return True, ok

    def take_out(self, node: str) -> None:
        lb.HAProxy.from_state(self.state()["balancer"]).set_state(node, "maint")

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

    def restart(self, node: str) -> None:
        state = self.state()
        info = state["nodes"][node]
        self.stop_old(info.get("pid"))
        models = info.get("models") or {}
        server = tr.TritonServer(info["repo"], http_port=info["http_port"], grpc_port=info["grpc_port"],
                                 metrics_port=info["metrics_port"], log_path=info["log"], load_models=list(models),
                                 startup_timeout_s=self.cfg.ready_timeout_s, extra_args=SERVER_ARGS)
        server.start()
        self.record(node, pid=server.process.pid)
        server.wait_ready()
        for model, entry in models.items():
            version = int(entry["version"])
            if not server.model_ready(model, version):  # a version staged by a rollout: load exactly it
                config = tr.model_config(server.url, model)
                config["version_policy"] = {"specific": {"versions": [version]}}
                tr.load_model(server.url, model, config=config, timeout=self.cfg.ready_timeout_s)
            warm(server.url, model, version)
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
            state["nodes"][node].update(changes)
            write_state(self.root, state)


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def warm(url: str, model: str, version: int) -> None:
    """One inference of one row of zeros (valid indices for every embedding) on the node's own port."""
    config = tr.model_config(url, model)
    batched = int(config.get("max_batch_size") or 0) > 0
    inputs = {}
    for spec in config["input"]:
        dims = [int(d) for d in spec.get("dims", [])]
        inputs[spec["name"]] = np.zeros(([1] if batched else []) + [max(d, 1) for d in dims],
                                        dtype=TRITON_DTYPES[spec["data_type"]])
    tr.infer(url, model, inputs, version=version)


class Supervisor:
    """The control loop: one :class:`RestartPolicy` per node, acting through ``actions``; ``clock`` is injected."""

    def __init__(self, actions: NodeActions, cfg: SupervisorConfig, clock: Any = time.monotonic):
        self.actions = actions
        self.cfg = cfg
        self.clock = clock
        self.policies: dict[str, RestartPolicy] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}

    def tick(self) -> None:
        for node in self.actions.nodes():
            policy = self.policies.setdefault(node, RestartPolicy(self.cfg))
            alive, healthy = self.actions.observe(node)
            decision = policy.observe(self.clock(), alive=alive, healthy=healthy)
            if decision.take_out:
                LOG.warning("%s failed (%s): out of rotation", node, decision.reason)
                try:
                    self.actions.take_out(node)
                except RecForgeError as err:
                    LOG.warning("%s: could not take it out of rotation: %s", node, first_line(err))
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
    actions = FleetNodeActions(root, cfg)
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
