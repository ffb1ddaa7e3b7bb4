"""The benchmark in MLflow: whether a tracking server answers, and the figures and table logged on a run of
experiment ``recforge-bench`` (the synthetic models' ONNX and fused TorchScript variants included; keys are made
MLflow-safe by :func:`mlflow_key`, e.g. ``rmc2.torchscript.int4_tables-int8_mlp.lbt_qps``)."""

from __future__ import annotations

import datetime as dt
import json
import re

from recforge.contracts import tags
from recforge.core import config
from recforge.core.errors import first_line
from recforge.pipeline.training.tracking import model_training_experiment
from recforge.tools.bench.report import json_safe

EXPERIMENT = "recforge-bench"
INVALID_KEY_CHARACTERS = re.compile(r"[^\w\-./: ]")  # what MLflow refuses in metric and param names


def tracking_server_reachable(uri: str | None = None, timeout_s: float = 2.0) -> bool:
    uri = uri or config.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True  # a file/database store is always "reachable"
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).ok
    except requests.RequestException:
        return False


def log_to_mlflow(doc: dict) -> str:
    """Log the figures and the table on a run of experiment ``recforge-bench``; a one-line status either way."""
    uri = config.tracking_uri()
    if not tracking_server_reachable(uri):
        return f"not logged: no MLflow tracking server answers at {uri} (start one with `make mlflow-up`)"
    import mlflow

    try:
        experiment_id = model_training_experiment(EXPERIMENT, primary_metric=None, description=(
            "`make bench`: RecForge's best profiled variant against the PyTorch-eager baseline, per family "
            "(`bench.md`)."))
        client = mlflow.MlflowClient()
        # the run spans the benchmark (measured_at is when it ended), not the few ms of logging it
        ended_ms = int(dt.datetime.fromisoformat(doc["measured_at"]).timestamp() * 1000)
        run = client.create_run(experiment_id, start_time=ended_ms - int(doc["wall_s"] * 1000),
                                run_name=f"bench-{doc['nightly_date']}",
                                tags={tags.KIND: "bench", tags.LOGICAL_DATE: doc["nightly_date"],
                                      tags.SOURCE_NAME: "python -m recforge.tools.bench", tags.SOURCE_TYPE: "LOCAL",
                                      tags.RUN_NOTE: doc["markdown"]})
        run_id = run.info.run_id
        for key, value in {"nightly_date": doc["nightly_date"], "device": doc["machine"]["device"],
                           **{k: json.dumps(v) if isinstance(v, list | tuple) else v
                              for k, v in doc["config"].items()}}.items():
            client.log_param(run_id, mlflow_key(key), value)
        for key, value in bench_metrics(doc).items():
            if value is not None:
                client.log_metric(run_id, key, float(value), timestamp=ended_ms)
        client.log_dict(run_id, json_safe({k: v for k, v in doc.items() if k != "markdown"}), "bench.json")
        client.log_text(run_id, doc["markdown"], "bench.md")
        client.set_terminated(run_id, "FINISHED", end_time=ended_ms)
        return f"logged: MLflow run {run_id} in experiment {EXPERIMENT} at {uri}"
    except Exception as err:  # noqa: BLE001 - the benchmark's figures are written either way
        return f"not logged: MLflow at {uri} failed: {first_line(err, 200)}"


def bench_metrics(doc: dict) -> dict[str, float | None]:
    """The headline figures as flat MLflow metric names."""
    m = doc["machine"]
    metrics: dict[str, float | None] = {"machine.fp32_gflops": m["fp32_flops"] / 1e9,
                                        "machine.int8_gops": m["int8_ops"] / 1e9,
                                        "machine.bandwidth_gbps": m["bandwidth_bytes_per_s"] / 1e9,
                                        "wall_s": doc["wall_s"]}
    for f in doc["families"]:
        k = f["family"]
        metrics |= {f"{k}.lbt_ratio": f["lbt_ratio"], f"{k}.p95_ratio": f["p95_ratio"],
                    f"{k}.baseline_lbt_qps": f["baseline"]["lbt_qps"],
                    f"{k}.baseline_threads": f["baseline"].get("threads"),
                    f"{k}.recforge_lbt_qps": f["recforge"]["lbt_qps"],
                    f"{k}.baseline_p95_ms": f["same_load"]["baseline"]["p95_ms"],
                    f"{k}.recforge_p95_ms": f["same_load"]["recforge"]["p95_ms"],
                    f"{k}.baseline_auc": f["baseline"]["auc"], f"{k}.recforge_auc": f["recforge"]["auc"],
                    f"{k}.recforge_fraction_of_limit": f["recforge"]["roofline"]["fraction_of_limit"],
                    f"{k}.baseline_fraction_of_limit": f["baseline"]["roofline"]["fraction_of_limit"],
                    f"{k}.auc_ratio": f.get("auc_ratio")}
        for name, figure in (("lbt_ratio", "throughput_ratio"), ("p95_ratio", "latency_ratio")):
            interval = (f.get("rounds") or {}).get(figure) or {}
            metrics |= {f"{k}.{name}_low": interval.get("low"), f"{k}.{name}_high": interval.get("high")}
    for s in doc["synthetic"]:
        for precision, v in s["variants"].items():  # the ONNX models
            metrics[f"{s['model']}.{precision}.lbt_qps"] = v.get("lbt_qps")
            metrics[f"{s['model']}.{precision}.fraction_of_limit"] = v["roofline"]["fraction_of_limit"]
        for variant, v in s.get("fused", {}).items():  # the TorchScript models with fused bags
            key = f"{s['model']}.torchscript.{mlflow_key(variant)}"
            metrics |= {f"{key}.lbt_qps": v.get("lbt_qps"),
                        f"{key}.fraction_of_limit": v["roofline"]["fraction_of_limit"],
                        f"{key}.items_per_s": v["roofline"].get("measured_items_per_s"),
                        f"{key}.table_bytes": v.get("table_bytes"),
                        f"{key}.vs_onnx_fp32": (s.get("fused_vs_onnx") or {}).get(variant)}
    return {mlflow_key(k): v for k, v in metrics.items()}


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric or param key (letters, digits, ``_ - . / :`` and spaces): a fused variant's
    ``+`` becomes ``-`` (no variant name has a ``-``, so the key still names one variant), anything else that
    MLflow refuses becomes ``_``. "int4_tables+int8_mlp" -> "int4_tables-int8_mlp"."""
    return INVALID_KEY_CHARACTERS.sub("_", name.replace("+", "-"))

