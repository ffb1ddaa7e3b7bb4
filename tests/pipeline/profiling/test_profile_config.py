"""recforge.pipeline.profiling.profile_config and search_space: the settings of a profiling run and DeepRecSched's
offload thresholds."""

from __future__ import annotations

import pytest

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.search_space import offload_thresholds, search_space
from recforge.pipeline.profiling.targets.cpu_onnxruntime import CpuOnnxRuntime
from recforge.pipeline.profiling.targets.cpu_triton import CpuTriton
from recforge.pipeline.profiling.targets.hybrid import HybridCpuGpu
from tests.pipeline.profiling.fakes import Sleeping


def test_profile_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        ProfileConfig.from_dict({"p95_target": 25})
    with pytest.raises(ConfigError, match="threads"):
        ProfileConfig.from_dict({"threads": [1, 1]})
    with pytest.raises(ConfigError, match="point_duration_s"):
        ProfileConfig.from_dict({"point_duration_s": 0})
    assert ProfileConfig.from_dict({"threads": [2]}).threads == (2,)


def test_profile_config_validates_the_triton_axes():
    with pytest.raises(ConfigError, match="queue_delays_us"):
        ProfileConfig.from_dict({"triton_queue_delays_us": [100, 0]})
    with pytest.raises(ConfigError, match="triton_workers"):
        ProfileConfig.from_dict({"triton_workers": 0})


def test_offload_thresholds_follow_the_query_sizes():
    from recforge.inference.loadgen import QuerySizes

    sizes = QuerySizes.lognormal()
    thresholds = offload_thresholds(sizes)
    assert thresholds[0] == 0 and thresholds[-1] == 1024 and list(thresholds) == sorted(set(thresholds))
    sample = sizes.sample(20_000, 1)
    offloaded = [float((sample > t).mean()) for t in thresholds]
    # each step of the axis moves a real share of the queries (no plateau for the climb to stop on)
    assert offloaded == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0], abs=0.03)
    assert offload_thresholds(QuerySizes.fixed(100)) == (0, 100, 1024)  # all or nothing


def test_profile_config_validates_the_hybrid_knobs():
    with pytest.raises(ConfigError, match="gpu_thresholds"):
        ProfileConfig.from_dict({"gpu_thresholds": [256, 128]})
    with pytest.raises(ConfigError, match="gpu_workers"):
        ProfileConfig.from_dict({"gpu_workers": 0})


def test_search_space_of_each_target():
    cfg = ProfileConfig(threads=(1, 2), min_sub_batch=64, max_sub_batch=256, gpu_thresholds=(0, 128, 1024))
    axes, fixed, start = search_space(CpuOnnxRuntime(), cfg)
    assert axes == {"sub_batch": (64, 128, 256), "threads": (1, 2)} and fixed == {"workers": 2} and start == {}
    hybrid = HybridCpuGpu(Sleeping("c", "cpu-onnxruntime", 1, 0), Sleeping("g", "gpu-x", 1, 0))
    axes, fixed, start = search_space(hybrid, cfg)
    assert axes["gpu_threshold"] == (0, 128, 1024) and start == {"gpu_threshold": 1024}  # climbs from CPU only
    assert fixed == {"workers": 2, "gpu_workers": 1}
    axes, fixed, start = search_space(CpuTriton(max_batch=256), cfg)
    assert {"preferred_batch", "queue_delay_us", "instances"} <= set(axes)
    assert fixed == {"workers": cfg.triton_workers, "max_batch_size": 256}
    # plain serving first: one request per typical (~167-item) query
    assert start == {"sub_batch": 256, "preferred_batch": [], "queue_delay_us": 0, "instances": 1}


def test_lbt_config_of_a_profile_config_keeps_the_documents_lbt_search_fields():
    lbt = ProfileConfig(start_qps=50).lbt_config()
    assert list(lbt.to_dict()) == ["p95_target_ms", "start_qps", "max_qps", "apparatus_ceiling_qps", "ramp_factor",
                                   "max_error_rate", "min_achieved_ratio", "tolerance", "max_steps", "repeats",
                                   "confirm", "max_cpu_steal_pct", "steal_retries"]
    assert lbt.apparatus_ceiling_qps > lbt.start_qps  # measured against a null target: the ramp's only bound
    assert lbt.start_qps == 50.0 and lbt.confirm == 0  # confirm runs are the profile's own (ProfileConfig.confirm)
