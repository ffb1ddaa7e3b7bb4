"""recforge.tools.bench.synthetic: one tiny synthetic model through every format and precision (real models, real
latency runs, no LBT search), its physical-limit roofline from injected gather rates, and its rows in the report."""

from __future__ import annotations

import dataclasses

import pytest

from recforge.models.synthetic import synthetic_preset
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.report import format_markdown
from recforge.tools.bench.synthetic import bench_synthetic, main, with_gather_rates
from recforge.tools.hw_limits import HardwareLimits, gather_key

# rmc1 at 1e-6 scale: 8 tables x 1,000 rows x 32 values, 80 lookups per table
RATES = {gather_key("fp32", 32): 2e7, gather_key("int8", 32): 4e7, gather_key("int4", 32): 5e7}


def fake_limits(rates=RATES) -> HardwareLimits:
    return HardwareLimits("test cpu", 2, fp32_flops=1e11, int8_ops=2e11, bandwidth_bytes_per_s=1e10,
                          copy_bytes_per_s=1e10, gemm_size=64, array_mib=8, int8_ops_fbgemm=1e11,
                          gather_rows_per_s=dict(rates), gather_mib=8)


@pytest.fixture(scope="module")
def tiny_row(tmp_path_factory):
    cfg = BenchConfig.from_dict({"synthetic": ["rmc1"], "table_rows_scale": 1e-6, "synthetic_batches": [1, 8],
                                 "synthetic_sub_batch": 8, "synthetic_lbt": False, "latency_repeats": 1,
                                 "synthetic_fused": ["fp32", "int8_tables", "int4_tables+int8_mlp"], "mlflow": False})
    workdir = tmp_path_factory.mktemp("bench")
    return cfg, bench_synthetic("rmc1", cfg, fake_limits(), workdir), workdir


def test_every_format_and_precision_is_measured_with_its_table_memory(tiny_row):
    cfg, row, workdir = tiny_row
    assert set(row["variants"]) == {"fp32", "int8"}
    assert list(row["fused"]) == ["fp32", "int8_tables", "int4_tables+int8_mlp"]
    values = 8 * 1000 * 32
    memory = {k: v["table_bytes"] for k, v in row["fused"].items()}
    assert memory == {"fp32": 4 * values, "int8_tables": 8 * 1000 * (32 + 8), "int4_tables+int8_mlp": 8 * 1000 * 20}
    assert row["variants"]["fp32"]["table_bytes"] == row["table_bytes"] == 4 * values
    for variant, figures in [*row["variants"].items(), *row["fused"].items()]:
        assert set(figures["latency_ms_vs_batch"]) == {1, 8} and all(
            ms > 0 for ms in figures["latency_ms_vs_batch"].values()), variant
        roof = figures["roofline"]
        assert roof["measured_items_per_s"] == pytest.approx(8 * 1000.0 / figures["latency_ms_vs_batch"][8])
        assert roof["fraction_of_limit"] == pytest.approx(roof["measured_items_per_s"] / roof["items_per_s"])
        assert roof["table_precision"] == figures["table_precision"]
        # 640 lookups per item at the injected rate of the variant's rows; the MLPs are far cheaper here
        expected = RATES[gather_key(figures["table_precision"], 32)] / 640
        assert roof["bound"] == "gather" and roof["items_per_s"] == pytest.approx(expected)
    assert row["fused"]["int4_tables+int8_mlp"]["mlp_precision"] == "int8"
    assert row["variants"]["int8"]["mlp_precision"] == "int8" and row["variants"]["int8"]["table_precision"] == "fp32"
    base = row["variants"]["fp32"]["roofline"]["measured_items_per_s"]
    assert row["fused_vs_onnx"]["int8_tables"] == pytest.approx(
        row["fused"]["int8_tables"]["roofline"]["measured_items_per_s"] / base)
    assert list(workdir.iterdir()) == []  # the ONNX and TorchScript files are cleaned up


