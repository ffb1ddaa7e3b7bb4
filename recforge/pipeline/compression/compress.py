"""Model compression: ONNX variants of one trained model, each a *base* (an fp32 torch model) × a *precision*.

Bases (each an fp32 torch model, exported to ONNX; every base folder is a model folder like training's):

* ``fp32``: the trained model as is, re-exported; the ORT-optimised graph is saved next to it.
* ``pruned<NN>``: structured channel pruning (torch-pruning, L2 magnitude) of NN% of the hidden units of
  every MLP, then a short fine-tune by distillation from the unpruned model. Only *hidden* Linear layers are
  pruned: the last layer of every MLP (the logit, or a width the interaction/concat layout dictates, e.g.
  DLRM's bottom MLP output = embedding dim) keeps its width, so the inputs, the output and the embedding
  tables are untouched and the pruned model is again ``build_model(family, spec, **hyperparams)``.
* ``student``: a narrower model of the same family (smaller embeddings, thinner MLPs) trained by knowledge
  distillation from the trained model: ``alpha * BCE(label) + (1 - alpha) * T² * BCE(teacher at T)``.

Precisions, applied to a base's ONNX file with onnxruntime (a failure becomes a variant with ``error``):

* ``int8_dynamic``: ``quantize_dynamic`` of MatMul (Gemm is rewritten to MatMul + Add first: ORT's dynamic
  quantizer has no Gemm) and Gather, so the embedding tables are stored as uint8.
* ``int8_static``: ``quantize_static`` in QDQ format, MinMax-calibrated on the most recent training rows,
  per-channel weights; MatMul/Gemm and Gather, with float MatMul/Gemm outputs (no 8-bit rounding of the logit).
* Both int8 precisions: 7-bit weights by default (``reduce_range``: x86 without VNNI saturates otherwise), and
  the layers fed by the raw dense features keep float activations with int8 weights behind a DequantizeLinear
  (the dense features drift out of the training range over time: past counts only grow).
* ``fp16``: float16 weights and compute, float32 graph inputs/outputs.

A variant is named ``<base>`` or ``<base>+<precision>`` (``fp32``, ``fp32+int8_static``, ``pruned50+fp16``...).

CLI::

    python -m recforge.pipeline.compression.compress --model-dir D --features F --out O [--base fp32] [--config JSON]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.contracts.features import INPUT_NAMES, FeatureSpec
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.core.timing import median_ms
from recforge.inference.onnx import numpy_inputs, onnx_latency_ms, onnx_predict, onnx_session
from recforge.models import PRESETS, build_model, default_hyperparams
from recforge.models.arches import MLP
from recforge.models.export import example_inputs, export_onnx
from recforge.pipeline.data.features import load_spec, load_split
from recforge.pipeline.training.train import evaluate, predict, seed_everything

if TYPE_CHECKING:
    import torch
    from torch import nn

    from recforge.contracts.features import FeatureSpec
    from recforge.pipeline.data.features import Split

log = logging.getLogger(__name__)

FP32 = "fp32"
STUDENT = "student"
PRUNED = "pruned"
PRECISIONS = ("int8_dynamic", "int8_static", "fp16")
# Which hyperparameter each MLP of a family is built from, and whether the family's class appends the
# output layer to it itself (then the hyperparameter lists only the hidden sizes).
MLP_HYPERPARAMS: dict[str, dict[str, tuple[str, bool]]] = {
    "dlrm": {"dense_arch": ("bottom_mlp", False), "over_arch": ("top_mlp", False)},
    "wide_deep": {"deep_mlp": ("deep_mlp", True)},
    "ncf": {"mlp": ("mlp_layers", False)},
    "din": {"attention.score_mlp": ("attention_mlp", True), "mlp": ("mlp", True)},
}
# Embedding-dimension hyperparameters a student shrinks.
EMBEDDING_HYPERPARAMS: dict[str, tuple[str, ...]] = {
    "dlrm": ("embedding_dim",),
    "wide_deep": ("embedding_dim",),
    "ncf": ("gmf_dim", "mlp_embedding_dim"),
    "din": ("embedding_dim",),
}
_MATMUL_OPS = ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul")
_PASS_THROUGH_OPS = ("DequantizeLinear", "Cast", "Transpose", "Identity", "Reshape")


class CompressionError(RecForgeError):
    """A model cannot be compressed as asked (nothing to prune, no student for the family, bad inputs)."""


@dataclass(frozen=True)
class CompressConfig:
    prune_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)  # fraction of each hidden MLP layer's units removed
    finetune_epochs: int = 3  # distillation from the unpruned model after pruning (0 = none)
    finetune_lr: float = 1e-3
    finetune_embeddings: bool = False  # also train the (unpruned) embedding tables while fine-tuning
    student: bool = True
    student_embedding_dim: int = 0  # 0 = the teacher's embedding dims × student_width_factor
    student_width_factor: float = 0.5  # hidden MLP widths of the student relative to the teacher's
    distill_epochs: int = 8  # at most; early-stopped on validation AUC
    distill_lr: float = 1e-3
    distill_alpha: float = 0.1  # weight of the label loss; 1 - alpha on the teacher's softened probabilities
    distill_temperature: float = 2.0
    patience: int = 2  # epochs without a better validation AUC before fine-tuning/distillation stops
    batch_size: int = 512
    weight_decay: float = 1e-4
    max_train_rows: int = 0  # 0 = all; the most recent rows otherwise (tests, smoke runs)
    precisions: tuple[str, ...] = PRECISIONS
    calibration_rows: int = 2048  # most recent training rows for int8_static calibration
    per_channel: bool = True  # int8_static: per-channel MatMul/Gemm weights
    # 7-bit weights. Needed on x86 without VNNI (this CI box: AVX2 only), where u8s8 kernels sum pairs of
    # products in int16 and saturate; with 8-bit per-channel weights the static model's outputs were garbage.
    reduce_range: bool = True
    # int8: layers fed by the raw dense features keep float activations (int8 weights, dequantized at run time):
    # the dense features drift out of the training range over time (past counts only grow), and rounding
    # them to 1/255 of a batch's or the calibration's range cost wide_deep 0.1% AUC
    float_input_layers: bool = True
    parity_rows: int = 1024  # test rows for onnx_max_abs_diff
    latency_batch: int = 256
    latency_repeats: int = 100
    threads: int = 2  # intra-op threads of the latency measurements (onnxruntime and PyTorch)
    # torch threads while fine-tuning/distilling. 1 by default: these models are too small to gain from a
    # second thread, and on a shared 2-core box a busy neighbour makes 2-thread OpenMP training ~10x slower.
    train_threads: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        if any(not 0.0 < r < 1.0 for r in self.prune_ratios):
            raise ValueError(f"prune_ratios must be in (0, 1), got {self.prune_ratios}")
        names = [pruned_name(r) for r in self.prune_ratios]
        if len(set(names)) != len(names):
            raise ValueError(f"prune_ratios {self.prune_ratios} give duplicate base names {names}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"unknown precisions {unknown}; choose from {list(PRECISIONS)}")
        if not 0.0 < self.student_width_factor <= 1.0 or not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError("student_width_factor must be in (0, 1] and distill_alpha in [0, 1]")
        if self.distill_temperature <= 0 or self.finetune_lr <= 0 or self.distill_lr <= 0:
            raise ValueError("distill_temperature, finetune_lr and distill_lr must be > 0")
        positive = ("distill_epochs", "patience", "batch_size", "calibration_rows", "parity_rows",
                    "latency_batch", "latency_repeats", "threads", "train_threads")
        if any(getattr(self, name) < 1 for name in positive):
            raise ValueError(f"{', '.join(positive)} must be >= 1")
        if self.finetune_epochs < 0 or self.student_embedding_dim < 0 or self.max_train_rows < 0:
            raise ValueError("finetune_epochs, student_embedding_dim and max_train_rows must be >= 0")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CompressConfig:
        return config.config_from_dict(cls, values)


@dataclass
class Variant:
    """One compressed model: ``base`` (fp32 torch model) × ``precision``, as an ONNX file."""

    name: str  # "<base>" or "<base>+<precision>"
    base: str  # fp32, pruned<NN>, student
    precision: str  # fp32, int8_dynamic, int8_static, fp16
    technique: str  # e.g. "export+ort_optimize", "prune+finetune", "distill", + "+int8_static"
    family: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # ratio, student dims, quantization details...
    onnx_path: str | None = None
    size_bytes: int | None = None  # weights: sum of the ONNX initializers' bytes
    file_bytes: int | None = None
    parameters: int | None = None  # of the base torch model
    macs_per_item: float | None = None  # of the base torch model
    onnx_max_abs_diff: float | None = None  # probabilities vs the base's fp32 torch model, test sample
    latency_ms: float | None = None  # onnxruntime, batch latency_batch, median, `threads` intra-op threads
    torch_latency_ms: float | None = None  # PyTorch eager, same batch and threads (fp32 variants only)
    error: str | None = None  # one line when this variant could not be built

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def pruned_name(ratio: float) -> str:
    return f"{PRUNED}{round(ratio * 100):02d}"


def variant_name(base: str, precision: str) -> str:
    return base if precision == FP32 else f"{base}+{precision}"


def plan_bases(cfg: CompressConfig, family: str | None = None) -> list[str]:
    """The bases ``build_base_variants`` can build, e.g. ["fp32", "pruned25", "pruned50", "pruned75", "student"].

    With ``family``, bases that family cannot have are left out (logreg has no hidden layer and no width).
    """
    compressible = family is None or family in MLP_HYPERPARAMS
    bases = [FP32]
    if compressible:
        bases += [pruned_name(r) for r in cfg.prune_ratios]
        if cfg.student:
            bases.append(STUDENT)
    return bases


def parse_base(base: str) -> tuple[str, float | None]:
    """("fp32" | "pruned" | "student", prune ratio or None); ConfigError for an unknown base name."""
    if base in (FP32, STUDENT):
        return base, None
    digits = base[len(PRUNED):]
    if base.startswith(PRUNED) and digits.isdigit() and 0 < int(digits) < 100:
        return PRUNED, int(digits) / 100
    raise ConfigError(f"unknown base {base!r}; expected fp32, student or pruned<NN> (e.g. pruned50)")


# --------------------------------------------------------------------------------------------------------------
# Torch models: loading, counting, pruning, distillation


def load_trained(model_dir: Path) -> tuple[nn.Module, FeatureSpec, dict[str, Any]]:
    """(model in eval mode, spec, model card) of a model folder written by training (or by this module)."""
    import torch


    model_dir = Path(model_dir)
    missing = [n for n in ("state_dict.pt", "spec.json", "model.json") if not (model_dir / n).exists()]
    if missing:
        raise DataError(f"{model_dir} is not a model folder: {', '.join(missing)} missing; train the model first")
    card = json.loads((model_dir / "model.json").read_text())
    spec = FeatureSpec.from_json((model_dir / "spec.json").read_text())
    model = build_model(card["family"], spec, **card.get("hyperparams", {}))
    model.load_state_dict(torch.load(model_dir / "state_dict.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, spec, card


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_item(model: nn.Module, spec: FeatureSpec, batch: int = 8) -> float:
    """Multiply-accumulates per scored item, as torch-pruning's op counter counts them (Linear, matmul, ...).

    The inputs are passed positionally, so the counter sees the batch size and returns MACs at batch B / B.
    """
    import torch_pruning as tp


    inputs = example_inputs(spec, batch)
    was_training = model.training
    model.eval()
    try:
        macs, _ = tp.utils.count_ops_and_params(model, tuple(inputs[n] for n in INPUT_NAMES))
    finally:
        model.train(was_training)
    return float(macs)


def _mlps(model: nn.Module) -> dict[str, nn.Module]:

    return {name: module for name, module in model.named_modules() if isinstance(module, MLP)}


def _linears(mlp: nn.Module) -> list[nn.Linear]:
    from torch import nn

    return [layer for layer in mlp.layers if isinstance(layer, nn.Linear)]


def prunable_layers(model: nn.Module) -> list[nn.Linear]:
    """The hidden Linear layers of every MLP: all but each MLP's last layer, whose width is dictated by what
    consumes it (the logit, DLRM's dot interaction, NCF's fusion layer...)."""
    return [layer for mlp in _mlps(model).values() for layer in _linears(mlp)[:-1]]


def architecture_hyperparams(family: str, model: nn.Module, hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hyperparams`` with the MLP widths read from ``model`` (e.g. after pruning), so that
    ``build_model(family, spec, **result)`` rebuilds the same architecture."""
    result = dict(hyperparams)
    mlps = _mlps(model)
    for module_name, (key, class_adds_output) in MLP_HYPERPARAMS.get(family, {}).items():
        sizes = [layer.out_features for layer in _linears(mlps[module_name])]
        result[key] = sizes[:-1] if class_adds_output else sizes
    return result


