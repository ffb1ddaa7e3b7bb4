"""Rowwise-quantized embedding tables inside an ONNX graph: the ``emb_int8`` / ``emb_int4`` precisions.

MovieLens models are served as ONNX (small tables, one id per feature), so the quantized tables go into the graph
itself. Each float32 table ``T`` [R, D] whose every reader is a ``Gather`` (axis 0) is stored as

* ``emb_int8``: ``T.codes`` uint8 [R, D] plus float32 ``T.scale`` and ``T.bias`` [R] (D + 8 bytes a row);
* ``emb_int4``: ``T.codes`` uint8 [R, D/2], two 4-bit codes a byte, plus float16 ``T.scale`` and ``T.bias`` [R]
  (D/2 + 4 bytes a row). Byte j holds code j in its low nibble and code j + D/2 in its high nibble, so the graph
  unpacks a gathered row with ``BitwiseAnd`` / ``BitShift`` and one ``Concat`` (no reshape to the ids' rank).

and each ``Gather(T, ids)`` becomes ``Add(Mul(Cast(Gather(T.codes, ids)), Unsqueeze(Gather(T.scale, ids))),
Unsqueeze(Gather(T.bias, ids)))`` with the same output name. The codes, scales and biases are FBGEMM's
(:func:`recforge.models.embedding_bags.pack_table`: code q = round((x - min) / scale), x ≈ scale·q + bias, scale
and bias float32 for 8 bits and float16 for 4 bits), so the error bound and its check are
:func:`~recforge.models.embedding_bags.row_error_bound` / ``check_quantization``: the tables read back from the
written graph are measured against the fp32 ones (:func:`table_reports`), and the parity gate rejects a variant
whose table exceeds its bound, naming the table.

A table is left in float32 when quantizing it saves nothing (a row of D values costs more than 4·D bytes stored:
D < 3 for 8 bits, and for 4 bits also an odd D): wide_deep's and logreg's D = 1 "wide" weights stay float.

``int8_dynamic+emb_int8`` (and the other ``<int8 MLP>+emb_int<bits>`` precisions): the MLPs are quantized first
by :mod:`.quantize` with the tables left in float, then the tables are quantized here.

Ids: an id past a table makes onnxruntime's ``Gather`` fail the request (``INVALID_ARGUMENT``, no read out of
bounds) in the fp32 graph and here alike (the codes, scales and biases have the same rows; the first Gather fails
the same way). :func:`check_table_rows` refuses, when a graph is loaded, a quantized graph whose codes, scales and
biases disagree in rows, or whose tables have fewer rows than the feature spec's vocabularies declare.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.core.errors import ConfigError
from recforge.models.embedding_bags import (
    TableQuantization,
    check_declared_rows,
    pack_table,
    packed_row_bytes,
    table_quantization,
)
from recforge.pipeline.compression import quantize
from recforge.pipeline.compression.config import TABLE_PRECISIONS, CompressConfig, CompressionError
from recforge.pipeline.compression.onnx_graph import load_onnx, set_nodes

if TYPE_CHECKING:
    from recforge.contracts.features import FeatureSpec
    from recforge.pipeline.data.features import Split

log = logging.getLogger(__name__)

METADATA_KEY = "quantized_embedding_tables"  # model metadata: {table: {"precision", "rows", "dim", ...}}
INT4_LAYOUT = "split halves: byte j = code j | code (j + D/2) << 4"


def split_precision(precision: str) -> tuple[str | None, str | None]:
    """(MLP precision or None, table precision "int8"/"int4" or None): "int8_static+emb_int4" -> ("int8_static",
    "int4"), "emb_int8" -> (None, "int8"), "fp16" -> ("fp16", None)."""
    mlp, _, tables = precision.rpartition("+")
    if tables in TABLE_PRECISIONS:
        return mlp or None, TABLE_PRECISIONS[tables]
    return precision, None


def convert(precision: str, src: str | Path, dst: str | Path, train: Split, cfg: CompressConfig,
            spec: FeatureSpec | None = None) -> dict[str, Any]:
    """Convert the fp32 ONNX file ``src`` to ``precision`` at ``dst`` (:func:`quantize.quantize` for the MLP
    precisions, then the tables here); returns the conversion's details. With ``spec``, the written graph's tables
    are checked against the spec's vocabularies (:func:`check_table_rows`)."""
    mlp, tables = split_precision(precision)
    if tables is None:
        return quantize.quantize(precision, src, dst, train, cfg)
    details: dict[str, Any] = {}
    source = Path(src)
    if mlp is not None:
        source = Path(dst).with_name(Path(dst).stem + ".mlp.onnx")
        details = quantize.quantize(mlp, src, source, train, cfg, tables=False)
    try:
        details = {**details, **quantize_tables(source, dst, tables)}
    finally:
        if source != Path(src):
            source.unlink(missing_ok=True)
    details["tables"] = [r.to_dict() for r in table_reports(src, dst)]
    if spec is not None:
        check_table_rows(dst, spec)
    return details


