"""CompressConfig and the base/variant names (recforge.pipeline.compression.config)."""

from __future__ import annotations

import pytest

from recforge.core.errors import ConfigError
from recforge.pipeline.compression.config import CompressConfig, parse_base, variant_name
from recforge.pipeline.compression.variants import plan_bases


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    assert CompressConfig.from_dict({"prune_ratios": [0.5], "threads": 1}).prune_ratios == (0.5,)
    with pytest.raises(ConfigError, match="unknown key"):
        CompressConfig.from_dict({"prune_ratio": [0.5]})
    with pytest.raises(ConfigError, match="must be int"):
        CompressConfig.from_dict({"threads": "2"})
    with pytest.raises(ConfigError, match="prune_ratios"):
        CompressConfig.from_dict({"prune_ratios": [1.5]})
    with pytest.raises(ConfigError, match="precisions"):
        CompressConfig.from_dict({"precisions": ["int4"]})


def test_plan_bases_and_names():
    cfg = CompressConfig()
    assert plan_bases(cfg) == ["fp32", "pruned25", "pruned50", "pruned75", "student"]
    assert plan_bases(cfg, "logreg") == ["fp32"]
    assert plan_bases(CompressConfig(prune_ratios=(0.3,), student=False), "din") == ["fp32", "pruned30"]
    assert parse_base("pruned50") == ("pruned", 0.5)
    assert variant_name("pruned50", "int8_static") == "pruned50+int8_static"
    assert variant_name("fp32", "fp32") == "fp32"
    with pytest.raises(ConfigError):
        parse_base("pruned")
    with pytest.raises(ConfigError):
        parse_base("int8")