def prune_model(model: nn.Module, spec: FeatureSpec, ratio: float) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the units of every hidden MLP layer removed (L2 magnitude).

    Raises CompressionError if the model has no hidden layer to prune (e.g. logistic regression).
    """
    import torch
    import torch_pruning as tp
    from torch import nn


    pruned = copy.deepcopy(model).eval()
    targets = prunable_layers(pruned)
    if not targets:
        raise CompressionError(f"{type(model).__name__} has no hidden MLP layer to prune")
    target_ids = {id(layer) for layer in targets}
    ignored = [m for m in pruned.modules() if isinstance(m, nn.Linear) and id(m) not in target_ids]
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        example_inputs(spec, 8),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    with torch.no_grad():
        pruner.step()
    return pruned


def _train_tensors(split: Split, max_rows: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    import torch

    rows = len(split) if max_rows <= 0 else min(max_rows, len(split))
    return ({k: torch.from_numpy(np.ascontiguousarray(v[-rows:])) for k, v in split.inputs().items()},
            torch.from_numpy(np.ascontiguousarray(split.label[-rows:])))


def _teacher_logits(teacher: nn.Module, inputs: Mapping[str, torch.Tensor], batch_size: int = 8192) -> torch.Tensor:
    import torch

    teacher.eval()
    rows = len(next(iter(inputs.values())))
    with torch.no_grad():
        return torch.cat([teacher.logits(**{k: v[s:s + batch_size] for k, v in inputs.items()})
                          for s in range(0, rows, batch_size)])


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: Split,
    val: Split,
    cfg: CompressConfig,
    *,
    epochs: int,
    lr: float,
    evaluate_initial: bool = False,
    train_embeddings: bool = True,
    label: str = "student",
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``student`` (in place) on ``alpha * BCE(label) + (1 - alpha) * T² * BCE(sigmoid(teacher_logit / T))``
    with the student's logit also divided by T in the second term; early-stopped on validation AUC.

    Returns (student with its best weights, history). With ``evaluate_initial`` the untrained weights compete
    too (epoch 0), so a fine-tune never makes a pruned model worse on validation. Without
    ``train_embeddings`` the embedding tables stay frozen (a pruned model's tables were not changed by pruning;
    further training only overfits them to the training ids).
    """
    import torch
    import torch.nn.functional as functional
    from torch import nn


    inputs, labels = _train_tensors(train, cfg.max_train_rows)
    rows = len(labels)
    temperature, alpha = cfg.distill_temperature, cfg.distill_alpha
    soft_targets = torch.sigmoid(_teacher_logits(teacher, inputs) / temperature)
    embedding_ids = {id(p) for m in student.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    trainable = [p for p in student.parameters() if train_embeddings or id(p) not in embedding_ids]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"auc": -1.0, "epoch": -1, "state": None}
    if evaluate_initial:
        auc = evaluate(val.label, predict(student, val))["auc"]
        history.append({"epoch": 0, "val_auc": auc})
        best = {"auc": auc, "epoch": 0, "state": copy.deepcopy(student.state_dict())}
        log.info("%s epoch 0 (before fine-tuning): val_auc %.4f", label, auc)
    for epoch in range(1, epochs + 1):
        student.train()
        order = torch.randperm(rows, generator=generator)
        total = 0.0
        for start in range(0, rows, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            logits = student.logits(**{k: v[idx] for k, v in inputs.items()})
            hard = functional.binary_cross_entropy_with_logits(logits, labels[idx])
            soft = functional.binary_cross_entropy_with_logits(logits / temperature, soft_targets[idx])
            loss = alpha * hard + (1.0 - alpha) * temperature**2 * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        auc = evaluate(val.label, predict(student, val))["auc"]
        history.append({"epoch": epoch, "train_loss": total / rows, "val_auc": auc})
        log.info("%s epoch %d/%d: train_loss %.4f val_auc %.4f", label, epoch, epochs, total / rows, auc)
        if auc > best["auc"]:
            best = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(student.state_dict())}
        elif epoch - best["epoch"] >= cfg.patience:
            break
    if best["state"] is not None:
        student.load_state_dict(best["state"])
    student.eval()
    return student, history