def quantizable_tables(graph: Any) -> dict[str, list[Any]]:
    """{float32 rank-2 initializer: the Gather nodes reading it} for every initializer read only by Gathers
    (axis 0, as their data input): the embedding tables a graph edit can replace."""
    from onnx import TensorProto, helper

    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in initializers:
                readers.setdefault(name, []).append((node, position))
    tables = {}
    for name, uses in readers.items():
        tensor = initializers[name]
        if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        axes = [next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0) for n, _ in uses]
        if all(n.op_type == "Gather" and position == 0 and axis == 0
               for (n, position), axis in zip(uses, axes, strict=True)):
            tables[name] = [n for n, _ in uses]
    return tables


def kept_reason(precision: str, dim: int) -> str:
    """Why a table of ``dim`` values a row stays float32 at ``precision`` ("" when it is quantized)."""
    if precision == "int4" and dim % 2:
        return f"odd embedding dim {dim}: 4-bit rows hold two codes a byte"
    if packed_row_bytes(precision, dim) >= 4 * dim:
        return (f"a {precision} row of {dim} value(s) takes {packed_row_bytes(precision, dim)} bytes with its scale "
                f"and bias, the float32 row {4 * dim}")
    return ""


def quantize_tables(src: str | Path, dst: str | Path, precision: str) -> dict[str, Any]:
    """Store every quantizable embedding table of ``src`` rowwise in ``precision`` ("int8"/"int4") and write the
    graph to ``dst``; returns {"table_precision", "quantized_tables", "kept_fp32", "table_bytes_before",
    "table_bytes_after", "int4_layout"}. CompressionError when the graph has no table to quantize."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = load_onnx(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    candidates = quantizable_tables(graph)
    kept: dict[str, str] = {}
    replaced: dict[str, list[Any]] = {}
    metadata: dict[str, dict[str, Any]] = {}
    new_initializers: list[Any] = []
    before = after = 0
    for name, gathers in candidates.items():
        weight = numpy_helper.to_array(initializers[name])
        rows, dim = weight.shape
        before += weight.nbytes
        reason = kept_reason(precision, dim)
        if reason:
            kept[name] = reason
            after += weight.nbytes
            continue
        codes, scale, bias = graph_parts(pack_table(torch.from_numpy(weight.copy()), precision).numpy(), precision, dim)
        names = {part: f"{name}.{part}" for part in ("codes", "scale", "bias")}
        for part, array in zip(("codes", "scale", "bias"), (codes, scale, bias), strict=True):
            new_initializers.append(numpy_helper.from_array(array, names[part]))
            after += array.nbytes
        metadata[name] = {"precision": precision, "rows": int(rows), "dim": int(dim), **names}
        replaced[name] = gathers
    if not replaced:
        raise CompressionError(f"no embedding table of {Path(dst).name} can be stored in {precision} rows: "
                               + ("; ".join(f"{k}: {v}" for k, v in kept.items()) or "no Gather reads a float table"))
    nodes = []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else ""
        nodes += dequantizing_nodes(node, metadata[table]) if table in replaced else [node]
    graph.initializer.extend(new_initializers)
    set_nodes(graph, nodes)  # drops the float tables no node reads any more
    if precision == "int4" and not any(o.domain in ("", "ai.onnx") and o.version >= 18 for o in model.opset_import):
        raise CompressionError(f"{Path(src).name}: 4-bit tables need opset >= 18 (BitwiseAnd); re-export it")
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    log.info("%s: %d tables in %s rows, %d kept in float32: %d -> %d table bytes", Path(dst).name, len(replaced),
             precision, len(kept), before, after)
    return {"table_precision": precision, "quantized_tables": sorted(replaced), "kept_fp32": kept,
            "table_bytes_before": before, "table_bytes_after": after,
            **({"int4_layout": INT4_LAYOUT} if precision == "int4" else {})}


def graph_parts(stored: np.ndarray, precision: str, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale [R], bias [R]) of FBGEMM's packed rows as the graph stores them (module docstring)."""
    if precision == "int8":
        scale_bias = np.ascontiguousarray(stored[:, dim:dim + 8]).view(np.float32)
        return np.ascontiguousarray(stored[:, :dim]), scale_bias[:, 0].copy(), scale_bias[:, 1].copy()
    half = dim // 2
    packed = stored[:, :half]
    codes = np.empty((stored.shape[0], dim), np.uint8)
    codes[:, 0::2], codes[:, 1::2] = packed & 15, packed >> 4  # FBGEMM: code 2j low nibble, 2j + 1 high
    scale_bias = np.ascontiguousarray(stored[:, half:half + 4]).view(np.float16)
    split = (codes[:, :half] | (codes[:, half:] << 4)).astype(np.uint8)
    return split, scale_bias[:, 0].copy(), scale_bias[:, 1].copy()


