"""Rowwise int8/int4 embedding tables in the ONNX graph (recforge.pipeline.compression.table_quant): the edited
graph's lookups within the quantization bound of fp32 for a tiny model of each family, the bytes, the gate's
rejection of a table over its bound, and ids beyond a table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from recforge.core.errors import ConfigError
from recforge.inference.onnx import numpy_inputs, onnx_predict
from recforge.models import build_model
from recforge.models.embedding_bags import row_error_bound
from recforge.models.export import example_inputs, export_onnx
from recforge.models.families import FAMILIES
from recforge.pipeline.compression.config import CompressConfig, CompressionError
from recforge.pipeline.compression.onnx_graph import weight_dtypes
from recforge.pipeline.compression.table_quant import (
    check_table_rows,
    group_rows,
    quantize_tables,
    quantized_tables,
    split_precision,
    table_reports,
)
from recforge.pipeline.compression.variants import build_base_variants
from recforge.pipeline.data.features import load_split
from recforge.pipeline.parity.gate import validate_variant
from tests.pipeline.compression.compression_testutil import FAST, tiny_spec

DEEP_FAMILIES = [name for name, family in FAMILIES.items() if not family.baseline]
PRECISIONS = ("int8", "int4")


def export_tiny(family: str, folder: Path, **hyperparams) -> Path:
    torch.manual_seed(0)
    model = build_model(family, tiny_spec(), **hyperparams).eval()
    return export_onnx(model, tiny_spec(), folder / f"{family}.onnx")


def run_with_lookups(path: Path, lookups: list[str], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of ``path`` plus the named intermediate tensors (the embedding lookups) as extra graph outputs."""
    model = onnx.load(str(path))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in lookups)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    return {family: export_tiny(family, folder) for family in DEEP_FAMILIES}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("family", DEEP_FAMILIES)
def test_lookups_of_the_edited_graph_are_within_the_rowwise_bound_of_fp32(family, precision, exported, tmp_path):
    src, dst = exported[family], tmp_path / f"{family}.{precision}.onnx"
    details = quantize_tables(src, dst, precision)
    assert details["quantized_tables"] and not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                                                   and t.name in details["quantized_tables"]
                                                   for t in onnx.load(str(dst)).graph.initializer)
    reports = table_reports(src, dst)
    assert sorted(r.table for r in reports) == details["quantized_tables"]
    assert all(r.within_bound and r.max_abs_error > 0 for r in reports)
    # every replaced Gather keeps its output name: compare those lookups, row by row, with the fp32 graph's
    graph = onnx.load(str(src)).graph
    lookups = [n.output[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in details["quantized_tables"]]
    inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in example_inputs(tiny_spec(), 64, seed=5).items()}
    fp32, quantized = run_with_lookups(src, lookups, inputs), run_with_lookups(dst, lookups, inputs)
    for name in lookups:
        rows = fp32[name].reshape(-1, fp32[name].shape[-1])
        bound = row_error_bound(torch.from_numpy(rows), precision).numpy()[:, None]
        error = np.abs(quantized[name].reshape(rows.shape) - rows)
        assert np.all(error <= bound + 1e-6 * np.abs(rows)), name  # + the graph's float32 multiply-add
    probabilities = quantized["probability"]
    assert np.all(np.isfinite(probabilities)) and np.abs(probabilities - fp32["probability"]).max() < 0.05


def test_table_bytes_shrink_by_the_rowwise_formula(tmp_path):
    """D + 8 bytes a row for int8 (float32 scale and bias), D/2 + 4 for int4 (float16): at D = 64, 256 -> 72
    (3.6x) and 36 (7.1x); D = 1 tables (wide weights) would grow and stay float32."""
    src = export_tiny("dlrm", tmp_path, embedding_dim=64, bottom_mlp=[32, 64], top_mlp=[32, 1])
    rows = sum(t.dims[0] for t in onnx.load(str(src)).graph.initializer if len(t.dims) == 2 and t.dims[1] == 64)
    for precision, row_bytes, reduction in (("int8", 72, 3.5), ("int4", 36, 7.0)):
        details = quantize_tables(src, tmp_path / f"{precision}.onnx", precision)
        assert details["table_bytes_before"] == 256 * rows and details["table_bytes_after"] == row_bytes * rows
        assert details["table_bytes_before"] / details["table_bytes_after"] > reduction
        assert sum(r.stored_bytes for r in table_reports(src, tmp_path / f"{precision}.onnx")) == row_bytes * rows
    wide = export_tiny("wide_deep", tmp_path)
    details = quantize_tables(wide, tmp_path / "wide.onnx", "int8")
    assert details["kept_fp32"] and all("value(s)" in reason for reason in details["kept_fp32"].values())
    with pytest.raises(CompressionError, match="no embedding table .* can be stored in int4"):
        quantize_tables(export_tiny("logreg", tmp_path), tmp_path / "logreg.onnx", "int4")


