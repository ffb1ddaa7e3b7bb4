"""Real MLflow content for the MLflow UI tests, made by the pipeline's own stage functions on tiny synthetic data (a
couple of minutes, not a full `make run`): a nightly parent run with the data gate's Data Docs (it warns), two
trained families (dlrm and the logreg
baseline), dlrm's fp32 variants gated and summarized (compression/summary.md), two of them profiled on
cpu-onnxruntime (profile/pareto.png), and the best one registered with its champion alias."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from recforge.contracts import tags
from recforge.contracts.layout import Catalog
from recforge.contracts.targets import CPU_ONNXRUNTIME
from tests.conftest import synthetic_tables

DAY = dt.date(1998, 1, 28)  # the synthetic data's days start 1998-01-01: 27 days of history before it
# a tight volume band: the day's row count is outside it, so the real data gate warns (and the run goes on)
CHECKS = {"volume_z_warning": 0.01}
COMPRESS = {"latency_repeats": 5, "parity_rows": 256, "calibration_rows": 256, "threads": 1, "batch_size": 256,
            "finetune_epochs": 1, "distill_epochs": 1, "max_train_rows": 1500}
PROFILE = {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400, "max_steps": 3, "tolerance": 0.5,
           "min_sub_batch": 64, "max_sub_batch": 128, "threads": [1], "workers": 2, "max_evaluations": 1,
           "latency_batches": [1, 16], "latency_repeats": 3}


@dataclass
class NightlyContent:
    experiment_id: str
    parent_run_id: str
    candidate_run_id: str  # dlrm's training run
    baseline_run_id: str
    variant_runs: dict[str, str]  # variant name -> run id
    compression_summary: dict
    model: str  # the registered model
    registered: dict


def environment(root: Path, tracking_uri: str) -> dict[str, str]:
    """The environment of one isolated pipeline: its own RECFORGE_HOME, experiment and registered-model prefix."""
    return {"MLFLOW_TRACKING_URI": tracking_uri, "RECFORGE_HOME": str(root / "home"),
            "RECFORGE_WORK_DIR": str(root / "work"), "RECFORGE_EXPERIMENT": f"ui-nightly-{uuid.uuid4().hex[:6]}",
            "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "GX_ANALYTICS_ENABLED": "False"}


def write_data(root: Path) -> str:
    """A synthetic data root laid out as recforge.pipeline.data.ingest writes it."""
    from recforge.pipeline.data import ingest as data

    ratings, users, items = synthetic_tables(days=30, users=60, items=80, per_day=120)
    ratings = ratings.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)  # MovieLens: one per pair
    data_root = str(root / "data")
    data.write_parquet(users, f"{data_root}/users.parquet")
    data.write_parquet(items, f"{data_root}/items.parquet")
    for day, part in ratings.groupby(data.day_of(ratings["timestamp"])):
        data.write_parquet(part.reset_index(drop=True), data.partition_path(data_root, day))
    return data_root


def build_nightly(root: Path) -> NightlyContent:
    """The whole chain, in this process (the caller has set :func:`environment`)."""
    import mlflow

    from recforge.pipeline.data.features import FeatureConfig, build_features
    from recforge.pipeline.datagate.checks import check_day
    from recforge.pipeline.parity.stage import compress_and_validate, resolve_candidate, summarize_family
    from recforge.pipeline.profiling.stage import plan_profiles, profile_one, summarize_profiles
    from recforge.pipeline.profiling.stage_config import ProfileStageConfig
    from recforge.pipeline.registry.policy import RegisterConfig, model_name
    from recforge.pipeline.registry.stage import register_family
    from recforge.pipeline.training.train import TrainConfig, close_parent_run, open_parent_run, train_family

    catalog = Catalog(Path(os.environ["RECFORGE_WORK_DIR"]))
    day = DAY.isoformat()
    features = catalog.features_dir(day)
    data_root = write_data(root)
    build_features(data_root, DAY, features, FeatureConfig(min_train_rows=500))
    meta = json.loads((features / "meta.json").read_text())
    parent = open_parent_run(day, meta["fingerprint"], f"manual__{day}")
    client = mlflow.MlflowClient()
    gate = check_day(data_root, DAY, check_config=CHECKS, parent_run_id=parent, gx_root=root / "gx")
    assert gate["status"] == "warning", gate  # the Data Docs and data_docs/warnings.txt are on the parent run
    train = TrainConfig(families=("dlrm", "logreg"), max_epochs=2, threads=1)
    results = [train_family(family, features, catalog.model_dir(day, family), train, parent_run_id=parent,
                            extra_tags={tags.STAGE: "train"}).to_dict() for family in ("dlrm", "logreg")]
    close_parent_run(parent, results)
    dlrm = next(r for r in results if r["family"] == "dlrm")
    candidate = resolve_candidate({"family": "dlrm", "run_id": dlrm["run_id"], "model_dir": dlrm["model_dir"],
                                   "data_day": day})
    rows = compress_and_validate(candidate, "fp32", COMPRESS)
    summary = summarize_family(candidate, rows, COMPRESS)
    passed = [r for r in rows if r["passed"]]
    extra = {"families": {"dlrm": {"candidate_run_id": candidate.run_id, "passed": [
        {"name": r["name"], "onnx_path": r["onnx_path"], "variant_run_id": r["variant_run_id"], "auc": r["auc"],
         "size_bytes": r["size_bytes"]} for r in passed]}}}
    cfg = ProfileStageConfig.from_dict({"targets": [CPU_ONNXRUNTIME], "max_variants_per_family": 1,
                                        "profile": PROFILE})
    summarize_profiles([profile_one(job, cfg) for job in plan_profiles([extra], cfg=cfg)])
    register = RegisterConfig(model_prefix=f"ui{uuid.uuid4().hex[:6]}-")
    registered = register_family(candidate.run_id, cfg=register, dag_run_id=f"manual__{day}")
    return NightlyContent(
        experiment_id=client.get_run(parent).info.experiment_id, parent_run_id=parent,
        candidate_run_id=candidate.run_id, baseline_run_id=next(r["run_id"] for r in results
                                                                 if r["family"] == "logreg"),
        variant_runs={r["name"]: r["variant_run_id"] for r in rows}, compression_summary=summary,
        model=model_name("dlrm", register), registered=registered)
