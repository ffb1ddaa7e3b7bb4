"""Step 1 of a rollout: resolve the plan — the registered version (its ONNX file downloaded and its SHA-256
checked against the registry), what every fleet node serves now (kept for rollback), the canary node, the load and
the SLO. Writes the rollout's state file; touches no node."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recforge.contracts import tags
from recforge.contracts.registry import download_version_onnx, mlflow_client
from recforge.core import config
from recforge.core.errors import ConfigError, DataError, first_line
from recforge.core.hashing import sha256_file
from recforge.core.timing import utc_now
from recforge.inference import model_repo as mr
from recforge.serving.fleet import Fleet
from recforge.serving.rollout.config import RolloutConfig
from recforge.serving.rollout.history import json_number, rollouts_dir, save_state, state_path

log = logging.getLogger(__name__)


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
        raise ConfigError(f"{model} has no version or alias {reference!r} ({first_line(err)}); see "
                          "`python -m recforge.pipeline.registry.stage show`") from None
    version_tags = dict(version.tags)
    sha = version_tags.get(tags.ONNX_SHA256, "")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{model} v{version.version} has no {tags.ONNX_SHA256} tag; it was not registered by "
                          "recforge.pipeline.registry.stage and cannot be verified")
    return {"model": model, "version": str(version.version), "reference": reference, "source": version.source,
            "run_id": version.run_id, "onnx_sha256": sha, "variant": version_tags.get(tags.VARIANT, ""),
            "family": version_tags.get(tags.FAMILY, ""), "target": version_tags.get(tags.TARGET, ""),
            "profile_uri": version_tags.get(tags.PROFILE_URI, ""),
            "lbt_qps": tag_number(version_tags, tags.LBT_QPS),
            "p95_target_ms": tag_number(version_tags, tags.P95_TARGET_MS)}


def tag_number(version_tags: Mapping[str, str], name: str) -> float | None:
    """A numeric tag of a registered version; None when it is missing (the plan goes through XCom: no NaN)."""
    value = version_tags.get(name)
    return json_number(float(value)) if value else None


def fetch_version(info: Mapping[str, Any], dest: str | Path) -> dict[str, str]:
    """Download the version's ONNX file, its profile and its feature spec into ``dest``; the file's SHA-256 must be
    the registered one (DataError otherwise: nothing of it is served). Returns local paths."""
    import mlflow

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = download_version_onnx(info["source"], dest / "onnx")
    actual = sha256_file(onnx_path) if onnx_path.is_file() else "(no file)"
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


def serving_config_of(profile_path: str | None, fallback: Any) -> dict[str, Any]:
    """The serving knobs of the new version: from its profile, else what the node serves the model with now."""
    if profile_path:
        return mr.serving_config_from_profile(profile_path).to_dict()
    return dict(fallback) if fallback else mr.ServingConfig().to_dict()


def profile_figure(path: str | None, key: str) -> float:
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
    fleet = Fleet()
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
    capacity = profile_figure(incumbent_profile, "latency_bounded_throughput_qps")
    if math.isnan(capacity):
        capacity = profile_figure(paths.get("profile"), "latency_bounded_throughput_qps")
    # nodes on one host share its cores: the fleet's capacity is one node's per host, not one per node
    hosts = len({urlsplit(n["url"]).hostname for n in nodes.values()})
    load_qps = cfg.load_qps or (cfg.load_fraction * capacity * hosts if not math.isnan(capacity) else 20.0)
    slo = cfg.p95_slo_ms or next((v for v in (info["p95_target_ms"],
                                              profile_figure(incumbent_profile, "p95_target_ms"))
                                  if v is not None and not math.isnan(v)), 25.0)
    plan = {
        "rollout_id": rollout_id, "dag_run_id": dag_run_id, "started_at": utc_now(), "started": started,
        "config": cfg.to_dict(), "model": cfg.model, "target": cfg.target,
        "new": {**info, **paths, "serving_config": serving_config_of(paths.get("profile"), first["serving_config"])},
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