def fbgemm_rows(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray, precision: str) -> np.ndarray:
    """The inverse of :func:`graph_parts`: FBGEMM's packed rows (what ``unpack_table`` reads) of a graph's parts."""
    if precision == "int8":
        scale_bias = np.stack([scale, bias], axis=1).astype(np.float32).view(np.uint8)
        return np.concatenate([codes, scale_bias], axis=1)
    half = codes.shape[1]
    values = np.concatenate([codes & 15, codes >> 4], axis=1)
    packed = (values[:, 0::2] | (values[:, 1::2] << 4)).astype(np.uint8)
    scale_bias = np.stack([scale, bias], axis=1).astype(np.float16).view(np.uint8)
    return np.concatenate([packed[:, :half], scale_bias], axis=1)


def dequantizing_nodes(gather: Any, table: Mapping[str, Any]) -> list[Any]:
    """The nodes that replace ``Gather(table, ids) -> out``: gather the codes, scale and bias rows, unpack 4-bit
    codes, ``out = codes · scale + bias`` in float32 (the same output name)."""
    from onnx import TensorProto, helper

    ids, out = gather.input[1], gather.output[0]
    prefix = f"{gather.name or out}.dequantize"

    def name(part: str) -> str:
        return f"{prefix}.{part}"

    nodes = [helper.make_node("Gather", [table["codes"], ids], [name("codes")], name=name("gather_codes")),
             helper.make_node("Constant", [], [name("last_axis")], name=name("last_axis_const"),
                              value=helper.make_tensor("axes", TensorProto.INT64, [1], [-1])),
             helper.make_node("Unsqueeze", [ids, name("last_axis")], [name("row_ids")], name=name("unsqueeze_ids"))]
    codes = name("codes")
    if table["precision"] == "int4":
        nodes += [helper.make_node("Constant", [], [name("four")], name=name("four_const"),
                                   value=helper.make_tensor("four", TensorProto.UINT8, [], [4])),
                  helper.make_node("Constant", [], [name("low_mask")], name=name("low_mask_const"),
                                   value=helper.make_tensor("low_mask", TensorProto.UINT8, [], [15])),
                  helper.make_node("BitwiseAnd", [codes, name("low_mask")], [name("low")], name=name("low_nibble")),
                  helper.make_node("BitShift", [codes, name("four")], [name("high")], name=name("high_nibble"),
                                   direction="RIGHT"),
                  helper.make_node("Concat", [name("low"), name("high")], [name("unpacked")], name=name("unpack"),
                                   axis=-1)]
        codes = name("unpacked")
    nodes.append(helper.make_node("Cast", [codes], [name("codes_float")], name=name("cast_codes"),
                                  to=TensorProto.FLOAT))
    for part in ("scale", "bias"):
        gathered = name(f"{part}_stored")
        nodes.append(helper.make_node("Gather", [table[part], name("row_ids")], [gathered],
                                      name=name(f"gather_{part}")))
        if table["precision"] == "int4":  # float16 scale and bias
            nodes.append(helper.make_node("Cast", [gathered], [name(part)], name=name(f"cast_{part}"),
                                          to=TensorProto.FLOAT))
    float_part = {part: name(part) if table["precision"] == "int4" else name(f"{part}_stored")
                  for part in ("scale", "bias")}
    nodes += [helper.make_node("Mul", [name("codes_float"), float_part["scale"]], [name("scaled")], name=name("mul")),
              helper.make_node("Add", [name("scaled"), float_part["bias"]], [out], name=name("add"))]
    return nodes


