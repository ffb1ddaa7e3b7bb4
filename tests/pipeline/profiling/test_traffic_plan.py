"""The served traffic as the night's profiling load (recforge.pipeline.profiling.served_traffic): the plan picks
the newest traffic profile in a real MLflow server, ignores a too-old or corrupt one and falls back to the default
sizes, and a profile records the traffic it replayed in its load section."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from pathlib import Path

import pytest

from recforge.contracts import tags
from recforge.contracts.profile import validate_profile
from recforge.contracts.targets import CPU_ONNXRUNTIME
from recforge.contracts.traffic import EXPERIMENT_ENV, SIZE_EDGES, TrafficProfile
from recforge.core import config
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import QuerySizes
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.profile_variant import profile_variant
from recforge.pipeline.profiling.served_traffic import choose_traffic, plan_traffic, traffic_entry, traffic_sizes
from recforge.pipeline.profiling.stage import plan_profiles, profile_one
from recforge.pipeline.profiling.stage_config import ProfileStageConfig
from recforge.serving.elastic.traffic import log_traffic
from tests.pipeline.profiling.fakes import ACCURACY, RUN_ID, TINY, Sleeping

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def served(ended_days_ago: float, sizes: tuple[int, ...], peak_qps: float = 40.0) -> TrafficProfile:
    """A traffic profile of one hour ending ``ended_days_ago`` days before now, of these query sizes."""
    end = NOW - dt.timedelta(days=ended_days_ago)
    counts = [0] * (len(SIZE_EDGES) - 1)
    for size in sizes:
        counts[max(i for i, edge in enumerate(SIZE_EDGES[:-1]) if edge <= size)] += 1
    return TrafficProfile(
        recorded_from=(end - dt.timedelta(hours=1)).isoformat(), recorded_to=end.isoformat(), requests=len(sizes),
        peak_qps=peak_qps, peak_window_s=10.0, mean_qps=len(sizes) / 3600, interval_s=1.0, rate_qps=(1.0, peak_qps),
        size_edges=SIZE_EDGES, size_counts=tuple(counts), size_sample=sizes, source="a test")


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, mlflow_server):
    """A candidate training run with two passing variants (what plan_profiles reads), in a fresh experiment; the
    traffic experiment is named per test."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("RECFORGE_EXPERIMENT", f"traffic-plan-{uuid.uuid4().hex[:8]}")
        mp.setenv("RECFORGE_WORK_DIR", str(tmp_path_factory.mktemp("work")))
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        client = mlflow.MlflowClient(mlflow_server)
        experiment_id = client.create_experiment(config.experiment_name())
        candidate = client.create_run(experiment_id, tags={tags.STAGE: "train", tags.FAMILY: "ncf"})
        client.log_param(candidate.info.run_id, "data_day", "1998-04-22")
        passed = []
        for name, latency in (("fp32", 1.0), ("pruned50", 0.5)):
            run = client.create_run(experiment_id, tags={"mlflow.parentRunId": candidate.info.run_id,
                                                         tags.STAGE: "compress", tags.VARIANT: name})
            for key, value in {"auc": 0.75, "delta_auc": 0.0, "latency_ms_b256": latency}.items():
                client.log_metric(run.info.run_id, key, value)
            passed.append({"name": name, "variant_run_id": run.info.run_id, "onnx_path": "", "auc": 0.75})
        extra = {"families": {"ncf": {"candidate_run_id": candidate.info.run_id, "passed": passed}}}
        yield client, extra, mp


@pytest.fixture
def traffic_experiment(nightly, monkeypatch):
    name = f"traffic-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(EXPERIMENT_ENV, name)
    return name


def cfg(**changes) -> ProfileStageConfig:
    return ProfileStageConfig.from_dict({"targets": [CPU_ONNXRUNTIME], **changes})


def test_without_traffic_the_plan_uses_the_default_sizes_and_says_so(nightly, traffic_experiment, caplog):
    client, extra, _ = nightly
    with caplog.at_level(logging.INFO, logger="recforge.pipeline.profiling.stage"):
        jobs = plan_profiles([extra], cfg=cfg())
    assert jobs and all(job["traffic"] is None for job in jobs)
    assert (f"plan: default query sizes 'lognormal': no traffic profile (no MLflow experiment "
            f"{traffic_experiment!r})") in caplog.messages


def test_the_plan_picks_the_newest_recording_and_the_profiles_replay_its_sizes(nightly, traffic_experiment,
                                                                               caplog, tmp_path):
    client, extra, _ = nightly
    newest = served(1.0, (40, 40, 600, 40, 900), peak_qps=55.0)
    newest_id = log_traffic(newest, client)
    older_id = log_traffic(served(2.0, (5, 6, 7)), client)  # logged last, but recorded earlier
    with caplog.at_level(logging.INFO, logger="recforge.pipeline.profiling.stage"):
        jobs = plan_profiles([extra], cfg=cfg())
    entries = {job["traffic"]["run_id"] for job in jobs}
    assert entries == {newest_id} != {older_id}
    assert jobs[0]["traffic"] == traffic_entry(newest_id, newest)
    assert jobs[0]["traffic"]["peak_qps"] == 55.0 and jobs[0]["traffic"]["requests"] == 5
    assert any(m.startswith(f"plan: query sizes served, from traffic profile {newest_id} (5 requests")
               for m in caplog.messages)
    # the worker's sizes: the sample as a sizes file, fetched once from the run
    sizes_text = traffic_sizes(client, jobs[0]["traffic"], tmp_path / "profiles")
    assert sizes_text == str(tmp_path / "profiles" / f"traffic-{newest_id}.sizes")
    assert QuerySizes.parse(sizes_text).values == (40, 40, 600, 40, 900)
    assert traffic_sizes(client, jobs[0]["traffic"], tmp_path / "profiles") == sizes_text
    assert cfg().profile_config(sizes_text).query_sizes().kind == "file"
    # too old for the configured maximum age: the defaults, and the reason
    choice = choose_traffic(client, cfg(traffic_max_age_days=0.5))
    assert choice.entry is None and "is 1.0 days old, older than traffic_max_age_days 0.5" in choice.reason
    # switched off, or sizes given explicitly: no traffic profile either
    assert choose_traffic(client, cfg(traffic="none")).entry is None
    explicit = choose_traffic(client, cfg(profile={"sizes": "fixed:64"}))
    assert explicit.entry is None and "'fixed:64' as configured" in explicit.reason


