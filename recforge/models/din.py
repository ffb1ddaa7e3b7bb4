"""Deep Interest Network (Zhou et al. 2018): the user's history is pooled with attention weights that
depend on the target item, so the interest vector is specific to the candidate being scored."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import (
    MLP,
    AttentionPooling,
    PooledEmbedding,
    SparseArch,
    check_layer_sizes,
    check_positive_int,
    init_embedding_,
    padding_mask,
)


class DIN(nn.Module):
    """DIN over the shared input contract.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32.
    ``logits`` -> [B]; ``forward`` -> P(positive) [B].

    The target item id and the history items share one item table, so the attention compares vectors
    from the same space. The target item is represented by its id embedding plus its pooled genres;
    the attention query is the id embedding alone, because history carries item ids only.
    MLP input: concat(other sparse embeddings [B, (F-1)*D], target id [B, D], target genres [B, D],
    interest [B, D], dense [B, Dd]).

    Args:
        embedding_dim: D of every embedding.
        attention_mlp: hidden sizes of the local activation unit (the output layer to 1 score is added).
        mlp: hidden sizes of the final MLP (the output layer to 1 logit is added).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 16,
        attention_mlp: Sequence[int] = (32, 16),
        mlp: Sequence[int] = (128, 64),
    ):
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        attention_mlp = check_layer_sizes("attention_mlp", attention_mlp)
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
        self.attention = AttentionPooling(embedding_dim, attention_mlp)
        mlp_in = (len(other_columns) + 3) * embedding_dim + spec.num_dense
        self.mlp = MLP(mlp_in, (*mlp, 1), final_activation=False)

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        target = self.item_embedding(sparse[:, self.item_column])  # [B, D]
        # Padding slots (id 0) are masked out of the attention, whatever row 0 of the shared table holds
        # (it is also the "unknown item" vector of the target).
        interest = self.attention(self.item_embedding(history), target, padding_mask(history))  # [B, D]
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