def resolved_hyperparams(family: str, hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of a model built with ``build_model(family, spec, **hyperparams)`` (preset resolved)."""

    explicit = dict(hyperparams)
    preset = explicit.pop("preset", None)
    return default_hyperparams(family) | (PRESETS.get(family, {}).get(preset, {}) if preset else {}) | explicit


def student_hyperparams(family: str, teacher_hyperparams: Mapping[str, Any], cfg: CompressConfig) -> dict[str, Any]:
    """The student's hyperparameters: the teacher's embedding dims and MLP widths shrunk by the config."""
    if family not in EMBEDDING_HYPERPARAMS:
        raise CompressionError(f"model family {family!r} has no embedding dimension or hidden layer to shrink")
    hp = resolved_hyperparams(family, teacher_hyperparams)

    def narrow(width: int) -> int:
        return max(1, round(int(width) * cfg.student_width_factor))

    for key in EMBEDDING_HYPERPARAMS[family]:
        hp[key] = cfg.student_embedding_dim or narrow(hp[key])
    for key, _ in MLP_HYPERPARAMS[family].values():
        hp[key] = [narrow(size) for size in hp[key]]
    if family == "dlrm":  # widths fixed by what consumes them
        hp["top_mlp"][-1] = 1  # the logit
        if hp.get("interaction", "dot") == "dot":  # the dense vector is dotted with the embeddings
            hp["bottom_mlp"][-1] = hp["embedding_dim"]
    return hp


# --------------------------------------------------------------------------------------------------------------
# ONNX: weights, quantization, fp16


def _load(path: str | Path) -> Any:
    import onnx

    return onnx.load(str(path))


def weight_bytes(onnx_path: str | Path) -> int:
    """Bytes of the weights: the sum of the ONNX initializers' tensor bytes (external data included)."""
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(t, base_dir=str(Path(onnx_path).parent)).nbytes
                   for t in _load(onnx_path).graph.initializer))


