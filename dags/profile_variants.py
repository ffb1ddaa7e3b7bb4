"""profile_variants: serving profiles of the validated variants, per hardware target, logged in MLflow.

Scheduled on the validated-variants Asset of ``compress_and_validate``. ``plan`` picks per family the passing
variants on the accuracy/latency Pareto front (fastest first, at most ``max_variants_per_family``) plus the fp32
reference; ``profile`` (one mapped task per family, one at a time: load tests need quiet cores) races the
family's variants on every configured target (the predicted fastest gets the knob search, each later one is
measured at the knobs of the best so far, challenged at its LBT first), measures their latency-bounded throughput
and logs the profile JSON, metrics and plots on each variant's MLflow run; ``summarize`` logs the table and the
Pareto plot on each family's training run and emits the profiles Asset for registration. Triggered by hand, it
takes the validated variants of the nightly run given as a param (or of one candidate run, or of the latest
finished nightly run).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.configuration import conf
from airflow.sdk import Param, dag, get_current_context, task
from recforge_assets import PROFILES, VALIDATED_VARIANTS

from recforge.contracts.targets import PROFILED_TARGETS, TARGETS  # torch-free: only the names
from recforge.models.families import DEEP_FAMILIES  # torch-free: only the names

# what an optional Param left empty in the trigger form (None) means to the stage functions
NOT_GIVEN = {"families": [], "targets": [], "parent_run_id": "", "candidate_run_id": ""}
# The executor queue of the load tests. The cluster (infra/cluster) sets RECFORGE_PROFILING_QUEUE=profiling, a queue
# one Celery worker serves one task at a time, so a profile is not measured beside another task; unset (the embedded
# mode): Airflow's default queue.
PROFILING_QUEUE = os.environ.get("RECFORGE_PROFILING_QUEUE") or conf.get("operators", "default_queue")


def _params() -> dict:
    params = dict(get_current_context()["params"])
    return params | {name: value for name, value in NOT_GIVEN.items() if params.get(name) is None}


def _stage_config() -> dict:
    """ProfileStageConfig fields from the params (targets / profile_config override the stage overrides)."""
    p = _params()
    cfg = dict(p["stage_config"])
    if p["targets"]:
        cfg["targets"] = p["targets"]
    if p["profile_config"]:
        cfg["profile"] = p["profile_config"]
    return cfg


@dag(
    dag_id="profile_variants",
    schedule=VALIDATED_VARIANTS,
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
    description="Serving profiles (latency-bounded throughput) of the validated variants on each hardware target",
    max_active_runs=1,
    tags=["recforge", "profiling"],
    default_args={"owner": "recforge", "retries": 1, "retry_delay": timedelta(minutes=2)},
    doc_md=__doc__,
    params={
        "families": Param(None, type=["null", "array"], items={"type": "string"}, examples=list(DEEP_FAMILIES),
                          title="Families", description="Empty: every family with validated variants."),
        "targets": Param(None, type=["null", "array"], items={"type": "string"}, examples=list(PROFILED_TARGETS),
                         values_display={name: f"{name}: {TARGETS[name].summary}" for name in PROFILED_TARGETS},
                         title="Hardware targets",
                         description="Targets to profile on (recforge.contracts.targets). Empty: all of them; "
                                     "unavailable ones (e.g. a GPU target without a GPU) are reported and skipped."),
        "profile_config": Param({}, type="object", title="Profiling overrides",
                                description="ProfileConfig fields, e.g. {\"point_duration_s\": 2, \"p95_target_ms\": "
                                            "25}."),
        "stage_config": Param({}, type="object", title="Selection overrides",
                              description="ProfileStageConfig fields, e.g. {\"max_variants_per_family\": 2}."),
        "parent_run_id": Param(None, type=["null", "string"], title="Nightly parent run (MLflow run id)",
                               description="Manual trigger: profile the validated variants of this nightly run. "
                                           "Empty: the triggering asset events, else the latest nightly run."),
        "candidate_run_id": Param(None, type=["null", "string"], title="Candidate run (MLflow run id)",
                                  description="Manual trigger: only this family's training run."),
    },
)
def profile_variants():
    @task
    def plan() -> list[dict]:
        from recforge.pipeline.profiling.stage import family_jobs, plan_profiles
        from recforge.pipeline.profiling.stage_config import ProfileStageConfig

        ctx = get_current_context()
        extras = [event.extra for events in ctx["triggering_asset_events"].values() for event in events]
        p = _params()
        return family_jobs(plan_profiles(extras, parent_run_id=p["parent_run_id"],
                                         candidate_run_id=p["candidate_run_id"], families=p["families"],
                                         cfg=ProfileStageConfig.from_dict(_stage_config())))

    # load tests need quiet cores; a family's variants race each other in one task, named after the family in the UI
    @task(max_active_tis_per_dagrun=1, execution_timeout=timedelta(minutes=30), queue=PROFILING_QUEUE,
          map_index_template="{{ task.op_kwargs['family_job']['family'] }}")
    def profile(family_job: dict) -> list[dict]:
        from recforge.pipeline.profiling.stage import profile_family

        return profile_family(family_job, _stage_config())

    @task(outlets=[PROFILES])
    def summarize(results: list[list[dict]]) -> dict:
        from recforge.pipeline.profiling.stage import summarize_profiles
        from recforge.pipeline.profiling.summary import format_summary, profiles_asset_extra

        summaries = summarize_profiles([variant for family in results for variant in family])
        for summary in summaries.values():
            print(format_summary(summary))
        extra = profiles_asset_extra(summaries)
        get_current_context()["outlet_events"][PROFILES].extra = extra
        return extra

    summarize(profile.expand(family_job=plan()))


profile_variants()
