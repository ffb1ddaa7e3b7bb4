"""A handle on the running fleet for the rollout stage and the elastic controller (:class:`Fleet`): stage a model
version on one node, drain / weigh / restore a node and shed load in the balancer, restart a node, add or remove a node
(recforge.serving.fleet.scaling), switch a node's batching mode (recforge.serving.fleet.batching), read a node's
Triton metrics."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.core.timing import utc_now
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.serving import loadbalancer as lb
from recforge.serving.fleet import batching, scaling
from recforge.serving.fleet.balancer import refresh_admission
from recforge.serving.fleet.processes import process_alive, start_node_again, stop_groups
from recforge.serving.fleet.state import fleet_dir, read_state, state_lock, write_state

# Triton's per-model Prometheus counters that node_metrics reports (names without the nv_inference_ prefix)
TRITON_METRICS = ("request_success", "request_failure", "count", "exec_count", "request_duration_us",
                  "queue_duration_us", "compute_input_duration_us", "compute_infer_duration_us",
                  "compute_output_duration_us")
PROM_LINE = re.compile(r'^(nv_inference_[a-z_]+)\{([^}]*)\}\s+([-+0-9.eEinfa]+)\s*$')


def parse_triton_metrics(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """Triton's Prometheus text as {model: {version: {metric: value}}} for the per-model ``nv_inference_*``
    counters (:data:`TRITON_METRICS`, names without the prefix), plus ``avg_queue_us`` and
    ``avg_compute_infer_us`` per successful request."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for line in text.splitlines():
        match = PROM_LINE.match(line.strip())
        if not match:
            continue
        name, labels_text, value = match.groups()
        metric = name[len("nv_inference_"):]
        if metric not in TRITON_METRICS:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text))
        if "model" not in labels:
            continue
        out.setdefault(labels["model"], {}).setdefault(labels.get("version", ""), {})[metric] = float(value)
    for versions in out.values():
        for figures in versions.values():
            done = figures.get("request_success", 0.0)
            for key, source in (("avg_queue_us", "queue_duration_us"),
                                ("avg_compute_infer_us", "compute_infer_duration_us")):
                if source in figures:
                    figures[key] = figures[source] / done if done else 0.0
    return out


