"""recforge.models.embedding_bags: fused bags against the gather-then-sum reference, int8/int4 within their rowwise
bound, the quantization check that names a table, refused ids, and the TorchScript round trip."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from recforge.core.errors import ConfigError, DataError
from recforge.models.embedding_bags import (
    TABLE_PRECISIONS,
    FusedEmbeddingBags,
    check_declared_rows,
    check_quantization,
    check_tables,
    pack_table,
    packed_row_bytes,
    reference_bags,
    row_error_bound,
    stored_dim,
    table_quantization,
    unpack_table,
)

DIM = 8
ROWS = (50, 30, 70)  # tables of different sizes
NAMES = ["user", "item", "genre"]


def make_tables(seed: int = 0, rows=ROWS, dim: int = DIM) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(r, dim, generator=generator) * (t + 1) for t, r in enumerate(rows)]  # unlike ranges


def make_batch(batch: int = 12, seed: int = 1, rows=ROWS, max_pooling: int = 9):
    """Fused ids bag by bag (some bags empty), their [B, T] lengths, and per-sample weights."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_pooling + 1, (batch, len(rows)), generator=generator)
    offsets = torch.tensor([0, *torch.tensor(rows).cumsum(0).tolist()])
    ids = [offsets[t] + torch.randint(0, rows[t], (int(lengths[b, t]),), generator=generator)
           for b in range(batch) for t in range(len(rows))]
    indices = torch.cat(ids)
    return indices, lengths, torch.rand(indices.numel(), generator=generator)


def hand_batch():
    """Two items: item 0 pools user rows 3, 7 / item row 4 / genre rows 1, 69; item 1 user row 0, no item, genre 10."""
    indices = torch.tensor([3, 7, 50 + 4, 80 + 1, 80 + 69, 0, 80 + 10])
    return indices, torch.tensor([[2, 1, 2], [1, 0, 1]])


