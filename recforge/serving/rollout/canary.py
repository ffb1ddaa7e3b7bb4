"""Step 4 of a rollout: the canary — the staged node back in rotation at a small weight while the DeepRecSys load
generator runs through the balancer, then the gate (recforge.serving.rollout.gate) on what it measured."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.core.errors import first_line
from recforge.inference.loadgen import QuerySizes, run_open_loop
from recforge.inference.triton import TritonHttpTarget
from recforge.serving.fleet import Fleet
from recforge.serving.rollout.config import RolloutFailed
from recforge.serving.rollout.gate import attributed_p95, gate
from recforge.serving.rollout.history import json_number, save_state
from recforge.serving.rollout.staging import back_in_rotation, server_ready

log = logging.getLogger(__name__)


def canary_weight(pct: int, other_weights: list[int]) -> int:
    """The canary's balancer weight so that it gets ``pct`` % of the total (the others keep theirs), 1..256."""
    total = sum(other_weights)
    if total <= 0:
        return 100
    return max(1, min(256, round(pct / (100 - pct) * total)))


def summary_quantile(text: str, model: str, version: int, quantile: str = "0.95") -> float:
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


def node_counters(fleet: Fleet, node: str, model: str, version: int) -> dict[str, float]:
    import requests

    figures = fleet.node_metrics(node).get(model, {}).get(str(version), {})
    text = requests.get(fleet.node(node)["metrics_url"], timeout=5).text
    return {"success": figures.get("request_success", 0.0), "failure": figures.get("request_failure", 0.0),
            "p95_ms": summary_quantile(text, model, version)}


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


def request_sub_batch(plan: Mapping[str, Any]) -> int:
    knobs = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        knobs = json.loads(Path(plan["new"]["profile"]).read_text())["search"]["best_knobs"]
    sub = int(knobs.get("sub_batch", 64))
    # during the canary old and new versions serve side by side: requests must fit every node's max_batch_size
    limits = [int(plan["new"]["serving_config"].get("max_batch_size", sub))]
    limits += [int((n.get("serving_config") or {}).get("max_batch_size", sub)) for n in plan["nodes"].values()]
    return max(1, min([sub, *limits]))


def canary_crashed(fleet: Fleet, node: str, pid_before: int | None, timeout_s: float) -> int:
    """1 when the canary node's process died during the window (gone, or replaced by the supervisor), else 0.
    After a crash, wait up to ``timeout_s`` for the supervisor to bring the node back, so the rollback that follows
    restores the previous version on a running node."""
    pid, alive = fleet.node_process(node)
    if pid == pid_before and alive:
        return 0
    log.error("canary %s crashed during the canary window (pid %s -> %s)", node, pid_before, pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid, alive = fleet.node_process(node)
        if pid != pid_before and alive and server_ready(fleet.node(node)["url"]):
            break
        time.sleep(0.5)
    return 1


def canary(plan: dict[str, Any]) -> dict[str, Any]:
    """Step 4: the canary back in rotation at ``canary_weight_pct`` % of the weight, the load generator through the
    balancer for ``canary_duration_s``, then the gate. RolloutFailed (with the figures saved) when it fails."""
    if plan["noop"]:
        return plan
    cfg = plan["config"]
    fleet = Fleet()
    node, model, version = plan["canary_node"], plan["model"], int(plan["new"]["version"])
    others = [n for n in plan["nodes"] if n != node]
    weight = canary_weight(cfg["canary_weight_pct"], [int(plan["nodes"][n]["weight"] or 100) for n in others]) \
        if others else 100
    before = node_counters(fleet, node, model, version)
    others_before = {n: node_counters(fleet, n, model, int(plan["nodes"][n]["version"])) for n in others}
    pid_before, _ = fleet.node_process(node)
    back_in_rotation(fleet, node, weight)
    try:
        result, requests = run_load(fleet.url, model, plan["new"]["spec"], plan["load_qps"],
                                    cfg["canary_duration_s"], sizes=cfg["sizes"], sub_batch=request_sub_batch(plan),
                                    seed=cfg["seed"])
    except Exception as err:
        plan["error"] = f"canary load through the balancer failed: {first_line(err)}"
        save_state(plan)
        raise RolloutFailed(plan["error"]) from None
    crashed = canary_crashed(fleet, node, pid_before, float(cfg["load_timeout_s"]))
    after = node_counters(fleet, node, model, version) if not crashed else before
    others_served = sum(node_counters(fleet, n, model, int(plan["nodes"][n]["version"]))["success"]
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
        "canary_weight": float(weight), "canary_requests": served + failed, "canary_crashes": float(crashed),
        "canary_error_rate": failed / (served + failed) if served + failed else math.nan,
        "canary_p95_ms": after["p95_ms"],
        # leastconn honours weights under concurrency only: the share the canary really got
        "canary_share": (served + failed) / (served + failed + others_served) if served + failed else 0.0,
        **attributed_p95(result, requests, node),
    }
    verdict = gate(figures, plan["p95_slo_ms"], cfg["max_error_rate"], cfg.get("max_p95_regression", 0.2))
    # balancer_*: the load generator's view through HAProxy (whole fleet); canary_*: the canary node's own figures
    # (canary_query_* / canary_request_*: what it served, client side); baseline_*: the other nodes' requests
    plan["figures"].update({k if k.startswith(("canary_", "baseline_")) else f"balancer_{k}": json_number(v)
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

