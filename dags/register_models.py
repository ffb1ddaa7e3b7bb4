"""register_models: the best profiled variant per (family, hardware target) into the MLflow model registry.

Scheduled on the PROFILES Asset of ``profile_variants``. For each profiled family, ``register`` picks per target
the parity-passing variant with the highest latency-bounded throughput (ties: higher AUC, then smaller), makes it
a version of ``recforge-<family>`` (source: the ONNX file the profile measured, SHA-256 checked), and moves
``champion-<target>`` only when it beats the champion by the margin (the old one becomes ``previous-<target>``).
``propose_rollout`` ends the nightly chain: for every new champion it writes the fleet and rollout commands
(``make fleet-up ...``, then ``make rollout ...``) for the release manager and tags them on the version. It does
not touch any fleet. A family that fails does not stop the others' registration or the proposal;
``check_every_family_registered`` then fails the run, naming the family. Triggered by hand, it registers the
families of the nightly run given as ``parent_run_id`` (default: the latest finished one).
Logic: ``recforge/pipeline/registry/``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from recforge_assets import PROFILES

from recforge.models.families import DEEP_FAMILIES  # torch-free: only the names

# what an optional Param left empty in the trigger form (None) means to the stage functions
NOT_GIVEN = {"parent_run_id": "", "families": []}


def _params() -> dict:
    params = dict(get_current_context()["params"])
    return params | {name: value for name, value in NOT_GIVEN.items() if params.get(name) is None}


def _config() -> dict:
    p = _params()
    return {"model_prefix": p["model_prefix"], "margin": p["margin"], "max_auc_drop": p["max_auc_drop"],
            "families": p["families"]}


@dag(
    dag_id="register_models",
    schedule=PROFILES,
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
    description="Best profiled variant per (family, hardware target) into the MLflow registry; proposes rollouts",
    max_active_runs=1,  # alias moves of one run finish before the next run judges against them
    tags=["recforge", "registry"],
    default_args={"owner": "recforge", "retries": 2, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "margin": Param(0.05, type="number", minimum=0, maximum=10, title="Promotion margin",
                        description="Relative latency-bounded-throughput gain over the champion needed to move "
                                    "champion-<target> (0.05 = 5%)."),
        "max_auc_drop": Param(0.001, type="number", minimum=0, maximum=1, title="Allowed AUC drop",
                              description="The new version's test AUC may be at most this much below the "
                                          "champion's."),
        "families": Param(None, type=["null", "array"], items={"type": "string"}, examples=list(DEEP_FAMILIES),
                          title="Families", description="Empty: every profiled family."),
        "model_prefix": Param("recforge-", type="string", title="Registered model prefix",
                              description="Registered model name = prefix + family."),
        "parent_run_id": Param(None, type=["null", "string"], title="Nightly parent run (MLflow run id)",
                               description="Manual trigger only: empty = the latest finished nightly run."),
    },
)
def register_models():
    @task
    def profiled_families() -> list[dict]:
        from recforge.pipeline.registry.candidates import find_profiled_candidates

        ctx = get_current_context()
        extras = [event.extra for events in ctx["triggering_asset_events"].values() for event in events]
        return find_profiled_candidates(extras, parent_run_id=_params()["parent_run_id"],
                                        families=_params()["families"])

    @task(map_index_template="{{ task.op_kwargs['candidate']['family'] }}")  # named by family in the UI
    def register(candidate: dict) -> dict:
        """One family; its bad data comes back as {family, error} (retrying cannot help), so the others go on."""
        from recforge.pipeline.registry.stage import register_candidate

        return register_candidate(candidate, cfg=_config(), dag_run_id=get_current_context()["run_id"])

    # runs when every family is done, even if one's task failed: that family is listed as failed, not the others
    @task(trigger_rule="all_done_min_one_success")
    def propose_rollout(candidates: list[dict], results: list[dict]) -> dict:
        from recforge.pipeline.registry.proposals import propose_rollout

        proposal = propose_rollout(list(results or []), candidates=candidates,
                                   dag_run_id=get_current_context()["run_id"])
        for p in proposal["proposals"]:
            print(f"proposed rollout: {p['command']} (fleet: {p['fleet_command']})")
        for key in ("not_promoted", "not_proposed", "failed"):
            for line in proposal[key]:
                print(f"{key.replace('_', ' ')}:", line)
        return proposal

    @task
    def check_every_family_registered(proposal: dict) -> None:
        """The DAG's leaf, so the run fails when a family failed (after the others' proposal is written)."""
        from airflow.sdk.exceptions import AirflowFailException

        from recforge.pipeline.registry.stage import failed_families

        if failure := failed_families(proposal):
            raise AirflowFailException(failure)  # retrying cannot register it: fail at once

    candidates = profiled_families()
    check_every_family_registered(propose_rollout(candidates, register.expand(candidate=candidates)))


register_models()
