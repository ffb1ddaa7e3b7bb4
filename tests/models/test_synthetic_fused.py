"""recforge.models.synthetic_fused: every fused variant against the synthetic DLRM (and MT-WnD's and DIEN's against
theirs), the TorchScript round trip, and the refusals at load (tables smaller than the spec's ids) and at the first
call (ids outside their table)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recforge.core.errors import ConfigError, DataError
from recforge.models.dien import SyntheticDIEN
from recforge.models.mt_wnd import SyntheticMtWnd
from recforge.models.synthetic import RmcSpec, SyntheticDLRM, synthetic_inputs, torch_inputs
from recforge.models.synthetic_fused import (
    FUSED_VARIANTS,
    METADATA_FILE,
    TorchScriptSession,
    fused_model,
    fused_variant,
    load_torchscript,
    save_torchscript,
    variant_precisions,
)
from tests.models.testutil import TINY_DIEN, TINY_MTWND

TINY = RmcSpec("tiny", num_tables=3, rows_per_table=1000, lookups_per_table=6, embedding_dim=8, dense_features=13,
               bottom_mlp=(16, 8), top_mlp=(16, 1))
# |probability error| allowed against the fp32 model: fp32 exact; int8 rows / int8 MLPs / int4 rows measured at
# ~1e-5 / ~5e-4 / ~3e-4 on these weights (tables U(±0.03), so an int4 step is ~0.004)
TOLERANCE = {"fp32": 1e-6, "int8_tables": 1e-4, "int4_tables": 2e-3, "int8_mlp": 5e-3,
             "int8_tables+int8_mlp": 5e-3, "int4_tables+int8_mlp": 5e-3}


@pytest.fixture(scope="module")
def source():
    return SyntheticDLRM(TINY, seed=0)


@pytest.fixture(scope="module")
def feed():
    return synthetic_inputs(TINY, 64, seed=5)


@pytest.mark.parametrize("variant", list(FUSED_VARIANTS))
def test_torchscript_round_trip_gives_the_same_outputs(variant, source, feed, tmp_path):
    model = fused_variant(source, variant)
    with torch.no_grad():
        eager = model(**torch_inputs(feed)).numpy()
        fp32 = source(**torch_inputs(feed)).numpy()
    path = save_torchscript(model, tmp_path / "model.pt")
    session = TorchScriptSession(path, TINY)
    served = session.run(feed)
    assert served.shape == (64,) and served.dtype == np.float32
    np.testing.assert_array_equal(served, eager)  # the file computes exactly what the module does
    error = np.abs(served - fp32).max()
    assert error <= TOLERANCE[variant]
    if variant != "fp32":
        assert error > 0  # really quantized
    tables, mlps = variant_precisions(variant)
    assert session.metadata["table_precision"] == tables and session.metadata["mlp_precision"] == mlps
    assert session.metadata["format"] == "torchscript" and session.metadata["spec"]["name"] == "tiny"
    row_bytes = {"fp32": 4 * 8, "int8": 8 + 8, "int4": 4 + 4}[tables]
    assert session.metadata["table_bytes"] == 3 * 1000 * row_bytes


@pytest.mark.parametrize("model_class, spec", [(SyntheticMtWnd, TINY_MTWND), (SyntheticDIEN, TINY_DIEN)],
                         ids=["mt_wnd", "dien"])
@pytest.mark.parametrize("variant", ["fp32", "int8_tables", "int4_tables+int8_mlp"])
def test_mt_wnd_and_dien_are_served_fused_in_torchscript_too(model_class, spec, variant, tmp_path):
    """Issue 14 item 4: the other DeepRecSys families' synthetic presets in the chosen format, their ids pooled by
    the fused kernels (DIEN's GRU and attention and MT-WnD's task heads unchanged around them)."""
    source = model_class(spec, seed=0)
    feed = synthetic_inputs(spec, 32, seed=3)
    model = fused_variant(source, variant)
    assert type(model) is model_class and model.pooling.precision == variant_precisions(variant)[0]
    assert model.pooling.table_names[0] == f"{spec.name}.table0"
    with torch.no_grad():
        fp32 = source(**torch_inputs(feed)).numpy()
        eager = model(**torch_inputs(feed)).numpy()
    session = TorchScriptSession(save_torchscript(model, tmp_path / "model.pt"), spec)
    served = session.run(feed)
    np.testing.assert_array_equal(served, eager)
    assert np.abs(served - fp32).max() <= TOLERANCE[variant]
    assert session.metadata["model"] == model_class.__name__ and session.metadata["spec"]["name"] == spec.name
    with pytest.raises(ConfigError, match=f"embedding table '{spec.name}.table0' .* has 1000 rows"):
        TorchScriptSession(tmp_path / "model.pt", dataclasses.replace(spec, rows_per_table=2000))
    beyond = {**feed, "indices": feed["indices"].copy()}
    beyond["indices"][-1] = spec.num_tables * spec.rows_per_table  # past the fused table
    with pytest.raises(DataError, match=f"embedding table '{spec.name}.table{spec.num_tables - 1}'"):
        session.run(beyond)
    assert source.pooling.table.weight.shape[0] == spec.num_tables * 1000  # the source keeps its own table


def test_only_a_model_with_jagged_pooling_can_be_fused():
    with pytest.raises(ConfigError, match="Linear has no jagged 'pooling' module"):
        fused_model(torch.nn.Linear(2, 2))


def test_a_table_smaller_than_the_declared_ids_is_refused_at_load(source, tmp_path):
    path = save_torchscript(fused_variant(source, "int8_tables"), tmp_path / "model.pt")
    load_torchscript(path, TINY)
    bigger = dataclasses.replace(TINY, rows_per_table=4000)
    with pytest.raises(ConfigError, match=r"embedding table 'tiny.table0' of .*model.pt \(spec 'tiny'\) has 1000 rows, "
                                          r"but its ids go up to 3999"):
        TorchScriptSession(path, bigger)
    with pytest.raises(ConfigError, match="holds 3 embedding tables but declares 4"):
        load_torchscript(path, dataclasses.replace(TINY, num_tables=4))


def test_files_that_are_not_recforge_torchscript_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ConfigError, match=f"no {METADATA_FILE} of format 'torchscript'"):
        load_torchscript(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a loadable TorchScript model"):
        load_torchscript(garbage)
    with pytest.raises(ConfigError, match="unknown fused variant 'int2_tables'"):
        variant_precisions("int2_tables")


def test_ids_outside_their_table_are_refused_naming_it(source, feed, tmp_path):
    path = save_torchscript(fused_variant(source, "int4_tables"), tmp_path / "model.pt")
    lengths = feed["lengths"]
    # an id of item 0's table-1 bag pointing into table 2: inside the fused table, outside its own
    crossing = {**feed, "indices": feed["indices"].copy()}
    crossing["indices"][int(lengths[0, 0])] = 2500
    with pytest.raises(DataError, match=r"model.pt: embedding table 'tiny.table1' has 1000 rows \(fused rows "
                                        r"1000..1999\), but item 0 asks it for fused row 2500"):
        TorchScriptSession(path).run(crossing)  # the first call checks every id
    session = TorchScriptSession(path)
    session.run(feed)
    beyond = {**feed, "indices": feed["indices"].copy()}
    beyond["indices"][-1] = 3000  # past the fused table: refused on any call, no read out of bounds
    with pytest.raises(DataError, match="model.pt: embedding table 'tiny.table2' has 1000 rows"):
        session.run(beyond)
    short = {**feed, "indices": feed["indices"][:-1]}
    with pytest.raises(DataError, match="lengths add up to"):
        session.run(short)
