"""Registration per hardware target against a real MLflow server (tests/conftest.py ``mlflow_server``), on runs
fabricated the way the pipeline lays them out (tests/pipeline/registry/fabricated.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recforge.contracts import registry
from recforge.contracts import tags as T
from recforge.contracts.targets import CPU_TRITON, GPU_ONNXRUNTIME
from recforge.core import config
from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.pipeline.registry import aliases, candidates, proposals, stage
from tests.pipeline.registry.fabricated import CPU, FAMILY, one_variant, profile_doc

REPO = Path(__file__).resolve().parents[3]
CHAMPION_CPU, PREVIOUS_CPU = registry.alias("champion", CPU), registry.alias("previous", CPU)
B = T.BLESSING_PREFIX


def test_first_registration_sets_champion_with_its_provenance(pipeline):
    import mlflow
    import onnx

    train, runs = pipeline.night({
        "fp32": {"lbt": {CPU: 200.0, CPU_TRITON: 150.0}, "auc": 0.752, "size": 8000},
        "int8": {"lbt": {CPU: 260.0, CPU_TRITON: 140.0}, "auc": 0.751, "size": 2000},
        "pruned": {"lbt": {CPU: 900.0}, "auc": 0.70, "size": 1000, "parity": "rejected"},
    })
    result = pipeline.register(train, dag_run_id="night-1")
    assert {t: (r["variant"], r["decision"]) for t, r in result["targets"].items()} == {
        CPU: ("int8", "first_champion"), CPU_TRITON: ("fp32", "first_champion")}
    assert any(f"pruned on {CPU}: parity rejected" in s for s in result["skipped"])
    assert pipeline.aliases() == {CHAMPION_CPU: result["targets"][CPU]["version"],
                                  "champion-cpu-triton": result["targets"][CPU_TRITON]["version"]}
    assert len(pipeline.versions()) == 2

    info = registry.champion(pipeline.model, CPU)
    tags = info["tags"]
    assert info["variant"] == "int8" and info["run_id"] == runs["int8"]
    # the source is an MLflow Model folder: the measured ONNX file and an MLmodel whose signature is the graph's
    artifact_uri = pipeline.client.get_run(runs["int8"]).info.artifact_uri
    assert info["source"] == f"{artifact_uri}/registered_model/model.int8"
    model_info = mlflow.models.get_model_info(info["models_uri"])
    assert "onnx" in model_info.flavors and model_info.flavors["onnx"]["data"] == "model.int8.onnx"
    onnx_graph = onnx.load(str(pipeline.tmp / runs["int8"] / "model.int8.onnx")).graph
    assert model_info.signature is not None
    assert [(i.name, list(i.shape)) for i in model_info.signature.inputs.inputs] == [
        (v.name, [d.dim_value or -1 for d in v.type.tensor_type.shape.dim]) for v in onnx_graph.input]
    assert [o.name for o in model_info.signature.outputs.inputs] == [v.name for v in onnx_graph.output]
    assert info["profile"]["latency_bounded_throughput_qps"] == 260.0 and info["lbt_qps"] == 260.0
    assert {k: tags[T.PREFIX + k] for k in ("target", "target_kind", "variant", "parity", "data_day",
                                            "data_fingerprint", "git_commit", "candidate_run_id")} == {
        "target": CPU, "target_kind": "cpu-onnxruntime", "variant": "int8", "parity": "passed",
        "data_day": "1998-04-11", "data_fingerprint": "fp-1998-04-11", "git_commit": "abc123",
        "candidate_run_id": train}
    assert tags[T.AUC] == "0.751" and tags[T.SIZE_BYTES] == "2000.0"
    assert tags[T.MODEL_FORMAT] == "onnx"  # the registered file's format, which the repository generator checks
    assert json.loads(tags[T.BEST_KNOBS]) == {"sub_batch": 64}
    assert tags[T.PROFILE_HOST] == "bench-1" and tags[B + "decision"] == "first_champion"
    # the registered source is the very file the profile measured, and the rollout stage gets it checked
    path, _ = registry.download_champion(pipeline.model, CPU, pipeline.tmp / "dl")
    assert path.name == "model.int8.onnx" and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["onnx_sha256"] == tags[T.ONNX_SHA256]
    assert info["onnx_sha256"] == info["profile"]["onnx_sha256"]
    with pytest.raises(ConfigError, match=f"no alias champion-{GPU_ONNXRUNTIME}"):
        registry.champion(pipeline.model, GPU_ONNXRUNTIME)


def test_better_version_moves_champion_and_keeps_the_incumbent_as_previous(pipeline):
    first = pipeline.register(pipeline.night(one_variant(100.0))[0], dag_run_id="night-1")["targets"][CPU]
    second = pipeline.register(pipeline.night(one_variant(130.0, host="bench-2"))[0],
                               dag_run_id="night-2")["targets"][CPU]
    assert second["decision"] == "promoted" and second["compared_with"] == first["version"]
    assert pipeline.aliases() == {CHAMPION_CPU: second["version"], PREVIOUS_CPU: first["version"]}
    tags = pipeline.client.get_model_version(pipeline.model, second["version"]).tags
    assert tags[B + "decision"] == "promoted"
    assert tags[B + "compared_with"] == first["version"]
    assert float(tags[B + "incumbent_lbt_qps"]) == 100.0
    assert float(tags[B + "new_lbt_qps"]) == 130.0
    assert abs(float(tags[B + "lbt_gain"]) - 0.3) < 1e-9
    assert tags[B + "incumbent_host"] == "bench-1" and tags[B + "new_host"] == "bench-2"
    assert "different hosts" in tags[B + "reason"]

    # the alias history: in the registry tag and in the local JSONL file, each move once
    moves = [(e["alias"], e["from_version"], e["to_version"], e["action"], e["dag_run_id"])
             for e in aliases.alias_history(pipeline.model, CPU)]
    assert moves == [(CHAMPION_CPU, None, first["version"], "promote", "night-1"),
                     (PREVIOUS_CPU, None, first["version"], "demote", "night-2"),
                     (CHAMPION_CPU, first["version"], second["version"], "promote", "night-2")]
    lines = [json.loads(line) for line in aliases.history_path().read_text().splitlines()]
    assert [(e["alias"], e["from_version"], e["to_version"]) for e in lines] == [m[:3] for m in moves]
    assert all(e["time"] and e["reason"] and e["model"] == pipeline.model for e in lines)


def test_version_within_margin_or_losing_auc_is_registered_but_not_promoted(pipeline):
    first = pipeline.register(pipeline.night(one_variant(100.0, auc=0.75))[0])["targets"][CPU]
    close = pipeline.register(pipeline.night(one_variant(103.0, auc=0.76))[0])["targets"][CPU]
    assert close["decision"] == "kept_incumbent" and close["created"]
    assert "+3.0%" in close["reason"] and "below the required +5.0% margin" in close["reason"]
    worse_auc = pipeline.register(pipeline.night(one_variant(150.0, auc=0.74))[0])["targets"][CPU]
    assert worse_auc["decision"] == "kept_incumbent" and "AUC 0.7400" in worse_auc["reason"]
    assert pipeline.aliases() == {CHAMPION_CPU: first["version"]}
    assert len(pipeline.versions()) == 3
    tags = pipeline.client.get_model_version(pipeline.model, close["version"]).tags
    assert tags[B + "decision"] == "kept_incumbent" and "margin" in tags[B + "reason"]
    assert proposals.propose_rollout([{"model": pipeline.model, "family": FAMILY,
                                       "targets": {CPU: close}}])["proposals"] == []
    # the margin is configurable: with 2% the same version (judged again on a rerun) wins
    rejudged = pipeline.register(pipeline.client.get_run(close["variant_run_id"]).data.tags["mlflow.parentRunId"],
                                 margin=0.02)["targets"][CPU]
    assert (rejudged["version"], rejudged["decision"]) == (close["version"], "promoted")
    assert pipeline.aliases() == {CHAMPION_CPU: close["version"], PREVIOUS_CPU: first["version"]}


def test_rerun_of_the_same_dag_run_creates_no_duplicates(pipeline):
    train, _ = pipeline.night({"a": {"lbt": {CPU: 100.0, CPU_TRITON: 80.0}, "auc": 0.75},
                               "b": {"lbt": {CPU: 90.0, CPU_TRITON: 95.0}, "auc": 0.75}})
    once = pipeline.register(train, dag_run_id="night-1")
    history = aliases.alias_history(pipeline.model)
    twice = pipeline.register(train, dag_run_id="night-1")
    assert [t["created"] for t in once["targets"].values()] == [True, True]
    assert [t["created"] for t in twice["targets"].values()] == [False, False]
    assert {t: r["version"] for t, r in twice["targets"].items()} == {t: r["version"]
                                                                      for t, r in once["targets"].items()}
    assert all(r["decision"] == "first_champion" for r in twice["targets"].values())
    assert len(pipeline.versions()) == 2
    assert aliases.alias_history(pipeline.model) == history and len(history) == 2
    proposed = [proposals.propose_rollout([once], dag_run_id="night-1") for _ in range(2)]
    assert proposed[0]["proposals"] == proposed[1]["proposals"] and len(proposed[0]["proposals"]) == 2


def test_profile_of_another_onnx_file_is_refused(pipeline):
    train, runs = pipeline.night(one_variant(100.0, sha="f" * 64))
    with pytest.raises(DataError, match=r"refusing to register dlrm/v .* SHA-256 ffffffffffff.*re-profile"):
        pipeline.register(train)
    assert pipeline.versions() == []
    assert CHAMPION_CPU not in pipeline.aliases()


def test_invalid_profile_is_named(pipeline):
    train, runs = pipeline.night(one_variant(100.0))
    doc = pipeline.client.get_run(runs["v"])  # overwrite the profile with one that breaks the schema
    bad = profile_doc(variant="v", run_id=runs["v"], sha="0" * 64, target=CPU, lbt=1.0, auc=0.7)
    bad["target"].pop("threads")
    pipeline.client.log_dict(doc.info.run_id, bad, f"profile/{CPU}.json")
    with pytest.raises(ConfigError, match=rf"profile/{CPU}.json of variant run .*\$\.target\.threads"):
        pipeline.register(train)


def test_a_profile_the_latest_profiling_did_not_renew_is_ignored(pipeline):
    """MLflow keeps artifacts forever: a target profiled on an earlier night (here cpu-triton) and skipped on the
    latest one still has its file; the run's recforge.profiled_targets tag says which profiles are current."""
    train, runs = pipeline.night({"v": {"lbt": {CPU: 100.0, CPU_TRITON: 900.0}, "auc": 0.75}})
    variants, _ = candidates.load_profiled_variants(train)
    assert sorted(v.profile["target"]["name"] for v in variants) == [CPU, CPU_TRITON]  # no tag: every file
    pipeline.client.set_tag(runs["v"], T.PROFILED_TARGETS, CPU)
    variants, _ = candidates.load_profiled_variants(train)
    assert [v.profile["target"]["name"] for v in variants] == [CPU]
    pipeline.client.set_tag(runs["v"], T.PROFILED_TARGETS, "none")
    variants, problems = candidates.load_profiled_variants(train)
    assert variants == [] and "have no profile" in problems[0]


