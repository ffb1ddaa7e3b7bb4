"""Logistic regression baseline: a linear model over one-hot sparse ids and the dense features."""

from __future__ import annotations

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import SparseArch


class LogisticRegression(nn.Module):
    """logit = sum_f w_f[sparse[:, f]] + dense @ v + b.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32;
    genres and history are accepted (shared input contract) but unused. ``logits`` -> [B];
    ``forward`` -> P(positive) [B]. Per-feature 1-dim embeddings are the one-hot weights w_f.
    """

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.sparse_weights = SparseArch(spec.sparse_features, spec.sparse_cardinalities, embedding_dim=1)
        self.dense_linear = nn.Linear(spec.num_dense, 1)  # its bias is the model's bias b

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return self.sparse_weights(sparse).sum(dim=(1, 2)) + self.dense_linear(dense).squeeze(-1)

    def forward(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse, genres, history, dense))
