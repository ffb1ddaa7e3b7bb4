"""recforge.contracts.traffic: the traffic profile document's round trip, the one-line error of each bad document,
the peak rate and the size sample as the load generator's sizes file."""

from __future__ import annotations

import json

import pytest

from recforge.contracts import traffic as T
from recforge.core.errors import ConfigError, DataError
from recforge.inference.loadgen import QuerySizes


def document(**changes):
    doc = {"format": "recforge-traffic", "version": 1, "recorded_from": "2026-11-26T08:00:00+00:00",
           "recorded_to": "2026-11-26T08:00:04+00:00", "requests": 6, "peak_qps": 2.0, "peak_window_s": 4.0,
           "mean_qps": 1.5, "interval_s": 1.0, "rate_qps": [2.0, 1.0, 2.0, 1.0],
           "sizes": {"edges": [1, 8, 64, 1025], "counts": [1, 2, 3]}, "size_sample": [3, 10, 20, 100, 200, 300],
           "source": "a test"}
    doc.update(changes)
    return doc


def test_round_trip_keeps_every_field(tmp_path):
    profile = T.traffic_from_dict(document())
    path = T.save_traffic(profile, tmp_path / "t.json")
    again = T.load_traffic(path)
    assert again == profile
    assert json.loads(path.read_text()) == document()
    assert again.mean_items_per_query == pytest.approx((3 + 10 + 20 + 100 + 200 + 300) / 6)
    assert again.recorded_to_time().isoformat() == "2026-11-26T08:00:04+00:00"


@pytest.mark.parametrize(("changes", "names"), [
    ({"format": "recforge-trace"}, "not a recforge-traffic document"),
    ({"version": 2}, "traffic version 2"),
    ({"recorded_from": "yesterday"}, "recorded_from 'yesterday' is not an ISO 8601 time"),
    ({"recorded_to": "2026-11-26T09:00:00"}, "recorded_to .* has no UTC offset"),
    ({"recorded_to": "2026-11-26T07:00:00+00:00"}, "recorded_to .* is before recorded_from"),
    ({"requests": 0}, "requests must be an integer >= 1"),
    ({"requests": "6"}, "requests must be an integer"),
    ({"interval_s": 0}, "interval_s must be a number > 0"),
    ({"rate_qps": []}, "rate_qps must be a non-empty list"),
    ({"rate_qps": [1.0, -1.0]}, "rate_qps must be a non-empty list of finite rates >= 0"),
    ({"rate_qps": "fast"}, "rate_qps must be a list"),
    ({"mean_qps": float("nan")}, "mean_qps must be a finite rate"),
    ({"peak_qps": 1.0}, "peak_qps 1.0 is below mean_qps 1.5"),
    ({"sizes": [1, 2]}, "sizes must be an object"),
    ({"sizes": {"edges": [1, 64, 8, 1025], "counts": [1, 2, 3]}}, "sizes.edges must be >= 2 increasing"),
    ({"sizes": {"edges": [1, 8, 64, 2048], "counts": [1, 2, 3]}}, "sizes.edges"),
    ({"sizes": {"edges": [1, 8, 64, 1025], "counts": [1, 2]}}, "sizes.counts must be 3 integers"),
    ({"sizes": {"edges": [1, 8, 64, 1025], "counts": [1, 2, 4]}}, "sizes.counts sum to 7 but requests is 6"),
    ({"size_sample": []}, "size_sample must hold 1 to"),
    ({"size_sample": [1] * 7}, "size_sample must hold 1 to"),
    ({"size_sample": [0, 5]}, "size_sample must be integers in \\[1, 1024\\]"),
    ({"size_sample": [2.5]}, "size_sample must be integers"),
])
def test_a_bad_document_gets_one_line_naming_the_source_and_field(changes, names):
    with pytest.raises(DataError, match=names) as caught:
        T.traffic_from_dict(document(**changes), source="traffic profile /x/t.json")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("traffic profile /x/t.json")


def test_a_missing_field_is_named():
    doc = document()
    del doc["peak_qps"]
    with pytest.raises(DataError, match="missing the field 'peak_qps'"):
        T.traffic_from_dict(doc)


def test_missing_empty_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=f"traffic profile {tmp_path}/none.json cannot be read"):
        T.load_traffic(tmp_path / "none.json")
    (tmp_path / "empty.json").write_text(" \n")
    with pytest.raises(DataError, match="empty.json is empty"):
        T.load_traffic(tmp_path / "empty.json")
    (tmp_path / "cut.json").write_text(json.dumps(document())[:80])
    with pytest.raises(DataError, match="cut.json is not JSON .*truncated"):
        T.load_traffic(tmp_path / "cut.json")
    (tmp_path / "bad.json").write_text(json.dumps(document(requests=-3)))
    with pytest.raises(DataError, match="bad.json: requests must be"):
        T.load_traffic(tmp_path / "bad.json")


def test_peak_rate_is_the_best_window_mean():
    assert T.peak_rate([0, 10, 0, 0, 4, 4, 4], window_s=3) == pytest.approx(4.0)
    assert T.peak_rate([0, 10, 0], window_s=1) == 10.0
    assert T.peak_rate([3, 1], window_s=10) == 2.0  # shorter than the window: the whole recording
    assert T.peak_rate([]) == 0.0
    assert T.peak_rate([5] + [0] * 9 + [5], window_s=10) == pytest.approx(10 / 11)  # not below the mean


def test_the_size_sample_is_a_sizes_file_the_load_generator_replays(tmp_path):
    profile = T.traffic_from_dict(document())
    text = T.write_size_sample(profile, tmp_path / "deep" / "sizes.txt", label="run abc")
    sizes = QuerySizes.parse(text)
    assert sizes.kind == "file" and sizes.values == profile.size_sample
    assert set(sizes.sample(200, 0).tolist()) <= set(profile.size_sample)
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["sizes.txt"]  # no partial file left


def test_the_experiment_name_can_be_set(monkeypatch):
    monkeypatch.delenv(T.EXPERIMENT_ENV, raising=False)
    assert T.traffic_experiment() == "recforge-traffic"
    monkeypatch.setenv(T.EXPERIMENT_ENV, "traffic-test")
    assert T.traffic_experiment() == "traffic-test"
