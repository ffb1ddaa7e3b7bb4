"""recforge.tools.bench.mlflow_log: the synthetic models' fused variants (names with "+") become MLflow-safe metric
keys, one per variant, that a real MLflow server accepts (and a raw "+" key it refuses)."""

from __future__ import annotations

import pytest

from recforge.models.synthetic_fused import FUSED_VARIANTS
from recforge.tools.bench.mlflow_log import bench_metrics, log_to_mlflow, mlflow_key


def figures(lbt: float) -> dict:
    return {"lbt_qps": lbt, "table_bytes": 1000 + lbt,
            "roofline": {"fraction_of_limit": lbt / 1000, "measured_items_per_s": 10 * lbt}}


def bench_doc() -> dict:
    fused = {variant: figures(float(i + 10)) for i, variant in enumerate(FUSED_VARIANTS)}
    return {"machine": {"fp32_flops": 1e11, "int8_ops": 2e11, "bandwidth_bytes_per_s": 1e10}, "wall_s": 60.0,
            "families": [],
            "synthetic": [{"model": "rmc2", "variants": {"fp32": figures(1.0), "int8": figures(2.0)}, "fused": fused,
                           "fused_vs_onnx": {variant: 3.0 + i for i, variant in enumerate(FUSED_VARIANTS)}}]}


def test_mlflow_key_keeps_variants_apart():
    assert mlflow_key("rmc2.torchscript.int4_tables+int8_mlp.lbt_qps") == \
        "rmc2.torchscript.int4_tables-int8_mlp.lbt_qps"
    assert mlflow_key("a b/c:d-e.f_g") == "a b/c:d-e.f_g"  # what MLflow allows stays
    assert mlflow_key("p95 (ms)*") == "p95 _ms__"
    keys = [mlflow_key(variant) for variant in FUSED_VARIANTS]
    assert len(set(keys)) == len(keys) and all("+" not in key for key in keys)


def test_fused_variants_are_logged_beside_the_onnx_ones():
    metrics = bench_metrics(bench_doc())
    assert metrics["rmc2.fp32.lbt_qps"] == 1.0 and metrics["rmc2.int8.lbt_qps"] == 2.0  # the ONNX models, as before
    for i, variant in enumerate(FUSED_VARIANTS):
        key = f"rmc2.torchscript.{variant.replace('+', '-')}"
        assert metrics[f"{key}.lbt_qps"] == 10.0 + i and metrics[f"{key}.vs_onnx_fp32"] == 3.0 + i
        assert metrics[f"{key}.items_per_s"] == 10 * (10.0 + i) and metrics[f"{key}.table_bytes"] == 1010.0 + i
    assert metrics["rmc2.torchscript.fp32.lbt_qps"] != metrics["rmc2.fp32.lbt_qps"]  # fused fp32 is not ONNX fp32
    assert not [k for k in metrics if "+" in k]


def test_a_real_mlflow_server_takes_the_fused_variants_and_refuses_a_plus(mlflow_server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    doc = bench_doc() | {"measured_at": "2026-11-26T09:00:00+00:00", "nightly_date": "1998-04-11",
                         "markdown": "| bench |", "config": {"synthetic_fused": ["int4_tables+int8_mlp"]}}
    doc["machine"]["device"] = "test CPU"
    status = log_to_mlflow(doc)
    assert status.startswith("logged: MLflow run"), status
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(status.split()[3])
    expected = {k: v for k, v in bench_metrics(doc).items() if v is not None}
    assert set(run.data.metrics) == set(expected)
    assert run.data.metrics["rmc2.torchscript.int4_tables-int8_mlp.lbt_qps"] == \
        expected["rmc2.torchscript.int4_tables-int8_mlp.lbt_qps"]
    assert run.data.params["synthetic_fused"] == '["int4_tables+int8_mlp"]'  # values may hold a "+", keys not
    with pytest.raises(Exception, match="(?i)invalid"):  # MlflowException: why the keys are sanitised
        client.log_metric(run.info.run_id, "rmc2.torchscript.int4_tables+int8_mlp.lbt_qps", 1.0)