def quantized_tables(onnx_path: str | Path) -> dict[str, dict[str, Any]]:
    """{table: {"precision", "rows", "dim", "codes", "scale", "bias"}} of a graph written by :func:`quantize_tables`
    ({} for any other graph)."""
    props = {p.key: p.value for p in load_onnx(onnx_path).metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def table_reports(fp32_onnx: str | Path, quantized_onnx: str | Path) -> list[TableQuantization]:
    """Per quantized table of ``quantized_onnx``, its values as the graph stores them against the float32 table of
    the same name in ``fp32_onnx`` (``table_quantization``: errors, their ratio to the rowwise bound, bytes)."""
    import torch
    from onnx import numpy_helper

    reference = {t.name: t for t in load_onnx(fp32_onnx).graph.initializer}
    stored = {t.name: t for t in load_onnx(quantized_onnx).graph.initializer}
    reports = []
    for name, table in quantized_tables(quantized_onnx).items():
        if name not in reference:
            raise CompressionError(f"table {name!r} of {Path(quantized_onnx).name} is not in {Path(fp32_onnx).name}")
        parts = [numpy_helper.to_array(stored[table[p]]) for p in ("codes", "scale", "bias")]
        rows = fbgemm_rows(*parts, table["precision"])
        report = table_quantization(name, torch.from_numpy(numpy_helper.to_array(reference[name]).copy()),
                                    torch.from_numpy(rows), table["precision"])
        # the bytes the graph stores (FBGEMM's rows would be the same, but say what is measured)
        reports.append(dataclasses.replace(report, stored_bytes=int(sum(p.nbytes for p in parts))))
    return reports


def declared_table_rows(graph: Any, spec: FeatureSpec) -> dict[str, int]:
    """{table: the rows its ids may address per ``spec``} for the tables whose Gather ids trace back to a column of
    the ``sparse`` input (through Gathers on axis 1 with constant indices) or to ``genres`` / ``history``."""
    from onnx import helper, numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants = {n.output[0]: numpy_helper.to_array(helper.get_attribute_value(n.attribute[0]))
                 for n in graph.node if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    producers = {out: node for node in graph.node for out in node.output}
    vocabulary = {"genres": spec.num_genres, "history": spec.num_items}

    def rows_of(ids: str) -> int | None:
        columns = None  # the sparse columns ids selects, composed through nested Gathers
        for _ in range(8):
            if ids in vocabulary and columns is None:
                return vocabulary[ids]
            if ids == "sparse" and columns is not None and columns.size == 1:
                return spec.sparse_cardinalities[int(columns.reshape(-1)[0])]
            node = producers.get(ids)
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0) if node else 0
            if node is None or node.op_type != "Gather" or axis != 1:
                return None
            index = initializers.get(node.input[1], constants.get(node.input[1]))
            if index is None:
                return None
            columns = np.asarray(index) if columns is None else np.asarray(index).reshape(-1)[columns]
            ids = node.input[0]
        return None

    declared: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in initializers:
            rows = rows_of(node.input[1])
            if rows is not None:
                declared[node.input[0]] = max(rows, declared.get(node.input[0], 0))
    return declared


def check_table_rows(onnx_path: str | Path, spec: FeatureSpec | None = None) -> None:
    """Refuse (ConfigError naming the table) a quantized graph whose codes, scales and biases differ in rows, or,
    with ``spec``, whose tables have fewer rows than the ids the spec's vocabularies allow: checked at load, so
    such a model is never served."""
    model = load_onnx(onnx_path)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    tables = quantized_tables(onnx_path)
    for name, table in tables.items():
        rows = {part: shapes.get(table[part], [0])[0] for part in ("codes", "scale", "bias")}
        if len(set(rows.values())) != 1 or rows["codes"] != table["rows"]:
            raise ConfigError(f"embedding table {name!r} of {Path(onnx_path).name}: codes, scale and bias have "
                              f"{rows} rows, the table {table['rows']}; re-quantize the model")
    if spec is None:
        return
    declared = declared_table_rows(model.graph, spec)
    # a Gather of a quantized table reads its codes: map those back to the table's name
    by_codes = {t["codes"]: name for name, t in tables.items()}
    names = [by_codes.get(k, k) for k in declared]
    have = [shapes[k][0] for k in declared]
    check_declared_rows(names, have, list(declared.values()), where=Path(onnx_path).name)
