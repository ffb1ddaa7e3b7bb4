"""The synthetic DeepRecSys-scale models (``recforge.models.synthetic``: RMC1/2/3 by default, MT-WnD and DIEN on
request: ``{"synthetic": ["mt_wnd", "dien"]}``) per format and precision: the
ONNX export (Gather + CumSum pooling) in fp32 and with INT8 MLPs, and the TorchScript models with fused FBGEMM
embedding bags (``recforge.models.synthetic_fused``: fp32, INT8 MLPs, int8/int4 tables, both); for each, latency
against batch size, LBT at the synthetic p95 target, table memory, and the share of the physical limit
(``recforge.tools.hw_limits.lookup_item_limit``: max(lookups / measured gather rate, 2·MACs / GEMM peak)).

``python -m recforge.tools.bench.synthetic --config '{"synthetic": ["rmc2"], "synthetic_lbt": false}'`` benches the
synthetic models alone (no nightly run needed; the fields are ``BenchConfig``'s) and prints their table."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.profile import mean_items_per_query
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError
from recforge.core.timing import median_ms
from recforge.models.synthetic import InputPool, JaggedTables, export_synthetic_onnx, onnx_files, synthetic_preset
from recforge.models.synthetic_fused import (
    SyntheticModel,
    TorchScriptSession,
    fused_variant,
    save_torchscript,
    synthetic_model,
    variant_precisions,
)
from recforge.pipeline.compression.onnx_graph import set_nodes
from recforge.pipeline.profiling.document import load_doc
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.lbt import lbt_summary, measure_fn, search_lbt
from recforge.tools.bench.load_targets import SyntheticOnnxTarget, torch_threads
from recforge.tools.bench.quiet import quiet_onnx_export
from recforge.tools.bench.roofline import lookup_roofline
from recforge.tools.bench.rounds import ratio
from recforge.tools.hw_limits import HardwareLimits, measure, measure_gather_rates

# the ONNX variants: name -> (table precision, MLP precision)
ONNX_VARIANTS: dict[str, tuple[str, str]] = {"fp32": ("fp32", "fp32"), "int8": ("fp32", "int8")}


def quantize_mlps_int8(src: Path, dst: Path) -> int:
    """An INT8 variant of a synthetic model: every Gemm with a constant weight becomes onnxruntime's
    ``DynamicQuantizeMatMul`` (activations quantized per batch at run time, weights int8 per output column,
    7-bit as recforge.pipeline.compression does on x86 without VNNI). The embedding table keeps referring to
    ``src``'s external data file: nothing of the GBs of tables is copied (``dst`` must be in the same folder).
    Returns Gemms rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    if src.parent != dst.parent:
        raise ConfigError("quantize_mlps_int8: dst must be in the folder of src (they share the tables' file)")
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not (node.op_type == "Gemm" and node.input[1] in initializers and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]], base_dir=str(src.parent))
        weight = weight.T if attrs.get("transB", 0) else weight  # [K, N]
        scale = (np.abs(weight).max(axis=0) / 63.0).astype(np.float32)
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(weight / scale), -64, 63).astype(np.int8)
        name = f"{node.name or node.output[0]}_int8"
        tensors = [numpy_helper.from_array(np.ascontiguousarray(quantized), f"{name}_w"),
                   numpy_helper.from_array(scale, f"{name}_scale"),
                   numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero")]
        inputs = [node.input[0], f"{name}_w", f"{name}_scale", f"{name}_zero"]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]], base_dir=str(src.parent))
            tensors.append(numpy_helper.from_array(np.broadcast_to(bias, scale.shape).astype(np.float32),
                                                   f"{name}_bias"))
            inputs.append(f"{name}_bias")
        graph.initializer.extend(tensors)
        nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, list(node.output), name=name,
                                      domain="com.microsoft"))
        rewritten += 1
    set_nodes(graph, nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return rewritten


class TorchScriptSyntheticTarget:
    """A fused synthetic model loaded from its TorchScript file; each sub-batch is the next window of the input
    pool (torch's intra-op threads are the caller's: ``load_targets.torch_threads``)."""

    def __init__(self, session: TorchScriptSession, pool: Any):
        self.session, self.pool = session, pool
        self.name = session.path.name
        self.max_batch = min(1024, pool.items)

    def infer(self, n_items: int) -> None:
        self.session.run(self.pool.batch(n_items))


def with_gather_rates(limits: HardwareLimits, dim: int, precisions: tuple[str, ...]) -> HardwareLimits:
    """``limits`` with the gather rates of ``dim``-value rows measured now where they were not already (a model
    whose dim the machine measurement did not cover)."""
    missing = [p for p in precisions if limits.gather_rate(p, dim) is None]
    if not missing:
        return limits
    rates = measure_gather_rates((dim,), limits.gather_mib or 4 * limits.array_mib, precisions=missing)
    return dataclasses.replace(limits, gather_rows_per_s={**limits.gather_rows_per_s, **rates},
                               gather_mib=limits.gather_mib or 4 * limits.array_mib)


def bench_synthetic_target(spec: JaggedTables, target: Any, precisions: tuple[str, str], mean_items: float,
                           cfg: BenchConfig, limits: HardwareLimits) -> dict:
    """Latency at each of ``cfg.synthetic_batches``, LBT at the synthetic p95 target (unless turned off), and the
    share of the physical limit, of one variant (``precisions`` = (tables, MLPs))."""
    sub_batch = cfg.synthetic_sub_batch
    batch_ms = {int(b): median_ms(lambda b=b: target.infer(b), cfg.latency_repeats, 2)
                for b in sorted(cfg.synthetic_batches)}
    figures: dict[str, Any] = {"latency_ms_vs_batch": batch_ms, "table_precision": precisions[0],
                               "mlp_precision": precisions[1]}
    measured = sub_batch * 1000.0 / (batch_ms.get(sub_batch) or median_ms(lambda: target.infer(sub_batch), 3, 1))
    if cfg.synthetic_lbt:
        capacity = cfg.workers * 1000.0 / median_ms(lambda: target.infer(min(1024, round(mean_items))), 3, 1)
        lbt = search_lbt(measure_fn(lambda _knobs: target, cfg, sub_batch=sub_batch, workers=cfg.workers),
                         {"sub_batch": sub_batch, "workers": cfg.workers, "threads": cfg.synthetic_threads},
                         cfg, cfg.start_fraction * capacity, cfg.synthetic_p95_target_ms)
        figures |= lbt_summary(lbt, mean_items)
        if figures["items_per_s"] > 0:
            measured = figures["items_per_s"]
        else:
            figures["note"] = (f"LBT 0 at p95 <= {cfg.synthetic_p95_target_ms:g} ms; items/s = {sub_batch} items / "
                               f"latency at batch {sub_batch}")
    else:
        figures["note"] = f"items/s = {sub_batch} items / latency at batch {sub_batch} (no LBT search)"
    figures["roofline"] = lookup_roofline(spec, precisions[0], precisions[1], limits, measured)
    return figures


def build_fused_files(model: SyntheticModel, variants: tuple[str, ...], workdir: Path) -> dict[str, Path]:
    """Every fused variant of ``model`` saved as TorchScript under ``workdir`` (built one at a time: only one
    packed copy of the tables lives beside the fp32 model)."""
    files = {}
    for variant in variants:
        fused = fused_variant(model, variant)
        files[variant] = save_torchscript(fused, workdir / f"{model.spec.name}.{variant.replace('+', '_')}.pt")
        del fused
        gc.collect()
    return files


def fused_label(variant: str) -> str:
    """"int4_tables+int8_mlp" -> "int4 tables + INT8 MLP"."""
    return " + ".join(part.replace("_mlp", " MLP").replace("int8 MLP", "INT8 MLP").replace("_", " ")
                      for part in variant.split("+"))


def bench_fused(spec: JaggedTables, files: dict[str, Path], pool: Any, mean_items: float, cfg: BenchConfig,
                limits: HardwareLimits) -> dict[str, dict]:
    """Each TorchScript file loaded (tables checked against ``spec``), measured on torch's
    ``cfg.synthetic_threads`` threads, then deleted."""
    out = {}
    with torch_threads(cfg.synthetic_threads):
        for variant, path in files.items():
            session = TorchScriptSession(path, spec)
            figures = {"format": "torchscript", "label": f"TorchScript {fused_label(variant)}",
                       "table_bytes": session.metadata["table_bytes"], "file_bytes": path.stat().st_size}
            out[variant] = figures | bench_synthetic_target(
                spec, TorchScriptSyntheticTarget(session, pool), variant_precisions(variant), mean_items, cfg, limits)
            del session
            path.unlink(missing_ok=True)
            gc.collect()
    return out


def bench_synthetic(name: str, cfg: BenchConfig, limits: HardwareLimits, workdir: Path) -> dict:
    """One synthetic model (an RMC, MT-WnD or DIEN) at ``cfg.table_rows_scale``: the ONNX model in fp32 and with INT8
    MLPs, and the fused TorchScript variants ``cfg.synthetic_fused``: latency vs batch, LBT, table memory, share of
    the physical limit."""
    spec = synthetic_preset(name, cfg.table_rows_scale)
    started = time.perf_counter()
    model = synthetic_model(spec, seed=cfg.seed)
    fused_files = build_fused_files(model, tuple(cfg.synthetic_fused), workdir)
    with quiet_onnx_export():
        fp32_path = export_synthetic_onnx(model, workdir / f"{name}.onnx")
    del model
    gc.collect()
    int8_path = workdir / f"{name}.int8.onnx"
    quantize_mlps_int8(fp32_path, int8_path)
    build_s = time.perf_counter() - started
    limits = with_gather_rates(limits, spec.embedding_dim, ("fp32", "int8", "int4"))
    pool = InputPool.sized(spec, 1024, alpha=cfg.zipf_alpha, sigma=cfg.pooling_sigma, seed=cfg.seed)
    mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), (1,)))
    out = {"model": name, "spec": spec.to_dict(), "table_rows_scale": cfg.table_rows_scale,
           "table_bytes": spec.table_bytes, "lookups_per_item": spec.lookups_per_item,
           "zipf_alpha": cfg.zipf_alpha, "pooling_sigma": cfg.pooling_sigma,
           "gather_rows_per_s": {p: limits.gather_rate(p, spec.embedding_dim) for p in ("fp32", "int8", "int4")},
           "onnx_bytes": sum(p.stat().st_size for p in onnx_files(fp32_path)), "build_s": build_s, "variants": {}}
    for variant, path in (("fp32", fp32_path), ("int8", int8_path)):
        figures = {"format": "onnx", "label": f"ONNX {'fp32' if variant == 'fp32' else 'INT8 MLP'}",
                   "table_bytes": spec.table_bytes}
        target = SyntheticOnnxTarget(path, pool, cfg.synthetic_threads)
        out["variants"][variant] = figures | bench_synthetic_target(spec, target, ONNX_VARIANTS[variant],
                                                                    mean_items, cfg, limits)
        del target
        gc.collect()
    out["int8_lbt_ratio"] = ratio(out["variants"]["int8"].get("lbt_qps"), out["variants"]["fp32"].get("lbt_qps"))
    for path in (*onnx_files(int8_path)[:1], *onnx_files(fp32_path)):
        path.unlink(missing_ok=True)
    out["fused"] = bench_fused(spec, fused_files, pool, mean_items, cfg, limits)
    out["fused_vs_onnx"] = fused_speedups(out)
    out["seconds"] = time.perf_counter() - started
    return out