def test_rollback_walks_back_one_champion_at_a_time(pipeline):
    nights = [pipeline.night(one_variant(lbt))[0] for lbt in (100.0, 130.0, 170.0)]
    v1, v2, v3 = (pipeline.register(t, dag_run_id=f"night-{i}")["targets"][CPU]["version"]
                  for i, t in enumerate(nights, 1))
    assert pipeline.aliases() == {CHAMPION_CPU: v3, PREVIOUS_CPU: v2}

    out = aliases.rollback_alias(pipeline.model, CPU, reason="canary p95 over SLO", dag_run_id="rollout-1")
    assert out == {"model": pipeline.model, "target": CPU, "from_version": v3, "to_version": v2,
                   "previous_version": v1}
    assert pipeline.aliases() == {CHAMPION_CPU: v2, PREVIOUS_CPU: v1}
    assert registry.champion(pipeline.model, CPU, with_profile=False)["version"] == v2
    assert "canary p95 over SLO" in pipeline.client.get_model_version(pipeline.model, v3).tags[T.ROLLED_BACK]
    # a retry of night 3 must not undo the rollback
    retried = pipeline.register(nights[2], dag_run_id="night-3")["targets"][CPU]
    assert retried["decision"] == "kept_incumbent" and "rolled back" in retried["reason"]
    assert pipeline.aliases()[CHAMPION_CPU] == v2

    aliases.rollback_alias(pipeline.model, CPU)
    assert pipeline.aliases() == {CHAMPION_CPU: v1}
    with pytest.raises(ConfigError, match=f"no alias {PREVIOUS_CPU}: nothing to roll back to"):
        aliases.rollback_alias(pipeline.model, CPU)
    rollbacks = [(e["alias"], e["from_version"], e["to_version"], e["dag_run_id"])
                 for e in aliases.alias_history(pipeline.model, CPU) if e["action"] == "rollback"]
    assert rollbacks == [(CHAMPION_CPU, v3, v2, "rollout-1"), (PREVIOUS_CPU, v2, v1, "rollout-1"),
                         (CHAMPION_CPU, v2, v1, ""), (PREVIOUS_CPU, v1, None, "")]


