"""Wide & Deep (Cheng et al. 2016): a linear model over one-hot ids (wide, memorisation) plus an MLP
over dense embeddings (deep, generalisation), trained jointly; their logits are summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import MLP, PooledEmbedding, SparseArch, check_layer_sizes, check_positive_int


class WideAndDeep(nn.Module):
    """Wide & Deep over the shared input contract.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32.
    ``logits`` -> [B]; ``forward`` -> P(positive) [B].

    Wide: per-feature 1-dim embeddings (= weights of a linear model over one-hot ids) + Linear(Dd, 1).
    Deep: concat(sparse embeddings [B, F*D], pooled genres [B, D], pooled history [B, D], dense [B, Dd])
    -> MLP(deep_mlp) -> Linear(., 1).

    Args:
        embedding_dim: D of the deep part's embeddings.
        deep_mlp: hidden layer sizes of the deep MLP (the output layer to 1 logit is added).
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int = 16, deep_mlp: Sequence[int] = (128, 64)):
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        deep_mlp = check_layer_sizes("deep_mlp", deep_mlp)
        # Wide part.
        self.wide_sparse = SparseArch(spec.sparse_features, spec.sparse_cardinalities, embedding_dim=1)
        self.wide_dense = nn.Linear(spec.num_dense, 1)
        # Deep part.
        self.deep_sparse = SparseArch(spec.sparse_features, spec.sparse_cardinalities, embedding_dim)
        self.genre_pool = PooledEmbedding(spec.num_genres, embedding_dim)
        self.history_pool = PooledEmbedding(spec.num_items, embedding_dim)
        deep_in = (spec.num_sparse + 2) * embedding_dim + spec.num_dense
        self.deep_mlp = MLP(deep_in, (*deep_mlp, 1), final_activation=False)

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        wide = self.wide_sparse(sparse).sum(dim=(1, 2)) + self.wide_dense(dense).squeeze(-1)  # [B]
        deep_in = torch.cat(
            [
                self.deep_sparse(sparse).flatten(start_dim=1),
                self.genre_pool(genres),
                self.history_pool(history),
                dense,
            ],
            dim=1,
        )
        deep = self.deep_mlp(deep_in).squeeze(-1)  # [B]
        return wide + deep

    def forward(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse, genres, history, dense))