def weight_dtypes(onnx_path: str | Path) -> dict[str, dict[str, int]]:
    """Storage dtype of the weights by role: {"embedding": {"uint8": 8}, "matmul": {"int8": 5, ...}}.

    An embedding table is the data input of a Gather that comes from an initializer of rank 2; a matmul
    weight is the second input of a MatMul/Gemm (or their quantized forms) from an initializer. Both are
    followed back through DequantizeLinear, Cast, Transpose, Identity and Reshape to their initializer.
    """
    from onnx import helper

    model = _load(onnx_path)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def source(name: str) -> Any:
        for _ in range(8):
            if name in initializers:
                return initializers[name]
            node = producers.get(name)
            if node is None or node.op_type not in _PASS_THROUGH_OPS or not node.input:
                return None
            name = node.input[0]
        return None

    result: dict[str, dict[str, int]] = {"embedding": {}, "matmul": {}}
    seen: set[tuple[str, str]] = set()
    for node in graph.node:
        if node.op_type == "Gather":
            role, tensor = "embedding", source(node.input[0])
            if tensor is None or len(tensor.dims) != 2:
                continue
        elif node.op_type in _MATMUL_OPS:
            weight_index = 3 if node.op_type in ("QLinearMatMul", "QGemm") else 1
            if len(node.input) <= weight_index:
                continue
            role, tensor = "matmul", source(node.input[weight_index])
            if tensor is None:
                continue
        else:
            continue
        if (role, tensor.name) in seen:
            continue
        seen.add((role, tensor.name))
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        result[role][dtype] = result[role].get(dtype, 0) + 1
    return result


