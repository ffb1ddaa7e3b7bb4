"""The search check's statistics, without a server: the picks' LBT ratio is taken within each interleaved round
(the two searches of a round ran back to back) and summarized as the median with its order-statistic interval."""

from __future__ import annotations

import pytest

from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search_check import SearchCheckConfig, paired_ratio


def test_the_ratio_is_the_median_of_the_rounds_own_ratios_not_the_ratio_of_medians():
    # stop 23's CI rounds: the medians' ratio is 1575 / 1700 = 0.926, but round by round the race's pick served
    # 0.97, 0.78, 0.97, 1.00 and 1.09 of the grid's: a slow round weighs on both picks of that round alike
    grid = [1575.0, 1950.0, 1900.0, 1575.0, 1700.0]
    race = [1525.0, 1525.0, 1850.0, 1575.0, 1850.0]
    ratio = paired_ratio(grid, race, same=False)
    assert ratio.median == pytest.approx(1850 / 1900)
    assert (ratio.low, ratio.high) == (pytest.approx(1525 / 1950), pytest.approx(1850 / 1700))
    assert ratio.n == 5 and ratio.coverage == pytest.approx(1 - 2 / 32)


def test_a_race_pick_that_is_slower_in_most_rounds_fails_the_bound():
    grid = [2000.0, 1800.0, 2100.0, 1900.0, 2000.0, 1950.0, 1850.0]
    race = [1800.0, 1700.0, 2150.0, 1700.0, 1800.0, 1750.0, 1700.0]
    assert paired_ratio(grid, race, same=False).median < 0.95


def test_the_same_pick_is_ratio_one_and_a_dead_grid_round_counts_for_the_race():
    assert paired_ratio([1500.0, 1700.0], [1500.0, 1700.0], same=True).median == 1.0
    assert paired_ratio([0.0, 1000.0, 1000.0], [500.0, 1000.0, 900.0], same=False).median == 1.0


def test_the_config_refuses_unknown_keys_and_a_bad_remeasure_duration():
    assert config_from_dict(SearchCheckConfig, {"rounds": 9}).rounds == 9
    with pytest.raises(ConfigError):
        config_from_dict(SearchCheckConfig, {"remeasure_duration_s": 0})
    with pytest.raises(ConfigError):
        config_from_dict(SearchCheckConfig, {"round": 9})
