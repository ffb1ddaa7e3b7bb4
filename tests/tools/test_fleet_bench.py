"""recforge.tools.fleet_bench: the generated serving config against Triton's default one, each on a real 2-node fleet
behind HAProxy, with a tiny NCF model and very short load settings (structure, not speed)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid

import pytest

from recforge.contracts.features import example_spec
from recforge.core.errors import ConfigError
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.pipeline.profiling.document import build_profile
from recforge.pipeline.profiling.lbt import LBTEvaluator, Measurement
from recforge.pipeline.profiling.search.hill_climb import HillClimb
from recforge.serving import fleet as fl
from recforge.tools import fleet_bench as fb

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
MODEL = "recforge-ncf"
BEST = {"sub_batch": 16, "preferred_batch": [16], "queue_delay_us": 200, "instances": 2, "threads": 1, "workers": 4,
        "max_batch_size": 64}
# short and lenient: both configs meet the SLO up to max_qps (a structure test on a busy 2-core machine)
SETTINGS = {"start_qps": 20, "max_qps": 40, "point_duration_s": 0.5, "warmup_s": 0.3, "max_steps": 3,
            "tolerance": 0.5, "sizes": "fixed:16", "p95_target_ms": 5000, "check_inter_ms": 200, "name": "tiny",
            "rounds": 1, "compare_duration_s": 0.5}

triton_ok, triton_why = tr.check_installation()


def cpu_triton_profile() -> dict:
    """A schema-valid cpu-triton profile whose search picked BEST (a closed-form latency model, no server)."""

    def measure(rate, knobs):
        p95 = 5.0 + rate / 100.0
        return Measurement(rate, p95 / 2, p95, p95 * 1.1, rate, 0, int(rate))

    fixed_keys = ("workers", "threads", "max_batch_size")
    evaluator = LBTEvaluator(measure, p95_target_ms=25, start_qps=100, max_qps=1600, tolerance=0.2)
    search = HillClimb({k: (v,) for k, v in BEST.items() if k not in fixed_keys},
                       fixed={k: BEST[k] for k in fixed_keys}).search(evaluator)
    return build_profile(
        model_family="ncf", variant="fp32", variant_run_id=uuid.uuid4().hex, onnx_sha256="0" * 64,
        target={"name": "cpu-triton", "kind": "cpu-triton", "device": "test CPU", "threads": 1, "workers": 4},
        load={"distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
              "sub_batch_policy": {"mode": "searched"}},
        search=search, lbt=evaluator.result_for(search.best_knobs), accuracy={"auc": 0.75, "delta_auc": 0.0},
        latency_vs_batch={1: 0.4, 16: 1.0, 64: 2.0},
    )


def test_settings_are_checked_on_one_line():
    for bad in ({"nodes": 0}, {"sub_batch": 0}, {"workers": 2.5}, {"point_duration_s": -1}, {"tolerance": 2},
                {"sizes": "zipf"}, {"name": "a/b"}, {"rounds": 0}, {"unknown": 1}):
        with pytest.raises(ConfigError):
            fb.FleetBenchConfig.from_dict(bad)
    default = fb.default_serving_config(mr.ServingConfig(max_batch_size=512, preferred_batch_size=(64,),
                                                         instance_count=3, threads_per_instance=2))
    assert (default.dynamic_batching, default.instance_count, default.max_batch_size) == (False, 1, 512)
    assert default.preferred_batch_size == () and default.threads_per_instance == 1


def test_no_cap_but_the_apparatus_ceiling(tmp_path):
    cfg = fb.FleetBenchConfig()
    assert cfg.max_qps is None and cfg.rounds == 5
    kwargs = cfg.lbt_kwargs(50, 25)
    assert kwargs["max_qps"] is None and kwargs["apparatus_ceiling_qps"] is None
    bounded = cfg.lbt_kwargs(50, 25, ceiling_qps=3000, ramp_factor=1.25)
    assert bounded["apparatus_ceiling_qps"] == 3000 and bounded["ramp_factor"] == 1.25
    assert cfg.lbt_kwargs(5000, 25, ceiling_qps=3000)["start_qps"] == 3000  # never above what the apparatus offers
    assert fb.calibrated_ceiling_qps(tmp_path) is None
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "apparatus.json").write_text(json.dumps({"mix": {"queries_per_s": 2468.0}}))
    assert fb.calibrated_ceiling_qps(tmp_path) == 2468.0
    (tmp_path / "bench" / "apparatus.json").write_text("{not json")
    assert fb.calibrated_ceiling_qps(tmp_path) is None


def round_entry(lbt: float, p95: float, share: float = 0.01) -> dict:
    return {"lbt_qps": lbt, "same_load": {"offered_qps": 80.0, "p95_ms": p95, "apparatus_share_median": share}}


def test_round_ratios_medians_intervals_and_the_served_bench_line():
    runs = {"default": [round_entry(100, 20.0), round_entry(120, 25.0), round_entry(90, 10.0)],
            "generated": [round_entry(300, 4.0), round_entry(480, 5.0), round_entry(180, 4.0)]}
    summary = fb.round_summary(runs, 0.95)
    assert summary["throughput_ratio_rounds"] == [3.0, 4.0, 2.0]
    assert summary["latency_ratio_rounds"] == pytest.approx([0.2, 0.2, 0.4])
    assert summary["throughput_ratio"]["median"] == 3.0 and summary["throughput_ratio"]["low"] == 2.0
    assert summary["order"] == [[0, "default"], [0, "generated"], [1, "default"], [1, "generated"], [2, "default"],
                                [2, "generated"]]
    doc = {"family": "dlrm", "rounds": summary, "auc_ratio": fb.auc_ratio(
        {"accuracy": {"auc": 0.7992, "delta_auc": -0.0008}}, same_model=False)}
    assert doc["auc_ratio"] == pytest.approx(0.7992 / 0.8)
    line = fb.served_bench_line(doc)
    assert line.startswith("bench: family=dlrm path=served latency_ratio=0.2 throughput_ratio=3 auc_ratio=0.999 ")
    assert "throughput_ratio_low=2 throughput_ratio_high=4" in line and line.endswith("rounds=3")
    assert fb.auc_ratio(None, same_model=False) is None and fb.auc_ratio(None, same_model=True) == 1.0


def test_a_baseline_profile_serves_the_same_model_with_that_profiles_config_and_client_knobs(tmp_path, monkeypatch):
    """--baseline-profile: the ``default`` side is the champion's file with the config generated from another profile
    (an earlier night's), loaded with that profile's client knobs; its result does not replace the headline entry.
    The fleet steps are injected: which config and which client each side gets is what is checked."""
    from recforge.tools import fleet_bench_report as report

    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(SPEC.to_json())
    tonight, earlier = cpu_triton_profile(), cpu_triton_profile()
    earlier["search"]["best_knobs"].update(sub_batch=64, workers=8, instances=1, preferred_batch=[64],
                                           queue_delay_us=0)
    paths = {}
    for name, doc in (("tonight", tonight), ("earlier", earlier)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
    source = fl.explicit_source(onnx_path, spec_path, profile_path=paths["tonight"], model=MODEL)
    seen = []

    def run_round(source, cfg, label, intended, fleet_home, *, target, notes, onnx_path):
        seen.append((label, intended, onnx_path))
        knobs = {"max_batch_size": intended.max_batch_size, "dynamic_batching": intended.dynamic_batching,
                 "preferred_batch_size": list(intended.preferred_batch_size), "max_queue_delay_us": 0,
                 "instances": intended.instance_count, "intra_op_threads": 1}
        return {"fleet_url": f"http://{label}", "config_pbtxt_knobs": knobs}

    def search_lbt(url, model, spec, cfg, *, sub_batch, workers, **kwargs):
        seen.append((url, sub_batch, workers))
        return {"lbt_qps": 100.0 if url == "http://default" else 150.0, "curve": [], "capped": False,
                "converged": True, "items_per_s_at_lbt": None, "p95_ms_at_lbt": None, "p50_ms_at_lbt": None}

    def same_load_run(url, model, spec, cfg, *, sub_batch, workers, rate, p95_target_ms):
        return {"offered_qps": rate, "p95_ms": 10.0 if url == "http://default" else 5.0}

    monkeypatch.setattr(fb, "run_round", run_round)
    monkeypatch.setattr(fb, "search_lbt", search_lbt)
    monkeypatch.setattr(fb, "same_load_run", same_load_run)
    monkeypatch.setattr(fb.fl, "down", lambda **kwargs: None)
    monkeypatch.setattr(fb, "on_apparatus_cpus", lambda home: contextlib.nullcontext({}))
    cfg = fb.FleetBenchConfig.from_dict({"rounds": 1, "sizes": "fixed:16"})
    doc = fb.compare(source, cfg, target="cpu-triton", home=tmp_path, baseline_profile=paths["earlier"])

    (label_d, served_d, file_d), (_, sub_d, workers_d), (label_g, served_g, file_g), (_, sub_g, workers_g) = seen
    assert (label_d, label_g) == ("default", "generated") and file_d == file_g == str(onnx_path)
    assert served_d == mr.serving_config_from_profile(paths["earlier"])
    assert served_g == mr.serving_config_from_profile(paths["tonight"]) and served_d != served_g
    assert served_d.dynamic_batching and served_d.instance_count == 1  # the earlier config, not Triton's default
    assert (sub_d, workers_d, sub_g, workers_g) == (64, 8, 16, 4)  # each side's own profile's client knobs
    assert doc["baseline"] == {"config": "profile", "profile": str(paths["earlier"]),
                               "best_knobs": earlier["search"]["best_knobs"], "load": earlier["load"],
                               "sub_batch": 64, "workers": 8}
    assert doc["ratio_generated_over_default"] == 1.5
    assert doc["bench_line"].startswith(
        "bench: family=ncf path=served-vs-profile latency_ratio=0.5 throughput_ratio=1.5")
    assert report.result_key(doc) == f"{MODEL}@cpu-triton@vs-profile"
    assert "served with the config generated from" in report.render_table(doc)
    with pytest.raises(ConfigError, match="drop --baseline-onnx"):
        fb.compare(source, cfg, home=tmp_path, baseline_profile=paths["earlier"], baseline_onnx=onnx_path)
    with pytest.raises(ConfigError, match="missing.json cannot be read"):
        fb.compare(source, cfg, home=tmp_path, baseline_profile=tmp_path / "missing.json")


@pytest.mark.triton
@pytest.mark.integration  # HAProxy in front of the nodes
@pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")
def test_both_configs_are_measured_through_a_real_fleet_and_compared(tmp_path, monkeypatch, capsys):
    # a deep RECFORGE_HOME, as a user's checkout may have: the balancer's admin socket does not fit under it
    # (HAProxy's 97 characters), so it goes to a short private folder (lb.admin_socket_path)
    home = tmp_path / ("a-deep-checkout-" * 3) / ".recforge"
    assert len(str(home / "fleet-bench" / "tiny" / "generated" / "fleet" / "haproxy" / "admin.sock")) > 97
    monkeypatch.setenv("RECFORGE_HOME", str(home))
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, tmp_path / "model.onnx")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(SPEC.to_json())
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(cpu_triton_profile()))

    code = fb.main(["--onnx", str(onnx_path), "--spec", str(spec_path), "--profile", str(profile_path),
                    "--model", MODEL, "--target", "cpu-triton", "--config", json.dumps(SETTINGS)])
    out = capsys.readouterr()
    print(out.out)  # the table (pytest -s)
    assert code == 0, out.err
    summary = json.loads(out.out[out.out.index("{\n"):])
    doc = json.loads((home / "bench" / "fleet_configs.json").read_text())["runs"][f"{MODEL}@cpu-triton"]
    assert summary["json"] == str(home / "bench" / "fleet_configs.json")
    assert set(doc["configs"]) == {"generated", "default"}
    assert doc["load"]["sub_batch"] == 16 and doc["load"]["workers"] == 4  # the profile's best_knobs, both runs
    assert doc["load"]["from_profile"] == ["sub_batch", "workers"]
    generated, default = doc["configs"]["generated"], doc["configs"]["default"]

    # the configs on disk and as each node serves them: generated from the profile vs Triton's default
    assert generated["config_pbtxt_knobs"] == {"max_batch_size": 64, "dynamic_batching": True,
                                               "preferred_batch_size": [16], "max_queue_delay_us": 200,
                                               "instances": 2, "intra_op_threads": 1}
    default_pbtxt = mr.parse_config_pbtxt(default["config_pbtxt"])
    assert "dynamic_batching" not in default_pbtxt
    assert default_pbtxt["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert default_pbtxt["max_batch_size"] == 64
    # the default apparatus: one node on its own CPU, the client and the balancer on another
    for entry in (generated, default):
        assert set(entry["served_knobs"]) == {"node0"}
        plan, apparatus_cpus = entry["cpu_plan"], entry["apparatus"]["apparatus_cpus"]
        assert apparatus_cpus and f"apparatus CPUs {apparatus_cpus};" in plan and "node0 CPUs" in plan
        assert f"node0 CPUs {apparatus_cpus}" not in plan and "node0" not in plan.partition("(shared")[2]
        assert entry["apparatus"]["requests_per_node"]["node0"] > 0
    for knobs in default["served_knobs"].values():
        assert (knobs["dynamic_batching"], knobs["instances"], knobs["max_batch_size"]) == (False, 1, 64)
    for knobs in generated["served_knobs"].values():
        assert (knobs["dynamic_batching"], knobs["preferred_batch_size"], knobs["instances"]) == (True, [16], 2)

    # both measured under the same load; the ratio is theirs
    for entry in (generated, default):
        assert entry["lbt_qps"] > 0 and entry["curve"] and entry["p95_ms_at_lbt"] <= SETTINGS["p95_target_ms"]
        assert entry["items_per_s_at_lbt"] > 0
        # an LBT of 0 at the start rate is searched again from a 4x lower one (START_RETRIES)
        assert entry["start_qps"] in [SETTINGS["start_qps"] / 4**k for k in range(fb.START_RETRIES + 1)]
    assert [(e["lbt_qps_rounds"], e["round"], e["other_rounds"]) for e in (generated, default)] == \
        [([generated["lbt_qps"]], 0, []), ([default["lbt_qps"]], 0, [])]
    assert doc["ratio_generated_over_default"] == pytest.approx(generated["lbt_qps"] / default["lbt_qps"])
    assert summary["ratio_generated_over_default"] == doc["ratio_generated_over_default"]
    # the same offered load for both (a fraction of the baseline's LBT), and the machine-readable line
    assert generated["same_load"]["offered_qps"] == default["same_load"]["offered_qps"] == pytest.approx(
        0.8 * default["lbt_qps"])
    assert doc["rounds"]["order"] == [[0, "default"], [0, "generated"]]
    assert doc["rounds"]["latency_ratio"]["median"] == pytest.approx(
        generated["same_load"]["p95_ms"] / default["same_load"]["p95_ms"])
    assert summary["bench_line"] in out.out and summary["bench_line"].startswith(
        "bench: family=ncf path=served latency_ratio=")
    assert doc["auc_ratio"] == 1.0 and doc["baseline_is_the_same_model"]  # --onnx without --baseline-onnx
    table = (home / "bench" / "fleet_configs.md").read_text()
    assert "| generated |" in table and "| default |" in table and "no dynamic_batching" in table
    assert "LBT generated / default:" in out.out

    # both fleets are down, and only this benchmark's folders were used
    for label in fb.CONFIGS:
        root = fl.fleet_dir(home / "fleet-bench" / "tiny" / label)
        assert fl.fleet_processes(root) == [] and not (root / "state.json").exists()
    assert not (home / "fleet").exists()
