"""The results of ``make bench-fleet`` (``recforge.tools.fleet_bench``): the markdown table of one comparison and the
files ``$RECFORGE_HOME/bench/fleet_configs.{json,md}`` that keep the latest run per model and target."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.core import config

CONFIGS = ("generated", "default")  # RecForge (the champion, its generated config), the baseline (fp32, Triton's)
RESULTS_NAME = "fleet_configs"


def describe_knobs(knobs: Mapping[str, Any]) -> str:
    """One line of :func:`config_knobs`, for the table."""
    if knobs["dynamic_batching"]:
        preferred = ", ".join(map(str, knobs["preferred_batch_size"])) or "none"
        batching = f"dynamic_batching (preferred [{preferred}], delay {knobs['max_queue_delay_us']} us)"
    else:
        batching = "no dynamic_batching"
    return (f"max_batch_size {knobs['max_batch_size']}, {batching}, {knobs['instances']} instance(s), "
            f"{knobs['intra_op_threads']} intra-op thread(s)")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def render_table(doc: Mapping[str, Any]) -> str:
    """The markdown table of one comparison, with the load it ran under and the ratio."""
    load = doc["load"]
    lines = [f"### {doc['model']} v{doc['version']} on {doc['nodes']} x {doc['target']} "
             f"(measured {doc['measured_at']})", "", f"source: {doc['source']}", "",
             f"load: Poisson queries, {load['sizes']} items per query, sub-batch {load['sub_batch']}, "
             f"{load['workers']} client workers, seed {load['seed']}, {load['point_duration_s']:g} s per rate, "
             f"p95 target {load['p95_target_ms']:g} ms, search from {load['start_qps']:g} qps "
             f"(tolerance {load['tolerance']:g}); 1-min load average before/after: "
             f"{(doc.get('loadavg_before') or ['?'])[0]} / {(doc.get('loadavg_after') or ['?'])[0]}", "",
             "| config | LBT qps | items/s at LBT | p95 ms at LBT | p50 ms at LBT | p95 ms at the same load | "
             "rates probed | config.pbtxt |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    rounds = max(len(e.get("lbt_qps_rounds") or [0]) for e in doc["configs"].values())
    for label in CONFIGS:
        entry = doc["configs"].get(label)
        if entry is None:
            continue
        lbt = _fmt(entry["lbt_qps"]) + (" (capped)" if entry["capped"] else "") + \
            ("" if entry["converged"] else " (not converged)")
        if rounds > 1:
            lbt += f" (median of {', '.join(_fmt(x) for x in entry['lbt_qps_rounds'])})"
        same = (entry.get("same_load") or {}).get("p95_ms")
        lines.append(f"| {label} | {lbt} | {_fmt(entry['items_per_s_at_lbt'], 0)} | "
                     f"{_fmt(entry['p95_ms_at_lbt'])} | {_fmt(entry['p50_ms_at_lbt'])} | {_fmt(same, 2)} | "
                     f"{len(entry['curve'])} | {describe_knobs(entry['config_pbtxt_knobs'])} |")
    ratio = doc.get("ratio_generated_over_default")
    if rounds > 1:
        lines += ["", f"{rounds} rounds interleaved (default, generated, default, ...); LBT = median of the rounds, "
                  "the other columns are the round nearest to it"]
    lines += ["", f"LBT generated / default: {_fmt(ratio, 2) + 'x' if ratio is not None else '– (default LBT is 0)'}"]
    summary = doc.get("rounds")
    if summary:
        def interval(figure: Mapping[str, Any]) -> str:
            return (f"{_fmt(figure['median'], 2)} [{_fmt(figure['low'], 2)}–{_fmt(figure['high'], 2)}] "
                    f"({figure['n']} rounds, {100 * figure['coverage']:.1f}% interval)") if figure["n"] else "–"

        lines += ["", f"Per-round ratios generated / default, median [interval]: LBT "
                  f"{interval(summary['throughput_ratio'])}; p95 at {doc['load'].get('load_fraction', 0.8):.0%} of the "
                  f"default's LBT {interval(summary['latency_ratio'])}; AUC {_fmt(doc.get('auc_ratio'), 4)}",
                  f"baseline: {doc.get('baseline_onnx')}{baseline_config(doc)}"]
    return "\n".join(lines) + "\n"


def baseline_config(doc: Mapping[str, Any]) -> str:
    """How the baseline was served, when it is not Triton's default config: the profile its config came from."""
    baseline = doc.get("baseline") or {}
    if baseline.get("config") != "profile":
        return ""
    return (f", served with the config generated from {baseline['profile']} (client sub-batch "
            f"{baseline.get('sub_batch')}, {baseline.get('workers')} workers)")


def result_key(doc: Mapping[str, Any]) -> str:
    """``<model>@<target>``, and ``@vs-profile`` for a comparison against another profile's config, so that it does
    not replace the headline against Triton's default config."""
    suffix = "@vs-profile" if (doc.get("baseline") or {}).get("config") == "profile" else ""
    return f"{doc['model']}@{doc['target']}{suffix}"


def write_results(doc: Mapping[str, Any], home: str | Path | None = None) -> tuple[Path, Path]:
    """Merge ``doc`` into ``$RECFORGE_HOME/bench/fleet_configs.json`` (keyed by :func:`result_key`) and rewrite
    ``fleet_configs.md`` from every entry; returns both paths."""
    out = Path(home if home is not None else config.recforge_home()) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{RESULTS_NAME}.json", out / f"{RESULTS_NAME}.md"
    runs: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        runs = dict(json.loads(json_path.read_text()).get("runs") or {})
    runs[result_key(doc)] = doc
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=2, default=str) + "\n")
    os.replace(tmp, json_path)
    text = ["# Triton fleet: generated serving config vs Triton's default config", "",
            "Latency-bounded throughput (highest Poisson query rate whose p95 meets the target) through the balancer "
            "(`make bench-fleet`, recforge/tools/fleet_bench.py). The client load is identical for both configs.", ""]
    for key in sorted(runs, key=lambda k: runs[k].get("measured_at", ""), reverse=True):
        text.append(render_table(runs[key]))
    md_path.write_text("\n".join(text))
    return json_path, md_path
