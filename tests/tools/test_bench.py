"""`make bench`: roofline arithmetic, work per item, INT8 of the synthetic MLPs, and the whole pipeline on a tiny
nightly run (fake folders, real models, real load runs, a real MLflow server)."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from recforge.contracts import tags
from recforge.contracts.features import example_spec
from recforge.contracts.layout import Catalog
from recforge.core.errors import ConfigError, DataError
from recforge.models import build_model
from recforge.models.export import example_inputs, export_onnx
from recforge.models.synthetic import RmcSpec, SyntheticDLRM, export_synthetic_onnx, synthetic_inputs, torch_inputs
from recforge.tools import bench
from recforge.tools.bench.cli import main as bench_main
from recforge.tools.hw_limits import HardwareLimits, item_limit

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)


def test_item_limit_on_known_numbers():
    # 1 MFLOP and 100 kB per item on a 1 TFLOP/s, 10 GB/s machine: 1e6 items/s of compute, 1e5 of memory
    limit = item_limit(1e6, 1e5, 1e12, 1e10)
    assert limit["compute_bound_items_per_s"] == pytest.approx(1e6)
    assert limit["memory_bound_items_per_s"] == pytest.approx(1e5)
    assert limit["items_per_s"] == pytest.approx(1e5) and limit["bound"] == "memory"
    assert item_limit(1e9, 1e3, 1e12, 1e10)["bound"] == "compute"
    assert item_limit(0, 1e3, 1e12, 1e10)["items_per_s"] == pytest.approx(1e7)
    with pytest.raises(ConfigError):
        item_limit(0, 0, 1e12, 1e10)
    with pytest.raises(ConfigError):
        item_limit(1, 1, 0, 1e10)


def test_roofline_uses_the_precisions_peak():
    limits = HardwareLimits("cpu", 2, fp32_flops=1e11, int8_ops=4e11, bandwidth_bytes_per_s=1e12,
                            copy_bytes_per_s=1e12, gemm_size=64, array_mib=8)
    work = {"flops_per_item": 1e6, "bytes_per_item": 1.0}
    fp32 = bench.roofline(work, limits, "fp32", measured_items_per_s=5e4)
    int8 = bench.roofline(work, limits, "int8_static", measured_items_per_s=5e4)
    assert fp32["items_per_s"] == pytest.approx(1e5) and fp32["fraction_of_limit"] == pytest.approx(0.5)
    assert int8["items_per_s"] == pytest.approx(4e5) and int8["fraction_of_limit"] == pytest.approx(0.125)


def test_work_per_item_counts_gathered_rows_and_amortised_weights():
    torch.manual_seed(0)
    model = build_model("dlrm", SPEC, embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1))
    inputs = {k: v.numpy() for k, v in example_inputs(SPEC, 64).items()}
    embedding_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    dense_params = sum(p.numel() for p in model.parameters()) - embedding_params
    gathered = (6 + 3 + 5) * 8  # one id per sparse feature + every genre and history slot, 8 values each
    work = bench.work_per_item(model, inputs, macs_per_item=1000.0, precision="fp32", sub_batch=32)
    assert work["flops_per_item"] == 2000.0
    assert work["bytes_per_item"] == pytest.approx(4 * (gathered + dense_params / 32))
    assert bench.work_per_item(model, inputs, 1000.0, "int8_dynamic", 32)["bytes_per_item"] == \
        pytest.approx(work["bytes_per_item"] / 4)


def test_int8_synthetic_variant_keeps_the_tables_and_stays_close(tmp_path):
    spec = RmcSpec("tiny", 3, 1000, 6, 8, 13, (16, 8), (16, 1))
    model = SyntheticDLRM(spec, seed=0)
    fp32 = export_synthetic_onnx(model, tmp_path / "m.onnx")
    rewritten = bench.quantize_mlps_int8(fp32, tmp_path / "m.int8.onnx")
    assert rewritten == 4  # 2 bottom + 2 top layers
    graph = onnx.load(str(tmp_path / "m.int8.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "DynamicQuantizeMatMul" for n in graph.node) == 4 and not any(
        n.op_type == "Gemm" for n in graph.node)
    table_locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert table_locations == {"m.onnx.data"}  # the int8 model reads the fp32 model's table file: no copy
    feed = synthetic_inputs(spec, 32, seed=5)
    (int8_out,) = ort.InferenceSession(str(tmp_path / "m.int8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feed)
    with torch.no_grad():
        expected = model(**torch_inputs(feed)).numpy()
    assert 0 < np.max(np.abs(int8_out - expected)) < 0.02  # really quantized, and close


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        bench.BenchConfig.from_dict({"durations": 1})
    with pytest.raises(ConfigError, match="families"):
        bench.BenchConfig.from_dict({"families": ["dlrm", "bert"]})
    with pytest.raises(ConfigError, match="load_fraction"):
        bench.BenchConfig.from_dict({"load_fraction": 1.5})


def test_no_nightly_run_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("RECFORGE_WORK_DIR", str(tmp_path / "work"))
    with pytest.raises(DataError, match=r"make run && make compress"):
        bench.run_bench(bench.BenchConfig(families=("dlrm",), synthetic=()))
    assert bench_main(["--config", '{"synthetic": []}']) == 1


# --------------------------------------------------------------------------------------------------------------
# The whole pipeline on a tiny nightly run


def _model_folder(folder, model, run_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "state_dict.pt")
    (folder / "spec.json").write_text(SPEC.to_json())
    (folder / "model.json").write_text(json.dumps({"family": "dlrm", "run_id": run_id, "test_auc": 0.7,
                                                   "hyperparams": {"embedding_dim": 8, "bottom_mlp": [16, 8],
                                                                   "top_mlp": [16, 1]}}))
    export_onnx(model, SPEC, folder / "model.onnx")


@pytest.fixture
def tiny_nightly(tmp_path, monkeypatch):
    """RECFORGE_HOME with one nightly day: a dlrm model, its test split, an fp32 variant and its compress summary
    (in the local MLflow artifact layout)."""
    home, run_id = tmp_path / "home", uuid.uuid4().hex
    monkeypatch.setenv("RECFORGE_HOME", str(home))
    monkeypatch.setenv("RECFORGE_WORK_DIR", str(home / "work"))
    catalog, day = Catalog(home / "work"), "1998-04-22"
    torch.manual_seed(0)
    model = build_model("dlrm", SPEC, embedding_dim=8, bottom_mlp=(16, 8), top_mlp=(16, 1))
    _model_folder(catalog.model_dir(day, "dlrm"), model, run_id)
    base = catalog.variants_dir(day, "dlrm") / "fp32"
    _model_folder(base, model, run_id)
    (base / "variants.json").write_text(json.dumps([
        {"name": "fp32", "base": "fp32", "precision": "fp32", "onnx_path": "/elsewhere/model.onnx",  # resolved here
         "macs_per_item": 500.0, "error": None},
        {"name": "fp32+int8_dynamic", "base": "fp32", "precision": "int8_dynamic", "onnx_path": None,
         "error": "build failed"}]))
    rows = {k: v.numpy() for k, v in example_inputs(SPEC, 200, seed=1).items()}
    frame = pd.DataFrame({**{f: rows["sparse"][:, i] for i, f in enumerate(SPEC.sparse_features)},
                          **{f"genre_{k}": rows["genres"][:, k] for k in range(SPEC.genre_slots)},
                          **{f"hist_{k}": rows["history"][:, k] for k in range(SPEC.history_length)},
                          **{f: rows["dense"][:, i] for i, f in enumerate(SPEC.dense_features)},
                          "label": np.zeros(200, np.float32)})
    features = catalog.features_dir(day)
    features.mkdir(parents=True)
    frame.to_parquet(features / "test.parquet")
    (features / "spec.json").write_text(SPEC.to_json())
    summary_dir = home / "mlflow" / "artifacts" / "1" / run_id / "artifacts" / "compression"
    summary_dir.mkdir(parents=True)
    (summary_dir / "summary.json").write_text(json.dumps({"family": "dlrm", "passed": ["fp32"], "variants": [
        {"variant": "fp32", "passed": True, "auc": 0.7123, "delta_auc": 0.0, "latency_ms_b256": 0.5,
         "variant_run_id": "a" * 32},
        {"variant": "fp32+int8_dynamic", "passed": False, "auc": None, "latency_ms_b256": None,
         "variant_run_id": "b" * 32}]}))
    return home


def test_bench_end_to_end_on_a_tiny_nightly(tiny_nightly, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = bench.BenchConfig.from_dict({
        "families": ["dlrm"], "synthetic": ["rmc1"], "table_rows_scale": 1e-6, "synthetic_batches": [1, 8],
        "synthetic_sub_batch": 8, "synthetic_p95_target_ms": 200.0, "synthetic_fused": ["int8_tables"],
        "point_duration_s": 0.2, "compare_duration_s": 0.3, "max_steps": 2, "max_evaluations": 2,
        "threads": [1], "latency_repeats": 2, "p95_target_ms": 200.0, "gemm_size": 128, "array_mib": 8,
        "rounds": 2, "round_point_duration_s": 0.2, "round_max_steps": 3, "min_load_queries": 20,
        "unloaded_queries": 5})
    doc = bench.run_bench(cfg)

    (family,) = doc["families"]
    base, ours, same = family["baseline"], family["recforge"], family["same_load"]
    assert family["family"] == "dlrm" and ours["variant"] == "fp32" and ours["precision"] == "fp32"
    assert base["auc"] == ours["auc"] == 0.7123  # from the compress summary
    # the first LBT is the highest probed rate that met the SLO, and the ratios come from the measurements: within
    # each interleaved round, then the median over the rounds
    passing = [p["offered_qps"] for p in base["curve"] if p["meets_slo"]]
    assert base["first_lbt_qps"] == (max(passing) if passing else 0.0)
    rounds, results = family["rounds"], family["round_results"]
    assert rounds["rounds"] == len(results) == 2
    assert base["lbt_qps"] == pytest.approx(np.median([r["baseline"]["lbt_qps"] for r in results]))
    assert ours["lbt_qps"] == pytest.approx(np.median([r["recforge"]["lbt_qps"] for r in results]))
    per_round_lbt = [r["recforge"]["lbt_qps"] / r["baseline"]["lbt_qps"] for r in results if r["baseline"]["lbt_qps"]]
    if per_round_lbt:
        assert family["lbt_ratio"] == pytest.approx(np.median(per_round_lbt))
    else:
        assert family["lbt_ratio"] is None
    median_baseline_lbt = float(np.median([r["baseline"]["lbt_qps"] for r in results]))
    for r in results:  # both sides at the same offered rates, in every round: fractions of the baseline's median LBT
        assert r["rates"][cfg.load_fraction] == pytest.approx(cfg.load_fraction * median_baseline_lbt) or \
            median_baseline_lbt == 0
        assert set(r["baseline"]["loads"]) == set(r["recforge"]["loads"]) == set(cfg.load_fractions)
    # the baseline's thread count: every option's LBT measured in the rounds, the higher median kept
    options = base["thread_options"]
    assert f"threads={base['threads']}" == rounds["baseline_option"] and set(options) == set(rounds["baseline_options"])
    assert rounds["baseline_options"][rounds["baseline_option"]]["median"] == max(
        o["lbt_qps"]["median"] for o in options.values())
    assert [r["baseline_options"][rounds["baseline_option"]] for r in results] == [
        r["baseline"]["lbt_qps"] for r in results]
    assert same["baseline"]["queries"] > 0 and same["recforge"]["queries"] > 0
    per_round_p95 = [r["recforge"]["loads"][cfg.load_fraction]["p95_ms"] / r["baseline"]["loads"][cfg.load_fraction][
        "p95_ms"] for r in results]
    assert family["p95_ratio"] == pytest.approx(np.median(per_round_p95))
    assert rounds["latency_ratio"]["low"] <= family["p95_ratio"] <= rounds["latency_ratio"]["high"]
    share = results[0]["baseline"]["loads"][cfg.load_fraction]["apparatus_share_median"]
    assert 0.0 <= share <= 1.0
    assert doc["bench_lines"] == [family["bench_line"]] and family["bench_line"].startswith(
        "bench: family=dlrm path=inprocess latency_ratio=")
    for side in (base, ours):
        roof = side["roofline"]
        assert roof["items_per_s"] == min(roof["compute_bound_items_per_s"], roof["memory_bound_items_per_s"])
        assert roof["fraction_of_limit"] == pytest.approx(side["items_per_s"] / roof["items_per_s"])
        assert roof["ops_per_item"] == 1000.0  # 2 x the catalogue's 500 MACs
    assert doc["machine"]["fp32_flops"] > 0 and doc["machine"]["bandwidth_bytes_per_s"] > 0

    (synthetic,) = doc["synthetic"]
    assert synthetic["spec"]["rows_per_table"] == 1000 and set(synthetic["variants"]) == {"fp32", "int8"}
    for v in synthetic["variants"].values():
        assert set(v["latency_ms_vs_batch"]) == {1, 8} and all(ms > 0 for ms in v["latency_ms_vs_batch"].values())
        # items/s at the LBT, or one sub-batch's items / its latency when no rate met the SLO
        assert v["roofline"]["measured_items_per_s"] == (v["items_per_s"] or 8 * 1000.0 / v["latency_ms_vs_batch"][8])
    lbts = [synthetic["variants"][p]["lbt_qps"] for p in ("fp32", "int8")]
    assert synthetic["int8_lbt_ratio"] == (lbts[1] / lbts[0] if lbts[0] else None)
    assert set(synthetic["fused"]) == {"int8_tables"}  # the TorchScript variant asked for, beside the ONNX ones
    assert set(synthetic["fused"]["int8_tables"]["latency_ms_vs_batch"]) == {1, 8}

    # written as JSON + markdown, and logged to MLflow
    latest = json.loads((tiny_nightly / "bench" / "latest.json").read_text())
    assert latest["families"][0]["recforge"]["lbt_qps"] == ours["lbt_qps"]
    markdown = (tiny_nightly / "bench" / "latest.md").read_text()
    assert "| dlrm | fp32 (" in markdown and "| rmc1 |" in markdown
    assert doc["mlflow"].startswith("logged: MLflow run ")
    run = mlflow.MlflowClient(mlflow_server).get_run(doc["mlflow"].split()[3])
    assert run.data.metrics["dlrm.recforge_lbt_qps"] == ours["lbt_qps"]
    assert run.data.tags[tags.KIND] == "bench"
    assert not any(p.name.startswith("recforge-bench-") for p in (tiny_nightly / "work").iterdir())  # cleaned up


def test_mlflow_down_is_reported_not_fatal(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    doc = {"nightly_date": "1998-04-22", "machine": {}, "config": {}, "markdown": "", "families": [], "synthetic": []}
    status = bench.log_to_mlflow(doc)
    assert status.startswith("not logged: no MLflow tracking server answers") and math.isfinite(len(status))
