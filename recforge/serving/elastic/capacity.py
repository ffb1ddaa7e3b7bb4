"""The capacity model of one node, read from a profile document: latency-bounded throughput at a live query-size
mix, latency quantiles against utilisation, and the throughput-optimal batching mode's gain.

From the profile (``recforge.contracts.profile``):

- the LBT is the profile's, or lower where the curve's p95 reaches the SLO at a lower utilisation (the profile's
  LBT is an offered rate; the model's is what a node carries with p95 <= SLO).
- ``latency_vs_batch`` gives the cost of a query against its size (made non-decreasing: a larger query never
  costs less); the LBT at a mix is the profile's LBT times cost(profile mix) / cost(live mix).
- ``curve`` (offered load -> achieved, p50, p95) gives latency against utilisation rho = achieved / saturation,
  where saturation is the most the node ever achieved; only stable rows (achieved >= 97% of offered) are used,
  beyond the last stable row latency grows like the M/M/1 factor (1 - rho_last) / (1 - rho). The share of queries
  over a latency is read from a lognormal fitted to the tail (p95 and p99), not to the median: the SLO is a tail
  quantile and the measured tails are lighter than a median-to-p95 fit says.
- the throughput-optimal batching mode (Triton dynamic batching with a queue delay) pairs queries: its gain is
  2 cost(m) / cost(2m) at the mean size m, capped at ``max_batching_gain``; it adds ``batching_delay_ms``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from recforge.contracts.profile import mean_items_per_query
from recforge.core.errors import ConfigError

STABLE_ROW = 0.97  # a curve row is a steady state when it achieved this share of its offered load
RHO_CAP = 0.995  # latency is evaluated at most at this utilisation; beyond it the queue (backlog) takes over
P95_Z, P99_Z = 1.6448536269514722, 2.3263478740408408  # standard normal quantiles of 0.95 and 0.99
P99_OVER_P95 = 1.25  # the tail's spread where a curve row has no p99


@dataclass(frozen=True)
class NodeModel:
    """One node's capacity and latency, from a profile (:meth:`from_profile`)."""

    lbt_qps: float  # latency-bounded throughput at the profile's mix
    saturation_qps: float  # the most the node achieved at the profile's mix
    slo_p95_ms: float
    profile_cost: float  # mean query cost (ms) under the profile's load
    batch_sizes: np.ndarray
    batch_ms: np.ndarray  # non-decreasing
    curve_rho: np.ndarray  # increasing
    curve_p95_ms: np.ndarray  # non-decreasing
    curve_p99_ms: np.ndarray  # non-decreasing, > p95
    batching_gain: float = 1.0
    batching_delay_ms: float = 0.0

    @classmethod
    def from_profile(cls, doc: Mapping[str, Any], *, max_batching_gain: float = 1.25,
                     batching_delay_ms: float = 2.0) -> NodeModel:
        try:
            lbt = float(doc["latency_bounded_throughput_qps"])
            rows = sorted(doc["curve"], key=lambda r: r["offered_qps"])
            by_batch = sorted(doc["latency_vs_batch"], key=lambda r: r["batch"])
            slo = float(doc["p95_target_ms"])
            load = doc["load"]
        except (KeyError, TypeError) as err:
            raise ConfigError(f"profile lacks what the capacity model needs: {err!r}") from None
        if lbt <= 0 or not rows or not by_batch:
            raise ConfigError("profile has no LBT, curve or latency_vs_batch to build a capacity model from")
        saturation = max(lbt, max(float(r["achieved_qps"]) for r in rows))
        stable = [r for r in rows if r["achieved_qps"] >= STABLE_ROW * r["offered_qps"]
                  and r.get("p95_ms") is not None] or rows[:1]
        if stable[0].get("p95_ms") is None:
            raise ConfigError("profile curve has no row with a p95 to build a capacity model from")
        p95 = np.maximum.accumulate(np.array([float(r["p95_ms"]) for r in stable]))
        p99 = np.array([float(r["p99_ms"]) if r.get("p99_ms") is not None else np.nan for r in stable])
        p99 = np.maximum.accumulate(np.maximum(np.where(np.isnan(p99), p95 * P99_OVER_P95, p99), p95 * 1.01))
        rho = np.array([r["achieved_qps"] / saturation for r in stable])
        keep = np.concatenate([[True], np.diff(rho) > 1e-9])  # strictly increasing utilisation
        sizes = np.array([float(r["batch"]) for r in by_batch])
        cost_ms = np.maximum.accumulate(np.array([float(r["ms"]) for r in by_batch]))
        model = cls(lbt_qps=lbt, saturation_qps=saturation, slo_p95_ms=slo, profile_cost=1.0,
                    batch_sizes=sizes, batch_ms=cost_ms, curve_rho=rho[keep],
                    curve_p95_ms=p95[keep], curve_p99_ms=p99[keep])
        # the model's own LBT: where its p95 reaches the SLO (the profile's LBT is an offered rate, a bit above)
        lbt = min(lbt, saturation * float(model.rho_for_p95(slo)))
        profile_cost = model.profile_mix_cost(load)
        mean = mean_items_per_query(load)
        gain = min(max_batching_gain, max(1.0, 2 * model.query_cost(mean) / model.query_cost(2 * mean)))
        return cls(**{**vars(model), "lbt_qps": lbt, "profile_cost": profile_cost, "batching_gain": float(gain),
                      "batching_delay_ms": batching_delay_ms})

    def scaled(self, factor: float) -> NodeModel:
        """The same node with ``factor`` x its throughput (LBT and saturation), e.g. a node allocated ``factor`` x
        the cores the profile's node had. Latency against utilisation is kept: that is the approximation, which
        the controller's per-node corrections then measure against what the node really delivers."""
        if not factor > 0:
            raise ConfigError(f"capacity scale must be > 0, got {factor}")
        return dataclasses.replace(self, lbt_qps=self.lbt_qps * factor, saturation_qps=self.saturation_qps * factor)

    # --- cost of the query-size mix -----------------------------------------------------------------------------
    def query_cost(self, items: Any) -> Any:
        """Cost (ms, no queueing) of queries of ``items`` items, interpolated in log(batch)."""
        return np.interp(np.log(np.clip(items, 1, None)), np.log(self.batch_sizes), self.batch_ms)

    def profile_mix_cost(self, load: Mapping[str, Any]) -> float:
        """Mean query cost under the profile's load model (lognormal: over its quantiles; else at the mean)."""
        if load.get("distribution") == "lognormal":
            params = load["params"]
            quantiles = ndtri(np.linspace(0.005, 0.995, 199))
            sizes = np.clip(np.exp(params["mu"] + params["sigma"] * quantiles), 1, 1024)
            return float(np.mean(self.query_cost(sizes)))
        return float(self.query_cost(mean_items_per_query(load)))

    def mix_cost_ratio(self, bin_sizes: np.ndarray, mix: np.ndarray) -> float:
        """Cost of a query at the live mix relative to the profile's mix (> 1: heavier queries)."""
        return float(mix @ self.query_cost(bin_sizes)) / self.profile_cost

    def lbt_at(self, cost_ratio: float) -> float:
        return self.lbt_qps / cost_ratio

    def saturation_at(self, cost_ratio: float) -> float:
        return self.saturation_qps / cost_ratio

    # --- latency against utilisation ----------------------------------------------------------------------------
    def latency_ms(self, rho: Any) -> tuple[np.ndarray, np.ndarray]:
        """(p95, p99) in ms of the service (no backlog) at utilisation ``rho`` (of saturation)."""
        rho = np.clip(np.asarray(rho, dtype=float), 0.0, RHO_CAP)
        last = self.curve_rho[-1]
        growth = np.where(rho > last, (1 - last) / np.maximum(1 - rho, 1e-9), 1.0)
        p95 = np.interp(rho, self.curve_rho, self.curve_p95_ms) * growth
        p99 = np.interp(rho, self.curve_rho, self.curve_p99_ms) * growth
        return p95, p99

    def rho_for_p95(self, p95_ms: Any) -> np.ndarray:
        """The utilisation at which the profile's node shows ``p95_ms`` (the inverse of :meth:`latency_ms`;
        the curve's first rho for a p95 at or below its flat low-load part)."""
        p95 = np.asarray(p95_ms, dtype=float)
        xs, ys = self.curve_rho, self.curve_p95_ms
        keep = np.concatenate([[True], np.diff(ys) > 1e-9])
        inside = np.interp(p95, ys[keep], xs[keep])
        beyond = 1 - ys[-1] * (1 - xs[-1]) / np.maximum(p95, 1e-9)
        return np.where(p95 > ys[-1], np.minimum(beyond, RHO_CAP), inside)

    @property
    def flat_p95_ms(self) -> float:
        """The p95 of a lightly loaded node (the curve's first row): below it a p95 says nothing about load."""
        return float(self.curve_p95_ms[0])


def share_over(limit_ms: Any, p95_ms: Any, p99_ms: Any) -> Any:
    """Share of queries slower than ``limit_ms`` under the lognormal with these p95 and p99 (1 where the limit
    is not positive)."""
    sigma = np.log(np.asarray(p99_ms) / np.asarray(p95_ms)) / (P99_Z - P95_Z)
    mu = np.log(p95_ms) - P95_Z * sigma
    limit = np.asarray(limit_ms, dtype=float)
    return np.where(limit > 0, 1.0 - ndtr((np.log(np.maximum(limit, 1e-12)) - mu) / sigma), 1.0)


def nodes_for(rate_qps: float, per_node_qps: float) -> int:
    """Nodes needed to carry ``rate_qps`` at ``per_node_qps`` each (at least 1)."""
    return max(1, math.ceil(rate_qps / per_node_qps - 1e-9))
