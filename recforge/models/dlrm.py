"""DLRM (Naumov et al. 2019): bottom MLP over dense features, embeddings for sparse features,
feature interaction, top MLP to a logit.

Each sparse feature, the pooled genres and the pooled history become one D-dim vector, so the
interaction sees F + 2 sparse vectors plus the dense vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import (
    MLP,
    CatInteraction,
    DotInteraction,
    PooledEmbedding,
    SparseArch,
    check_layer_sizes,
    check_positive_int,
)
from recforge.models.families import DLRM_SMALL

INTERACTIONS = ("dot", "cat")


class DLRM(nn.Module):
    """Deep Learning Recommendation Model over the shared input contract.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32.
    ``logits`` -> [B]; ``forward`` -> P(positive) [B].

    Args:
        embedding_dim: D, size of every embedding vector.
        bottom_mlp: layer sizes of the dense arch (Dd -> ... -> bottom_mlp[-1]); with the dot
            interaction the last size must equal ``embedding_dim``.
        top_mlp: layer sizes of the over arch; the last size must be 1 (the logit).
        interaction: "dot" (pairwise dot products, DLRM's default) or "cat" (concatenation).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = DLRM_SMALL["embedding_dim"],
        bottom_mlp: Sequence[int] = DLRM_SMALL["bottom_mlp"],
        top_mlp: Sequence[int] = DLRM_SMALL["top_mlp"],
        interaction: str = "dot",
    ):
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        bottom_mlp = check_layer_sizes("bottom_mlp", bottom_mlp)
        top_mlp = check_layer_sizes("top_mlp", top_mlp)
        if interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
        if top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end with 1 (the logit), got {top_mlp}")
        if interaction == "dot" and bottom_mlp[-1] != embedding_dim:
            raise ValueError(
                f"with the dot interaction bottom_mlp must end with embedding_dim={embedding_dim} "
                f"(the dense vector is dotted with the embeddings), got {bottom_mlp}"
            )
        if spec.num_dense < 1:
            raise ValueError("DLRM needs at least one dense feature for its bottom MLP")
        self.embedding_dim = embedding_dim
        self.sparse_arch = SparseArch(spec.sparse_features, spec.sparse_cardinalities, embedding_dim)
        self.genre_pool = PooledEmbedding(spec.num_genres, embedding_dim)
        self.history_pool = PooledEmbedding(spec.num_items, embedding_dim)
        self.dense_arch = MLP(spec.num_dense, bottom_mlp)  # ReLU on every layer, as in DLRM
        num_sparse_vectors = spec.num_sparse + 2  # + pooled genres + pooled history
        if interaction == "dot":
            self.interaction = DotInteraction(num_sparse_vectors, embedding_dim)
        else:
            self.interaction = CatInteraction(num_sparse_vectors, embedding_dim, bottom_mlp[-1])
        self.over_arch = MLP(self.interaction.output_dim, top_mlp, final_activation=False)

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        sparse_vectors = torch.cat(
            [
                self.sparse_arch(sparse),
                self.genre_pool(genres).unsqueeze(1),
                self.history_pool(history).unsqueeze(1),
            ],
            dim=1,
        )  # [B, F+2, D]
        interacted = self.interaction(self.dense_arch(dense), sparse_vectors)
        return self.over_arch(interacted).squeeze(-1)

    def forward(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse, genres, history, dense))