def preprocess(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime's quantization pre-processing (shape inference + basic optimisation); a copy on failure."""
    import shutil

    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as err:  # noqa: BLE001 - ORT raises many types; quantization can still go on
        log.warning("quantization pre-processing of %s failed (%s); quantizing it as exported", src, err)
        shutil.copyfile(src, dst)
    return Path(dst)


def _set_nodes(graph: Any, nodes: list) -> None:
    """Replace ``graph``'s nodes and drop the initializers no node reads any more."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def gemm_to_matmul(src: str | Path, dst: str | Path) -> int:
    """Rewrite every Gemm with an initializer weight (alpha = beta = 1, no transA) as MatMul (+ Add for the
    bias); ORT's dynamic quantizer quantizes MatMul but not Gemm. Returns the number of Gemms rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = _load(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in initializers
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if attrs.get("transB", 0):
                weight = weight.T
            weight_name = f"{node.input[1]}_matmul_{rewritten}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
            has_bias = len(node.input) > 2 and node.input[2]
            product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=f"{node.name}_mm"))
            if has_bias:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=f"{node.name}_bias"))
            rewritten += 1
        else:
            nodes.append(node)
    _set_nodes(graph, nodes)
    onnx.save(model, str(dst))
    return rewritten


def quantize_dynamic_int8(src: str | Path, dst: str | Path, cfg: CompressConfig) -> dict[str, Any]:
    """Dynamic INT8 of MatMul/Gemm weights (int8) and embedding tables (Gather, uint8); returns details.

    Layers fed by the raw dense features (``cfg.float_input_layers``) keep float activations and get int8
    weights behind a DequantizeLinear (``int8_weight_only``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    try:
        preprocess(src, prepared)
        gemms = gemm_to_matmul(prepared, prepared)
        float_layers = float_input_layers(prepared) if cfg.float_input_layers else []
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=["MatMul", "Gather"],
                         nodes_to_exclude=float_layers, per_channel=False, reduce_range=cfg.reduce_range,
                         weight_type=QuantType.QInt8)
        int8_weight_only(dst, dst, float_layers)
    finally:
        prepared.unlink(missing_ok=True)
    return {"bits": 8, "ops": ["MatMul", "Gemm->MatMul", "Gather"], "gemms_rewritten": gemms,
            "per_channel": False, "reduce_range": cfg.reduce_range, "weight_type": "int8",
            "embedding_type": "uint8", "activations": "uint8, quantized at run time per batch",
            "weight_only_layers": float_layers}


def int8_weight_only(src: str | Path, dst: str | Path, node_names: Sequence[str]) -> list[str]:
    """Store the weight of each named MatMul/Gemm as int8 (symmetric, per output channel) behind a
    DequantizeLinear, so the node keeps computing in float on float activations. Returns the weights converted."""
    import onnx
    from onnx import helper, numpy_helper

    model = _load(src)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    wanted = set(node_names)
    converted, new_nodes = [], []
    for node in graph.node:
        if node.name in wanted and node.op_type in ("MatMul", "Gemm") and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if weight.dtype != np.float32 or weight.ndim != 2:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis = 0 if node.op_type == "Gemm" and attrs.get("transB", 0) else 1  # the output-channel axis
            scale = np.abs(weight).max(axis=1 - axis) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            shape = (-1, 1) if axis == 0 else (1, -1)
            quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
            name = node.input[1]
            graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                      numpy_helper.from_array(scale, f"{name}_int8_scale")])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_int8_scale"],
                                              [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=axis))
            node.input[1] = f"{name}_dequantized"
            converted.append(name)
    if converted:
        # DequantizeLinear reads initializers only: putting it first is topological
        _set_nodes(graph, new_nodes + list(graph.node))
    onnx.save(model, str(dst))
    return converted


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over model inputs, in batches."""

    def __init__(self, inputs: Mapping[str, np.ndarray], batch_size: int = 256):
        rows = len(next(iter(inputs.values())))
        self.batches = [{k: np.ascontiguousarray(v[s:s + batch_size]) for k, v in inputs.items()}
                        for s in range(0, rows, batch_size)]
        self._iter = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.batches)


def float_input_layers(onnx_path: str | Path) -> list[str]:
    """Names of the MatMul/Gemm nodes that the float graph inputs (the raw dense features) reach without
    passing another MatMul/Gemm (through Concat, Reshape...)."""
    import onnx

    graph = _load(onnx_path).graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    seen, found = set(frontier), []
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type in ("MatMul", "Gemm"):
                if node.name not in found:
                    found.append(node.name)
                continue
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return found


def activation_matmuls(onnx_path: str | Path) -> list[str]:
    """Names of the MatMul nodes without a constant weight (e.g. DLRM's dot interaction, a batched matmul of
    activations): quantizing both operands and the Gram matrix costs accuracy and saves no weight bytes."""
    graph = _load(onnx_path).graph
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> bool:
        while name not in initializers:
            node = producers.get(name)
            if node is None or node.op_type not in _PASS_THROUGH_OPS:
                return False
            name = node.input[0]
        return True

    return [n.name for n in graph.node if n.op_type == "MatMul" and not constant(n.input[1])]


