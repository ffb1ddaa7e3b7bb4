"""Tests of tasks/compress.py on a tiny synthetic features folder and tiny, briefly trained models."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from torch import nn

from recforge.contracts.features import FeatureSpec, example_spec
from recforge.core.errors import ConfigError
from recforge.models import build_model
from recforge.models.export import example_inputs, export_onnx, onnx_parity
from recforge.pipeline.compression import compress
from recforge.pipeline.compression.compress import CompressConfig, Variant
from recforge.pipeline.data.features import load_split
from recforge.pipeline.training.train import predict

# Quantization tolerances on probabilities (max |onnx - torch fp32| over the test sample):
# * fp16: weights and activations rounded to 11 significant bits (relative error 2^-11 ~ 5e-4 per value), a few
#   layers deep, and the probability is sigmoid(logit), whose slope is <= 1/4: 2e-3 is a 4x margin.
# * int8: weights and activations are rounded to 1/255 of their range per tensor (dynamic: of each batch),
#   i.e. a relative error ~0.4% per layer that adds up over ~4 layers, on logits of magnitude ~1-3: a logit
#   error of ~0.1 at worst, 0.025 in probability; 0.05 leaves room for the worst row of the sample. (The trained
#   MovieLens models, with wider activation ranges, reach ~0.1 max / ~0.005 mean; the AUC parity rule is the
#   real check there.)
FP16_TOLERANCE = 2e-3
INT8_TOLERANCE = 0.05
FAST = {"latency_repeats": 3, "parity_rows": 256, "calibration_rows": 256, "threads": 1, "batch_size": 256,
        "finetune_epochs": 1, "distill_epochs": 2, "latency_batch": 64}


def tiny_spec() -> FeatureSpec:
    return dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8,
                               genre_slots=3, history_length=5)


def write_split(path: Path, spec: FeatureSpec, rows: int, seed: int) -> None:
    """A split file as recforge.pipeline.data.features writes it; the label depends on user, item and the dense features."""
    inputs = example_inputs(spec, rows, seed)
    rng = np.random.default_rng(0)  # the same "true" weights for every split
    user_w = rng.normal(size=spec.sparse_cardinalities[0])
    item_w = rng.normal(size=spec.sparse_cardinalities[1])
    dense_w = rng.normal(size=spec.num_dense)
    sparse, dense = inputs["sparse"].numpy(), inputs["dense"].numpy()
    logit = user_w[sparse[:, 0]] + item_w[sparse[:, 1]] + dense @ dense_w
    noise = np.random.default_rng(seed).logistic(size=rows)
    frame = pd.DataFrame(sparse, columns=list(spec.sparse_features))
    for k in range(spec.genre_slots):
        frame[f"genre_{k}"] = inputs["genres"][:, k].numpy()
    for k in range(spec.history_length):
        frame[f"hist_{k}"] = inputs["history"][:, k].numpy()
    for j, name in enumerate(spec.dense_features):
        frame[name] = dense[:, j].astype(np.float32)
    frame["label"] = (logit + noise > 0).astype(np.float32)
    frame.to_parquet(path)


def save_model_dir(model: nn.Module, spec: FeatureSpec, family: str, hyperparams: dict, path: Path) -> Path:
    """A model folder as recforge.pipeline.training.train writes it (without MLflow)."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "state_dict.pt")
    (path / "spec.json").write_text(spec.to_json())
    (path / "model.json").write_text(json.dumps({"family": family, "hyperparams": hyperparams, "run_id": "test"}))
    return path


def matrix_elements(path: str) -> dict[str, int]:
    """Number of values in the 2-D initializers (weight matrices, embedding tables) by dtype."""
    elements: dict[str, int] = {}
    for tensor in onnx.load(path).graph.initializer:
        if len(tensor.dims) == 2:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
            elements[dtype] = elements.get(dtype, 0) + int(np.prod(tensor.dims))
    return elements


def quick_train(model: nn.Module, features: Path, epochs: int = 3) -> nn.Module:
    train = load_split(features, "train")
    inputs = {k: torch.from_numpy(v) for k, v in train.inputs().items()}
    labels = torch.from_numpy(train.label)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(labels), 256):
            optimizer.zero_grad()
            batch = {k: v[start:start + 256] for k, v in inputs.items()}
            loss = nn.functional.binary_cross_entropy_with_logits(model.logits(**batch), labels[start:start + 256])
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("features")
    spec = tiny_spec()
    for split, rows, seed in (("train", 2000, 1), ("val", 500, 2), ("test", 500, 3)):
        write_split(path / f"{split}.parquet", spec, rows, seed)
    (path / "spec.json").write_text(spec.to_json())
    return path


