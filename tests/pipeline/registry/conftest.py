"""The ``pipeline`` fixture: fabricated nightly runs (tests/pipeline/registry/fabricated.py) in the real MLflow
server of tests/conftest.py, with their own experiment, registered-model prefix and RECFORGE_HOME."""

from __future__ import annotations

import uuid

import pytest

from tests.pipeline.registry.fabricated import Pipeline


@pytest.fixture
def pipeline(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECFORGE_EXPERIMENT", f"register-{uuid.uuid4().hex[:8]}")
    mlflow.set_tracking_uri(mlflow_server)
    return Pipeline(tmp_path)
