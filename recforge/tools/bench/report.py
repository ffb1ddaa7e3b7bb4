"""The benchmark's report: the markdown table and the JSON + markdown files under ``$RECFORGE_HOME/bench``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CHAMPION_ALIAS = "champion-cpu-onnxruntime"  # the alias of the target the bench measures on


def write_outputs(doc: dict, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = doc["measured_at"].replace(":", "").replace("+0000", "Z")
    written = []
    for stem in (f"bench-{stamp}", "latest"):
        (out_dir / f"{stem}.json").write_text(json.dumps(json_safe(doc), indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(doc["markdown"])
        written += [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
    return written


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value



def cell(value: Any, spec: str = ".3g") -> str:
    """A table cell: ``value`` formatted with ``spec``, or a dash when there is none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def format_markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"## RecForge bench — nightly {doc['nightly_date']}, measured {doc['measured_at']}", "",
             f"Machine: {m['device']}; measured peaks: fp32 GEMM {m['fp32_flops'] / 1e9:.0f} GFLOP/s, "
             f"int8 GEMM {m['int8_ops'] / 1e9:.0f} Gop/s, memory {m['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (triad). "
             f"Load: Poisson arrivals, {doc['config']['sizes']} items/query (DeepRecSys), p95 target "
             f"{doc['config']['p95_target_ms']:g} ms.", "",
             "| family | RecForge variant (knobs) | AUC fp32 → variant | LBT qps baseline → RecForge | LBT × | "
             "same load qps | p95 ms baseline → RecForge | p95 ratio | items/s at LBT | roofline items/s (bound) | "
             "% of roofline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in doc["families"]:
        b, r, s = f["baseline"], f["recforge"], f["same_load"]
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items())
        rounds = f.get("rounds") or {}
        lines.append(
            f"| {f['family']} | {r['variant']} ({knobs}) | {cell(b['auc'], '.4f')} → {cell(r['auc'], '.4f')} | "
            f"{cell(b['lbt_qps'], '.0f')} → {cell(r['lbt_qps'], '.0f')}{' (capped)' if r['capped'] else ''} | "
            f"{interval_cell(rounds.get('throughput_ratio'), f['lbt_ratio'])} | {cell(s['offered_qps'], '.0f')} | "
            f"{cell(s['baseline']['p95_ms'], '.2f')} → {cell(s['recforge']['p95_ms'], '.2f')} | "
            f"{interval_cell(rounds.get('latency_ratio'), f['p95_ratio'])} | {cell(r['items_per_s'], '.3g')} | "
            f"{cell(r['roofline']['items_per_s'], '.3g')} ({r['roofline']['bound']}) | "
            f"{cell(100 * r['roofline']['fraction_of_limit'], '.2g')}% |")
    lines += ["", "Baseline: the trained fp32 model in PyTorch eager, one whole query per forward, one worker. "
              "RecForge: the parity-passing variant with the best LBT on cpu-onnxruntime among the compress "
              "summary's fastest, with its hill-climbed serving knobs. Roofline = min(peak ops / (2·MACs per item), "
              "bandwidth / bytes per item); the MovieLens models' tables fit in cache, so their memory bound is loose."]
    if any(f.get("rounds") for f in doc["families"]):
        lines += ["", *rounds_table(doc["families"])]
    if doc["synthetic"]:
        lines += ["", "### Synthetic DeepRecSys-scale models (random weights, Zipf ids, lognormal pooling)", "",
                  "| model | tables × rows (scale) | lookups/item | tables GB | precision | ms at batch "
                  f"{'/'.join(str(b) for b in doc['config']['synthetic_batches'])} | LBT qps | items/s | "
                  "roofline items/s (bound) | % of roofline |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in doc["synthetic"]:
            spec = s["spec"]
            for precision, v in [*s["variants"].items(), *s.get("fused", {}).items()]:
                ms = "/".join(cell(x, ".3g") for x in v["latency_ms_vs_batch"].values())
                lines.append(
                    f"| {s['model']} | {spec['num_tables']} × {spec['rows_per_table']:,} ({s['table_rows_scale']:g}) | "
                    f"{s['lookups_per_item']:.0f} | {v.get('table_bytes', s['table_bytes']) / 1e9:.2f} | "
                    f"{v.get('label', precision)} | {ms} | "
                    f"{cell(v.get('lbt_qps'), '.0f')} | {cell(v['roofline']['measured_items_per_s'], '.3g')} | "
                    f"{cell(v['roofline']['items_per_s'], '.3g')} ({v['roofline']['bound']}) | "
                    f"{cell(100 * v['roofline']['fraction_of_limit'], '.2g')}% |")
        lines += ["", f"Synthetic LBT at p95 <= {doc['config']['synthetic_p95_target_ms']:g} ms; where it is 0, "
                  "items/s is one sub-batch's items / its latency. Serving knobs fixed: "
                  f"sub-batch {doc['config']['synthetic_sub_batch']}, "
                  f"{doc['config']['workers']} workers, {doc['config']['synthetic_threads']} thread(s). ONNX: Gather + "
                  "CumSum pooling, INT8 MLP = DynamicQuantizeMatMul; TorchScript: fused FBGEMM embedding bags with "
                  "fp32 or rowwise int8/int4 tables, INT8 MLP = FBGEMM dynamic Linear. Roofline = 1 / max(lookups per "
                  "item / measured gather rate of such rows, 2·MACs per item / GEMM peak) (recforge.tools.hw_limits)."]
    if doc["families"]:
        lines += ["", *champion_lines(doc["families"], doc.get("champions") or {})]
    lines += ["", f"Wall time {doc['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def interval_cell(interval: dict | None, fallback: Any = None, spec: str = ".2f") -> str:
    """"0.42 [0.38–0.47]" of a ``intervals.MedianInterval`` dict (``fallback`` alone without one)."""
    if not interval or not interval.get("n"):
        return cell(fallback, spec)
    return f"{cell(interval['median'], spec)} [{cell(interval['low'], spec)}–{cell(interval['high'], spec)}]"


def rounds_table(families: Sequence[dict]) -> list[str]:
    """Markdown lines: per family and side, the rounds' medians [intervals] of LBT, p95 at each load fraction,
    unloaded latency and the apparatus' share of the latency at the headline load; each baseline thread option's
    LBT."""
    first = next(f["rounds"] for f in families if f.get("rounds"))
    fractions = list(first["baseline"]["p95_ms_at"])
    coverage = first["throughput_ratio"].get("coverage") or 0.0
    lines = [f"### Interleaved rounds (baseline, RecForge, baseline, ...): median [interval] over {first['rounds']} "
             f"rounds (order statistics, {100 * coverage:.1f}% coverage)", "",
             "| family | side | LBT qps | "
             + " | ".join(f"p95 ms at {float(x):.0%} of baseline's median LBT" for x in fractions)
             + " | unloaded p50 ms | apparatus share at headline load |",
             "|---|---|---|" + "---|" * len(fractions) + "---|---|"]
    for f in families:
        rounds = f.get("rounds")
        if not rounds:
            continue
        headline = str(rounds["headline_fraction"])
        for side in ("baseline", "recforge"):
            figures = rounds[side]
            cells = " | ".join(interval_cell(figures["p95_ms_at"][x]) for x in fractions)
            lines.append(f"| {f['family']} | {side} | {interval_cell(figures['lbt_qps'], spec='.0f')} | {cells} | "
                         f"{interval_cell(figures['unloaded_p50_ms'])} | "
                         f"{interval_cell(figures['apparatus_share_at'].get(headline), spec='.3f')} |")
        ratios = " | ".join(interval_cell(rounds["latency_ratio_at"][x]) for x in fractions)
        lines.append(f"| {f['family']} | ratio | {interval_cell(rounds['throughput_ratio'])} | {ratios} | "
                     f"{interval_cell(rounds['unloaded_ratio'])} | apparatus ceiling "
                     f"{cell(rounds.get('apparatus_ceiling_qps'), ',.0f')} qps = "
                     f"{cell(rounds.get('apparatus_ratio'), '.1f')}x the highest LBT |")
    options = [f"{f['family']}: " + ", ".join(f"{o} {interval_cell(i, spec=',.0f')}"
                                            for o, i in f["rounds"]["baseline_options"].items())
               + f" → {f['rounds']['baseline_option']}"
               for f in families if len((f.get("rounds") or {}).get("baseline_options") or {}) > 1]
    if options:
        lines += ["", "Baseline torch threads, by LBT qps in the same rounds (the higher median is the baseline): "
                  + "; ".join(options) + "."]
    lines += ["", f"The loads are fixed once per family, at these fractions of the baseline's median LBT; the headline "
              f"p95 ratio (latency_ratio) is at {float(first['headline_fraction']):.0%}. "
              "Apparatus share: of each query's latency, the time before the load generator's dispatcher released "
              "it (its own lateness), median over the queries of a run. Apparatus ceiling: the load generator "
              "against a null target in this process."]
    return lines


def champion_lines(families: Sequence[dict], champions: dict[str, dict]) -> list[str]:
    """Markdown lines: per family, the bench's variant against the registry's champion, and why they can differ."""
    if not champions:
        return ["Registry champions: not compared (no MLflow tracking server answered)."]
    lines = [f"Bench variant vs registry `{CHAMPION_ALIAS}`: the bench re-profiles the compress summary's "
             "fastest parity-passing variants here, now, on one process's onnxruntime; `register_models` promotes "
             "from profile_variants' profiles (Pareto-front selection, a champion replaced only when its LBT gain "
             "exceeds the policy's margin without losing AUC), measured another night or host. They can differ:", ""]
    for f in families:
        c = champions.get(f["family"], {})
        chosen = f["recforge"]["variant"]
        if "missing" in c:
            lines.append(f"- {f['family']}: bench {chosen}; no champion ({c['missing']})")
        elif c:
            same = "same variant" if c["variant"] == chosen else "differs"
            lbt = "—" if c["lbt_qps"] is None else f"{c['lbt_qps']:.0f}"
            lines.append(f"- {f['family']}: bench {chosen}; champion v{c['version']} {c['variant']} "
                         f"(registered LBT {lbt} qps) — {same}")
    return lines
