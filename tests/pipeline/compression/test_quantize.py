"""INT8 and FP16 precisions of the fp32 base (recforge.pipeline.compression.quantize, onnx_graph)."""

from __future__ import annotations

import onnx

from recforge.pipeline.compression.onnx_graph import weight_dtypes
from tests.pipeline.compression.compression_testutil import (
    FP16_TOLERANCE,
    INT8_TOLERANCE,
)


def test_quantized_outputs_are_within_tolerance(fp32_variants):
    assert fp32_variants["fp32+fp16"].onnx_max_abs_diff < FP16_TOLERANCE
    assert fp32_variants["fp32+int8_dynamic"].onnx_max_abs_diff < INT8_TOLERANCE
    assert fp32_variants["fp32+int8_static"].onnx_max_abs_diff < INT8_TOLERANCE


def test_int8_variants_store_embeddings_and_matmul_weights_in_8_bits(fp32_variants):
    eight_bit = {"int8", "uint8"}
    source = weight_dtypes(fp32_variants["fp32"].onnx_path)
    tables, matmuls = sum(source["embedding"].values()), sum(source["matmul"].values())
    assert tables == 8 and matmuls == 5  # 6 sparse + genre + history tables; 2 bottom + 3 top Linear layers
    dynamic = weight_dtypes(fp32_variants["fp32+int8_dynamic"].onnx_path)
    assert set(dynamic["embedding"]) <= eight_bit and sum(dynamic["embedding"].values()) == tables
    assert set(dynamic["matmul"]) <= eight_bit and sum(dynamic["matmul"].values()) == matmuls
    static = fp32_variants["fp32+int8_static"]
    dtypes = weight_dtypes(static.onnx_path)
    assert set(dtypes["embedding"]) <= eight_bit and sum(dtypes["embedding"].values()) == tables
    assert set(dtypes["matmul"]) <= eight_bit and sum(dtypes["matmul"].values()) == matmuls
    assert static.params["weight_dtypes"] == dtypes
    ops = {n.op_type for n in onnx.load(static.onnx_path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # DLRM's first bottom-MLP layer reads the raw dense features: float activations, int8 weights
    for variant in (fp32_variants["fp32+int8_dynamic"], static):
        assert len(variant.params["weight_only_layers"]) == 1


def test_fp16_variant_has_float16_weights_and_float32_io(fp32_variants):
    path = fp32_variants["fp32+fp16"].onnx_path
    dtypes = weight_dtypes(path)
    assert dtypes == {"embedding": {"float16": 8}, "matmul": {"float16": 5}}
    graph = onnx.load(path).graph
    io = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert io == {"sparse": onnx.TensorProto.INT64, "genres": onnx.TensorProto.INT64,
                  "history": onnx.TensorProto.INT64, "dense": onnx.TensorProto.FLOAT,
                  "probability": onnx.TensorProto.FLOAT}
    assert not any(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
