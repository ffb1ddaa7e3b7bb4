"""Variants of one trained model: each *base* (an fp32 torch model) × each *precision*, as ONNX files.

Bases (each exported to ONNX; every base folder is a model folder like training's):

* ``fp32``: the trained model as is, re-exported; the ORT-optimised graph is saved next to it.
* ``pruned<NN>``: NN% of the hidden units of every MLP pruned (:mod:`.prune`), then a short fine-tune by
  distillation from the unpruned model (:mod:`.distill`).
* ``student``: a narrower model of the same family trained by knowledge distillation (:mod:`.distill`).

Precisions (:mod:`.quantize`; quantized tables: :mod:`.table_quant`) are applied to a base's ONNX file; a failure
becomes a variant with ``error`` and the others go on. Names and the configuration are in :mod:`.config`; the CLI
is :mod:`.cli`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.core.errors import DataError, RecForgeError, first_line
from recforge.inference.onnx import numpy_inputs, onnx_session
from recforge.models import build_model, resolved_hyperparams
from recforge.models.families import FAMILIES
from recforge.pipeline.compression import quantize, table_quant
from recforge.pipeline.compression.config import (
    FP32,
    PRUNED,
    STUDENT,
    CompressConfig,
    CompressionError,
    parse_base,
    pruned_name,
    variant_name,
)
from recforge.pipeline.compression.distill import distill, student_hyperparams
from recforge.pipeline.compression.measure import (
    count_parameters,
    macs_per_item,
    onnx_max_abs_diff,
)
from recforge.pipeline.compression.model_folder import json_default, load_trained, write_model_folder
from recforge.pipeline.compression.onnx_graph import optimize_onnx, weight_bytes, weight_dtypes
from recforge.pipeline.compression.prune import architecture_hyperparams, prunable_layers, prune_model
from recforge.pipeline.data.features import load_spec, load_split
from recforge.pipeline.training.train import seed_everything

if TYPE_CHECKING:
    from torch import nn

    from recforge.contracts.features import FeatureSpec
    from recforge.pipeline.data.features import Split

log = logging.getLogger(__name__)


@dataclass
class Variant:
    """One compressed model: ``base`` (fp32 torch model) × ``precision``, as an ONNX file."""

    name: str  # "<base>" or "<base>+<precision>"
    base: str  # fp32, pruned<NN>, student
    precision: str  # fp32, int8_dynamic, int8_static, fp16, emb_int8, emb_int4, int8_static+emb_int4...
    technique: str  # e.g. "export+ort_optimize", "prune+finetune", "distill", + "+int8_static"
    family: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # ratio, student dims, quantization details...
    onnx_path: str | None = None
    size_bytes: int | None = None  # weights: sum of the ONNX initializers' bytes
    file_bytes: int | None = None
    parameters: int | None = None  # of the base torch model
    macs_per_item: float | None = None  # of the base torch model
    onnx_max_abs_diff: float | None = None  # probabilities vs the base's fp32 torch model, test sample
    # no latency here: variants are built several at once (one core each); the family's latencies are measured side
    # by side, alone, by recforge.pipeline.parity.stage.summarize_family (latency_ms_b256)
    error: str | None = None  # one line when this variant could not be built

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=json_default))


def plan_bases(cfg: CompressConfig, family: str | None = None) -> list[str]:
    """The bases ``build_base_variants`` can build, e.g. ["fp32", "pruned25", "pruned50", "pruned75", "student"].

    With ``family``, bases that family cannot have are left out (logreg has no hidden layer and no width).
    """
    bases = [FP32]
    if family is None or _compressible(family):
        bases += [pruned_name(r) for r in cfg.prune_ratios]
        if cfg.student:
            bases.append(STUDENT)
    return bases


def _compressible(family: str) -> bool:
    return family in FAMILIES and FAMILIES[family].compressible


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
    if not _compressible(family):
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
    """``<error type>: <first line of its message>``: what a variant's ``error`` says."""
    return f"{type(err).__name__}: {first_line(err, 500)}"[:500]


def _precision_file(base_dir: Path, precision: str) -> Path:
    return base_dir / ("model.onnx" if precision == FP32 else f"model.{precision}.onnx")


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
        onnx_path = write_model_folder(model, spec, base_dir, card, hyperparams, base, params)
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
    parameters, macs = count_parameters(model), macs_per_item(model, spec)
    common = {"family": family, "base": base, "parameters": parameters, "macs_per_item": macs}
    fp32 = Variant(name=base, precision=FP32, technique=technique, params=params, **common)
    fp32.params = {**params, "teacher_parameters": count_parameters(teacher),
                   "teacher_macs_per_item": macs_per_item(teacher, spec)}
    _measure(fp32, onnx_path, model, parity)
    if base == FP32:
        fp32.params.update(_ort_optimized(onnx_path))
    variants = [fp32]
    for precision in cfg.precisions:
        name = variant_name(base, precision)
        variant = Variant(name=name, precision=precision, technique=f"{technique}+{precision}", **common)
        try:
            log.info("%s/%s: quantizing", family, name)
            dst = _precision_file(base_dir, precision)
            details = table_quant.convert(precision, onnx_path, dst, data.train, cfg, spec)
            dtypes = weight_dtypes(dst)
            variant.params = {**{k: v for k, v in params.items() if not k.endswith("history")}, **details,
                              "weight_dtypes": dtypes}
            quantize.check_weight_dtypes(precision, dtypes)
            _measure(variant, dst, model, parity)
        except Exception as err:  # noqa: BLE001 - one precision failing must not stop the others
            log.warning("%s/%s failed: %s", family, name, _one_line(err), exc_info=True)
            variant.error = _one_line(err)
        variants.append(variant)
    log.info("%s/%s: %d variants in %.1fs", family, base, len(variants), time.time() - started)
    return _write(variants, base_dir)


def _measure(variant: Variant, onnx_path: Path, model: nn.Module, parity: Mapping[str, np.ndarray]) -> None:
    variant.onnx_path = str(onnx_path)
    variant.size_bytes = weight_bytes(onnx_path)
    variant.file_bytes = onnx_path.stat().st_size
    variant.onnx_max_abs_diff = onnx_max_abs_diff(model, onnx_path, parity)
    if not math.isfinite(variant.onnx_max_abs_diff):
        raise CompressionError(f"{variant.name} produces non-finite probabilities")


def _ort_optimized(onnx_path: Path) -> dict[str, Any]:
    """Save ORT's optimised graph next to the export, checked to load (timings: see ``Variant``)."""
    try:
        optimized = optimize_onnx(onnx_path, onnx_path.with_name("model.ort.onnx"))
        onnx_session(optimized, 1)
        return {"ort_optimized_onnx": str(optimized), "ort_optimization": "extended (saved) + all (at load)"}
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