@pytest.fixture(scope="module")
def dlrm_dir(features, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    hyperparams = {"embedding_dim": 8, "bottom_mlp": [32, 8], "top_mlp": [32, 16, 1]}
    model = quick_train(build_model("dlrm", tiny_spec(), **hyperparams), features)
    return save_model_dir(model, tiny_spec(), "dlrm", hyperparams, tmp_path_factory.mktemp("models") / "dlrm")


@pytest.fixture(scope="module")
def fp32_variants(dlrm_dir, features, tmp_path_factory) -> dict[str, Variant]:
    cfg = CompressConfig.from_dict(FAST)
    variants = compress.build_base_variants("fp32", dlrm_dir, features, tmp_path_factory.mktemp("out"), cfg)
    return {v.name: v for v in variants}


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    assert CompressConfig.from_dict({"prune_ratios": [0.5], "threads": 1}).prune_ratios == (0.5,)
    with pytest.raises(ConfigError, match="unknown key"):
        CompressConfig.from_dict({"prune_ratio": [0.5]})
    with pytest.raises(ConfigError, match="must be int"):
        CompressConfig.from_dict({"threads": "2"})
    with pytest.raises(ConfigError, match="prune_ratios"):
        CompressConfig.from_dict({"prune_ratios": [1.5]})
    with pytest.raises(ConfigError, match="precisions"):
        CompressConfig.from_dict({"precisions": ["int4"]})


def test_plan_bases_and_names():
    cfg = CompressConfig()
    assert compress.plan_bases(cfg) == ["fp32", "pruned25", "pruned50", "pruned75", "student"]
    assert compress.plan_bases(cfg, "logreg") == ["fp32"]
    assert compress.plan_bases(CompressConfig(prune_ratios=(0.3,), student=False), "din") == ["fp32", "pruned30"]
    assert compress.parse_base("pruned50") == ("pruned", 0.5)
    assert compress.variant_name("pruned50", "int8_static") == "pruned50+int8_static"
    assert compress.variant_name("fp32", "fp32") == "fp32"
    with pytest.raises(ConfigError):
        compress.parse_base("pruned")
    with pytest.raises(ConfigError):
        compress.parse_base("int8")


@pytest.mark.parametrize("family", ["dlrm", "din", "wide_deep", "ncf"])
def test_pruning_keeps_input_output_shapes_and_exports(family, tmp_path):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model(family, spec).eval()
    pruned = compress.prune_model(model, spec, 0.5)
    inputs = example_inputs(spec, 16, seed=1)
    assert pruned(**inputs).shape == (16,)
    embeddings = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert {n: m.weight.shape for n, m in pruned.named_modules() if isinstance(m, nn.Embedding)} == embeddings
    before = [layer.out_features for layer in compress.prunable_layers(model)]
    after = [layer.out_features for layer in compress.prunable_layers(pruned)]
    assert after == [w - round(0.5 * w) for w in before]
    # the pruned architecture is again a build_model one, and exports to an ONNX graph that matches torch
    hyperparams = compress.architecture_hyperparams(family, pruned, compress.resolved_hyperparams(family, {}))
    build_model(family, spec, **hyperparams).load_state_dict(pruned.state_dict())
    path = export_onnx(pruned, spec, tmp_path / "pruned.onnx")
    assert onnx_parity(pruned, path, inputs) < 1e-5


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_pruning_reduces_parameters_and_macs_by_about_the_ratio(ratio):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model("dlrm", spec, embedding_dim=8, bottom_mlp=(64, 8), top_mlp=(128, 64, 1)).eval()
    pruned = compress.prune_model(model, spec, ratio)

    def mlp_parameters(m: nn.Module) -> int:
        return sum(p.numel() for layer in m.modules() if isinstance(layer, nn.Linear) for p in layer.parameters())

    # a layer between two pruned layers loses 1 - (1 - r)^2 of its weights, one next to a fixed width loses r
    low, high = ratio - 0.05, 1 - (1 - ratio) ** 2 + 0.02
    assert low <= 1 - mlp_parameters(pruned) / mlp_parameters(model) <= high
    assert compress.count_parameters(model) - compress.count_parameters(pruned) == \
        mlp_parameters(model) - mlp_parameters(pruned)  # the embedding tables are untouched
    macs, pruned_macs = compress.macs_per_item(model, spec), compress.macs_per_item(pruned, spec)
    assert 0.75 * ratio <= 1 - pruned_macs / macs <= high
    assert compress.macs_per_item(model, spec, batch=32) == pytest.approx(macs, rel=0.01)  # per item


def test_logreg_cannot_be_pruned_and_becomes_an_error_variant(features, tmp_path):
    spec = tiny_spec()
    model_dir = save_model_dir(build_model("logreg", spec), spec, "logreg", {}, tmp_path / "logreg")
    with pytest.raises(compress.CompressionError):
        compress.prune_model(build_model("logreg", spec), spec, 0.5)
    cfg = CompressConfig.from_dict(FAST)
    variants = compress.build_base_variants("pruned50", model_dir, features, tmp_path / "out", cfg)
    assert [v.name for v in variants] == ["pruned50", "pruned50+int8_dynamic", "pruned50+int8_static",
                                          "pruned50+fp16"]
    assert all(v.error and "\n" not in v.error for v in variants)


def test_fp32_base_variants_have_sizes_parity_and_latency(fp32_variants):
    assert list(fp32_variants) == ["fp32", "fp32+int8_dynamic", "fp32+int8_static", "fp32+fp16"]
    for variant in fp32_variants.values():
        assert variant.error is None, variant.error
        assert Path(variant.onnx_path).exists() and variant.latency_ms > 0 and variant.size_bytes > 0
        json.dumps(variant.to_dict())  # JSON-safe
    fp32 = fp32_variants["fp32"]
    assert fp32.onnx_max_abs_diff < 1e-5 and fp32.torch_latency_ms > 0
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


def test_quantized_outputs_are_within_tolerance(fp32_variants):
    assert fp32_variants["fp32+fp16"].onnx_max_abs_diff < FP16_TOLERANCE
    assert fp32_variants["fp32+int8_dynamic"].onnx_max_abs_diff < INT8_TOLERANCE
    assert fp32_variants["fp32+int8_static"].onnx_max_abs_diff < INT8_TOLERANCE


def test_int8_variants_store_embeddings_and_matmul_weights_in_8_bits(fp32_variants):
    eight_bit = {"int8", "uint8"}
    source = compress.weight_dtypes(fp32_variants["fp32"].onnx_path)
    tables, matmuls = sum(source["embedding"].values()), sum(source["matmul"].values())
    assert tables == 8 and matmuls == 5  # 6 sparse + genre + history tables; 2 bottom + 3 top Linear layers
    dynamic = compress.weight_dtypes(fp32_variants["fp32+int8_dynamic"].onnx_path)
    assert set(dynamic["embedding"]) <= eight_bit and sum(dynamic["embedding"].values()) == tables
    assert set(dynamic["matmul"]) <= eight_bit and sum(dynamic["matmul"].values()) == matmuls
    static = fp32_variants["fp32+int8_static"]
    dtypes = compress.weight_dtypes(static.onnx_path)
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
    dtypes = compress.weight_dtypes(path)
    assert dtypes == {"embedding": {"float16": 8}, "matmul": {"float16": 5}}
    graph = onnx.load(path).graph
    io = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    assert io == {"sparse": onnx.TensorProto.INT64, "genres": onnx.TensorProto.INT64,
                  "history": onnx.TensorProto.INT64, "dense": onnx.TensorProto.FLOAT,
                  "probability": onnx.TensorProto.FLOAT}
    assert not any(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)


def test_onnx_predict_matches_torch_on_a_split(fp32_variants, dlrm_dir, features):
    model, _, _ = compress.load_trained(dlrm_dir)
    test = load_split(features, "test")
    probabilities = compress.onnx_predict(fp32_variants["fp32"].onnx_path, test, batch_size=128)
    assert probabilities.shape == (len(test),)
    np.testing.assert_allclose(probabilities, predict(model, test), atol=1e-5)


def test_a_failing_precision_becomes_an_error_variant_and_the_others_go_on(dlrm_dir, features, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : cannot quantize\nsecond line")

    def no_conversion(src, dst):  # "converts" to fp16 without converting anything
        shutil.copyfile(src, dst)
        return {}

    monkeypatch.setattr(compress, "quantize_static_int8", broken)
    monkeypatch.setattr(compress, "convert_fp16", no_conversion)
    cfg = CompressConfig.from_dict(FAST)
    variants = {v.name: v for v in compress.build_base_variants("fp32", dlrm_dir, features, tmp_path, cfg)}
    failed = variants["fp32+int8_static"]
    assert failed.error == "RuntimeError: [ONNXRuntimeError] : 10 : INVALID_GRAPH : cannot quantize"
    assert failed.onnx_path is None and failed.size_bytes is None
    unconverted = variants["fp32+fp16"]  # the check of the converted weights catches it
    assert unconverted.error == "CompressionError: fp16 left embedding tables unconverted: {'float32': 8}"
    for name in ("fp32", "fp32+int8_dynamic"):
        assert variants[name].error is None and Path(variants[name].onnx_path).exists()
    saved = json.loads((tmp_path / "fp32" / "variants.json").read_text())
    assert [v["name"] for v in saved] == list(variants)


def test_student_is_smaller(dlrm_dir):
    cfg = CompressConfig()
    hyperparams = compress.student_hyperparams("dlrm", {"embedding_dim": 8, "bottom_mlp": [32, 8],
                                                        "top_mlp": [32, 16, 1]}, cfg)
    assert hyperparams == {"embedding_dim": 4, "bottom_mlp": [16, 4], "top_mlp": [16, 8, 1], "interaction": "dot"}
    for family in ("dlrm", "din", "wide_deep", "ncf"):
        teacher = build_model(family, tiny_spec())
        student = build_model(family, tiny_spec(), **compress.student_hyperparams(family, {}, cfg))
        assert compress.count_parameters(student) < 0.6 * compress.count_parameters(teacher)
    with pytest.raises(compress.CompressionError):
        compress.student_hyperparams("logreg", {}, cfg)


def test_student_is_trained_against_the_teacher(features):
    """With alpha = 0 the student learns the teacher's outputs, even a teacher unrelated to the labels."""
    spec = tiny_spec()
    torch.manual_seed(1)
    teacher = build_model("ncf", spec, gmf_dim=8, mlp_embedding_dim=8, mlp_layers=(16, 8)).eval()
    with torch.no_grad():  # a confident teacher that knows nothing about the labels
        teacher.fusion.weight.mul_(20.0)
    student = build_model("ncf", spec, **compress.student_hyperparams("ncf", compress.resolved_hyperparams(
        "ncf", {"gmf_dim": 8, "mlp_embedding_dim": 8, "mlp_layers": (16, 8)}), CompressConfig()))
    train, val = load_split(features, "train"), load_split(features, "val")

    def gap() -> float:
        return float(np.mean(np.abs(predict(student, val) - predict(teacher, val))))

    before = gap()
    cfg = CompressConfig(distill_alpha=0.0, distill_temperature=1.0, batch_size=128, patience=10)
    compress.distill(student, teacher, train, val, cfg, epochs=5, lr=1e-2)
    assert gap() < 0.5 * before


def test_student_base_variant(dlrm_dir, features, tmp_path):
    cfg = CompressConfig.from_dict({**FAST, "precisions": ["int8_dynamic"]})
    student, quantized = compress.build_base_variants("student", dlrm_dir, features, tmp_path, cfg)
    assert student.error is None and quantized.error is None, (student.error, quantized.error)
    assert student.parameters < 0.6 * student.params["teacher_parameters"]
    assert student.macs_per_item < 0.5 * student.params["teacher_macs_per_item"]
    assert [h["epoch"] for h in student.params["distill_history"]] == [1, 2]
    card = json.loads((tmp_path / "student" / "model.json").read_text())
    rebuilt, _, _ = compress.load_trained(tmp_path / "student")  # the base folder is a model folder
    assert card["hyperparams"]["embedding_dim"] == 4 and compress.count_parameters(rebuilt) == student.parameters


def test_cli_prints_variants_and_one_line_errors(dlrm_dir, features, tmp_path, capsys):
    config = json.dumps({**FAST, "precisions": ["fp16"]})
    code = compress.main(["--model-dir", str(dlrm_dir), "--features", str(features), "--out", str(tmp_path),
                          "--base", "fp32", "--config", config])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in printed] == ["fp32", "fp32+fp16"]
    code = compress.main(["--model-dir", str(dlrm_dir), "--features", str(features), "--out", str(tmp_path),
                          "--config", '{"prune_ratio": 0.5}'])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: CompressConfig: unknown key") and err.count("\n") == 1
    code = compress.main(["--model-dir", str(tmp_path / "nope"), "--features", str(features), "--out", str(tmp_path),
                          "--base", "fp32"])
    assert code == 1 and "not a model folder" in capsys.readouterr().err
