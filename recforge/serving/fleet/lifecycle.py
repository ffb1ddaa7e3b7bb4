"""Fleet up, down and status: start the tritonserver nodes and HAProxy in front (each in its CPU set when the config
asks for placement), stop every process of the fleet, and check the state file against the running processes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.contracts.profile import read_profile
from recforge.core import cpusets
from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.core.hashing import sha256_bytes
from recforge.core.ports import free_ports
from recforge.core.timing import utc_now
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet import crashes
from recforge.serving.fleet.balancer import balancer_entry, write_balancer_config
from recforge.serving.fleet.batching import node_mode
from recforge.serving.fleet.config import FleetConfig
from recforge.serving.fleet.processes import NODE_SERVER_ARGS, fleet_processes, process_alive, stop_groups
from recforge.serving.fleet.sources import ModelSource
from recforge.serving.fleet.state import (
    NODE_REMOVING,
    NODE_STARTING,
    STATE_VERSION,
    fleet_dir,
    read_state,
    state_lock,
    write_state,
)
from recforge.serving.fleet.supervision import SupervisorConfig
from recforge.serving.pids import cmdline

CONTROLLER_STATUS = "controller.json"  # the controller's last tick (recforge.serving.elastic.live)


def up(source: ModelSource, cfg: FleetConfig | None = None, *, home: str | Path | None = None,
       notes: Sequence[str] = (), supervisor: SupervisorConfig | None = None,
       controller: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Start ``cfg.nodes`` Triton nodes serving ``source`` and HAProxy in front, with ``supervisor`` the
    supervisor process that restarts crashed or hung nodes, and with ``controller`` (a LiveConfig as a dict) the
    elastic controller (recforge.serving.elastic.live); returns the state (also written to state.json).
    ConfigError if a fleet is already running; on any failure everything started is stopped."""
    cfg = cfg or FleetConfig()
    root = fleet_dir(home)
    existing = read_state(home)
    if existing and any(process_alive(p) for p in _state_pids(existing)):
        raise ConfigError(f"a fleet is already running ({len(existing['nodes'])} nodes behind {existing['url']}); "
                          "run `make fleet-down` first")
    down(home=home)  # leftovers of a stale state or of a failed start
    # a new fleet's controller starts afresh: a past fleet's per-node corrections and node-seconds are not its own
    # (controller.json is what a restarted controller of the same fleet re-reads; the decisions log is history, kept)
    (root / CONTROLLER_STATUS).unlink(missing_ok=True)
    started = time.monotonic()
    profile = read_profile(source.profile_path)
    serving_config = (mr.serving_config_from_profile(source.profile_path) if source.profile_path
                      else mr.ServingConfig())
    repository_spec = source.repository_spec()
    lb_port = cfg.port or free_ports(1)[0]
    plan = cfg.cpu_plan(cpusets.host_cpus())  # None: placement off, every process on every CPU
    groups = {role: cpusets.CpuGroup(cpu_group_prefix(root) + role, placement)
              for role, placement in (plan.placements.items() if plan else ()) if role != cpusets.APPARATUS}
    state: dict[str, Any] = {"version": STATE_VERSION, "created_at": utc_now(), "status": "starting",
                             "url": f"http://127.0.0.1:{lb_port}", "target": cfg.target, "source": source.to_dict(),
                             "notes": list(notes), "nodes": {}, "balancer": None,
                             "config": dataclasses.asdict(cfg)}  # what fleet.scaling adds a node by
    if plan is not None:  # the load generator's CPUs are recorded for the tools that drive this fleet
        apparatus = plan.placements.get(cpusets.APPARATUS)
        state["placement"] = {"plan": plan.describe(), "shared": list(plan.shared),
                              "apparatus_cpus": apparatus.cpu_list if apparatus else None}
    servers = []
    try:
        with state_lock(root):
            write_state(root, state)
        for i in range(cfg.nodes):
            name = f"node{i}"
            node_root = root / name
            shutil.rmtree(node_root / "repo", ignore_errors=True)  # a fresh repository: no versions of a past fleet
            model_dir = mr.write_model_repository(
                node_root / "repo", model_name=source.model, model_path=source.onnx_path, spec=repository_spec,
                serving_config=serving_config, version=source.version, expected_sha256=source.expected_sha256,
                provenance={"fleet_source": source.origin, **({"profile": source.profile_path} if profile else {})})
            http, grpc, metrics = free_ports(3)
            server = tr.TritonServer(node_root / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics,
                                     log_path=node_root / "tritonserver.log", load_models=[source.model],
                                     startup_timeout_s=cfg.startup_timeout_s,
                                     extra_args=list(NODE_SERVER_ARGS),
                                     placement=groups.get(name))
            server.start()
            servers.append(server)
            state["nodes"][name] = {
                "url": server.url, "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
                "metrics_url": server.metrics_url, "pid": server.process.pid, "repo": str(node_root / "repo"),
                "log": str(server.log_path), "target": cfg.target, "weight": None, "lb_state": "ready",
                "models": {source.model: {"version": source.version, **served_file(model_dir),
                                          "origin": source.origin, "staged_at": utc_now()}},
            }
            if name in groups:
                state["nodes"][name]["placement"] = groups[name].to_state()
            with state_lock(root):
                write_state(root, state)  # pids on disk before waiting: `down` finds them if this fails
        for server in servers:  # the nodes start in parallel; wait for each
            server.wait_ready()
            if not server.model_ready(source.model, source.version):
                raise RecForgeError(f"{server.url} is ready but model {source.model} v{source.version} is not; "
                                    f"see {server.log_path}")
        hadir = root / "haproxy"
        crashes.write_quarantine(root, crashes.read_quarantine(root))  # kept across fleets
        proxy = lb.HAProxy(hadir / "haproxy.cfg", lb.admin_socket_path(hadir), hadir / "haproxy.log", lb_port,
                           placement=groups.get(cpusets.BALANCER))
        # admission limits from the config.pbtxt the nodes serve, weights from the profile (fleet/balancer.py)
        state["balancer"] = balancer_entry(proxy, lb.BalancerSettings(check_inter_ms=cfg.check_inter_ms),
                                           source.profile_path if profile else None, cfg.target)
        write_balancer_config(state, home)
        proxy.start()
        state["balancer"].update(proxy.state())
        if cpusets.BALANCER in groups:
            state["balancer"]["placement"] = groups[cpusets.BALANCER].to_state()
        with state_lock(root):
            write_state(root, state)
        for name in state["nodes"]:
            proxy.wait_status(name, "UP", timeout_s=30)
        servers_now = proxy.servers()
        for name, node in state["nodes"].items():
            node["weight"] = servers_now[name]["weight"]
        if supervisor is not None:
            state["supervisor"] = start_supervisor(root, supervisor)
        if controller is not None:
            state["controller"] = start_controller(root, controller)
        state["status"] = "up"
        state["up_seconds"] = round(time.monotonic() - started, 2)
        with state_lock(root):
            write_state(root, state)
        return state
    except BaseException:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop(timeout=5)
        down(home=home)
        raise


