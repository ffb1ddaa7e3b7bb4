"""recforge.pipeline.profiling.stage and stage_config: the stage's config, and a tiny real profile logged to a real
MLflow server (plan -> profile -> summarize, rerun, manual plan from MLflow)."""

from __future__ import annotations

import json
import uuid

import pytest

from recforge.contracts import tags
from recforge.contracts.targets import CPU_ONNXRUNTIME as CPU
from recforge.core import config
from recforge.core.errors import ConfigError, DataError
from recforge.pipeline.profiling.profile_variant import RIVAL_SCREEN
from recforge.pipeline.profiling.stage import (
    family_jobs,
    plan_profiles,
    profile_family,
    profile_one,
    summarize_profiles,
)
from recforge.pipeline.profiling.stage_config import STAGE_PROFILE_DEFAULTS, ProfileStageConfig

TINY_PROFILE = {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400, "max_steps": 4, "tolerance": 0.5,
                "min_sub_batch": 64, "max_sub_batch": 128, "threads": [1], "workers": 2, "max_evaluations": 2,
                "latency_batches": [1, 16], "latency_repeats": 3}


# --------------------------------------------------------------------------------------------------------------
# Config


def test_stage_config_rejects_bad_values_with_one_line():
    with pytest.raises(ConfigError, match="unknown key"):
        ProfileStageConfig.from_dict({"max_variants": 2})
    with pytest.raises(ConfigError, match="ProfileConfig: unknown key"):
        ProfileStageConfig.from_dict({"profile": {"duration": 1}})
    with pytest.raises(ConfigError, match="point_duration_s"):
        ProfileStageConfig.from_dict({"profile": {"point_duration_s": 0}})
    with pytest.raises(ConfigError, match="selects nothing"):
        ProfileStageConfig.from_dict({"max_variants_per_family": 0, "include_reference": False})
    with pytest.raises(ConfigError, match="targets"):
        ProfileStageConfig.from_dict({"targets": []})
    cfg = ProfileStageConfig.from_dict({"targets": [CPU], "profile": {"point_duration_s": 3}})
    pcfg = cfg.profile_config()
    assert pcfg.point_duration_s == 3.0 and pcfg.max_evaluations == STAGE_PROFILE_DEFAULTS["max_evaluations"]
    assert ProfileStageConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------------------------------------------
