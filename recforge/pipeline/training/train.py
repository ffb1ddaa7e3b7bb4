"""Training: one model family on one run's features, seeded, early-stopped on validation AUC, tracked in MLflow.

A nightly run has one MLflow *parent* run (logical date, data fingerprint, git commit) and one
*child* run per model family with its params, per-epoch AUC/logloss, final test AUC/logloss,
the model as PyTorch and ONNX, and the train/val/test datasets as MLflow inputs.

A multi-task family (a model with ``num_tasks`` > 1 and ``task_logits``: MT-WnD) is trained on the sum of its
tasks' losses (labels: :mod:`recforge.pipeline.training.task_labels`); early stopping, the test AUC and what is
exported and served are task 0's (the features' label), the other tasks' AUCs are logged beside them.

CLI::

    python -m recforge.pipeline.training.train --features DIR --family dlrm [--parent-run-id ID] [--config JSON]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts import tags
from recforge.contracts.layout import Catalog
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError, DataError, first_line
from recforge.models import build_model, default_hyperparams
from recforge.models.export import export_onnx, onnx_parity
from recforge.models.families import BASELINE_FAMILY, DEEP_FAMILIES, FAMILIES, FAMILY_NAMES
from recforge.pipeline.data.features import load_spec, load_split
from recforge.pipeline.training.task_labels import TASK_NAMES, load_task_labels
from recforge.pipeline.training.tracking import (
    NIGHTLY_EXPERIMENT_NOTE,
    TEST_AUC,
    TEST_LOGLOSS,
    model_training_experiment,
)

log = logging.getLogger(__name__)

__all__ = ["BASELINE_FAMILY", "DEEP_FAMILIES", "TrainConfig", "TrainResult", "evaluate", "predict", "train_family"]


@typed_config
class TrainConfig:
    """How the nightly run trains its model families."""

    families: tuple[str, ...] = FAMILY_NAMES  # the default nightly families (the opt-in ones only when named)
    max_epochs: Annotated[int, Field(ge=1)] = 15
    patience: Annotated[int, Field(ge=1)] = 2  # epochs without a better validation AUC before stopping
    batch_size: Annotated[int, Field(ge=1)] = 512
    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3
    # id embeddings overfit MovieLens within 1-2 epochs without it
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-4
    seed: int = 42
    threads: Annotated[int, Field(ge=1)] = 2
    max_train_rows: Annotated[int, Field(ge=0)] = 0  # 0 = all; tests and smoke runs use a small slice
    hyperparams: dict[str, dict[str, Any]] = field(default_factory=dict)  # per family, to build_model

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"TrainConfig.families: unknown model families {unknown}; choose from {sorted(FAMILIES)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainConfig:
        return config.config_from_dict(cls, values)


@dataclass
class TrainResult:
    family: str
    run_id: str
    test_auc: float
    test_logloss: float
    best_epoch: int
    epochs_run: int
    parameters: int
    model_dir: str
    onnx_path: str
    onnx_model_uri: str
    onnx_max_abs_diff: float
    seconds: float
    task_test_auc: dict[str, float] = field(default_factory=dict)  # multi-task families: AUC per task

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def predict(model, split, batch_size: int = 8192) -> np.ndarray:
    """Probabilities of ``model`` on every row of ``split``, in eval mode without gradients."""
    return _in_batches(model, split, batch_size, model)


def predict_tasks(model, split, batch_size: int = 8192) -> np.ndarray:
    """[N, num_tasks] probabilities of a multi-task ``model`` (``task_logits``) on every row of ``split``."""
    import torch

    return _in_batches(model, split, batch_size, lambda **batch: torch.sigmoid(model.task_logits(**batch)))


def _in_batches(model, split, batch_size: int, forward) -> np.ndarray:
    """``forward(**inputs)`` over every row of ``split``, ``batch_size`` rows at a time, with ``model`` in eval mode
    and without gradients."""
    import torch

    model.eval()
    inputs = {k: torch.from_numpy(v) for k, v in split.inputs().items()}
    out = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
            out.append(forward(**batch).numpy())
    return np.concatenate(out).astype(np.float64)


def task_aucs(model, split, labels: np.ndarray) -> dict[str, float]:
    """AUC of every task of a multi-task ``model`` on ``split`` against its [N, num_tasks] ``labels``."""
    probabilities = predict_tasks(model, split)
    return {TASK_NAMES[t]: evaluate(labels[:, t], probabilities[:, t])["auc"] for t in range(labels.shape[1])}


def evaluate(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(labels, probabilities)), "logloss": float(log_loss(labels, clipped))}


def fit(family: str, features_dir: Path, cfg: TrainConfig, on_epoch=None):
    """Train ``family`` on the features in ``features_dir``; return (model, history, spec, splits).

    ``on_epoch(epoch, metrics)`` is called after each epoch (used to log to MLflow).
    """
    import torch

    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    spec = load_spec(features_dir)
    train, val = load_split(features_dir, "train"), load_split(features_dir, "val")
    if len(train) == 0 or len(val) == 0 or len(set(val.label.tolist())) < 2:
        raise DataError(f"{features_dir}: training or validation split is empty or has a single class")
    rows = len(train) if cfg.max_train_rows <= 0 else min(cfg.max_train_rows, len(train))
    # the most recent rows: closest in time to what the model will serve
    tensors = {k: torch.from_numpy(v[-rows:]) for k, v in train.inputs().items()}
    labels = torch.from_numpy(train.label[-rows:])

    model = build_model(family, spec, **cfg.hyperparams.get(family, {}))
    num_tasks = getattr(model, "num_tasks", 1)
    if num_tasks > 1:  # [rows, T]; task 0 is ``labels``
        multi = load_task_labels(features_dir, {"train": train, "val": val}, num_tasks, config.data_root())
        labels = torch.from_numpy(multi["train"][-rows:])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    best = {"auc": -1.0, "epoch": 0, "state": None}
    history = []
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.randperm(rows, generator=generator)
        total = 0.0
        for start in range(0, rows, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            optimizer.zero_grad()
            batch = {k: v[idx] for k, v in tensors.items()}
            # a multi-task model: mean of its tasks' losses (every task weighs the same)
            loss = loss_fn(model.task_logits(**batch) if num_tasks > 1 else model.logits(**batch), labels[idx])
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        val_metrics = evaluate(val.label, predict(model, val))
        metrics = {"train_logloss": total / rows, "val_auc": val_metrics["auc"],
                   "val_logloss": val_metrics["logloss"]}
        if num_tasks > 1:
            metrics |= {f"val_auc_{task}": auc for task, auc in task_aucs(model, val, multi["val"]).items()}
        history.append(metrics)
        log.info("%s epoch %d: %s", family, epoch, {k: round(v, 4) for k, v in metrics.items()})
        if on_epoch:
            on_epoch(epoch, metrics)
        if metrics["val_auc"] > best["auc"]:
            best = {"auc": metrics["val_auc"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elif epoch - best["epoch"] >= cfg.patience:
            break
    model.load_state_dict(best["state"])
    model.eval()
    return model, history, best["epoch"], spec


def train_family(family: str, features_dir: Path, out_dir: Path, cfg: TrainConfig,
                 parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> TrainResult:
    """Train one family and log it as a child run of ``parent_run_id``; write model files to ``out_dir``."""
    import mlflow
    import torch

    started = time.time()
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads((features_dir / "meta.json").read_text())
    experiment = _experiment_id()
    if parent_run_id:
        discard_earlier_attempts(mlflow.MlflowClient(), experiment, parent_run_id, family)
    with mlflow.start_run(experiment_id=experiment, run_name=family, parent_run_id=parent_run_id,
                          tags={tags.FAMILY: family, tags.STAGE: "train", **(extra_tags or {})}) as run:
        hyper = default_hyperparams(family) | cfg.hyperparams.get(family, {})
        mlflow.log_params({"family": family, "seed": cfg.seed, "max_epochs": cfg.max_epochs,
                           "patience": cfg.patience, "batch_size": cfg.batch_size,
                           "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay,
                           "max_train_rows": cfg.max_train_rows, "data_day": meta["day"],
                           "data_fingerprint": meta["fingerprint"], **{f"hp.{k}": v for k, v in hyper.items()}})
        _log_datasets(features_dir, meta)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)

        model, history, best_epoch, spec = fit(family, features_dir, cfg, on_epoch)
        test = load_split(features_dir, "test")
        test_metrics = evaluate(test.label, predict(model, test))
        parameters = sum(p.numel() for p in model.parameters())
        num_tasks = getattr(model, "num_tasks", 1)
        task_test_auc = {} if num_tasks == 1 else task_aucs(
            model, test, load_task_labels(features_dir, {"test": test}, num_tasks, config.data_root())["test"])

        torch.save(model.state_dict(), out_dir / "state_dict.pt")
        (out_dir / "spec.json").write_text(spec.to_json())
        model_card = {"family": family, "hyperparams": hyper, "run_id": run.info.run_id,
                      "data_day": meta["day"], "data_fingerprint": meta["fingerprint"],
                      "git_commit": config.git_commit(), "test_auc": test_metrics["auc"],
                      "test_logloss": test_metrics["logloss"], "best_epoch": best_epoch,
                      **({"task_test_auc": task_test_auc} if task_test_auc else {})}
        (out_dir / "model.json").write_text(json.dumps(model_card, indent=2))
        onnx_path = export_onnx(model, spec, out_dir / "model.onnx")
        sample = {k: torch.from_numpy(v[:256]) for k, v in test.inputs().items()}
        max_diff = onnx_parity(model, onnx_path, sample)

        mlflow.log_metrics({TEST_AUC: test_metrics["auc"], TEST_LOGLOSS: test_metrics["logloss"],
                            "best_epoch": best_epoch, "epochs_run": len(history), "parameters": parameters,
                            "onnx_max_abs_diff": max_diff, "best_val_auc": history[best_epoch - 1]["val_auc"],
                            **{f"{TEST_AUC}_{task}": auc for task, auc in task_test_auc.items()}})
        signature = mlflow.models.infer_signature(
            {k: v[:8].numpy() for k, v in sample.items()}, model(**{k: v[:8] for k, v in sample.items()})
            .detach().numpy())
        requirements = [f"torch=={torch.__version__.split('+')[0]}", "numpy<2"]
        # pickle + code_paths: a pt2 (torch.export) artifact would freeze the example batch size
        mlflow.pytorch.log_model(model, name="pytorch", signature=signature, pip_requirements=requirements,
                                 serialization_format="pickle",
                                 code_paths=[str(config.REPO_ROOT / "recforge")])
        import onnx

        onnx_info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="onnx", signature=signature,
                                          pip_requirements=["onnxruntime", "numpy<2"],
                                          save_as_external_data=False)
        mlflow.log_artifacts(str(out_dir), artifact_path="model_files")
        mlflow.set_tags({tags.TEST_AUC: f"{test_metrics['auc']:.4f}", tags.ONNX_MODEL_URI: onnx_info.model_uri,
                         tags.RUN_NOTE: training_note(family, meta["day"], test_metrics, best_epoch, len(history),
                                                      parameters)})
    return TrainResult(
        family=family, run_id=run.info.run_id, test_auc=test_metrics["auc"],
        test_logloss=test_metrics["logloss"], best_epoch=best_epoch, epochs_run=len(history),
        parameters=parameters, model_dir=str(out_dir), onnx_path=str(onnx_path),
        onnx_model_uri=onnx_info.model_uri, onnx_max_abs_diff=max_diff, seconds=round(time.time() - started, 1),
        task_test_auc=task_test_auc,
    )


def discard_earlier_attempts(client, experiment_id: str, parent_run_id: str, family: str) -> list[str]:
    """Delete the training runs of ``family`` an earlier attempt of this task left under ``parent_run_id`` (a task
    retried after its worker died leaves one RUNNING), so a retry does not add a second child run: the parent keeps
    one training run per family. Returns their ids."""
    earlier = client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                       f"tags.`{tags.FAMILY}` = '{family}' and tags.`{tags.STAGE}` = 'train'")
    for run in earlier:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
        client.delete_run(run.info.run_id)
        log.warning("training %s: deleted run %s (%s) of an earlier attempt under parent run %s", family,
                    run.info.run_id, run.info.status, parent_run_id)
    return [run.info.run_id for run in earlier]


def training_note(family: str, day: str, test_metrics: dict[str, float], best_epoch: int, epochs: int,
                  parameters: int) -> str:
    """The description of a family's training run (markdown, shown on the run's page)."""
    role = "the reference baseline the deep families must beat" if family == BASELINE_FAMILY else "a candidate"
    return (f"**{family}** ({role}) trained on the MovieLens features of data day {day}: test AUC "
            f"{test_metrics['auc']:.4f}, logloss {test_metrics['logloss']:.4f}; best validation epoch {best_epoch} of "
            f"{epochs}; {parameters:,} parameters. Artifacts: `onnx/` (what is served), `pytorch/`, `model_files/`; "
            "compressed variants are its child runs, their comparison is `compression/summary.md`.")


def _experiment_id() -> str:
    return model_training_experiment(description=NIGHTLY_EXPERIMENT_NOTE)


def _log_datasets(features_dir: Path, meta: dict) -> None:
    import mlflow
    import pandas as pd

    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        frame = pd.read_parquet(features_dir / f"{split}.parquet")
        dataset = mlflow.data.from_pandas(
            frame, source=str(features_dir / f"{split}.parquet"), targets="label",
            name=f"movielens100k-{meta['day']}-{split}", digest=f"{meta['fingerprint'][:8]}-{split}")
        mlflow.log_input(dataset, context=context)


def open_parent_run(day: str, fingerprint: str, airflow_run_id: str, extra_tags: dict[str, str] | None = None) -> str:
    """The parent run of one nightly DAG run; reused (not duplicated) when the DAG run is retried."""
    import mlflow

    experiment = _experiment_id()
    client = mlflow.MlflowClient()
    existing = client.search_runs(
        [experiment], filter_string=f"tags.`{tags.AIRFLOW_RUN_ID}` = '{airflow_run_id}'", max_results=1)
    if existing:
        return existing[0].info.run_id
    run_tags = {tags.KIND: "nightly", tags.LOGICAL_DATE: day, tags.DATA_FINGERPRINT: fingerprint,
                tags.AIRFLOW_RUN_ID: airflow_run_id, tags.GIT_COMMIT: config.git_commit(),
                # created by the client, not a script: MLflow leaves the source empty unless told
                tags.SOURCE_NAME: "dags/nightly_retrain.py", tags.SOURCE_TYPE: "JOB",
                tags.RUN_NOTE: f"Nightly retrain of data day {day} (Airflow run `{airflow_run_id}`): the data gate, "
                               "then one child run per model family. Running; the comparison follows.",
                **(extra_tags or {})}
    run = client.create_run(experiment, run_name=f"nightly-{day}", tags=run_tags)
    client.log_param(run.info.run_id, "logical_date", day)
    client.log_param(run.info.run_id, "data_fingerprint", fingerprint)
    return run.info.run_id


def close_parent_run(parent_run_id: str, results: list[dict], status: str = "FINISHED") -> dict:
    """Log the comparison of the families (vs the logistic-regression baseline) on the parent run and end it."""
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    rows = sorted(results, key=lambda r: -r["test_auc"])
    baseline = next((r["test_auc"] for r in rows if r["family"] == BASELINE_FAMILY), None)
    summary = {"families": [{"family": r["family"], "test_auc": round(r["test_auc"], 4),
                             "test_logloss": round(r["test_logloss"], 4), "run_id": r["run_id"],
                             "beats_baseline": None if baseline is None or r["family"] == BASELINE_FAMILY
                             else r["test_auc"] > baseline} for r in rows],
               "baseline_test_auc": baseline}
    for r in rows:  # test_auc.<family>: the families' test_auc side by side on the parent run
        client.log_metric(parent_run_id, f"{TEST_AUC}.{r['family']}", r["test_auc"])
    client.log_dict(parent_run_id, summary, "summary.json")
    columns = ("family", "test_auc", "test_logloss", "run_id")
    client.log_table(parent_run_id, {key: [f[key] for f in summary["families"]] for key in columns},
                     "tables/families.json")
    text = summary_markdown(summary, data_gate_lines(client, parent_run_id))
    client.log_text(parent_run_id, text, "summary.md")
    client.set_tag(parent_run_id, tags.RUN_NOTE, text)
    client.set_terminated(parent_run_id, status=status)
    return summary


def beats_baseline_cell(row: dict) -> str:
    """The "beats baseline" cell of a family: yes/no, or what the row is when there is nothing to compare."""
    if row["beats_baseline"] is None:
        return "— (the baseline)" if row["family"] == BASELINE_FAMILY else "— (no baseline trained)"
    return "yes" if row["beats_baseline"] else "no"


def data_gate_lines(client, parent_run_id: str) -> list[str]:
    """The data gate's outcome on the parent run: "data checks: passed", or its warnings (data_docs/warnings.txt)."""
    checks = client.get_run(parent_run_id).data.tags.get(tags.DATA_CHECKS)
    if not checks:
        return []
    lines = [f"Data checks: **{checks}**" + (" (the run went on; see `data_docs/`)" if checks == "warning" else "")]
    if checks == "warning":
        try:
            with open(client.download_artifacts(parent_run_id, "data_docs/warnings.txt")) as fh:
                lines += [f"- {line}" for line in fh.read().splitlines() if line.strip()]
        except Exception as err:  # noqa: BLE001 - the summary is still worth writing
            lines.append(f"- (data_docs/warnings.txt not readable: {first_line(err)})")
    return lines