def start_supervisor(root: Path, cfg: SupervisorConfig) -> dict[str, Any]:
    """Start the supervisor detached (own session, log ``supervisor.log``); its state entry. It runs while the
    state names its pid, so the caller writes that entry to state.json."""
    log_path = root / "supervisor.log"
    command = [sys.executable, "-m", "recforge.serving.fleet.supervisor", "--fleet-dir", str(root),
               "--config", json.dumps(dataclasses.asdict(cfg))]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return {"pid": process.pid, "log": str(log_path), "config": dataclasses.asdict(cfg), "started_at": utc_now()}


def start_controller(root: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Start the elastic controller detached (own session, log ``controller.log``); its state entry. Started by
    module name, not imported: the controller builds on this package. It checks ``config`` itself (a bad one: it
    exits at once, its log says why) and runs while the state names its pid."""
    log_path = root / "controller.log"
    command = [sys.executable, "-m", "recforge.serving.elastic.live", "--fleet-dir", str(root),
               "--config", json.dumps(dict(config))]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return {"pid": process.pid, "log": str(log_path), "decisions": str(root / "controller-decisions.jsonl"),
            "status_file": str(root / CONTROLLER_STATUS), "config": dict(config), "started_at": utc_now()}


def controller_view(entry: Mapping[str, Any] | None, last: int = 3) -> dict[str, Any] | None:
    """The controller for ``fleet status``: running or not, its last tick, the nodes due a re-profile, the
    balancer's shed fraction and the requests shed so far, its last decisions (``last`` lines of its decisions
    log)."""
    if not entry:
        return None
    view: dict[str, Any] = {"pid": entry.get("pid"), "running": process_alive(entry.get("pid")),
                            "log": entry.get("log"), "decisions_log": entry.get("decisions")}
    try:
        tick = json.loads(Path(entry["status_file"]).read_text())
        view.update(last_tick_at=tick.get("last_tick_at"), ticks=tick.get("ticks"), law=tick.get("law"),
                    corrections=tick.get("corrections"), reprofile=tick.get("reprofile"), shed=tick.get("shed"))
    except (OSError, ValueError, KeyError, TypeError):
        view["last_tick_at"] = None
    try:
        data = Path(entry["decisions"]).read_bytes()
        lines = data[-65536:].decode(errors="replace").splitlines()[1 if len(data) > 65536 else 0:]
        view["last_decisions"] = [json.loads(line) for line in lines[-last:] if line.strip()] if last > 0 else []
    except (OSError, ValueError, KeyError, TypeError):
        view["last_decisions"] = []
    return view


def cpu_group_prefix(root: Path) -> str:
    """The start of the names of this fleet folder's CPU groups (recforge.core.cpusets): ``fleet-<hash>-``."""
    return f"fleet-{sha256_bytes(str(Path(root).resolve()).encode())[:10]}-"


