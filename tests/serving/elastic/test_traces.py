"""Traces: the generators' shapes, seeding, the file format's round trip and its one-line errors, and replay of
recorded requests and of the balancer's request log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recforge.core.errors import ConfigError, DataError
from recforge.serving.elastic import traces
from recforge.serving.loadbalancer.requestlog import parse_lines


def test_diurnal_is_a_four_to_one_day_compressed_to_minutes():
    trace = traces.diurnal(minutes=12, peak_qps=800, noise=0.0)
    assert trace.duration_s == 720
    assert trace.rate_qps.max() / trace.rate_qps.min() == pytest.approx(4.0, rel=0.01)
    assert trace.rate_qps.argmax() == pytest.approx(360, abs=2)  # noon in the middle
    assert trace.meta["time_compression"] == pytest.approx(120.0)
    assert trace.mean_items(360) > trace.mean_items(0)  # larger queries at the peak
    np.testing.assert_allclose(trace.size_mix.sum(axis=1), 1.0)


def test_generators_are_seeded():
    a, b = traces.diurnal(seed=3), traces.diurnal(seed=3)
    np.testing.assert_array_equal(a.rate_qps, b.rate_qps)
    assert not np.array_equal(a.rate_qps, traces.diurnal(seed=4).rate_qps)


def test_bursts_double_the_rate_for_their_length():
    base = traces.diurnal(minutes=10, noise=0.0)
    burst = traces.with_bursts(base, durations_s=(20.0,), starts_s=(100.0,))
    assert burst.bursts == (traces.Burst(100.0, 20.0, 2.0),)
    np.testing.assert_allclose(burst.rate_qps[100:120], 2 * base.rate_qps[100:120])
    np.testing.assert_allclose(burst.rate_qps[:100], base.rate_qps[:100])
    np.testing.assert_allclose(burst.rate_qps[120:], base.rate_qps[120:])


def test_step_bursts_and_ramp():
    steps = traces.step_bursts(base_qps=300, durations_s=(10, 40), gap_s=60, noise=0.0)
    assert [b.duration_s for b in steps.bursts] == [10, 40]
    assert steps.duration_s == 60 * 3 + 50
    assert steps.rate_qps[int(steps.bursts[1].start_s) + 5] == pytest.approx(600)
    ramp = traces.ramp(minutes=5, start_qps=100, end_qps=900, noise=0.0)
    assert np.all(np.diff(ramp.rate_qps) > 0)
    assert (ramp.rate_qps[0], ramp.rate_qps[-1]) == (pytest.approx(100), pytest.approx(900))


def test_a_trace_file_round_trips(tmp_path):
    trace = traces.with_bursts(traces.diurnal(minutes=3, seed=1))
    loaded = traces.load_trace(traces.save_trace(trace, tmp_path / "t.json"))
    np.testing.assert_allclose(loaded.rate_qps, trace.rate_qps, atol=1e-3)
    np.testing.assert_allclose(loaded.size_mix, trace.size_mix, atol=1e-5)
    assert loaded.bursts == trace.bursts
    assert loaded.size_edges == trace.size_edges


@pytest.mark.parametrize(("content", "error", "names"), [
    ("", DataError, "is empty"),
    ("   \n", DataError, "is empty"),
    ('{"format": "recforge-trace", "version": 1, "interval_s"', DataError, "not JSON"),
    ('{"rate_qps": [1]}', DataError, "not a recforge-trace"),
    ('{"format": "recforge-trace", "version": 2}', DataError, "version 2"),
    ('{"format": "recforge-trace", "version": 1, "interval_s": 1}', DataError, "rate_qps"),
    ('{"format": "recforge-trace", "version": 1, "interval_s": 1, "rate_qps": [], "size_edges": [1, 2],'
     ' "mix_interval_s": 1, "size_mix": [[1.0]]}', DataError, "no intervals"),
    ('{"format": "recforge-trace", "version": 1, "interval_s": 1, "rate_qps": [5, -1], "size_edges": [1, 2],'
     ' "mix_interval_s": 1, "size_mix": [[1.0]]}', DataError, ">= 0"),
    ('{"format": "recforge-trace", "version": 1, "interval_s": 1, "rate_qps": [5], "size_edges": [1, 2, 3],'
     ' "mix_interval_s": 1, "size_mix": [[1.0]]}', DataError, "columns"),
    ('{"format": "recforge-trace", "version": 1, "interval_s": 1, "rate_qps": ["x"], "size_edges": [1, 2],'
     ' "mix_interval_s": 1, "size_mix": [[1.0]]}', DataError, "malformed"),
])
def test_a_corrupt_or_empty_trace_file_gets_a_one_line_error(tmp_path, content, error, names):
    path = tmp_path / "trace.json"
    path.write_text(content)
    with pytest.raises(error, match=names) as caught:
        traces.load_trace(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_trace_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        traces.load_trace(tmp_path / "absent.json")


def test_replay_bins_arrivals_and_sizes():
    times = [0.1, 0.2, 0.9, 1.5, 3.2]
    sizes = [10, 10, 200, 200, 1024]
    trace = traces.replay(times, sizes, interval_s=1.0, mix_interval_s=2.0)
    np.testing.assert_array_equal(trace.rate_qps, [3, 1, 0, 1])
    edges = np.asarray(trace.size_edges)
    first = trace.size_mix[0]
    assert first[np.searchsorted(edges, 10, side="right") - 1] == pytest.approx(0.5)
    assert first[np.searchsorted(edges, 200, side="right") - 1] == pytest.approx(0.5)
    assert trace.size_mix[1][-1] == pytest.approx(1.0)  # the 1024-item query in the last bin
    with pytest.raises(DataError, match="no recorded requests"):
        traces.replay([], [])
    with pytest.raises(DataError, match="2 arrival"):
        traces.replay([0, 1], [5])


def test_replay_of_the_balancers_request_log():
    sha = "0" * 64
    lines = [
        f"recforge-request 1700000000.100 id1 node1 200 -- 4 4000 POST /v2/models/m/infer {sha}",
        f"recforge-request 1700000000.600 id2 node2 200 -- 5 8000 POST /v2/models/m/infer {sha}",
        "recforge-request 1700000001.100 id3 node1 200 -- 1 0 GET /v2/health/ready -",
        "some haproxy message",
        f"recforge-request 1700000002.300 id4 node2 503 -- 0 4000 POST /v2/models/m/infer {sha}",
    ]
    trace = traces.replay_request_log(parse_lines(lines), bytes_per_item=40.0, mix_interval_s=1.0)
    np.testing.assert_array_equal(trace.rate_qps, [2, 0, 1])
    assert trace.meta["requests"] == 3
    bins = np.searchsorted(np.asarray(trace.size_edges), [100, 200], side="right") - 1  # 4000 and 8000 bytes
    assert trace.mean_items(0) == pytest.approx(np.mean(trace.bin_sizes[bins]))
    with pytest.raises(ConfigError, match="bytes_per_item"):
        traces.replay_request_log(parse_lines(lines), bytes_per_item=0)


def test_trace_json_is_versioned(tmp_path):
    doc = json.loads(traces.save_trace(traces.ramp(minutes=1), tmp_path / "r.json").read_text())
    assert (doc["format"], doc["version"]) == ("recforge-trace", 1)
