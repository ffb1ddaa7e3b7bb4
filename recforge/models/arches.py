"""Small reusable building blocks ("arches") that the model families are composed from.

Shapes in the docstrings use B = batch, F = number of sparse features (embedding vectors),
D = embedding dimension, N = padded slots of a multi-valued feature (G genres or L history items).

Everything here exports to plain ONNX ops (Gather, MatMul, ReduceSum, ...): embedding lookups use
``nn.Embedding`` rather than ``nn.EmbeddingBag``, whose export becomes a slow ``Loop``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

PADDING_IDX = 0  # index 0 of every vocabulary is padding/unknown (recforge.models/spec.py)


def check_positive_int(name: str, value: int) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_layer_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    """``sizes`` as a tuple of ints; ValueError naming ``name`` unless a non-empty sequence of ints >= 1."""
    if isinstance(sizes, str) or not isinstance(sizes, Sequence) or not sizes:
        raise ValueError(f"{name} must be a non-empty sequence of layer sizes, got {sizes!r}")
    return tuple(check_positive_int(f"every entry of {name}", size) for size in sizes)


def init_embedding_(weight: torch.Tensor) -> None:
    """Uniform(-sqrt(1/n), sqrt(1/n)) for an n-row table, as in the DLRM reference implementation.

    nn.Embedding's default N(0, 1) makes dot products of D-dim vectors ~N(0, D), which saturates the
    sigmoid at initialisation.
    """
    bound = math.sqrt(1.0 / weight.shape[0])
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """[B, N] int64 ids -> [B, N] float32, 1.0 where the slot holds a real id, 0.0 for padding."""
    return (ids != PADDING_IDX).to(torch.float32)


class SparseArch(nn.Module):
    """One embedding table per single-valued sparse feature.

    Input ``sparse`` [B, F] int64 (column i is feature i) -> output [B, F, D] float32.
    Index 0 ("unknown") has a learned vector of its own: an unseen user is information, not padding.
    """

    def __init__(self, feature_names: Sequence[str], cardinalities: Sequence[int], embedding_dim: int):
        super().__init__()
        feature_names, cardinalities = tuple(feature_names), tuple(cardinalities)
        if not feature_names:
            raise ValueError("SparseArch needs at least one sparse feature")
        if len(feature_names) != len(cardinalities):
            raise ValueError(f"{len(feature_names)} feature names but {len(cardinalities)} cardinalities")
        if len(set(feature_names)) != len(feature_names):
            raise ValueError(f"feature names must be unique, got {feature_names}")
        for name in feature_names:
            if not name or "." in name:
                raise ValueError(f"feature name {name!r} cannot be used as a module name")
        for cardinality in cardinalities:
            check_positive_int("every cardinality", cardinality)
        check_positive_int("embedding_dim", embedding_dim)
        self.feature_names = feature_names
        self.embedding_dim = embedding_dim
        # Keyed by feature name so the state dict reads e.g. ``embeddings.user_id.weight``.
        self.embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(cardinality, embedding_dim)
                for name, cardinality in zip(feature_names, cardinalities, strict=True)
            }
        )
        for table in self.embeddings.values():
            init_embedding_(table.weight)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        # One plain Gather per feature; a fused EmbeddingBag would export as an ONNX Loop.
        columns = [table(sparse[:, i]) for i, table in enumerate(self.embeddings.values())]
        return torch.stack(columns, dim=1)


class PooledEmbedding(nn.Module):
    """Mean of the embeddings of a multi-valued, 0-padded id list (genres, history).

    Input ``ids`` [B, N] int64 -> output [B, D] float32. Padding slots are excluded from both the sum
    and the count; a row with no real ids pools to the zero vector.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        if check_positive_int("num_embeddings", num_embeddings) < 2:
            raise ValueError(f"num_embeddings must be >= 2 (index 0 is padding), got {num_embeddings}")
        check_positive_int("embedding_dim", embedding_dim)
        self.embedding_dim = embedding_dim
        self.embedding = nn.Embedding(num_embeddings, embedding_dim, padding_idx=PADDING_IDX)
        init_embedding_(self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight[PADDING_IDX].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = padding_mask(ids)  # [B, N]
        # padding_idx keeps row 0 at zero during training; masking as well keeps padding out even if a
        # loaded or compressed checkpoint has a non-zero row 0.
        summed = (self.embedding(ids) * mask.unsqueeze(-1)).sum(dim=1)  # [B, D]
        count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # [B, 1]
        return summed / count


class MLP(nn.Module):
    """Stack of Linear layers, each followed by ReLU (optionally not the last one).

    Input [B, in_features] -> output [B, layer_sizes[-1]]. Used as DLRM's bottom (dense) arch, with a
    ReLU on every layer, and as the top (over) arch producing a logit, with ``final_activation=False``.
    """

    def __init__(self, in_features: int, layer_sizes: Sequence[int], final_activation: bool = True):
        super().__init__()
        check_positive_int("in_features", in_features)
        self.layer_sizes = check_layer_sizes("layer_sizes", layer_sizes)
        self.in_features = in_features
        layers: list[nn.Module] = []
        width = in_features
        for i, size in enumerate(self.layer_sizes):
            layers.append(nn.Linear(width, size))
            if final_activation or i < len(self.layer_sizes) - 1:
                layers.append(nn.ReLU())
            width = size
        self.layers = nn.Sequential(*layers)

    @property
    def out_features(self) -> int:
        return self.layer_sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DotInteraction(nn.Module):
    """DLRM's dot interaction: pairwise dot products of the dense vector and the F sparse vectors.

    Inputs ``dense`` [B, D] and ``sparse`` [B, F, D] -> output [B, D + (F + 1) * F / 2]: the dense vector
    followed by the strict upper triangle (no self dot products) of the (F+1) x (F+1) Gram matrix.
    """

    def __init__(self, num_sparse_features: int, embedding_dim: int):
        super().__init__()
        check_positive_int("num_sparse_features", num_sparse_features)
        check_positive_int("embedding_dim", embedding_dim)
        self.num_sparse_features = num_sparse_features
        self.embedding_dim = embedding_dim
        num_vectors = num_sparse_features + 1
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        # Flat indices into the [F+1, F+1] Gram matrix: one Gather at export time.
        # Not persistent: derived from the constructor args, so it stays out of the state dict.
        self.register_buffer("pair_index", rows * num_vectors + cols, persistent=False)

    @property
    def output_dim(self) -> int:
        f = self.num_sparse_features + 1
        return self.embedding_dim + f * (f - 1) // 2

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # [B, F+1, D]
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # [B, F+1, F+1]
        pairs = torch.index_select(gram.flatten(start_dim=1), 1, self.pair_index)  # [B, (F+1)F/2]
        return torch.cat([dense, pairs], dim=1)


class CatInteraction(nn.Module):
    """Concatenation "interaction": the top MLP sees every vector unchanged.

    Inputs ``dense`` [B, Dd'] (the bottom MLP output) and ``sparse`` [B, F, D] -> output [B, Dd' + F * D].
    """

    def __init__(self, num_sparse_features: int, embedding_dim: int, dense_dim: int):
        super().__init__()
        check_positive_int("num_sparse_features", num_sparse_features)
        check_positive_int("embedding_dim", embedding_dim)
        check_positive_int("dense_dim", dense_dim)
        self.num_sparse_features = num_sparse_features
        self.embedding_dim = embedding_dim
        self.dense_dim = dense_dim

    @property
    def output_dim(self) -> int:
        return self.dense_dim + self.num_sparse_features * self.embedding_dim

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, sparse.flatten(start_dim=1)], dim=1)


