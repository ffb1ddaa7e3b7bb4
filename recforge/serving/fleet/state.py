"""The fleet's state file ``$RECFORGE_HOME/fleet/state.json`` (what runs: ports, pids, models, weights) and the
lock of its read-modify-write."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from recforge.core import config
from recforge.core.errors import DataError

STATE_VERSION = 1
# a node's lb_state while recforge.serving.fleet.scaling adds it: not in the balancer's config yet, left alone by the
# supervisor and the controller (as are nodes a rollout or an operator drained: any lb_state but "ready")
NODE_STARTING, NODE_REMOVING = "starting", "removing"  # NODE_REMOVING: stopped and taken out by fleet.scaling


def served_versions(node: Mapping[str, Any]) -> dict[str, int]:
    """{model: version} a node's state.json entry says it serves (what a rollout changes, node by node)."""
    return {model: int(entry["version"]) for model, entry in (node.get("models") or {}).items()}


def in_balancer(nodes: Mapping[str, Any]) -> dict[str, Any]:
    """The nodes the balancer's config names: all but those still starting."""
    return {name: node for name, node in nodes.items() if node.get("lb_state") != NODE_STARTING}


def profile_path(state: Mapping[str, Any]) -> str | None:
    """The profile the fleet's capacity model comes from: its source's (the deployed variant's), else the one its
    balancer was sized from (None: neither has one)."""
    return (state.get("source") or {}).get("profile") or (state.get("balancer") or {}).get("profile")


def fleet_dir(home: str | Path | None = None) -> Path:
    return (Path(home if home is not None else config.recforge_home()) / "fleet").resolve()


@contextlib.contextmanager
def state_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "state.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state(home: str | Path | None = None) -> dict[str, Any] | None:
    """The fleet's state.json, or None when there is none."""
    path = fleet_dir(home) / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise DataError(f"{path} cannot be read ({err}); run `make fleet-down` to clear the fleet") from None
    if state.get("version") != STATE_VERSION:
        raise DataError(f"{path} has state version {state.get('version')!r}, expected {STATE_VERSION}; "
                        "run `make fleet-down`")
    return state


def write_state(root: Path, state: Mapping[str, Any]) -> None:
    path = root / "state.json"
    tmp = path.with_name(f".state.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    os.replace(tmp, path)
