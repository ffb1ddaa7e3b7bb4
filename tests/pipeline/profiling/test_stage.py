"""recforge.pipeline.profiling.stage: selection (Pareto front), config, summaries and plots on synthetic profiles; logging of
a tiny real profile to a real MLflow server (plan -> profile -> summarize, rerun, manual plan from MLflow)."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.pipeline.profiling import stage as pv

TINY_PROFILE = {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400, "max_steps": 4, "tolerance": 0.5,
                "min_sub_batch": 64, "max_sub_batch": 128, "threads": [1], "workers": 2, "max_evaluations": 2,
                "latency_batches": [1, 16], "latency_repeats": 3}


def row(name, latency, auc, passed=True, **extra):
    return {"name": name, "latency_ms_b256": latency, "auc": auc, "passed": passed, **extra}


# --------------------------------------------------------------------------------------------------------------
# Selection


def test_pareto_front_keeps_the_undominated_fastest_first():
    rows = [row("fp32", 1.0, 0.750), row("a", 0.5, 0.749), row("b", 0.6, 0.748),  # b: slower and worse than a
            row("c", 0.4, 0.747), row("d", 1.2, 0.751), row("e", 0.5, 0.749),  # e ties a: first one kept
            row("f", None, 0.9), row("g", 0.1, float("nan"))]  # no numbers: never on the front
    front = pv.pareto_front(rows, "latency_ms_b256", "auc")
    assert [r["name"] for r in front] == ["c", "a", "fp32", "d"]


def test_pareto_front_with_equal_cost_keeps_the_more_accurate():
    rows = [row("low", 0.5, 0.70), row("high", 0.5, 0.72)]
    assert [r["name"] for r in pv.pareto_front(rows, "latency_ms_b256", "auc")] == ["high"]


def test_select_takes_the_front_up_to_the_limit_and_always_the_reference():
    cfg = pv.ProfileStageConfig(max_variants_per_family=2)
    rows = [row("fp32", 1.0, 0.750), row("pruned50", 0.5, 0.749), row("pruned75", 0.4, 0.747),
            row("student", 0.3, 0.746), row("pruned25", 0.45, 0.740),  # pruned25: dominated
            row("student+int8_static", 0.2, 0.760, passed=False)]  # rejected: never selected
    chosen = pv.select_variants(rows, cfg)
    assert [(r["name"], why.split(" ")[0]) for r, why in chosen] == [
        ("student", "Pareto"), ("pruned75", "Pareto"), ("fp32", "fp32")]
    # fp32 on the front is not profiled twice, and the reference can be left out
    assert [r["name"] for r, _ in pv.select_variants(rows, pv.ProfileStageConfig(max_variants_per_family=5))] == [
        "student", "pruned75", "pruned50", "fp32"]
    no_ref = pv.ProfileStageConfig(max_variants_per_family=1, include_reference=False)
    assert [r["name"] for r, _ in pv.select_variants(rows, no_ref)] == ["student"]


def test_gpu_only_precisions_are_selected_only_with_a_gpu():
    rows = [row("fp32", 1.0, 0.75), row("fp32+fp16", 0.3, 0.75), row("pruned50", 0.6, 0.749)]
    cfg = pv.ProfileStageConfig()
    assert [r["name"] for r, _ in pv.select_variants(rows, cfg)] == ["pruned50", "fp32"]
    assert [r["name"] for r, _ in pv.select_variants(rows, cfg, gpu_available=True)] == ["fp32+fp16"] + ["fp32"]
    assert pv.precision_of("pruned50+int8_static") == "int8_static" and pv.precision_of("student") == "fp32"


def test_merge_extras_newest_event_wins_per_family():
    old = {"families": {"dlrm": {"candidate_run_id": "old", "passed": []}, "ncf": {"candidate_run_id": "n"}}}
    new = {"families": {"dlrm": {"candidate_run_id": "new", "passed": []}}}
    merged = pv.merge_extras([old, None, {}, new])
    assert merged["dlrm"]["candidate_run_id"] == "new" and merged["ncf"]["candidate_run_id"] == "n"


# --------------------------------------------------------------------------------------------------------------
# Config and targets


def test_stage_config_rejects_bad_values_with_one_line():
    with pytest.raises(ConfigError, match="unknown key"):
        pv.ProfileStageConfig.from_dict({"max_variants": 2})
    with pytest.raises(ConfigError, match="ProfileConfig: unknown key"):
        pv.ProfileStageConfig.from_dict({"profile": {"duration": 1}})
    with pytest.raises(ConfigError, match="point_duration_s"):
        pv.ProfileStageConfig.from_dict({"profile": {"point_duration_s": 0}})
    with pytest.raises(ConfigError, match="selects nothing"):
        pv.ProfileStageConfig.from_dict({"max_variants_per_family": 0, "include_reference": False})
    with pytest.raises(ConfigError, match="targets"):
        pv.ProfileStageConfig.from_dict({"targets": []})
    cfg = pv.ProfileStageConfig.from_dict({"targets": ["cpu-onnxruntime"], "profile": {"point_duration_s": 3}})
    pcfg = cfg.profile_config()
    assert pcfg.point_duration_s == 3.0 and pcfg.max_evaluations == pv.STAGE_PROFILE_DEFAULTS["max_evaluations"]
    assert pv.ProfileStageConfig.from_dict(cfg.to_dict()) == cfg


def test_targets_resolve_by_kind_or_name_and_unknown_ones_are_reported():
    targets, unknown = pv.resolve_targets(["cpu-onnxruntime", "gpu", "tpu-v9", "cpu"])
    kinds = [t.kind for t in targets]
    assert kinds[0] == "cpu-onnxruntime" and kinds.count("cpu-onnxruntime") == 1  # "cpu" is the same target
    assert any(k.startswith("gpu-") for k in kinds)
    assert list(unknown) == ["tpu-v9"] and "unknown target 'tpu-v9'" in unknown["tpu-v9"]


# --------------------------------------------------------------------------------------------------------------
# Summaries and plots on synthetic profiles


def synthetic_doc(variant, target="cpu", lbt=800.0, auc=0.75, capped=False, run_id=None):
    curve = [{"offered_qps": q, "achieved_qps": q * (1 if q <= lbt else 0.6), "p50_ms": 1 + q / 400,
              "p95_ms": 3 + q / 100 if q <= lbt else 400.0, "p99_ms": 500.0, "errors": 0, "queries": int(q),
              "meets_slo": q <= lbt} for q in (100.0, 200.0, 400.0, lbt, 2 * lbt)]
    curve = sorted({c["offered_qps"]: c for c in curve}.values(), key=lambda c: c["offered_qps"])
    return {"model_family": "dlrm", "variant": variant, "variant_run_id": run_id or uuid.uuid4().hex,
            "target": {"name": target, "kind": "cpu-onnxruntime", "device": "test", "threads": 1},
            "p95_target_ms": 25.0, "latency_bounded_throughput_qps": lbt, "lbt_capped": capped,
            "items_per_s": lbt * 167.0, "search": {"best_knobs": {"sub_batch": 32, "threads": 1, "workers": 2}},
            "curve": curve, "latency_vs_batch": [{"batch": 1, "ms": 0.1}, {"batch": 256, "ms": 0.8}],
            "accuracy": {"auc": auc, "delta_auc": 0.0}}


def synthetic_result(variant, auc, targets_lbt, skipped=None):
    run_id = uuid.uuid4().hex
    profiles = [pv.profile_row(synthetic_doc(variant, target, lbt, auc, run_id=run_id), f"/x/{variant}.{target}.json")
                for target, lbt in targets_lbt.items()]
    return {"family": "dlrm", "candidate_run_id": "c" * 32, "data_day": "1998-04-22", "variant": variant,
            "variant_run_id": run_id, "auc": auc, "delta_auc": auc - 0.75, "latency_ms_b256": 0.5,
            "profiles": profiles, "skipped": skipped or {}}


def test_p95_at_lbt_reads_the_curve_point_at_the_lbt():
    doc = synthetic_doc("fp32", lbt=800.0)
    assert pv.p95_at_lbt(doc) == pytest.approx(3 + 800 / 100)
    assert pv.p95_at_lbt({**doc, "latency_bounded_throughput_qps": 0.0}) is None


def test_family_summary_table_and_throughput_front():
    results = [synthetic_result("fp32", 0.750, {"cpu": 800.0}),
               synthetic_result("pruned50", 0.749, {"cpu": 1200.0}, skipped={"gpu": "no CUDA device: skipped"}),
               synthetic_result("pruned75", 0.748, {"cpu": 1000.0})]  # slower and worse than pruned50: off the front
    variants = [row("fp32", 1.0, 0.750), row("pruned50", 0.5, 0.749), row("pruned75", 0.6, 0.748)]
    summary = pv.family_summary("dlrm", results, variants)
    assert [(p["variant"], p["on_front"]) for p in summary["profiles"]] == [
        ("pruned50", True), ("pruned75", False), ("fp32", True)]
    assert summary["latency_front"] == ["pruned50", "fp32"]
    assert summary["skipped"] == {"pruned50": {"gpu": "no CUDA device: skipped"}}
    table = pv.format_summary(summary)
    lines = table.splitlines()
    assert lines[2].startswith("| variant | target | LBT qps | items/s | p95 at LBT (ms) | best knobs | AUC | ΔAUC")
    assert "| pruned50 | cpu | 1,200 | 200,400 | 15.0 | sub_batch=32, threads=1, workers=2 | 0.7490 | -0.0010 | ★ |" \
        in lines
    assert "- gpu: no CUDA device: skipped (pruned50)" in lines
    assert pv.knobs_text({"sub_batch": 256, "preferred_batch": [1, 2, 4, 8, 16, 1024], "instances": 1}) == \
        "instances=1, preferred_batch=[1,2,…,1024], sub_batch=256"
    json.dumps(summary)  # logged as summary.json: must be plain JSON
    extra = pv.profiles_asset_extra({"dlrm": summary})
    first = extra["families"]["dlrm"]["profiles"][0]
    assert extra["families"]["dlrm"]["candidate_run_id"] == "c" * 32
    assert first["artifact_uri"] == f"runs:/{first['variant_run_id']}/profile/cpu.json"
    assert first["lbt_qps"] == 1200.0 and first["path"] == "/x/pruned50.cpu.json"


@pytest.mark.parametrize("capped", [False, True])
def test_plots_render(capped):
    doc = synthetic_doc("fp32", lbt=400.0, capped=capped)
    results = [synthetic_result("fp32", 0.75, {"cpu": 400.0, "cpu-triton": 600.0}),
               synthetic_result("pruned50", 0.749, {"cpu": 800.0})]
    summary = pv.family_summary("dlrm", results, [row("fp32", 1.0, 0.75), row("pruned50", 0.5, 0.749)])
    for figure in (pv.plot_p95_vs_load(doc), pv.plot_latency_vs_batch(doc), pv.plot_pareto(summary)):
        buf = io.BytesIO()
        figure.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
        pv._close(figure)
    # a p95-vs-load plot marks the SLO and the LBT
    figure = pv.plot_p95_vs_load(doc)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "SLO p95 25 ms" in labels and any(label.startswith("LBT 400 qps") for label in labels)
    pv._close(figure)


def test_summarize_refuses_a_run_where_nothing_was_profiled():
    results = [{**synthetic_result("fp32", 0.75, {}), "skipped": {"cpu": "RuntimeError: boom"}}]
    with pytest.raises(RecForgeError, match="no variant was profiled on any target .*cpu: RuntimeError: boom"):
        pv.summarize_profiles(results)


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
    experiment_id = client.create_experiment(pv.config.experiment_name())
    candidate = client.create_run(experiment_id, tags={"recforge.stage": "train", "recforge.family": "ncf"})
    client.log_param(candidate.info.run_id, "data_day", day)
    path = export_onnx(build_model("ncf", spec).eval(), spec, tmp_path / "model.onnx")
    variants = {}
    for i, (name, latency, auc, passed) in enumerate([
            ("fp32", 1.0, 0.750, True), ("pruned50", 0.5, 0.749, True), ("pruned25", 0.8, 0.7485, True),
            ("student", 0.2, 0.70, False)]):
        run = client.create_run(experiment_id, tags={
            "mlflow.parentRunId": candidate.info.run_id, "recforge.stage": "compress", "recforge.family": "ncf",
            "recforge.variant": name, "recforge.parity": "passed" if passed else "rejected"})
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
    cfg = pv.ProfileStageConfig.from_dict({"targets": ["cpu-onnxruntime", "gpu", "tpu-v9"],
                                           "max_variants_per_family": 1, "profile": TINY_PROFILE})
    jobs = pv.plan_profiles([extra], cfg=cfg)
    assert [(j["variant"], j["selected_because"].split(" ")[0]) for j in jobs] == [("pruned50", "Pareto"),
                                                                                   ("fp32", "fp32")]
    assert jobs[0]["data_day"] == "1998-04-22" and jobs[0]["latency_ms_b256"] == 0.5
    results = [pv.profile_one(job, cfg) for job in jobs]
    runs_before = len(client.search_runs([experiment_id]))

    for result in results:
        run = client.get_run(result["variant_run_id"])
        (profile,) = result["profiles"]
        assert profile["target"] == "cpu" and profile["lbt_qps"] > 0
        assert set(result["skipped"]) == {"gpu", "tpu-v9"}
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "profile")}
        assert artifacts == {"profile/cpu.json", "profile/cpu_p95_vs_load.png", "profile/cpu_latency_vs_batch.png",
                             "profile/skipped.json"}
        logged = json.loads(open(client.download_artifacts(run.info.run_id, "profile/cpu.json", str(day_dir)))
                            .read())
        assert logged["variant_run_id"] == run.info.run_id and logged["model_family"] == "ncf"
        assert logged["accuracy"]["auc"] == variants[result["variant"]]["auc"]
        assert json.loads((day_dir / "profiles" / "ncf" / f"{result['variant']}.cpu.json").read_text()) == logged
        assert run.data.metrics["lbt_qps.cpu"] == logged["latency_bounded_throughput_qps"]
        assert run.data.metrics["items_per_s.cpu"] == pytest.approx(logged["items_per_s"])
        assert run.data.metrics["p95_ms_at_lbt.cpu"] <= TINY_PROFILE.get("p95_target_ms", 25.0)
        assert run.data.tags["recforge.profiled_targets"] == "cpu"
        assert "gpu: " in run.data.tags["recforge.profile_skipped"]
        assert "tpu-v9: unknown target" in run.data.tags["recforge.profile_skipped"]

    summaries = pv.summarize_profiles(results)
    summary = summaries["ncf"]
    assert {p["variant"] for p in summary["profiles"]} == {"pruned50", "fp32"}
    assert summary["latency_front"] == ["pruned50", "fp32"]  # over every passing variant of the compression summary
    artifacts = {a.path for a in client.list_artifacts(candidate_run_id, "profile")}
    assert artifacts == {"profile/summary.json", "profile/summary.md", "profile/pareto.png"}
    table = open(client.download_artifacts(candidate_run_id, "profile/summary.md", str(day_dir))).read()
    assert "| pruned50 | cpu |" in table and "| fp32 | cpu |" in table

    # a rerun of the same job overwrites the same artifacts of the same runs
    again = pv.profile_one(jobs[0], cfg)
    assert len(client.search_runs([experiment_id])) == runs_before
    assert {a.path for a in client.list_artifacts(again["variant_run_id"], "profile")} == {
        "profile/cpu.json", "profile/cpu_p95_vs_load.png", "profile/cpu_latency_vs_batch.png", "profile/skipped.json"}
    logged = json.loads(open(client.download_artifacts(again["variant_run_id"], "profile/cpu.json",
                                                       str(day_dir / "again"))).read())
    assert logged["latency_bounded_throughput_qps"] == again["profiles"][0]["lbt_qps"]


def test_manual_plan_reads_the_passing_variants_from_mlflow_and_fetches_the_onnx(tracked):
    client, _, candidate_run_id, variants, _, day_dir = tracked
    cfg = pv.ProfileStageConfig.from_dict({"targets": ["cpu-onnxruntime"], "max_variants_per_family": 1,
                                           "profile": TINY_PROFILE})
    jobs = pv.plan_profiles(candidate_run_id=candidate_run_id, cfg=cfg)
    assert [j["variant"] for j in jobs] == ["pruned50", "fp32"]  # the rejected, faster student is not profiled
    assert all(j["onnx_path"] == "" for j in jobs)
    result = pv.profile_one(jobs[0], cfg)
    assert result["onnx_path"].startswith(str(day_dir / "profiles" / "ncf" / "onnx" / "pruned50"))
    assert result["profiles"][0]["lbt_qps"] > 0
    with pytest.raises(DataError, match="no validated variants of families \\['din'\\]"):
        pv.plan_profiles(candidate_run_id=candidate_run_id, families=["din"], cfg=cfg)
    with pytest.raises(ConfigError, match="is not a training run"):
        pv.plan_profiles(candidate_run_id=variants["fp32"]["variant_run_id"], cfg=cfg)