def quantize_static_int8(src: str | Path, dst: str | Path, calibration: Mapping[str, np.ndarray],
                         cfg: CompressConfig) -> dict[str, Any]:
    """Static INT8 (QDQ) of MatMul/Gemm and Gather, MinMax-calibrated on ``calibration`` (model inputs).

    Float activations: layers fed by the raw dense features (``cfg.float_input_layers``; their weights are
    int8 behind a DequantizeLinear, see ``int8_weight_only``), matmuls of two
    activations, and the *outputs* of MatMul/Gemm (ORT then fuses to QGemm / MatMulIntegerToFloat with a float
    output; a uint8 output would round the final logit to 1/255 of its range and add ties to the ranking).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    dst = Path(dst)
    prepared = preprocess(src, dst.with_name(dst.stem + ".prep.onnx"))
    try:
        float_layers = float_input_layers(prepared) if cfg.float_input_layers else []
        excluded = float_layers + activation_matmuls(prepared)
        rows = len(next(iter(calibration.values())))
        log.info("calibrating int8_static on %d rows (%s)", rows, Path(src).name)
        quantize_static(
            str(prepared), str(dst), _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )
        int8_weight_only(dst, dst, float_layers)
    finally:
        prepared.unlink(missing_ok=True)
    return {"bits": 8, "format": "QDQ", "ops": ["MatMul", "Gemm", "Gather"], "per_channel": cfg.per_channel,
            "reduce_range": cfg.reduce_range, "weight_type": "int8", "activation_type": "uint8",
            "calibration_rows": rows, "calibration": "MinMax", "weight_only_layers": float_layers,
            "float_nodes": excluded, "float_outputs": ["MatMul", "Gemm"]}


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """float16 weights and compute, float32 graph inputs/outputs (Casts at the graph boundary)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(_load(src), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"bits": 16, "io": "float32"}


def optimize_onnx(src: str | Path, dst: str | Path, level: str = "extended") -> Path:
    """Save the graph onnxruntime runs after its optimisations (``SessionOptions.optimized_model_filepath``).

    "extended" fuses (Gemm+Relu, MatMul+Add...) with hardware-independent rewrites; "all" adds CPU-layout
    transforms that the ORT docs advise against saving for use on another machine.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return Path(dst)


# --------------------------------------------------------------------------------------------------------------
# Running: prediction, parity, latency


def _torch_inputs(inputs: Split | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(v) for k, v in numpy_inputs(inputs).items()}


def onnx_max_abs_diff(model: nn.Module, onnx_path: str | Path, inputs: Split | Mapping[str, Any]) -> float:
    """Max |torch probability - onnxruntime probability| over ``inputs``."""
    import torch

    model.eval()
    with torch.no_grad():
        expected = model(**_torch_inputs(inputs)).numpy().astype(np.float64)
    actual = onnx_predict(onnx_path, inputs)
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0


def torch_latency_ms(model: nn.Module, inputs: Split | Mapping[str, Any], threads: int = 2,
                     repeats: int = 100, warmup: int = 10) -> float:
    """Median milliseconds of one PyTorch eager forward (eval, no_grad) over ``inputs``, ``threads`` threads.

    Measured as served: with deterministic algorithms off (``recforge.pipeline.training.train.seed_everything`` turns them on for
    the whole process, which slows CPU inference), restored afterwards.
    """
    import torch

    feed = _torch_inputs(inputs)
    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    model.eval()
    try:
        with torch.no_grad():
            return median_ms(lambda: model(**feed), repeats, warmup)
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def latency_inputs(split: Split, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` rows of ``split`` (rows repeated if it is shorter)."""
    inputs = numpy_inputs(split)
    rows = len(inputs["sparse"])
    if rows == 0:
        raise DataError("cannot measure latency on an empty split")
    index = np.arange(batch) % rows
    return {k: np.ascontiguousarray(v[index]) for k, v in inputs.items()}


# --------------------------------------------------------------------------------------------------------------
# Bases and variants


@dataclass
class _Data:
    spec: FeatureSpec
    train: Split
    val: Split
    test: Split


def _load_data(features_dir: Path) -> _Data:

    data = _Data(load_spec(features_dir), load_split(features_dir, "train"), load_split(features_dir, "val"),
                 load_split(features_dir, "test"))
    if len(data.train) == 0 or len(data.val) == 0 or len(data.test) == 0:
        raise DataError(f"{features_dir}: the train, val and test splits must all have rows")
    if len(set(data.val.label.tolist())) < 2:
        raise DataError(f"{features_dir}: the validation split has a single class; AUC is undefined")
    return data


def build_base_model(base: str, teacher: nn.Module, card: Mapping[str, Any], data: _Data,
                     cfg: CompressConfig) -> tuple[nn.Module, dict[str, Any], str, dict[str, Any]]:
    """(fp32 torch model, its hyperparams, technique, params) of ``base`` built from the trained ``teacher``."""

    kind, ratio = parse_base(base)
    family = card["family"]
    hyperparams = resolved_hyperparams(family, card.get("hyperparams", {}))
    seed_everything(cfg.seed)
    if kind == FP32:
        return teacher, hyperparams, "export+ort_optimize", {}
    if family not in MLP_HYPERPARAMS:
        raise CompressionError(f"model family {family!r} has no hidden MLP layer to prune or shrink")
    if kind == PRUNED:
        log.info("%s: pruning %.0f%% of the hidden MLP units", base, 100 * ratio)
        model = prune_model(teacher, data.spec, ratio)
        before = [layer.out_features for layer in prunable_layers(teacher)]
        after = [layer.out_features for layer in prunable_layers(model)]
        history: list[dict[str, float]] = []
        if cfg.finetune_epochs > 0:
            model, history = distill(model, teacher, data.train, data.val, cfg, epochs=cfg.finetune_epochs,
                                     lr=cfg.finetune_lr, evaluate_initial=True,
                                     train_embeddings=cfg.finetune_embeddings, label=f"{family}/{base} fine-tune")
        hp = architecture_hyperparams(family, model, hyperparams)
        params = {"ratio": ratio, "hidden_units_before": before, "hidden_units_after": after,
                  "finetune_history": history, "importance": "L2 magnitude"}
        return model, hp, "prune+finetune", params
    hp = student_hyperparams(family, hyperparams, cfg)
    student = build_model(family, data.spec, **hp)
    log.info("%s: distilling a student %s from the teacher", family, hp)
    student, history = distill(student, teacher, data.train, data.val, cfg, epochs=cfg.distill_epochs,
                               lr=cfg.distill_lr, label=f"{family}/student")
    params = {"hyperparams": hp, "alpha": cfg.distill_alpha, "temperature": cfg.distill_temperature,
              "distill_history": history}
    return student, hp, "distill", params


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def _precision_file(base_dir: Path, precision: str) -> Path:
    return base_dir / ("model.onnx" if precision == FP32 else f"model.{precision}.onnx")


