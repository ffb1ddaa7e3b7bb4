"""The synthetic DeepRecSys-scale models (``recforge.models.synthetic``: RMC1/2/3): an INT8 variant of the MLPs,
latency against batch size, LBT of fp32 against INT8, and the roofline of both."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.profile import mean_items_per_query
from recforge.core.errors import ConfigError
from recforge.core.timing import median_ms
from recforge.models.synthetic import InputPool, SyntheticDLRM, export_synthetic_onnx, onnx_files, rmc_spec
from recforge.pipeline.compression.onnx_graph import set_nodes
from recforge.pipeline.profiling.document import load_doc
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.family import ratio
from recforge.tools.bench.lbt import lbt_summary, measure_fn, search_lbt
from recforge.tools.bench.load_targets import SyntheticOnnxTarget
from recforge.tools.bench.quiet import quiet_onnx_export
from recforge.tools.bench.roofline import ELEMENT_BYTES, roofline
from recforge.tools.hw_limits import HardwareLimits


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


def bench_synthetic_variant(spec: Any, precision: str, path: Path, pool: Any, mean_items: float, cfg: BenchConfig,
                             limits: HardwareLimits) -> dict:
    target = SyntheticOnnxTarget(path, pool, cfg.synthetic_threads)
    sub_batch = cfg.synthetic_sub_batch
    batch_ms = {int(b): median_ms(lambda b=b: target.infer(b), cfg.latency_repeats, 2)
                for b in sorted(cfg.synthetic_batches)}
    figures: dict[str, Any] = {"latency_ms_vs_batch": batch_ms}
    work = {"flops_per_item": 2.0 * spec.mlp_macs_per_item,
            "bytes_per_item": 4 * spec.lookups_per_item * spec.embedding_dim
            + ELEMENT_BYTES[precision] * spec.mlp_parameters / sub_batch}
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
    figures["roofline"] = roofline(work, limits, precision, measured)
    return figures


def bench_synthetic(name: str, cfg: BenchConfig, limits: HardwareLimits, workdir: Path) -> dict:
    """fp32 and INT8 (MLPs) of one synthetic RMC at ``cfg.table_rows_scale``: latency vs batch, LBT, roofline."""
    spec = rmc_spec(name, cfg.table_rows_scale)
    started = time.perf_counter()
    model = SyntheticDLRM(spec, seed=cfg.seed)
    with quiet_onnx_export():
        fp32_path = export_synthetic_onnx(model, workdir / f"{name}.onnx")
    del model
    gc.collect()
    int8_path = workdir / f"{name}.int8.onnx"
    quantize_mlps_int8(fp32_path, int8_path)
    build_s = time.perf_counter() - started
    pool = InputPool.sized(spec, 1024, alpha=cfg.zipf_alpha, sigma=cfg.pooling_sigma, seed=cfg.seed)
    mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), (1,)))
    out = {"model": name, "spec": spec.to_dict(), "table_rows_scale": cfg.table_rows_scale,
           "table_bytes": spec.table_bytes, "lookups_per_item": spec.lookups_per_item,
           "zipf_alpha": cfg.zipf_alpha, "pooling_sigma": cfg.pooling_sigma,
           "onnx_bytes": sum(p.stat().st_size for p in onnx_files(fp32_path)), "build_s": build_s, "variants": {}}
    for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
        out["variants"][precision] = bench_synthetic_variant(spec, precision, path, pool, mean_items, cfg, limits)
        gc.collect()
    out["int8_lbt_ratio"] = ratio(out["variants"]["int8"].get("lbt_qps"), out["variants"]["fp32"].get("lbt_qps"))
    for path in (*onnx_files(int8_path)[:1], *onnx_files(fp32_path)):
        path.unlink(missing_ok=True)
    out["seconds"] = time.perf_counter() - started
    return out

