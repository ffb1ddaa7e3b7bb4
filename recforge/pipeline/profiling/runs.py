"""What the profiling stage reads from MLflow: the nightly run's candidates, their validated variants and the
compression summaries (side-by-side latencies) that selection needs."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.contracts import tags
from recforge.core import config
from recforge.core.errors import ConfigError, DataError, first_line
from recforge.models.families import BASELINE_FAMILY
from recforge.pipeline.profiling.selection import is_finite
from recforge.pipeline.training.tracking import TEST_AUC

log = logging.getLogger(__name__)


def tracking_client():
    """An MLflow client of the tracking server (``MLFLOW_TRACKING_URI``)."""
    import mlflow

    return mlflow.MlflowClient(config.tracking_uri())


def experiment_id(client) -> str:
    experiment = client.get_experiment_by_name(config.experiment_name())
    if experiment is None:
        raise DataError(f"MLflow experiment {config.experiment_name()!r} not found at {config.tracking_uri()}; "
                        "run nightly_retrain and compress_and_validate first")
    return experiment.experiment_id


def latest_nightly_run_id(client) -> str:
    runs = client.search_runs([experiment_id(client)], f"tags.`{tags.KIND}` = 'nightly' and "
                              "attributes.status = 'FINISHED'", order_by=["start_time DESC"], max_results=1)
    if not runs:
        raise DataError("no finished nightly_retrain run in MLflow; run nightly_retrain first")
    return runs[0].info.run_id


def validated_from_mlflow(parent_run_id: str = "", candidate_run_id: str = "") -> dict[str, dict]:
    """The validated variants as compress_and_validate's asset extra has them ({family: {candidate_run_id,
    passed: [...]}}), read from MLflow: the passing variant runs of one candidate (training) run, or of every
    candidate of the nightly run ``parent_run_id`` (default: the latest finished one)."""
    client = tracking_client()
    experiment = experiment_id(client)
    if candidate_run_id:
        candidates = [client.get_run(candidate_run_id)]
        if candidates[0].data.tags.get(tags.STAGE) != "train":
            raise ConfigError(f"MLflow run {candidate_run_id} is not a training run of nightly_retrain")
    else:
        parent = parent_run_id or latest_nightly_run_id(client)
        candidates = [r for r in client.search_runs(
            [experiment], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{tags.STAGE}` = 'train'")
            if r.data.tags.get(tags.FAMILY) != BASELINE_FAMILY]
    out = {}
    for cand in candidates:
        runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{cand.info.run_id}' and "
                                  f"tags.`{tags.PARITY}` = 'passed'", order_by=["start_time DESC"])
        passed, seen = [], set()
        for run in runs:  # newest first: one run per variant name
            name = run.data.tags.get(tags.VARIANT)
            if not name or name in seen:
                continue
            seen.add(name)
            passed.append({"name": name, "onnx_path": "", "variant_run_id": run.info.run_id,
                           "auc": run.data.metrics.get(TEST_AUC, run.data.metrics.get("auc")),
                           "size_bytes": run.data.metrics.get("size_bytes")})
        if passed:
            out[cand.data.tags[tags.FAMILY]] = {"candidate_run_id": cand.info.run_id, "passed": passed}
    if not out:
        where = f"candidate run {candidate_run_id}" if candidate_run_id else "the nightly run's candidates"
        raise DataError(f"no validated variants of {where} in MLflow; run compress_and_validate first")
    return out


def compression_summary(client, candidate_run_id: str) -> dict | None:
    """The candidate run's ``compression/summary.json`` (None, with a warning, when it has none)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(candidate_run_id, "compression/summary.json", tmp)
            return json.loads(Path(path).read_text())
    except Exception as err:  # noqa: BLE001 - a missing summary only costs the side-by-side latencies
        log.warning("candidate run %s: no compression/summary.json (%s); using the variant runs' metrics",
                    candidate_run_id, first_line(err))
        return None


def variant_rows(client, entry: Mapping[str, Any]) -> list[dict]:
    """The passing variants of one family with the numbers selection needs (auc, delta_auc, latency_ms_b256,
    size_bytes): from the candidate's compression summary, else from each variant run's metrics."""
    summary = compression_summary(client, entry["candidate_run_id"]) or {"variants": []}
    by_run = {v.get("variant_run_id"): v for v in summary["variants"] if v.get("variant_run_id")}
    rows = []
    for p in entry.get("passed") or []:
        row = {"name": p["name"], "variant_run_id": p["variant_run_id"], "onnx_path": p.get("onnx_path") or "",
               "passed": True, "auc": p.get("auc"), "size_bytes": p.get("size_bytes")}
        known = by_run.get(p["variant_run_id"], {})
        for key in ("auc", "delta_auc", "latency_ms_b256", "size_bytes"):
            if is_finite(known.get(key)):
                row[key] = known[key]
        if not all(is_finite(row.get(k)) for k in ("auc", "delta_auc", "latency_ms_b256")):
            metrics = client.get_run(p["variant_run_id"]).data.metrics
            metrics = {"auc": metrics.get(TEST_AUC, metrics.get("auc")), **metrics}
            for key in ("auc", "delta_auc", "latency_ms_b256", "size_bytes"):
                if not is_finite(row.get(key)) and is_finite(metrics.get(key)):
                    row[key] = metrics[key]
        rows.append(row)
    return rows


def passing_variants(client, candidate_run_id: str) -> list[dict]:
    """Every passing variant of the candidate's compression summary (name, auc, latency_ms_b256, size_bytes)."""
    summary = compression_summary(client, candidate_run_id) or {"variants": []}
    return [{"name": v["variant"], "auc": v.get("auc"), "latency_ms_b256": v.get("latency_ms_b256"),
             "size_bytes": v.get("size_bytes")} for v in summary["variants"] if v.get("passed")]