def _quantize(precision: str, src: Path, dst: Path, data: _Data, cfg: CompressConfig) -> dict[str, Any]:
    # Looked up at call time (module globals), so each one can be replaced on its own, e.g. in tests.
    if precision == "int8_dynamic":
        return quantize_dynamic_int8(src, dst, cfg)
    if precision == "int8_static":
        calibration = {k: v[-cfg.calibration_rows:] for k, v in numpy_inputs(data.train).items()}
        return quantize_static_int8(src, dst, calibration, cfg)
    if precision == "fp16":
        return convert_fp16(src, dst)
    raise ConfigError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")


def build_base_variants(base: str, model_dir: Path, features_dir: Path, out_dir: Path,
                        cfg: CompressConfig | None = None) -> list[Variant]:
    """Build ``base`` from the trained model in ``model_dir`` and every precision of it, under ``out_dir/base``.

    ``out_dir/<base>/`` becomes a model folder (state_dict.pt, spec.json, model.json, model.onnx) plus
    ``model.<precision>.onnx`` per precision and ``variants.json``. Returns the fp32 variant first, then one
    per precision of ``cfg.precisions``; whatever fails becomes a variant with ``error`` set, the others go on.
    Raises only for what makes every variant impossible (no model, no features, an unknown base name).
    """
    import torch

    cfg = cfg or CompressConfig()
    parse_base(base)
    model_dir, features_dir, out_dir = Path(model_dir), Path(features_dir), Path(out_dir)
    teacher, spec, card = load_trained(model_dir)
    family = card["family"]
    data = _load_data(features_dir)
    if data.spec != spec:
        raise DataError(f"{features_dir} has a different feature spec than the model in {model_dir}")
    base_dir = out_dir / base
    base_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.train_threads)
    started = time.time()

    def failed(precision: str, message: str, technique: str = "") -> Variant:
        return Variant(name=variant_name(base, precision), base=base, precision=precision, technique=technique,
                       family=family, error=message)

    try:
        model, hyperparams, technique, params = build_base_model(base, teacher, card, data, cfg)
        model.eval()
        onnx_path = _export(model, spec, base_dir, card, hyperparams, base, params)
    except RecForgeError as err:
        message = str(err)
        log.warning("%s/%s: %s", family, base, message)
        return _write([failed(FP32, message)] + [failed(p, f"base {base} failed: {message}") for p in cfg.precisions],
                      base_dir)
    except Exception as err:  # noqa: BLE001 - pruning/training/export failures must not stop other bases
        log.exception("%s/%s failed", family, base)
        message = _one_line(err)
        return _write([failed(FP32, message)] + [failed(p, f"base {base} failed: {message}") for p in cfg.precisions],
                      base_dir)

    parity = {k: v[:cfg.parity_rows] for k, v in numpy_inputs(data.test).items()}
    bench = latency_inputs(data.test, cfg.latency_batch)
    parameters, macs = count_parameters(model), macs_per_item(model, spec)
    common = {"family": family, "base": base, "parameters": parameters, "macs_per_item": macs}
    fp32 = Variant(name=base, precision=FP32, technique=technique, params=params, **common)
    fp32.params = {**params, "teacher_parameters": count_parameters(teacher),
                   "teacher_macs_per_item": macs_per_item(teacher, spec)}
    _measure(fp32, onnx_path, model, parity, bench, cfg)
    fp32.torch_latency_ms = torch_latency_ms(model, bench, cfg.threads, cfg.latency_repeats)
    if base == FP32:
        fp32.params.update(_ort_optimized(onnx_path, bench, cfg))
    variants = [fp32]
    for precision in cfg.precisions:
        name = variant_name(base, precision)
        variant = Variant(name=name, precision=precision, technique=f"{technique}+{precision}", **common)
        try:
            log.info("%s/%s: quantizing", family, name)
            dst = _precision_file(base_dir, precision)
            details = _quantize(precision, onnx_path, dst, data, cfg)
            dtypes = weight_dtypes(dst)
            variant.params = {**{k: v for k, v in params.items() if not k.endswith("history")}, **details,
                              "weight_dtypes": dtypes}
            _check_weight_dtypes(precision, dtypes)
            _measure(variant, dst, model, parity, bench, cfg)
        except Exception as err:  # noqa: BLE001 - one precision failing must not stop the others
            log.warning("%s/%s failed: %s", family, name, _one_line(err), exc_info=True)
            variant.error = _one_line(err)
        variants.append(variant)
    log.info("%s/%s: %d variants in %.1fs", family, base, len(variants), time.time() - started)
    return _write(variants, base_dir)


