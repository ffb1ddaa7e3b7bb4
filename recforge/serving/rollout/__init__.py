"""Rollout: a registered model version onto the local Triton fleet, canaried, gated, promoted or rolled back.

The steps of the ``rollout`` DAG (``dags/rollout.py``; ``make rollout MODEL=... TARGET=... [VERSION=...]`` runs it
through ``airflow dags test``), each a plain function over a *plan* (a small dict that goes through XCom) and the
rollout's **state file** ``$RECFORGE_HOME/rollouts/<rollout id>.json``, which records what every node served
before the rollout touched it. :func:`rollback_and_fail` reads only that file, so it can restore the fleet whichever
step failed, even after a crash.

1. :func:`resolve_plan` (``plan``): the version to roll out (number or alias; default ``champion-<target>``), its
   ONNX file downloaded from the registry and its SHA-256 checked against the version's tag, the fleet's state;
2. :func:`stage_canary` (``staging``): the canary node (the fleet's first node) is drained, gets the new version
   through its own repository API (never through the load balancer) and must report it ready;
3. :func:`smoke_test` (``smoke``): known inputs (seeded) on the canary must give the outputs onnxruntime computes
   from the verified file;
4. :func:`canary` (``canary``): the canary is put back at ``canary_weight_pct`` of the balancer's weight while the
   DeepRecSys load generator runs through the balancer; :func:`gate` (``gate``) judges the canary's queries
   against the SLO and against the queries the other nodes (previous version) served at the same time (the
   balancer names the node of every answer), the error rates, and the canary's own Triton metrics;
5. :func:`promote` (``outcome``): every other node in turn is drained (no new requests; in-flight ones finish),
   updated, smoke-tested and put back at its weight. Any failed step instead runs :func:`rollback_and_fail`.

The outcome (with its figures) is appended to ``$RECFORGE_HOME/rollouts/history.jsonl`` (``history``) and
written as tags on the MLflow model version. ``python -m recforge.serving.rollout history`` lists past rollouts
(``make rollout-history``). :func:`run` runs the same steps in one process (the real-fleet tests use it).
"""

from recforge.serving.rollout.canary import canary, canary_weight, run_load
from recforge.serving.rollout.config import RolloutConfig, RolloutFailed
from recforge.serving.rollout.gate import GateVerdict, attributed_p95, gate
from recforge.serving.rollout.history import (
    append_history,
    history_path,
    load_state,
    read_history,
    rollouts_dir,
    save_state,
    state_path,
)
from recforge.serving.rollout.outcome import promote, rollback_and_fail, run, summary
from recforge.serving.rollout.plan import fetch_version, resolve_plan, version_info
from recforge.serving.rollout.smoke import check_smoke, expected_outputs, smoke_inputs, smoke_test
from recforge.serving.rollout.staging import stage_canary

__all__ = [
    "GateVerdict", "RolloutConfig", "RolloutFailed", "append_history", "attributed_p95", "canary", "canary_weight",
    "check_smoke", "expected_outputs", "fetch_version", "gate", "history_path", "load_state", "promote",
    "read_history", "resolve_plan", "rollback_and_fail", "rollouts_dir", "run", "run_load", "save_state",
    "smoke_inputs", "smoke_test", "stage_canary", "state_path", "summary", "version_info",
]
