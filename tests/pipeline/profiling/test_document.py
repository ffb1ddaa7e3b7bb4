"""recforge.pipeline.profiling.document: the profile document built from a search on a closed-form server, and
its schema (recforge/contracts/profile_schema.json)."""

from __future__ import annotations

import json
import math
import uuid

import jsonschema
import pytest

from recforge.contracts.profile import profile_schema, validate_profile
from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.document import build_profile
from recforge.pipeline.profiling.lbt import (
    LBTConfig,
    LBTEvaluator,
    Measurement,
    latency_bounded_throughput,
    lbt_from_config,
)
from recforge.pipeline.profiling.search.axes import deeprecsched_axes
from recforge.pipeline.profiling.search.hill_climb import HillClimb
from tests.pipeline.profiling.closed_form import mm1, mm1_lbt

# --------------------------------------------------------------------------------------------------------- profile


def sub_batch_server(knobs: dict) -> float:
    """Mean service time (ms) of a 167-item query against the sub-batch size: per-request overhead for small
    sub-batches, lost parallelism for big ones; fastest at 128."""
    return 1.0 + 0.25 * (math.log2(knobs["sub_batch"]) - 7) ** 2


def server_measure(rate: float, knobs: dict) -> Measurement:
    return mm1(sub_batch_server(knobs))(rate, knobs)


@pytest.fixture(scope="module")
def searched():
    evaluate = LBTEvaluator(server_measure, p95_target_ms=25, start_qps=20, max_qps=50_000, tolerance=0.02)
    result = HillClimb(deeprecsched_axes(), start={"sub_batch": 32}).search(evaluate)
    return evaluate, result


def make_profile(searched, **overrides) -> dict:
    evaluate, result = searched
    kwargs = dict(
        model_family="wide_deep", variant="int8", variant_run_id=uuid.UUID(int=7).hex, onnx_sha256="ab" * 32,
        target={"name": "cpu-onnxruntime", "kind": "cpu-onnxruntime", "device": "2 vCPU x86_64", "threads": 1,
                "workers": 2},
        load={"distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
              "sub_batch_policy": {"mode": "searched"}},
        search=result, lbt=evaluate.result_for(result.best_knobs),
        latency_vs_batch={1: 0.2, 64: 0.9, 256: 2.7}, accuracy={"auc": 0.79, "delta_auc": -0.0004},
        measured_at="2026-03-01T02:15:00+00:00", host="profiler-1", code_version="0123abc",
    )
    kwargs.update(overrides)
    return build_profile(**kwargs)


def test_lbt_evaluator_with_hill_climb_finds_the_best_sub_batch(searched):
    evaluate, result = searched
    assert result.best_knobs == {"sub_batch": 128}
    truth = mm1_lbt(1.0, 25.0)  # 1000 - 119.8 qps
    assert result.best_value <= truth and (truth - result.best_value) / truth < 0.02
    assert len(evaluate.results) == len(result.evaluations)  # one LBT search per distinct configuration
    with pytest.raises(ConfigError, match="never evaluated"):
        evaluate.result_for({"sub_batch": 1024})


