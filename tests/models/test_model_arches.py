"""Unit tests of the building blocks in recforge.models/arches.py."""

from __future__ import annotations

import pytest
import torch

from recforge.models.arches import (
    MLP,
    AttentionPooling,
    BilinearAttention,
    CatInteraction,
    DotInteraction,
    GRUCell,
    JaggedSumPooling,
    PooledEmbedding,
    SequenceGRU,
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


def copy_into_torch_gru(cell: GRUCell) -> torch.nn.GRU:
    """An nn.GRU computing what ``cell`` computes: torch's update gate z is our 1 - u (= sigmoid of minus ours)."""
    gru = torch.nn.GRU(cell.input_dim, cell.hidden_dim, batch_first=True)
    sign = torch.ones(3 * cell.hidden_dim, 1)
    sign[cell.hidden_dim : 2 * cell.hidden_dim] = -1.0
    with torch.no_grad():
        gru.weight_ih_l0.copy_(cell.input_gates.weight * sign)
        gru.bias_ih_l0.copy_(cell.input_gates.bias * sign.squeeze(1))
        gru.weight_hh_l0.copy_(cell.state_gates.weight * sign)
        gru.bias_hh_l0.copy_(cell.state_gates.bias * sign.squeeze(1))
    return gru


def test_sequence_gru_matches_torch_gru_oldest_first():
    torch.manual_seed(0)
    arch = SequenceGRU(input_dim=3, hidden_dim=5)
    sequence = torch.randn(4, 6, 3)  # slot 0 = most recent
    with torch.no_grad():
        states = arch(sequence, torch.ones(4, 6))
        expected, _ = copy_into_torch_gru(arch.cell)(sequence.flip(1))  # oldest first
    assert states.shape == (4, 6, 5)
    torch.testing.assert_close(states, expected.flip(1), atol=1e-6, rtol=1e-5)


def test_sequence_gru_skips_padding_slots():
    torch.manual_seed(0)
    arch = SequenceGRU(input_dim=3, hidden_dim=4)
    real = torch.randn(2, 3, 3)
    padded = torch.cat([real, torch.randn(2, 2, 3) * 100], dim=1)  # padding slots hold garbage
    mask = torch.tensor([[1.0, 1, 1, 0, 0]] * 2)
    with torch.no_grad():
        states = arch(padded, mask)
        torch.testing.assert_close(states[:, 0], arch(real, torch.ones(2, 3))[:, 0])
        assert torch.equal(states[:, 3:], torch.zeros(2, 2, 4))  # nothing seen yet: the initial state
        assert torch.equal(arch(padded, torch.zeros(2, 5)), torch.zeros(2, 5, 4))


def test_augru_update_scale_zero_keeps_the_state_and_one_is_a_gru_step():
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    x, state = torch.randn(5, 3), torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(cell(x, state, torch.zeros(5)), state)
        torch.testing.assert_close(cell(x, state, torch.ones(5)), cell(x, state))
        halfway = cell(x, state, torch.full((5,), 0.5))
    assert not torch.allclose(halfway, state) and not torch.allclose(halfway, cell(x, state))
    with pytest.raises(ValueError, match="hidden_dim"):
        GRUCell(3, 0)


def test_bilinear_attention_is_a_softmax_over_real_slots():
    torch.manual_seed(0)
    attention = BilinearAttention(state_dim=4, target_dim=3)
    states, target = torch.randn(3, 5, 4), torch.randn(3, 3)
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        weights = attention(states, target, mask)
        scores = (states * attention.project(target).unsqueeze(1)).sum(-1)
    torch.testing.assert_close(weights[0], torch.softmax(scores[0], dim=0))
    torch.testing.assert_close(weights[1, :2], torch.softmax(scores[1, :2], dim=0))
    assert torch.equal(weights[1, 2:], torch.zeros(3)) and torch.equal(weights[2], torch.zeros(5))


def test_jagged_sum_pooling_matches_embedding_bag():
    weight = torch.randn(12, 4)
    lengths = torch.tensor([[2, 0, 1], [1, 3, 2]])  # an empty bag included
    indices = torch.randint(0, 12, (int(lengths.sum()),))
    pooled = JaggedSumPooling(weight)(indices, lengths)
    flat = lengths.flatten()
    expected = torch.nn.functional.embedding_bag(indices, weight, torch.cumsum(flat, 0) - flat, mode="sum")
    assert pooled.shape == (2, 3, 4)
    torch.testing.assert_close(pooled, expected.reshape(2, 3, 4), atol=1e-5, rtol=1e-5)
    assert torch.equal(pooled[0, 1], torch.zeros(4))
