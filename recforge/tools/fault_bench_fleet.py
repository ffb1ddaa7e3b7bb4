"""The fault benchmark's hands and eyes on a running fleet: the faults it injects (:func:`inject`: a signal to a
node's tritonserver or to the HAProxy master, or a burst straight to one node's port), the observer that looks at
the fleet every ``interval_s`` (:class:`FleetObserver`: the balancer's process, HAProxy's view of every node, each
node's process and readiness) and who started a process (:func:`started_by`). It never starts or restarts a fleet
process: recovering is the supervisor's job."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recforge.core.errors import ConfigError, RecForgeError
from recforge.inference import triton as tr
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet.processes import belongs_to_fleet
from recforge.serving.pids import cmdline
from recforge.tools.fault_bench_figures import WATCH_BALANCER, WATCH_NODE, FleetObservation
from recforge.tools.fault_bench_traffic import Burst

# each fault and what its detection watches (recforge.tools.fault_bench_figures.detection_at)
FAULTS = {"kill9": WATCH_NODE, "sigstop": WATCH_NODE, "queue": WATCH_NODE, "haproxy": WATCH_BALANCER,
          "haproxy-reload": None}
NODE_FAULTS = tuple(name for name, watch in FAULTS.items() if watch == WATCH_NODE)
READY_TIMEOUT_S = 0.5  # one readiness look at a node (a hung node answers nothing)
RELOAD_TIMEOUT_S = 10.0  # a graceful reload has started a new worker by then


# --------------------------------------------------------------------------------------------------------------
# Looking


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def started_by(pid: int | None, supervisor_pid: int | None) -> str:
    """``supervisor`` when the fleet's supervisor is the process's parent, else what its parent is."""
    if not pid or not fl.process_alive(pid):
        return "gone"
    parent = parent_pid(int(pid))
    if parent is not None and parent == supervisor_pid:
        return "supervisor"
    args = cmdline(parent) if parent else []
    return f"pid {parent} ({Path(args[0]).name if args else '?'})"


def fleet_pids(state: dict[str, Any]) -> dict[str, int | None]:
    """The pids the state names: every node's tritonserver and the balancer (``haproxy``)."""
    pids = {name: node.get("pid") for name, node in state["nodes"].items()}
    pids["haproxy"] = (state.get("balancer") or {}).get("pid")
    return pids


