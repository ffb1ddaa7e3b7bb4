"""recforge.tools.hw_limits: the physical limit of a lookup-bound item on known numbers, the gather test's stored
tables, the gather-rate measurement's plumbing (no wall-clock bound asserted), and the roofline of a synthetic
model from injected measurements."""

from __future__ import annotations

import math

import pytest
import torch

from recforge.core.errors import ConfigError
from recforge.models.embedding_bags import TABLE_PRECISIONS, stored_dim, unpack_table
from recforge.models.synthetic import RmcSpec
from recforge.tools.bench.roofline import lookup_roofline
from recforge.tools.hw_limits import (
    HardwareLimits,
    gather_key,
    gather_rate,
    lookup_item_limit,
    measure_gather_rates,
    stored_gather_table,
)

SPEC = RmcSpec("tiny", num_tables=4, rows_per_table=1000, lookups_per_table=25, embedding_dim=32, dense_features=10,
               bottom_mlp=(20, 10), top_mlp=(10, 1))


def limits(**gather) -> HardwareLimits:
    return HardwareLimits("cpu", 2, fp32_flops=1e11, int8_ops=2e11, bandwidth_bytes_per_s=1e10, copy_bytes_per_s=1e10,
                          gemm_size=64, array_mib=8, int8_ops_fbgemm=3e11, gather_rows_per_s=gather, gather_mib=32)


def test_lookup_item_limit_on_known_numbers():
    # 1,000 lookups at 1e8 rows/s = 10 us; 1e5 ops at 1e11 ops/s = 1 us: gather-bound at 1e5 items/s
    limit = lookup_item_limit(1000, 1e8, 1e5, 1e11)
    assert limit["items_per_s"] == pytest.approx(1e5) and limit["bound"] == "gather"
    assert limit["gather_bound_items_per_s"] == pytest.approx(1e5)
    assert limit["compute_bound_items_per_s"] == pytest.approx(1e6)
    compute = lookup_item_limit(10, 1e8, 1e7, 1e11)  # 0.1 us of gathers, 100 us of GEMMs
    assert compute["bound"] == "compute" and compute["items_per_s"] == pytest.approx(1e4)
    assert lookup_item_limit(0, 1e8, 1e5, 1e11)["gather_bound_items_per_s"] == math.inf
    with pytest.raises(ConfigError, match="not both 0"):
        lookup_item_limit(0, 1e8, 0, 1e11)
    with pytest.raises(ConfigError, match="must be > 0"):
        lookup_item_limit(10, 0, 1e5, 1e11)


def test_hardware_limits_keep_their_old_fields_and_answer_gather_rates():
    old_style = HardwareLimits("cpu", 2, fp32_flops=1e11, int8_ops=2e11, bandwidth_bytes_per_s=1e10,
                               copy_bytes_per_s=1e10, gemm_size=64, array_mib=8)
    assert old_style.gather_rate("int8", 32) is None and old_style.peak_ops("int8_dynamic") == 2e11
    measured = limits(**{gather_key("int8", 32): 5e7})
    assert measured.gather_rate("int8", 32) == 5e7 and measured.gather_rate("int8", 64) is None
    assert measured.peak_ops("int8") == 3e11 and measured.peak_ops("fp32") == 1e11  # the faster int8 kernel
    assert measured.to_dict()["gather_rows_per_s"] == {"int8/32": 5e7}


def test_lookup_roofline_of_a_synthetic_model_uses_its_precisions():
    rates = {gather_key("fp32", 32): 1e7, gather_key("int4", 32): 4e7}
    fp32 = lookup_roofline(SPEC, "fp32", "fp32", limits(**rates), measured_items_per_s=5e3)
    # 100 lookups per item at 1e7 rows/s: 1e5 items/s; MLPs ~1.3K MACs, far from the GEMM peak
    assert fp32["bound"] == "gather" and fp32["items_per_s"] == pytest.approx(1e5)
    assert fp32["fraction_of_limit"] == pytest.approx(0.05)
    assert fp32["ops_per_item"] == 2.0 * SPEC.mlp_macs_per_item
    int4 = lookup_roofline(SPEC, "int4", "int8", limits(**rates), measured_items_per_s=5e3)
    assert int4["items_per_s"] == pytest.approx(4e5) and int4["peak_ops"] == 3e11
    with pytest.raises(ConfigError, match="no gather rate measured for int8 rows of 32 values"):
        lookup_roofline(SPEC, "int8", "fp32", limits(**rates), 1.0)


@pytest.mark.parametrize("precision", TABLE_PRECISIONS)
def test_the_gather_tables_are_valid_stored_tables(precision):
    table = stored_gather_table(precision, 100, 16)
    assert table.shape[0] == 100 and stored_dim(table, precision) == 16
    values = unpack_table(table, precision)
    expected = 0.01 if precision == "fp32" else {"int8": 0x55, "int4": 0x5}[precision] * 0.01 - 0.5
    torch.testing.assert_close(values, torch.full((100, 16), expected), rtol=1e-3, atol=1e-3)


def test_gather_rates_are_measured_for_every_precision_and_dim():
    assert gather_rate("int8", 16, gather_mib=8, repeats=1, bags=64, lookups_per_bag=10) > 0
    rates = measure_gather_rates(dims=(8,), gather_mib=8, precisions=("fp32", "int4"), repeats=1)
    assert set(rates) == {"fp32/8", "int4/8"} and all(math.isfinite(r) and r > 0 for r in rates.values())
    with pytest.raises(ConfigError, match="table precision"):
        gather_rate("int2", 8, gather_mib=8)