def test_one_failed_family_does_not_stop_the_others(pipeline):
    dlrm_train, _ = pipeline.night(one_variant(100.0))
    din_train, _ = pipeline.night(one_variant(100.0, sha="f" * 64), family="din", same_night=True)
    found = candidates.find_profiled_candidates(parent_run_id=pipeline.parent_run_id)
    assert found == [{"family": "din", "candidate_run_id": din_train},
                     {"family": FAMILY, "candidate_run_id": dlrm_train}]
    results = stage.register_all(found, cfg=pipeline.cfg, dag_run_id="night-1")
    din, dlrm = results
    assert din["family"] == "din" and "refusing to register din/v" in din["error"] and "\n" not in din["error"]
    assert dlrm["targets"][CPU]["decision"] == "first_champion"
    proposal = proposals.propose_rollout(results, candidates=found, dag_run_id="night-1")
    assert [p["command"] for p in proposal["proposals"]] == [proposals.rollout_command(pipeline.model, CPU, "1")]
    assert proposal["failed"] == [f"din: {din['error']}"]
    assert stage.failed_families(proposal).startswith("1 family not registered: din: refusing to register")
    with pytest.raises(RecForgeError, match="no family registered: din: refusing"):
        stage.register_all(found[:1], cfg=pipeline.cfg)


