"""The fleet's balancer configuration: written at ``fleet up`` from the nodes, the model's profile (weights) and the
config.pbtxt every node serves (admission), and rewritten and reloaded without dropping a connection when what the
nodes serve changes (:func:`refresh_admission`, called by the rollout after it staged, promoted or restored a
version), so the balancer always admits exactly what every node accepts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.contracts.profile import read_profile
from recforge.core.config import config_from_dict
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet import crashes
from recforge.serving.fleet.state import fleet_dir, in_balancer, read_state


def served_limits(state: Mapping[str, Any]) -> lb.AdmissionLimits:
    """The admission limits that fit every node: the common limits of the config.pbtxt of every model version the
    nodes serve now (recforge.serving.loadbalancer.common_limits)."""
    configs = [Path(node["repo"]) / model / "config.pbtxt"
               for node in in_balancer(state["nodes"]).values() for model in node.get("models", {})]
    return lb.common_limits([lb.read_limits(path) for path in configs])


def balancer_entry(proxy: lb.HAProxy, settings: lb.BalancerSettings, profile_path: str | None,
                   target: str) -> dict[str, Any]:
    """The state.json entry of the balancer: the process, and what its config is generated from."""
    return {**proxy.state(), "settings": dataclasses.asdict(settings), "profile": profile_path, "target": target}


def write_balancer_config(state: Mapping[str, Any], home: str | Path | None = None) -> Path:
    """(Re)write haproxy.cfg from the state's nodes and balancer entry (:func:`balancer_entry`), admission from
    :func:`served_limits`, the fleet's quarantine list; checked with ``haproxy -c``."""
    entry = state["balancer"]
    nodes = [lb.BackendNode(name, int(node["http_port"]), entry.get("target") or "")
             for name, node in in_balancer(state["nodes"]).items()]
    profile = read_profile(entry.get("profile"))
    return lb.write_config(entry["config"], nodes, port=int(entry["port"]), socket_path=entry["socket"],
                           profiles={entry["target"]: profile} if profile else None,
                           settings=config_from_dict(lb.BalancerSettings, entry.get("settings") or {}),
                           admission=served_limits(state), quarantine_path=crashes.quarantine_path(fleet_dir(home)))


def refresh_admission(home: str | Path | None = None) -> lb.AdmissionLimits | None:
    """Regenerate the running fleet's balancer config from what its nodes serve now and reload HAProxy if it
    changed; returns the admission limits (None without a running fleet)."""
    state = read_state(home)
    if not state or not state.get("balancer") or "settings" not in state["balancer"]:
        return None
    path = Path(state["balancer"]["config"])
    before = path.read_text() if path.exists() else ""
    write_balancer_config(state, home)
    if path.read_text() != before:
        lb.HAProxy.from_state(state["balancer"]).reload()
    return served_limits(state)
