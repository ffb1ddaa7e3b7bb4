"""Fused embedding bags: T tables pooled by one FBGEMM call, stored in fp32 or rowwise-quantized 8 or 4 bits.

The models of ``recforge.models.synthetic`` spend their time in embedding lookups: an RMC2 item gathers 3,840 rows.
Their exported ONNX graph gathers every row into an [N, D] tensor and then reduces it (Gather + CumSum); the
kernels PyTorch ships from FBGEMM read each row once and add it straight into its bag's output, and read it from
a table stored in fewer bytes:

=========  =============================================================  ======================================
precision  storage per row (D values)                                     kernel (``torch.ops.quantized``)
=========  =============================================================  ======================================
fp32       D float32                                                      ``nn.functional.embedding_bag``
int8       D uint8 codes + float32 scale + bias (``x ≈ scale·q + bias``)  ``embedding_bag_byte_rowwise_offsets``
int4       D/2 bytes of 4-bit codes + float16 scale + bias                ``embedding_bag_4bit_rowwise_offsets``
=========  =============================================================  ======================================

Rowwise quantization (``quantized::embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack``) gives each row
its own range: code q = round((x - min) / scale) with scale = (max - min) / (2^bits - 1), so every value is off by
at most scale/2 (plus the float16 rounding of the 4-bit scale and bias): :func:`row_error_bound`, checked by
:func:`check_quantization`, which the parity gate can call to reject a table naming it.

:class:`FusedEmbeddingBags` takes the synthetic models' jagged layout: ``indices`` [N] int64 rows of the fused
table (table t's row r is ``row_offsets[t] + r``), bag by bag (item 0's bags for tables 0..T-1, then item 1's, ...),
``lengths`` [B, T] int64, optional ``per_sample_weights`` [N] float32 (sum pooling only, as ``nn.EmbeddingBag``)
-> [B, T*D] float32. Every call checks, in O(B·T) plus a min/max over the ids, that the lengths match the ids and
that no id lies outside the fused table (no read out of bounds: the call is refused with a ``DataError`` naming the
table of the offending bag); ``id_problem(..., every_id=True)`` (``strict_ids=True``: on every call) also
checks, in O(N), that each id lies in its own bag's table. The module is TorchScript-scriptable
(``recforge.models.synthetic_fused`` serves it so).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Final

import torch
from torch import nn

from recforge.core.errors import ConfigError, DataError

TABLE_PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int4")
POOLING_MODES: tuple[str, ...] = ("sum", "mean")
QUANTIZED_BITS = {"int8": 8, "int4": 4}
ROW_SCALE_BIAS_BYTES = {"int8": 8, "int4": 4}  # a stored row's scale and bias: float32 (int8), float16 (int4)
FP16_UNIT_ROUNDOFF = 2.0**-11  # relative rounding error of a float16 (the 4-bit rows' scale and bias)
FP16_MIN_SUBNORMAL = 2.0**-24
FBGEMM_INT8_EPSILON = 1e-8  # added to a row's range by FBGEMM's 8-bit rowwise quantization


def packed_row_bytes(precision: str, dim: int) -> int:
    """Bytes of one stored row of ``dim`` values: fp32 4·D, int8 D + 8 (fp32 scale, bias), int4 D/2 + 4 (fp16)."""
    check_precision(precision)
    return {"fp32": 4 * dim, "int8": dim + ROW_SCALE_BIAS_BYTES["int8"],
            "int4": math.ceil(dim / 2) + ROW_SCALE_BIAS_BYTES["int4"]}[precision]


def check_precision(precision: str) -> str:
    if precision not in TABLE_PRECISIONS:
        raise ConfigError(f"table precision must be one of {TABLE_PRECISIONS}, got {precision!r}")
    return precision


def pack_table(weight: torch.Tensor, precision: str) -> torch.Tensor:
    """[R, D] float32 -> the stored table: the same tensor (fp32) or FBGEMM's packed rows ([R, D+8] / [R, D/2+4]
    uint8). 4-bit rows need an even D."""
    check_precision(precision)
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ConfigError(f"an embedding table must be a 2-D float tensor, got {tuple(weight.shape)} {weight.dtype}")
    weight = weight.detach().float().contiguous()
    if precision == "int8":
        return torch.ops.quantized.embedding_bag_byte_prepack(weight)
    if precision == "int4":
        if weight.shape[1] % 2:
            raise ConfigError(f"int4 tables need an even embedding dim (two codes a byte), got {weight.shape[1]}")
        return torch.ops.quantized.embedding_bag_4bit_prepack(weight)
    return weight


def stored_dim(stored: torch.Tensor, precision: str) -> int:
    """The embedding dim D of a stored table (ConfigError when its dtype or width fits no D)."""
    expected = torch.float32 if check_precision(precision) == "fp32" else torch.uint8
    if stored.dim() != 2 or stored.dtype != expected:
        raise ConfigError(f"a stored {precision} table must be a 2-D {expected} tensor, got "
                          f"{tuple(stored.shape)} {stored.dtype}")
    width = int(stored.shape[1])
    dim = {"fp32": width, "int8": width - 8, "int4": 2 * (width - 4)}[precision]
    if dim < 1:
        raise ConfigError(f"a stored {precision} table of {width} bytes a row holds no values")
    return dim


def unpack_table(stored: torch.Tensor, precision: str) -> torch.Tensor:
    """The float32 values a stored table pools (scale·q + bias per row for the quantized ones)."""
    if check_precision(precision) == "int8":
        return torch.ops.quantized.embedding_bag_byte_unpack(stored)
    if precision == "int4":
        return torch.ops.quantized.embedding_bag_4bit_unpack(stored)
    return stored


def row_error_bound(weight: torch.Tensor, precision: str) -> torch.Tensor:
    """[R] the largest |x - dequantized x| rowwise quantization may cause in each row of ``weight`` [R, D]:
    scale/2 with scale = (max - min) / (2^bits - 1); for 4-bit rows also the float16 rounding of the stored bias
    (min) and scale (up to 2^-11 relative each, the scale's error times 15 codes). fp32 rows: 0. A row whose
    range overflows float16 (|x| > 65504 in a 4-bit table) gets a finite bound but an infinite error."""
    weight = weight.detach().float()
    if check_precision(precision) == "fp32":
        return torch.zeros(weight.shape[0])
    low, high = weight.min(dim=1).values, weight.max(dim=1).values
    scale = (high - low) / (2 ** QUANTIZED_BITS[precision] - 1)
    magnitude = torch.maximum(low.abs(), high.abs())
    if precision == "int8":  # fp32 scale and bias: their rounding is float32's
        # + FBGEMM's epsilon: it quantizes with 255 / (range + 1e-8), off by up to 1e-8 in a row of tiny range
        return 0.5 * scale * (1 + 1e-5) + 1e-6 * magnitude + FBGEMM_INT8_EPSILON
    # float16 roundings of a near-zero row's scale and bias are absolute (subnormal steps of 2^-24), not relative:
    # up to half a step each on the bias and on the scale times 15 codes
    return 0.5 * scale + FP16_UNIT_ROUNDOFF * (low.abs() + 16 * scale) + 16 * FP16_MIN_SUBNORMAL + 1e-6 * magnitude


@dataclass(frozen=True)
class TableQuantization:
    """How far one quantized table's pooled values are from its fp32 rows."""

    table: str
    precision: str
    rows: int
    max_abs_error: float
    mean_abs_error: float
    worst_row: int
    error_to_bound: float  # max over rows of (row's max error / row's bound); > 1 means over the bound
    fp32_bytes: int
    stored_bytes: int

    @property
    def within_bound(self) -> bool:
        return self.error_to_bound <= 1.0

    def to_dict(self) -> dict:
        return asdict(self) | {"within_bound": self.within_bound}


def table_quantization(name: str, reference: torch.Tensor, stored: torch.Tensor, precision: str,
                       chunk_rows: int = 1 << 16) -> TableQuantization:
    """Errors of the stored table ``stored`` against its fp32 ``reference`` [R, D], ``chunk_rows`` rows at a time
    (a 1M-row table is never unpacked whole)."""
    rows, dim = reference.shape
    worst_ratio, worst_row, max_error, total = 0.0, 0, 0.0, 0.0
    for start in range(0, rows, chunk_rows):
        ref = reference[start:start + chunk_rows].detach().float()
        errors = (unpack_table(stored[start:start + chunk_rows], precision) - ref).abs()
        errors = torch.where(torch.isnan(errors), torch.full_like(errors, math.inf), errors)  # NaN is over any bound
        row_max = errors.max(dim=1).values
        bound = row_error_bound(ref, precision)
        ratio = torch.where(row_max == 0, torch.zeros_like(row_max),
                            row_max / bound.clamp(min=torch.finfo(torch.float32).tiny))
        ratio = torch.nan_to_num(ratio, nan=math.inf)  # a NaN row (its bound too) is over any bound
        chunk_worst = int(torch.argmax(ratio))
        if float(ratio[chunk_worst]) > worst_ratio:
            worst_ratio, worst_row = float(ratio[chunk_worst]), start + chunk_worst
        max_error = max(max_error, float(row_max.max()))
        total += float(errors.sum())
    return TableQuantization(table=name, precision=precision, rows=rows, max_abs_error=max_error,
                             mean_abs_error=total / max(1, rows * dim), worst_row=worst_row,
                             error_to_bound=worst_ratio, fp32_bytes=4 * rows * dim,
                             stored_bytes=stored.numel() * stored.element_size())


def check_quantization(reports: Sequence[TableQuantization], max_abs_error: float | None = None) -> None:
    """DataError naming the first table whose error exceeds its rowwise bound (:func:`row_error_bound`) or, when
    given, ``max_abs_error``: what the parity gate calls before a quantized-table variant is compared at all."""
    for r in reports:
        if not r.within_bound:
            raise DataError(f"embedding table {r.table!r} ({r.precision}): quantization error "
                            f"{r.max_abs_error:.3g} in row {r.worst_row} is {r.error_to_bound:.3g}x its rowwise bound "
                            "(non-finite values, or beyond float16's range for 4-bit rows); keep this table in fp32")
        if max_abs_error is not None and r.max_abs_error > max_abs_error:
            raise DataError(f"embedding table {r.table!r} ({r.precision}): quantization error {r.max_abs_error:.3g} "
                            f"exceeds the allowed {max_abs_error:.3g}; use more bits for this table")


def check_tables(tables: Mapping[str, torch.Tensor], precision: str,
                 max_abs_error: float | None = None) -> list[TableQuantization]:
    """Quantize each named fp32 table to ``precision``, measure it, and refuse (DataError naming the table) one over
    its bound: the whole check for a model whose tables a variant would store in fewer bits."""
    reports = [table_quantization(name, weight, pack_table(weight, precision), precision)
               for name, weight in tables.items()]
    check_quantization(reports, max_abs_error)
    return reports


def check_declared_rows(table_names: Sequence[str], table_rows: Sequence[int], declared_rows: Sequence[int],
                        where: str = "the model") -> None:
    """ConfigError naming the first table with fewer rows than the ids its model declares (checked at load)."""
    if len(declared_rows) != len(table_rows):
        raise ConfigError(f"{where} holds {len(table_rows)} embedding tables but declares {len(declared_rows)}")
    for name, have, declared in zip(table_names, table_rows, declared_rows, strict=True):
        if declared > have:
            raise ConfigError(f"embedding table {name!r} of {where} has {have} rows, but its ids go up to "
                              f"{declared - 1}: an id past row {have - 1} would read outside the table; "
                              "re-export the model with its full tables")


class FusedEmbeddingBags(nn.Module):
    """T tables of R_t rows × D in one stored table, pooled (sum or mean) per (item, table) by one fused kernel.

    ``forward(indices [N] int64, lengths [B, T] int64, per_sample_weights [N] float32 | None) -> [B, T*D]``; an
    empty bag pools to zeros. Layout and checks: module docstring. ``weight`` holds the stored table (float32
    [ΣR, D], or uint8 packed rows), ``row_offsets`` [T+1] the first fused row of each table.
    """

    precision: Final[str]
    mode: Final[str]
    num_tables: Final[int]
    embedding_dim: Final[int]
    total_rows: Final[int]
    table_names: list[str]
    strict_ids: bool

    def __init__(self, weight: torch.Tensor, table_rows: Sequence[int], precision: str = "fp32", mode: str = "sum",
                 table_names: Sequence[str] | None = None, strict_ids: bool = False, prepacked: bool = False):
        """``weight``: the fused [ΣR, D] float table, packed here into ``precision``'s rows; with ``prepacked``,
        already the stored table (``pack_table``'s output), used as it is."""
        super().__init__()
        check_precision(precision)
        if mode not in POOLING_MODES:
            raise ConfigError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
        table_rows = [int(r) for r in table_rows]
        if not table_rows or min(table_rows) < 1:
            raise ConfigError(f"table_rows must be a non-empty list of row counts >= 1, got {table_rows}")
        if weight.dim() != 2 or weight.shape[0] != sum(table_rows):
            raise ConfigError(f"the fused table has shape {tuple(weight.shape)}, but table_rows add up to "
                              f"{sum(table_rows)} rows")
        names = list(table_names) if table_names is not None else [f"table{t}" for t in range(len(table_rows))]
        if len(names) != len(table_rows):
            raise ConfigError(f"{len(names)} table names for {len(table_rows)} tables")
        dim = stored_dim(weight, precision) if prepacked else int(weight.shape[1])
        self.precision, self.mode = precision, mode
        self.num_tables, self.embedding_dim, self.total_rows = len(table_rows), dim, sum(table_rows)
        self.table_names = names
        self.strict_ids = strict_ids
        self.register_buffer("weight", weight if prepacked else pack_table(weight, precision))
        self.register_buffer("row_offsets", torch.tensor([0, *torch.tensor(table_rows).cumsum(0).tolist()]))

    @classmethod
    def from_tables(cls, tables: Sequence[torch.Tensor], **kwargs) -> "FusedEmbeddingBags":
        """One fused table from T separate [R_t, D] tables (copied once into one tensor)."""
        return cls(torch.cat([t.detach().float() for t in tables]), [t.shape[0] for t in tables], **kwargs)

    def table_rows(self) -> list[int]:
        return (self.row_offsets[1:] - self.row_offsets[:-1]).tolist()

    def stored_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def quantization(self, reference_tables: Sequence[torch.Tensor]) -> list[TableQuantization]:
        """Per table, the stored values against the fp32 tables they were made from."""
        if len(reference_tables) != self.num_tables:
            raise ConfigError(f"{len(reference_tables)} reference tables for {self.num_tables} tables")
        reports = []
        for t, reference in enumerate(reference_tables):
            start, end = int(self.row_offsets[t]), int(self.row_offsets[t + 1])
            if tuple(reference.shape) != (end - start, self.embedding_dim):
                raise ConfigError(f"reference of table {self.table_names[t]!r} has shape {tuple(reference.shape)}, "
                                  f"expected {(end - start, self.embedding_dim)}")
            reports.append(table_quantization(self.table_names[t], reference, self.weight[start:end], self.precision))
        return reports

    @torch.jit.export
    def id_problem(self, indices: torch.Tensor, lengths: torch.Tensor, every_id: bool = False) -> str:
        """"" when the ids and lengths can be pooled, else what is wrong (naming the table). O(B·T) + a min/max
        over the ids; with ``every_id`` also each id against its own table's rows (O(N))."""
        if lengths.dim() != 2 or lengths.shape[1] != self.num_tables:
            return f"lengths must be [batch, {self.num_tables}] (one bag per table), got {list(lengths.shape)}"
        flat = lengths.reshape(-1)
        if flat.numel() > 0 and int(flat.min()) < 0:
            return "lengths must be >= 0"
        if int(flat.sum()) != indices.numel():
            return f"lengths add up to {int(flat.sum())} ids but {indices.numel()} were given"
        if indices.numel() == 0:
            return ""
        if every_id:
            low = self.row_offsets[:-1].repeat(lengths.shape[0]).repeat_interleave(flat)
            high = self.row_offsets[1:].repeat(lengths.shape[0]).repeat_interleave(flat)
            bad = ((indices < low) | (indices >= high)).nonzero()
        else:
            smallest, largest = torch.aminmax(indices)
            if int(smallest) >= 0 and int(largest) < self.total_rows:
                return ""
            bad = ((indices < 0) | (indices >= self.total_rows)).nonzero()
        if bad.numel() == 0:
            return ""
        position = int(bad[0, 0])
        bag = int(torch.searchsorted(flat.cumsum(0), torch.tensor(position), right=True))
        table = bag % self.num_tables
        first = int(self.row_offsets[table])
        rows = int(self.row_offsets[table + 1]) - first
        return (f"embedding table '{self.table_names[table]}' has {rows} rows (fused rows {first}.."
                f"{first + rows - 1}), but item {bag // self.num_tables} asks it for fused row "
                f"{int(indices[position])} (id at position {position}); ids must be in their table's range")

    def forward(self, indices: torch.Tensor, lengths: torch.Tensor,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(indices, lengths, per_sample_weights)

    def pool(self, indices: torch.Tensor, lengths: torch.Tensor,
             per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """What ``forward`` returns (a method of its own, which a subclass's forward can call: TorchScript has no
        ``super()``)."""
        problem = self.id_problem(indices, lengths, self.strict_ids)
        if problem:
            if torch.jit.is_scripting():
                raise ValueError(problem)
            raise_data_error(problem)
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError("per_sample_weights need sum pooling (as nn.EmbeddingBag)")
        flat = lengths.reshape(-1)
        offsets = flat.cumsum(0) - flat
        if self.precision == "int8":
            pooled = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                self.weight, indices, offsets, False, 0, False, per_sample_weights, None, False)
        elif self.precision == "int4":
            pooled = torch.ops.quantized.embedding_bag_4bit_rowwise_offsets(
                self.weight, indices, offsets, False, 0, False, per_sample_weights, None, False)
        else:
            pooled = nn.functional.embedding_bag(indices, self.weight, offsets, mode="sum",
                                                 per_sample_weights=per_sample_weights)
        if self.mode == "mean":  # the quantized kernels pool sums only
            pooled = pooled / flat.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        return pooled.reshape(lengths.shape[0], self.num_tables * self.embedding_dim)


@torch.jit.unused
def raise_data_error(problem: str) -> None:
    """Eager mode's refusal (TorchScript raises a ValueError with the same message)."""
    raise DataError(problem)


def reference_bags(tables: Sequence[torch.Tensor], indices: torch.Tensor, lengths: torch.Tensor,
                   per_sample_weights: torch.Tensor | None = None, mode: str = "sum") -> torch.Tensor:
    """The same pooling done the plain way (gather every row, weight it, add per bag): the tests' reference."""
    fused = torch.cat([t.float() for t in tables])
    rows = fused[indices]
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(1)
    flat = lengths.reshape(-1)
    bag_of_row = torch.arange(flat.numel()).repeat_interleave(flat)
    pooled = torch.zeros(flat.numel(), fused.shape[1]).index_add_(0, bag_of_row, rows)
    if mode == "mean":
        pooled = pooled / flat.clamp(min=1).unsqueeze(1)
    return pooled.reshape(lengths.shape[0], -1)


__all__ = [
    "POOLING_MODES", "TABLE_PRECISIONS", "FusedEmbeddingBags", "TableQuantization", "check_declared_rows",
    "check_precision", "check_quantization", "check_tables", "pack_table", "packed_row_bytes", "reference_bags",
    "row_error_bound", "stored_dim", "table_quantization", "unpack_table",
]
