"""Deep Interest Evolution Network (Zhou et al. 2019): a GRU extracts an interest state after each item of the
user's history, and an attention-updated GRU (AUGRU) evolves those interests towards the target item, so the
final interest is the user's current interest *in this candidate*.

:class:`DIEN` is the MovieLens model of the shared input contract; :class:`SyntheticDIEN` is its DeepRecSys-scale
counterpart over the jagged synthetic contract of :mod:`recforge.models.synthetic` (preset ``DIEN_SPEC``).
DIEN's auxiliary loss (next-item prediction from each extracted state, with negative sampling) is not used:
training optimises the click (like) loss alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import (
    MLP,
    BilinearAttention,
    JaggedSumPooling,
    PooledEmbedding,
    SequenceGRU,
    SparseArch,
    check_layer_sizes,
    check_positive_int,
    init_embedding_,
    padding_mask,
)
from recforge.models.synthetic import DienSpec


class InterestEvolution(nn.Module):
    """Interest extractor GRU + target attention + AUGRU: DIEN's user-interest arch.

    Inputs ``behaviors`` [B, L, D] (most recent first, 0-padded), ``target`` [B, D] and ``mask`` [B, L]
    -> the final evolved interest through a Linear(H, H) [B, H]. That Linear adds nothing a following MLP could
    not learn; it is there so that torch-pruning's dependency graph (structured pruning of the MLP after it) can
    read the interest's width, which it cannot trace back through 2L unrolled GRU steps.
    """

    def __init__(self, embedding_dim: int, interest_dim: int):
        super().__init__()
        self.extractor = SequenceGRU(embedding_dim, interest_dim)
        self.attention = BilinearAttention(interest_dim, embedding_dim)
        self.evolution = SequenceGRU(interest_dim, interest_dim)
        self.output = nn.Linear(interest_dim, interest_dim)

    @property
    def interest_dim(self) -> int:
        return self.evolution.hidden_dim

    def forward(self, behaviors: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        interests = self.extractor(behaviors, mask)  # [B, L, H]
        weights = self.attention(interests, target, mask)  # [B, L]
        evolved = self.evolution(interests, mask, update_scale=weights)  # [B, L, H]
        return self.output(evolved[:, 0])  # slot 0 = after the most recent item


class DIEN(nn.Module):
    """DIEN over the shared input contract.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32.
    ``logits`` -> [B]; ``forward`` -> P(positive) [B].

    As in :class:`recforge.models.din.DIN`, the target item and the history share one item table; the target
    is its id embedding plus its pooled genres, the attention query its id embedding. MLP input:
    concat(other sparse embeddings [B, (F-1)*D], target id [B, D], target genres [B, D], interest [B, H],
    dense [B, Dd]).

    Args:
        embedding_dim: D of every embedding.
        interest_dim: H, the state size of both GRUs.
        mlp: hidden sizes of the final MLP (the output layer to 1 logit is added); the paper's 200-80.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 16,
        interest_dim: int = 16,
        mlp: Sequence[int] = (200, 80),
    ):
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        interest_dim = check_positive_int("interest_dim", interest_dim)
        mlp = check_layer_sizes("mlp", mlp)
        self.item_column = spec.index("item_id")
        other_columns = [i for i in range(spec.num_sparse) if i != self.item_column]
        # Not persistent: derived from the spec, so it stays out of the state dict.
        self.register_buffer("other_columns", torch.tensor(other_columns, dtype=torch.long), persistent=False)
        self.item_embedding = nn.Embedding(spec.num_items, embedding_dim)
        init_embedding_(self.item_embedding.weight)
        self.other_sparse = SparseArch(
            [spec.sparse_features[i] for i in other_columns],
            [spec.sparse_cardinalities[i] for i in other_columns],
            embedding_dim,
        )
        self.genre_pool = PooledEmbedding(spec.num_genres, embedding_dim)
        self.interest = InterestEvolution(embedding_dim, interest_dim)
        mlp_in = (len(other_columns) + 2) * embedding_dim + interest_dim + spec.num_dense
        self.mlp = MLP(mlp_in, (*mlp, 1), final_activation=False)

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        target = self.item_embedding(sparse[:, self.item_column])  # [B, D]
        # padding slots are masked out of both GRUs and the attention, whatever row 0 of the item table holds
        interest = self.interest(self.item_embedding(history), target, padding_mask(history))  # [B, H]
        mlp_in = torch.cat(
            [
                self.other_sparse(torch.index_select(sparse, 1, self.other_columns)).flatten(start_dim=1),
                target,
                self.genre_pool(genres),
                interest,
                dense,
            ],
            dim=1,
        )
        return self.mlp(mlp_in).squeeze(-1)

    def forward(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse, genres, history, dense))


class SyntheticDIEN(nn.Module):
    """DeepRecSys-scale DIEN with random weights over the synthetic jagged contract (``dense``, ``indices``,
    ``lengths``; :mod:`recforge.models.synthetic`).

    Table layout (DeepRecSys' ``dien.json``): table 0 is the user profile, tables 1..T-3 the behaviour sequence
    (one pooled vector per step, oldest last as in the MovieLens history), table T-2 the candidate, T-1 the
    context. MLP input: concat(interest [B, H], user, candidate, context [B, 3D], dense [B, Dd]) ->
    ``spec.top_mlp`` (last size 1). Every behaviour step holds at least one id, so no step is padding.
    """

    def __init__(self, spec: DienSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.interest = InterestEvolution(spec.embedding_dim, spec.interest_dim)
            self.top = MLP(spec.top_input_dim, spec.top_mlp, final_activation=False)
            weight = torch.empty(spec.num_tables * spec.rows_per_table, spec.embedding_dim)
            bound = 1.0 / math.sqrt(spec.rows_per_table)
            weight.uniform_(-bound, bound)
        self.pooling = JaggedSumPooling(weight)
        self.requires_grad_(False)  # inference only: random weights are never trained

    def logits(self, dense: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(indices, lengths)  # [B, T, D]
        behaviors = pooled[:, 1:-2]  # [B, T-3, D]
        mask = (lengths[:, 1:-2] > 0).to(pooled.dtype)
        candidate = pooled[:, -2]
        interest = self.interest(behaviors, candidate, mask)
        top_in = torch.cat([interest, pooled[:, 0], candidate, pooled[:, -1], dense], dim=1)
        return self.top(top_in).squeeze(-1)

    def forward(self, dense: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense, indices, lengths))
