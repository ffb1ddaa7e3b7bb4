"""A retried training task (its worker died mid-run) leaves one training run per family under the nightly parent:
the earlier attempt's run is ended KILLED and deleted, on a real MLflow server."""

from __future__ import annotations

import mlflow
from mlflow.entities import ViewType

from recforge.contracts import tags
from recforge.pipeline.training.train import discard_earlier_attempts


def test_a_retry_deletes_the_earlier_attempts_run_of_its_family_only(mlflow_server):
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.create_experiment("train-retry")
    parent = client.create_run(experiment, run_name="nightly").info.run_id

    def child(family: str, stage: str = "train", under: str = parent) -> str:
        return client.create_run(experiment, tags={"mlflow.parentRunId": under, tags.FAMILY: family,
                                                   tags.STAGE: stage}).info.run_id

    killed_attempt = child("dlrm")  # still RUNNING: its worker was SIGKILLed
    other_family = child("ncf")
    variant = child("dlrm", stage="variant")
    other_night = child("dlrm", under=client.create_run(experiment).info.run_id)

    assert discard_earlier_attempts(client, experiment, parent, "dlrm") == [killed_attempt]
    gone = client.get_run(killed_attempt)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    for kept in (other_family, variant, other_night):
        assert client.get_run(kept).info.lifecycle_stage == "active"
    assert discard_earlier_attempts(client, experiment, parent, "dlrm") == []  # a first attempt: nothing to do
    deleted = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [killed_attempt]
