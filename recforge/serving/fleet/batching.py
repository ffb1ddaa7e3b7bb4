"""The batching switch on a live node: reload the models a node serves with its latency-optimal or its
throughput-optimal knob set (recforge.inference.serving_config.batching_knob_sets), one node at a time, and record
the node's mode in state.json so that a restarted node comes back in it.

The switch is Triton's model-repository API on the node's own port (never through the balancer): the model, already
loaded, is loaded again with a config override, ``POST /v2/repository/models/<name>/load`` with
``{"parameters": {"config": <its loaded config with the mode's batching knobs>}}``. Triton keeps serving on the
loaded model until the new one is ready and then swaps them, so requests in flight and arriving meanwhile are served
(tests/serving/test_fleet_batching.py checks it under load). The files on disk are not touched: config.pbtxt keeps
the throughput-optimal knobs the fleet was deployed with, and a node whose state.json entry says ``batching:
latency`` is loaded again in that mode after a restart (:func:`restore_mode`; the supervisor's restarts and
:meth:`Fleet.restart_node`). A node without the entry (a new one, or one staged by a rollout) serves its
config.pbtxt: the throughput-optimal mode.

Only a node the balancer has UP is switched. A fleet whose models have no dynamic batching (a TorchScript model:
no batch dimension), or whose two knob sets are the same, cannot switch (:func:`switch_unavailable` says why).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from recforge.contracts.profile import read_profile
from recforge.core.errors import ConfigError, RecForgeError, first_line
from recforge.core.timing import utc_now
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.inference.serving_config import BATCHING_MODES, THROUGHPUT_MODE, ServingConfig, batching_knob_sets
from recforge.models.formats import ONNX
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet.state import fleet_dir, read_state, state_lock, write_state


def node_mode(entry: Mapping[str, Any]) -> str:
    """The batching mode a node's state.json entry records (none recorded: the deployed, throughput-optimal one)."""
    return entry.get("batching") or THROUGHPUT_MODE


def knob_sets(repo: str | Path, model: str, profile: Mapping[str, Any] | None = None) -> dict[str, ServingConfig]:
    """{mode: knob set} of ``model`` in a node's repository: the serving config it was written with
    (provenance.json, what the fleet deployed from the profile) and the latency-optimal set derived from it.
    ConfigError when the model cannot switch (no provenance, not an ONNX model, no dynamic batching)."""
    provenance = mr.read_provenance(Path(repo) / model)
    deployed = ServingConfig.from_dict(provenance.get("serving_config"))
    if provenance.get("model_format", ONNX) != ONNX or not deployed.dynamic_batching:
        raise ConfigError(f"{model} has no dynamic batching to switch ({provenance.get('model_format')} model, "
                          f"dynamic_batching {deployed.dynamic_batching})")
    return batching_knob_sets(deployed, profile)


def switch_unavailable(state: Mapping[str, Any]) -> str:
    """Why the fleet cannot switch its nodes' batching ("" when it can): every model every node serves needs two
    different knob sets."""
    for name, node in (state.get("nodes") or {}).items():
        if not node.get("repo") or not node.get("models"):
            return f"{name} has no model repository in state.json"
        for model in node["models"]:
            try:
                sets = knob_sets(node["repo"], model)
            except ConfigError as err:
                return first_line(err)
            if len({batching_knobs(s) for s in sets.values()}) < 2:
                return f"{model}'s latency- and throughput-optimal knobs are the same (no batching wait to remove)"
    return ""


def preference(sizes: Any, max_batch_size: int) -> tuple[int, ...]:
    """Preferred batch sizes in ascending order, () for none. Triton fills in ``[max_batch_size]`` where a config has
    none (its loaded config shows it), which means the same: batches as large as what has queued."""
    preferred = tuple(sorted(int(b) for b in sizes or ()))
    return () if preferred == (int(max_batch_size),) else preferred


def batching_knobs(knobs: ServingConfig) -> tuple[int, tuple[int, ...]]:
    """What a mode changes: (max_queue_delay_microseconds, the preferred batch sizes: :func:`preference`)."""
    return int(knobs.max_queue_delay_microseconds), preference(knobs.preferred_batch_size, knobs.max_batch_size)


def loaded_knobs(model_config: Mapping[str, Any]) -> tuple[int, tuple[int, ...]]:
    """The same of a loaded model's config (Triton's JSON, GET /v2/models/<name>/config)."""
    dynamic = model_config.get("dynamic_batching") or {}
    return (int(dynamic.get("max_queue_delay_microseconds") or 0),
            preference(dynamic.get("preferred_batch_size"), int(model_config.get("max_batch_size") or 0)))


def with_knobs(model_config: Mapping[str, Any], knobs: ServingConfig) -> dict[str, Any]:
    """A loaded model's config with ``knobs``' batching wait (everything else as loaded: version policy, instances,
    the queue bound, warm-up)."""
    dynamic = dict(model_config.get("dynamic_batching") or {})
    dynamic["max_queue_delay_microseconds"] = int(knobs.max_queue_delay_microseconds)
    dynamic["preferred_batch_size"] = sorted(int(b) for b in knobs.preferred_batch_size)
    return {**model_config, "dynamic_batching": dynamic}


