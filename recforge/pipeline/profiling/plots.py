"""Plots of profiles (matplotlib, Agg): p95 against offered load, latency against batch size, and the family's
accuracy / serving-cost Pareto front. Points are numbered and keyed in a table beside the axes (names never
overlap); every colour and marker is in a legend; an LBT that is a lower bound (``lbt_capped``: the ramp ended at
the apparatus ceiling, max_qps or the step budget, never a failing rate) is drawn as an arrow and labelled with
what limited it (``lbt_limit``)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from recforge.pipeline.parity.plot import key_beside, log_ticks_plain, number_points, pyplot
from recforge.pipeline.profiling.selection import is_finite
from recforge.pipeline.profiling.summary import knobs_text

CAPPED_MARKER = ">"  # a lower-bound LBT: at least this much (the ramp's limit was reached with the SLO still met)
LIMIT_TEXT = {"apparatus": "the apparatus ceiling", "max_qps": "max_qps", "step_budget": "the step budget"}


def limit_text(doc: Mapping[str, Any]) -> str:
    """What limited a lower-bound LBT, in words (profiles without ``lbt_limit`` say: the probe limit)."""
    return LIMIT_TEXT.get(doc.get("lbt_limit") or "", "the probe limit")


def close_figure(figure) -> None:
    """Free a figure once it is saved or logged (pyplot keeps every open figure)."""
    pyplot().close(figure)


def _title(doc: Mapping[str, Any]) -> str:
    return f"{doc['model_family']}/{doc['variant']} on {doc['target']['name']} ({doc['target']['kind']})"


def plot_p95_vs_load(doc: Mapping[str, Any]):
    """p95 (and p50) latency against offered load at the best knobs; the SLO line and the LBT marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    curve = [r for r in doc["curve"] if r["p95_ms"] is not None]
    xs = [r["offered_qps"] for r in curve]
    ax.plot(xs, [r["p95_ms"] for r in curve], color="tab:blue", lw=1, label="p95")
    ax.plot(xs, [r["p50_ms"] for r in curve], color="tab:blue", lw=0.8, ls=":", label="p50")
    for row in curve:
        ax.scatter(row["offered_qps"], row["p95_ms"], color="tab:green" if row.get("meets_slo") else "tab:red",
                   zorder=3, s=18)
    ax.scatter([], [], color="tab:green", s=18, label="p95 meets the SLO")
    ax.scatter([], [], color="tab:red", s=18, label="p95 misses the SLO (or errors)")
    ax.axhline(doc["p95_target_ms"], color="grey", ls="--", lw=0.9, label=f"SLO p95 {doc['p95_target_ms']:g} ms")
    lbt = doc["latency_bounded_throughput_qps"]
    if lbt > 0:
        capped = bool(doc.get("lbt_capped"))
        ax.axvline(lbt, color="tab:green", lw=0.9, label=f"LBT {lbt:.0f} qps" + (
            f" (capped at {limit_text(doc)}: a lower bound)" if capped else ""))
        if capped:  # a lower bound: the true LBT lies to the right
            ax.annotate("LBT ≥", xy=(lbt * 1.2, 0.5), xytext=(lbt, 0.5), xycoords=("data", "axes fraction"),
                        textcoords=("data", "axes fraction"), color="tab:green", fontsize=8, va="bottom",
                        arrowprops={"arrowstyle": "->", "color": "tab:green"})
    ceiling = doc.get("apparatus_ceiling_qps")
    if ceiling and xs and ceiling <= 2 * max(xs):  # shown where it is near the curve (else: in the notes)
        ax.axvline(ceiling, color="black", lw=0.9, ls="-.",
                   label=f"apparatus ceiling {ceiling:,.0f} qps (load generator, null target)")
    ax.set_yscale("log")
    log_ticks_plain(ax.yaxis)
    ax.set_xlabel("offered load (queries/s, Poisson)")
    ax.set_ylabel("latency per query (ms, log)")
    knobs = textwrap.fill("best knobs: " + knobs_text(doc["search"]["best_knobs"]), 90)
    ax.set_title(f"{_title(doc)}\n{knobs}", fontsize=9, wrap=True)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency_vs_batch(doc: Mapping[str, Any]):
    """Single-request latency against batch size (no queueing), with the cost per item."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    rows = doc["latency_vs_batch"]
    batches = [r["batch"] for r in rows]
    ax.plot(batches, [r["ms"] for r in rows], marker="o", color="tab:blue", label="ms per request")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("items per request (batch)")
    ax.set_ylabel("latency per request (ms)", color="tab:blue")
    per_item = ax.twinx()
    per_item.plot(batches, [1000 * r["ms"] / r["batch"] for r in rows], marker="s", color="tab:orange", lw=0.8,
                  label="µs per item (right axis)")
    per_item.set_yscale("log")
    log_ticks_plain(per_item.yaxis)
    per_item.set_ylabel("µs per item (log)", color="tab:orange")
    lines = ax.get_legend_handles_labels()
    more = per_item.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper center", fontsize=8)
    ax.set_title(f"{_title(doc)}\none request, no queueing, threads={doc['target']['threads']}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_pareto(summary: Mapping[str, Any]):
    """Accuracy against latency (left: every passing variant, ORT ms at batch 256, the number logged as each variant
    run's ``latency_ms_b256``) and against throughput (middle: the profiled variants' LBT per target; a capped LBT
    is an arrow: at least that much); the Pareto fronts highlighted; a key of the numbered points on the right."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, (left, right, key_ax) = plt.subplots(1, 3, figsize=(15, 6.2), gridspec_kw={"width_ratios": [4, 4, 3]})
    variants = [v for v in summary.get("variants") or []
                if is_finite(v.get("latency_ms_b256")) and is_finite(v.get("auc"))]
    front = set(summary.get("latency_front") or [])
    profiled = {r["variant"] for r in summary["profiles"]}
    numbers = {v["name"]: i + 1 for i, v in enumerate(sorted(variants, key=lambda v: v["latency_ms_b256"]))}
    for name in sorted(profiled - set(numbers)):  # profiled without a compression-summary row
        numbers[name] = len(numbers) + 1
    for v in variants:
        on_front = v["name"] in front
        left.scatter(v["latency_ms_b256"], v["auc"], s=40 if on_front else 18, zorder=3,
                     color="tab:orange" if on_front else "darkgrey",
                     edgecolors="black" if v["name"] in profiled else "none")
        number_points(left, [(v["latency_ms_b256"], v["auc"])], first=numbers[v["name"]])
    front_rows = sorted((v for v in variants if v["name"] in front), key=lambda v: v["latency_ms_b256"])
    if front_rows:
        left.step([v["latency_ms_b256"] for v in front_rows], [v["auc"] for v in front_rows], where="post",
                  color="tab:orange", lw=1)
    left.legend(handles=[
        Line2D([], [], color="tab:orange", marker="o", label="on the Pareto front (line)"),
        Line2D([], [], color="darkgrey", marker="o", ls="", label="dominated"),
        Line2D([], [], color="white", marker="o", markeredgecolor="black", ls="", label="black edge: profiled")],
        loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7, ncols=2)
    left.set_xlabel("ORT latency at batch 256 (ms; variant runs' latency_ms_b256)")
    left.set_ylabel("test AUC")
    left.set_title("accuracy vs latency, every passing variant", fontsize=9)
    markers = "osD^v<"
    handles = []
    for i, target in enumerate(sorted({r["target"] for r in summary["profiles"]})):
        rows = [r for r in summary["profiles"] if r["target"] == target and is_finite(r.get("auc"))]
        on_front = {r["variant"] for r in summary.get("throughput_front", {}).get(target, [])}
        color = f"C{i}"
        for r in rows:
            capped = bool(r.get("lbt_capped"))
            right.scatter(r["lbt_qps"], r["auc"], marker=CAPPED_MARKER if capped else markers[i % len(markers)],
                          color=color, zorder=3, s=45 if r["variant"] in on_front else 18,
                          alpha=1.0 if r["variant"] in on_front else 0.5)
            if capped:  # a lower bound: the true LBT is further right
                right.annotate("", xy=(r["lbt_qps"] * 1.15, r["auc"]), xytext=(r["lbt_qps"], r["auc"]),
                               arrowprops={"arrowstyle": "->", "color": color, "lw": 0.8})
            number_points(right, [(r["lbt_qps"], r["auc"])], first=numbers.get(r["variant"], 0))
        pts = sorted((r for r in rows if r["variant"] in on_front), key=lambda r: -r["lbt_qps"])
        if pts:
            right.step([r["lbt_qps"] for r in pts], [r["auc"] for r in pts], where="post", color=color, lw=1)
        handles.append(Line2D([], [], color=color, marker=markers[i % len(markers)],
                              label=f"{target} (line: its Pareto front; big: on it)"))
    if any(r.get("lbt_capped") for r in summary["profiles"]):
        handles.append(Line2D([], [], color="black", marker=CAPPED_MARKER, ls="",
                              label="→ capped: LBT at least this (apparatus ceiling, max_qps or step budget)"))
    if handles:
        right.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7, ncols=1)
    right.set_xlabel("latency-bounded throughput (queries/s at the p95 SLO)")
    right.set_ylabel("test AUC")
    right.set_title("accuracy vs throughput per target", fontsize=9)
    lbt = {(r["variant"], r["target"]): r for r in summary["profiles"]}
    rows = []
    for name, n in sorted(numbers.items(), key=lambda item: item[1]):
        v = next((v for v in variants if v["name"] == name), {})
        targets = ", ".join(f"{t}={'≥' if r.get('lbt_capped') else ''}{r['lbt_qps']:.0f}"
                            for (variant, t), r in sorted(lbt.items()) if variant == name)
        ms = f"{v['latency_ms_b256']:.3f}" if v else "—"
        auc = f"{v['auc']:.4f}" if v else "—"
        rows.append(f"{n:>2} {name:<22} {ms:>7} {auc}" + (f"\n   LBT qps: {targets}" if targets else ""))
    key_beside(fig, key_ax, f"{'#':>2} {'variant':<22} {'ms':>7} {'AUC':<6}", rows)
    fig.suptitle(f"{summary['family']}: accuracy / serving-cost Pareto front", fontsize=10)
    fig.tight_layout()
    return fig
