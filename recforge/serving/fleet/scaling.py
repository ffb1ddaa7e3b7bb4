"""Adding a node to and removing one from the running fleet (``Fleet.add_node`` / ``Fleet.remove_node``, the
elastic controller's scale-out and scale-in).

Adding: a new ``nodeK`` (the lowest free K) gets its own repository, a copy of exactly what the fleet's nodes
serve (the model folders of a serving node with only the served version; the ONNX file's SHA-256 checked against
state.json), its own ports and, when the fleet places its processes (``FleetConfig.node_cpus``), the CPU set and
quota the planner gives ``nodeK`` (recforge.core.cpusets, the rules of ``fleet up``). It is started, waited for,
checked (the served version ready) and warmed with one inference on its own port, and only then written into the
balancer: haproxy.cfg is regenerated from state.json (recforge.serving.fleet.balancer: the same admission rules,
routes and health checks as every other server, since they are the backend's and the frontend's, not a server's)
and HAProxy reloaded without dropping a connection (runtime weights and states carried over), the new server set to
the weight of the others and waited for until UP. A start that fails is retried once on fresh ports, then reported:
a one-line RecForgeError, and the failure in state.json's ``scaling.failures``; the fleet keeps serving.

Removing: the node is drained (HAProxy ``drain``: no new requests), its in-flight requests are waited for (bounded),
then it is put in maintenance, its process group stopped, and it is deleted from state.json and the balancer's config
(a reload), its CPU group removed.

While a node is being added its state.json entry has ``lb_state`` ``starting`` (the supervisor and the controller
leave it alone, ``fleet down`` finds its pid); while it is being removed ``drain`` then ``removing``. A node added
this way is an ordinary node afterwards: the supervisor restarts it when it dies; a removed one is gone from
state.json, so nothing restarts it. Bounds: never below ``FleetConfig.min_nodes`` (``FLEET_MIN_NODES``; by default
the nodes ``fleet up`` started), never above what the machine's CPUs hold (:func:`node_bounds`). Every operation is
recorded in state.json's ``scaling`` (``last``, ``failures``) and shown by ``fleet status``.

Why a reload rather than HAProxy's dynamic servers (``add server`` over the runtime API): the generated config stays
the one description of the balancer (a later reload, or the supervisor's restart of a dead balancer, starts from
it), so a node added at run time cannot differ from one started by ``fleet up``. The cost: a new HAProxy worker per
operation, whose statistics counters start from zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from recforge.core import cpusets
from recforge.core.errors import ConfigError, RecForgeError, first_line
from recforge.core.hashing import sha256_file
from recforge.core.ports import free_ports
from recforge.core.timing import utc_now
from recforge.inference import triton as tr
from recforge.inference.model_file import FILE_NAMES
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet.balancer import refresh_admission
from recforge.serving.fleet.config import MAX_NODES, FleetConfig
from recforge.serving.fleet.lifecycle import cpu_group_prefix
from recforge.serving.fleet.processes import NODE_SERVER_ARGS, placement_of, process_alive, stop_groups
from recforge.serving.fleet.state import (
    NODE_REMOVING,
    NODE_STARTING,
    fleet_dir,
    read_state,
    served_versions,
    state_lock,
    write_state,
)
from recforge.serving.fleet.supervisor import warm

START_ATTEMPTS = 2  # a failed start is retried once
KEEP_FAILURES = 10  # failures kept in state.json's scaling entry
T = TypeVar("T")


def fleet_config(state: Mapping[str, Any]) -> FleetConfig:
    """The FleetConfig the fleet was started with (state.json's ``config``; defaults for a fleet started before it
    was recorded)."""
    recorded = dict(state.get("config") or {})
    recorded.setdefault("nodes", max(1, len(state.get("nodes") or {})))
    return FleetConfig.from_dict(recorded)


def node_bounds(state: Mapping[str, Any], host: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(fewest, most) nodes of this fleet: ``min_nodes`` of its config (by default the nodes ``fleet up`` started),
    and what the machine's CPUs hold: with disjoint CPU placement, the most nodes the planner fits; with shared
    placement and a CPU quota, as many quotas as the CPUs left after the apparatus hold; otherwise one node per
    ``node_cpus`` (1) CPUs."""
    cfg = fleet_config(state)
    host = host if host is not None else cpusets.host_cpus()
    if cfg.node_cpus and cfg.share_cpus and cfg.cpu_quota:
        most = min(MAX_NODES, math.floor((len(host) - cfg.apparatus_cpus) / cfg.cpu_quota + 1e-9))
    elif cfg.node_cpus and not cfg.share_cpus:
        most = 0
        for count in range(1, MAX_NODES + 1):
            try:
                dataclasses.replace(cfg, nodes=count).cpu_plan(host)
            except ConfigError:
                break
            most = count
    else:
        most = min(MAX_NODES, len(host) // max(1, cfg.node_cpus))
    return cfg.fewest_nodes, max(1, most)


def node_cores(entry: Mapping[str, Any], default: float = 1.0) -> float:
    """The cores a node is allocated: its CPU quota, else its CPU set's size, else ``default`` (placement off)."""
    placement = entry.get("placement") or {}
    if placement.get("quota_cores"):
        return float(placement["quota_cores"])
    if placement.get("cpus"):
        return float(len(cpusets.parse_cpu_list(placement["cpus"])))
    return float(default)


def with_one_retry(attempt: Callable[[int], T], attempts: int = START_ATTEMPTS) -> tuple[T | None, list[str]]:
    """Call ``attempt(i)`` for i = 1, 2, ... until one returns; (its result, the errors of the failed ones) or
    (None, every error) when all ``attempts`` failed. ``attempt`` cleans up after itself before it raises."""
    errors: list[str] = []
    for number in range(1, attempts + 1):
        try:
            return attempt(number), errors
        except RecForgeError as err:
            errors.append(f"attempt {number}: {first_line(err)}")
    return None, errors


def free_node_name(nodes: Mapping[str, Any]) -> str:
    """``nodeK`` with the lowest K not in use (the CPU planner places node K at its K-th slot)."""
    k = 0
    while f"node{k}" in nodes:
        k += 1
    return f"node{k}"


def served_models(state: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(a serving node, the models it serves) — what every ready node serves; ConfigError while the nodes serve
    different versions (a rollout: it owns the fleet until it is done) or none is ready."""
    ready = {name: node for name, node in state["nodes"].items() if node.get("lb_state", "ready") == "ready"}
    if not ready:
        raise ConfigError("no node of the fleet is ready to copy the served model from")
    served = {name: served_versions(node) for name, node in ready.items()}
    if len({tuple(sorted(v.items())) for v in served.values()}) > 1:
        raise ConfigError(f"the fleet's nodes serve different versions ({served}): a rollout is in progress; "
                          "no node is added until it is done")
    name = sorted(ready)[0]
    return name, dict(ready[name].get("models") or {})


def copy_served_repository(source_repo: Path, target_repo: Path, models: Mapping[str, Any]) -> None:
    """Copy each served model folder of ``source_repo`` with only its served version into a fresh ``target_repo``,
    and check that the copied model file (ONNX or TorchScript) has the SHA-256 state.json records for it."""
    shutil.rmtree(target_repo, ignore_errors=True)
    for model, entry in models.items():
        version = str(int(entry["version"]))
        source = source_repo / model
        if not (source / version).is_dir():
            raise ConfigError(f"{source / version} does not exist: the served version is missing on disk")

        def other_versions(folder: str, names: list[str], top: Path = source, keep: str = version) -> set[str]:
            skip = {"__pycache__"} & set(names)
            if Path(folder) == top:
                skip |= {n for n in names if n.isdigit() and n != keep}
            return skip

        shutil.copytree(source, target_repo / model, ignore=other_versions)
        expected = (entry.get("model_sha256") or entry.get("onnx_sha256") or "").lower()
        served = [target_repo / model / version / name for name in FILE_NAMES.values()
                  if (target_repo / model / version / name).exists()]
        if not served:
            raise RecForgeError(f"{target_repo / model / version} holds no model file "
                                f"({', '.join(FILE_NAMES.values())})")
        copied = sha256_file(served[0]) if expected else expected
        if copied != expected:
            raise RecForgeError(f"{served[0]} has SHA-256 {copied} after the copy, expected {expected}")


def record_scaling(root: Path, home: str | Path | None, **changes: Any) -> None:
    """Record an operation in state.json's ``scaling`` entry (``last``; a failure appended to ``failures``)."""
    with state_lock(root):
        state = read_state(home)
        if state is None:
            return
        entry = state.setdefault("scaling", {"failures": []})
        failure = changes.pop("failure", None)
        if failure is not None:
            entry["failures"] = [*entry.get("failures", []), failure][-KEEP_FAILURES:]
        entry.update(changes)
        write_state(root, state)


def update_node(root: Path, home: str | Path | None, name: str, **changes: Any) -> dict[str, Any]:
    with state_lock(root):
        state = read_state(home)
        if state is None or name not in state["nodes"]:
            raise RecForgeError(f"{name} is no longer in the fleet's state (was the fleet stopped?)")
        state["nodes"][name].update(changes)
        write_state(root, state)
        return state


def forget_node(root: Path, home: str | Path | None, name: str) -> None:
    with state_lock(root):
        state = read_state(home)
        if state is not None and state["nodes"].pop(name, None) is not None:
            write_state(root, state)


def running_state(root: Path, home: str | Path | None) -> dict[str, Any]:
    """state.json of the fleet in ``root`` (read under its lock by the caller); ConfigError when none runs."""
    state = read_state(home)
    if state is None or state.get("status") != "up":
        raise ConfigError(f"no fleet is running in {root}; run `make fleet-up` first")
    return state


def add_node(home: str | Path | None = None, *, timeout_s: float | None = None,
             up_timeout_s: float = 30.0) -> dict[str, Any]:
    """Start one more node serving what the fleet serves and put it into the balancer's rotation once it is warm;
    returns ``{"node", "seconds", "attempts", ...}``. ConfigError when the fleet is at its most nodes, a rollout is in
    progress or no fleet runs; RecForgeError (one line, also in state.json) when both attempts to start it failed."""
    root = fleet_dir(home)
    started = time.monotonic()
    with state_lock(root):
        state = running_state(root, home)
        cfg = fleet_config(state)
        _, most = node_bounds(state)
        if len(state["nodes"]) >= most:
            raise ConfigError(f"the fleet has {len(state['nodes'])} node(s), the most this machine's CPUs hold "
                              f"({most}; FleetConfig.node_cpus={cfg.node_cpus}); no node added")
        reference, models = served_models(state)
        name = free_node_name(state["nodes"])
        group = None
        if cfg.node_cpus:  # the planner's slot for this node: the CPUs `fleet up` would have given it
            plan = dataclasses.replace(cfg, nodes=int(name[4:]) + 1).cpu_plan(cpusets.host_cpus())
            group = cpusets.CpuGroup(cpu_group_prefix(root) + name, plan.placements[name])
        node_root = root / name
        repo = node_root / "repo"
        entry: dict[str, Any] = {
            "repo": str(repo), "log": str(node_root / "tritonserver.log"), "target": state.get("target"),
            "weight": None, "lb_state": NODE_STARTING, "pid": None, "added_at": utc_now(), "added_epoch_s": time.time(),
            "models": {m: {**e, "staged_at": utc_now(), "copied_from": reference} for m, e in models.items()}}
        if group is not None:
            entry["placement"] = group.to_state()
        state["nodes"][name] = entry
        write_state(root, state)  # the slot is ours: a concurrent add picks another name
    record_scaling(root, home, last={"operation": "add", "node": name, "status": "starting", "at": utc_now()})
    try:
        copy_served_repository(Path(state["nodes"][reference]["repo"]), repo, models)
    except RecForgeError as err:
        fail(root, home, name, "add", [f"copying the served model: {first_line(err)}"], started, entry.get("placement"))
        raise
    limit = timeout_s or cfg.startup_timeout_s

    def attempt(number: int) -> tr.TritonServer:
        http, grpc, metrics = free_ports(3)  # fresh ports each time: a port taken meanwhile is one cause of failure
        server = tr.TritonServer(repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=entry["log"],
                                 load_models=list(models), startup_timeout_s=limit, extra_args=list(NODE_SERVER_ARGS),
                                 placement=placement_of(entry))
        try:
            server.start()
            update_node(root, home, name, url=server.url, http_port=http, grpc_port=grpc, metrics_port=metrics,
                        metrics_url=server.metrics_url, pid=server.process.pid, attempts=number)
            server.wait_ready()
            for model, served in models.items():
                if not server.model_ready(model, int(served["version"])):
                    raise RecForgeError(f"{name}: {model} v{served['version']} is not ready; see {entry['log']}")
                warm(server.url, model, int(served["version"]))
            return server
        except Exception as err:
            with contextlib.suppress(Exception):
                server.stop(timeout=5)
            raise RecForgeError(f"{name} did not start: {first_line(err)}") from None

    server, errors = with_one_retry(attempt)
    if server is None:
        fail(root, home, name, "add", errors, started, entry.get("placement"))
        raise RecForgeError(f"adding {name} failed twice ({'; '.join(errors)}); see {entry['log']}")
    try:
        state = update_node(root, home, name, lb_state="ready")
        refresh_admission(home)  # the config now names the node: a reload without a dropped connection
        proxy = lb.HAProxy.from_state(state["balancer"])
        weight = peer_weight(proxy, exclude=name)
        if weight is not None:
            proxy.set_weight(name, weight)
        proxy.wait_status(name, "UP", timeout_s=up_timeout_s)
        update_node(root, home, name, weight=proxy.servers()[name]["weight"])
    except RecForgeError as err:  # it never served: take it out again, the fleet as it was
        stop_groups([server.process.pid], root, timeout_s=5)
        fail(root, home, name, "add", [f"into the balancer: {first_line(err)}"], started, entry.get("placement"))
        with contextlib.suppress(RecForgeError):
            refresh_admission(home)
        raise RecForgeError(f"{name} started but did not come UP in the balancer: {first_line(err)}") from None
    seconds = round(time.monotonic() - started, 2)
    result = {"operation": "add", "node": name, "status": "done", "seconds": seconds,
              "attempts": 1 + len(errors), "errors": errors, "at": utc_now()}
    record_scaling(root, home, last=result)
    return result


def peer_weight(proxy: lb.HAProxy, exclude: str) -> int | None:
    """The weight a new node gets: the median weight of the other UP nodes in rotation (None: there are none)."""
    weights = sorted(view["weight"] for name, view in proxy.servers().items()
                     if name != exclude and view["status"] == "UP" and view["weight"])
    return weights[len(weights) // 2] if weights else None


def fail(root: Path, home: str | Path | None, name: str, operation: str, errors: list[str], started: float,
         placement: Mapping[str, Any] | None) -> None:
    """Report a failed operation: its node out of state.json and its CPU group (``placement``) removed, the failure
    recorded."""
    forget_node(root, home, name)
    if placement:
        cpusets.CpuGroup.from_state(placement).remove()
    failure = {"operation": operation, "node": name, "status": "failed", "errors": errors,
               "seconds": round(time.monotonic() - started, 2), "at": utc_now()}
    record_scaling(root, home, last=failure, failure=failure)


def remove_node(name: str, home: str | Path | None = None, *, drain_timeout_s: float = 30.0) -> dict[str, Any]:
    """Drain ``name`` (no new requests), wait for its in-flight requests (at most ``drain_timeout_s``), stop it and
    delete it from the balancer and state.json; returns ``{"node", "seconds", "in_flight_left", ...}``.
    ConfigError when it would take the fleet below its fewest nodes or out of rotation altogether."""
    root = fleet_dir(home)
    started = time.monotonic()
    with state_lock(root):
        state = running_state(root, home)
        if name not in state["nodes"]:
            raise ConfigError(f"node {name!r} is not in the fleet; nodes: {sorted(state['nodes'])}")
        fewest, _ = node_bounds(state)
        if len(state["nodes"]) <= fewest:
            raise ConfigError(f"the fleet has {len(state['nodes'])} node(s), its fewest (FleetConfig.min_nodes="
                              f"{fewest}); {name} is not removed")
        others = [n for n, node in state["nodes"].items() if n != name and node.get("lb_state", "ready") == "ready"]
        if not others:
            raise ConfigError(f"{name} is the fleet's last node in rotation; it is not removed")
        entry = state["nodes"][name]
        entry["lb_state"] = "drain"  # from now on the supervisor and the controller leave it alone
        write_state(root, state)
    record_scaling(root, home, last={"operation": "remove", "node": name, "status": "draining", "at": utc_now()})
    proxy = lb.HAProxy.from_state(state["balancer"])
    in_flight = 0
    with contextlib.suppress(RecForgeError):  # a node the balancer no longer knows has nothing in flight
        proxy.set_state(name, "drain")
        deadline = time.monotonic() + drain_timeout_s
        while True:
            view = proxy.servers().get(name) or {}
            in_flight = (view.get("current_sessions") or 0)
            if in_flight == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        proxy.set_state(name, "maint")
    update_node(root, home, name, lb_state=NODE_REMOVING)
    stop_groups([entry.get("pid")], root)
    forget_node(root, home, name)
    refresh_admission(home)  # the config without the node
    if entry.get("placement"):
        cpusets.CpuGroup.from_state(entry["placement"]).remove()
    shutil.rmtree(Path(entry["repo"]), ignore_errors=True)  # its log stays beside it
    result = {"operation": "remove", "node": name, "status": "done", "seconds": round(time.monotonic() - started, 2),
              "in_flight_left": in_flight, "at": utc_now()}
    record_scaling(root, home, last=result)
    return result


def resume_interrupted(home: str | Path | None = None, *, stale_after_s: float | None = None) -> list[str]:
    """Finish what an operation left half done when its process died (a controller killed mid-add or mid-remove):
    a node still ``starting`` after ``stale_after_s`` (default: twice the fleet's start timeout) or whose process is
    gone is stopped and forgotten (a failed add); a node the last removal was draining, or one ``removing``, is
    removed. Returns what was done, for the log."""
    state = read_state(home)
    if state is None:
        return []
    root = fleet_dir(home)
    limit = stale_after_s if stale_after_s is not None else 2 * fleet_config(state).startup_timeout_s
    last = (state.get("scaling") or {}).get("last") or {}
    done = []
    for name, node in list(state["nodes"].items()):
        lb_state = node.get("lb_state", "ready")
        age = time.time() - float(node.get("added_epoch_s") or 0)
        if lb_state == NODE_STARTING and (age > limit or (node.get("pid") and not process_alive(node["pid"]))):
            stop_groups([node.get("pid")], root, timeout_s=5)
            fail(root, home, name, "add", [f"interrupted: still starting after {age:.0f} s"], time.monotonic(),
                 node.get("placement"))
            done.append(f"abandoned the add of {name}")
        elif lb_state == NODE_REMOVING or (lb_state == "drain" and last.get("operation") == "remove"
                                           and last.get("node") == name and last.get("status") == "draining"):
            with contextlib.suppress(ConfigError):
                remove_node(name, home, drain_timeout_s=5)
                done.append(f"finished the removal of {name}")
    return done