def test_schema_is_valid_draft_2020_12_and_every_property_is_described():
    schema = profile_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    undescribed = []

    def walk(node, path):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if "description" not in sub:
                    undescribed.append(f"{path}.{name}")
            for key, sub in node.items():
                if key not in ("if", "then", "else"):  # conditions restate properties described above
                    walk(sub, f"{path}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema, "$")
    assert undescribed == []
    assert set(schema["required"]) >= {"schema_version", "model_family", "variant", "variant_run_id", "onnx_sha256",
                                       "target", "load", "p95_target_ms", "search", "latency_bounded_throughput_qps",
                                       "items_per_s", "curve", "latency_vs_batch", "accuracy", "measured_at", "host",
                                       "code_version"}


def test_built_profile_validates_and_survives_a_json_round_trip(searched):
    evaluate, result = searched
    doc = make_profile(searched)
    lbt = evaluate.result_for(result.best_knobs)
    assert doc["latency_bounded_throughput_qps"] == lbt.lbt_qps == result.best_value
    assert doc["search"]["best_knobs"] == {"sub_batch": 128} and doc["search"]["strategy"] == "hill_climb"
    assert len(doc["search"]["evaluations"]) == len(result.evaluations)
    assert doc["p95_target_ms"] == 25.0 and doc["load"]["arrival"] == "poisson"
    mean_items = math.exp(5.1 + 0.2**2 / 2)  # ~167.3
    assert doc["load"]["mean_items_per_query"] == pytest.approx(mean_items)
    assert doc["items_per_s"] == pytest.approx(lbt.lbt_qps * mean_items)
    offered = [row["offered_qps"] for row in doc["curve"]]
    assert offered == sorted(offered) and len(offered) == lbt.steps
    assert doc["latency_vs_batch"] == [{"batch": 1, "ms": 0.2}, {"batch": 64, "ms": 0.9}, {"batch": 256, "ms": 2.7}]
    text = json.dumps(doc, allow_nan=False)
    validate_profile(json.loads(text))


def test_profile_with_a_saturated_point_stores_null_percentiles(searched):
    evaluate, result = searched
    # an LBT search that overshoots into saturation (mu = 1000 qps < 1280): p95 is infinite there
    lbt = lbt_from_config(server_measure, {"sub_batch": 128},
                             LBTConfig(p95_target_ms=25, start_qps=10, max_qps=5000))
    assert any(not math.isfinite(p.measurement.p95_ms) for p in lbt.points)
    doc = make_profile(searched, lbt=lbt)
    assert any(row["p95_ms"] is None for row in doc["curve"])
    json.dumps(doc, allow_nan=False)


def test_defaults_fill_time_host_and_code_version(searched, monkeypatch):
    monkeypatch.setenv("RECFORGE_GIT_COMMIT", "feedbeef")
    doc = make_profile(searched, measured_at=None, host=None, code_version=None)
    assert doc["code_version"] == "feedbeef" and doc["host"]
    assert doc["measured_at"].endswith("+00:00")


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d.pop("onnx_sha256"), "$.onnx_sha256"),
    (lambda d: d["target"].pop("kind"), "$.target.kind"),
    (lambda d: d["target"].__setitem__("threads", "two"), "$.target.threads"),
    (lambda d: d["target"].__setitem__("kind", "tpu-xla"), "$.target.kind"),
    (lambda d: d.__setitem__("onnx_sha256", "XYZ"), "$.onnx_sha256"),
    (lambda d: d["curve"][1].__setitem__("p95_ms", -1.0), "$.curve[1].p95_ms"),
    (lambda d: d["curve"][0].pop("achieved_qps"), "$.curve[0].achieved_qps"),
    (lambda d: d["search"]["evaluations"][0]["knobs"].__setitem__("sub_batch", 0),
     "$.search.evaluations[0].knobs.sub_batch"),
    (lambda d: d["load"]["params"].pop("sigma"), "$.load.params.sigma"),
    (lambda d: d["accuracy"].__setitem__("auc", 1.5), "$.accuracy.auc"),
    (lambda d: d.__setitem__("measured_at", "yesterday"), "$.measured_at"),
    (lambda d: d.__setitem__("measured_at", "2026-13-01T00:00:00Z"), "$.measured_at"),
    (lambda d: d.__setitem__("schema_version", 2), "$.schema_version"),
    (lambda d: d.__setitem__("extra", 1), "$"),
    (lambda d: d.__setitem__("items_per_s", math.inf), "$.items_per_s"),
    (lambda d: d["curve"][0].__setitem__("p50_ms", d["curve"][0]["p99_ms"] + 1), "$.curve[0]"),
])
def test_invalid_profiles_fail_with_the_json_path(searched, mutate, path):
    doc = json.loads(json.dumps(make_profile(searched)))
    validate_profile(doc)
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        validate_profile(doc)
    assert f"invalid profile at {path}:" in str(info.value)


def test_build_profile_rejects_what_the_schema_rejects(searched):
    with pytest.raises(ConfigError, match=r"\$\.target\.kind"):
        make_profile(searched, target={"name": "x", "kind": "fpga", "device": "?", "threads": 1})
    with pytest.raises(ConfigError, match=r"\$\.target\.kind"):  # no such target in recforge.contracts.targets
        make_profile(searched, target={"name": "gpu-tensorrt", "kind": "gpu-tensorrt", "device": "?", "threads": 1})
    with pytest.raises(ConfigError, match=r"\$\.accuracy\.delta_auc"):
        make_profile(searched, accuracy={"auc": 0.8})
    with pytest.raises(ConfigError, match="mean_items_per_query"):
        make_profile(searched, load={"distribution": "empirical", "params": {"source": "sizes.npy"},
                                     "sub_batch_policy": {"mode": "fixed", "sub_batch": 64}})
    doc = make_profile(searched, load={"distribution": "empirical", "params": {"source": "sizes.npy"},
                                       "mean_items_per_query": 150.0,
                                       "sub_batch_policy": {"mode": "fixed", "sub_batch": 64}})
    assert doc["load"]["mean_items_per_query"] == 150.0


def test_profile_of_a_variant_that_never_meets_the_slo(searched):
    _, result = searched
    lbt = latency_bounded_throughput(lambda r, k: Measurement(r, 50.0, 90.0, 120.0, r, 0, 100), {"sub_batch": 128},
                                     p95_target_ms=25, start_qps=10, max_qps=1000)
    doc = make_profile(searched, lbt=lbt)
    assert doc["latency_bounded_throughput_qps"] == 0 and doc["items_per_s"] == 0
    assert any("start_qps" in note for note in doc["notes"])
