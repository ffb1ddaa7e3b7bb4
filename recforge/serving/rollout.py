"""Rollout stage: a registered model version onto the local Triton fleet, canaried, gated, promoted or rolled back.

The steps of the ``rollout`` DAG (and of ``make rollout``), each a plain function over a *plan* (a small dict that
goes through XCom) and the rollout's **state file** ``$RECFORGE_HOME/rollouts/<rollout id>.json``, which records
what every node served before the rollout touched it. :func:`rollback_and_fail` reads only that file, so it can
restore the fleet whichever step failed, even after a crash.

1. :func:`resolve_plan`: the version to roll out (number or alias; default ``champion-<target>``), its ONNX file
   downloaded from the registry and its SHA-256 checked against the version's tag, the fleet's current state;
2. :func:`stage_canary`: the canary node (the fleet's first node) is drained, gets the new version through its
   own repository API (never through the load balancer) and must report it ready;
3. :func:`smoke_test`: known inputs (seeded) on the canary must give the outputs onnxruntime computes from the
   verified file;
4. :func:`canary`: the canary is put back at ``canary_weight_pct`` of the balancer's weight while the DeepRecSys
   load generator runs through the balancer; :func:`gate` judges the canary's queries against the SLO and against
   the queries the other nodes (previous version) served at the same time (the balancer names the node of every
   answer), the error rates, and the canary's own figures from Triton's metrics endpoint;
5. :func:`promote`: every other node in turn is drained (no new requests; in-flight ones finish), updated,
   smoke-tested and put back at its weight.

The outcome (with its figures) is appended to ``$RECFORGE_HOME/rollouts/history.jsonl`` and written as tags on
the MLflow model version.

CLI (what ``make rollout`` runs; the DAG runs the same functions)::

    python -m recforge.serving.rollout run --model recforge-dlrm [--target cpu-triton] [--version 3] [--config JSON]
    python -m recforge.serving.rollout history [--model M]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recforge.contracts.features import OUTPUT_NAME
from recforge.contracts.registry import mlflow_client
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.core.hashing import sha256_file as file_sha256
from recforge.inference import model_repo as mr
from recforge.inference.loadgen import QuerySizes, load_spec, run_open_loop
from recforge.inference.onnx import onnx_session
from recforge.inference.triton import TritonHttpTarget, infer
from recforge.models.export import example_inputs
from recforge.serving.fleet import Fleet

log = logging.getLogger(__name__)

ROLLOUT_ID = re.compile(r"[A-Za-z0-9_.:+-]{1,200}")


class RolloutFailed(RecForgeError):
    """A rollout step failed (model did not load, smoke test or gate failed); the fleet is rolled back."""


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class RolloutConfig:
    """What a release manager chooses (the rollout DAG's Params)."""

    model: str
    target: str = "cpu-triton"  # the fleet's target: champions profiled through Triton
    version: str = ""  # a version number or an alias; empty: champion-<target>
    canary_weight_pct: int = 10
    canary_duration_s: float = 30.0
    p95_slo_ms: float = 0.0  # 0: the p95 target of the version's profile
    max_error_rate: float = 0.001
    load_qps: float = 0.0  # 0: load_fraction x the fleet's profiled capacity
    load_fraction: float = 0.25  # of the profiled capacity x the hosts of the fleet (local nodes share one host)
    max_p95_regression: float = 0.2  # the canary's queries may be this much slower than the others' (see gate)
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes syntax
    smoke_rows: int = 16
    smoke_atol: float = 1e-4
    drain_timeout_s: float = 30.0
    load_timeout_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", self.model):
            raise ConfigError(f"model must be a registered model name (letters, digits, _ . -), got {self.model!r}")
        if not isinstance(self.target, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", self.target):
            raise ConfigError(f"target must be a target name such as 'cpu', got {self.target!r}")
        if not isinstance(self.canary_weight_pct, int) or not 1 <= self.canary_weight_pct <= 50:
            raise ConfigError(f"canary_weight_pct must be an integer in [1, 50], got {self.canary_weight_pct!r}")
        checks = (("canary_duration_s", 1.0, 3600.0), ("p95_slo_ms", 0.0, 60_000.0), ("max_error_rate", 0.0, 1.0),
                  ("load_qps", 0.0, 1e6), ("load_fraction", 0.01, 1.0), ("smoke_atol", 0.0, 1.0),
                  ("max_p95_regression", 0.0, 10.0),
                  ("drain_timeout_s", 0.0, 3600.0), ("load_timeout_s", 1.0, 3600.0))
        for key, low, high in checks:
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{key} must be a number in [{low:g}, {high:g}], got {value!r}")
        if not isinstance(self.smoke_rows, int) or not 1 <= self.smoke_rows <= 1024:
            raise ConfigError(f"smoke_rows must be an integer in [1, 1024], got {self.smoke_rows!r}")

        QuerySizes.parse(self.sizes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RolloutConfig:
        return config_from_dict(cls, dict(d or {}))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RolloutConfig:
        """From the rollout DAG's Params (their names are this class's fields); a ``config`` Param, when
        present, holds the other fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in params.items() if k in fields}
        d |= dict(params.get("config") or {})
        for key in ("canary_duration_s", "p95_slo_ms", "max_error_rate", "load_qps", "max_p95_regression"):
            if key in d and isinstance(d[key], int) and not isinstance(d[key], bool):
                d[key] = float(d[key])
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def reference(self) -> str:
        return self.version or f"champion-{self.target}"


# --------------------------------------------------------------------------------------------------------------
# State file and history


def rollouts_dir() -> Path:
    return config.recforge_home() / "rollouts"


def state_path(rollout_id: str) -> Path:
    if not ROLLOUT_ID.fullmatch(rollout_id or ""):
        raise ConfigError(f"rollout id must be 1-200 of [A-Za-z0-9_.:+-], got {rollout_id!r}")
    return rollouts_dir() / f"{rollout_id.replace(':', '_').replace('+', '_')}.json"


def save_state(plan: Mapping[str, Any]) -> None:
    path = state_path(plan["rollout_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plan, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_state(rollout_id: str) -> dict[str, Any] | None:
    path = state_path(rollout_id)
    return json.loads(path.read_text()) if path.is_file() else None


def history_path() -> Path:
    return rollouts_dir() / "history.jsonl"


def append_history(record: Mapping[str, Any]) -> None:
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=str, sort_keys=True) + "\n")


def read_history(model: str | None = None) -> list[dict[str, Any]]:
    path = history_path()
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if model is None or r.get("model") == model]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# The gate


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]  # why it failed (empty when it passed)
    figures: dict[str, float]
    warnings: list[str] = dataclasses.field(default_factory=list)  # recorded, not a reason to roll back


def gate(figures: Mapping[str, float], p95_slo_ms: float, max_error_rate: float,
         max_p95_regression: float = 0.2) -> GateVerdict:
    """Judge the canary window, like a canary analysis (Kayenta, Flagger): the canary against the SLO *and* against
    the nodes that still serve the previous version, under the same load at the same time.

    * Errors: the load generator's ``error_rate`` through the balancer and the canary's own ``canary_error_rate``
      (Triton's counters) must stay under ``max_error_rate``; no query at all, or no request on the canary, fails.
    * Latency, when the balancer told which node answered each request (:func:`attributed_p95`, exactly over the
      canary window): the canary fails when the p95 of the queries it served (``canary_query_p95_ms``) breaks the
      SLO and its requests' p95 (``canary_request_p95_ms``) is more than ``max_p95_regression`` above that of the
      requests the other nodes answered at the same time (``baseline_request_p95_ms``). A fleet over its SLO
      with or without the canary (an overloaded host, a load set too high) is not the new version's doing: that
      is a warning, and rolling back would not fix it. So is the canary's server-side ``canary_p95_ms``:
      Triton's summary quantiles cover a sliding window that also holds the model's load-time warm-up and the
      smoke test (a just-loaded version measured 144 ms there while its queries had 25 ms).
    * Without attribution (a balancer of an older release), the whole fleet's ``p95_ms`` and the canary's
      server-side ``canary_p95_ms`` are judged against the SLO.
    """
    reasons, warnings = [], []

    def value(key: str) -> float:
        return float(figures.get(key, math.nan))

    if figures.get("queries", 0) <= 0:
        reasons.append("the load generator completed no queries")
    fleet_p95, canary_q = value("p95_ms"), value("canary_query_p95_ms")
    canary_r, baseline_r = value("canary_request_p95_ms"), value("baseline_request_p95_ms")
    if math.isnan(fleet_p95):
        reasons.append("no p95 measured through the balancer")
    if math.isnan(canary_q):  # no attribution: the whole fleet's view decides
        if fleet_p95 > p95_slo_ms:
            reasons.append(f"p95 through the balancer {fleet_p95:.1f} ms > SLO {p95_slo_ms:.1f} ms")
    else:
        slower = canary_r / baseline_r - 1  # NaN without a baseline: the SLO alone decides
        versus = (f"; its requests {canary_r:.1f} ms at p95 against {baseline_r:.1f} ms on the previous version "
                  f"({slower:+.0%})") if not math.isnan(slower) else ""
        if canary_q > p95_slo_ms and not slower <= max_p95_regression:
            reasons.append(f"p95 of the queries the canary served {canary_q:.1f} ms > SLO {p95_slo_ms:.1f} ms"
                           + versus)
        elif canary_q > p95_slo_ms:
            warnings.append(f"p95 of the queries the canary served {canary_q:.1f} ms > SLO {p95_slo_ms:.1f} ms, "
                            f"but the previous version is as slow under the same load{versus}: the fleet is over "
                            "its SLO with or without the new version")
        elif slower > max_p95_regression:
            warnings.append(f"the canary is slower than the previous version{versus}, within the SLO "
                            f"{p95_slo_ms:.1f} ms")
        if fleet_p95 > p95_slo_ms and not reasons:
            warnings.append(f"p95 through the balancer {fleet_p95:.1f} ms > SLO {p95_slo_ms:.1f} ms (whole fleet)")
    canary_p95 = value("canary_p95_ms")
    if canary_p95 > p95_slo_ms:
        text = f"canary p95 (Triton) {canary_p95:.1f} ms > SLO {p95_slo_ms:.1f} ms"
        if math.isnan(canary_q):
            reasons.append(text)
        else:  # Triton's summary is a sliding window that also holds the load-time warm-up and the smoke test
            warnings.append(text + " (server-side sliding window, warm-up and smoke test included)")
    for key, label in (("error_rate", "error rate through the balancer"), ("canary_error_rate", "canary error rate")):
        rate = value(key)
        if not math.isnan(rate) and rate > max_error_rate:
            reasons.append(f"{label} {rate:.4f} > max {max_error_rate:.4f}")
    if figures.get("canary_requests", 1) <= 0:
        reasons.append("the canary served no requests during the canary window")
    return GateVerdict(passed=not reasons, reasons=reasons, figures=dict(figures), warnings=warnings)


# --------------------------------------------------------------------------------------------------------------
# Smoke test: known inputs, expected outputs


def smoke_inputs(spec: Any, rows: int, seed: int) -> dict[str, Any]:
    """Seeded inputs of the model contract (numpy, batch first)."""
    import numpy as np


    return {k: np.ascontiguousarray(v.numpy()) for k, v in example_inputs(load_spec(spec), rows, seed).items()}


def expected_outputs(onnx_path: str | Path, inputs: Mapping[str, Any]) -> Any:
    """What the verified ONNX file answers to ``inputs`` in onnxruntime: the reference of the smoke test."""

    session = onnx_session(Path(onnx_path), 1)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: inputs[n] for n in names})[0].reshape(-1)


def check_smoke(url: str, model: str, inputs: Mapping[str, Any], expected: Any, atol: float) -> dict[str, float]:
    """Ask the node at ``url`` and compare; RolloutFailed naming the worst difference otherwise."""
    import numpy as np


    try:
        got = infer(url, model, inputs, outputs=[OUTPUT_NAME])[OUTPUT_NAME].reshape(-1)
    except RecForgeError as err:
        raise RolloutFailed(f"smoke test on {url}: {err}") from None
    if got.shape != np.asarray(expected).shape:
        raise RolloutFailed(f"smoke test on {url}: {got.shape[0]} outputs for {np.asarray(expected).shape[0]} rows")
    diff = float(np.max(np.abs(got.astype(np.float64) - np.asarray(expected, dtype=np.float64))))
    if not diff <= atol:
        raise RolloutFailed(f"smoke test on {url}: outputs differ from the registered model's by up to {diff:.3g} "
                            f"(tolerance {atol:g})")
    return {"rows": float(len(got)), "max_abs_diff": diff}


# --------------------------------------------------------------------------------------------------------------
# What to roll out: the registry


def version_info(model: str, reference: str) -> dict[str, Any]:
    """The registered version ``reference`` (a number or an alias) of ``model``: its number, ONNX source, SHA-256,
    variant, profile URI and the run it came from; ConfigError when there is no such version or alias."""

    client = mlflow_client()
    try:
        if reference.isdigit():
            version = client.get_model_version(model, reference)
        else:
            version = client.get_model_version_by_alias(model, reference)
    except Exception as err:  # noqa: BLE001 - MlflowException, imported lazily
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{model} has no version or alias {reference!r} ({first}); see "
                          "`python -m recforge.pipeline.registry.stage show`") from None
    tags = dict(version.tags)
    sha = tags.get("recforge.onnx_sha256", "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{model} v{version.version} has no recforge.onnx_sha256 tag; it was not registered by "
                          "recforge.pipeline.registry.stage and cannot be verified")
    return {"model": model, "version": str(version.version), "reference": reference, "source": version.source,
            "run_id": version.run_id, "onnx_sha256": sha, "variant": tags.get("recforge.variant", ""),
            "family": tags.get("recforge.family", ""), "target": tags.get("recforge.target", ""),
            "profile_uri": tags.get("recforge.profile_uri", ""),
            "lbt_qps": float(tags.get("recforge.lbt_qps") or "nan"),
            "p95_target_ms": float(tags.get("recforge.p95_target_ms") or "nan")}


def fetch_version(info: Mapping[str, Any], dest: str | Path) -> dict[str, str]:
    """Download the version's ONNX file, its profile and its feature spec into ``dest``; the file's SHA-256 must be
    the registered one (DataError otherwise: nothing of it is served). Returns local paths."""
    import mlflow


    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["source"], dst_path=str(dest / "onnx")))
    actual = file_sha256(onnx_path) if onnx_path.is_file() else "(no file)"
    if actual != info["onnx_sha256"]:
        raise DataError(f"{info['model']} v{info['version']}: {info['source']} has SHA-256 {actual[:16]}… but the "
                        f"registry says {info['onnx_sha256'][:16]}…; refusing to serve it")
    paths = {"onnx": str(onnx_path)}
    if info.get("profile_uri"):
        profile = dest / "profile.json"
        profile.write_text(mlflow.artifacts.load_text(info["profile_uri"]))
        paths["profile"] = str(profile)
    # the feature spec is in the training run, the parent of the variant run
    parent = mlflow_client().get_run(info["run_id"]).data.tags.get("mlflow.parentRunId")
    if not parent:
        raise ConfigError(f"variant run {info['run_id']} has no parent training run; cannot find its feature spec")
    spec = mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="model_files/spec.json",
                                               dst_path=str(dest))
    paths["spec"] = str(spec)
    return paths


# --------------------------------------------------------------------------------------------------------------
# The steps


def _fleet():

    return Fleet()


def _serving_config(profile_path: str | None, fallback: Any) -> dict[str, Any]:

    if profile_path:
        return mr.serving_config_from_profile(profile_path).to_dict()
    return dict(fallback) if fallback else mr.ServingConfig().to_dict()


def _profile_figure(path: str | None, key: str) -> float:
    if not path or not Path(path).is_file():
        return math.nan
    try:
        return float(json.loads(Path(path).read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan


def resolve_plan(cfg: RolloutConfig, *, dag_run_id: str = "") -> dict[str, Any]:
    """Step 1: what to roll out (registry, file verified), what the fleet serves now (kept for rollback), the
    canary node, the load and the SLO. Writes the state file; touches no node."""
    import mlflow


    mlflow.set_tracking_uri(config.tracking_uri())
    started = time.time()
    rollout_id = dag_run_id or f"cli__{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:6]}"
    fleet = _fleet()
    if fleet.state.get("target") != cfg.target:
        raise ConfigError(f"the running fleet serves target {fleet.state.get('target')!r}, not {cfg.target!r}")
    down = {n: s.get("status") for n, s in fleet.balancer.servers().items() if s.get("status") != "UP"}
    if down:
        raise ConfigError(f"fleet nodes not UP in the balancer: {down}; a rollout drains one node at a time and "
                          "needs the others serving (see `make fleet-status`)")
    info = version_info(cfg.model, cfg.reference)
    work = rollouts_dir() / state_path(rollout_id).stem
    paths = fetch_version(info, work / "new")
    nodes: dict[str, dict[str, Any]] = {}
    for name in fleet.nodes:
        node = fleet.node(name)
        served = (node.get("models") or {}).get(cfg.model)
        if not served:
            raise ConfigError(f"{name} does not serve {cfg.model} (it serves {sorted(node.get('models') or {})}); "
                              f"start the fleet with that model (make fleet-up FAMILY=...)")
        model_dir = Path(node["repo"]) / cfg.model
        old_file = model_dir / str(served["version"]) / "model.onnx"
        keep = work / "previous" / name / "model.onnx"  # the rollback copy, outside the node's repository
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old_file, keep)
        nodes[name] = {"url": node["url"], "version": int(served["version"]), "onnx": str(keep),
                       "onnx_sha256": served["onnx_sha256"], "weight": node.get("weight"),
                       "lb_state": node.get("lb_state", "ready"),
                       "serving_config": mr.read_provenance(model_dir).get("serving_config")}
    first = next(iter(nodes.values()))
    incumbent_profile = (fleet.state.get("source") or {}).get("profile_path")
    capacity = _profile_figure(incumbent_profile, "latency_bounded_throughput_qps")
    if math.isnan(capacity):
        capacity = _profile_figure(paths.get("profile"), "latency_bounded_throughput_qps")
    # nodes on one host share its cores: the fleet's capacity is one node's per host, not one per node
    hosts = len({urlsplit(n["url"]).hostname for n in nodes.values()})
    load_qps = cfg.load_qps or (cfg.load_fraction * capacity * hosts if not math.isnan(capacity) else 20.0)
    slo = cfg.p95_slo_ms or next((v for v in (info["p95_target_ms"],
                                              _profile_figure(incumbent_profile, "p95_target_ms"))
                                  if not math.isnan(v)), 25.0)
    plan = {
        "rollout_id": rollout_id, "dag_run_id": dag_run_id, "started_at": _now(), "started": started,
        "config": cfg.to_dict(), "model": cfg.model, "target": cfg.target,
        "new": {**info, **paths, "serving_config": _serving_config(paths.get("profile"), first["serving_config"])},
        "nodes": nodes, "canary_node": next(iter(nodes)), "touched": [], "updated": [],
        "load_qps": round(float(load_qps), 2), "p95_slo_ms": float(slo), "status": "resolved", "figures": {},
        "noop": all(n["version"] == int(info["version"]) and n["onnx_sha256"] == info["onnx_sha256"]
                    for n in nodes.values()),
    }
    save_state(plan)
    log.info("rollout %s: %s v%s (%s) onto %d nodes, canary %s, load %.1f qps, p95 SLO %.1f ms%s", rollout_id,
             cfg.model, info["version"], info["variant"], len(nodes), plan["canary_node"], plan["load_qps"], slo,
             " (already served everywhere: nothing to do)" if plan["noop"] else "")
    return plan


def _stage(fleet: Any, plan: dict[str, Any], node: str) -> None:
    """Drain ``node``, then load the new version on it through its own port (never the balancer)."""
    new = plan["new"]
    if node not in plan["touched"]:
        plan["touched"].append(node)
    save_state(plan)  # before the node changes: rollback must know it was touched
    fleet.drain(node, timeout_s=plan["config"]["drain_timeout_s"])
    try:
        fleet.stage_on_node(node, plan["model"], int(new["version"]), new["onnx"], new["spec"],
                            serving_config=new["serving_config"], expected_sha256=new["onnx_sha256"],
                            provenance={"registry": f"{plan['model']} v{new['version']}", "rollout": plan["rollout_id"],
                                        "variant": new["variant"], "source_run_id": new["run_id"]},
                            timeout_s=plan["config"]["load_timeout_s"])
    except RecForgeError as err:
        plan["error"] = f"{plan['model']} v{new['version']} failed to load on {node}: {str(err).splitlines()[0]}"
        save_state(plan)
        raise RolloutFailed(plan["error"]) from None


def _back_in_rotation(fleet: Any, node: str, weight: int) -> None:
    """``node`` at ``weight`` and ready in the balancer, and back only once its health checks pass (UP): draining
    the next node before that would leave no node to serve."""
    fleet.set_weight(node, weight)
    fleet.ready(node)
    fleet.balancer.wait_status(node, "UP", timeout_s=30)


def stage_canary(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 2: the canary node drained and given the new version (it stays drained until the canary step)."""
    if plan["noop"]:
        return plan
    fleet = _fleet()
    t0 = time.monotonic()
    _stage(fleet, plan, plan["canary_node"])
    plan["figures"]["canary_stage_s"] = round(time.monotonic() - t0, 2)
    plan["status"] = "canary_staged"
    save_state(plan)
    return plan


def smoke_test(plan: dict[str, Any], node: str | None = None) -> dict[str, Any]:
    """Step 3: known inputs on the (drained) canary node give the verified file's outputs."""
    if plan["noop"]:
        return plan
    cfg = plan["config"]
    node = node or plan["canary_node"]
    inputs = smoke_inputs(plan["new"]["spec"], cfg["smoke_rows"], cfg["seed"] + 1)
    expected = expected_outputs(plan["new"]["onnx"], inputs)
    result = check_smoke(plan["nodes"][node]["url"], plan["model"], inputs, expected, cfg["smoke_atol"])
    plan["figures"][f"smoke_{node}_max_abs_diff"] = result["max_abs_diff"]
    plan["status"] = "smoke_tested" if node == plan["canary_node"] else plan["status"]
    save_state(plan)
    return plan


def canary_weight(pct: int, other_weights: list[int]) -> int:
    """The canary's balancer weight so that it gets ``pct`` % of the total (the others keep theirs), 1..256."""
    total = sum(other_weights)
    if total <= 0:
        return 100
    return max(1, min(256, round(pct / (100 - pct) * total)))


def _summary_quantile(text: str, model: str, version: int, quantile: str = "0.95") -> float:
    """Triton's server-side request latency quantile (µs → ms) of one model version (``summary_latencies``)."""
    pattern = re.compile(r'^nv_inference_request_summary_us\{([^}]*)\}\s+([-+0-9.eE]+|nan|NaN)\s*$')
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("model") == model and labels.get("version") == str(version) and \
                labels.get("quantile") == quantile:
            value = float(match.group(2))
            return value / 1000.0 if value == value else math.nan
    return math.nan


def _node_counters(fleet: Any, node: str, model: str, version: int) -> dict[str, float]:
    import requests

    figures = fleet.node_metrics(node).get(model, {}).get(str(version), {})
    text = requests.get(fleet.node(node)["metrics_url"], timeout=5).text
    return {"success": figures.get("request_success", 0.0), "failure": figures.get("request_failure", 0.0),
            "p95_ms": _summary_quantile(text, model, version)}


def run_load(url: str, model: str, spec: str, rate_qps: float, duration_s: float, *, sizes: str, sub_batch: int,
             seed: int, workers: int = 8) -> tuple[Any, list[tuple[str | None, float]]]:
    """The DeepRecSys load generator through the balancer (open loop, Poisson arrivals): (its LoadResult,
    (node, ms) of every answered request)."""

    target = TritonHttpTarget(url, model, spec, max_batch=max(sub_batch, 1), seed=seed, pool=workers, record=True)
    try:
        result = run_open_loop(target, rate_qps, duration_s=duration_s, sizes=QuerySizes.parse(sizes),
                               sub_batch=sub_batch, workers=workers, seed=seed)
    finally:
        target.close()
    return result, list(target.requests or [])


def _sub_batch(plan: Mapping[str, Any]) -> int:
    knobs = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        knobs = json.loads(Path(plan["new"]["profile"]).read_text())["search"]["best_knobs"]
    sub = int(knobs.get("sub_batch", 64))
    # during the canary old and new versions serve side by side: requests must fit every node's max_batch_size
    limits = [int(plan["new"]["serving_config"].get("max_batch_size", sub))]
    limits += [int((n.get("serving_config") or {}).get("max_batch_size", sub)) for n in plan["nodes"].values()]
    return max(1, min([sub, *limits]))


def attributed_p95(result: Any, requests: Sequence[tuple[str | None, float]], canary_node: str) -> dict[str, float]:
    """The canary window's latencies by the node that answered (``recforge.contracts.headers.NODE_HEADER``):

    * ``canary_query_p95_ms`` / ``canary_queries``: queries with a sub-batch on ``canary_node`` (what its users
      felt, the SLO's unit);
    * ``canary_request_p95_ms`` / ``baseline_request_p95_ms`` (and counts): single requests answered by the canary
      and by the other nodes, side by side under the same load (a query of many sub-batches nearly always touches
      the canary, so queries alone leave too few to compare with).
    NaN where nothing was named or counted."""
    import numpy as np

    def p95(latencies: Any) -> float:
        return float(np.percentile(latencies, 95)) if len(latencies) else math.nan

    canary_q = result.latencies_by(lambda served: canary_node in served)
    canary_r = [ms for node, ms in requests if node == canary_node]
    baseline_r = [ms for node, ms in requests if node is not None and node != canary_node]
    return {"canary_query_p95_ms": p95(canary_q), "canary_queries": float(len(canary_q)),
            "canary_request_p95_ms": p95(canary_r), "canary_request_count": float(len(canary_r)),
            "baseline_request_p95_ms": p95(baseline_r), "baseline_request_count": float(len(baseline_r))}


def canary(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 4: the canary back in rotation at ``canary_weight_pct`` % of the weight, the load generator through the
    balancer for ``canary_duration_s``, then the gate. RolloutFailed (with the figures saved) when it fails."""
    if plan["noop"]:
        return plan
    cfg = plan["config"]
    fleet = _fleet()
    node, model, version = plan["canary_node"], plan["model"], int(plan["new"]["version"])
    others = [n for n in plan["nodes"] if n != node]
    weight = canary_weight(cfg["canary_weight_pct"], [int(plan["nodes"][n]["weight"] or 100) for n in others]) \
        if others else 100
    before = _node_counters(fleet, node, model, version)
    others_before = {n: _node_counters(fleet, n, model, int(plan["nodes"][n]["version"])) for n in others}
    _back_in_rotation(fleet, node, weight)
    try:
        result, requests = run_load(fleet.url, model, plan["new"]["spec"], plan["load_qps"],
                                    cfg["canary_duration_s"], sizes=cfg["sizes"], sub_batch=_sub_batch(plan),
                                    seed=cfg["seed"])
    except Exception as err:
        plan["error"] = f"canary load through the balancer failed: {str(err).splitlines()[0] if str(err) else err!r}"
        save_state(plan)
        raise RolloutFailed(plan["error"]) from None
    after = _node_counters(fleet, node, model, version)
    others_served = sum(_node_counters(fleet, n, model, int(plan["nodes"][n]["version"]))["success"]
                        - others_before[n]["success"] for n in others)
    served = after["success"] - before["success"]
    failed = after["failure"] - before["failure"]
    queries = float(result.queries)
    figures = {
        "queries": queries, "p50_ms": float(result.p50_ms if result.p50_ms is not None else math.nan),
        "p95_ms": float(result.p95_ms if result.p95_ms is not None else math.nan),
        "p99_ms": float(result.p99_ms if result.p99_ms is not None else math.nan),
        "error_rate": float(result.errors) / queries if queries else math.nan, "errors": float(result.errors),
        "achieved_qps": float(result.achieved_qps), "offered_qps": float(plan["load_qps"]),
        "canary_weight": float(weight), "canary_requests": served + failed,
        "canary_error_rate": failed / (served + failed) if served + failed else math.nan,
        "canary_p95_ms": after["p95_ms"],
        # leastconn honours weights under concurrency only: the share the canary really got
        "canary_share": (served + failed) / (served + failed + others_served) if served + failed else 0.0,
        **attributed_p95(result, requests, node),
    }
    verdict = gate(figures, plan["p95_slo_ms"], cfg["max_error_rate"], cfg.get("max_p95_regression", 0.2))
    # balancer_*: the load generator's view through HAProxy (whole fleet); canary_*: the canary node's own figures
    # (canary_query_* / canary_request_*: what it served, client side); baseline_*: the other nodes' requests
    plan["figures"].update({k if k.startswith(("canary_", "baseline_")) else f"balancer_{k}": v
                            for k, v in figures.items()})
    plan["gate"] = {"passed": verdict.passed, "reasons": verdict.reasons, "warnings": verdict.warnings,
                    "p95_slo_ms": plan["p95_slo_ms"], "max_error_rate": cfg["max_error_rate"]}
    plan["status"] = "canary_passed" if verdict.passed else "canary_failed"
    if not verdict.passed:
        plan["figures"]["breach_detected_at"] = time.time()
    save_state(plan)
    log.info("canary %s: %s", node, "; ".join(verdict.reasons) or "passed")
    for warning in verdict.warnings:
        log.warning("canary %s: %s", node, warning)
    if not verdict.passed:
        raise RolloutFailed(f"canary of {model} v{version} on {node} failed its gate: " + "; ".join(verdict.reasons))
    return plan


def promote(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 5: every other node in turn drained, updated, smoke-tested and put back at its weight; then the canary
    gets its own weight back. Records the outcome."""
    if plan["noop"]:
        _finish(plan, "noop", [])
        return plan
    fleet = _fleet()
    for node in plan["nodes"]:
        if node == plan["canary_node"]:
            continue
        _stage(fleet, plan, node)
        smoke_test(plan, node)
        _back_in_rotation(fleet, node, int(plan["nodes"][node]["weight"] or 100))
        plan["updated"].append(node)
        save_state(plan)
    canary_node = plan["canary_node"]
    fleet.set_weight(canary_node, int(plan["nodes"][canary_node]["weight"] or 100))
    plan["updated"].insert(0, canary_node)
    plan["status"] = "promoted"
    _finish(plan, "promoted", [])
    return plan


def _server_ready(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _restore(fleet: Any, plan: dict[str, Any]) -> list[str]:
    """Put every touched node back on its previous version and weight; returns the problems (empty: all restored)."""
    problems = []
    for node in plan["touched"]:
        before = plan["nodes"][node]
        try:
            fleet.drain(node, timeout_s=plan["config"]["drain_timeout_s"])
            fleet.stage_on_node(node, plan["model"], int(before["version"]), before["onnx"], plan["new"]["spec"],
                                serving_config=before["serving_config"], expected_sha256=before["onnx_sha256"],
                                provenance={"rollback_of": plan["rollout_id"]},
                                timeout_s=plan["config"]["load_timeout_s"])
            if not _server_ready(fleet.node(node)["url"]):
                # Triton keeps the state of a version that failed to load and then never reports ready again
                # (strict readiness): a clean restart of the drained node on the restored version only
                fleet.restart_node(node, plan["model"], int(before["version"]))
            if before.get("lb_state", "ready") == "ready":
                _back_in_rotation(fleet, node, int(before["weight"] or 100))
            else:
                fleet.set_weight(node, int(before["weight"] or 100))
        except Exception as err:  # keep restoring the others; report every node that could not be restored
            problems.append(f"{node}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    return problems


def rollback_and_fail(*, dag_run_id: str, reason: str = "") -> None:
    """After a failed step: restore the previous version and weights on every node the rollout touched (read from
    the state file), record the outcome with its figures, and raise RolloutFailed (the DAG run fails)."""
    plan = load_state(dag_run_id)
    if plan is None:
        raise RolloutFailed(f"rollout {dag_run_id} failed before it resolved a plan; the fleet was not touched")
    why = reason or (("; ".join(plan.get("gate", {}).get("reasons", [])) or plan.get("error", ""))
                     or f"a step failed after status {plan['status']!r}")
    problems: list[str] = []
    if plan["touched"]:
        problems = _restore(_fleet(), plan)
    breach = plan["figures"].get("breach_detected_at")
    if breach:
        plan["figures"]["breach_to_rollback_s"] = round(time.time() - float(breach), 2)
    plan["status"] = "rolled_back" if not problems else "rollback_incomplete"
    _finish(plan, plan["status"], [why] + problems)
    raise RolloutFailed(f"rollout of {plan['model']} v{plan['new']['version']} {plan['status'].replace('_', ' ')}: "
                        f"{why}" + (f"; NOT restored: {'; '.join(problems)}" if problems else
                                    f"; previous versions serving again on {plan['touched'] or 'no touched node'}"))


def _finish(plan: dict[str, Any], outcome: str, reasons: list[str]) -> None:
    """The outcome into the state file, the rollout history and the MLflow model version's tags."""
    plan["figures"]["wall_s"] = round(time.time() - float(plan["started"]), 2)
    plan["outcome"], plan["finished_at"], plan["reasons"] = outcome, _now(), reasons
    save_state(plan)
    record = {"rollout_id": plan["rollout_id"], "model": plan["model"], "target": plan["target"],
              "version": plan["new"]["version"], "variant": plan["new"].get("variant"), "outcome": outcome,
              "reasons": reasons, "started_at": plan["started_at"], "finished_at": plan["finished_at"],
              "previous_versions": {n: v["version"] for n, v in plan["nodes"].items()},
              "figures": {k: v for k, v in plan["figures"].items() if k != "breach_detected_at"},
              "gate": plan.get("gate")}
    append_history(record)
    try:

        client = mlflow_client()
        client.set_model_version_tag(plan["model"], str(plan["new"]["version"]), f"recforge.rollout.{outcome}",
                                     json.dumps({"at": plan["finished_at"], "rollout_id": plan["rollout_id"],
                                                 "target": plan["target"], "reasons": reasons,
                                                 "figures": record["figures"]}, default=str)[:5000])
        client.set_model_version_tag(plan["model"], str(plan["new"]["version"]), "recforge.rollout.last",
                                     f"{outcome} {plan['finished_at']} ({plan['rollout_id']})")
    except Exception as err:  # the fleet is what matters; a registry hiccup must not hide the outcome
        log.warning("rollout outcome not written to MLflow: %s", err)


def run(cfg: RolloutConfig) -> dict[str, Any]:
    """The whole rollout in one process (what ``make rollout`` runs): the DAG's steps in order, rollback on any
    failure after the plan exists. Returns the record of the outcome; RolloutFailed after a rollback."""
    plan = resolve_plan(cfg)
    try:
        for step in (stage_canary, smoke_test, canary, promote):
            plan = step(plan)
    except Exception as err:
        saved = load_state(plan["rollout_id"]) or plan
        saved["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
        save_state(saved)
        rollback_and_fail(dag_run_id=plan["rollout_id"], reason=saved["error"])
    return summary(plan)


def summary(plan: Mapping[str, Any]) -> dict[str, Any]:
    return {"rollout_id": plan["rollout_id"], "model": plan["model"], "version": plan["new"]["version"],
            "variant": plan["new"].get("variant"), "outcome": plan.get("outcome"), "updated": plan.get("updated"),
            "figures": plan["figures"], "gate": plan.get("gate")}


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m recforge.serving.rollout", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="roll a registered version out to the running fleet (canary, gate, promote)")
    go.add_argument("--model", required=True, help="registered model, e.g. recforge-dlrm")
    go.add_argument("--target", default="cpu-triton")
    go.add_argument("--version", default="", help="version number or alias (default champion-<target>)")
    go.add_argument("--config", default=None, help="other RolloutConfig fields as a JSON object")
    hist = sub.add_parser("history", help="past rollouts, newest last")
    hist.add_argument("--model", default=None)
    hist.add_argument("--last", type=int, default=0, help="only the newest N")
    args = parser.parse_args(argv)

    def step() -> Any:
        if args.command == "history":
            records = read_history(args.model)
            return records[-args.last:] if args.last > 0 else records
        extra = json_object(args.config)
        cfg = RolloutConfig.from_dict({**extra, "model": args.model, "target": args.target,
                                       "version": args.version or extra.get("version", "")})
        return run(cfg)

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
