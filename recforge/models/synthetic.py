"""DeepRecSys-scale synthetic DLRMs (RMC1/RMC2/RMC3) with random weights, and their synthetic inputs.

The MovieLens models of ``recforge.contracts.features`` have one id per sparse feature and a handful of small tables;
production ranking models (DeepRecSys, Gupta et al., ISCA 2020) have 8 to 32 tables of 0.5M to 4M rows and
pool 20 to 120 ids per table per item. That workload cannot be expressed in the one-id-per-feature contract,
so these models have a contract of their own (torchrec's "jagged" layout, as an EmbeddingBag takes it):

==========  =========  ============  =================================================================
name        dtype      shape         meaning
==========  =========  ============  =================================================================
dense       float32    [B, Dd]       dense features
indices     int64      [N]           rows of the fused table (table t's row r is ``t * R + r``), bag by
                                     bag: item 0's bags for tables 0..T-1, then item 1's, ...
lengths     int64      [B, T]        ids pooled per (item, table); ``lengths.sum() == N``
probability float32    [B]           sigmoid of the top MLP's logit
==========  =========  ============  =================================================================

B = batch, T = tables, R = rows per table, D = embedding dim, Dd = dense features.

Sum pooling (``recforge.models.arches.JaggedSumPooling``, the ``pooling`` module of every synthetic model: the RMCs
here, MT-WnD and DIEN) is a prefix sum over the gathered rows read at the bag ends (``C[end] - C[start]``): it
exports to plain Gather/CumSum/Sub (``nn.EmbeddingBag`` exports to an ONNX ``Loop``, which onnxruntime runs element
by element), and needs no padding, so a bag of 300 ids costs 300 gathers, not ``max_pooling``.

Inputs (``synthetic_inputs``, ``InputPool``): ids per table ~ Zipf(alpha) over the table's rows (rank k has
probability ∝ k^-alpha; ranks are scattered over the rows by a fixed per-table bijection, so hot rows are
not contiguous), pooling factor per (item, table) ~ lognormal with the paper's lookups per table as its mean.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recforge.models.arches import MLP, JaggedSumPooling, check_layer_sizes, check_positive_int

INPUT_NAMES: tuple[str, ...] = ("dense", "indices", "lengths")
OUTPUT_NAME = "probability"

# Rows of every table are scaled by this factor unless told otherwise. The three published models at full size
# hold 10.7 GB of fp32 tables (RMC1 4.1 GB, RMC2 4.1 GB, RMC3 2.6 GB), more than the 6 GiB this project allows a
# benchmark on its 24 GiB, 2-core machine (other work runs beside it, and onnxruntime holds a second copy of the
# weights while torch still has the first). At 0.25 the full set is 2.7 GB (2.5 GiB) of tables: RMC1 1M rows x 8,
# RMC2 125K rows x 32, RMC3 500K rows x 10 -- each table still 16 to 128 MB, far larger than the CPU's caches,
# so the gathers still go to DRAM.
DEFAULT_TABLE_ROWS_SCALE = 0.25
MEMORY_BUDGET_BYTES = 6 * 2**30
DEFAULT_ZIPF_ALPHA = 1.05
DEFAULT_POOLING_SIGMA = 0.25  # sigma of log(pooling factor); the paper gives only the mean lookups per table
_ROW_STRIDE = 2_654_435_761  # Knuth's multiplicative-hash constant (prime): rank -> row scatter


@dataclass(frozen=True)
class JaggedTables:
    """The embedding-table part of a synthetic model: T tables of R rows of D floats, fused into one table, looked
    up with jagged ids (``lookups_per_table`` per table per item on average), beside ``dense_features`` floats."""

    name: str
    num_tables: int
    rows_per_table: int
    lookups_per_table: float  # mean pooling factor (ids per table per item)
    embedding_dim: int
    dense_features: int

    def __post_init__(self) -> None:
        kind = type(self).__name__
        for key in ("num_tables", "rows_per_table", "embedding_dim", "dense_features"):
            check_positive_int(f"{kind}.{key}", getattr(self, key))
        if self.rows_per_table < 2:
            raise ValueError(f"{kind}.rows_per_table must be >= 2, got {self.rows_per_table}")
        if not 0 < self.lookups_per_table < 1e5:
            raise ValueError(f"{kind}.lookups_per_table must be in (0, 1e5), got {self.lookups_per_table}")
        if self.num_tables * self.rows_per_table >= 2**31:
            raise ValueError(f"{kind}: the fused table must have fewer than 2^31 rows")

    def scaled(self, table_rows_scale: float):
        """The same model with ``rows_per_table`` scaled (at least 1,000 rows, so that Zipf still has a tail)."""
        if not 0 < table_rows_scale <= 1:
            raise ValueError(f"table_rows_scale must be in (0, 1], got {table_rows_scale}")
        return replace(self, rows_per_table=max(1000, round(self.rows_per_table * table_rows_scale)))

    @property
    def table_bytes(self) -> int:
        """fp32 bytes of all embedding tables."""
        return 4 * self.num_tables * self.rows_per_table * self.embedding_dim

    @property
    def lookups_per_item(self) -> float:
        return self.num_tables * self.lookups_per_table

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RmcSpec(JaggedTables):
    """Architecture and table layout of one synthetic DLRM (all tables alike, as in DeepRecSys' configs).

    ``bottom_mlp`` maps the ``dense_features`` to the dense vector; the "cat" interaction concatenates it with
    the T pooled D-dim vectors, and ``top_mlp`` (last size 1) maps that to the logit.
    """

    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layer_sizes("RmcSpec.bottom_mlp", self.bottom_mlp)
        check_layer_sizes("RmcSpec.top_mlp", self.top_mlp)
        if self.top_mlp[-1] != 1:
            raise ValueError(f"RmcSpec.top_mlp must end with 1 (the logit), got {self.top_mlp}")

    @property
    def interaction_dim(self) -> int:
        return self.bottom_mlp[-1] + self.num_tables * self.embedding_dim

    @property
    def mlp_parameters(self) -> int:
        total, width = 0, self.dense_features
        for size in self.bottom_mlp:
            total, width = total + width * size + size, size
        width = self.interaction_dim
        for size in self.top_mlp:
            total, width = total + width * size + size, size
        return total

    @property
    def mlp_macs_per_item(self) -> int:
        """Multiply-accumulates of the two MLPs per item (the pooling's adds are counted as bytes, not MACs)."""
        return mlp_macs(self.dense_features, self.bottom_mlp) + mlp_macs(self.interaction_dim, self.top_mlp)


def mlp_macs(width: int, sizes: Sequence[int]) -> int:
    """Multiply-accumulates per item of Linear layers ``width`` -> sizes[0] -> sizes[1] -> ..."""
    total = 0
    for size in sizes:
        total, width = total + width * size, size
    return total


# DeepRecSys' own model definitions (harvard-acc/DeepRecSys, models/configs/dlrm_rm{1,2,3}.json, the configs the
# paper's measurements were run with): arch_embedding_size = T tables of R rows, arch_sparse_feature_size = D,
# num_indices_per_lookup = lookups per table, arch_mlp_bot = "Dd-<bottom layers>", arch_mlp_top = top layers,
# arch_interaction_op = cat. (The paper's Table I gives the same table counts and lookups -- RMC1 8 tables x 80,
# RMC2 32 x 120, RMC3 10 x 20 -- but not the rows; recforge.models.families' DLRM presets take only the MLP widths from
# Table I for the MovieLens-sized models, which differ slightly from these configs.)
RMC1 = RmcSpec("rmc1", num_tables=8, rows_per_table=4_000_000, lookups_per_table=80, embedding_dim=32,
               dense_features=128, bottom_mlp=(64, 32), top_mlp=(256, 64, 1))
RMC2 = RmcSpec("rmc2", num_tables=32, rows_per_table=500_000, lookups_per_table=120, embedding_dim=64,
               dense_features=256, bottom_mlp=(128, 64), top_mlp=(128, 64, 1))
RMC3 = RmcSpec("rmc3", num_tables=10, rows_per_table=2_000_000, lookups_per_table=20, embedding_dim=32,
               dense_features=2560, bottom_mlp=(1024, 256, 32), top_mlp=(512, 256, 1))
RMC_SPECS: dict[str, RmcSpec] = {s.name: s for s in (RMC1, RMC2, RMC3)}


def rmc_spec(name: str, table_rows_scale: float = DEFAULT_TABLE_ROWS_SCALE) -> RmcSpec:
    """The published RMC ``name`` ("rmc1", "rmc2", "rmc3") with its tables scaled by ``table_rows_scale``."""
    if name not in RMC_SPECS:
        raise ValueError(f"unknown synthetic model {name!r}; choose one of {sorted(RMC_SPECS)}")
    return RMC_SPECS[name].scaled(table_rows_scale)


def full_set_table_bytes(table_rows_scale: float = DEFAULT_TABLE_ROWS_SCALE,
                         names: Sequence[str] = tuple(RMC_SPECS)) -> int:
    """fp32 table bytes of the models ``names`` at ``table_rows_scale`` (the RAM budget's main term)."""
    return sum(rmc_spec(n, table_rows_scale).table_bytes for n in names)


# --------------------------------------------------------------------------------------------------------------
# The model


class SyntheticDLRM(nn.Module):
    """DLRM over T sum-pooled tables (one fused [T*R, D] table), a bottom MLP and a "cat" interaction.

    Inputs ``dense`` [B, Dd] float32, ``indices`` [N] int64, ``lengths`` [B, T] int64 (module docstring);
    ``forward`` -> probability [B]. Weights are random (seeded): tables U(-1/sqrt(R), 1/sqrt(R)) as DLRM's
    reference initialises them, Linear layers torch's default.
    """

    def __init__(self, spec: RmcSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.bottom = MLP(spec.dense_features, spec.bottom_mlp)  # ReLU on every layer, as in DLRM
            self.top = MLP(spec.interaction_dim, spec.top_mlp, final_activation=False)
        weight = torch.empty(spec.num_tables * spec.rows_per_table, spec.embedding_dim)
        bound = 1.0 / math.sqrt(spec.rows_per_table)
        weight.uniform_(-bound, bound, generator=generator)
        self.pooling = JaggedSumPooling(weight)  # the one pooling module every synthetic model has
        self.requires_grad_(False)  # inference only: random weights are never trained

    def pooled(self, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[N] ids + [B, T] lengths -> [B, T*D] per-table sums (empty bag -> zeros)."""
        return self.pooling(indices, lengths).flatten(start_dim=1)

    def logits(self, dense: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        interacted = torch.cat([self.bottom(dense), self.pooled(indices, lengths)], dim=1)  # [B, interaction_dim]
        return self.top(interacted).squeeze(-1)

    def forward(self, dense: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense, indices, lengths))


def reference_forward(model: SyntheticDLRM, dense: torch.Tensor, indices: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
    """The same probabilities through ``nn.functional.embedding_bag`` (sum): an independent check of ``pooled``."""
    flat = lengths.flatten()
    offsets = torch.cumsum(flat, 0) - flat
    pooled = nn.functional.embedding_bag(indices, model.pooling.table.weight, offsets, mode="sum")
    interacted = torch.cat([model.bottom(dense), pooled.reshape(lengths.shape[0], -1)], dim=1)
    return torch.sigmoid(model.top(interacted).squeeze(-1))


# --------------------------------------------------------------------------------------------------------------
# Synthetic inputs


@functools.lru_cache(maxsize=8)
def _zipf_cdf(rows: int, alpha: float) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -alpha)
    cdf /= cdf[-1]
    return cdf


def zipf_ranks(rows: int, n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` ranks in [1, rows] of a truncated Zipf law: P(k) ∝ k^-alpha (inverse-CDF sampling)."""
    check_positive_int("rows", rows)
    if not 0 < alpha <= 5:
        raise ValueError(f"zipf alpha must be in (0, 5], got {alpha}")
    cdf = _zipf_cdf(int(rows), float(alpha))
    ranks = np.searchsorted(cdf, rng.random(n), side="right") + 1
    return np.minimum(ranks, rows).astype(np.int64)


def _stride(rows: int) -> int:
    stride = _ROW_STRIDE % rows or 1
    while math.gcd(stride, rows) != 1:
        stride += 1
    return stride


def rank_to_row(ranks: np.ndarray, rows: int, table: int = 0) -> np.ndarray:
    """Row of each Zipf rank in a table of ``rows`` rows: a bijection of [1, rows] onto [0, rows) that differs
    per table (so the hot rows of different tables, and of one table, are scattered, as in real traces)."""
    shift = (table * 7_919 + 17) % rows
    return ((ranks - 1) * _stride(rows) + shift) % rows


def pooling_factors(mean: float, sigma: float, n: int, rng: np.random.Generator,
                    max_pooling: int | None = None) -> np.ndarray:
    """``n`` pooling factors ~ round(lognormal) with E = ``mean`` (mu = ln(mean) - sigma²/2), clipped to
    [1, max_pooling] (default 8 x mean). sigma = 0 gives ``round(mean)`` every time."""
    if not 0 < mean < 1e5 or not 0 <= sigma <= 3:
        raise ValueError(f"pooling mean must be in (0, 1e5) and sigma in [0, 3], got {mean}, {sigma}")
    cap = max_pooling or max(1, math.ceil(8 * mean))
    mu = math.log(mean) - sigma**2 / 2
    raw = rng.lognormal(mu, sigma, n) if sigma > 0 else np.full(n, float(mean))
    return np.clip(np.rint(raw), 1, cap).astype(np.int64)


def synthetic_inputs(spec: RmcSpec, batch: int, *, alpha: float = DEFAULT_ZIPF_ALPHA,
                     sigma: float = DEFAULT_POOLING_SIGMA, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch of ``batch`` items: dense ~ N(0, 1), lengths ~ lognormal, ids ~ Zipf per table (fused rows)."""
    check_positive_int("batch", batch)
    rng = np.random.default_rng(seed)
    lengths = pooling_factors(spec.lookups_per_table, sigma, batch * spec.num_tables, rng).reshape(
        batch, spec.num_tables)
    table_of_id = np.repeat(np.tile(np.arange(spec.num_tables), batch), lengths.ravel())
    ranks = zipf_ranks(spec.rows_per_table, len(table_of_id), alpha, rng)
    local = np.empty_like(ranks)
    for t in range(spec.num_tables):
        where = table_of_id == t
        local[where] = rank_to_row(ranks[where], spec.rows_per_table, t)
    return {
        "dense": rng.standard_normal((batch, spec.dense_features), dtype=np.float32),
        "indices": (local + table_of_id * spec.rows_per_table).astype(np.int64),
        "lengths": lengths,
    }


class InputPool:
    """A pool of pre-generated items from which sub-batches of n items are cut without generating anything.

    ``batch(n)`` returns the next window of n consecutive items (wrapping round the pool), so successive
    sub-batches touch different rows (a fixed batch would keep its rows in cache and flatter the gathers).
    Windows are views except for the [n, T] lengths and the ids of a window that wraps. Thread-safe enough for
    the load generator: a race only makes two workers read the same window.
    """

    def __init__(self, spec: RmcSpec, items: int, *, alpha: float = DEFAULT_ZIPF_ALPHA,
                 sigma: float = DEFAULT_POOLING_SIGMA, seed: int = 0):
        self.spec = spec
        self.items = check_positive_int("items", items)
        pool = synthetic_inputs(spec, self.items, alpha=alpha, sigma=sigma, seed=seed)
        self.dense, self.indices, self.lengths = pool["dense"], pool["indices"], pool["lengths"]
        self.item_start = np.concatenate([[0], np.cumsum(self.lengths.sum(axis=1))])  # [items+1]
        self._next = 0

    @classmethod
    def sized(cls, spec: RmcSpec, max_batch: int, index_bytes: int = 64 * 2**20, **kwargs) -> InputPool:
        """A pool of about ``index_bytes`` of ids (at least 2 x max_batch items)."""
        items = max(2 * max_batch, int(index_bytes / (8 * spec.lookups_per_item)))
        return cls(spec, min(items, 1 << 20), **kwargs)

    def batch(self, n: int) -> dict[str, np.ndarray]:
        if not 1 <= n <= self.items:
            raise ValueError(f"batch of {n} items outside [1, {self.items}] (the pool)")
        start = self._next
        self._next = (start + n) % self.items
        if start + n <= self.items:
            rows = slice(start, start + n)
            return {"dense": self.dense[rows], "lengths": self.lengths[rows],
                    "indices": self.indices[self.item_start[start]:self.item_start[start + n]]}
        order = np.r_[start:self.items, 0:start + n - self.items]
        first, second = self.indices[self.item_start[start]:], self.indices[:self.item_start[start + n - self.items]]
        return {"dense": self.dense[order], "lengths": self.lengths[order],
                "indices": np.concatenate([first, second])}


def torch_inputs(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}


# --------------------------------------------------------------------------------------------------------------
# ONNX


def export_synthetic_onnx(model: SyntheticDLRM, path: str | os.PathLike, opset: int = 18) -> Path:
    """Export ``model`` to ONNX at ``path`` with dynamic B and N; the weights go to ``<path>.data`` beside it
    (external data: the tables exceed protobuf's 2 GB at full scale). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch_inputs(synthetic_inputs(model.spec, 4, seed=1))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    nnz = torch.export.Dim("nnz", min=2, max=1 << 30)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        torch.onnx.export(
            model.eval(), tuple(example[n] for n in INPUT_NAMES), str(path), input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True, verbose=False, external_data=True,
            dynamic_shapes={"dense": {0: batch}, "indices": {0: nnz}, "lengths": {0: batch}},
        )
    return path


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The .onnx file and its external-data files (for sizes and clean-up)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    return [path, *(path.parent / loc for loc in sorted(locations))]


__all__ = [
    "DEFAULT_TABLE_ROWS_SCALE", "INPUT_NAMES", "InputPool", "OUTPUT_NAME", "RMC_SPECS", "RmcSpec", "SyntheticDLRM",
    "export_synthetic_onnx", "full_set_table_bytes", "mlp_macs", "onnx_files", "pooling_factors", "rank_to_row",
    "reference_forward", "rmc_spec", "synthetic_inputs", "torch_inputs", "zipf_ranks",
]


# --------------------------------------------------------------------------------------------------------------
# The other DeepRecSys families at full scale: multi-task Wide&Deep and DIEN (their models: recforge.models.mt_wnd,
# recforge.models.dien). Same jagged inputs as the RMCs, so ``synthetic_inputs`` and ``InputPool`` serve them too.


@dataclass(frozen=True)
class MtWndSpec(JaggedTables):
    """Multi-task Wide&Deep: concat(dense, T pooled vectors) -> ``shared_mlp`` -> ``num_tasks`` heads
    ``task_mlp`` (last size 1); task 0's probability is the output."""

    shared_mlp: tuple[int, ...]
    task_mlp: tuple[int, ...]
    num_tasks: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layer_sizes("MtWndSpec.shared_mlp", self.shared_mlp)
        if check_layer_sizes("MtWndSpec.task_mlp", self.task_mlp)[-1] != 1:
            raise ValueError(f"MtWndSpec.task_mlp must end with 1 (the logit), got {self.task_mlp}")
        check_positive_int("MtWndSpec.num_tasks", self.num_tasks)

    @property
    def interaction_dim(self) -> int:
        return self.dense_features + self.num_tables * self.embedding_dim

    @property
    def mlp_macs_per_item(self) -> int:
        """Multiply-accumulates of the Linear layers per item: the shared bottom and every task's head (the model
        computes them all; the output is task 0's)."""
        return (mlp_macs(self.interaction_dim, self.shared_mlp)
                + self.num_tasks * mlp_macs(self.shared_mlp[-1], self.task_mlp))


@dataclass(frozen=True)
class DienSpec(JaggedTables):
    """DIEN: table 0 user, tables 1..T-3 the behaviour sequence, T-2 the candidate, T-1 the context; GRU +
    AUGRU of ``interest_dim`` over the sequence; concat(interest, user, candidate, context, dense) -> ``top_mlp``
    (last size 1)."""

    interest_dim: int
    top_mlp: tuple[int, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_tables < 4:
            raise ValueError(f"DienSpec.num_tables must be >= 4 (user, behaviours, candidate, context), got "
                             f"{self.num_tables}")
        check_positive_int("DienSpec.interest_dim", self.interest_dim)
        if check_layer_sizes("DienSpec.top_mlp", self.top_mlp)[-1] != 1:
            raise ValueError(f"DienSpec.top_mlp must end with 1 (the logit), got {self.top_mlp}")

    @property
    def sequence_length(self) -> int:
        return self.num_tables - 3

    @property
    def top_input_dim(self) -> int:
        return self.interest_dim + 3 * self.embedding_dim + self.dense_features

    @property
    def mlp_macs_per_item(self) -> int:
        """Multiply-accumulates of the Linear layers per item: per behaviour step the extractor GRU's gates
        (3 x (D + H) x H) and the AUGRU's (3 x 2H x H), the attention's projection of the target (D x H) and the
        interest's output layer (H x H) once, and the top MLP."""
        d, h = self.embedding_dim, self.interest_dim
        steps = self.sequence_length * (3 * (d + h) * h + 3 * 2 * h * h)
        return steps + d * h + h * h + mlp_macs(self.top_input_dim, self.top_mlp)


# DeepRecSys' models/configs/mtwnd.json and dien.json: 41 tables of 500K rows and 2 of 5M (here all 43 at 500K:
# the fused layout has one row count; the 5M tables would add 4.5M rows each), D = 32, one id per table,
# arch_mlp_bot = 512 dense features. MT-WnD: arch_mlp_top 1024-512 is the shared part and arch_mlp_tasks
# 512-256-128 each task's head (here 256-128 and the logit; the paper's N tasks, 2 here: like and rating >= 3 on
# MovieLens). DIEN: arch_mlp_top 200-80-2 (here 200-80-1: one logit, not a 2-way softmax), GRU hidden size 64
# (DeepRecSys' default); its dense features, which DeepRecSys' DIEN ignores, join the top MLP's input here.
MTWND_SPEC = MtWndSpec("mt_wnd", num_tables=43, rows_per_table=500_000, lookups_per_table=1, embedding_dim=32,
                       dense_features=512, shared_mlp=(1024, 512), task_mlp=(256, 128, 1), num_tasks=2)
DIEN_SPEC = DienSpec("dien", num_tables=43, rows_per_table=500_000, lookups_per_table=1, embedding_dim=32,
                     dense_features=512, interest_dim=64, top_mlp=(200, 80, 1))
FAMILY_SPECS: dict[str, JaggedTables] = {s.name: s for s in (MTWND_SPEC, DIEN_SPEC)}


def family_spec(name: str, table_rows_scale: float = DEFAULT_TABLE_ROWS_SCALE) -> JaggedTables:
    """The synthetic ``name`` ("mt_wnd", "dien") with its tables scaled by ``table_rows_scale``."""
    if name not in FAMILY_SPECS:
        raise ValueError(f"unknown synthetic model {name!r}; choose one of {sorted(FAMILY_SPECS)}")
    return FAMILY_SPECS[name].scaled(table_rows_scale)


# every synthetic preset by name: the RMCs, MT-WnD and DIEN
SYNTHETIC_SPECS: dict[str, JaggedTables] = {**RMC_SPECS, **FAMILY_SPECS}
SYNTHETIC_NAMES = tuple(SYNTHETIC_SPECS)


def synthetic_preset(name: str, table_rows_scale: float = DEFAULT_TABLE_ROWS_SCALE) -> JaggedTables:
    """The synthetic preset ``name`` (one of ``SYNTHETIC_NAMES``) with its tables scaled by ``table_rows_scale``."""
    if name not in SYNTHETIC_SPECS:
        raise ValueError(f"unknown synthetic model {name!r}; choose one of {list(SYNTHETIC_SPECS)}")
    return SYNTHETIC_SPECS[name].scaled(table_rows_scale)


__all__ += ["DIEN_SPEC", "FAMILY_SPECS", "MTWND_SPEC", "SYNTHETIC_NAMES", "SYNTHETIC_SPECS", "DienSpec",
            "JaggedTables", "MtWndSpec", "family_spec", "synthetic_preset"]