def test_the_planned_traffic_is_what_the_profiles_replay_and_record(nightly, traffic_experiment, model):
    """One job profiled for real (tiny budget): its load is the served sample, its profile and run name the traffic."""
    client, extra, _ = nightly
    path, spec, _ = model
    features = config.work_dir() / "1998-04-22" / "features"
    features.mkdir(parents=True, exist_ok=True)
    (features / "spec.json").write_text(spec.to_json())
    run_id = log_traffic(served(0.5, (64, 64, 128, 256, 512), peak_qps=77.0), client)
    stage_cfg = cfg(profile=TINY, max_variants_per_family=0)
    (job,) = plan_profiles([extra], cfg=stage_cfg)
    result = profile_one({**job, "onnx_path": str(path)}, stage_cfg)
    assert [row["target"] for row in result["profiles"]] == [CPU_ONNXRUNTIME]
    doc = json.loads(Path(client.download_artifacts(job["variant_run_id"], f"profile/{CPU_ONNXRUNTIME}.json",
                                                    str(config.work_dir()))).read_text())
    sizes_file = config.work_dir() / "1998-04-22" / "profiles" / "ncf" / f"traffic-{run_id}.sizes"
    assert doc["load"]["distribution"] == "empirical" and doc["load"]["params"] == {"source": str(sizes_file)}
    assert doc["load"]["mean_items_per_query"] == pytest.approx((64 + 64 + 128 + 256 + 512) / 5)
    assert doc["load"]["traffic"]["run_id"] == run_id and doc["load"]["traffic"]["peak_qps"] == 77.0
    assert client.get_run(job["variant_run_id"]).data.tags[tags.TRAFFIC_RUN_ID] == run_id


def test_a_traffic_profile_older_than_the_maximum_age_is_ignored(nightly, traffic_experiment):
    client, extra, _ = nightly
    log_traffic(served(9.0, (100, 200)), client)
    jobs = plan_profiles([extra], cfg=cfg())
    assert all(job["traffic"] is None for job in jobs)
    assert plan_traffic(client, 10.0).entry is not None  # within a longer maximum age it is used


def test_a_corrupt_newest_traffic_profile_falls_back_to_the_defaults(nightly, traffic_experiment):
    client, _, _ = nightly
    log_traffic(served(3.0, (100, 200)), client)
    experiment = client.get_experiment_by_name(traffic_experiment)
    run = client.create_run(experiment.experiment_id, tags={tags.STAGE: "traffic",
                                                            tags.TRAFFIC_RECORDED_TO: NOW.isoformat()})
    client.log_text(run.info.run_id, '{"format": "recforge-traffic", "version": 1', "traffic/traffic.json")
    client.set_terminated(run.info.run_id)
    choice = plan_traffic(client, 7.0)
    assert choice.entry is None
    assert "cannot be used: traffic profile " in choice.reason and "is not JSON" in choice.reason


def test_the_stage_config_checks_the_traffic_fields():
    assert ProfileStageConfig().traffic == "latest" and ProfileStageConfig().traffic_max_age_days == 7.0
    with pytest.raises(ConfigError, match="traffic"):
        ProfileStageConfig.from_dict({"traffic": "yesterday"})
    with pytest.raises(ConfigError, match="traffic_max_age_days"):
        ProfileStageConfig.from_dict({"traffic_max_age_days": -1})


def test_a_profile_records_the_traffic_it_replayed(model, tmp_path):
    path, spec, _ = model
    profile = served(1.0, (64, 64, 128, 256))
    sizes_file = tmp_path / "served.sizes"
    sizes_file.write_text("64\n64\n128\n256\n")
    entry = traffic_entry(RUN_ID, profile)
    doc = profile_variant(path, spec, Sleeping("cpu-onnxruntime", "cpu-onnxruntime", 0.2, 0.001), family="ncf",
                          variant="fp32", variant_run_id=RUN_ID, accuracy=ACCURACY, traffic=entry,
                          cfg=ProfileConfig.from_dict({**TINY, "sizes": str(sizes_file)}))
    validate_profile(doc)
    assert doc["load"]["distribution"] == "empirical" and doc["load"]["params"] == {"source": str(sizes_file)}
    assert doc["load"]["mean_items_per_query"] == pytest.approx(128.0)
    assert doc["load"]["traffic"] == entry and doc["load"]["traffic"]["peak_qps"] == 40.0
    broken = {**doc, "load": {**doc["load"], "traffic": {**entry, "run_id": "not-a-run"}}}
    with pytest.raises(ConfigError, match=r"\$.load.traffic.run_id"):
        validate_profile(broken)
