"""rollout: a release manager rolls a registered model version out to the Triton fleet, canaried.

Triggered by hand (``schedule=None``): from the UI, or ``make rollout MODEL=... TARGET=... [VERSION=...]``, which
runs this DAG through ``airflow dags test``. Steps, each a shim over a function of ``recforge.serving.rollout``:

1. ``resolve``: the version to roll out (an explicit version or an alias, default ``champion-<target>``), its ONNX
   file downloaded and its SHA-256 checked against the registry, and what every fleet node serves now;
2. ``stage_canary``: the version loaded on one canary node (through that node's own repository API, never the
   load balancer); a model that fails to load stops here;
3. ``smoke_test``: known inputs, expected outputs (computed with onnxruntime from the verified file);
4. ``canary``: the canary gets ``canary_weight_pct`` of the traffic while the DeepRecSys load generator runs
   through the load balancer for ``canary_duration_s``; gate on p95 and error rate (load generator and the
   canary's Triton metrics);
5. ``promote``: the other nodes, one at a time, drained first, then updated and put back at their weights.

Any failed step runs ``rollback`` (previous version and weights restored on every node the rollout touched); the
outcome and its figures go to the MLflow model version and the rollout history either way, and a rolled-back
rollout fails the DAG run. A rollout that failed before it resolved a plan touched nothing: ``rollback`` is then
skipped, and the failed step (with ``report`` left upstream-failed) fails the run. ``report`` prints the outcome.

The trigger form submits with its defaults once a model is chosen: the target is a choice list of
``recforge.contracts.targets``, the model a proposal list of ``recforge-<family>`` (any registered name is
accepted), and an empty version means ``champion-<target>``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from recforge.contracts.targets import CPU_TRITON, TARGETS  # torch-free: only the names
from recforge.models.families import DEEP_FAMILIES  # torch-free: only the names

REGISTERED_MODELS = [f"recforge-{family}" for family in DEEP_FAMILIES]  # register_models' default names


def _params() -> dict:
    """The run's Params without the empty optional ones (RolloutConfig's defaults apply to those)."""
    return {k: v for k, v in get_current_context()["params"].items() if v is not None}


def _run_id() -> str:
    return str(get_current_context()["run_id"])


@dag(
    dag_id="rollout",
    schedule=None,
    start_date=pendulum.datetime(1990, 1, 1, tz="UTC"),
    catchup=False,
    description="Roll a registered model version out to the Triton fleet: canary, gate, promote or roll back",
    max_active_runs=1,  # one rollout at a time: the fleet is shared state
    tags=["recforge", "serving", "rollout"],
    # retries would re-run a gate against a fleet this run already changed: never
    default_args={"owner": "recforge", "retries": 0},
    doc_md=__doc__,
    params={
        # no default: the release manager picks the model; proposals, not a closed list, because any registered
        # name can be rolled out (register_models' model_prefix, registries of the tests)
        "model": Param(type="string", minLength=1, title="Registered model", examples=REGISTERED_MODELS,
                       description="MLflow registered model name: recforge-<family> as register_models names them "
                                   f"({', '.join(REGISTERED_MODELS)})."),
        "target": Param(CPU_TRITON, type="string", enum=list(TARGETS), title="Hardware target",
                        values_display={name: f"{name}: {target.summary}" for name, target in TARGETS.items()},
                        description="Target whose champion is rolled out: the running fleet's target."),
        "version": Param(None, type=["null", "string"], title="Version or alias",
                         description="A version number (e.g. 3) or an alias (e.g. previous-cpu-triton); "
                                     "empty: champion-<target>."),
        "canary_weight_pct": Param(10, type="integer", minimum=1, maximum=50, title="Canary weight (%)",
                                   description="Share of the traffic the canary node gets during the canary."),
        "canary_duration_s": Param(30, type="integer", minimum=5, maximum=3600, title="Canary duration (s)",
                                   description="How long the canary serves under load before the gate."),
        "p95_slo_ms": Param(0.0, type="number", minimum=0, title="p95 SLO (ms)",
                            description="p95 latency limit of the gate; 0: the profile's p95 target."),
        "max_error_rate": Param(0.001, type="number", minimum=0, maximum=1, title="Max error rate",
                                description="Failed requests / requests allowed during the canary."),
        "load_qps": Param(0.0, type="number", minimum=0, title="Canary load (queries/s)",
                          description="Offered load during the canary; 0: a quarter of the fleet's profiled capacity."),
        "max_p95_regression": Param(0.2, type="number", minimum=0, maximum=10, title="Max p95 regression",
                                    description="How much slower (0.2 = 20 %) the canary's queries may be than the "
                                                "previous version's under the same load, once over the SLO."),
        "config": Param({}, type="object", title="Other settings",
                        description="Other RolloutConfig fields, e.g. {\"sizes\": \"fixed:64\", \"smoke_rows\": 32}."),
    },
)
def rollout():
    @task
    def resolve() -> dict:
        from recforge.serving.rollout.config import RolloutConfig
        from recforge.serving.rollout.plan import resolve_plan

        return resolve_plan(RolloutConfig.from_params(_params()), dag_run_id=_run_id())

    @task
    def stage_canary(plan: dict) -> dict:
        from recforge.serving.rollout.staging import stage_canary

        return stage_canary(plan)

    @task
    def smoke_test(plan: dict) -> dict:
        from recforge.serving.rollout.smoke import smoke_test

        return smoke_test(plan)

    @task
    def canary(plan: dict) -> dict:
        from recforge.serving.rollout.canary import canary

        return canary(plan)

    @task
    def promote(plan: dict) -> dict:
        from recforge.serving.rollout.outcome import promote

        return promote(plan)

    @task(trigger_rule="one_failed")
    def rollback() -> None:
        """Restore the previous version and weights on every node, record the outcome, fail the run. Reads the
        rollout's own state file (not XCom), so it works whichever step failed. Skipped (not failed) when the
        rollout failed before it had a plan: nothing was touched."""
        from airflow.sdk.exceptions import AirflowSkipException

        from recforge.serving.rollout.outcome import NothingToRollBack, rollback_and_fail

        try:
            rollback_and_fail(dag_run_id=_run_id())
        except NothingToRollBack as nothing:
            raise AirflowSkipException(str(nothing)) from None

    @task
    def report(plan: dict) -> dict:
        """The outcome in one line. A leaf of the DAG beside ``rollback``: a failed step leaves it upstream-failed,
        so the run fails even when ``rollback`` had nothing to restore and was skipped."""
        from recforge.serving.rollout.outcome import summary

        result = summary(plan)
        print(f"rollout {result['outcome']}: {result['model']} v{result['version']} ({result['variant']}) "
              f"on {', '.join(result['updated'] or []) or 'no node'}")
        return result

    plan = resolve()
    staged = stage_canary(plan)
    smoked = smoke_test(staged)
    gated = canary(smoked)
    done = promote(gated)
    report(done)
    [plan, staged, smoked, gated, done] >> rollback()


rollout()