def fused_speedups(row: dict) -> dict[str, float | None]:
    """Per fused variant of a :func:`bench_synthetic` row, its items/s ÷ the ONNX fp32 model's."""
    base = row["variants"]["fp32"]["roofline"]["measured_items_per_s"]
    return {variant: ratio(figures["roofline"]["measured_items_per_s"], base)
            for variant, figures in row.get("fused", {}).items()}


def synthetic_markdown(rows: list[dict], limits: HardwareLimits) -> str:
    """One line per model and variant: format and precision, table memory, latency per batch, LBT, items/s, the
    physical limit and its share."""
    lines = [f"Machine: {limits.device}; gather rows/s (D=32, D=64): " + ", ".join(
                 f"{k} {v:.3g}" for k, v in sorted(limits.gather_rows_per_s.items())),
             "", "| model | variant | tables MB | ms per batch | LBT qps | items/s | limit items/s (bound) | share |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for figures in [*row["variants"].values(), *row.get("fused", {}).values()]:
            roof = figures["roofline"]
            ms = ", ".join(f"{b}: {ms:.3g}" for b, ms in figures["latency_ms_vs_batch"].items())
            lbt = figures.get("lbt_qps")
            lines.append(f"| {row['model']} | {figures['label']} | {figures['table_bytes'] / 1e6:,.0f} | {ms} | "
                         f"{'—' if lbt is None else f'{lbt:.0f}'} | {roof['measured_items_per_s']:,.0f} | "
                         f"{roof['items_per_s']:,.0f} ({roof['bound']}) | {100 * roof['fraction_of_limit']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.bench.synthetic",
                                     description="The synthetic DeepRecSys-scale models per format and precision "
                                                 "against this machine's physical limit.")
    parser.add_argument("--config", default="{}", help="BenchConfig overrides as a JSON object (synthetic, "
                        "table_rows_scale, synthetic_fused, synthetic_lbt, synthetic_threads, gemm_size, ...)")
    args = parser.parse_args(argv)

    def step() -> str:
        cfg = BenchConfig.from_dict(json_object(args.config, "--config"))
        limits = measure(cfg.gemm_size, cfg.array_mib)
        workdir = config.work_dir()
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="recforge-synthetic-", dir=workdir) as tmp:
            rows = [bench_synthetic(name, cfg, limits, Path(tmp)) for name in cfg.synthetic]
        return synthetic_markdown(rows, limits)

    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
