"""The two batching knob sets of a deployed model (recforge.inference.serving_config): the throughput-optimal set is
the config the profile argues for, the latency-optimal one the same without a batching wait, with the profile's
measurement of that setting named when its search made one."""

from __future__ import annotations

import uuid

from recforge.inference.serving_config import (
    BATCHING_MODES,
    LATENCY_MODE,
    THROUGHPUT_MODE,
    ServingConfig,
    batching_knob_sets,
    latency_optimal,
    serving_config_from_profile,
)
from recforge.pipeline.profiling.document import build_profile
from recforge.pipeline.profiling.lbt import LBTEvaluator, Measurement
from recforge.pipeline.profiling.search.hill_climb import HillClimb


def triton_profile(axes: dict) -> dict:
    """A schema-valid cpu-triton profile of a hill climb over ``axes``, with a closed-form latency model in which a
    batching wait (queue delay, preferred batch sizes) raises the rate the p95 target holds at."""

    def measure(rate, knobs):
        per_qps = 10.0 + 4.0 * (knobs["queue_delay_us"] > 0) + 2.0 * bool(knobs["preferred_batch"])
        p95 = 5.0 + rate / per_qps
        return Measurement(rate, p95 / 2, p95, p95 * 1.1, rate, 0, int(rate))

    evaluator = LBTEvaluator(measure, p95_target_ms=25, start_qps=100, max_qps=1600, tolerance=0.05)
    search = HillClimb(axes, fixed={"instances": 2, "max_batch_size": 256}).search(evaluator)
    return build_profile(
        model_family="dlrm", variant="fp32", variant_run_id=uuid.uuid4().hex, onnx_sha256="0" * 64,
        target={"name": "cpu-triton", "kind": "cpu-triton", "device": "test CPU", "threads": 1},
        load={"distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
              "sub_batch_policy": {"mode": "searched"}},
        search=search, lbt=evaluator.result_for(search.best_knobs), accuracy={"auc": 0.75, "delta_auc": -0.001},
        latency_vs_batch={1: 0.4, 64: 1.5, 256: 4.0})


def test_the_latency_optimal_set_drops_the_batching_wait_and_keeps_everything_else():
    deployed = ServingConfig(max_batch_size=512, preferred_batch_size=(128, 64), max_queue_delay_microseconds=500,
                             max_queue_size=12, instance_count=2, threads_per_instance=2, warmup_batch_sizes=(1, 512),
                             sources={"instance_count": "measured"})
    sets = batching_knob_sets(deployed)
    assert set(sets) == set(BATCHING_MODES)
    assert sets[THROUGHPUT_MODE] == deployed
    latency = sets[LATENCY_MODE]
    assert (latency.max_queue_delay_microseconds, latency.preferred_batch_size) == (0, ())
    kept = ("max_batch_size", "max_queue_size", "instance_count", "threads_per_instance", "warmup_batch_sizes",
            "dynamic_batching", "instance_kind")
    assert {k: getattr(latency, k) for k in kept} == {k: getattr(deployed, k) for k in kept}
    assert latency.sources["instance_count"] == "measured"
    assert "not measured" in latency.sources["max_queue_delay_microseconds"]


def test_a_model_without_dynamic_batching_has_one_knob_set():
    plain = ServingConfig(dynamic_batching=False)
    assert latency_optimal(plain) == plain
    sets = batching_knob_sets(plain)
    assert sets[LATENCY_MODE] == sets[THROUGHPUT_MODE]


def test_the_profile_names_its_measurement_of_the_latency_optimal_setting():
    doc = triton_profile({"sub_batch": (64,), "queue_delay_us": (0, 500), "preferred_batch": ([], [32, 64])})
    assert doc["search"]["best_knobs"]["queue_delay_us"] == 500  # the batching wait won on throughput
    zero_wait = next(e for e in doc["search"]["evaluations"]
                     if e["knobs"]["queue_delay_us"] == 0 and not e["knobs"]["preferred_batch"])
    deployed = serving_config_from_profile(doc)
    assert deployed.max_queue_delay_microseconds == 500 and deployed.preferred_batch_size == (32, 64)
    latency = batching_knob_sets(deployed, doc)[LATENCY_MODE]
    assert (latency.max_queue_delay_microseconds, latency.preferred_batch_size) == (0, ())
    assert latency.instance_count == deployed.instance_count == 2
    assert f"LBT {zero_wait['lbt_qps']:g} qps" in latency.sources["max_queue_delay_microseconds"]
    assert zero_wait["lbt_qps"] < doc["latency_bounded_throughput_qps"]

    # a search that never tried the setting without a wait: the set is derived, and says so
    only_waits = triton_profile({"sub_batch": (64,), "queue_delay_us": (500, 1000), "preferred_batch": ([32, 64],)})
    derived = latency_optimal(serving_config_from_profile(only_waits), only_waits)
    assert derived.max_queue_delay_microseconds == 0 and "not measured" in derived.sources["preferred_batch_size"]
