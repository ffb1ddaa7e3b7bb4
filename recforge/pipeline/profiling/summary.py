"""Summaries of profiled variants: one row per (variant, target), the per-family table (summary.md) with the
AUC/LBT Pareto front per target, and the PROFILES asset extra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.pipeline.profiling.selection import pareto_front


def p95_at_lbt(doc: Mapping[str, Any]) -> float | None:
    """The p95 (ms) of the curve point at the LBT rate (None when the LBT is 0)."""
    lbt = doc["latency_bounded_throughput_qps"]
    return next((row["p95_ms"] for row in doc["curve"] if row["offered_qps"] == lbt and row.get("meets_slo", True)),
                None) if lbt > 0 else None


def knobs_text(knobs: Mapping[str, Any]) -> str:
    """"instances=1, preferred_batch=[1,2,…,1024], sub_batch=256": sorted, long lists shortened."""

    def value(v: Any) -> str:
        if isinstance(v, list | tuple):
            return "[" + (",".join(map(str, v)) if len(v) <= 4 else f"{v[0]},{v[1]},…,{v[-1]}") + "]"
        return str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in sorted(knobs.items()))


def profile_row(doc: Mapping[str, Any], path: Path | str) -> dict[str, Any]:
    """The one-line result of a profile document (for summaries, the asset extra and XCom)."""
    name = doc["target"]["name"]
    return {"target": name, "kind": doc["target"]["kind"], "path": str(path),
            "artifact_uri": f"runs:/{doc['variant_run_id']}/profile/{name}.json",
            "lbt_qps": doc["latency_bounded_throughput_qps"], "lbt_capped": bool(doc.get("lbt_capped", False)),
            "items_per_s": doc["items_per_s"], "p95_ms_at_lbt": p95_at_lbt(doc), "p95_target_ms": doc["p95_target_ms"],
            "best_knobs": doc["search"]["best_knobs"], "search_strategy": doc["search"].get("strategy")}


def family_summary(family: str, results: Sequence[Mapping[str, Any]],
                   variants: Sequence[Mapping[str, Any]] = ()) -> dict:
    """The summary of one family's profiled variants: one row per (variant, target), the skipped ones, the
    AUC/latency front over every passing variant (``variants``, from the compression summary) and the AUC/LBT
    front per target."""
    profiles, skipped = [], {}
    for r in results:
        for p in r.get("profiles") or []:
            profiles.append({"variant": r["variant"], "variant_run_id": r["variant_run_id"], **p,
                             "auc": r.get("auc"), "delta_auc": r.get("delta_auc"),
                             "latency_ms_b256": r.get("latency_ms_b256"),
                             "selected_because": r.get("selected_because")})
        if r.get("skipped"):
            skipped[r["variant"]] = dict(r["skipped"])
    throughput_front = {}
    for target in sorted({p["target"] for p in profiles}):
        rows = [{**p, "neg_lbt": -p["lbt_qps"]} for p in profiles if p["target"] == target]
        throughput_front[target] = [{"variant": p["variant"], "lbt_qps": p["lbt_qps"], "auc": p["auc"]}
                                    for p in pareto_front(rows, "neg_lbt", "auc")]
    for p in profiles:
        p["on_front"] = p["variant"] in {f["variant"] for f in throughput_front.get(p["target"], [])}
    variant_table = [dict(v) for v in variants] or [
        {"name": r["variant"], "auc": r.get("auc"), "latency_ms_b256": r.get("latency_ms_b256")} for r in results]
    return {
        "family": family,
        "candidate_run_id": results[0]["candidate_run_id"] if results else None,
        "data_day": results[0].get("data_day") if results else None,
        "profiles": sorted(profiles, key=lambda p: (p["target"], -p["lbt_qps"], p["variant"])),
        "skipped": skipped,
        "throughput_front": throughput_front,
        "latency_front": [v["name"] for v in pareto_front(variant_table, "latency_ms_b256", "auc")],
        "variants": variant_table,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """summary.md: one row per (variant, target), best LBT first per target."""

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    slo = {p["p95_target_ms"] for p in summary["profiles"]}
    lines = [f"### {summary['family']}: serving profiles (p95 SLO {', '.join(f'{s:g}' for s in sorted(slo)) or '—'} "
             "ms, DeepRecSys Poisson queries)", "",
             "| variant | target | LBT qps | items/s | p95 at LBT (ms) | best knobs | AUC | ΔAUC | front |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in summary["profiles"]:
        knobs = knobs_text(p["best_knobs"])
        lbt = fmt(p["lbt_qps"], ",.0f") + ("+" if p.get("lbt_capped") else "")
        lines.append(f"| {p['variant']} | {p['target']} | {lbt} | {fmt(p['items_per_s'], ',.0f')} | "
                     f"{fmt(p['p95_ms_at_lbt'], '.1f')} | {knobs} | {fmt(p['auc'], '.4f')} | "
                     f"{fmt(p['delta_auc'], '+.4f')} | {'★' if p['on_front'] else ''} |")
    if summary["skipped"]:
        lines += ["", "Skipped:"]
        by_reason: dict[str, list[str]] = {}
        for variant, targets in summary["skipped"].items():
            for target, reason in targets.items():
                by_reason.setdefault(f"{target}: {reason}", []).append(variant)
        lines += [f"- {reason} ({', '.join(sorted(vs))})" for reason, vs in sorted(by_reason.items())]
    lines += ["", "LBT: highest Poisson query rate meeting the p95 SLO with no errors (`+`: still met at the probe "
              "cap; 0: not even the first rate probed met it). ★: on the AUC/LBT Pareto front of its target."]
    return "\n".join(lines) + "\n"


def profiles_asset_extra(summaries: Mapping[str, Mapping[str, Any]]) -> dict:
    """The PROFILES asset event extra (dags/recforge_assets.py): {"families": {family: {"candidate_run_id",
    "profiles": [{variant, variant_run_id, target, kind, path, artifact_uri, lbt_qps, ...}]}}}."""
    keys = ("variant", "variant_run_id", "target", "kind", "path", "artifact_uri", "lbt_qps", "lbt_capped",
            "items_per_s", "p95_ms_at_lbt", "p95_target_ms", "best_knobs", "auc", "delta_auc", "on_front")
    return {"families": {family: {"candidate_run_id": s["candidate_run_id"],
                                  "profiles": [{k: p.get(k) for k in keys} for p in s["profiles"]]}
                         for family, s in summaries.items()}}


