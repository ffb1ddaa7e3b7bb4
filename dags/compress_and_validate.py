"""compress_and_validate: compressed variants of every new candidate, gated on accuracy parity.

Scheduled on the candidate Assets of ``nightly_retrain`` (any of them). For each candidate and each base
(fp32, pruned25/50/75, student) one mapped task builds the base and its precisions (INT8 dynamic, INT8
static, FP16), scores them and gates them against the fp32 model; ``summarize`` measures latency side by
side with PyTorch eager and logs the comparison on the candidate's MLflow run; the variants that pass are
emitted as the validated-variants Asset for profiling. Triggered by hand, it takes the candidates of the
nightly parent run given as a param (or of the latest finished one).
"""

from __future__ import annotations

import functools
import operator
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from recforge_assets import CANDIDATE_ASSETS, CANDIDATE_FAMILIES, VALIDATED_VARIANTS

# what an optional Param left empty in the trigger form (None) means to the stage functions
NOT_GIVEN = {"parent_run_id": "", "families": []}


def _params() -> dict:
    params = dict(get_current_context()["params"])
    return params | {name: value for name, value in NOT_GIVEN.items() if params.get(name) is None}


@dag(
    dag_id="compress_and_validate",
    schedule=functools.reduce(operator.or_, CANDIDATE_ASSETS.values()),  # any candidate
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
    description="Compressed variants (pruned, distilled, INT8/FP16) of each new candidate, gated on accuracy parity",
    max_active_runs=1,
    tags=["recforge", "compression", "validation"],
    default_args={"owner": "recforge", "retries": 1, "retry_delay": timedelta(minutes=2)},
    doc_md=__doc__,
    params={
        "parent_run_id": Param(None, type=["null", "string"], title="Nightly parent run (MLflow run id)",
                               description="Empty: the triggering candidates, else the latest nightly run."),
        "families": Param(None, type=["null", "array"], items={"type": "string"}, examples=list(CANDIDATE_FAMILIES),
                          title="Families", description="Empty: every candidate."),
        "compress_config": Param({}, type="object", title="Compression overrides",
                                 description="CompressConfig fields, e.g. {\"prune_ratios\": [0.5]}."),
        "parity_config": Param({}, type="object", title="Parity thresholds",
                               description="ParityConfig fields, e.g. {\"min_auc_ratio\": 0.999}."),
    },
)
def compress_and_validate():
    @task
    def candidates() -> list[dict]:
        from recforge.pipeline.parity.stage import find_candidates

        ctx = get_current_context()
        extras = [event.extra for events in ctx["triggering_asset_events"].values() for event in events]
        found = find_candidates(extras, _params()["parent_run_id"], _params()["families"])
        return [c.to_dict() for c in found]

    @task
    def plan(found: list[dict]) -> list[dict]:
        from recforge.pipeline.compression.config import CompressConfig
        from recforge.pipeline.compression.variants import plan_bases

        cfg = CompressConfig.from_dict(_params()["compress_config"])
        return [{"candidate": c, "base": base} for c in found for base in plan_bases(cfg, c["family"])]

    # as many at once as the executor runs (the embedded one: one per core): each fine-tunes on one thread
    # (CompressConfig.train_threads) and times nothing; summarize times the family's variants alone, side by side.
    # Each mapped task is named <family>/<base> in the UI
    @task(map_index_template="{{ task.op_kwargs['candidate']['family'] }}/{{ task.op_kwargs['base'] }}")
    def variants(candidate: dict, base: str) -> list[dict]:
        from recforge.pipeline.parity.stage import compress_and_validate, resolve_candidate

        p = _params()  # resolved again: on another worker than candidates', its files come from MLflow/the data root
        return compress_and_validate(resolve_candidate(candidate), base, p["compress_config"], p["parity_config"])

    @task(outlets=[VALIDATED_VARIANTS])
    def summarize(found: list[dict], rows: list[list[dict]]) -> dict:
        from recforge.pipeline.parity.stage import resolve_candidate, summarize_family

        flat = [r for group in rows for r in group]
        result = {}
        for c in found:
            family_rows = [r for r in flat if r["candidate_run_id"] == c["run_id"]]
            summary = summarize_family(resolve_candidate(c), family_rows, _params()["compress_config"])
            result[c["family"]] = {
                "candidate_run_id": c["run_id"],
                "passed": [{k: r[k] for k in ("name", "onnx_path", "variant_run_id", "auc", "size_bytes")}
                           for r in family_rows if r["passed"]],
            }
            print(summary["family"], "passed:", summary["passed"])
        get_current_context()["outlet_events"][VALIDATED_VARIANTS].extra = {"families": result}
        return result

    found = candidates()
    rows = variants.expand_kwargs(plan(found))
    summarize(found, rows)


compress_and_validate()
