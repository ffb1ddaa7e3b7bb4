"""recforge.contracts.targets: the one vocabulary of hardware targets, and the profile schema that lists it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recforge.contracts.profile import profile_schema, validate_profile
from recforge.contracts.targets import (
    CPU_ONNXRUNTIME,
    DEFAULT_FLEET_TARGET,
    GPU_TRITON,
    HYBRID_ONNXRUNTIME,
    PROFILED_TARGETS,
    TARGETS,
    check_target,
    device_of,
)
from recforge.core.errors import ConfigError

EXAMPLE_PROFILES = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "example-profiles"


def test_the_schema_lists_exactly_the_known_target_kinds():
    kind = profile_schema()["properties"]["target"]["properties"]["kind"]
    assert kind["enum"] == sorted(TARGETS)


def test_profiled_targets_are_known_and_the_fleet_default_is_one_of_them():
    assert set(PROFILED_TARGETS) < set(TARGETS) and GPU_TRITON not in PROFILED_TARGETS
    assert DEFAULT_FLEET_TARGET in PROFILED_TARGETS
    assert all(name == t.name for name, t in TARGETS.items())


def test_check_target_names_the_known_ones():
    assert check_target(CPU_ONNXRUNTIME) == CPU_ONNXRUNTIME
    with pytest.raises(ConfigError, match=r"FleetConfig.target 'cpu' is not a hardware target; choose one of \["):
        check_target("cpu", "FleetConfig.target")
    with pytest.raises(ConfigError, match="gpu-tensorrt"):
        check_target("gpu-tensorrt")


def test_device_of_each_target():
    assert device_of(CPU_ONNXRUNTIME) == "cpu" and device_of(GPU_TRITON) == "gpu"
    assert device_of(HYBRID_ONNXRUNTIME) == "cpu+gpu"
    with pytest.raises(ConfigError, match="hybrid"):
        device_of("hybrid")


@pytest.mark.parametrize("path", sorted(EXAMPLE_PROFILES.glob("*.json")), ids=lambda p: p.name)
def test_the_example_profiles_of_the_kubernetes_generator_are_valid(path):
    doc = json.loads(path.read_text())
    validate_profile(doc)
    assert doc["target"]["kind"] in TARGETS
