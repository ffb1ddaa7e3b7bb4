"""How RecForge's runs look in MLflow: model-training experiments, the one metric key per quantity, run notes,
and the links into the UI (``python -m recforge.pipeline.training.tracking`` prints them; ``make ui`` runs it).

Every experiment RecForge logs to carries ``mlflow.experimentKind=custom_model_development``. MLflow 3.17's UI does
not read that tag to choose a view: with workflow-based navigation on (``shouldEnableWorkflowBasedNavigation()``
returns true in ``mlflow/server/js/src/common/utils/FeatureUtils.ts``), ``useExperimentKind`` derives the kind from
the browser's workflow type only (``WorkflowTypeContext.tsx``: the link's ``?workflowType=`` parameter, else the
browser's local storage ``mlflow.workflowType_v1``, else ``genai``), and a bare experiment link opens the GenAI
overview. There is no per-experiment default, so every link RecForge prints carries
``?workflowType=machine_learning`` (:data:`MODEL_TRAINING_VIEW`). The same quantity keeps one metric key on every
run that carries it (family runs, variant runs, the nightly parent), so one column of the runs table compares them.
"""

from __future__ import annotations

import argparse
import textwrap

from recforge.contracts import tags
from recforge.core import config
from recforge.core.cli import run_step
from recforge.core.errors import DataError, first_line

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


MODEL_TRAINING_VIEW = "workflowType=machine_learning"  # the UI's model-training view (runs, model registry)


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI. MLflow 3.17's UI opens every experiment on its GenAI
    overview unless the link (or the UI's own toggle) asks for the model-training view: the kind tag alone is
    not read by that version (see the module docstring)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (model-training view)."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def registry_url(tracking_uri: str, model: str = "", version: str = "") -> str:
    """The model registry (or registered model ``model``, or its ``version``) in the MLflow UI, in the
    model-training view (the GenAI view's side bar has no "Model registry")."""
    page = f"/{model}" + (f"/versions/{version}" if version else "") if model else ""
    return f"{tracking_uri.rstrip('/')}/#/models{page}?{MODEL_TRAINING_VIEW}"


def ui_links(tracking_uri: str) -> list[str]:
    """"<experiment name>: <runs table link>" for every model-training experiment on the server, then the
    registry's link. DataError when the tracking server does not answer."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        experiments = client.search_experiments(
            filter_string=f"tags.`{tags.EXPERIMENT_KIND}` = '{tags.MODEL_TRAINING_EXPERIMENT}'", max_results=100)
    except MlflowException as err:
        raise DataError(f"MLflow at {tracking_uri} did not list its experiments ({first_line(err)}); "
                        "start it with `make mlflow-up`") from None
    lines = [f"{e.name}: {experiment_url(tracking_uri, e.experiment_id)}"
             for e in sorted(experiments, key=lambda e: e.name)]
    return lines + [f"model registry: {registry_url(tracking_uri)}"]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description="Print the MLflow UI links of RecForge's experiments and registry (in the "
                            "model-training view).").parse_args(argv)
    return run_step(lambda: "\n".join(ui_links(config.tracking_uri())))


if __name__ == "__main__":
    raise SystemExit(main())
