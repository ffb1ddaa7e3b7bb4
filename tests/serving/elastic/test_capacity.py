"""The capacity model read from a profile: LBT at a query-size mix, latency against utilisation and its inverse,
the tail's share over a limit, and a one-line error for a profile that lacks what it needs."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.core.errors import ConfigError
from recforge.serving.elastic import traces
from recforge.serving.elastic.capacity import NodeModel, nodes_for, share_over


def test_lbt_is_the_profiles_where_its_curve_allows_and_falls_with_heavier_queries(node_model, profile_doc):
    assert node_model.lbt_qps <= profile_doc["latency_bounded_throughput_qps"]
    assert float(node_model.latency_ms(node_model.lbt_qps / node_model.saturation_qps)[0]) == pytest.approx(25.0)
    bins = traces.Trace("t", 1.0, np.ones(1), traces.SIZE_EDGES, 1.0, traces.lognormal_mix()[None, :]).bin_sizes
    same = node_model.mix_cost_ratio(bins, traces.lognormal_mix())
    heavy = node_model.mix_cost_ratio(bins, traces.lognormal_mix(mu=6.5))
    assert same == pytest.approx(1.0, abs=0.05)
    assert heavy > 1.2 and node_model.lbt_at(heavy) < node_model.lbt_at(same)


def test_latency_grows_with_utilisation_and_inverts(node_model):
    rho = np.array([0.3, 0.6, 0.85, 0.95, 0.99])
    p95, p99 = node_model.latency_ms(rho)
    assert np.all(np.diff(p95) > 0) and np.all(p99 > p95)
    np.testing.assert_allclose(node_model.rho_for_p95(p95), rho, atol=1e-6)
    assert node_model.rho_for_p95(1.0) == pytest.approx(node_model.curve_rho[0])  # below the flat part


def test_share_over_a_limit_follows_the_tail():
    assert share_over(10.0, 10.0, 20.0) == pytest.approx(0.05)
    assert share_over(20.0, 10.0, 20.0) == pytest.approx(0.01)
    assert share_over(0.0, 10.0, 20.0) == 1.0
    assert nodes_for(0.0, 100.0) == 1 and nodes_for(250.0, 100.0) == 3


def test_a_profile_without_curves_is_refused_on_one_line(profile_doc):
    del profile_doc["curve"]
    with pytest.raises(ConfigError, match="capacity model") as caught:
        NodeModel.from_profile(profile_doc)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="no LBT"):
        NodeModel.from_profile({**profile_doc, "curve": [], "latency_bounded_throughput_qps": 1.0})


def test_a_scaled_node_carries_that_share_of_the_profile_s_throughput(node_model):
    half = node_model.scaled(0.5)
    assert half.lbt_qps == pytest.approx(node_model.lbt_qps / 2)
    assert half.saturation_qps == pytest.approx(node_model.saturation_qps / 2)
    assert np.array_equal(half.curve_p95_ms, node_model.curve_p95_ms)  # latency against utilisation is kept
    with pytest.raises(ConfigError, match="capacity scale"):
        node_model.scaled(0.0)