def bags(precision: str = "fp32", mode: str = "sum", tables=None, **kwargs) -> FusedEmbeddingBags:
    return FusedEmbeddingBags.from_tables(tables or make_tables(), precision=precision, mode=mode,
                                          table_names=NAMES, **kwargs)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_fused_fp32_bags_equal_gather_then_sum(mode):
    tables = make_tables()
    indices, lengths, weights = make_batch()
    assert (lengths == 0).any()  # empty bags are part of the check
    pooled = bags("fp32", mode, tables)(indices, lengths)
    assert pooled.shape == (12, len(ROWS) * DIM)
    torch.testing.assert_close(pooled, reference_bags(tables, indices, lengths, mode=mode), rtol=1e-5, atol=1e-5)
    empty = (lengths.reshape(-1) == 0).nonzero().flatten()
    assert torch.all(pooled.reshape(-1, DIM)[empty] == 0)
    if mode == "sum":
        weighted = bags("fp32", mode, tables)(indices, lengths, weights)
        torch.testing.assert_close(weighted, reference_bags(tables, indices, lengths, weights), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(weighted, pooled)  # the weights were applied
    # the reference itself against an independent one: per-bag Python sums
    flat, cursor, table_of_bag = lengths.reshape(-1), 0, torch.arange(len(ROWS)).repeat(12)
    fused = torch.cat(tables)
    for bag, n in enumerate(flat.tolist()):
        rows = fused[indices[cursor:cursor + n]]
        expected = rows.sum(0) if mode == "sum" else (rows.mean(0) if n else torch.zeros(DIM))
        t = int(table_of_bag[bag])
        torch.testing.assert_close(pooled[bag // len(ROWS), t * DIM:(t + 1) * DIM], expected, rtol=1e-5, atol=1e-5)
        cursor += n


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("weighted", [False, True])
def test_quantized_bags_stay_within_their_rowwise_bound_of_fp32(precision, weighted):
    tables = make_tables()
    indices, lengths, weights = make_batch(batch=40)
    weights = weights if weighted else None
    quantized = bags(precision, tables=tables)(indices, lengths, weights)
    exact = reference_bags(tables, indices, lengths, weights)
    # per bag and value: sum over the bag's ids of |weight| x the id's row bound
    row_bound = torch.cat([row_error_bound(t, precision) for t in tables])[indices]
    row_bound = row_bound * (weights.abs() if weighted else 1)
    bag_of_id = torch.arange(lengths.numel()).repeat_interleave(lengths.reshape(-1))
    bound = torch.zeros(lengths.numel()).index_add_(0, bag_of_id, row_bound).reshape(-1, len(ROWS))
    error = (quantized - exact).abs().reshape(40, len(ROWS), DIM).amax(dim=2)
    assert torch.all(error <= bound + 1e-4)  # + fp32 summation order (bags of up to 9 rows of |x| < 15)
    assert error.max() > 0  # really quantized
    # and dequantized rows pool to exactly what the fused kernel pools
    dequantized = [unpack_table(pack_table(t, precision), precision) for t in tables]
    torch.testing.assert_close(quantized, reference_bags(dequantized, indices, lengths, weights), rtol=1e-4, atol=1e-4)


def test_stored_sizes_and_layouts():
    tables = make_tables(dim=64, rows=(100,))
    sizes = {p: FusedEmbeddingBags.from_tables(tables, precision=p).stored_bytes() for p in TABLE_PRECISIONS}
    assert sizes == {"fp32": 100 * 256, "int8": 100 * 72, "int4": 100 * 36}  # D=64: ÷3.6 and ÷7.1
    assert [packed_row_bytes(p, 64) for p in TABLE_PRECISIONS] == [256, 72, 36]
    for precision in TABLE_PRECISIONS:
        assert stored_dim(pack_table(tables[0], precision), precision) == 64
    with pytest.raises(ConfigError, match="even embedding dim"):
        pack_table(torch.randn(4, 7), "int4")
    with pytest.raises(ConfigError, match="table precision"):
        pack_table(torch.randn(4, 8), "int2")
    with pytest.raises(ConfigError, match="a stored int8 table must be a 2-D torch.uint8 tensor"):
        stored_dim(torch.randn(4, 8), "int8")
    with pytest.raises(ConfigError, match="pooling mode"):
        bags(mode="max")
    with pytest.raises(ConfigError, match="add up to"):
        FusedEmbeddingBags(torch.randn(10, 4), [4, 5])


def test_row_error_bound_is_half_a_step():
    weight = torch.tensor([[0.0, 1.0, 0.5, 0.25], [-2.0, 2.0, 0.0, 1.0]])
    assert torch.all(row_error_bound(weight, "fp32") == 0)
    torch.testing.assert_close(row_error_bound(weight, "int8"), torch.tensor([1 / 510, 4 / 510]), rtol=1e-3, atol=0)
    int4 = row_error_bound(weight, "int4")
    assert torch.all(int4 >= torch.tensor([1 / 30, 4 / 30])) and torch.all(int4 <= torch.tensor([1 / 30, 4 / 30]) * 1.2)


def test_quantization_reports_and_the_check_name_the_table():
    tables = make_tables()
    for precision in ("int8", "int4"):
        reports = bags(precision, tables=tables).quantization(tables)
        assert [r.table for r in reports] == NAMES and all(r.within_bound for r in reports)
        assert all(0 < r.error_to_bound <= 1 and r.max_abs_error > 0 for r in reports)
        assert all(r.stored_bytes < r.fp32_bytes for r in reports)
        check_quantization(reports)  # passes
        with pytest.raises(DataError, match=f"embedding table 'user' \\({precision}\\).*exceeds the allowed 1e-09"):
            check_quantization(reports, max_abs_error=1e-9)
    # a row beyond float16's range: 4-bit scale and bias overflow, far over the bound
    wide = [t.clone() for t in tables]
    wide[1][3] = torch.linspace(-1e6, 1e6, DIM)
    reports = bags("int4", tables=wide).quantization(wide)
    assert [r.within_bound for r in reports] == [True, False, True] and reports[1].worst_row == 3
    with pytest.raises(DataError, match="embedding table 'item' \\(int4\\).*row 3.*keep this table in fp32"):
        check_quantization(reports)
    assert bags("int8", tables=wide).quantization(wide)[1].within_bound  # int8's fp32 scale holds it
    assert [r.table for r in check_tables(dict(zip(NAMES, tables, strict=True)), "int4")] == NAMES
    with pytest.raises(DataError, match="embedding table 'item' \\(int4\\)"):
        check_tables(dict(zip(NAMES, wide, strict=True)), "int4")
    # a NaN is over any bound
    broken = [t.clone() for t in tables]
    broken[2][5, 1] = float("nan")
    with pytest.raises(DataError, match="embedding table 'genre' \\(int8\\)"):
        check_quantization(bags("int8", tables=broken).quantization(broken))
    # the report of a chunked table equals the unchunked one
    whole = table_quantization("t", tables[2], pack_table(tables[2], "int8"), "int8")
    chunked = table_quantization("t", tables[2], pack_table(tables[2], "int8"), "int8", chunk_rows=16)
    assert dataclasses.replace(chunked, mean_abs_error=whole.mean_abs_error) == whole
    assert chunked.mean_abs_error == pytest.approx(whole.mean_abs_error, rel=1e-5)


def test_ids_outside_the_table_are_refused_naming_it():
    model = bags("int8")
    indices, lengths = hand_batch()
    model(indices, lengths)  # valid
    beyond = indices.clone()
    beyond[3] = sum(ROWS) + 5  # item 0's first genre id, past the fused table
    with pytest.raises(DataError, match=r"table 'genre' has 70 rows \(fused rows 80..149\), but item 0 asks it for "
                                        r"fused row 155 \(id at position 3\)"):
        model(beyond, lengths)
    negative = indices.clone()
    negative[5] = -1
    with pytest.raises(DataError, match="embedding table 'user' has 50 rows.*item 1 asks it for fused row -1"):
        model(negative, lengths)
    # an id inside the fused table but in another table's rows: found by the every-id check
    crossing = indices.clone()
    crossing[2] = 10  # a "user" row asked for in item 0's "item" bag
    model(crossing, lengths)  # the per-call check only guards the fused table: no read out of bounds either way
    assert model.id_problem(crossing, lengths, True).startswith("embedding table 'item' has 30 rows")
    assert model.id_problem(indices, lengths, True) == ""
    with pytest.raises(DataError, match="embedding table 'item' has 30 rows"):
        bags("int8", strict_ids=True)(crossing, lengths)
    with pytest.raises(DataError, match="lengths add up to 7 ids but 6 were given"):
        model(indices[:-1], lengths)
    with pytest.raises(DataError, match=r"lengths must be \[batch, 3\]"):
        model(indices, lengths[:, :2])
    with pytest.raises(DataError, match="lengths must be >= 0"):
        model(indices, torch.tensor([[2, 1, 3], [1, -1, 1]]))
    with pytest.raises(ValueError, match="per_sample_weights need sum pooling"):
        bags(mode="mean")(indices, lengths, torch.ones(indices.numel()))


def test_declared_rows_beyond_the_table_are_refused_at_load():
    model = bags("int4")
    check_declared_rows(model.table_names, model.table_rows(), [50, 30, 70])
    with pytest.raises(ConfigError, match="embedding table 'item' of model.pt has 30 rows, but its ids go up to 39"):
        check_declared_rows(model.table_names, model.table_rows(), [50, 40, 70], "model.pt")
    with pytest.raises(ConfigError, match="holds 3 embedding tables but declares 2"):
        check_declared_rows(model.table_names, model.table_rows(), [50, 30])


@pytest.mark.parametrize("precision", TABLE_PRECISIONS)
def test_torchscript_round_trip_gives_the_same_bags_and_refusals(precision):
    model = bags(precision)
    indices, lengths, weights = make_batch()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert torch.equal(loaded(indices, lengths), model(indices, lengths))
    assert torch.equal(loaded(indices, lengths, weights), model(indices, lengths, weights))
    beyond, hand_lengths = hand_batch()
    beyond[0] = 10_000
    with pytest.raises(torch.jit.Error, match="ValueError: embedding table 'user' has 50 rows"):
        loaded(beyond, hand_lengths)
