"""recforge.contracts.profile: validate_profile names the JSON path of the first problem; helpers of the document."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from recforge.contracts.profile import json_ready, mean_items_per_query, validate_profile
from recforge.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "example-profiles" / "dlrm-fp32-cpu-onnxruntime.json"


@pytest.fixture
def doc() -> dict:
    return json.loads(EXAMPLE.read_text())


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda d: d["target"].update(kind="gpu-tensorrt"), "$.target.kind"),
    (lambda d: d["target"].pop("threads"), "$.target.threads"),
    (lambda d: d.update(measured_at="yesterday"), "$.measured_at"),
    (lambda d: d["curve"][0].update(p50_ms=d["curve"][0]["p95_ms"] + 1), "$.curve[0]"),
    (lambda d: d.update(items_per_s=math.inf), "$.items_per_s"),
    (lambda d: d["target"].update(apparatus={"placement": "elsewhere"}), "$.target.apparatus.placement"),
    (lambda d: d["target"].update(apparatus={"placement": "isolated", "server_cpus": "one"}),
     "$.target.apparatus.server_cpus"),
])
def test_validate_profile_names_the_json_path(doc, mutate, path):
    validate_profile(doc)
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(ConfigError) as info:
        validate_profile(bad)
    assert f"invalid profile at {path}" in str(info.value) and "\n" not in str(info.value)


def test_a_profile_records_where_its_load_generator_ran(doc):
    for apparatus in ({"placement": "in-process"}, {"placement": "isolated", "server_cpus": "1-3", "client_cpus": "0"}):
        validate_profile(copy.deepcopy(doc) | {"target": doc["target"] | {"apparatus": apparatus}})


def test_mean_items_per_query_and_json_ready():
    assert mean_items_per_query({"distribution": "normal", "params": {"mean": 100, "std": 5}}) == 100.0
    assert mean_items_per_query({"distribution": "lognormal", "params": {"mu": 0.0, "sigma": 0.0}}) == 1.0
    with pytest.raises(ConfigError, match="empirical"):
        mean_items_per_query({"distribution": "empirical", "params": {"source": "x"}})
    assert json_ready({1: (2, 3)}) == {"1": [2, 3]}
