"""register_models: the best profiled variant per (family, hardware target) into the MLflow model registry.

Scheduled on the PROFILES Asset of ``profile_variants``. For each profiled family, ``register`` picks per target
the parity-passing variant with the highest latency-bounded throughput (ties: higher AUC, then smaller), makes it
a version of ``recforge-<family>`` (source: the ONNX file the profile measured, SHA-256 checked), and moves
``champion-<target>`` only when it beats the champion by the margin (the old one becomes ``previous-<target>``).
``propose_rollout`` ends the nightly chain: it writes the ``make rollout ...`` command for the release manager
and tags it on the version. It does not touch any fleet. Triggered by hand, it registers the families of the
nightly run given as ``parent_run_id`` (default: the latest finished one). Logic: ``tasks/register.py``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from recforge_assets import PROFILES


def _params() -> dict:
    return dict(get_current_context()["params"])


def _config() -> dict:
    p = _params()
    return {"model_prefix": p["model_prefix"], "margin": p["margin"], "max_auc_drop": p["max_auc_drop"],
            "families": p["families"], "auto_rollout_staging": p["auto_rollout_staging"]}


@dag(
    dag_id="register_models",
    schedule=PROFILES,
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
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
        "families": Param([], type="array", title="Families", description="Empty: every profiled family."),
        "model_prefix": Param("recforge-", type="string", title="Registered model prefix",
                              description="Registered model name = prefix + family."),
        "auto_rollout_staging": Param(False, type="boolean", title="Auto-rollout to staging",
                                      description="Hand each promotion to the staging-rollout hook. Never the "
                                                  "production fleet; the hook is not wired to a rollout yet."),
        "parent_run_id": Param("", type="string", title="Nightly parent run (MLflow run id)",
                               description="Manual trigger only: empty = the latest finished nightly run."),
    },
)
def register_models():
    @task
    def profiled_families() -> list[dict]:
        from recforge.pipeline.registry.stage import find_profiled_candidates

        ctx = get_current_context()
        extras = [event.extra for events in ctx["triggering_asset_events"].values() for event in events]
        return find_profiled_candidates(extras, parent_run_id=_params()["parent_run_id"],
                                        families=_params()["families"])

    @task
    def register(candidate: dict) -> dict:
        from recforge.pipeline.registry.stage import register_family

        return register_family(candidate["candidate_run_id"], cfg=_config(),
                               dag_run_id=get_current_context()["run_id"])

    @task
    def propose_rollout(results: list[dict]) -> dict:
        from recforge.pipeline.registry.stage import propose_rollout

        proposal = propose_rollout(list(results), cfg=_config(), dag_run_id=get_current_context()["run_id"])
        for p in proposal["proposals"]:
            print("proposed rollout:", p["command"])
        for line in proposal["not_promoted"]:
            print("not promoted:", line)
        return proposal

    propose_rollout(register.expand(candidate=profiled_families()))


register_models()
