"""What compression builds and how: :class:`CompressConfig`, the base/precision/variant names, the precision table.

A variant is a *base* (an fp32 torch model: ``fp32``, ``pruned<NN>``, ``student``) × a *precision* (``fp32``,
``int8_dynamic``, ``int8_static``, ``fp16``, the quantized tables ``emb_int8`` / ``emb_int4``, alone or after an int8
MLP precision: ``int8_static+emb_int4``...), named ``<base>`` or ``<base>+<precision>``
(``fp32``, ``fp32+int8_static``, ``pruned50+fp16``, ``student+emb_int4``...).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, RecForgeError

FP32 = "fp32"
STUDENT = "student"
PRUNED = "pruned"

# emb_int8/emb_int4: embedding tables quantized in row groups in the ONNX graph (.table_quant);
# "<int8 MLP>+emb_int<bits>" quantizes the MLPs as that int8 precision, then the tables
Precision = Literal["int8_dynamic", "int8_static", "fp16", "emb_int8", "emb_int4",
                    "int8_dynamic+emb_int8", "int8_dynamic+emb_int4", "int8_static+emb_int8", "int8_static+emb_int4"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# built by default: every precision alone; the int8-MLP + quantized-table combinations only when asked for
# (each adds a parity-gated variant per base to every nightly: the chain's time budget, issue 12)
DEFAULT_PRECISIONS: tuple[str, ...] = ("int8_dynamic", "int8_static", "fp16", "emb_int8", "emb_int4")
TABLE_PRECISIONS: dict[str, str] = {"emb_int8": "int8", "emb_int4": "int4"}  # -> recforge.models.embedding_bags'


@dataclass(frozen=True)
class PrecisionInfo:
    """How a precision stores a model: bits per weight and the storage dtypes of its embedding tables."""

    bits: int
    embedding_dtypes: frozenset[str]


# The precision table: fp32 (the base as exported) and every precision a base can be converted to.
PRECISION_TABLE: dict[str, PrecisionInfo] = {
    FP32: PrecisionInfo(32, frozenset({"float32"})),
    "int8_dynamic": PrecisionInfo(8, frozenset({"int8", "uint8"})),
    "int8_static": PrecisionInfo(8, frozenset({"int8", "uint8"})),
    "fp16": PrecisionInfo(16, frozenset({"float16"})),
    # quantized tables: uint8 codes; tables too narrow to gain (D = 1 wide weights) stay float32
    **{f"{mlp}{tables}": PrecisionInfo(bits, frozenset({"uint8", "float32"}))
       for tables, bits in (("emb_int8", 8), ("emb_int4", 4)) for mlp in ("", "int8_dynamic+", "int8_static+")},
}

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class CompressionError(RecForgeError):
    """A model cannot be compressed as asked (nothing to prune, no student for the family, bad inputs)."""


@typed_config
class CompressConfig:
    """How the bases are built, which precisions are made of each, and how the variants are measured."""

    # fraction of each hidden MLP layer's units removed, one pruned base per ratio
    prune_ratios: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = (0.25, 0.5, 0.75)
    finetune_epochs: NonNegativeInt = 3  # distillation from the unpruned model after pruning (0 = none)
    finetune_lr: PositiveFloat = 1e-3
    finetune_embeddings: bool = False  # also train the (unpruned) embedding tables while fine-tuning
    student: bool = True
    student_embedding_dim: NonNegativeInt = 0  # 0 = the teacher's embedding dims × student_width_factor
    student_width_factor: Annotated[float, Field(gt=0, le=1)] = 0.5  # student's hidden MLP widths vs the teacher's
    distill_epochs: PositiveInt = 8  # at most; early-stopped on validation AUC
    distill_lr: PositiveFloat = 1e-3
    # weight of the label loss; 1 - alpha on the teacher's softened probabilities
    distill_alpha: Annotated[float, Field(ge=0, le=1)] = 0.1
    distill_temperature: PositiveFloat = 2.0
    patience: PositiveInt = 2  # epochs without a better validation AUC before fine-tuning/distillation stops
    batch_size: PositiveInt = 512
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-4
    max_train_rows: NonNegativeInt = 0  # 0 = all; the most recent rows otherwise (tests, smoke runs)
    precisions: tuple[Precision, ...] = DEFAULT_PRECISIONS  # any of PRECISIONS
    # emb_int8 / emb_int4: consecutive rows that share one scale and bias (1: rowwise, as FBGEMM; .table_quant).
    # At MovieLens' D = 16, 128-row int8 groups store 3.98x fewer bytes than fp32, 8-row int4 groups 7.5x, at AUC
    # >= 99.95% of fp32 on every family (docs/compression.md); 32-row int4 groups cost DLRM 0.12% AUC.
    table_row_group_int8: Annotated[int, Field(ge=1, le=4096)] = 128
    table_row_group_int4: Annotated[int, Field(ge=1, le=4096)] = 8
    calibration_rows: PositiveInt = 2048  # most recent training rows for int8_static calibration
    per_channel: bool = True  # int8_static: per-channel MatMul/Gemm weights
    # 7-bit weights. Needed on x86 without VNNI (this CI box: AVX2 only), where u8s8 kernels sum pairs of
    # products in int16 and saturate; with 8-bit per-channel weights the static model's outputs were garbage.
    reduce_range: bool = True
    # int8: layers fed by the raw dense features keep float activations (int8 weights, dequantized at run time):
    # the dense features drift out of the training range over time (past counts only grow), and rounding
    # them to 1/255 of a batch's or the calibration's range cost wide_deep 0.1% AUC
    float_input_layers: bool = True
    parity_rows: PositiveInt = 1024  # test rows for onnx_max_abs_diff
    latency_batch: PositiveInt = 256
    latency_repeats: PositiveInt = 100
    threads: PositiveInt = 2  # intra-op threads of the latency measurements (onnxruntime and PyTorch)
    # torch threads while fine-tuning/distilling. 1 by default: these models are too small to gain from a
    # second thread, and on a shared 2-core box a busy neighbour makes 2-thread OpenMP training ~10x slower.
    train_threads: PositiveInt = 1
    seed: int = 42

    def __post_init__(self) -> None:
        names = [pruned_name(r) for r in self.prune_ratios]
        if len(set(names)) != len(names):
            raise ConfigError(f"CompressConfig.prune_ratios {self.prune_ratios} give duplicate base names {names}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> CompressConfig:
        return config_from_dict(cls, values)


def pruned_name(ratio: float) -> str:
    return f"{PRUNED}{round(ratio * 100):02d}"


def variant_name(base: str, precision: str) -> str:
    return base if precision == FP32 else f"{base}+{precision}"


def parse_base(base: str) -> tuple[str, float | None]:
    """("fp32" | "pruned" | "student", prune ratio or None); ConfigError for an unknown base name."""
    if base in (FP32, STUDENT):
        return base, None
    digits = base[len(PRUNED):]
    if base.startswith(PRUNED) and digits.isdigit() and 0 < int(digits) < 100:
        return PRUNED, int(digits) / 100
    raise ConfigError(f"unknown base {base!r}; expected fp32, student or pruned<NN> (e.g. pruned50)")