def _state_pids(state: Mapping[str, Any]) -> list[int]:
    pids = [n.get("pid") for n in (state.get("nodes") or {}).values()]
    pids.append((state.get("balancer") or {}).get("pid"))
    pids.append((state.get("supervisor") or {}).get("pid"))
    pids.append((state.get("controller") or {}).get("pid"))
    return [int(p) for p in pids if p]


def down(*, home: str | Path | None = None, timeout_s: float = 20.0) -> dict[str, Any]:
    """Stop the balancer and every node (SIGTERM, SIGKILL after ``timeout_s``), then any other process of this
    fleet's folder (leftovers of a stale state). Idempotent; returns what was stopped."""
    root = fleet_dir(home)
    stopped: list[str] = []
    with state_lock(root):
        try:
            state = read_state(home)
        except DataError:
            state = None  # unreadable: the /proc scan below still finds the processes
        if state:
            supervisor = state.get("supervisor") or {}  # first: it would restart what is stopped below
            if stop_groups([supervisor.get("pid")], root, timeout_s):
                stopped.append(f"supervisor (pid {supervisor['pid']})")
            controller = (read_state(home) or state).get("controller") or {}  # then: it changes the weights
            if stop_groups([controller.get("pid")], root, timeout_s):
                stopped.append(f"controller (pid {controller['pid']})")
            state = read_state(home) or state  # node pids as the supervisor last wrote them
            balancer = state.get("balancer") or {}
            if stop_groups([balancer.get("pid")], root, timeout_s):  # first: no new requests reach the nodes
                stopped.append(f"haproxy (pid {balancer['pid']})")
            nodes = {int(n["pid"]): name for name, n in (state.get("nodes") or {}).items() if n.get("pid")}
            stopped += [f"{nodes[pid]} (pid {pid})" for pid in stop_groups(list(nodes), root, timeout_s)]
        for pid in fleet_processes(root):
            args = cmdline(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"leftover {Path(args[0]).name if args else 'process'} (pid {pid})")
        deadline = time.monotonic() + 5
        while fleet_processes(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        (root / "state.json").unlink(missing_ok=True)
        cpusets.remove_groups(cpu_group_prefix(root))  # the fleet's CPU groups, now empty
        # where up put it (recorded; a deep folder's is elsewhere: lb.admin_socket_path), without re-deriving it here
        socket = ((state or {}).get("balancer") or {}).get("socket")
        Path(socket or root / "haproxy" / "admin.sock").unlink(missing_ok=True)
    left = fleet_processes(root) if root.exists() else []
    if left:
        raise RecForgeError(f"processes {left} of the fleet in {root} did not stop; kill them by pid")
    return {"stopped": stopped, "fleet_dir": str(root)}


def status(*, home: str | Path | None = None) -> dict[str, Any]:
    """The state file, checked against reality: each node's process and readiness, each model's readiness on
    it, and HAProxy's view (status, weight, sessions)."""
    state = read_state(home)
    if state is None:
        return {"status": "down", "fleet_dir": str(fleet_dir(home))}
    balancer = state.get("balancer") or {}
    proxy_view: dict[str, Any] = {}
    shedding: dict[str, Any] | None = None
    lb_running = bool(balancer.get("pid")) and process_alive(balancer["pid"])
    if lb_running:
        try:
            proxy_view = lb.HAProxy.from_state(balancer).servers()
        except RecForgeError as err:
            proxy_view = {"error": str(err)}
        with contextlib.suppress(RecForgeError):  # the shed fraction now, the requests shed since its start
            shedding = lb.HAProxy.from_state(balancer).shedding()
    nodes = {}
    for name, node in state["nodes"].items():
        alive = process_alive(node.get("pid"))
        models = {m: {**info, "ready": alive and tr.model_ready(node["url"], m, info["version"])}
                  for m, info in node.get("models", {}).items()}
        nodes[name] = {"url": node.get("url"), "pid": node.get("pid"), "process": "running" if alive else "gone",
                       "lb_state": node.get("lb_state", "ready"), "models": models, "balancer": proxy_view.get(name),
                       "batching": node_mode(node),  # the knob set it serves with (recforge.serving.fleet.batching)
                       "placement": placement_view(node.get("placement"), node.get("pid") if alive else None)}
        if "supervision" in node:  # restarts with their recovery seconds, and the crash-loop alarm
            nodes[name]["supervision"] = node["supervision"]
    supervisor = state.get("supervisor") or {}
    supervisor_view = {"pid": supervisor.get("pid"), "running": process_alive(supervisor.get("pid")),
                       "log": supervisor.get("log")} if supervisor else None
    alarms = [n["supervision"]["alarm"] for n in nodes.values() if (n.get("supervision") or {}).get("alarm")]
    if (balancer.get("supervision") or {}).get("alarm"):
        alarms.append(balancer["supervision"]["alarm"])
    root = fleet_dir(home)
    crash_records = crashes.read_crashes(root)
    serving = [n for n in nodes.values() if n["lb_state"] not in (NODE_STARTING, NODE_REMOVING)]
    healthy = lb_running and all(n["process"] == "running" for n in serving) and \
        all(m["ready"] for n in serving for m in n["models"].values())
    return {"status": state.get("status") if healthy else "degraded", "url": state["url"],
            "balancer": {"pid": balancer.get("pid"), "running": lb_running, "config": balancer.get("config"),
                         "placement": placement_view(balancer.get("placement"), balancer.get("pid") if lb_running
                                                     else None), "shedding": shedding,
                         **({"supervision": balancer["supervision"]} if "supervision" in balancer else {})},
            "supervisor": supervisor_view, "controller": controller_view(state.get("controller")),
            "alarms": alarms,
            # failures with the requests that were on the node (python -m recforge.serving.fleet crashes)
            "crashes": {"count": len(crash_records), "last": crash_records[-1] if crash_records else None,
                        "quarantined": crashes.read_quarantine(root)},
            "nodes": nodes, "cpu_plan": (state.get("placement") or {}).get("plan"),
            "scaling": state.get("scaling"),  # the last node added or removed, and failed adds
            "source": state.get("source"), "created_at": state.get("created_at"),
            "up_seconds": state.get("up_seconds")}


def served_file(model_dir: Path) -> dict[str, Any]:
    """What state.json records of the file a model folder serves: its format and SHA-256 (``onnx_sha256`` too for an
    ONNX model, the key rollouts compare against the registry's)."""
    provenance = mr.read_provenance(model_dir)
    entry = {"model_format": provenance["model_format"], "model_sha256": provenance["model_sha256"]}
    if "onnx_sha256" in provenance:
        entry["onnx_sha256"] = provenance["onnx_sha256"]
    return entry


def placement_view(planned: Mapping[str, Any] | None, pid: int | None) -> dict[str, Any]:
    """A process's placement for ``fleet status``: the planned CPU group (None: placement off), where the process
    really runs (/proc: allowed CPUs, cgroups) and the group's CPU seconds so far."""
    view: dict[str, Any] = {"planned": dict(planned) if planned else None, **(cpusets.process_placement(pid) or {})}
    if planned:
        view["cpu_seconds"] = cpusets.CpuGroup.from_state(planned).usage_s()
    return view
