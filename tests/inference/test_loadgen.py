"""recforge.inference.loadgen: Poisson arrivals, DeepRecSys query sizes, open-loop queueing, sub-batching, a real
ONNX model."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from recforge.core.errors import ConfigError
from recforge.inference.loadgen import (
    CallableTarget,
    LoadResult,
    Offload,
    OnnxTarget,
    QuerySizes,
    poisson_arrivals,
    run_open_loop,
    sub_batches,
)
from recforge.inference.loadgen.cli import main as loadgen_main

KS_ALPHA = 0.01  # significance level of the goodness-of-fit tests (fixed seeds: deterministic outcomes)
Z = 5.0  # tolerance of the moment checks, in standard errors

# Tests marked ``perf`` assert real wall-clock latencies of sleeping targets (thread wake-ups included); the
# queueing, splitting, offload and error bookkeeping they also exercise is covered by the unit tests beside them.


# ---------------------------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("rate", [50.0, 2000.0])
def test_poisson_gaps_are_exponential_with_mean_one_over_rate(rate):
    n = 20_000
    offsets = poisson_arrivals(rate, n_queries=n, rng=7)
    assert offsets.shape == (n,) and np.all(np.diff(offsets) > 0) and offsets[0] > 0
    gaps = np.diff(np.concatenate([[0.0], offsets]))
    # mean gap: 1/rate within Z standard errors (the exponential's sd equals its mean: se = (1/rate)/sqrt(n))
    assert abs(gaps.mean() - 1 / rate) < Z * (1 / rate) / math.sqrt(n)
    # coefficient of variation of an exponential is 1; its sampling se is about 1/sqrt(n)
    assert abs(gaps.std(ddof=1) / gaps.mean() - 1.0) < Z / math.sqrt(n)
    # KS vs Exp(scale=1/rate): not rejected at KS_ALPHA
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > KS_ALPHA


def test_poisson_count_over_a_duration():
    rate, duration = 500.0, 40.0
    offsets = poisson_arrivals(rate, duration_s=duration, rng=np.random.default_rng(3))
    assert np.all(offsets < duration) and np.all(np.diff(offsets) > 0)
    # N(T) ~ Poisson(rate*T): within Z sd of its mean
    assert abs(len(offsets) - rate * duration) < Z * math.sqrt(rate * duration)
    # same seed, same schedule; another seed, another one
    assert np.array_equal(offsets, poisson_arrivals(rate, duration_s=duration, rng=3))
    assert not np.array_equal(offsets[:100], poisson_arrivals(rate, duration_s=duration, rng=4)[:100])


# ---------------------------------------------------------------------------------------------- query sizes


def test_lognormal_sizes_match_deeprecsys_theory():
    mu, sigma, n = 5.1, 0.2, 20_000
    sizes = QuerySizes.lognormal().sample(n, rng=0)
    assert sizes.dtype == np.int64 and sizes.min() >= 1 and sizes.max() <= 1024
    mean = math.exp(mu + sigma**2 / 2)  # ~167.3
    sd = mean * math.sqrt(math.exp(sigma**2) - 1)
    assert abs(sizes.mean() - mean) < Z * sd / math.sqrt(n) + 0.5  # + rounding to int
    # median e^mu ~ 164: se of a sample median ~ 1.2533 * sd / sqrt(n)
    assert abs(np.median(sizes) - math.exp(mu)) < Z * 1.2533 * sd / math.sqrt(n) + 0.5
    assert stats.kstest(np.log(sizes), "norm", args=(mu, sigma)).pvalue > 1e-6  # rounding distorts slightly


def test_normal_sizes_are_clipped_and_rounded():
    default = QuerySizes.normal().sample(10_000, rng=1)
    assert abs(default.mean() - 165) < 2.0
    low = QuerySizes.normal(mean=5, std=50).sample(5_000, rng=1)
    high = QuerySizes.normal(mean=1000, std=100).sample(5_000, rng=1)
    assert low.min() == 1 and (low == 1).mean() > 0.3
    assert high.max() == 1024 and (high == 1024).mean() > 0.3
    assert low.dtype == np.int64 and high.min() >= 1


def test_sizes_from_file_sample_only_its_values(tmp_path):
    path = tmp_path / "sizes.txt"
    path.write_text("# items per query of a trace\n12\n\n300  # a big one\n12\n1024\n")
    sizes = QuerySizes.from_file(path)
    sample = sizes.sample(3_000, rng=2)
    assert set(np.unique(sample)) == {12, 300, 1024}
    assert abs((sample == 12).mean() - 0.5) < 0.05  # with replacement, by frequency in the file
    assert QuerySizes.parse(str(path)).values == (12, 300, 12, 1024)
    assert QuerySizes.parse("lognormal:4,0.5").params == (4.0, 0.5)
    assert QuerySizes.parse("normal").describe() == "normal(mean=165, std=40)"
    assert np.all(QuerySizes.parse("fixed:7").sample(5, rng=0) == 7)


@pytest.mark.parametrize(("text", "match"), [
    ("0\n", r"line 1: items per query must be in \[1, 1024\], got 0"),
    ("5\n2000\n", r"line 2: items per query must be in \[1, 1024\], got 2000"),
    ("5\nabc\n", r"line 2: 'abc' is not an integer"),
    ("# nothing\n\n", "holds no sizes"),
])
def test_bad_sizes_file(tmp_path, text, match):
    path = tmp_path / "sizes.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        QuerySizes.from_file(path)


# ---------------------------------------------------------------------------------------------- open loop


@pytest.mark.perf
def test_open_loop_queueing_shows_in_the_tail():
    service_ms = 10.0
    target = CallableTarget.sleeping(service_ms)
    one_sub_batch = {"sizes": QuerySizes.fixed(50), "sub_batch": 64, "workers": 1}
    # low load (rho = 0.1): latency ~ the service time. The upper bounds leave room for thread wake-ups on a busy
    # 2-core runner (a quiet one measured p50 29 ms once); overload below is an order of magnitude beyond them
    low = run_open_loop(target, 10.0, n_queries=20, seed=1, **one_sub_batch)
    assert low.errors == 0 and low.completed == 20
    assert service_ms * 0.95 <= low.p50_ms < 4 * service_ms
    assert low.p95_ms < 6 * service_ms
    # overload (rho = 3): arrivals keep coming, the queue grows, the tail is many service times
    high = run_open_loop(target, 3 * 1000 / service_ms, n_queries=100, seed=1, **one_sub_batch)
    assert high.errors == 0 and high.completed == 100
    assert high.p95_ms > 20 * service_ms and high.mean_wait_ms > 10 * service_ms
    assert high.achieved_qps < 1.2 * 1000 / service_ms  # the server saturates at 1/S
    # issuing followed the Poisson schedule, not the completions: a closed loop would lag by the queue (the last
    # arrivals ~600 ms behind); the open loop's lag is only the dispatcher's scheduling delay, which on 2 busy
    # shared cores reached 17 ms at p95 (50 ms keeps an order of magnitude between the two)
    lag_ms = (high.issued_s - high.arrival_s) * 1000
    assert np.all(lag_ms >= 0) and np.percentile(lag_ms, 95) < 50
    assert high.issued_s[-1] < high.arrival_s[-1] + 0.05 < high.finish_s[-1] - 0.3
    assert np.all(high.start_s >= high.issued_s) and np.all(high.finish_s >= high.start_s + service_ms / 1000 * 0.9)
    assert np.allclose(high.latencies_ms, (high.finish_s - high.arrival_s) * 1000)


def test_sub_batches_split_and_call_sizes(tmp_path):
    assert sub_batches(150, 64) == [64, 64, 22]
    assert sub_batches(128, 64) == [64, 64]
    assert sub_batches(1, 64) == [1] and sub_batches(1024, 1024) == [1024] and sub_batches(5, 1) == [1] * 5
    calls: list[int] = []
    lock = threading.Lock()

    def record(n_items: int) -> None:
        with lock:
            calls.append(n_items)

    path = tmp_path / "sizes.txt"
    path.write_text("1\n64\n65\n150\n")
    result = run_open_loop(CallableTarget(record), 2000.0, n_queries=60, sizes=QuerySizes.from_file(path),
                           sub_batch=64, workers=1, seed=5)
    assert result.errors == 0 and result.completed == 60
    expected = [n for items in result.items for n in sub_batches(int(items), 64)]
    assert calls == expected  # one worker, FIFO: each query's sub-batches in order
    assert len(calls) == sum(math.ceil(int(n) / 64) for n in result.items)
    assert Counter(result.items.tolist()).keys() <= {1, 64, 65, 150}


@pytest.mark.perf
def test_sub_batches_of_a_query_run_in_parallel_on_free_workers():
    service_ms = 30.0
    kwargs = {"n_queries": 1, "sizes": QuerySizes.fixed(256), "sub_batch": 64, "seed": 0}
    serial = run_open_loop(CallableTarget.sleeping(service_ms), 10.0, workers=1, **kwargs)
    parallel = run_open_loop(CallableTarget.sleeping(service_ms), 10.0, workers=4, **kwargs)
    assert serial.p50_ms >= 4 * service_ms * 0.95
    assert service_ms * 0.95 <= parallel.p50_ms < 2.5 * service_ms


# ---------------------------------------------------------------------------------------------- CPU/GPU offload


def _recorder() -> tuple[CallableTarget, list[int]]:
    calls: list[int] = []
    lock = threading.Lock()

    def record(n_items: int) -> None:
        with lock:
            calls.append(n_items)

    return CallableTarget(record), calls


@pytest.mark.parametrize(("threshold", "gpu_max_batch"), [(100, 1024), (64, 128), (0, 1024), (1024, 1024)])
def test_offload_sends_queries_above_the_threshold_whole_to_the_accelerator(tmp_path, threshold, gpu_max_batch):
    cpu, cpu_calls = _recorder()
    gpu, gpu_calls = _recorder()
    gpu.max_batch = gpu_max_batch
    path = tmp_path / "sizes.txt"
    path.write_text("1\n64\n65\n150\n300\n")
    result = run_open_loop(cpu, 2000.0, n_queries=80, sizes=QuerySizes.from_file(path), sub_batch=32, workers=1,
                           seed=3, offload=Offload(gpu, threshold))
    assert result.errors == 0 and result.completed == 80
    big = [int(n) for n in result.items if n > threshold]
    small = [int(n) for n in result.items if n <= threshold]
    # one worker on each side, FIFO: the calls come in arrival order
    assert gpu_calls == [part for n in big for part in sub_batches(n, gpu_max_batch)]
    assert cpu_calls == [part for n in small for part in sub_batches(n, 32)]
    assert result.offloaded == len(big) and result.offload_threshold == threshold
    assert math.isnan(result.offload_p95_ms) == (not big)
    assert json.loads(json.dumps(result.to_dict()))["offloaded"] == len(big)


@pytest.mark.perf
def test_offload_relieves_a_saturated_cpu():
    """Sleeping targets (the CPU: 1 ms + 0.05 ms/item per sub-batch on 2 workers, ~176 queries/s for the
    lognormal sizes; the accelerator: 2 ms + 0.005 ms/item per whole query, ~350 queries/s): at 250 queries/s the
    CPU alone falls behind and its tail grows with the run; sending the queries above the median size
    (e^5.1 ~ 164 items) to the accelerator keeps both sides below saturation."""
    kwargs = {"duration_s": 2.0, "sub_batch": 64, "workers": 2, "seed": 7}
    cpu_only = run_open_loop(CallableTarget.sleeping(1.0, 0.05), 250.0, **kwargs)
    hybrid = run_open_loop(CallableTarget.sleeping(1.0, 0.05), 250.0,
                           offload=Offload(CallableTarget.sleeping(2.0, 0.005), 164), **kwargs)
    assert cpu_only.errors == 0 and hybrid.errors == 0
    assert cpu_only.offloaded == 0 and 0.3 < hybrid.offloaded / hybrid.queries < 0.7
    assert cpu_only.p95_ms > 200  # ~0.5 s of backlog by the end of the run
    assert hybrid.p95_ms < cpu_only.p95_ms / 4


def test_offload_rejects_bad_settings():
    with pytest.raises(ConfigError, match="offload threshold must be an integer in \\[0, 1024\\]"):
        Offload(CallableTarget(lambda n: None), 2000)
    with pytest.raises(ConfigError, match="offload workers"):
        Offload(CallableTarget(lambda n: None), 10, workers=0)
    with pytest.raises(ConfigError, match="offload target"):
        Offload(object(), 10)
    with pytest.raises(ConfigError, match="offload must be an Offload"):
        run_open_loop(CallableTarget(lambda n: None), 10.0, n_queries=1, offload=100)


def test_target_errors_are_counted():
    def flaky(n_items: int) -> None:
        if n_items > 100:
            raise RuntimeError("too many items\nsecond line")

    result = run_open_loop(CallableTarget(flaky), 1000.0, n_queries=200, sizes=QuerySizes.normal(100, 60),
                           sub_batch=128, workers=2, seed=0)
    big = result.items > 100
    assert result.errors == big.sum() > 0 and result.completed == (~big).sum()
    assert result.first_error == "RuntimeError: too many items"
    assert len(result.latencies_ms) == result.completed


def test_drops_and_timeouts_are_counted_on_a_stuck_target():
    """A target that never returns (until the test releases it): no timing in the outcome. The first query blocks
    the only worker, so at most ``max_queue`` later ones wait and the rest are dropped; whatever started or waited
    is unfinished when the drain timeout expires."""
    release = threading.Event()
    stuck = CallableTarget(lambda n: release.wait(), name="stuck")
    try:
        dropped = run_open_loop(stuck, 2000.0, n_queries=40, sizes=QuerySizes.fixed(10), workers=1, max_queue=2,
                                seed=0, drain_timeout_s=0.05)
    finally:
        release.set()
    # at most 1 running + 2 waiting queries were accepted (the worker may take the first after a second arrived)
    assert 40 - 3 <= dropped.dropped <= 40 - 2 and dropped.completed == 0
    assert dropped.timed_out == 40 - dropped.dropped and dropped.errors == 40 and dropped.queries == 40
    assert dropped.first_error.startswith("timed out")  # query 0: it started and never finished
    assert {e.split(":")[0] for e in dropped.query_errors} == {"dropped", "timed out"}
    assert all("max_queue" in e for e in dropped.query_errors if e.startswith("dropped"))


@pytest.mark.perf
def test_drops_and_timeouts_are_counted():
    slow = CallableTarget.sleeping(20.0)
    dropped = run_open_loop(slow, 500.0, n_queries=40, sizes=QuerySizes.fixed(10), workers=1, max_queue=2, seed=0)
    assert dropped.dropped > 10 and dropped.errors == dropped.dropped and dropped.completed + dropped.dropped == 40
    assert "max_queue" in dropped.first_error

    began = time.perf_counter()
    timed = run_open_loop(slow, 1000.0, n_queries=60, sizes=QuerySizes.fixed(10), workers=1, drain_timeout_s=0.2)
    assert time.perf_counter() - began < 1.5  # 60 x 20 ms of work would take 1.2 s
    assert timed.timed_out > 20 and timed.errors == timed.timed_out and timed.queries == 60
    assert timed.first_error.startswith("timed out")


def test_result_to_dict_is_json():
    result = run_open_loop(CallableTarget(lambda n: None, name="noop"), 500.0, duration_s=0.2, seed=3)
    summary = result.to_dict()
    assert isinstance(result, LoadResult) and summary["target"] == "noop"
    assert "latencies_ms" not in summary
    assert len(result.to_dict(include_latencies=True)["latencies_ms"]) == result.completed
    json.dumps(summary, allow_nan=False)
    assert summary["queries"] == result.queries > 50 and summary["errors"] == 0
    assert summary["offered_qps"] == 500.0 and summary["items_per_s"] > 0
    assert len(result.records()) == result.queries and result.records()[0].error is None
    assert result.to_dict(include_latencies=True)["latencies_ms"][0] == pytest.approx(result.latencies_ms[0], abs=1e-3)


# ---------------------------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def ncf_onnx(tmp_path_factory):
    from recforge.contracts.features import example_spec
    from recforge.models import build_model
    from recforge.models.export import export_onnx

    folder = tmp_path_factory.mktemp("ncf")
    spec = example_spec()
    path = export_onnx(build_model("ncf", spec), spec, folder / "model.onnx")
    (folder / "spec.json").write_text(spec.to_json())
    return path, folder / "spec.json"


@pytest.mark.perf
def test_real_onnx_model_under_load(ncf_onnx):
    onnx_path, spec_path = ncf_onnx
    target = OnnxTarget(onnx_path, spec_path, threads=1, max_batch=64)
    result = run_open_loop(target, 100.0, duration_s=1.5, sub_batch=64, workers=2, seed=0)
    assert result.errors == 0 and result.queries > 100 and result.completed == result.queries
    assert result.achieved_qps > 50 and result.items_per_s > 50 * 100
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms < 1000


def test_real_onnx_model_serves_every_query_within_its_max_batch(ncf_onnx):
    onnx_path, spec_path = ncf_onnx
    target = OnnxTarget(onnx_path, spec_path, threads=1, max_batch=64)
    result = run_open_loop(target, 100.0, n_queries=30, sub_batch=64, workers=2, seed=0)
    assert result.errors == 0 and result.completed == result.queries == 30
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms and result.items_per_s > 0
    with pytest.raises(ValueError, match="max_batch"):
        target.infer(65)
    with pytest.raises(ConfigError, match=r"sub_batch must be an integer in \[1, 64\]"):
        run_open_loop(target, 100.0, duration_s=1, sub_batch=128)


def test_onnx_target_rejects_bad_model_or_spec(ncf_onnx, tmp_path):
    import dataclasses

    from recforge.contracts.features import example_spec

    onnx_path, spec_path = ncf_onnx
    with pytest.raises(ConfigError, match="onnx_path .* is not a file"):
        OnnxTarget(tmp_path / "missing.onnx", spec_path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot be loaded by onnxruntime"):
        OnnxTarget(tmp_path / "junk.onnx", spec_path)
    with pytest.raises(ConfigError, match="spec file .* cannot be read"):
        OnnxTarget(onnx_path, tmp_path / "missing.json")
    bigger = dataclasses.replace(example_spec(), history_length=50)  # inputs the graph does not take
    with pytest.raises(ConfigError, match="does not run on inputs of this spec"):
        OnnxTarget(onnx_path, bigger, max_batch=8)
    with pytest.raises(ConfigError, match=r"threads must be an integer in \[1, 64\]"):
        OnnxTarget(onnx_path, spec_path, threads=0)


def test_cli_prints_the_result_and_one_line_errors(ncf_onnx, capsys, tmp_path):
    onnx_path, spec_path = ncf_onnx
    base = ["--onnx", str(onnx_path), "--spec", str(spec_path)]
    assert loadgen_main([*base, "--rate", "100", "--duration", "1", "--sub-batch", "32", "--workers", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["errors"] == 0 and printed["queries"] > 50 and printed["sub_batch"] == 32
    assert printed["sizes"] == "lognormal(mu=5.1, sigma=0.2)" and printed["p99_ms"] > 0

    for args, flag in [(["--rate", "0"], "--rate"), (["--rate", "10", "--duration", "-1"], "--duration"),
                       (["--rate", "10", "--sub-batch", "2048"], "--sub-batch"),
                       (["--rate", "10", "--workers", "0"], "--workers"),
                       (["--rate", "nan"], "--rate"),
                       (["--rate", "10", "--sizes", "lognormal:5.1,-1"], "sigma"),
                       (["--rate", "10", "--sizes", str(tmp_path / "nope.txt")], "sizes"),
                       (["--rate", "10", "--threads", "0"], "--threads")]:
        assert loadgen_main([*base, *args]) == 1, args
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"error: {flag}"), (args, captured.err)
        assert captured.err.count("\n") == 1, captured.err
    with pytest.raises(SystemExit) as exit_info:
        loadgen_main([*base, "--rate", "fast"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        loadgen_main([*base, "--rate", "1", "--duration", "1", "--queries", "3"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------- validation


NOOP = CallableTarget(lambda n: None, name="noop")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"rate_qps": 0}, r"rate_qps must be a number in \(0, 100000\] queries/s, got 0"),
    ({"rate_qps": -5.0}, "rate_qps must be a number in"),
    ({"rate_qps": math.inf}, "rate_qps must be a number in"),
    ({"rate_qps": 1e9}, "rate_qps must be a number in"),
    ({"rate_qps": "100"}, "rate_qps must be a number in"),
    ({"duration_s": 0}, r"duration_s must be a number in \(0, 3600\] s, got 0"),
    ({"duration_s": -1.0}, "duration_s must be a number in"),
    ({"duration_s": None, "n_queries": 0}, r"n_queries must be an integer in \[1, 1000000\]"),
    ({"duration_s": None, "n_queries": 2.5}, "n_queries must be an integer"),
    ({"duration_s": None}, "exactly one of duration_s and n_queries"),
    ({"n_queries": 10}, "exactly one of duration_s and n_queries"),
    ({"rate_qps": 100_000, "duration_s": 3600}, "rate_qps \\* duration_s must be at most 1000000 queries"),
    ({"sub_batch": 0}, r"sub_batch must be an integer in \[1, 1024\], got 0"),
    ({"sub_batch": 1025}, r"sub_batch must be an integer in \[1, 1024\], got 1025"),
    ({"sub_batch": True}, "sub_batch must be an integer"),
    ({"workers": 0}, r"workers must be an integer in \[1, 256\], got 0"),
    ({"seed": -1}, r"seed must be an integer in \[0, "),
    ({"max_queue": 0}, r"max_queue must be an integer in \[1, 1000000\]"),
    ({"drain_timeout_s": 0}, r"drain_timeout_s must be a number in \(0, 3600\]"),
    ({"sizes": "lognormal"}, "sizes must be a QuerySizes"),
    ({"target": object()}, "target must have a name and an infer"),
])
def test_nonsensical_run_settings_raise_config_error(kwargs, match):
    settings = {"target": NOOP, "rate_qps": 10.0, "duration_s": 1.0, **kwargs}
    target, rate = settings.pop("target"), settings.pop("rate_qps")
    with pytest.raises(ConfigError, match=match):
        run_open_loop(target, rate, **settings)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: QuerySizes.lognormal(sigma=0), r"sigma must be a number in \(0, 3\], got 0"),
    (lambda: QuerySizes.lognormal(sigma=-0.2), "sigma must be a number in"),
    (lambda: QuerySizes.lognormal(mu=8.0), r"mu must be a number in \[0, 6.93147\]"),
    (lambda: QuerySizes.lognormal(mu=math.nan), "mu must be a number in"),
    (lambda: QuerySizes.normal(mean=0), r"mean must be a number in \[1, 1024\] items, got 0"),
    (lambda: QuerySizes.normal(mean=2000), "mean must be a number in"),
    (lambda: QuerySizes.normal(std=0), r"std must be a number in \(0, 1024\] items, got 0"),
    (lambda: QuerySizes.fixed(0), r"n_items must be an integer in \[1, 1024\], got 0"),
    (lambda: QuerySizes.fixed(1025), r"n_items must be an integer in \[1, 1024\]"),
    (lambda: QuerySizes.parse("gaussian"), "neither lognormal"),
    (lambda: QuerySizes.parse("normal:1,2,3"), "use lognormal"),
    (lambda: QuerySizes.parse("fixed:2.5"), "n_items must be an integer"),
    (lambda: QuerySizes.from_file("/nonexistent/sizes.txt"), "sizes file .* cannot be read"),
    (lambda: poisson_arrivals(0, n_queries=5), "rate_qps must be a number in"),
    (lambda: poisson_arrivals(10, duration_s=0), "duration_s must be a number in"),
    (lambda: sub_batches(0, 64), r"n_items must be an integer in \[1, 1024\]"),
    (lambda: sub_batches(10, 0), r"sub_batch must be an integer in \[1, 1024\]"),
    (lambda: CallableTarget.sleeping(-1), r"fixed_ms must be a number in \[0, 60000\] ms"),
    (lambda: CallableTarget("not callable"), "fn must be callable"),
])
def test_nonsensical_sizes_and_helpers_raise_config_error(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_the_garbage_collector_is_paused_while_queries_run_and_restored_after():
    """A full collection stops every thread of the load generator (231-342 ms measured in an elastic replay), which
    the queries in flight would count as the server's latency: off during a run, as before it after; overlapping
    runs in two threads keep it off until the last ends; a collector that was off stays off."""
    import gc

    from recforge.inference.loadgen.engine import collector_paused, run_schedule

    seen: list[bool] = []
    target = CallableTarget(lambda n: seen.append(gc.isenabled()))
    assert gc.isenabled()
    run_schedule(target, np.array([0.0, 0.01, 0.02]), np.array([1, 2, 3]), duration_s=0.05, workers=2)
    assert seen == [False, False, False] and gc.isenabled()

    inside = threading.Event()
    release = threading.Event()

    def hold():
        with collector_paused():
            inside.set()
            release.wait(5)

    other = threading.Thread(target=hold)
    other.start()
    inside.wait(5)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other run still holds it
    release.set()
    other.join(5)
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # off before: off after
    finally:
        gc.enable()
