"""Neural Collaborative Filtering, NeuMF variant (He et al. 2017): a GMF branch (element-wise product of
user and item embeddings) and an MLP branch over their concatenation, fused by a final linear layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import MLP, check_layer_sizes, check_positive_int, init_embedding_


class NCF(nn.Module):
    """NeuMF over the user_id and item_id columns of ``sparse``, optionally with dense side features.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32;
    sparse's user_id and item_id columns are used, and ``dense`` when ``use_dense`` is set; the rest
    is accepted for the shared input contract. ``logits`` -> [B]; ``forward`` -> P(positive) [B].

    Args:
        gmf_dim: D of the GMF branch's user/item embeddings.
        mlp_embedding_dim: D of the MLP branch's user/item embeddings (separate tables, as in NeuMF).
        mlp_layers: layer sizes of the MLP branch over concat(user, item) [B, 2 * mlp_embedding_dim].
        use_dense: also feed the dense features [B, Dd] to the MLP branch (NeuMF with side features).
            Pure collaborative filtering cannot use the past rating statistics that make even the
            logistic-regression baseline strong on a time split, so this is on by default.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        gmf_dim: int = 16,
        mlp_embedding_dim: int = 16,
        mlp_layers: Sequence[int] = (64, 32, 16),
        use_dense: bool = True,
    ):
        super().__init__()
        gmf_dim = check_positive_int("gmf_dim", gmf_dim)
        mlp_embedding_dim = check_positive_int("mlp_embedding_dim", mlp_embedding_dim)
        mlp_layers = check_layer_sizes("mlp_layers", mlp_layers)
        self.user_column = spec.index("user_id")
        self.item_column = spec.index("item_id")
        num_users, num_items = spec.cardinality("user_id"), spec.num_items
        self.gmf_user = nn.Embedding(num_users, gmf_dim)
        self.gmf_item = nn.Embedding(num_items, gmf_dim)
        self.mlp_user = nn.Embedding(num_users, mlp_embedding_dim)
        self.mlp_item = nn.Embedding(num_items, mlp_embedding_dim)
        for table in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            init_embedding_(table.weight)
        self.use_dense = bool(use_dense)
        self.mlp = MLP(2 * mlp_embedding_dim + (spec.num_dense if self.use_dense else 0), mlp_layers)
        self.fusion = nn.Linear(gmf_dim + mlp_layers[-1], 1)

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        users, items = sparse[:, self.user_column], sparse[:, self.item_column]
        gmf = self.gmf_user(users) * self.gmf_item(items)  # [B, gmf_dim]
        towers = [self.mlp_user(users), self.mlp_item(items)] + ([dense] if self.use_dense else [])
        mlp = self.mlp(torch.cat(towers, dim=1))  # [B, mlp_layers[-1]]
        return self.fusion(torch.cat([gmf, mlp], dim=1)).squeeze(-1)

    def forward(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse, genres, history, dense))
