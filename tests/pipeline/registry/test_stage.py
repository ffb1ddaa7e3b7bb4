"""Registration per hardware target against a real MLflow server (tests/conftest.py ``mlflow_server``).

Each test builds real MLflow runs the way the pipeline lays them out (a nightly parent run, a family's training
run, variant child runs with a real ONNX file under ``onnx/`` and schema-valid profile documents under
``profile/<target>.json``) and registers them into its own registered models (a unique name prefix).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from recforge.contracts import registry
from recforge.contracts.profile import validate_profile
from recforge.core.errors import ConfigError, DataError
from recforge.pipeline.registry import stage as register
from recforge.pipeline.registry.stage import ProfiledVariant, RegisterConfig

REPO = Path(__file__).resolve().parents[2]
FAMILY = "dlrm"


def tiny_onnx(path: Path, weight: float) -> str:
    """A real 2-input logistic model (MatMul + Sigmoid); ``weight`` makes the file (and its SHA-256) unique."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[weight], [0.5]], dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["dense", "w"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["ctr"])],
        "tiny", [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", 2])],
        [helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["B", 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def profile_doc(*, variant: str, run_id: str, sha: str, target: str, lbt: float, auc: float,
                host: str = "bench-1", family: str = FAMILY) -> dict:
    doc = {
        "schema_version": 1, "model_family": family, "variant": variant, "variant_run_id": run_id,
        "onnx_sha256": sha,
        "target": {"name": target, "kind": "cpu-triton" if "triton" in target else "cpu-onnxruntime",
                   "device": "test CPU, 2 cores", "threads": 1},
        "load": {"arrival": "poisson", "distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
                 "mean_items_per_query": 167.5, "sub_batch_policy": {"mode": "searched"}},
        "p95_target_ms": 25.0,
        "search": {"strategy": "hill_climb", "evaluations": [{"knobs": {"sub_batch": 64}, "lbt_qps": lbt}],
                   "best_knobs": {"sub_batch": 64}},
        "latency_bounded_throughput_qps": lbt, "items_per_s": lbt * 167.5,
        "curve": [{"offered_qps": max(lbt, 1.0), "achieved_qps": lbt, "p50_ms": 5.0, "p95_ms": 10.0,
                   "p99_ms": 12.0, "errors": 0}],
        "latency_vs_batch": [{"batch": 64, "ms": 1.0}],
        "accuracy": {"auc": auc, "delta_auc": -0.0005},
        "measured_at": "1998-04-23T03:00:00+00:00", "host": host, "code_version": "test",
    }
    validate_profile(doc)
    return doc


class Pipeline:
    """Fabricates nightly runs in a real MLflow server, and registers them with one config."""

    def __init__(self, tmp_path: Path):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.tmp = tmp_path
        self.experiment_id = self.client.create_experiment(os.environ["RECFORGE_EXPERIMENT"])
        self.cfg = RegisterConfig(model_prefix=f"t{uuid.uuid4().hex[:8]}-")
        self.model = register.model_name(FAMILY, self.cfg)
        self.nights = 0

    def night(self, variants: dict[str, dict], day: str = "") -> tuple[str, dict[str, str]]:
        """A nightly parent run, a dlrm training run and one variant run per entry of ``variants``:
        {name: {"lbt": {target: qps}, "auc": x, "size": bytes, "parity": "passed", "sha": override}}.
        Returns (training run id, {variant: variant run id})."""
        self.nights += 1
        day = day or f"1998-04-{10 + self.nights:02d}"
        c = self.client
        parent = c.create_run(self.experiment_id, run_name=f"nightly-{day}", tags={
            "recforge.kind": "nightly", "recforge.logical_date": day, "recforge.data_fingerprint": f"fp-{day}",
            "recforge.airflow_run_id": f"scheduled__{day}", "mlflow.source.git.commit": "abc123"}).info.run_id
        train = c.create_run(self.experiment_id, run_name=FAMILY, tags={
            "recforge.family": FAMILY, "recforge.stage": "train", "mlflow.parentRunId": parent}).info.run_id
        c.log_param(train, "data_day", day)
        c.log_param(train, "data_fingerprint", f"fp-{day}")
        run_ids = {}
        for i, (name, v) in enumerate(variants.items()):
            run_id = c.create_run(self.experiment_id, run_name=f"{FAMILY}/{name}", tags={
                "recforge.stage": "compress", "recforge.family": FAMILY, "recforge.variant": name,
                "recforge.parity": v.get("parity", "passed"), "mlflow.parentRunId": train}).info.run_id
            folder = self.tmp / run_id
            folder.mkdir()
            sha = tiny_onnx(folder / f"model.{name}.onnx", weight=self.nights * 10 + i + 0.25)
            c.log_artifact(run_id, str(folder / f"model.{name}.onnx"), "onnx")
            c.log_metric(run_id, "size_bytes", v.get("size", 1000.0))
            c.log_metric(run_id, "auc", v["auc"])
            for target, lbt in v["lbt"].items():
                doc = profile_doc(variant=name, run_id=run_id, sha=v.get("sha", sha), target=target, lbt=lbt,
                                  auc=v["auc"], host=v.get("host", "bench-1"))
                c.log_dict(run_id, doc, f"profile/{target}.json")
            c.log_dict(run_id, {}, "profile/skipped.json")  # profile_variants writes it beside the profiles
            c.set_terminated(run_id)
            run_ids[name] = run_id
        c.log_dict(train, {"family": FAMILY}, "profile/summary.json")  # profile_variants' mark of a profiled family
        c.set_terminated(train)
        c.set_terminated(parent)
        return train, run_ids

    def register(self, train_run_id: str, dag_run_id: str = "", **overrides) -> dict:
        cfg = RegisterConfig.from_dict(self.cfg.to_dict() | overrides)
        return register.register_family(train_run_id, cfg=cfg, dag_run_id=dag_run_id or f"run-{train_run_id[:6]}")

    def aliases(self) -> dict[str, str]:
        return dict(self.client.get_registered_model(self.model).aliases)

    def versions(self) -> list:
        return self.client.search_model_versions(f"name = '{self.model}'")


@pytest.fixture
def pipeline(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECFORGE_EXPERIMENT", f"register-{uuid.uuid4().hex[:8]}")
    mlflow.set_tracking_uri(mlflow_server)
    return Pipeline(tmp_path)


def one_variant(lbt: float, auc: float = 0.75, **extra) -> dict:
    return {"v": {"lbt": {"cpu": lbt}, "auc": auc, **extra}}


# --------------------------------------------------------------------------------------------------------------
# Selection (no server)


def pv(variant: str, lbt: float, auc: float, size: float | None, *, target: str = "cpu", parity: str = "passed",
       family: str = FAMILY) -> ProfiledVariant:
    doc = profile_doc(variant=variant, run_id=uuid.uuid4().hex, sha="0" * 64, target=target, lbt=lbt, auc=auc,
                      family=family)
    return ProfiledVariant(profile=doc, parity=parity, size_bytes=size)


def test_select_best_ranks_by_lbt_then_auc_then_size():
    variants = [
        pv("fast_rejected", 900, 0.80, 10, parity="rejected"),  # fastest, but failed the parity gate
        pv("never_meets_slo", 0, 0.80, 10),
        pv("slow", 100, 0.80, 10),
        pv("fast_low_auc", 300, 0.74, 10),
        pv("fast_big", 300, 0.75, 4000),
        pv("fast_small", 300, 0.75, 2000),
        pv("triton_a", 50, 0.75, 100, target="cpu-triton"),
        pv("triton_b", 60, 0.70, 100, target="cpu-triton"),
        pv("other_family", 999, 0.75, 1, family="din"),
    ]
    best = register.select_best(variants)
    assert {k: v.variant for k, v in best.items()} == {
        ("din", "cpu"): "other_family", (FAMILY, "cpu"): "fast_small", (FAMILY, "cpu-triton"): "triton_b"}
    assert register.select_best([pv("a", 300, 0.75, None), pv("b", 300, 0.75, 10)])[(FAMILY, "cpu")].variant == "b"
    assert register.select_best(variants[:2]) == {}
    assert "parity rejected" in variants[0].eligible()[1]
    assert "LBT 0" in variants[1].eligible()[1]


def test_judge_margin_and_auc_tolerance():
    cfg = RegisterConfig(margin=0.05, max_auc_drop=0.001)
    inc = {"recforge.lbt_qps": "100.0", "recforge.auc": "0.75", "recforge.profile_host": "a"}

    def decide(lbt, auc, host="a"):
        new = {"recforge.lbt_qps": str(lbt), "recforge.auc": str(auc), "recforge.profile_host": host}
        return register.judge(new, "3", inc, cfg, version="4")

    assert decide(105.0, 0.7495).decision == "promoted"  # exactly the margin, AUC within the tolerance
    assert decide(104.9, 0.76).decision == "kept_incumbent"
    assert decide(200.0, 0.7485).decision == "kept_incumbent"
    assert "different hosts" in decide(200.0, 0.75, host="b").reason
    assert register.judge(inc, None, None, cfg, version="1").decision == "first_champion"
    other_slo = {"recforge.lbt_qps": "900", "recforge.auc": "0.8", "recforge.p95_target_ms": "50.0"}
    assert "another SLO" in register.judge(other_slo, "3", inc | {"recforge.p95_target_ms": "25.0"}, cfg,
                                           version="4").reason
    with pytest.raises(ConfigError, match="margin"):
        RegisterConfig.from_dict({"margin": -0.1})
    with pytest.raises(ConfigError, match="unknown key"):
        RegisterConfig.from_dict({"margn": 0.1})
    with pytest.raises(ConfigError, match="alias"):
        registry.alias("champion", "gpu/t4")


# --------------------------------------------------------------------------------------------------------------
# Against the real MLflow server


def test_first_registration_sets_champion_with_its_provenance(pipeline):
    train, runs = pipeline.night({
        "fp32": {"lbt": {"cpu": 200.0, "cpu-triton": 150.0}, "auc": 0.752, "size": 8000},
        "int8": {"lbt": {"cpu": 260.0, "cpu-triton": 140.0}, "auc": 0.751, "size": 2000},
        "pruned": {"lbt": {"cpu": 900.0}, "auc": 0.70, "size": 1000, "parity": "rejected"},
    })
    result = pipeline.register(train, dag_run_id="night-1")
    assert {t: (r["variant"], r["decision"]) for t, r in result["targets"].items()} == {
        "cpu": ("int8", "first_champion"), "cpu-triton": ("fp32", "first_champion")}
    assert any("pruned on cpu: parity rejected" in s for s in result["skipped"])
    aliases = pipeline.aliases()
    assert aliases == {"champion-cpu": result["targets"]["cpu"]["version"],
                       "champion-cpu-triton": result["targets"]["cpu-triton"]["version"]}
    assert len(pipeline.versions()) == 2

    info = registry.champion(pipeline.model, "cpu")
    tags = info["tags"]
    assert info["variant"] == "int8" and info["run_id"] == runs["int8"]
    assert info["source"] == f"runs:/{runs['int8']}/onnx/model.int8.onnx"
    assert info["profile"]["latency_bounded_throughput_qps"] == 260.0 and info["lbt_qps"] == 260.0
    assert {k: tags[f"recforge.{k}"] for k in ("target", "target_kind", "variant", "parity", "data_day",
                                               "data_fingerprint", "git_commit", "candidate_run_id")} == {
        "target": "cpu", "target_kind": "cpu-onnxruntime", "variant": "int8", "parity": "passed",
        "data_day": "1998-04-11", "data_fingerprint": "fp-1998-04-11", "git_commit": "abc123",
        "candidate_run_id": train}
    assert tags["recforge.auc"] == "0.751" and tags["recforge.size_bytes"] == "2000.0"
    assert json.loads(tags["recforge.best_knobs"]) == {"sub_batch": 64}
    assert tags["recforge.profile_host"] == "bench-1" and tags["recforge.blessing.decision"] == "first_champion"
    # the registered source is the very file the profile measured, and the rollout stage gets it checked
    path, _ = registry.download_champion(pipeline.model, "cpu", pipeline.tmp / "dl")
    assert path.name == "model.int8.onnx" and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["onnx_sha256"] == tags["recforge.onnx_sha256"]
    assert info["onnx_sha256"] == info["profile"]["onnx_sha256"]
    with pytest.raises(ConfigError, match="no alias champion-gpu"):
        registry.champion(pipeline.model, "gpu")


def test_better_version_moves_champion_and_keeps_the_incumbent_as_previous(pipeline):
    first = pipeline.register(pipeline.night(one_variant(100.0))[0], dag_run_id="night-1")["targets"]["cpu"]
    second = pipeline.register(pipeline.night(one_variant(130.0, host="bench-2"))[0],
                               dag_run_id="night-2")["targets"]["cpu"]
    assert second["decision"] == "promoted" and second["compared_with"] == first["version"]
    assert pipeline.aliases() == {"champion-cpu": second["version"], "previous-cpu": first["version"]}
    tags = pipeline.client.get_model_version(pipeline.model, second["version"]).tags
    assert tags["recforge.blessing.decision"] == "promoted"
    assert tags["recforge.blessing.compared_with"] == first["version"]
    assert float(tags["recforge.blessing.incumbent_lbt_qps"]) == 100.0
    assert float(tags["recforge.blessing.new_lbt_qps"]) == 130.0
    assert abs(float(tags["recforge.blessing.lbt_gain"]) - 0.3) < 1e-9
    assert tags["recforge.blessing.incumbent_host"] == "bench-1" and tags["recforge.blessing.new_host"] == "bench-2"
    assert "different hosts" in tags["recforge.blessing.reason"]

    # the alias history: in the registry tag and in the local JSONL file, each move once
    moves = [(e["alias"], e["from_version"], e["to_version"], e["action"], e["dag_run_id"])
             for e in register.alias_history(pipeline.model, "cpu")]
    assert moves == [("champion-cpu", None, first["version"], "promote", "night-1"),
                     ("previous-cpu", None, first["version"], "demote", "night-2"),
                     ("champion-cpu", first["version"], second["version"], "promote", "night-2")]
    lines = [json.loads(line) for line in register.history_path().read_text().splitlines()]
    assert [(e["alias"], e["from_version"], e["to_version"]) for e in lines] == [m[:3] for m in moves]
    assert all(e["time"] and e["reason"] and e["model"] == pipeline.model for e in lines)


def test_version_within_margin_or_losing_auc_is_registered_but_not_promoted(pipeline):
    first = pipeline.register(pipeline.night(one_variant(100.0, auc=0.75))[0])["targets"]["cpu"]
    close = pipeline.register(pipeline.night(one_variant(103.0, auc=0.76))[0])["targets"]["cpu"]
    assert close["decision"] == "kept_incumbent" and close["created"]
    assert "+3.0%" in close["reason"] and "below the required +5.0% margin" in close["reason"]
    worse_auc = pipeline.register(pipeline.night(one_variant(150.0, auc=0.74))[0])["targets"]["cpu"]
    assert worse_auc["decision"] == "kept_incumbent" and "AUC 0.7400" in worse_auc["reason"]
    assert pipeline.aliases() == {"champion-cpu": first["version"]}
    assert len(pipeline.versions()) == 3
    tags = pipeline.client.get_model_version(pipeline.model, close["version"]).tags
    assert tags["recforge.blessing.decision"] == "kept_incumbent" and "margin" in tags["recforge.blessing.reason"]
    assert register.propose_rollout([{"model": pipeline.model, "family": FAMILY, "targets": {"cpu": close}}],
                                    cfg=pipeline.cfg)["proposals"] == []
    # the margin is configurable: with 2% the same version (judged again on a rerun) wins
    rejudged = pipeline.register(pipeline.client.get_run(close["variant_run_id"]).data.tags["mlflow.parentRunId"],
                                 margin=0.02)["targets"]["cpu"]
    assert (rejudged["version"], rejudged["decision"]) == (close["version"], "promoted")
    assert pipeline.aliases() == {"champion-cpu": close["version"], "previous-cpu": first["version"]}


def test_rerun_of_the_same_dag_run_creates_no_duplicates(pipeline):
    train, _ = pipeline.night({"a": {"lbt": {"cpu": 100.0, "cpu-triton": 80.0}, "auc": 0.75},
                               "b": {"lbt": {"cpu": 90.0, "cpu-triton": 95.0}, "auc": 0.75}})
    once = pipeline.register(train, dag_run_id="night-1")
    history = register.alias_history(pipeline.model)
    twice = pipeline.register(train, dag_run_id="night-1")
    assert [t["created"] for t in once["targets"].values()] == [True, True]
    assert [t["created"] for t in twice["targets"].values()] == [False, False]
    assert {t: r["version"] for t, r in twice["targets"].items()} == {t: r["version"]
                                                                      for t, r in once["targets"].items()}
    assert all(r["decision"] == "first_champion" for r in twice["targets"].values())
    assert len(pipeline.versions()) == 2
    assert register.alias_history(pipeline.model) == history and len(history) == 2
    proposals = [register.propose_rollout([once], cfg=pipeline.cfg, dag_run_id="night-1") for _ in range(2)]
    assert proposals[0]["proposals"] == proposals[1]["proposals"] and len(proposals[0]["proposals"]) == 2


def test_profile_of_another_onnx_file_is_refused(pipeline):
    train, runs = pipeline.night(one_variant(100.0, sha="f" * 64))
    with pytest.raises(DataError, match=r"refusing to register dlrm/v .* SHA-256 ffffffffffff.*re-profile"):
        pipeline.register(train)
    assert pipeline.versions() == []
    assert "champion-cpu" not in pipeline.aliases()


def test_invalid_profile_is_named(pipeline):
    train, runs = pipeline.night(one_variant(100.0))
    doc = pipeline.client.get_run(runs["v"])  # overwrite the profile with one that breaks the schema
    bad = profile_doc(variant="v", run_id=runs["v"], sha="0" * 64, target="cpu", lbt=1.0, auc=0.7)
    bad["target"].pop("threads")
    pipeline.client.log_dict(doc.info.run_id, bad, "profile/cpu.json")
    with pytest.raises(ConfigError, match=r"profile/cpu.json of variant run .*\$\.target\.threads"):
        pipeline.register(train)


def test_a_profile_the_latest_profiling_did_not_renew_is_ignored(pipeline):
    """MLflow keeps artifacts forever: a target profiled on an earlier night (here cpu-old) and skipped on the
    latest one still has its file; the run's recforge.profiled_targets tag says which profiles are current."""
    train, runs = pipeline.night({"v": {"lbt": {"cpu": 100.0, "cpu-old": 900.0}, "auc": 0.75}})
    variants, _ = register.load_profiled_variants(train)
    assert sorted(v.profile["target"]["name"] for v in variants) == ["cpu", "cpu-old"]  # no tag: every file
    pipeline.client.set_tag(runs["v"], "recforge.profiled_targets", "cpu")
    variants, _ = register.load_profiled_variants(train)
    assert [v.profile["target"]["name"] for v in variants] == ["cpu"]
    pipeline.client.set_tag(runs["v"], "recforge.profiled_targets", "none")
    variants, problems = register.load_profiled_variants(train)
    assert variants == [] and "have no profile" in problems[0]


def test_rollback_walks_back_one_champion_at_a_time(pipeline):
    nights = [pipeline.night(one_variant(lbt))[0] for lbt in (100.0, 130.0, 170.0)]
    v1, v2, v3 = (pipeline.register(t, dag_run_id=f"night-{i}")["targets"]["cpu"]["version"]
                  for i, t in enumerate(nights, 1))
    assert pipeline.aliases() == {"champion-cpu": v3, "previous-cpu": v2}

    out = register.rollback_alias(pipeline.model, "cpu", reason="canary p95 over SLO", dag_run_id="rollout-1")
    assert out == {"model": pipeline.model, "target": "cpu", "from_version": v3, "to_version": v2,
                   "previous_version": v1}
    assert pipeline.aliases() == {"champion-cpu": v2, "previous-cpu": v1}
    assert registry.champion(pipeline.model, "cpu", with_profile=False)["version"] == v2
    assert "canary p95 over SLO" in pipeline.client.get_model_version(pipeline.model, v3).tags["recforge.rolled_back"]
    # a retry of night 3 must not undo the rollback
    retried = pipeline.register(nights[2], dag_run_id="night-3")["targets"]["cpu"]
    assert retried["decision"] == "kept_incumbent" and "rolled back" in retried["reason"]
    assert pipeline.aliases()["champion-cpu"] == v2

    register.rollback_alias(pipeline.model, "cpu")
    assert pipeline.aliases() == {"champion-cpu": v1}
    with pytest.raises(ConfigError, match="no alias previous-cpu: nothing to roll back to"):
        register.rollback_alias(pipeline.model, "cpu")
    rollbacks = [(e["alias"], e["from_version"], e["to_version"], e["dag_run_id"])
                 for e in register.alias_history(pipeline.model, "cpu") if e["action"] == "rollback"]
    assert rollbacks == [("champion-cpu", v3, v2, "rollout-1"), ("previous-cpu", v2, v1, "rollout-1"),
                         ("champion-cpu", v2, v1, ""), ("previous-cpu", v1, None, "")]


def test_cli_registers_proposes_and_shows(pipeline, capsys):
    train, _ = pipeline.night(one_variant(100.0))
    conf = json.dumps({"model_prefix": pipeline.cfg.model_prefix, "auto_rollout_staging": True})
    capsys.readouterr()  # MLflow's "View run" lines of the fabricated runs
    assert register.main(["--candidate-run", train, "--config", conf, "--dag-run-id", "scheduled__1998-04-11"]) == 0
    out = json.loads(capsys.readouterr().out)
    proposal = out["proposal"]["proposals"][0]
    assert proposal["command"] == f"make rollout MODEL={pipeline.model} TARGET=cpu VERSION=1"
    assert proposal["staging"]["triggered"] is False and "not wired" in proposal["staging"]["note"]
    path = Path(out["proposal"]["path"])
    assert path.name == "scheduled__1998-04-11.md" and proposal["command"] in path.read_text()
    tags = pipeline.client.get_model_version(pipeline.model, "1").tags
    assert tags["recforge.rollout_proposal"] == proposal["command"]
    assert tags["recforge.registered_by_dag_run"] == "scheduled__1998-04-11"

    assert register.main(["show", "--prefix", pipeline.cfg.model_prefix]) == 0
    shown = capsys.readouterr().out
    assert f"{pipeline.model}\n  champion-cpu: v1 v (LBT 100 qps, AUC 0.7500, data 1998-04-11)" in shown
    assert "champion-cpu: v- -> v1 [promote, scheduled__1998-04-11] first_champion" in shown
    assert register.main(["rollback", "--model", pipeline.model, "--target", "cpu"]) == 1
    assert "error: " in capsys.readouterr().err
    assert register.main(["--candidate-run", train, "--config", '{"margin": "big"}']) == 1
    assert "RegisterConfig.margin must be a number" in capsys.readouterr().err


def test_register_models_dag_shape(tmp_path):
    """The DAG parses (no import errors, no heavy imports) and is scheduled on the PROFILES asset."""
    home = tmp_path / "airflow"
    env = os.environ | {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/no/such/dir/airflow.db"}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "dags" / "parse_dags.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not {k: v for k, v in parsed["import_errors"].items() if "register_models" in k}
    dag = parsed["dags"]["register_models"]
    assert dag["timetable"] == "AssetTriggeredTimetable"
    assert dag["catchup"] is False and dag["max_active_runs"] == 1 and dag["start_date"].startswith("1990-01-01")
    assert {"margin", "max_auc_drop", "families", "auto_rollout_staging", "model_prefix"} <= set(dag["params"])
    assert all(p["title"] for p in dag["params"].values())
    assert set(dag["tasks"]) == {"profiled_families", "register", "propose_rollout"}
    assert all(t["retries"] >= 1 for t in dag["tasks"].values())
    assert dag["tasks"]["propose_rollout"]["upstream"] == ["register"]
