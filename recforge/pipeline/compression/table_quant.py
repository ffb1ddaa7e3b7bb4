"""Quantized embedding tables inside an ONNX graph: the ``emb_int8`` / ``emb_int4`` precisions.

MovieLens models are served as ONNX (small tables, one id per feature), so the quantized tables go into the graph
itself. Each float32 table ``T`` [R, D] whose every reader is a ``Gather`` (axis 0) is stored as

* ``emb_int8``: ``T.codes`` uint8 [R, D] plus float32 ``T.scale`` and ``T.bias`` [R/G] (D + 8/G bytes a row);
* ``emb_int4``: ``T.codes`` uint8 [R, D/2], two 4-bit codes a byte, plus float16 ``T.scale`` and ``T.bias`` [R/G]
  (D/2 + 4/G bytes a row). Byte j holds code j in its low nibble and code j + D/2 in its high nibble, so the
  graph unpacks a gathered row with ``BitwiseAnd`` / ``BitShift`` and one ``Concat`` (no reshape to the ids' rank).

and each ``Gather(T, ids)`` becomes ``Add(Mul(Cast(Gather(T.codes, ids)), Gather(T.scale, Unsqueeze(ids))),
Gather(T.bias, Unsqueeze(ids)))`` with the same output name (``Div(Unsqueeze(ids), G)`` for the scale and bias
when G > 1). The codes, scales and biases are FBGEMM's (:func:`recforge.models.embedding_bags.pack_table`: code
q = round((x - min) / scale), x ≈ scale·q + bias, scale and bias float32 for 8 bits and float16 for 4 bits), so
the error bound is :func:`~recforge.models.embedding_bags.row_error_bound`: the tables read back from the written
graph are measured against the fp32 ones (:func:`table_reports`), and the parity gate rejects a variant whose
table exceeds its bound, naming the table.

**Row groups** (G = ``CompressConfig.table_row_group_int8`` / ``_int4``, by default 128 and 8; 1 is rowwise, as
FBGEMM): G consecutive rows share one scale and bias, as if they were one row of G·D values (FBGEMM quantizes the
table viewed as [R/G, G·D]; the last group is padded with copies of the last row, which leaves its range as it
is). At MovieLens' D = 16 the per-row scale and bias are what holds rowwise tables at 2.7x / 5.3x smaller; with
the default groups they are 3.98x / 7.5x smaller. The price is precision: a group's range is the widest of its
rows', so its bound (``row_error_bound`` of the group, which each of its rows is measured against) is wider than
each row's own; the parity gate's AUC rules judge what that costs.

A table is left in float32 when quantizing it saves nothing (a row of D values costs more than 4·D bytes stored:
rowwise, D < 3 for 8 bits); a table of odd D cannot be 4-bit rows (two codes a byte), and an ``emb_int4`` variant
stores it in 8-bit row groups instead (``int8_fallback``; wide_deep's and logreg's D = 1 "wide" weights).

``int8_dynamic+emb_int8`` (and the other ``<int8 MLP>+emb_int<bits>`` precisions): the MLPs are quantized first
by :mod:`.quantize` with the tables left in float, then the tables are quantized here.

Ids: an id past a table makes onnxruntime's ``Gather`` fail the request (``INVALID_ARGUMENT``, no read out of
bounds) in the fp32 graph and here alike (the codes have the table's R rows, so their Gather fails the same way;
the scale and bias Gathers read group ``id // G``, in range for every id the codes accept).
:func:`check_table_rows` refuses, when a graph is loaded, a quantized graph whose codes, scales and biases
disagree in rows (R, and R/G rounded up), or whose tables have fewer rows than the feature spec's vocabularies declare.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.core.errors import ConfigError
from recforge.models.embedding_bags import (
    ROW_SCALE_BIAS_BYTES,
    TableQuantization,
    check_declared_rows,
    pack_table,
    packed_row_bytes,
    row_error_bound,
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
        details = {**details, **quantize_tables(source, dst, tables, group=row_group(cfg, tables),
                                                int8_fallback_group=cfg.table_row_group_int8)}
    finally:
        if source != Path(src):
            source.unlink(missing_ok=True)
    details["tables"] = [r.to_dict() for r in table_reports(src, dst)]
    if spec is not None:
        check_table_rows(dst, spec)
    return details


def row_group(cfg: CompressConfig, precision: str) -> int:
    """The rows that share a scale and bias at table ``precision`` ("int8"/"int4") under ``cfg``."""
    return cfg.table_row_group_int8 if precision == "int8" else cfg.table_row_group_int4


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


def stored_row_bytes(precision: str, dim: int, group: int = 1) -> float:
    """Bytes a row of ``dim`` values takes in ``precision`` with its share of its group's scale and bias."""
    metadata = ROW_SCALE_BIAS_BYTES[precision]
    return packed_row_bytes(precision, dim) - metadata + metadata / group


