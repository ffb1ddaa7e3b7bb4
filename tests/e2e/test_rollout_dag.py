"""The ``rollout`` DAG end to end, as ``make rollout`` runs it (``airflow dags test``): a real MLflow registry, a
2-node fleet of real tritonserver processes behind a real haproxy, a good version promoted and a deliberately slow
one rolled back by the DAG's own ``rollback`` task (the previous version serving again, the DAG run failed)."""

from __future__ import annotations

import json
import uuid

import pytest

from recforge.contracts import tags
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from recforge.serving.rollout import read_history
from tests.e2e.conftest import make_pipeline_env, run_dag
from tests.serving.registered import SPEC, TARGET, Registry, compute_floor_ms, sha

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not triton_ok, reason=f"no tritonserver: {triton_why}")]
# short canary windows (the DAG's minimum is 5 s); the SLO is the slow-model test's, as in test_rollout_fleet.py
CONF = {"canary_duration_s": 5, "load_qps": 15.0, "p95_slo_ms": 2000.0,
        "config": {"sizes": "fixed:16", "drain_timeout_s": 10.0}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_server):
    """The registry with v1 (the champion, served by the fleet), v2 (good) and v3 (slow); this process's
    RECFORGE_HOME and tracking URI are the DAG's."""
    import mlflow

    folder = tmp_path_factory.mktemp("rollout_dag")
    env = make_pipeline_env(folder, mlflow_server)
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RECFORGE_HOME", "MLFLOW_TRACKING_URI"):
            patch.setenv(key, env[key])
        mlflow.set_tracking_uri(mlflow_server)
        spec_path = folder / "spec.json"
        spec_path.write_text(SPEC.to_json())
        files = {name: export_onnx(build_model(family, SPEC, **kwargs).eval(), SPEC, folder / f"{name}.onnx")
                 for name, family, kwargs in (("v1", "ncf", {}), ("v2", "ncf", {}),
                                              # ~10 M MACs per item
                                              ("slow", "dlrm", {"top_mlp": (2048, 2048, 2048, 1)}))}
        registry = Registry(f"recforge-ncf-{uuid.uuid4().hex[:6]}", spec_path, folder)
        versions = {"v1": registry.add(files["v1"], "fp32", alias=f"champion-{TARGET}"),
                    "v2": registry.add(files["v2"], "pruned50"), "slow": registry.add(files["slow"], "slow")}
        source = fl.explicit_source(files["v1"], spec_path, model=registry.name, version=int(versions["v1"]),
                                    expected_sha256=sha(files["v1"]))
        fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200))
        try:
            yield {"env": env, "model": registry.name, "versions": versions, "client": registry.client,
                   "files": files}
        finally:
            fl.down()


def served_versions(model: str) -> dict[str, int]:
    return {n: node["models"][model]["version"] for n, node in fl.read_state()["nodes"].items()}


def rollout_dag(world, day: str, version: str, **overrides) -> tuple[int, str]:
    """One run of the rollout DAG (its run id, hence the rollout's state file, follows the logical date ``day``)."""
    conf = {**CONF, **overrides, "model": world["model"], "target": TARGET, "version": version}
    out = run_dag(world["env"], "rollout", f"{day}T00:00:00+00:00", json.dumps(conf), timeout=900)
    return out.returncode, out.stdout + out.stderr


def gist(log: str) -> str:
    """The lines of an Airflow log that say what happened: the rollout's own lines and every failure."""
    return "\n".join(line for line in log.splitlines()
                     if "recforge.serving.rollout" in line or "Task failed" in line or "Error" in line)[-4000:]


def test_the_dag_promotes_a_good_version(world):
    v2 = world["versions"]["v2"]
    status, log = rollout_dag(world, "2026-01-01", v2)
    assert status == 0, gist(log)
    record = read_history(world["model"])[-1]
    assert record["outcome"] == "promoted" and record["version"] == v2, record
    assert served_versions(world["model"]) == {"node0": int(v2), "node1": int(v2)}
    assert world["client"].get_model_version(world["model"], v2).tags[tags.ROLLOUT_LAST].startswith("promoted")


def test_the_dag_rolls_a_slow_version_back_and_fails(world):
    before = served_versions(world["model"])
    slow = world["versions"]["slow"]
    # the SLO is half what the slow model needs for one 256-row request on this machine (~5 GFLOP; a fixed 40 ms
    # SLO let its canary pass at 7.5 q/s on an AVX-512 Xeon), as in test_rollout_fleet.py
    slo_ms = round(compute_floor_ms(world["files"]["slow"], 256) / 2, 1)
    status, log = rollout_dag(world, "2026-01-02", slow, p95_slo_ms=slo_ms, load_qps=25.0, canary_weight_pct=30,
                              config={"sizes": "fixed:256", "drain_timeout_s": 10.0})
    assert status != 0, "a rolled-back rollout must fail the DAG run"
    assert "failed its gate" in log and "rolled back" in log, gist(log)
    record = read_history(world["model"])[-1]
    assert record["outcome"] == "rolled_back" and record["version"] == slow and not record["gate"]["passed"]
    assert any(f"SLO {slo_ms:.1f} ms" in reason for reason in record["gate"]["reasons"])
    # the DAG's rollback task restored the previous version on every node, ready behind the balancer
    assert served_versions(world["model"]) == before
    state = fl.read_state()
    assert all(tr.model_ready(node["url"], world["model"], before[n]) for n, node in state["nodes"].items())
    assert all(node["lb_state"] == "ready" for node in state["nodes"].values())
