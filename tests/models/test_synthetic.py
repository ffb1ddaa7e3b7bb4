"""Synthetic DeepRecSys-scale models: specs, shapes, pooling, the Zipf and lognormal inputs, ONNX round trip."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from recforge.models.export import onnx_op_types
from recforge.models.synthetic import (
    DEFAULT_TABLE_ROWS_SCALE,
    INPUT_NAMES,
    MEMORY_BUDGET_BYTES,
    OUTPUT_NAME,
    RMC_SPECS,
    InputPool,
    RmcSpec,
    SyntheticDLRM,
    export_synthetic_onnx,
    full_set_table_bytes,
    onnx_files,
    pooling_factors,
    rank_to_row,
    reference_forward,
    rmc_spec,
    synthetic_inputs,
    torch_inputs,
    zipf_ranks,
)

TINY = RmcSpec("tiny", num_tables=3, rows_per_table=1000, lookups_per_table=6, embedding_dim=8, dense_features=13,
               bottom_mlp=(16, 8), top_mlp=(16, 1))


def test_published_specs_and_scaling():
    # DeepRecSys' configs: tables x rows, lookups per table, embedding dim
    assert [(s.num_tables, s.rows_per_table, s.lookups_per_table, s.embedding_dim) for s in RMC_SPECS.values()] == [
        (8, 4_000_000, 80, 32), (32, 500_000, 120, 64), (10, 2_000_000, 20, 32)]
    assert rmc_spec("rmc2").rows_per_table == round(500_000 * DEFAULT_TABLE_ROWS_SCALE)
    assert rmc_spec("rmc1", 1e-6).rows_per_table == 1000  # floor: Zipf keeps a tail
    # the documented budget: the default scale fits 6 GiB of tables, the paper's full size does not
    assert full_set_table_bytes() <= MEMORY_BUDGET_BYTES < full_set_table_bytes(1.0)
    assert rmc_spec("rmc1", 1.0).table_bytes == 8 * 4_000_000 * 32 * 4
    assert TINY.interaction_dim == 8 + 3 * 8
    assert TINY.mlp_macs_per_item == 13 * 16 + 16 * 8 + 32 * 16 + 16 * 1
    with pytest.raises(ValueError, match="unknown synthetic model"):
        rmc_spec("rmc9")
    with pytest.raises(ValueError, match="top_mlp must end with 1"):
        RmcSpec("bad", 2, 100, 3, 4, 5, (4,), (4, 2))


def test_forward_shape_and_pooling_matches_embedding_bag():
    model = SyntheticDLRM(TINY, seed=0)
    inputs = torch_inputs(synthetic_inputs(TINY, 9, seed=1))
    assert inputs["lengths"].shape == (9, 3) and inputs["indices"].shape == (int(inputs["lengths"].sum()),)
    probs = model(**inputs)
    assert probs.shape == (9,) and torch.all((probs > 0) & (probs < 1))
    assert torch.allclose(probs, reference_forward(model, **inputs), atol=1e-6)
    # empty bags (allowed by the contract even if the generator never makes them) pool to exactly zero
    inputs["lengths"][0, 0] = 0
    inputs["lengths"][4, 2] = 0
    inputs["indices"] = inputs["indices"][: int(inputs["lengths"].sum())]
    assert torch.allclose(model(**inputs), reference_forward(model, **inputs), atol=1e-6)
    assert torch.all(model.pooled(inputs["indices"], inputs["lengths"])[0, :8] == 0)


def test_seeded_weights_are_reproducible():
    a, b, c = SyntheticDLRM(TINY, seed=3), SyntheticDLRM(TINY, seed=3), SyntheticDLRM(TINY, seed=4)
    assert torch.equal(a.pooling.table.weight, b.pooling.table.weight)
    assert torch.equal(a.top.layers[0].weight, b.top.layers[0].weight)
    assert not torch.equal(a.pooling.table.weight, c.pooling.table.weight)
    assert a.pooling.table.weight.abs().max() <= 1 / math.sqrt(TINY.rows_per_table)


def test_ids_follow_zipf_rank_frequency_law():
    """Frequency of the k-th rank ∝ k^-alpha: the log-log slope over the 50 top ranks is -alpha.

    With 400,000 draws over 100,000 rows (alpha 1.05), rank 50 still gets ~1,100 draws, so each log count has a
    standard error <= 1/sqrt(1100) = 0.03 and the least-squares slope over ranks 1..50 (sum of squared log-rank
    deviations ~ 45) a standard error < 0.03/sqrt(45) = 0.005: 0.03 is > 5 standard errors.
    """
    alpha, rows = 1.05, 100_000
    ranks = zipf_ranks(rows, 400_000, alpha, np.random.default_rng(0))
    assert ranks.min() >= 1 and ranks.max() <= rows
    counts = np.bincount(ranks, minlength=rows + 1)[1:51]
    slope = np.polyfit(np.log(np.arange(1, 51)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-alpha, abs=0.03)
    # the same through the model's inputs: the observed rank-frequency curve of one table's row ids
    spec = RmcSpec("z", 1, rows, 40, 4, 2, (4,), (4, 1))
    ids = synthetic_inputs(spec, 10_000, alpha=alpha, sigma=0.0, seed=2)["indices"]
    observed = np.sort(np.bincount(ids, minlength=rows))[::-1][:50]
    assert np.polyfit(np.log(np.arange(1, 51)), np.log(observed), 1)[0] == pytest.approx(-alpha, abs=0.05)


def test_rank_to_row_is_a_bijection_that_differs_per_table():
    rows = 1000
    first = rank_to_row(np.arange(1, rows + 1), rows, table=0)
    assert sorted(first) == list(range(rows))
    assert not np.array_equal(first, rank_to_row(np.arange(1, rows + 1), rows, table=1))
    assert abs(int(first[0]) - int(first[1])) > 1  # hot rows are scattered, not adjacent


def test_pooling_factors_are_lognormal_around_the_mean():
    """log(pooling) ~ N(mu, sigma) with mu = ln(80) - sigma²/2. With n = 20,000 the standard error of the mean of
    the logs is 0.25/sqrt(n) = 0.0018 and of their std 0.25/sqrt(2n) = 0.0013; rounding to integers near 80 shifts a
    log by < 0.5/60. Tolerances 0.01 (mean) and 0.008 (std) are > 5 standard errors."""
    mean, sigma, n = 80.0, 0.25, 20_000
    pooling = pooling_factors(mean, sigma, n, np.random.default_rng(0))
    logs = np.log(pooling)
    assert logs.mean() == pytest.approx(math.log(mean) - sigma**2 / 2, abs=0.01)
    assert logs.std() == pytest.approx(sigma, abs=0.008)
    assert pooling.mean() == pytest.approx(mean, rel=0.01)
    assert pooling.min() >= 1 and pooling.max() <= 8 * mean
    assert np.all(pooling_factors(20, 0.0, 5, np.random.default_rng(0)) == 20)


def test_input_pool_windows_are_consistent_and_wrap():
    pool = InputPool(TINY, 10, seed=0)
    seen = []
    for n in (4, 4, 4, 7):  # the third and fourth windows wrap round the 10-item pool
        batch = pool.batch(n)
        assert batch["dense"].shape == (n, 13) and batch["lengths"].shape == (n, 3)
        assert len(batch["indices"]) == batch["lengths"].sum()
        seen.append(batch)
    whole = synthetic_inputs(TINY, 10, seed=0)
    assert np.array_equal(seen[2]["lengths"], np.concatenate([whole["lengths"][8:], whole["lengths"][:2]]))
    start = whole["lengths"][:8].sum()
    assert np.array_equal(seen[2]["indices"], np.concatenate(
        [whole["indices"][start:], whole["indices"][: whole["lengths"][:2].sum()]]))
    with pytest.raises(ValueError, match="outside"):
        pool.batch(11)


def test_onnx_export_matches_torch(tmp_path):
    model = SyntheticDLRM(TINY, seed=0)
    path = export_synthetic_onnx(model, tmp_path / "tiny.onnx")
    assert [p.name for p in onnx_files(path)] == ["tiny.onnx", "tiny.onnx.data"]  # weights as external data
    assert "Loop" not in onnx_op_types(path) and "CumSum" in onnx_op_types(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES) and [o.name for o in graph.output] == [OUTPUT_NAME]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 9, 40):
        feed = synthetic_inputs(TINY, batch, seed=batch)
        (actual,) = session.run([OUTPUT_NAME], feed)
        with torch.no_grad():
            expected = model(**torch_inputs(feed)).numpy()
        assert actual.shape == (batch,)
        assert np.max(np.abs(actual - expected)) < 1e-5