def test_precision_names():
    assert split_precision("emb_int8") == (None, "int8")
    assert split_precision("int8_static+emb_int4") == ("int8_static", "int4")
    assert split_precision("fp16") == ("fp16", None)


def test_variants_alone_and_with_int8_mlps_are_built_and_registered(fp32_variants, dlrm_dir, features, tmp_path):
    fp32 = fp32_variants["fp32"]  # the default precisions: the table variants alone
    combined = CompressConfig.from_dict({**FAST, "precisions": ["int8_dynamic+emb_int4", "int8_static+emb_int8"]})
    variants = {**fp32_variants, **{v.name: v for v in build_base_variants("fp32", dlrm_dir, features, tmp_path,
                                                                          combined)}}
    for name in ("fp32+emb_int8", "fp32+emb_int4", "fp32+int8_dynamic+emb_int4", "fp32+int8_static+emb_int8"):
        variant = variants[name]
        assert variant.error is None, (name, variant.error)
        assert variant.params["tables"] and all(t["within_bound"] for t in variant.params["tables"])
        dtypes = weight_dtypes(variant.onnx_path)
        assert dtypes["embedding"] == {"uint8": 8}
        assert set(dtypes["matmul"]) == ({"int8"} if "int8_" in name else {"float32"})
        assert variant.size_bytes < fp32.size_bytes
    assert fp32_variants["fp32+emb_int4"].params["table_bytes_after"] < \
        fp32_variants["fp32+emb_int8"].params["table_bytes_after"]


def test_the_gate_rejects_a_table_over_its_bound_naming_it(fp32_variants, features, tmp_path):
    fp32, variant = fp32_variants["fp32"], fp32_variants["fp32+emb_int8"]
    table = "sparse_arch.embeddings.item_id.weight"
    model = onnx.load(variant.onnx_path)
    scale = next(t for t in model.graph.initializer if t.name == f"{table}.scale")
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 1.5, scale.name))  # a broken table
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    reports = table_reports(fp32.onnx_path, broken)
    assert [r.table for r in reports if not r.within_bound] == [table]
    test = load_split(features, "test")
    reference = onnx_predict(fp32.onnx_path, test)
    verdict = validate_variant("fp32+emb_int8", onnx_predict(broken, test), reference, test,
                               gx_root=tmp_path / "gx", tables=[r.to_dict() for r in reports])
    assert not verdict.passed and f"embedding table '{table}' (int8)" in verdict.reasons[0]
    good = validate_variant("fp32+emb_int8", onnx_predict(variant.onnx_path, test), reference, test,
                            gx_root=tmp_path / "gx", tables=variant.params["tables"])
    assert not any("embedding table" in reason for reason in good.reasons)