def config_in_mode(model_config: Mapping[str, Any], deployed: ServingConfig | Mapping[str, Any],
                   mode: str) -> dict[str, Any]:
    """A model's config (parsed config.pbtxt) with the batching knobs of ``mode`` for a model deployed with
    ``deployed`` (as it is without dynamic batching): how a version staged on a node is loaded in the node's mode."""
    if not isinstance(deployed, ServingConfig):
        deployed = ServingConfig.from_dict(deployed)
    if not deployed.dynamic_batching:
        return dict(model_config)
    return with_knobs(model_config, batching_knob_sets(deployed)[mode])


def load_in_mode(url: str, node: Mapping[str, Any], mode: str, profile: Mapping[str, Any] | None = None, *,
                 timeout_s: float = 120.0) -> list[str]:
    """Load each model ``node`` serves (its state.json entry) in ``mode`` on the server at ``url`` where its loaded
    config is in another mode; returns the models reloaded. RecForgeError when one is not ready afterwards."""
    if mode not in BATCHING_MODES:
        raise ConfigError(f"batching mode must be one of {BATCHING_MODES}, got {mode!r}")
    reloaded = []
    for model, entry in (node.get("models") or {}).items():
        knobs = knob_sets(node["repo"], model, profile)[mode]
        try:
            loaded = tr.model_config(url, model)
            if loaded_knobs(loaded) == batching_knobs(knobs):
                continue
            tr.load_model(url, model, config=with_knobs(loaded, knobs), timeout=timeout_s)
        except requests.RequestException as err:
            raise RecForgeError(f"{url}: {model} not switched to {mode} mode: {first_line(err)}") from None
        if not tr.model_ready(url, model, int(entry["version"])):
            raise RecForgeError(f"{url}: {model} v{entry['version']} is not ready after loading it in {mode} mode; "
                                f"see {node.get('log')}")
        reloaded.append(model)
    return reloaded


def source_profile(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The profile the fleet's serving configs came from (None without one): it names the latency-optimal
    setting's measurement when its search made one."""
    try:
        return read_profile((state.get("source") or {}).get("profile"))
    except ConfigError:
        return None


def switch_node(home: str | Path | None, node: str, mode: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Switch ``node`` to batching ``mode`` through its own repository API, if the balancer has it UP, and record
    the mode in state.json; returns ``{"node", "mode", "reloaded", "seconds"}``. ConfigError for an unknown node or
    mode or a node out of rotation; RecForgeError when the node is not UP or the load fails (the node then keeps
    serving what it served)."""
    if mode not in BATCHING_MODES:
        raise ConfigError(f"batching mode must be one of {BATCHING_MODES}, got {mode!r}")
    root = fleet_dir(home)
    state = read_state(home)
    if state is None or state.get("status") != "up":
        raise ConfigError(f"no fleet is running in {root}; run `make fleet-up` first")
    info = state["nodes"].get(node)
    if info is None:
        raise ConfigError(f"node {node!r} is not in the fleet; nodes: {list(state['nodes'])}")
    if info.get("lb_state", "ready") != "ready":
        raise ConfigError(f"{node} is {info.get('lb_state')} in the balancer; only nodes in rotation are switched")
    status = (lb.HAProxy.from_state(state["balancer"]).servers().get(node) or {}).get("status")
    if status != "UP":
        raise RecForgeError(f"{node} is {status or 'not known'} in the balancer, not UP; not switched")
    started = time.monotonic()
    # recorded first: a switch whose caller dies mid-load is finished by Triton, and state.json already says so
    record_mode(home, node, mode)
    try:
        reloaded = load_in_mode(info["url"], info, mode, source_profile(state), timeout_s=timeout_s)
    except BaseException:
        record_mode(home, node, node_mode(info))  # the load failed: the node serves on in its mode
        raise
    return {"node": node, "mode": mode, "reloaded": reloaded, "seconds": round(time.monotonic() - started, 2)}


def record_mode(home: str | Path | None, node: str, mode: str) -> None:
    """Write ``node``'s batching mode into state.json (read-modify-write under the lock)."""
    root = fleet_dir(home)
    with state_lock(root):
        state = read_state(home)
        if state is not None and node in state["nodes"]:
            state["nodes"][node].update(batching=mode, batching_at=utc_now())
            write_state(root, state)


def restore_mode(url: str, node: Mapping[str, Any], state: Mapping[str, Any], *, timeout_s: float = 120.0) -> list[str]:
    """After a node's server started again from its repository (the throughput-optimal config.pbtxt), load its
    models in the mode its state.json entry records; the models reloaded."""
    if node_mode(node) == THROUGHPUT_MODE:
        return []
    return load_in_mode(url, node, node_mode(node), source_profile(state), timeout_s=timeout_s)


__all__ = ["config_in_mode", "knob_sets", "load_in_mode", "loaded_knobs", "node_mode", "restore_mode", "switch_node",
           "switch_unavailable", "with_knobs"]