def summary_markdown(summary: dict, gate_lines: list[str]) -> str:
    """summary.md of the nightly parent run: the data gate's outcome, then the families against the baseline."""
    table = ["| family | test AUC | test logloss | beats baseline |", "|---|---|---|---|"]
    table += [f"| {r['family']} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | {beats_baseline_cell(r)} |"
              for r in summary["families"]]
    return "\n".join([*gate_lines, *([""] if gate_lines else []), *table]) + "\n"


def fail_parent_run(parent_run_id: str, reason: str = "a task of the DAG run failed; see its logs") -> None:
    """Mark the nightly parent run FAILED (kept for the audit trail, never deleted)."""
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    client.set_tag(parent_run_id, tags.FAILURE, reason)
    client.set_terminated(parent_run_id, status="FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.training.train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="features folder of the run")
    parser.add_argument("--family", required=True, help=f"model family ({', '.join(FAMILIES)})")
    parser.add_argument("--out", type=Path, help="model folder (default: <features>/../models/<family>)")
    parser.add_argument("--parent-run-id", help="MLflow parent run to nest under")
    parser.add_argument("--config", default="{}", help="TrainConfig overrides as JSON")
    args = parser.parse_args(argv)

    def step():
        cfg = TrainConfig.from_dict(json_object(args.config))
        if args.family not in FAMILIES:
            raise ConfigError(f"unknown family {args.family!r}; choose from {sorted(FAMILIES)}")
        # <work>/<day>/features -> <work>/<day>/models/<family>
        out = args.out or Catalog(args.features.parent.parent).model_dir(args.features.parent.name, args.family)
        return train_family(args.family, args.features, out, cfg, args.parent_run_id).to_dict()

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_step(step)



if __name__ == "__main__":
    sys.exit(main())
