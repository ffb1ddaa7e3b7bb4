"""A profile shaped like the fleet's (a DLRM variant on the 2-core CPU target) for the capacity model, without
reading a real profile from disk."""

from __future__ import annotations

import json

import pytest

from recforge.serving.elastic.capacity import NodeModel

PROFILE = {
    "latency_bounded_throughput_qps": 700.0,
    "p95_target_ms": 25.0,
    "load": {"arrival": "poisson", "distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
             "mean_items_per_query": 167.34, "sub_batch_policy": {"mode": "searched"}},
    "curve": [
        {"offered_qps": 50.0, "achieved_qps": 50.0, "p50_ms": 3.6, "p95_ms": 5.7, "p99_ms": 7.6},
        {"offered_qps": 200.0, "achieved_qps": 200.0, "p50_ms": 3.4, "p95_ms": 6.2, "p99_ms": 6.9},
        {"offered_qps": 400.0, "achieved_qps": 400.0, "p50_ms": 4.9, "p95_ms": 14.0, "p99_ms": 17.2},
        {"offered_qps": 600.0, "achieved_qps": 597.4, "p50_ms": 5.3, "p95_ms": 15.7, "p99_ms": 18.7},
        {"offered_qps": 700.0, "achieved_qps": 681.7, "p50_ms": 9.0, "p95_ms": 20.7, "p99_ms": 25.6},
        {"offered_qps": 800.0, "achieved_qps": 731.9, "p50_ms": 72.8, "p95_ms": 97.0, "p99_ms": 101.1},
    ],
    "latency_vs_batch": [{"batch": 1, "ms": 1.04}, {"batch": 16, "ms": 2.46}, {"batch": 64, "ms": 1.90},
                         {"batch": 256, "ms": 1.87}, {"batch": 1024, "ms": 4.18}],
}


@pytest.fixture
def profile_doc() -> dict:
    return json.loads(json.dumps(PROFILE))


@pytest.fixture
def node_model(profile_doc) -> NodeModel:
    return NodeModel.from_profile(profile_doc)


@pytest.fixture
def profile_file(tmp_path, profile_doc):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_doc))
    return path
