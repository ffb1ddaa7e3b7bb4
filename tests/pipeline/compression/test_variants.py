"""Building the variants of a trained model (recforge.pipeline.compression.variants)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recforge.inference.onnx import onnx_predict
from recforge.models import build_model
from recforge.pipeline.compression import quantize
from recforge.pipeline.compression.config import CompressConfig, CompressionError
from recforge.pipeline.compression.measure import count_parameters
from recforge.pipeline.compression.model_folder import load_trained
from recforge.pipeline.compression.prune import prune_model
from recforge.pipeline.compression.variants import build_base_variants
from recforge.pipeline.data.features import load_split
from recforge.pipeline.training.train import predict
from tests.pipeline.compression.compression_testutil import (
    FAST,
    matrix_elements,
    save_model_dir,
    tiny_spec,
)


def test_logreg_cannot_be_pruned_and_becomes_an_error_variant(features, tmp_path):
    spec = tiny_spec()
    model_dir = save_model_dir(build_model("logreg", spec), spec, "logreg", {}, tmp_path / "logreg")
    with pytest.raises(CompressionError):
        prune_model(build_model("logreg", spec), spec, 0.5)
    cfg = CompressConfig.from_dict(FAST)
    variants = build_base_variants("pruned50", model_dir, features, tmp_path / "out", cfg)
    assert [v.name for v in variants] == ["pruned50", "pruned50+int8_dynamic", "pruned50+int8_static",
                                          "pruned50+fp16", "pruned50+emb_int8", "pruned50+emb_int4"]
    assert all(v.error and "\n" not in v.error for v in variants)


def test_fp32_base_variants_have_sizes_and_parity_and_no_timing_of_their_own(fp32_variants):
    assert list(fp32_variants) == ["fp32", "fp32+int8_dynamic", "fp32+int8_static", "fp32+fp16", "fp32+emb_int8",
                                   "fp32+emb_int4"]
    for variant in fp32_variants.values():
        assert variant.error is None, variant.error
        assert Path(variant.onnx_path).exists() and variant.size_bytes > 0 and variant.file_bytes > 0
        # variants are built several at once: latencies are measured alone, side by side, by summarize_family
        assert not any("latency" in key or "_ms" in key for key in [*variant.to_dict(), *variant.params])
        json.dumps(variant.to_dict())  # JSON-safe
    fp32 = fp32_variants["fp32"]
    assert fp32.onnx_max_abs_diff < 1e-5
    assert Path(fp32.params["ort_optimized_onnx"]).exists()
    assert fp32.parameters > 0 and fp32.macs_per_item > 0
    # int8: every weight matrix / embedding table (the 2-D initializers) is stored in 1 byte per value; biases,
    # scales and int64 constants are the rest, a large share of a model this tiny (MovieLens models: ~3.9x)
    weights = matrix_elements(fp32.onnx_path)
    assert set(weights) == {"float32"}
    assert set(matrix_elements(fp32_variants["fp32+int8_dynamic"].onnx_path)) == {"int8", "uint8"}
    for name in ("fp32+int8_dynamic", "fp32+int8_static"):
        elements = matrix_elements(fp32_variants[name].onnx_path)
        assert "float32" not in elements and sum(elements.values()) == weights["float32"]
        assert fp32.size_bytes / fp32_variants[name].size_bytes > 2.5
    assert fp32.size_bytes / fp32_variants["fp32+fp16"].size_bytes > 1.9


def test_onnx_predict_matches_torch_on_a_split(fp32_variants, dlrm_dir, features):
    model, _, _ = load_trained(dlrm_dir)
    test = load_split(features, "test")
    probabilities = onnx_predict(fp32_variants["fp32"].onnx_path, test, batch_size=128)
    assert probabilities.shape == (len(test),)
    np.testing.assert_allclose(probabilities, predict(model, test), atol=1e-5)


def test_a_failing_precision_becomes_an_error_variant_and_the_others_go_on(dlrm_dir, features, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : cannot quantize\nsecond line")

    def no_conversion(src, dst):  # "converts" to fp16 without converting anything
        shutil.copyfile(src, dst)
        return {}

    monkeypatch.setattr(quantize, "quantize_static_int8", broken)
    monkeypatch.setattr(quantize, "convert_fp16", no_conversion)
    cfg = CompressConfig.from_dict(FAST)
    variants = {v.name: v for v in build_base_variants("fp32", dlrm_dir, features, tmp_path, cfg)}
    failed = variants["fp32+int8_static"]
    assert failed.error == "RuntimeError: [ONNXRuntimeError] : 10 : INVALID_GRAPH : cannot quantize"
    assert failed.onnx_path is None and failed.size_bytes is None
    unconverted = variants["fp32+fp16"]  # the check of the converted weights catches it
    assert unconverted.error == "CompressionError: fp16 left embedding tables unconverted: {'float32': 8}"
    for name in ("fp32", "fp32+int8_dynamic"):
        assert variants[name].error is None and Path(variants[name].onnx_path).exists()
    saved = json.loads((tmp_path / "fp32" / "variants.json").read_text())
    assert [v["name"] for v in saved] == list(variants)


def test_student_base_variant(dlrm_dir, features, tmp_path):
    cfg = CompressConfig.from_dict({**FAST, "precisions": ["int8_dynamic"]})
    student, quantized = build_base_variants("student", dlrm_dir, features, tmp_path, cfg)
    assert student.error is None and quantized.error is None, (student.error, quantized.error)
    assert student.parameters < 0.6 * student.params["teacher_parameters"]
    assert student.macs_per_item < 0.5 * student.params["teacher_macs_per_item"]
    assert [h["epoch"] for h in student.params["distill_history"]] == [1, 2]
    card = json.loads((tmp_path / "student" / "model.json").read_text())
    rebuilt, _, _ = load_trained(tmp_path / "student")  # the base folder is a model folder
    assert card["hyperparams"]["embedding_dim"] == 4 and count_parameters(rebuilt) == student.parameters