def _check_weight_dtypes(precision: str, dtypes: Mapping[str, Mapping[str, int]]) -> None:
    """CompressionError unless the embedding tables were really converted to the precision's storage type."""
    expected = {"int8_dynamic": {"int8", "uint8"}, "int8_static": {"int8", "uint8"}, "fp16": {"float16"}}[precision]
    left = {dtype: n for dtype, n in dtypes["embedding"].items() if dtype not in expected}
    if left:
        raise CompressionError(f"{precision} left embedding tables unconverted: {left}")


def _export(model: nn.Module, spec: FeatureSpec, base_dir: Path, card: Mapping[str, Any],
            hyperparams: Mapping[str, Any], base: str, params: Mapping[str, Any]) -> Path:
    """Write the base as a model folder (rebuildable with build_model) and export it to ONNX."""
    import torch


    rebuilt = build_model(card["family"], spec, **hyperparams)
    rebuilt.load_state_dict(model.state_dict())  # strict: proves the hyperparams describe the architecture
    torch.save(model.state_dict(), base_dir / "state_dict.pt")
    (base_dir / "spec.json").write_text(spec.to_json())
    model_card = {"family": card["family"], "hyperparams": hyperparams, "compressed_from": card.get("run_id"),
                  "base": base, "teacher_test_auc": card.get("test_auc"),
                  "compression": {k: v for k, v in params.items() if not k.endswith("history")}}
    (base_dir / "model.json").write_text(json.dumps(model_card, indent=2, default=_json_default))
    return export_onnx(model, spec, base_dir / "model.onnx")


def _measure(variant: Variant, onnx_path: Path, model: nn.Module, parity: Mapping[str, np.ndarray],
             bench: Mapping[str, np.ndarray], cfg: CompressConfig) -> None:
    variant.onnx_path = str(onnx_path)
    variant.size_bytes = weight_bytes(onnx_path)
    variant.file_bytes = onnx_path.stat().st_size
    variant.onnx_max_abs_diff = onnx_max_abs_diff(model, onnx_path, parity)
    if not math.isfinite(variant.onnx_max_abs_diff):
        raise CompressionError(f"{variant.name} produces non-finite probabilities")
    variant.latency_ms = onnx_latency_ms(onnx_path, bench, cfg.threads, cfg.latency_repeats)


def _ort_optimized(onnx_path: Path, bench: Mapping[str, np.ndarray], cfg: CompressConfig) -> dict[str, Any]:
    """Save ORT's optimised graph next to the export and report whether it helps (session start, latency)."""
    try:
        optimized = optimize_onnx(onnx_path, onnx_path.with_name("model.ort.onnx"))
        start = time.perf_counter()
        onnx_session(onnx_path, cfg.threads)
        init_export = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        onnx_session(optimized, cfg.threads)
        init_optimized = (time.perf_counter() - start) * 1e3
        return {"ort_optimized_onnx": str(optimized), "ort_optimization": "extended (saved) + all (at load)",
                "session_init_ms": round(init_export, 2), "session_init_ms_ort_optimized": round(init_optimized, 2),
                "latency_ms_ort_optimized": onnx_latency_ms(optimized, bench, cfg.threads, cfg.latency_repeats)}
    except Exception as err:  # noqa: BLE001 - the plain export stays usable
        log.warning("saving the ORT-optimised graph failed: %s", _one_line(err))
        return {"ort_optimized_error": _one_line(err)}


def _write(variants: list[Variant], base_dir: Path) -> list[Variant]:
    (base_dir / "variants.json").write_text(json.dumps([v.to_dict() for v in variants], indent=2))
    return variants


def compress_model(model_dir: Path, features_dir: Path, out_dir: Path, cfg: CompressConfig | None = None,
                   bases: Sequence[str] | None = None) -> list[Variant]:
    """Every variant of every base (``plan_bases`` for the model's family unless ``bases`` is given)."""
    cfg = cfg or CompressConfig()
    if bases is None:
        card = json.loads((Path(model_dir) / "model.json").read_text()) if (Path(model_dir) / "model.json").exists() \
            else {}
        bases = plan_bases(cfg, card.get("family"))
    variants: list[Variant] = []
    for base in bases:
        variants += build_base_variants(base, model_dir, features_dir, out_dir, cfg)
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.compression.compress", description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="trained model folder (state_dict.pt...)")
    parser.add_argument("--features", type=Path, required=True, help="features folder the model was trained on")
    parser.add_argument("--out", type=Path, required=True, help="output folder; one subfolder per base")
    parser.add_argument("--base", action="append", help="base to build (fp32, prunedNN, student); repeatable; "
                                                        "default: every base of the config")
    parser.add_argument("--config", default="{}", help="CompressConfig overrides as JSON")
    args = parser.parse_args(argv)

    def step() -> list[dict[str, Any]]:
        overrides = json_object(args.config)
        cfg = CompressConfig.from_dict(overrides)
        for base in args.base or []:
            parse_base(base)
        return [v.to_dict() for v in compress_model(args.model_dir, args.features, args.out, cfg, args.base)]

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