@pytest.mark.parametrize("name", ["mt_wnd", "dien"])
def test_mt_wnd_and_dien_are_benched_like_the_rmcs_their_compute_in_the_limit(name, tmp_path):
    """Issue 14 item 4: the other DeepRecSys families through the same formats and precisions. One id per table
    (43 lookups per item) and their MLPs (DIEN: two GRUs over 40 steps) make them compute-bound at these rates,
    so the limit is the fp32 GEMM peak over 2 x the spec's MACs per item."""
    cfg = BenchConfig.from_dict({"synthetic": [name], "table_rows_scale": 1e-6, "synthetic_batches": [1, 8],
                                 "synthetic_sub_batch": 8, "synthetic_lbt": False, "latency_repeats": 1,
                                 "synthetic_fused": ["fp32", "int4_tables+int8_mlp"], "mlflow": False})
    row = bench_synthetic(name, cfg, fake_limits(), tmp_path)
    assert row["model"] == name and row["spec"]["num_tables"] == 43
    assert set(row["variants"]) == {"fp32", "int8"} and list(row["fused"]) == ["fp32", "int4_tables+int8_mlp"]
    macs = synthetic_preset(name, 1e-6).mlp_macs_per_item
    for figures in (row["variants"]["fp32"], row["fused"]["fp32"]):
        roof = figures["roofline"]
        assert roof["bound"] == "compute" and roof["items_per_s"] == pytest.approx(1e11 / (2 * macs))
    assert row["fused"]["fp32"]["table_bytes"] == 43 * 1000 * 32 * 4
    assert list(tmp_path.iterdir()) == []


def test_the_report_shows_every_variant_with_its_table_memory(tiny_row):
    cfg, row, _ = tiny_row
    doc = {"nightly_date": "1998-04-22", "measured_at": "2026-11-26T06:00:00+00:00",
           "machine": fake_limits().to_dict(), "config": dataclasses.asdict(cfg), "families": [],
           "synthetic": [row], "wall_s": 1.0}
    markdown = format_markdown(doc)
    lines = [line for line in markdown.splitlines() if line.startswith("| rmc1 |")]
    assert len(lines) == 5
    labels = [line.split(" | ")[4] for line in lines]
    assert labels == ["ONNX fp32", "ONNX INT8 MLP", "TorchScript fp32", "TorchScript int8 tables",
                      "TorchScript int4 tables + INT8 MLP"]
    assert "measured gather rate" in markdown


def test_gather_rates_missing_for_a_dim_are_measured_then():
    limits = fake_limits()
    assert with_gather_rates(limits, 32, ("fp32", "int8", "int4")) is limits  # nothing to measure
    measured = with_gather_rates(limits, 8, ("int8",))
    assert measured.gather_rate("int8", 8) > 0 and measured.gather_rate("fp32", 32) == RATES["fp32/32"]


def test_the_cli_benches_the_synthetic_models_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECFORGE_WORK_DIR", str(tmp_path / "work"))
    config = ('{"synthetic": ["rmc3"], "table_rows_scale": 1e-6, "synthetic_batches": [1, 4], '
              '"synthetic_sub_batch": 4, "synthetic_lbt": false, "latency_repeats": 1, '
              '"synthetic_fused": ["int8_tables+int8_mlp"], "gemm_size": 128, "array_mib": 8}')
    assert main(["--config", config]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| rmc3 |")]
    assert [line.split(" | ")[1] for line in rows] == ["ONNX fp32", "ONNX INT8 MLP",
                                                       "TorchScript int8 tables + INT8 MLP"]
    assert "gather rows/s (D=32, D=64): fp32/32 " in out
    assert list((tmp_path / "work").iterdir()) == []  # its temporary folder is gone
    assert main(["--config", '{"synthetic_fused": ["int2_tables"]}']) == 1
    assert "synthetic_fused" in capsys.readouterr().err
