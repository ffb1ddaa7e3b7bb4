"""Plots of profiles (matplotlib, Agg): p95 against offered load, latency against batch size, and the family's
accuracy / serving-cost Pareto front."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recforge.pipeline.profiling.selection import is_finite
from recforge.pipeline.profiling.summary import knobs_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close_figure(figure) -> None:
    """Free a figure once it is saved or logged (pyplot keeps every open figure)."""
    _pyplot().close(figure)


def _title(doc: Mapping[str, Any]) -> str:
    return f"{doc['model_family']}/{doc['variant']} on {doc['target']['name']} ({doc['target']['kind']})"


def plot_p95_vs_load(doc: Mapping[str, Any]):
    """p95 (and p50) latency against offered load at the best knobs; the SLO line and the LBT marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = [r for r in doc["curve"] if r["p95_ms"] is not None]
    xs = [r["offered_qps"] for r in curve]
    ax.plot(xs, [r["p95_ms"] for r in curve], color="tab:blue", lw=1, label="p95")
    ax.plot(xs, [r["p50_ms"] for r in curve], color="tab:blue", lw=0.8, ls=":", label="p50")
    for row in curve:
        ax.scatter(row["offered_qps"], row["p95_ms"], color="tab:green" if row.get("meets_slo") else "tab:red",
                   zorder=3, s=18)
    ax.axhline(doc["p95_target_ms"], color="grey", ls="--", lw=0.9, label=f"SLO p95 {doc['p95_target_ms']:g} ms")
    lbt = doc["latency_bounded_throughput_qps"]
    if lbt > 0:
        ax.axvline(lbt, color="tab:green", lw=0.9, label=f"LBT {lbt:.0f} qps" + (" (capped)" if doc.get(
            "lbt_capped") else ""))
    ax.set_yscale("log")
    ax.set_xlabel("offered load (queries/s, Poisson)")
    ax.set_ylabel("latency per query (ms, log)")
    ax.set_title(f"{_title(doc)}\n{knobs_text(doc['search']['best_knobs'])}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency_vs_batch(doc: Mapping[str, Any]):
    """Single-request latency against batch size (no queueing), with the cost per item."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = doc["latency_vs_batch"]
    batches = [r["batch"] for r in rows]
    ax.plot(batches, [r["ms"] for r in rows], marker="o", color="tab:blue", label="ms per request")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("items per request (batch)")
    ax.set_ylabel("latency per request (ms)", color="tab:blue")
    per_item = ax.twinx()
    per_item.plot(batches, [1000 * r["ms"] / r["batch"] for r in rows], marker="s", color="tab:orange", lw=0.8)
    per_item.set_yscale("log")
    per_item.yaxis.set_major_formatter(ScalarFormatter())
    per_item.set_ylabel("µs per item (log)", color="tab:orange")
    ax.set_title(f"{_title(doc)}: one request, threads={doc['target']['threads']}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_pareto(summary: Mapping[str, Any]):
    """Accuracy against latency (left: every passing variant, ORT ms at batch 256) and against throughput (right:
    the profiled variants' LBT per target); the Pareto fronts highlighted."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    variants = summary.get("variants") or []
    front = set(summary.get("latency_front") or [])
    profiled = {r["variant"] for r in summary["profiles"]}
    for v in variants:
        if not (is_finite(v.get("latency_ms_b256")) and is_finite(v.get("auc"))):
            continue
        on_front = v["name"] in front
        left.scatter(v["latency_ms_b256"], v["auc"], s=40 if on_front else 18, zorder=3,
                     color="tab:orange" if on_front else "lightgrey",
                     edgecolors="black" if v["name"] in profiled else "none")
        left.annotate(v["name"], (v["latency_ms_b256"], v["auc"]), fontsize=6, xytext=(3, 3),
                      textcoords="offset points")
    front_rows = sorted((v for v in variants if v["name"] in front), key=lambda v: v["latency_ms_b256"])
    if front_rows:
        left.step([v["latency_ms_b256"] for v in front_rows], [v["auc"] for v in front_rows], where="post",
                  color="tab:orange", lw=1, label="Pareto front")
        left.legend(loc="best", fontsize=8)
    left.set_xlabel("ORT latency at batch 256 (ms; compress_and_validate)")
    left.set_ylabel("test AUC")
    left.set_title("accuracy vs latency (black edge = profiled)", fontsize=9)
    markers = "osD^v<>"
    for i, target in enumerate(sorted({r["target"] for r in summary["profiles"]})):
        rows = [r for r in summary["profiles"] if r["target"] == target and is_finite(r.get("auc"))]
        on_front = {r["variant"] for r in summary.get("throughput_front", {}).get(target, [])}
        color = f"C{i}"
        for r in rows:
            right.scatter(r["lbt_qps"], r["auc"], marker=markers[i % len(markers)], color=color, zorder=3,
                          s=45 if r["variant"] in on_front else 18, alpha=1.0 if r["variant"] in on_front else 0.5)
            right.annotate(r["variant"], (r["lbt_qps"], r["auc"]), fontsize=6, xytext=(3, 3),
                           textcoords="offset points")
        pts = sorted((r for r in rows if r["variant"] in on_front), key=lambda r: -r["lbt_qps"])
        if pts:
            right.step([r["lbt_qps"] for r in pts], [r["auc"] for r in pts], where="post", color=color, lw=1,
                       label=f"{target} front")
    right.set_xlabel("latency-bounded throughput (queries/s at p95 SLO)")
    right.set_ylabel("test AUC")
    right.set_title("accuracy vs throughput per target (big = Pareto front)", fontsize=9)
    if summary["profiles"]:
        right.legend(loc="best", fontsize=8)
    fig.suptitle(f"{summary['family']}: accuracy / serving-cost Pareto front", fontsize=10)
    fig.tight_layout()
    return fig