class AttentionPooling(nn.Module):
    """DIN's local activation unit: attention-weighted sum of history embeddings w.r.t. a target.

    Inputs ``history`` [B, L, D], ``target`` [B, D] and ``mask`` [B, L] (1.0 = real item, 0.0 = padding)
    -> output [B, D]. The score of each position is an MLP over [h, t, h - t, h * t]; as in the DIN paper
    (Zhou et al. 2018) the scores are not softmax-normalised, so the pooled vector keeps the intensity of
    the user's interest. Padding positions get weight 0; an all-padding history pools to zeros.
    """

    def __init__(self, embedding_dim: int, hidden_sizes: Sequence[int] = (32, 16)):
        super().__init__()
        check_positive_int("embedding_dim", embedding_dim)
        hidden_sizes = check_layer_sizes("hidden_sizes", hidden_sizes)
        self.embedding_dim = embedding_dim
        self.score_mlp = MLP(4 * embedding_dim, (*hidden_sizes, 1), final_activation=False)

    def forward(self, history: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = target.unsqueeze(1).expand_as(history)  # [B, L, D]
        features = torch.cat([history, target, history - target, history * target], dim=-1)  # [B, L, 4D]
        scores = self.score_mlp(features).squeeze(-1) * mask  # [B, L]
        return (scores.unsqueeze(-1) * history).sum(dim=1)


class GRUCell(nn.Module):
    """One GRU step written as Linear ops, optionally attention-scaled (DIEN's AUGRU).

    Inputs ``x`` [B, I], ``state`` [B, H] and optional ``update_scale`` [B] -> new state [B, H]:
    reset r = σ(W_r x + U_r h), update u = σ(W_u x + U_u h), candidate c = tanh(W_c x + r ⊙ (U_c h)),
    h' = (1 - u') ⊙ h + u' ⊙ c with u' = u (GRU) or u' = a ⊙ u for an attention weight a (AUGRU, Zhou et al.
    2019), so a step with a = 0 leaves the state unchanged. Plain MatMul/Sigmoid/Tanh in ONNX (``nn.GRU``
    exports to a GRU op that cannot take the attention scale).
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        self.input_gates = nn.Linear(input_dim, 3 * hidden_dim)
        self.state_gates = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, x: torch.Tensor, state: torch.Tensor, update_scale: torch.Tensor | None = None) -> torch.Tensor:
        x_reset, x_update, x_candidate = self.input_gates(x).chunk(3, dim=-1)
        h_reset, h_update, h_candidate = self.state_gates(state).chunk(3, dim=-1)
        reset = torch.sigmoid(x_reset + h_reset)
        update = torch.sigmoid(x_update + h_update)
        candidate = torch.tanh(x_candidate + reset * h_candidate)
        if update_scale is not None:
            update = update * update_scale.unsqueeze(-1)
        return state + update * (candidate - state)


class SequenceGRU(nn.Module):
    """A GRU (or AUGRU) run over a 0-padded, most-recent-first sequence, oldest real item first.

    Inputs ``sequence`` [B, L, I], ``mask`` [B, L] (1.0 = real item) and optional ``update_scale`` [B, L]
    (AUGRU attention) -> states [B, L, H] in the input's slot order (slot k holds the state after the
    item in slot k). Padding slots leave the state unchanged (start: zeros). The L steps are unrolled
    (L is fixed by the feature spec), so the export is straight-line ops, not an ONNX Loop.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.cell = GRUCell(input_dim, hidden_dim)

    @property
    def hidden_dim(self) -> int:
        return self.cell.hidden_dim

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor,
                update_scale: torch.Tensor | None = None) -> torch.Tensor:
        state = sequence.new_zeros(sequence.shape[0], self.hidden_dim)
        states: list[torch.Tensor] = []
        for slot in range(sequence.shape[1] - 1, -1, -1):  # the last slot is the oldest item
            scale = None if update_scale is None else update_scale[:, slot]
            stepped = self.cell(sequence[:, slot], state, scale)
            keep = mask[:, slot].unsqueeze(-1)
            state = keep * stepped + (1.0 - keep) * state
            states.append(state)
        return torch.stack(states[::-1], dim=1)


