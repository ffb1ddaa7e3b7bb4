"""``python -m recforge.serving.fleet up|status|add-node|remove-node|down`` (``make fleet-up``, ``fleet-status``,
``fleet-down``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from recforge.core.cli import run_step
from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError
from recforge.serving import loadbalancer as lb
from recforge.serving.elastic.live import LiveConfig
from recforge.serving.fleet import crashes, scaling
from recforge.serving.fleet.config import DEFAULT_FAMILY, DEFAULT_PORT, DEFAULT_TARGET, FleetConfig, fleet_targets
from recforge.serving.fleet.lifecycle import down, status, up
from recforge.serving.fleet.sources import default_source, explicit_source, registry_source
from recforge.serving.fleet.state import fleet_dir, read_state
from recforge.serving.fleet.supervision import SupervisorConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.fleet",
                                     description="The local Triton fleet: tritonserver nodes behind HAProxy.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the fleet (nodes + HAProxy) and print its state")
    start.add_argument("--nodes", type=int, default=int(os.environ.get("FLEET_NODES", "2")))
    start.add_argument("--min-nodes", type=int,
                       default=int(os.environ["FLEET_MIN_NODES"]) if os.environ.get("FLEET_MIN_NODES") else None,
                       help="the fewest nodes scale-in leaves (default: --nodes; env FLEET_MIN_NODES)")
    start.add_argument("--port", type=int, default=int(os.environ.get("FLEET_PORT", str(DEFAULT_PORT))),
                       help="balancer port on 127.0.0.1")
    start.add_argument("--target", default=DEFAULT_TARGET,
                       help=f"hardware target of the nodes (profile, champion): one of {fleet_targets()}")
    start.add_argument("--family", default=os.environ.get("FLEET_FAMILY", DEFAULT_FAMILY),
                       help="model family of the default source")
    start.add_argument("--model-file", "--onnx", dest="onnx",
                       help="serve this model file: ONNX (with --spec) or a TorchScript model.pt")
    start.add_argument("--spec", help="the model's spec.json (optional for TorchScript: the file carries its spec)")
    start.add_argument("--profile", help="its profile JSON (serving knobs, weights)")
    start.add_argument("--model", default="model", help="Triton model name for --model-file")
    start.add_argument("--version", type=int, default=1, help="model version for --model-file")
    start.add_argument("--from-registry", nargs=2, metavar=("MODEL", "TARGET"),
                       help="serve the champion-TARGET version of registered MODEL")
    start.add_argument("--no-supervise", action="store_true",
                       default=os.environ.get("FLEET_SUPERVISE", "1") == "0",
                       help="start no supervisor (crashed nodes stay down); env FLEET_SUPERVISE=0")
    start.add_argument("--supervisor-config", default=os.environ.get("FLEET_SUPERVISOR_CONF", "{}"),
                       help="SupervisorConfig as JSON, e.g. '{\"max_restarts\": 5}' (env FLEET_SUPERVISOR_CONF)")
    start.add_argument("--no-controller", action="store_true",
                       default=os.environ.get("FLEET_CONTROLLER", "1") == "0",
                       help="start no elastic controller (weights stay as set); env FLEET_CONTROLLER=0")
    start.add_argument("--controller-config", default=os.environ.get("FLEET_CONTROLLER_CONF", "{}"),
                       help="the controller's LiveConfig as JSON, e.g. '{\"interval_s\": 2}' "
                            "(recforge.serving.elastic.live; env FLEET_CONTROLLER_CONF)")
    start.add_argument("--node-cpus", type=int, default=int(os.environ.get("FLEET_NODE_CPUS", "0")),
                       help="CPUs of each node's own CPU set, the balancer on its own, one CPU kept for the load "
                            "generator (0: no placement; env FLEET_NODE_CPUS)")
    start.add_argument("--cpu-quota", type=float, default=float(os.environ.get("FLEET_CPU_QUOTA", "0")),
                       help="CPU quota of each node in cores, a Kubernetes CPU limit (0: none; env FLEET_CPU_QUOTA)")
    start.add_argument("--share-cpus", action="store_true", default=os.environ.get("FLEET_SHARE_CPUS") == "1",
                       help="let the balancer and nodes share CPUs when the host has too few for disjoint sets")
    start.add_argument("--balancer-with-apparatus", action="store_true",
                       default=os.environ.get("FLEET_BALANCER_WITH_APPARATUS") == "1",
                       help="the balancer on the load generator's CPUs, not the nodes' (with --node-cpus; env "
                            "FLEET_BALANCER_WITH_APPARATUS)")
    sub.add_parser("status", help="the fleet's state, checked against the running processes")
    listing = sub.add_parser("crashes", help="the nodes' failures with the requests on them, and the quarantine")
    listing.add_argument("--last", type=int, default=10, help="how many of the latest failures (default 10)")
    release = sub.add_parser("release", help="lift the quarantine of a request body (its SHA-256)")
    release.add_argument("sha256", help="the body SHA-256 listed by `crashes`")
    sub.add_parser("add-node", help="start one more node serving what the others serve, into rotation once warm")
    remove = sub.add_parser("remove-node", help="drain a node, wait for its requests, stop and delete it")
    remove.add_argument("name", help="the node, e.g. node2")
    remove.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to wait for in-flight requests")
    sub.add_parser("down", help="stop every process of the fleet (idempotent)")
    args = parser.parse_args(argv)

    def step() -> Any:
        if args.command == "down":
            return down()
        if args.command == "status":
            return status()
        if args.command == "crashes":
            records = crashes.read_crashes(fleet_dir())
            return {"crashes": records[-args.last:] if args.last > 0 else [], "count": len(records),
                    "suspect_counts": dict(crashes.suspect_counts(records).most_common(10)),
                    "quarantined": crashes.read_quarantine(fleet_dir())}
        if args.command == "release":
            return release_quarantine(args.sha256)
        if args.command == "add-node":
            return scaling.add_node()
        if args.command == "remove-node":
            return scaling.remove_node(args.name, drain_timeout_s=args.drain_timeout)
        cfg = FleetConfig(nodes=args.nodes, min_nodes=args.min_nodes, port=args.port, target=args.target,
                          node_cpus=args.node_cpus, cpu_quota=args.cpu_quota, share_cpus=args.share_cpus,
                          balancer_with_apparatus=args.balancer_with_apparatus)
        controller = None if args.no_controller else dataclasses.asdict(
            config_from_dict(LiveConfig, json.loads(args.controller_config)))  # a bad config: refused before up
        notes: list[str] = []
        if args.onnx or args.spec:
            if not args.onnx:
                raise ConfigError("--spec goes with --model-file")
            source = explicit_source(args.onnx, args.spec, profile_path=args.profile, model=args.model,
                                     version=args.version)
        elif args.from_registry:
            source = registry_source(args.from_registry[0], args.from_registry[1], fleet_dir() / "source")
        else:
            source, notes = default_source(args.family, args.target)
        supervisor = None if args.no_supervise else config_from_dict(SupervisorConfig,
                                                                     json.loads(args.supervisor_config))
        state = up(source, cfg, notes=notes, supervisor=supervisor, controller=controller)
        return {"url": state["url"], "nodes": {n: v["url"] for n, v in state["nodes"].items()},
                "weights": {n: v["weight"] for n, v in state["nodes"].items()},
                "model": f"{source.model} v{source.version}", "source": source.origin, "notes": notes,
                "supervisor": (state.get("supervisor") or {}).get("log"),
                "controller": (state.get("controller") or {}).get("decisions"),
                "up_seconds": state["up_seconds"], "state": str(fleet_dir() / "state.json"),
                "cpu_plan": (state.get("placement") or {}).get("plan")}

    return run_step(step)



def release_quarantine(sha256: str) -> dict[str, Any]:
    """Remove a body hash from the quarantine file and from the running balancer."""
    sha256 = crashes.check_sha256(sha256.lower())
    root = fleet_dir()
    listed = crashes.read_quarantine(root)
    if sha256 not in listed:
        raise ConfigError(f"{sha256} is not quarantined; quarantined: {listed or 'none'}")
    path = crashes.write_quarantine(root, [h for h in listed if h != sha256])
    state = read_state()
    if state and state.get("balancer"):
        lb.HAProxy.from_state(state["balancer"]).command(f"del acl {path} {sha256}")
    return {"released": sha256, "quarantined": crashes.read_quarantine(root)}


if __name__ == "__main__":
    raise SystemExit(main())