def test_ids_beyond_a_table_fail_the_request_as_in_fp32_and_short_tables_are_refused_at_load(exported, tmp_path):
    src, dst = exported["dlrm"], tmp_path / "dlrm.int4.onnx"
    quantize_tables(src, dst, "int4")
    check_table_rows(dst, tiny_spec())
    inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in example_inputs(tiny_spec(), 4, seed=1).items()}
    inputs["sparse"][2, 1] = tiny_spec().sparse_cardinalities[1]  # one past the item table
    for path in (src, dst):  # onnxruntime refuses the request; no read outside the table
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match="out of data bounds"):
            session.run(None, inputs)
    wider = dataclasses.replace(tiny_spec(), sparse_cardinalities=(30, 80, 5, 4, 3, 4))
    with pytest.raises(ConfigError, match="embedding table 'sparse_arch.embeddings.item_id.weight' .* 50 rows"):
        check_table_rows(dst, wider)
    model = onnx.load(str(dst))
    bias = next(t for t in model.graph.initializer if t.name == "sparse_arch.embeddings.user_id.weight.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias)[:-1], bias.name))
    onnx.save(model, str(tmp_path / "short.onnx"))
    assert "sparse_arch.embeddings.user_id.weight" in quantized_tables(tmp_path / "short.onnx")
    with pytest.raises(ConfigError, match="embedding table 'sparse_arch.embeddings.user_id.weight'"):
        check_table_rows(tmp_path / "short.onnx")


def test_parity_inputs_are_the_served_inputs(fp32_variants, features):
    """The emb variants read the same four inputs as fp32 (the serving contract does not change)."""
    test = load_split(features, "test")
    names = {i.name for i in onnx.load(fp32_variants["fp32+emb_int4"].onnx_path).graph.input}
    assert names == set(numpy_inputs(test))


def one_table_graph(path: Path, table: np.ndarray) -> Path:
    """A graph that is one embedding lookup: ids [N] int64 -> Gather(table, ids) [N, D]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")], "one_table",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, table.shape[1]])],
        [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize("precision", PRECISIONS)
def test_row_groups_share_a_scale_and_bias_and_lookups_stay_within_the_group_bound(precision, tmp_path):
    """Groups of 8 rows (the last one short: 43 rows): every row the graph returns is within its group's bound of
    fp32, wider than the rowwise bound of some rows; the scale and bias are stored once per group, and the table's
    bytes are D (int8) or D/2 (int4) a row plus 8 or 4 per group."""
    rng = np.random.default_rng(0)
    rows, dim, group = 43, 16, 8
    table = (rng.standard_normal((rows, dim)) * rng.uniform(0.01, 1.0, (rows, 1))).astype(np.float32)
    src = one_table_graph(tmp_path / "table.onnx", table)
    dst = tmp_path / f"table.{precision}.g{group}.onnx"
    details = quantize_tables(src, dst, precision, group=group)
    groups = -(-rows // group)
    code_bytes = rows * (dim if precision == "int8" else dim // 2)
    assert details["table_row_group"] == group
    assert details["table_bytes_after"] == code_bytes + groups * {"int8": 8, "int4": 4}[precision]
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer}
    assert stored["table.scale"].shape == (groups,) and stored["table.bias"].shape == (groups,)
    check_table_rows(dst)
    out = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(
        None, {"ids": np.arange(rows, dtype=np.int64)})[0]
    by_group = row_error_bound(torch.from_numpy(group_rows(table, group)), precision).numpy()
    bound = np.repeat(by_group, group)[:rows, None]
    assert np.all(np.abs(out - table) <= bound + 1e-6 * np.abs(table))
    own = row_error_bound(torch.from_numpy(table), precision).numpy()
    assert np.any(np.abs(out - table).max(axis=1) > own)  # sharing a range costs precision: rowwise would not
    [report] = table_reports(src, dst)
    assert report.within_bound and report.rows == rows and report.stored_bytes == details["table_bytes_after"]
    stored["table.scale"] = stored["table.scale"] * 1.5  # a broken group: over its bound, named
    model = onnx.load(str(dst))
    scale = next(t for t in model.graph.initializer if t.name == "table.scale")
    scale.CopyFrom(numpy_helper.from_array(stored["table.scale"], "table.scale"))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    assert not table_reports(src, tmp_path / "broken.onnx")[0].within_bound
    bias = next(t for t in model.graph.initializer if t.name == "table.bias")
    bias.CopyFrom(numpy_helper.from_array(stored["table.bias"][:-1], "table.bias"))
    onnx.save(model, str(tmp_path / "short.onnx"))
    with pytest.raises(ConfigError, match=r"embedding table 'table' .* in 6 row group\(s\)"):
        check_table_rows(tmp_path / "short.onnx")


def test_row_groups_bring_movielens_rows_to_a_quarter_and_an_eighth(tmp_path):
    """At D = 16 rowwise metadata (8 or 4 bytes a row) holds the tables at 2.7x / 5.3x smaller; 32-row groups give
    16.25 and 8.125 bytes a row: 3.94x and 7.88x."""
    table = np.random.default_rng(1).standard_normal((320, 16)).astype(np.float32)
    src = one_table_graph(tmp_path / "t.onnx", table)
    ratios = {}
    for precision in PRECISIONS:
        for group in (1, 32):
            details = quantize_tables(src, tmp_path / f"{precision}.{group}.onnx", precision, group=group)
            ratios[precision, group] = details["table_bytes_before"] / details["table_bytes_after"]
    assert ratios["int8", 1] == pytest.approx(64 / 24) and ratios["int4", 1] == pytest.approx(64 / 12)
    assert ratios["int8", 32] == pytest.approx(64 / 16.25) and ratios["int4", 32] == pytest.approx(64 / 8.125)


def test_an_int4_variant_stores_odd_dim_tables_in_8_bit_row_groups(tmp_path):
    """wide_deep's D = 1 wide weights cannot be 4-bit rows: with the fallback they are 8-bit groups (1 + 8/G bytes a
    row, within their bound), not float32; logreg, whose only table is one of them, has no int4 variant."""
    wide = export_tiny("wide_deep", tmp_path)
    details = quantize_tables(wide, tmp_path / "wide.int4.onnx", "int4", group=8, int8_fallback_group=128)
    assert details["int8_fallback"] and not details["kept_fp32"]
    tables = quantized_tables(tmp_path / "wide.int4.onnx")
    assert {tables[name]["precision"] for name in details["int8_fallback"]} == {"int8"}
    assert {t["precision"] for name, t in tables.items() if name not in details["int8_fallback"]} == {"int4"}
    assert all(r.within_bound for r in table_reports(wide, tmp_path / "wide.int4.onnx"))
    without = quantize_tables(wide, tmp_path / "wide.int4.kept.onnx", "int4", group=8)
    assert without["kept_fp32"] and without["table_bytes_after"] > details["table_bytes_after"]
    with pytest.raises(CompressionError, match="no embedding table .* can be stored in int4"):
        quantize_tables(export_tiny("logreg", tmp_path), tmp_path / "logreg.onnx", "int4", int8_fallback_group=128)