class BilinearAttention(nn.Module):
    """DIEN's attention of interest states on the target: a_t = softmax_t(h_t · W e_target) over real slots.

    Inputs ``states`` [B, L, H], ``target`` [B, D] and ``mask`` [B, L] -> weights [B, L] that sum to 1 over
    the real slots (0 on padding; all 0 for an all-padding row).
    """

    def __init__(self, state_dim: int, target_dim: int):
        super().__init__()
        check_positive_int("state_dim", state_dim)
        check_positive_int("target_dim", target_dim)
        self.project = nn.Linear(target_dim, state_dim, bias=False)

    def forward(self, states: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (states * self.project(target).unsqueeze(1)).sum(dim=-1)  # [B, L]
        # a large finite negative (not -inf) keeps an all-padding row finite; the mask then zeroes it
        return torch.softmax(scores + (mask - 1.0) * 1e9, dim=1) * mask


class JaggedSumPooling(nn.Module):
    """Per-(item, table) sums over one fused, frozen table in the synthetic jagged layout
    (:mod:`recforge.models.synthetic`): ``indices`` [N] int64 + ``lengths`` [B, T] int64 -> [B, T, D].

    The same prefix-sum pooling as ``SyntheticDLRM.pooled`` (plain Gather/CumSum/Sub in ONNX, no Loop); an
    empty bag sums to zeros.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(weight, freeze=True)

    def forward(self, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        prefix = torch.cumsum(self.table(indices), dim=0)  # [N, D]
        ends = torch.cumsum(lengths.flatten(), dim=0)  # [B*T], exclusive end of each bag
        starts = ends - lengths.flatten()
        upper = prefix[(ends - 1).clamp(min=0)] * (ends > 0).unsqueeze(1).to(prefix.dtype)
        lower = prefix[(starts - 1).clamp(min=0)] * (starts > 0).unsqueeze(1).to(prefix.dtype)
        return (upper - lower).reshape(lengths.shape[0], lengths.shape[1], -1)
