"""recforge.pipeline.profiling.search: the knob-search strategies (HillClimb against GridSearch) on synthetic
throughput surfaces, the axes and the strategy factory."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.axes import DEFAULT_QUEUE_DELAYS_US, deeprecsched_axes, triton_axes
from recforge.pipeline.profiling.search.base import SearchStrategy, knob_key
from recforge.pipeline.profiling.search.factory import strategy_from_dict
from recforge.pipeline.profiling.search.grid import GridSearch
from recforge.pipeline.profiling.search.hill_climb import HillClimb

# ------------------------------------------------------------------------------------------------------ knob search


class Counted:
    """An evaluate() that counts its calls per knob setting."""

    def __init__(self, fn):
        self.fn, self.calls = fn, Counter()

    def __call__(self, knobs: dict) -> float:
        self.calls[knob_key(knobs)] += 1
        return self.fn(knobs)


def peak_128(knobs: dict) -> float:
    """Unimodal in log2(sub_batch), peak 1000 at 128 (small sub-batches: overhead; large: no parallelism)."""
    return 1000.0 - 100.0 * (math.log2(knobs["sub_batch"]) - 7) ** 2


def peak_128_300(knobs: dict) -> float:
    """Concave in (log2 sub_batch, gpu_threshold / 50) with an interaction term; peak 2000 at (128, 300)."""
    x, y = math.log2(knobs["sub_batch"]) - 7, (knobs["gpu_threshold"] - 300) / 50
    return 2000.0 - 30 * x * x - 20 * y * y - 10 * x * y


GPU_THRESHOLDS = (50, 100, 150, 200, 250, 300, 350, 400, 450, 500)


def test_strategies_satisfy_the_protocol():
    axes = deeprecsched_axes()
    assert isinstance(HillClimb(axes), SearchStrategy) and isinstance(GridSearch(axes), SearchStrategy)


@pytest.mark.parametrize("start", [8, 64, 1024])
def test_hill_climb_finds_the_sub_batch_peak_with_fewer_evaluations_than_grid(start):
    axes = deeprecsched_axes()  # 8 .. 1024: 8 values
    assert axes == {"sub_batch": (8, 16, 32, 64, 128, 256, 512, 1024)}
    evaluate = Counted(peak_128)
    result = HillClimb(axes, start={"sub_batch": start}).search(evaluate)
    assert result.strategy == "hill_climb" and result.best_knobs == {"sub_batch": 128} and result.best_value == 1000
    assert max(evaluate.calls.values()) == 1 and len(result.evaluations) == sum(evaluate.calls.values())
    grid = GridSearch(axes).search(Counted(peak_128))
    assert grid.best_knobs == result.best_knobs and len(grid.evaluations) == 8
    assert len(result.evaluations) < len(grid.evaluations)
    # the trajectory starts at the start, climbs strictly, ends at the optimum
    values = [t["value"] for t in result.trajectory]
    assert result.trajectory[0]["knobs"] == {"sub_batch": start}
    assert result.trajectory[-1]["knobs"] == {"sub_batch": 128}
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert "local optimum" in result.note


@pytest.mark.parametrize("start", [{"sub_batch": 8, "gpu_threshold": 50}, {"sub_batch": 1024, "gpu_threshold": 500},
                                   {"sub_batch": 8, "gpu_threshold": 500}, {}])
def test_hill_climb_two_axes_matches_grid_with_far_fewer_evaluations(start):
    axes = deeprecsched_axes(gpu_thresholds=GPU_THRESHOLDS)  # 8 x 10 = 80 configurations
    climb_eval, grid_eval = Counted(peak_128_300), Counted(peak_128_300)
    climb = HillClimb(axes, start=start).search(climb_eval)
    grid = GridSearch(axes).search(grid_eval)
    assert grid.best_knobs == {"sub_batch": 128, "gpu_threshold": 300} and grid.best_value == 2000
    assert climb.best_knobs == grid.best_knobs and climb.best_value == grid.best_value
    assert len(grid.evaluations) == 80 and len(climb.evaluations) < 40
    for counted, result in ((climb_eval, climb), (grid_eval, grid)):  # memoised: nothing evaluated twice
        assert max(counted.calls.values()) == 1
        keys = [knob_key(e["knobs"]) for e in result.evaluations]
        assert len(set(keys)) == len(keys) == sum(counted.calls.values())
    # each trajectory step moves one axis by one position
    for a, b in zip(climb.trajectory, climb.trajectory[1:], strict=False):
        moves = [abs(axes[k].index(a["knobs"][k]) - axes[k].index(b["knobs"][k])) for k in axes]
        assert sorted(moves) == [0, 1] and b["value"] > a["value"]


def test_hill_climb_stops_at_a_local_optimum_that_grid_search_sees_past():
    """Two peaks: 16 (local, 500) and 512 (global, 900); climbing from 8 stops at 16."""
    values = {8: 400, 16: 500, 32: 300, 64: 200, 128: 400, 256: 700, 512: 900, 1024: 600}
    axes = deeprecsched_axes()
    climb = HillClimb(axes, start={"sub_batch": 8}).search(lambda k: values[k["sub_batch"]])
    assert climb.best_knobs == {"sub_batch": 16} and len(climb.evaluations) == 3
    assert GridSearch(axes).search(lambda k: values[k["sub_batch"]]).best_knobs == {"sub_batch": 512}


def test_hill_climb_on_a_zero_plateau_says_so_and_fixed_knobs_reach_evaluate():
    seen = []

    def nothing_passes(knobs: dict) -> float:
        seen.append(dict(knobs))
        return 0.0

    result = HillClimb(deeprecsched_axes(), start={"sub_batch": 64}, fixed={"workers": 2}).search(nothing_passes)
    assert result.best_knobs == {"workers": 2, "sub_batch": 64} and result.best_value == 0
    assert len(seen) == 3 and all(k["workers"] == 2 for k in seen)
    assert "LBT 0" in result.note


def test_hill_climb_evaluation_budget():
    result = HillClimb(deeprecsched_axes(gpu_thresholds=GPU_THRESHOLDS), max_evaluations=5).search(peak_128_300)
    assert len(result.evaluations) == 5 and "budget" in result.note


def test_min_improvement_stops_on_small_gains():
    gains = {8: 100.0, 16: 101.0, 32: 102.0, 64: 200.0, 128: 100, 256: 50, 512: 10, 1024: 1}
    climb = HillClimb(deeprecsched_axes(), min_improvement=0.05).search(lambda k: gains[k["sub_batch"]])
    assert climb.best_knobs == {"sub_batch": 8}  # +1% is noise under a 5% threshold


@pytest.mark.parametrize(("make", "word"), [
    (lambda: HillClimb({}), "non-empty"),
    (lambda: HillClimb({"sub_batch": []}), "non-empty list"),
    (lambda: HillClimb({"sub_batch": [8, 8, 16]}), "repeated"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, start={"sub_batch": 12}), "not on its axis"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, start={"threads": 2}), "not axes"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, fixed={"sub_batch": 8}), "both fixed and searched"),
    (lambda: HillClimb({"sub_batch": [8, 16]}, max_evaluations=0), "max_evaluations"),
    (lambda: GridSearch({"sub_batch": "8,16"}), "non-empty list"),
    (lambda: deeprecsched_axes(2048), "sub-batch bounds"),
    (lambda: deeprecsched_axes(gpu_thresholds=[300, 100]), "ascending"),
    (lambda: triton_axes(0), "max_batch"),
    (lambda: triton_axes(64, queue_delays_us=[100, 0]), "queue_delays_us"),
    (lambda: strategy_from_dict({"strategy": "annealing", "axes": {"sub_batch": [8]}}), "hill_climb"),
])
def test_bad_search_settings_are_config_errors(make, word):
    with pytest.raises(ConfigError, match=word):
        make()


def test_non_finite_evaluation_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        GridSearch({"sub_batch": [8, 16]}).search(lambda k: math.nan)


def test_triton_axes_are_ordered_and_hill_climb_matches_grid_on_them():
    axes = triton_axes(64, max_instances=3)
    assert list(axes) == ["preferred_batch", "queue_delay_us", "instances"]
    assert axes["preferred_batch"] == ([64], [32, 64], [16, 32, 64], [8, 16, 32, 64], [4, 8, 16, 32, 64],
                                       [2, 4, 8, 16, 32, 64], [1, 2, 4, 8, 16, 32, 64], [])
    assert axes["queue_delay_us"] == DEFAULT_QUEUE_DELAYS_US and axes["instances"] == (1, 2, 3)
    assert triton_axes(48)["preferred_batch"][:2] == ([48], [32, 48])  # max_batch need not be a power of two

    def throughput(knobs: dict) -> float:  # peak: [16, 32, 64], 200 us, 2 instances
        p = axes["preferred_batch"].index(knobs["preferred_batch"])
        d = axes["queue_delay_us"].index(knobs["queue_delay_us"])
        return 500.0 - 10 * (p - 2) ** 2 - 8 * (d - 3) ** 2 - 30 * (knobs["instances"] - 2) ** 2

    climb = HillClimb(axes).search(throughput)
    grid = GridSearch(axes).search(throughput)
    assert climb.best_knobs == grid.best_knobs == {"preferred_batch": [16, 32, 64], "queue_delay_us": 200,
                                                   "instances": 2}
    assert len(climb.evaluations) < len(grid.evaluations) == 8 * 8 * 3


def test_strategy_from_dict():
    climb = strategy_from_dict({"axes": {"sub_batch": [8, 16, 32]}, "start": {"sub_batch": 16}})
    assert isinstance(climb, HillClimb) and climb.start == (1,)
    assert isinstance(strategy_from_dict({"strategy": "grid", "axes": {"sub_batch": [8]}}), GridSearch)
    with pytest.raises(ConfigError, match="grid"):
        strategy_from_dict({"strategy": "grid", "axes": {"sub_batch": [8]}, "start": {}})