# A tiny real profile logged to a real MLflow server


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mlflow_server):
    """A candidate training run with a compression summary and four variant runs (one tiny real NCF ONNX model)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _tracked(tmp_path_factory.mktemp("profile_variants"), mlflow_server, mp)


def _tracked(tmp_path, mlflow_server, monkeypatch):
    import mlflow

    from recforge.contracts.features import example_spec
    from recforge.models import build_model
    from recforge.models.export import export_onnx

    day = "1998-04-22"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("RECFORGE_EXPERIMENT", f"profile-variants-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("RECFORGE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spec = example_spec()
    features = tmp_path / "work" / day / "features"
    features.mkdir(parents=True)
    (features / "spec.json").write_text(spec.to_json())
    client = mlflow.MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(config.experiment_name())
    candidate = client.create_run(experiment_id, tags={tags.STAGE: "train", tags.FAMILY: "ncf"})
    client.log_param(candidate.info.run_id, "data_day", day)
    path = export_onnx(build_model("ncf", spec).eval(), spec, tmp_path / "model.onnx")
    variants = {}
    for i, (name, latency, auc, passed) in enumerate([
            ("fp32", 1.0, 0.750, True), ("pruned50", 0.5, 0.749, True), ("pruned25", 0.8, 0.7485, True),
            ("student", 0.2, 0.70, False)]):
        run = client.create_run(experiment_id, tags={
            "mlflow.parentRunId": candidate.info.run_id, tags.STAGE: "compress", tags.FAMILY: "ncf",
            tags.VARIANT: name, tags.PARITY: "passed" if passed else "rejected"})
        for key, value in {"auc": auc, "delta_auc": auc - 0.75, "latency_ms_b256": latency,
                           "size_bytes": 1000 - i}.items():
            client.log_metric(run.info.run_id, key, value)
        client.log_artifact(run.info.run_id, str(path), "onnx")
        client.set_terminated(run.info.run_id)
        variants[name] = {"name": name, "onnx_path": str(path), "variant_run_id": run.info.run_id, "auc": auc,
                          "latency_ms_b256": latency, "delta_auc": auc - 0.75, "passed": passed,
                          "size_bytes": 1000 - i}
    client.log_dict(candidate.info.run_id, {"family": "ncf", "variants": [
        {"variant": v["name"], **{k: v[k] for k in ("passed", "auc", "delta_auc", "latency_ms_b256", "size_bytes",
                                                     "variant_run_id")}} for v in variants.values()]},
        "compression/summary.json")
    extra = {"families": {"ncf": {"candidate_run_id": candidate.info.run_id, "passed": [
        {k: v[k] for k in ("name", "onnx_path", "variant_run_id", "auc", "size_bytes")}
        for v in variants.values() if v["passed"]]}}}
    return client, experiment_id, candidate.info.run_id, variants, extra, tmp_path / "work" / day


def test_profiles_are_logged_on_the_variant_runs_and_summarized(tracked):
    client, experiment_id, candidate_run_id, variants, extra, day_dir = tracked
    cfg = ProfileStageConfig.from_dict({"targets": [CPU, "gpu-onnxruntime", "tpu-v9"],
                                        "max_variants_per_family": 1, "profile": TINY_PROFILE})
    jobs = plan_profiles([extra], cfg=cfg)
    assert [(j["variant"], j["selected_because"].split(" ")[0]) for j in jobs] == [("pruned50", "Pareto"),
                                                                                   ("fp32", "fp32")]
    assert jobs[0]["data_day"] == "1998-04-22" and jobs[0]["latency_ms_b256"] == 0.5
    (family,) = family_jobs(jobs)
    results = profile_family(family, cfg)
    # the race: the fastest first, with the knob search; the other measured at its knobs only
    assert [r["variant"] for r in results] == ["pruned50", "fp32"]
    (leader,), (other,) = results[0]["profiles"], results[1]["profiles"]
    assert leader["search_strategy"] != RIVAL_SCREEN and other["search_strategy"] == RIVAL_SCREEN
    assert other["best_knobs"] == leader["best_knobs"]
    notes = " ".join(json.loads(open(other["path"]).read())["notes"])
    if "not re-measured" in notes:  # only a figure below the leader's goes without the confirmation runs
        assert other["lbt_qps"] <= leader["lbt_qps"]
    runs_before = len(client.search_runs([experiment_id]))
    artifacts_of_a_variant = {f"profile/{CPU}.json", f"profile/{CPU}_p95_vs_load.png",
                              f"profile/{CPU}_latency_vs_batch.png", "profile/skipped.json"}

    for result in results:
        run = client.get_run(result["variant_run_id"])
        (profile,) = result["profiles"]
        assert profile["target"] == CPU and profile["lbt_qps"] > 0
        assert set(result["skipped"]) == {"gpu-onnxruntime", "tpu-v9"}
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "profile")}
        assert artifacts == artifacts_of_a_variant
        logged = json.loads(open(client.download_artifacts(run.info.run_id, f"profile/{CPU}.json", str(day_dir)))
                            .read())
        assert logged["variant_run_id"] == run.info.run_id and logged["model_family"] == "ncf"
        assert logged["accuracy"]["auc"] == variants[result["variant"]]["auc"]
        assert json.loads((day_dir / "profiles" / "ncf" / f"{result['variant']}.{CPU}.json").read_text()) == logged
        assert run.data.metrics[f"lbt_qps.{CPU}"] == logged["latency_bounded_throughput_qps"]
        assert run.data.metrics[f"items_per_s.{CPU}"] == pytest.approx(logged["items_per_s"])
        assert run.data.metrics[f"p95_ms_at_lbt.{CPU}"] <= TINY_PROFILE.get("p95_target_ms", 25.0)
        assert run.data.tags[tags.PROFILED_TARGETS] == CPU
        assert "gpu-onnxruntime: " in run.data.tags[tags.PROFILE_SKIPPED]
        assert "tpu-v9: unknown target" in run.data.tags[tags.PROFILE_SKIPPED]

    summaries = summarize_profiles(results)
    summary = summaries["ncf"]
    assert {p["variant"] for p in summary["profiles"]} == {"pruned50", "fp32"}
    assert summary["latency_front"] == ["pruned50", "fp32"]  # over every passing variant of the compression summary
    artifacts = {a.path for a in client.list_artifacts(candidate_run_id, "profile")}
    assert artifacts == {"profile/summary.json", "profile/summary.md", "profile/pareto.png"}
    table = open(client.download_artifacts(candidate_run_id, "profile/summary.md", str(day_dir))).read()
    assert f"| pruned50 | {CPU} |" in table and f"| fp32 | {CPU} |" in table

    # a rerun of the same job overwrites the same artifacts of the same runs
    again = profile_one(jobs[0], cfg)
    assert len(client.search_runs([experiment_id])) == runs_before
    assert {a.path for a in client.list_artifacts(again["variant_run_id"], "profile")} == artifacts_of_a_variant
    logged = json.loads(open(client.download_artifacts(again["variant_run_id"], f"profile/{CPU}.json",
                                                       str(day_dir / "again"))).read())
    assert logged["latency_bounded_throughput_qps"] == again["profiles"][0]["lbt_qps"]


def test_manual_plan_reads_the_passing_variants_from_mlflow_and_fetches_the_onnx(tracked):
    client, _, candidate_run_id, variants, _, day_dir = tracked
    cfg = ProfileStageConfig.from_dict({"targets": [CPU], "max_variants_per_family": 1, "profile": TINY_PROFILE})
    jobs = plan_profiles(candidate_run_id=candidate_run_id, cfg=cfg)
    assert [j["variant"] for j in jobs] == ["pruned50", "fp32"]  # the rejected, faster student is not profiled
    assert all(j["onnx_path"] == "" for j in jobs)
    result = profile_one(jobs[0], cfg)
    assert result["onnx_path"].startswith(str(day_dir / "profiles" / "ncf" / "onnx" / "pruned50"))
    assert result["profiles"][0]["lbt_qps"] > 0
    with pytest.raises(DataError, match="no validated variants of families \\['din'\\]"):
        plan_profiles(candidate_run_id=candidate_run_id, families=["din"], cfg=cfg)
    with pytest.raises(ConfigError, match="is not a training run"):
        plan_profiles(candidate_run_id=variants["fp32"]["variant_run_id"], cfg=cfg)
