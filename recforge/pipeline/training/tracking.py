"""How RecForge's runs look in MLflow: model-training experiments, the one metric key per quantity, run notes.

MLflow 3's UI opens an experiment on its GenAI overview unless the experiment's ``mlflow.experimentKind`` tag says
it is a model-training one (``custom_model_development``): every experiment RecForge logs to is marked so. The same
quantity keeps one metric key on every run that carries it (family runs, variant runs, the nightly parent), so one
column of the runs table compares them.
"""

from __future__ import annotations

import textwrap

from recforge.contracts import tags
from recforge.core import config

TEST_AUC = "test_auc"  # test-split AUC: family runs, variant runs, and per family on the nightly parent run
TEST_LOGLOSS = "test_logloss"
LATENCY_B256 = "latency_ms_b256"  # onnxruntime latency of one batch (compression summary's side-by-side timing)


def mark_model_training(client, experiment_id: str, primary_metric: str | None = TEST_AUC) -> None:
    """Tag ``experiment_id`` as a model-training experiment (the UI opens it on its runs table), with
    ``primary_metric`` (higher is better) as the metric the UI compares runs by."""
    client.set_experiment_tag(experiment_id, tags.EXPERIMENT_KIND, tags.MODEL_TRAINING_EXPERIMENT)
    if primary_metric:
        client.set_experiment_tag(experiment_id, tags.PRIMARY_METRIC, primary_metric)
        client.set_experiment_tag(experiment_id, tags.PRIMARY_METRIC_GREATER_IS_BETTER, "true")


def model_training_experiment(name: str | None = None, description: str = "",
                              primary_metric: str | None = TEST_AUC) -> str:
    """The id of experiment ``name`` (default: the nightly one), created if needed, marked as model training;
    ``description`` becomes the experiment's note. Sets the tracking URI of ``mlflow`` to the project's."""
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri())
    experiment = mlflow.set_experiment(name or config.experiment_name())
    client = mlflow.MlflowClient()
    if experiment.tags.get(tags.EXPERIMENT_KIND) != tags.MODEL_TRAINING_EXPERIMENT:
        mark_model_training(client, experiment.experiment_id, primary_metric)
    if description and not experiment.tags.get(tags.RUN_NOTE):
        client.set_experiment_tag(experiment.experiment_id, tags.RUN_NOTE, description)
    return experiment.experiment_id


def one_line(text: str, width: int = 160) -> str:
    """``text`` on one line, at most ``width`` characters, shortened at a word boundary (never mid-word)."""
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder=" …")


NIGHTLY_EXPERIMENT_NOTE = (  # plain text: the experiment page drops inline code spans
    "RecForge's nightly pipeline. Runs named nightly-YYYY-MM-DD: the data gate and the comparison of the families "
    "(summary.md). Their children: one training run per family (metric test_auc), whose children are the "
    "compressed variants (test_auc, latency_ms_b256; tag recforge.parity, and recforge.rejected_because with "
    "the reasons of a rejected one). Compression and profiling results are artifacts of the family's run "
    "(compression/, profile/).")


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI. MLflow 3.17's UI opens every experiment on its GenAI
    overview unless the link (or the UI's own toggle) asks for the model-training view: the kind tag alone is
    not read by that version."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (model-training view)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
