"""The settings of one profiling run (``profile:`` section of a run config): :class:`ProfileConfig`, and the
:class:`recforge.pipeline.profiling.lbt.LBTConfig` of its LBT searches, bounded by the apparatus' measured ceiling
(``apparatus_ceiling``) rather than by a fixed cap."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import MAX_ITEMS, MAX_RATE_QPS, QuerySizes
from recforge.pipeline.profiling.apparatus_ceiling import cached_ceiling_qps
from recforge.pipeline.profiling.lbt import FiniteRate, LBTConfig
from recforge.pipeline.profiling.search.axes import deeprecsched_axes, triton_axes

SubBatch = Annotated[int, Field(ge=1, le=MAX_ITEMS)]


@typed_config
class ProfileConfig:
    """Settings of one profiling run (``profile:`` section of a run config); :meth:`from_dict` rejects unknown
    keys and wrong types."""

    p95_target_ms: FiniteRate = 25.0
    point_duration_s: Annotated[float, Field(gt=0, le=3600)] = 2.0  # one open-loop run per probed rate
    start_qps: FiniteRate = 20.0
    # No cap on the measured axis: the LBT search ramps up until the SLO fails, bounded by the apparatus' ceiling
    # (None: measured once per process against a null target, apparatus_ceiling.cached_ceiling_qps); an LBT that
    # reaches it is reported as limited by the apparatus. max_qps: an explicit extra bound (None: none).
    max_qps: FiniteRate | None = None
    apparatus_ceiling_qps: FiniteRate | None = None
    # the LBT ramp's step (rate x this): 4 reaches a few thousand qps from 50 in 4 probes and leaves the step budget
    # for the bisection (doubling spent the stage's 7 probes before it got there)
    ramp_factor: Annotated[float, Field(gt=1, le=16)] = 4.0
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.1
    max_steps: Annotated[int, Field(ge=1)] = 10  # probed rates per knob setting
    repeats: Annotated[int, Field(ge=1)] = 1  # load runs per probed rate
    confirm: Annotated[int, Field(ge=0, le=100)] = 2  # extra load runs at the best setting's LBT rate (confirm_lbt)
    max_error_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    min_achieved_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes.parse syntax
    min_sub_batch: SubBatch = 16
    max_sub_batch: SubBatch = 1024
    # intra-op thread candidates (CPU targets): a search axis when > 1 value
    threads: Annotated[tuple[Annotated[int, Field(ge=1, le=64)], ...], Field(min_length=1)] = (1, 2)
    workers: Annotated[int, Field(ge=1, le=256)] = 2
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    max_evaluations: Annotated[int, Field(ge=1, le=10_000)] = 12  # knob settings the hill climb may evaluate
    latency_batches: Annotated[tuple[SubBatch, ...], Field(min_length=1)] = (1, 16, 64, 256, 1024)
    latency_repeats: Annotated[int, Field(ge=1, le=10_000)] = 20
    # cpu-triton only: the search.axes.triton_axes searched next to sub_batch, and the load generator's
    # concurrent HTTP requests (Triton's own queue and instances schedule them; more in flight lets it batch)
    triton_queue_delays_us: tuple[int, ...] = (0, 100, 500, 2000)
    triton_max_instances: Annotated[int, Field(ge=1, le=64)] = 2
    triton_workers: Annotated[int, Field(ge=1, le=256)] = 4
    # hybrid targets only: DeepRecSched's GPU offload thresholds (items, ascending; the climb starts from the last,
    # where nothing is offloaded); () = from the query sizes (search_space.offload_thresholds); the threads
    # feeding the GPU
    gpu_thresholds: tuple[Annotated[int, Field(ge=0, le=MAX_ITEMS)], ...] = ()
    gpu_workers: Annotated[int, Field(ge=1, le=64)] = 1

    def __post_init__(self) -> None:
        self.lbt_config(measure_ceiling=False)  # start_qps <= max_qps
        deeprecsched_axes(self.max_sub_batch, min_sub_batch=self.min_sub_batch)  # min <= max, a power of two
        if len(set(self.threads)) != len(self.threads):
            raise ConfigError(f"ProfileConfig.threads must be distinct, got {self.threads}")
        self.query_sizes()  # validates sizes
        triton_axes(self.max_sub_batch, max_instances=self.triton_max_instances,
                    queue_delays_us=self.triton_queue_delays_us)  # ascending, distinct, >= 0
        if self.gpu_thresholds:
            deeprecsched_axes(gpu_thresholds=self.gpu_thresholds)  # ascending, distinct

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ProfileConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apparatus_ceiling(self) -> float:
        """The apparatus' ceiling (qps): ``apparatus_ceiling_qps`` when given, else the load generator's against a
        null target with this load shape (the smallest sub-batch: the most sub-batches per query), measured once
        per process."""
        if self.apparatus_ceiling_qps is not None:
            return self.apparatus_ceiling_qps
        return min(MAX_RATE_QPS, cached_ceiling_qps(self.sizes, self.min_sub_batch, self.workers))

    def lbt_config(self, *, measure_ceiling: bool = True) -> LBTConfig:
        """The LBT search settings; bounded by :meth:`apparatus_ceiling` (measured when not given, unless
        ``measure_ceiling`` is False: then only a given ceiling bounds it)."""
        ceiling = self.apparatus_ceiling() if measure_ceiling else self.apparatus_ceiling_qps
        return LBTConfig(p95_target_ms=self.p95_target_ms, start_qps=self.start_qps, max_qps=self.max_qps,
                         apparatus_ceiling_qps=ceiling, ramp_factor=self.ramp_factor,
                         max_error_rate=self.max_error_rate, min_achieved_ratio=self.min_achieved_ratio,
                         tolerance=self.tolerance, max_steps=self.max_steps, repeats=self.repeats)

    def query_sizes(self) -> QuerySizes:
        return QuerySizes.parse(self.sizes)
