"""Registered model versions for the real-fleet rollout tests: a small feature spec and an MLflow registry laid out
as recforge.pipeline.registry.stage leaves it (tests/serving/test_rollout_fleet.py, tests/e2e/test_rollout_dag.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid

import numpy as np

from recforge.contracts import tags
from recforge.contracts.features import example_spec
from recforge.contracts.targets import CPU_TRITON
from recforge.inference.onnx import onnx_session
from recforge.models.export import example_inputs

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
TARGET = CPU_TRITON


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


class Registry:
    """Registered versions laid out as recforge.pipeline.registry.stage leaves them: a training run with
    model_files/spec.json, one variant child run per file with the ONNX under onnx/, a model version tagged with the
    file's SHA-256."""

    def __init__(self, name: str, spec_path, tmp):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.name = name
        experiment = self.client.create_experiment(f"rollout-{uuid.uuid4().hex[:8]}")
        self.experiment = experiment
        self.train_run = self.client.create_run(experiment, run_name="train").info.run_id
        self.client.log_artifact(self.train_run, str(spec_path), "model_files")
        self.client.create_registered_model(name)
        self.tmp = tmp

    def add(self, onnx_path, variant: str, *, sha256: str | None = None, alias: str = "") -> str:
        run = self.client.create_run(self.experiment, run_name=variant,
                                     tags={"mlflow.parentRunId": self.train_run}).info.run_id
        self.client.log_artifact(run, str(onnx_path), "onnx")
        version = self.client.create_model_version(
            self.name, f"runs:/{run}/onnx/{os.path.basename(onnx_path)}", run_id=run,
            tags={tags.ONNX_SHA256: sha256 or sha(onnx_path), tags.VARIANT: variant, tags.TARGET: TARGET,
                  tags.FAMILY: "ncf", tags.P95_TARGET_MS: "250"})
        if alias:
            self.client.set_registered_model_alias(self.name, alias, version.version)
        return version.version


def compute_floor_ms(onnx_path, items: int) -> float:
    """The median time of one ``items``-item request of the model in onnxruntime in this process, with every core
    of the machine: a served request of the same size on one node of the same machine cannot be faster."""
    session = onnx_session(onnx_path, os.cpu_count() or 1)
    inputs = {k: v.numpy() for k, v in example_inputs(SPEC, items, 3).items()}
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    session.run(None, feed)
    times = []
    for _ in range(7):
        started = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))