class Fleet:
    """A handle on the running fleet (from state.json) for the rollout stage: stage a model version on one node,
    drain / weigh / restore a node in the balancer, read a node's Triton metrics."""

    def __init__(self, home: str | Path | None = None):
        self.home = home
        self.root = fleet_dir(home)
        state = read_state(home)
        if state is None or state.get("status") != "up":
            raise ConfigError(f"no fleet is running (no state in {self.root}); run `make fleet-up` first")
        self.state = state

    @property
    def url(self) -> str:
        """The balancer's URL: what clients use."""
        return self.state["url"]

    @property
    def nodes(self) -> list[str]:
        return list(self.state["nodes"])

    @property
    def balancer(self) -> lb.HAProxy:
        return lb.HAProxy.from_state(self.state["balancer"])

    def node(self, name: str) -> dict[str, Any]:
        if name not in self.state["nodes"]:
            raise ConfigError(f"node {name!r} is not in the fleet; nodes: {self.nodes}")
        return self.state["nodes"][name]

    def _update(self, name: str, **changes: Any) -> None:
        """Apply ``changes`` to node ``name`` in state.json (read-modify-write under the lock)."""
        with state_lock(self.root):
            state = read_state(self.home) or self.state
            state["nodes"][name].update(changes)
            write_state(self.root, state)
            self.state = state

    def stage_on_node(self, node: str, model: str, version: int, onnx_path: str | Path, spec: Any, *,
                      serving_config: Any = None, expected_sha256: str | None = None,
                      provenance: Mapping[str, Any] | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
        """Write ``model`` version ``version`` (this ONNX file) into ``node``'s repository, check the written
        file's SHA-256 (``expected_sha256``, else the source file's), and load exactly that version through the
        node's own repository API (not the balancer); returns the node's new model entry. The serving config is
        ``serving_config`` or the one the node serves the model with now (default ServingConfig for a new model).
        Loading a lower version than the current one works too (a rollback): Triton is told to serve exactly
        ``version`` (``version_policy: specific``), in the node's batching mode (recforge.serving.fleet.batching)."""
        info = self.node(node)
        repo = Path(info["repo"])
        if serving_config is None:
            try:
                serving_config = mr.read_provenance(repo / model)["serving_config"]
            except ConfigError:
                serving_config = mr.ServingConfig()
        expected = (expected_sha256 or mr.sha256_file(onnx_path)).lower()
        model_dir = mr.write_model_repository(repo, model_name=model, onnx_path=onnx_path, spec=spec,
                                              serving_config=serving_config, version=version,
                                              expected_sha256=expected, provenance=provenance)
        staged = model_dir / str(version) / "model.onnx"
        actual = mr.sha256_file(staged)
        if actual != expected:
            raise DataError(f"{staged} has SHA-256 {actual} after staging, expected {expected}; not loading it")
        model_config = mr.parse_config_pbtxt(model_dir / "config.pbtxt")
        model_config["version_policy"] = {"specific": {"versions": [int(version)]}}
        model_config = batching.config_in_mode(model_config, serving_config, batching.node_mode(info))
        tr.load_model(info["url"], model, config=model_config, timeout=timeout_s)
        if not tr.model_ready(info["url"], model, version):
            raise RecForgeError(f"{node}: model {model} v{version} loaded but is not ready; see {info['log']}")
        entry = {"version": int(version), "onnx_sha256": actual, "origin": str(onnx_path), "staged_at": utc_now()}
        self._update(node, models={**info.get("models", {}), model: entry})
        return entry

    def restart_node(self, node: str, model: str, version: int, *, timeout_s: float = 180.0) -> None:
        """Restart ``node``'s tritonserver (same ports and repository) serving exactly ``version`` of ``model``:
        the other version folders of the model are removed first. For a drained node whose server keeps the state
        of a version that failed to load (Triton then reports not-ready for good under ``--strict-readiness``)."""
        info = self.node(node)
        model_dir = Path(info["repo"]) / model
        if not (model_dir / str(version)).is_dir():
            raise ConfigError(f"{node}: {model_dir / str(version)} does not exist; stage that version first")
        for stale in model_dir.iterdir():
            if stale.is_dir() and stale.name.isdigit() and stale.name != str(version):
                shutil.rmtree(stale)
        stop_groups([info["pid"]], self.root)
        server = start_node_again(info, [model], timeout_s)
        self._update(node, pid=server.process.pid)
        server.wait_ready()
        if not server.model_ready(model, version):
            raise RecForgeError(f"{node} restarted but {model} v{version} is not ready; see {info['log']}")
        batching.restore_mode(server.url, self.node(node), self.state, timeout_s=timeout_s)

    def set_state(self, node: str, lb_state: str) -> None:
        """The node's state in the balancer: ``ready``, ``drain`` (no new requests) or ``maint``."""
        self.node(node)
        self.balancer.set_state(node, lb_state)
        self._update(node, lb_state=lb_state)

    def drain(self, node: str, *, wait: bool = True, timeout_s: float = 30.0) -> None:
        """Send ``node`` no new requests; with ``wait``, return once its in-flight requests have finished."""
        self.set_state(node, "drain")
        deadline = time.monotonic() + timeout_s
        while wait:
            current = self.balancer.servers()[node]["current_sessions"] or 0
            if current == 0:
                return
            if time.monotonic() > deadline:
                raise RecForgeError(f"{node} still has {current} requests in flight after {timeout_s:g} s of drain")
            time.sleep(0.05)

    def ready(self, node: str) -> None:
        """Put ``node`` back in rotation (after :meth:`drain`)."""
        self.set_state(node, "ready")

    def set_weight(self, node: str, weight: int) -> None:
        """The node's balancer weight now, without a reload (0..256; 0 stops new requests like drain)."""
        self.node(node)
        self.balancer.set_weight(node, weight)
        self._update(node, weight=weight)

    def set_shed_fraction(self, fraction: float) -> None:
        """Answer ``fraction`` (0..1) of inference requests 503 + Retry-After at the balancer from now on, without a
        reload (kept across reloads; a restarted balancer sheds nothing until it is set again)."""
        self.balancer.set_shed_fraction(fraction)

    def shed_fraction(self) -> float | None:
        """The fraction of inference requests the balancer sheds now (None: its config has no shedding)."""
        return self.balancer.shed_fraction()

    def set_batching(self, node: str, mode: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
        """Switch ``node`` (UP in the balancer) to batching ``mode``, latency or throughput, through its own repository
        API, and record the mode in state.json (:func:`batching.switch_node`)."""
        result = batching.switch_node(self.home, node, mode, timeout_s=timeout_s)
        self.state = read_state(self.home) or self.state
        return result

    def batching_unavailable(self) -> str:
        """Why this fleet's nodes cannot switch their batching mode ("" when they can)."""
        return batching.switch_unavailable(read_state(self.home) or self.state)

    def add_node(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """One more node serving what the others serve, in rotation once warm (:func:`scaling.add_node`)."""
        result = scaling.add_node(self.home, timeout_s=timeout_s)
        self.state = read_state(self.home) or self.state
        return result

    def remove_node(self, name: str, *, drain_timeout_s: float = 30.0) -> dict[str, Any]:
        """Drain, stop and delete node ``name`` (:func:`scaling.remove_node`)."""
        result = scaling.remove_node(name, self.home, drain_timeout_s=drain_timeout_s)
        self.state = read_state(self.home) or self.state
        return result

    def refresh_admission(self) -> lb.AdmissionLimits | None:
        """Admit what every node serves now (after a version was staged, promoted or restored): the balancer's
        config regenerated and reloaded without dropping a connection (recforge.serving.fleet.balancer)."""
        return refresh_admission(self.home)

    def node_process(self, name: str) -> tuple[int | None, bool]:
        """The node's pid as state.json has it now (the supervisor rewrites it on a restart) and whether it runs."""
        state = read_state(self.home) or self.state
        pid = state["nodes"][name].get("pid")
        return pid, process_alive(pid)

    def node_metrics(self, node: str) -> dict[str, dict[str, dict[str, float]]]:
        """The node's per-model Triton counters from its own metrics port (:func:`parse_triton_metrics`)."""
        import requests

        info = self.node(node)
        try:
            response = requests.get(info["metrics_url"], timeout=5)
            response.raise_for_status()
        except requests.RequestException as err:
            raise RecForgeError(f"{node}: metrics at {info['metrics_url']} unreadable: {err}") from None
        return parse_triton_metrics(response.text)


