"""Multi-task Wide & Deep (the YouTube ranker of Zhao et al. 2019, DeepRecSys' MT-WnD): one shared deep bottom
over the embeddings and several task heads on top, each with a wide (linear) part of its own.

Task 0 is the served task: ``forward``/``logits`` give its probability/logit, so the exported model keeps the
one-``probability`` serving contract; ``task_logits`` gives every task's logit for multi-task training and
evaluation. :class:`MultiTaskWideAndDeep` is the MovieLens model; :class:`SyntheticMtWnd` its DeepRecSys-scale
counterpart over the jagged synthetic contract (preset ``MTWND_SPEC`` of :mod:`recforge.models.synthetic`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.arches import (
    MLP,
    JaggedSumPooling,
    PooledEmbedding,
    SparseArch,
    check_layer_sizes,
    check_positive_int,
)
from recforge.models.synthetic import MtWndSpec


class TaskHeads(nn.Module):
    """``num_tasks`` MLPs over one shared vector: [B, in_features] -> [B, num_tasks] logits.

    Each head is ``MLP(in_features, (*hidden, 1))`` named ``heads.<t>`` (its own hidden layers, its own logit).
    """

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], num_tasks: int):
        super().__init__()
        check_positive_int("num_tasks", num_tasks)
        self.heads = nn.ModuleList(
            MLP(in_features, (*hidden_sizes, 1), final_activation=False) for _ in range(num_tasks)
        )

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(shared) for head in self.heads], dim=1)


class MultiTaskWideAndDeep(nn.Module):
    """Multi-task Wide & Deep over the shared input contract.

    Inputs: sparse [B, F] int64, genres [B, G] int64, history [B, L] int64, dense [B, Dd] float32.
    ``task_logits`` -> [B, T]; ``logits`` -> task 0's [B]; ``forward`` -> P(task 0) [B].

    Wide, per task: T-dim embeddings of every sparse id (= the weights of T linear models over one-hot ids)
    + Linear(Dd, T). Deep: concat(sparse embeddings [B, F*D], pooled genres [B, D], pooled history [B, D],
    dense [B, Dd]) -> shared MLP (ReLU on every layer) -> T heads of ``task_mlp`` + a logit.
    Task logit t = wide_t + head_t.

    Args:
        embedding_dim: D of the deep part's embeddings.
        shared_mlp: layer sizes of the shared bottom.
        task_mlp: hidden sizes of each task head (the output layer to 1 logit is added).
        num_tasks: T; the training pipeline knows labels for 2 (like = the features' label, and rating >= 3).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embedding_dim: int = 16,
        shared_mlp: Sequence[int] = (128, 64),
        task_mlp: Sequence[int] = (32,),
        num_tasks: int = 2,
    ):
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        shared_mlp = check_layer_sizes("shared_mlp", shared_mlp)
        task_mlp = check_layer_sizes("task_mlp", task_mlp)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        # Wide part: one weight per (id, task).
        self.wide_sparse = SparseArch(spec.sparse_features, spec.sparse_cardinalities, embedding_dim=num_tasks)
        self.wide_dense = nn.Linear(spec.num_dense, num_tasks)
        # Deep part.
        self.deep_sparse = SparseArch(spec.sparse_features, spec.sparse_cardinalities, embedding_dim)
        self.genre_pool = PooledEmbedding(spec.num_genres, embedding_dim)
        self.history_pool = PooledEmbedding(spec.num_items, embedding_dim)
        deep_in = (spec.num_sparse + 2) * embedding_dim + spec.num_dense
        self.shared_mlp = MLP(deep_in, shared_mlp)
        self.task_heads = TaskHeads(shared_mlp[-1], task_mlp, num_tasks)

    def task_logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        wide = self.wide_sparse(sparse).sum(dim=1) + self.wide_dense(dense)  # [B, T]
        deep_in = torch.cat(
            [
                self.deep_sparse(sparse).flatten(start_dim=1),
                self.genre_pool(genres),
                self.history_pool(history),
                dense,
            ],
            dim=1,
        )
        return wide + self.task_heads(self.shared_mlp(deep_in))  # [B, T]

    def logits(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return self.task_logits(sparse, genres, history, dense)[:, 0]

    def forward(
        self, sparse: torch.Tensor, genres: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse, genres, history, dense))


class SyntheticMtWnd(nn.Module):
    """DeepRecSys-scale MT-WnD with random weights over the synthetic jagged contract (``dense``, ``indices``,
    ``lengths``; :mod:`recforge.models.synthetic`): concat(dense, T pooled vectors) -> shared MLP -> task heads.
    ``task_logits`` -> [B, num_tasks]; ``forward`` -> P(task 0) [B]: an exported graph holds the shared part and
    task 0's head only (the one served output), as the MovieLens model's does.
    """

    def __init__(self, spec: MtWndSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        self.num_tasks = spec.num_tasks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.shared_mlp = MLP(spec.interaction_dim, spec.shared_mlp)
            self.task_heads = TaskHeads(spec.shared_mlp[-1], spec.task_mlp[:-1], spec.num_tasks)
            weight = torch.empty(spec.num_tables * spec.rows_per_table, spec.embedding_dim)
            bound = 1.0 / math.sqrt(spec.rows_per_table)
            weight.uniform_(-bound, bound)
        self.pooling = JaggedSumPooling(weight)
        self.requires_grad_(False)  # inference only: random weights are never trained

    def task_logits(self, dense: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        interacted = torch.cat([dense, self.pooling(indices, lengths).flatten(start_dim=1)], dim=1)
        return self.task_heads(self.shared_mlp(interacted))

    def forward(self, dense: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.task_logits(dense, indices, lengths)[:, 0])