def node_ready(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v2/health/ready", timeout=READY_TIMEOUT_S).status_code == 200
    except requests.RequestException:
        return False


class FleetObserver:
    """A thread looking at the fleet of ``home`` every ``interval_s`` until :meth:`stop`; keeps every
    :class:`FleetObservation` (``victim``: the node whose rotation is watched) and the last detailed view."""

    def __init__(self, home: Path, victim: str | None, interval_s: float):
        self.home, self.victim, self.interval_s = home, victim, interval_s
        self.observations: list[FleetObservation] = []
        self.last_view: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.checks = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ready")
        self.thread = threading.Thread(target=self.loop, name="fleet-observer", daemon=True)

    def look(self) -> tuple[FleetObservation, dict[str, Any]]:
        """One look: (the observation, the view per node and of the balancer)."""
        state = fl.read_state(self.home)
        if state is None:
            return FleetObservation(time.time(), False, False, None), {"state": None}
        balancer = state.get("balancer") or {}
        balancer_alive = fl.process_alive(balancer.get("pid"))
        servers: dict[str, Any] = {}
        if balancer_alive:
            with contextlib.suppress(RecForgeError):
                servers = lb.HAProxy.from_state(balancer).servers()
        at = time.time()  # HAProxy's view is of this instant; readiness takes up to READY_TIMEOUT_S
        nodes = state["nodes"]
        alive = {name: fl.process_alive(node.get("pid")) for name, node in nodes.items()}
        ready = dict(zip(nodes, self.checks.map(lambda n: alive[n] and node_ready(nodes[n]["url"]), nodes),
                         strict=True))
        view = {name: {"pid": node.get("pid"), "alive": alive[name], "ready": ready[name],
                       "haproxy": (servers.get(name) or {}).get("status")} for name, node in nodes.items()}
        full = balancer_alive and bool(servers) and all(
            v["alive"] and v["ready"] and v["haproxy"] == "UP" for v in view.values())
        in_rotation = None if self.victim is None or not servers else \
            (servers.get(self.victim) or {}).get("status") == "UP"
        return (FleetObservation(at, full, balancer_alive, in_rotation),
                {"nodes": view, "balancer": {"pid": balancer.get("pid"), "alive": balancer_alive}, "full": full})

    def loop(self) -> None:
        while not self.stopping.is_set():
            try:
                observation, view = self.look()
            except RecForgeError as err:  # a state file mid-rewrite: the next look
                view = {"error": str(err)}
                observation = None
            with self.lock:
                if observation is not None:
                    self.observations.append(observation)
                self.last_view = view
            self.stopping.wait(self.interval_s)

    def start(self) -> FleetObserver:
        self.thread.start()
        return self

    def snapshot(self) -> list[FleetObservation]:
        with self.lock:
            return list(self.observations)

    def stop(self) -> list[FleetObservation]:
        self.stopping.set()
        self.thread.join()
        self.checks.shutdown(wait=True)
        return self.snapshot()


def fleet_full(home: Path) -> tuple[bool, dict[str, Any]]:
    """One look: (the fleet is full, its view)."""
    observer = FleetObserver(home, None, 0)
    try:
        observation, view = observer.look()
    finally:
        observer.checks.shutdown(wait=True)
    return observation.full, view


# --------------------------------------------------------------------------------------------------------------
# Faults


@dataclass
class Injected:
    """What a fault did: the details for the report, the burst of a ``queue`` fault, the stopped pid of ``sigstop``
    (continued by :meth:`cleanup` so that it can be cleaned up)."""

    details: dict[str, Any] = field(default_factory=dict)
    burst: Burst | None = None
    stopped_pid: int | None = None
    root: Path | None = None
    started_at: float | None = None  # when the fault began, if later than the call (the burst's first requests)

    def cleanup(self) -> dict[str, Any]:
        if self.burst is not None:
            self.details["burst"] = self.burst.join()
        if self.stopped_pid and self.root and fl.process_alive(self.stopped_pid) \
                and belongs_to_fleet(self.stopped_pid, self.root):
            os.kill(self.stopped_pid, signal.SIGCONT)
            self.details["continued_at_end"] = True
        return self.details


def signal_fleet_process(pid: int | None, sig: signal.Signals, root: Path, what: str) -> int:
    """Send ``sig`` to ``pid`` if it is a live process of the fleet in ``root`` (never one the fleet did not
    start); RecForgeError otherwise."""
    if not pid or not fl.process_alive(pid) or not belongs_to_fleet(int(pid), root):
        raise RecForgeError(f"{what} (pid {pid}) is not a running process of the fleet in {root}; nothing to fault")
    os.kill(int(pid), sig)
    return int(pid)


def prepare_burst(fault: str, home: Path, victim: str | None, *, model: str, spec: Any, items: int | None,
                  concurrency: int, duration_s: float) -> Burst | None:
    """For a ``queue`` fault, the burst on ``victim``'s own port, prepared (its process started and ready) but not
    released; None for the other faults. ``items`` None: the model's ``max_batch_size``."""
    if fault != "queue":
        return None
    state = fl.read_state(home)
    if state is None:
        raise RecForgeError(f"no fleet in {fl.fleet_dir(home)} to fault")
    node = state["nodes"][victim]
    items = items or int(tr.model_config(node["url"], model).get("max_batch_size") or 1)
    return Burst(node["url"], model, spec, items=items, concurrency=concurrency, duration_s=duration_s).prepare()


def inject(fault: str, home: Path, victim: str | None, *, burst: Burst | None = None) -> Injected:
    """Inject ``fault`` into the fleet of ``home`` (``victim``: the node of a node fault; ``burst``: the prepared
    burst of a ``queue`` fault, :func:`prepare_burst`) and return at once, except ``haproxy-reload``, which returns
    when the new worker serves (or after :data:`RELOAD_TIMEOUT_S`)."""
    if fault not in FAULTS:
        raise ConfigError(f"unknown fault {fault!r}; faults: {sorted(FAULTS)}")
    root = fl.fleet_dir(home)
    state = fl.read_state(home)
    if state is None:
        raise RecForgeError(f"no fleet in {root} to fault")
    balancer = state.get("balancer") or {}
    if fault == "queue":
        if burst is None:
            raise ConfigError("the queue fault needs its prepared burst (prepare_burst)")
        burst.start()
        node = state["nodes"][victim]
        return Injected({"node": victim, "url": node["url"], "burst_items": burst.items}, burst=burst, root=root,
                        started_at=burst.started_at)
    if fault in NODE_FAULTS:
        node = state["nodes"][victim]
        sig = signal.SIGKILL if fault == "kill9" else signal.SIGSTOP
        pid = signal_fleet_process(node.get("pid"), sig, root, f"{victim}'s tritonserver")
        return Injected({"node": victim, "pid": pid, "signal": sig.name}, stopped_pid=pid if fault == "sigstop"
                        else None, root=root)
    if fault == "haproxy":
        pid = signal_fleet_process(balancer.get("pid"), signal.SIGKILL, root, "the HAProxy master")
        return Injected({"pid": pid, "signal": "SIGKILL"}, root=root)
    proxy = lb.HAProxy.from_state(balancer)  # haproxy-reload: SIGUSR2 to a master started with -W
    before = proxy.worker_pid()
    pid = signal_fleet_process(balancer.get("pid"), signal.SIGUSR2, root, "the HAProxy master")
    after, deadline = before, time.monotonic() + RELOAD_TIMEOUT_S
    while after == before and time.monotonic() < deadline:
        time.sleep(0.05)
        with contextlib.suppress(RecForgeError, ValueError):
            after = proxy.worker_pid()
    return Injected({"pid": pid, "signal": "SIGUSR2", "worker_pid_before": before, "worker_pid_after": after,
                     "reloaded": after != before}, root=root)