def kept_reason(precision: str, dim: int, group: int = 1) -> str:
    """Why a table of ``dim`` values a row stays float32 at ``precision`` ("" when it is quantized)."""
    if precision == "int4" and dim % 2:
        return f"odd embedding dim {dim}: 4-bit rows hold two codes a byte"
    if stored_row_bytes(precision, dim, group) >= 4 * dim:
        return (f"a {precision} row of {dim} value(s) takes {stored_row_bytes(precision, dim, group):g} bytes with "
                f"its scale and bias, the float32 row {4 * dim}")
    return ""


def group_rows(weight: np.ndarray, group: int) -> np.ndarray:
    """[R, D] -> [ceil(R/G), G·D]: G consecutive rows as one, the last group padded with copies of the last row."""
    rows, dim = weight.shape
    pad = -rows % group
    if pad:
        weight = np.concatenate([weight, np.repeat(weight[-1:], pad, axis=0)])
    return np.ascontiguousarray(weight.reshape(-1, group * dim))


def quantize_tables(src: str | Path, dst: str | Path, precision: str, *, group: int = 1,
                    int8_fallback_group: int | None = None) -> dict[str, Any]:
    """Store every quantizable embedding table of ``src`` in ``precision`` ("int8"/"int4"), rowwise or in row
    groups of ``group`` rows, and write the graph to ``dst``; returns {"table_precision", "table_row_group",
    "quantized_tables", "int8_fallback", "kept_fp32", "table_bytes_before", "table_bytes_after", "int4_layout"}.
    With ``int8_fallback_group``, a table 4-bit rows cannot hold (an odd D: wide_deep's D = 1 weights) is stored in
    8 bits in row groups of that many rows where that saves bytes, instead of staying float32. CompressionError
    when the graph has no table to quantize."""
    for value in (group, int8_fallback_group if int8_fallback_group is not None else 1):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"table row group must be an integer >= 1, got {value!r}")
    import onnx
    import torch
    from onnx import numpy_helper

    model = load_onnx(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    candidates = quantizable_tables(graph)
    kept: dict[str, str] = {}
    fallback: list[str] = []
    replaced: dict[str, list[Any]] = {}
    metadata: dict[str, dict[str, Any]] = {}
    new_initializers: list[Any] = []
    before = after = 0
    for name, gathers in candidates.items():
        weight = numpy_helper.to_array(initializers[name])
        rows, dim = weight.shape
        before += weight.nbytes
        table_precision, table_group = precision, group
        reason = kept_reason(precision, dim, group)
        if reason and precision == "int4" and int8_fallback_group and not kept_reason("int8", dim, int8_fallback_group):
            table_precision, table_group, reason = "int8", int8_fallback_group, ""
            fallback.append(name)
        if reason:
            kept[name] = reason
            after += weight.nbytes
            continue
        packed = pack_table(torch.from_numpy(np.array(group_rows(weight, table_group))), table_precision).numpy()
        codes, scale, bias = graph_parts(packed, table_precision, dim, rows=rows, group=table_group)
        names = {part: f"{name}.{part}" for part in ("codes", "scale", "bias")}
        for part, array in zip(("codes", "scale", "bias"), (codes, scale, bias), strict=True):
            new_initializers.append(numpy_helper.from_array(array, names[part]))
            after += array.nbytes
        metadata[name] = {"precision": table_precision, "rows": int(rows), "dim": int(dim), "row_group": table_group,
                          **names}
        replaced[name] = gathers
    if not set(replaced) - set(fallback):  # nothing in the precision asked for
        raise CompressionError(f"no embedding table of {Path(dst).name} can be stored in {precision} rows: "
                               + ("; ".join(f"{k}: {v}" for k, v in kept.items()) or "no Gather reads a float table"))
    nodes = []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else ""
        nodes += dequantizing_nodes(node, metadata[table]) if table in replaced else [node]
    graph.initializer.extend(new_initializers)
    set_nodes(graph, nodes)  # drops the float tables no node reads any more
    if any(t["precision"] == "int4" for t in metadata.values()) and \
            not any(o.domain in ("", "ai.onnx") and o.version >= 18 for o in model.opset_import):
        raise CompressionError(f"{Path(src).name}: 4-bit tables need opset >= 18 (BitwiseAnd); re-export it")
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    log.info("%s: %d tables in %s rows (groups of %d), %d kept in float32: %d -> %d table bytes", Path(dst).name,
             len(replaced), precision, group, len(kept), before, after)
    return {"table_precision": precision, "table_row_group": group, "quantized_tables": sorted(replaced),
            "int8_fallback": sorted(fallback), "kept_fp32": kept,
            "table_bytes_before": before, "table_bytes_after": after,
            **({"int4_layout": INT4_LAYOUT} if precision == "int4" else {})}


def graph_parts(stored: np.ndarray, precision: str, dim: int, *, rows: int | None = None,
                group: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes [R, ...], scale [R/G], bias [R/G]) as the graph stores them (module docstring), of FBGEMM's packed
    rows of the table viewed as [R/G, G·D] (:func:`group_rows`); ``rows``: the table's R (the padding dropped)."""
    width = group * dim
    rows = stored.shape[0] * group if rows is None else rows
    if precision == "int8":
        codes = stored[:, :width].reshape(-1, dim)[:rows]
        scale_bias = np.ascontiguousarray(stored[:, width:width + 8]).view(np.float32)
        return np.ascontiguousarray(codes), scale_bias[:, 0].copy(), scale_bias[:, 1].copy()
    packed = stored[:, :width // 2]
    values = np.empty((stored.shape[0], width), np.uint8)
    values[:, 0::2], values[:, 1::2] = packed & 15, packed >> 4  # FBGEMM: code 2j low nibble, 2j + 1 high
    codes = values.reshape(-1, dim)[:rows]
    half = dim // 2
    scale_bias = np.ascontiguousarray(stored[:, width // 2:width // 2 + 4]).view(np.float16)
    split = (codes[:, :half] | (codes[:, half:] << 4)).astype(np.uint8)
    return split, scale_bias[:, 0].copy(), scale_bias[:, 1].copy()


def code_values(codes: np.ndarray, precision: str) -> np.ndarray:
    """[R, D] uint8 code values of the graph's codes (int4: the split halves unpacked)."""
    return codes if precision == "int8" else np.concatenate([codes & 15, codes >> 4], axis=1)


def dequantize(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray, precision: str,
               group: int = 1) -> np.ndarray:
    """[R, D] float32: what the graph's lookups return for every row (code · scale + bias in float32)."""
    values = code_values(codes, precision).astype(np.float32)
    owner = np.arange(values.shape[0]) // group
    return values * scale.astype(np.float32)[owner, None] + bias.astype(np.float32)[owner, None]


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
    group_ids = name("row_ids")
    if table.get("row_group", 1) > 1:  # the scale and bias of a row's group
        group_ids = name("group_ids")
        nodes += [helper.make_node("Constant", [], [name("group")], name=name("group_const"),
                                   value=helper.make_tensor("group", TensorProto.INT64, [], [table["row_group"]])),
                  helper.make_node("Div", [name("row_ids"), name("group")], [group_ids], name=name("group_of_row"))]
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
        nodes.append(helper.make_node("Gather", [table[part], group_ids], [gathered],
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
    """Per quantized table of ``quantized_onnx``, the values its lookups return (:func:`dequantize`) against the
    float32 table of the same name in ``fp32_onnx``: errors, their ratio to the bound of each row's group
    (:func:`row_error_bound` of :func:`group_rows`; rowwise: the row's own), bytes stored."""
    from onnx import numpy_helper

    reference = {t.name: t for t in load_onnx(fp32_onnx).graph.initializer}
    stored = {t.name: t for t in load_onnx(quantized_onnx).graph.initializer}
    reports = []
    for name, table in quantized_tables(quantized_onnx).items():
        if name not in reference:
            raise CompressionError(f"table {name!r} of {Path(quantized_onnx).name} is not in {Path(fp32_onnx).name}")
        group = int(table.get("row_group", 1))
        parts = [numpy_helper.to_array(stored[table[p]]) for p in ("codes", "scale", "bias")]
        fp32 = numpy_helper.to_array(reference[name]).astype(np.float32)
        reports.append(group_quantization(name, fp32, dequantize(*parts, table["precision"], group),
                                          table["precision"], group, int(sum(p.nbytes for p in parts))))
    return reports


def group_quantization(name: str, reference: np.ndarray, values: np.ndarray, precision: str, group: int,
                       stored_bytes: int) -> TableQuantization:
    """The TableQuantization of a table whose rows read back as ``values`` against its float32 ``reference``."""
    import torch

    rows, dim = reference.shape
    if values.shape != reference.shape:
        raise CompressionError(f"table {name!r}: the graph's rows read back as {values.shape}, the float32 table is "
                               f"{reference.shape}")
    errors = np.abs(values - reference)
    errors[np.isnan(errors)] = np.inf  # NaN is over any bound
    bound = row_error_bound(torch.from_numpy(group_rows(reference, group)), precision).numpy()
    bound = np.repeat(bound, group)[:rows]
    row_max = errors.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(row_max == 0, 0.0, row_max / np.maximum(bound, np.finfo(np.float32).tiny))
    ratio = np.nan_to_num(ratio, nan=np.inf)
    worst = int(np.argmax(ratio))
    return TableQuantization(table=name, precision=precision, rows=rows, max_abs_error=float(row_max.max()),
                             mean_abs_error=float(errors.mean()), worst_row=worst, error_to_bound=float(ratio[worst]),
                             fp32_bytes=4 * rows * dim, stored_bytes=stored_bytes)


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
        groups = -(-int(table["rows"]) // int(table.get("row_group", 1)))
        if rows != {"codes": table["rows"], "scale": groups, "bias": groups}:
            raise ConfigError(f"embedding table {name!r} of {Path(onnx_path).name}: codes, scale and bias have "
                              f"{rows} rows, the table {table['rows']} in {groups} row group(s); re-quantize the "
                              "model")
    if spec is None:
        return
    declared = declared_table_rows(model.graph, spec)
    # a Gather of a quantized table reads its codes: map those back to the table's name
    by_codes = {t["codes"]: name for name, t in tables.items()}
    names = [by_codes.get(k, k) for k in declared]
    have = [shapes[k][0] for k in declared]
    check_declared_rows(names, have, list(declared.values()), where=Path(onnx_path).name)
