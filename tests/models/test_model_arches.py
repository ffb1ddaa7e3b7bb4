"""Unit tests of the building blocks in recforge.models/arches.py."""

from __future__ import annotations

import pytest
import torch

from recforge.models.arches import (
    MLP,
    AttentionPooling,
    CatInteraction,
    DotInteraction,
    PooledEmbedding,
    SparseArch,
    padding_mask,
)


def test_sparse_arch_shape_and_per_feature_tables():
    arch = SparseArch(["user_id", "item_id", "gender"], [10, 20, 3], embedding_dim=4)
    sparse = torch.tensor([[1, 2, 0], [9, 19, 2]])
    out = arch(sparse)
    assert out.shape == (2, 3, 4)
    assert torch.equal(out[1, 1], arch.embeddings["item_id"].weight[19])
    assert torch.equal(out[0, 2], arch.embeddings["gender"].weight[0])  # unknown has its own vector
    assert set(arch.state_dict()) == {f"embeddings.{n}.weight" for n in ("user_id", "item_id", "gender")}


def test_sparse_arch_exports_no_embedding_bag():
    arch = SparseArch(["a", "b"], [5, 5], embedding_dim=2)
    assert not any(isinstance(m, torch.nn.EmbeddingBag) for m in arch.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_names": [], "cardinalities": [], "embedding_dim": 4}, "at least one"),
        ({"feature_names": ["a"], "cardinalities": [5, 6], "embedding_dim": 4}, "cardinalities"),
        ({"feature_names": ["a", "a"], "cardinalities": [5, 6], "embedding_dim": 4}, "unique"),
        ({"feature_names": ["a.b"], "cardinalities": [5], "embedding_dim": 4}, "module name"),
        ({"feature_names": ["a"], "cardinalities": [0], "embedding_dim": 4}, "cardinality"),
        ({"feature_names": ["a"], "cardinalities": [5], "embedding_dim": 0}, "embedding_dim"),
    ],
)
def test_sparse_arch_validates_args(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseArch(**kwargs)


def test_pooled_embedding_is_mean_over_non_padding():
    pool = PooledEmbedding(num_embeddings=10, embedding_dim=3)
    weight = pool.embedding.weight
    out = pool(torch.tensor([[4, 7, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]]))
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[0], (weight[4] + weight[7]) / 2)
    torch.testing.assert_close(out[1], weight[5])
    assert torch.equal(out[2], torch.zeros(3))  # all padding: zeros, not NaN


def test_pooled_embedding_ignores_padding_row_contents():
    pool = PooledEmbedding(num_embeddings=10, embedding_dim=3)
    ids = torch.tensor([[4, 7, 0, 0], [0, 0, 0, 0]])
    before = pool(ids)
    with torch.no_grad():
        pool.embedding.weight[0] = torch.tensor([5.0, -3.0, 2.0])  # e.g. a corrupted checkpoint
    torch.testing.assert_close(pool(ids), before)


def test_pooled_embedding_validates_args():
    with pytest.raises(ValueError, match="num_embeddings"):
        PooledEmbedding(num_embeddings=1, embedding_dim=3)
    with pytest.raises(ValueError, match="embedding_dim"):
        PooledEmbedding(num_embeddings=5, embedding_dim=-1)


def test_mlp_shapes_and_final_activation():
    with_relu = MLP(6, [8, 4])
    assert with_relu(torch.randn(5, 6)).shape == (5, 4)
    assert isinstance(with_relu.layers[-1], torch.nn.ReLU)
    logit_head = MLP(6, [8, 1], final_activation=False)
    assert isinstance(logit_head.layers[-1], torch.nn.Linear)
    assert logit_head.out_features == 1


@pytest.mark.parametrize(
    ("in_features", "layer_sizes", "message"),
    [
        (0, [4], "in_features"),
        (3, [], "non-empty"),
        (3, [4, 0], "every entry of layer_sizes"),
        (3, [4, 2.5], "every entry of layer_sizes"),
        (3, 4, "sequence"),
    ],
)
def test_mlp_validates_sizes(in_features, layer_sizes, message):
    with pytest.raises(ValueError, match=message):
        MLP(in_features, layer_sizes)


def test_dot_interaction_output_size_and_values():
    num_sparse, dim = 3, 4
    interaction = DotInteraction(num_sparse, dim)
    dense, sparse = torch.randn(2, dim), torch.randn(2, num_sparse, dim)
    out = interaction(dense, sparse)
    num_vectors = num_sparse + 1  # the F of "F*(F-1)/2 + D" counts the dense vector too
    assert out.shape == (2, num_vectors * (num_vectors - 1) // 2 + dim) == (2, interaction.output_dim)
    assert torch.equal(out[:, :dim], dense)
    # Pairs come in upper-triangle order: (dense, s0), (dense, s1), ..., (s0, s1), ...
    torch.testing.assert_close(out[:, dim], (dense * sparse[:, 0]).sum(-1))
    torch.testing.assert_close(out[:, -1], (sparse[:, 1] * sparse[:, 2]).sum(-1))
    assert "pair_index" not in interaction.state_dict()


def test_cat_interaction_output_size():
    interaction = CatInteraction(num_sparse_features=3, embedding_dim=4, dense_dim=5)
    out = interaction(torch.randn(2, 5), torch.randn(2, 3, 4))
    assert out.shape == (2, 5 + 3 * 4) == (2, interaction.output_dim)


def test_interactions_validate_args():
    with pytest.raises(ValueError, match="num_sparse_features"):
        DotInteraction(0, 4)
    with pytest.raises(ValueError, match="dense_dim"):
        CatInteraction(2, 4, dense_dim=0)


def test_attention_pooling_masks_padding():
    torch.manual_seed(0)
    attention = AttentionPooling(embedding_dim=4, hidden_sizes=[8])
    history, target = torch.randn(2, 5, 4), torch.randn(2, 4)
    ids = torch.tensor([[3, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    out = attention(history, target, padding_mask(ids))
    assert out.shape == (2, 4)
    assert torch.equal(out[1], torch.zeros(4))  # all padding
    garbage = history.clone()
    garbage[:, 2:] = 100.0  # whatever sits in padded slots must not matter
    torch.testing.assert_close(attention(garbage, target, padding_mask(ids)), out)


def test_attention_pooling_is_unnormalised_weighted_sum():
    torch.manual_seed(0)
    attention = AttentionPooling(embedding_dim=2, hidden_sizes=[4])
    history, target, mask = torch.randn(1, 3, 2), torch.randn(1, 2), torch.ones(1, 3)
    features = torch.cat([history, target.expand(1, 3, 2), history - target, history * target], -1)
    scores = attention.score_mlp(features).squeeze(-1)  # no softmax, as in DIN
    torch.testing.assert_close(attention(history, target, mask), (scores.unsqueeze(-1) * history).sum(1))


def test_attention_pooling_validates_args():
    with pytest.raises(ValueError, match="hidden_sizes"):
        AttentionPooling(embedding_dim=4, hidden_sizes=[])