def test_cli_registers_proposes_and_shows(pipeline, capsys):
    train, _ = pipeline.night(one_variant(100.0))
    conf = json.dumps({"model_prefix": pipeline.cfg.model_prefix})
    capsys.readouterr()  # MLflow's "View run" lines of the fabricated runs
    assert stage.main(["--candidate-run", train, "--config", conf, "--dag-run-id", "scheduled__1998-04-11"]) == 0
    out = json.loads(capsys.readouterr().out)
    proposal = out["proposal"]["proposals"][0]
    assert proposal["command"] == f"make rollout MODEL={pipeline.model} TARGET={CPU} VERSION=1"
    path = Path(out["proposal"]["path"])
    assert path.name == "scheduled__1998-04-11.md" and proposal["command"] in path.read_text()
    assert proposal["fleet_command"] in path.read_text()
    tags = pipeline.client.get_model_version(pipeline.model, "1").tags
    assert tags[T.ROLLOUT_PROPOSAL] == proposal["command"]
    assert tags[T.ROLLOUT_PROPOSAL_FLEET] == proposal["fleet_command"]
    assert tags[T.REGISTERED_BY_DAG_RUN] == "scheduled__1998-04-11"

    assert stage.main(["show", "--prefix", pipeline.cfg.model_prefix]) == 0
    shown = capsys.readouterr().out
    assert f"{pipeline.model}\n  {CHAMPION_CPU}: v1 v (LBT 100 qps, AUC 0.7500, data 1998-04-11)" in shown
    assert f"{CHAMPION_CPU}: v- -> v1 [promote, scheduled__1998-04-11] first_champion" in shown
    assert f"in the MLflow UI: {config.tracking_uri()}/#/models/{pipeline.model}?workflowType=" in shown
    assert stage.main(["rollback", "--model", pipeline.model, "--target", CPU]) == 1
    assert "error: " in capsys.readouterr().err
    assert stage.main(["--candidate-run", train, "--config", '{"margin": "big"}']) == 1
    assert "RegisterConfig.margin must be a number" in capsys.readouterr().err
    assert stage.main(["--candidate-run", train, "--config", '{"auto_rollout_staging": true}']) == 1
    assert "unknown key(s) ['auto_rollout_staging']" in capsys.readouterr().err


def test_register_models_dag_shape(tmp_path):
    """The DAG parses (no import errors, no heavy imports) and is scheduled on the PROFILES asset; one family's
    failure does not stop the proposal, and the run still fails at its leaf."""
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
    assert {"margin", "max_auc_drop", "families", "model_prefix", "parent_run_id"} == set(dag["params"])
    assert all(p["title"] for p in dag["params"].values())
    tasks = dag["tasks"]
    assert set(tasks) == {"profiled_families", "register", "propose_rollout", "check_every_family_registered"}
    assert all(t["retries"] >= 1 for t in tasks.values())
    assert tasks["propose_rollout"]["upstream"] == ["profiled_families", "register"]
    assert tasks["propose_rollout"]["trigger_rule"] == "all_done_min_one_success"
    assert tasks["check_every_family_registered"]["upstream"] == ["propose_rollout"]
