"""Settings of one `make bench` (``BENCH_CONF`` / ``--config``): the typed :class:`BenchConfig`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import QuerySizes
from recforge.models.families import DEEP_FAMILIES
from recforge.models.synthetic import SYNTHETIC_NAMES
from recforge.models.synthetic_fused import FUSED_VARIANTS
from recforge.pipeline.profiling.apparatus_ceiling import cached_ceiling_qps
from recforge.pipeline.profiling.lbt import LBTConfig

FAMILIES = DEEP_FAMILIES  # the served families (not the logreg baseline)
SYNTHETIC_MODELS = SYNTHETIC_NAMES  # rmc1-3 by default; mt_wnd and dien on request
Threads = Annotated[int, Field(ge=1, le=64)]
Items = Annotated[int, Field(ge=1, le=1024)]
Fraction = Annotated[float, Field(gt=0, le=1)]


@typed_config
class BenchConfig:
    """Settings of one `make bench` (``BENCH_CONF`` / ``--config``); unknown keys are refused."""

    date: str = ""  # nightly logical date (YYYY-MM-DD); "" = the latest one with models under the work dir
    families: Annotated[tuple[Literal[FAMILIES], ...], Field(min_length=1)] = FAMILIES
    shortlist: Annotated[int, Field(ge=1)] = 2  # fastest passing variants (compress summary) profiled per family
    p95_target_ms: Annotated[float, Field(gt=0)] = 25.0  # DeepRecSys' tail-latency target
    point_duration_s: Annotated[float, Field(gt=0)] = 1.0  # seconds of Poisson arrivals per probed rate
    # LBT search starts at this fraction of the single-query capacity estimate
    start_fraction: Annotated[float, Field(gt=0, le=1)] = 0.3
    max_steps: Annotated[int, Field(ge=1)] = 7  # probed rates per LBT search
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.15  # LBT bisection stops within this relative gap
    # extra runs at each final LBT rate, baseline and RecForge alike (profile_search.confirm_lbt)
    confirm: Annotated[int, Field(ge=0, le=100)] = 2
    max_evaluations: Annotated[int, Field(ge=1)] = 3  # knob settings the hill climb may try per variant
    threads: Annotated[tuple[Threads, ...], Field(min_length=1)] = (1, 2)  # onnxruntime intra-op thread candidates
    workers: Threads = 2  # serving worker threads of RecForge
    min_sub_batch: int = 32
    max_sub_batch: int = 256
    # torch threads of the baseline; 0 = 1 and all cores both measured in the LBT rounds, the higher median LBT kept
    baseline_threads: Annotated[int, Field(ge=0, le=64)] = 0
    # interleaved rounds (baseline, RecForge, baseline, ...) after the variant is chosen; every ratio is the median
    # over them with an order-statistic interval (5 rounds: [min, max], 93.75% coverage; 6: 96.9%)
    rounds: Annotated[int, Field(ge=1, le=50)] = 5
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95  # of the rounds' intervals
    # p95 of both at these fractions of the baseline's median LBT over the rounds; load_fraction is the headline one
    # (latency_ratio): at 50% both sides are off their knees, so the ratio is the systems', not the knee's position
    load_fractions: Annotated[tuple[Fraction, ...], Field(min_length=1)] = (0.25, 0.5, 0.8)
    load_fraction: Fraction = 0.5
    # a same-load p95 run, per round and side: this many seconds of arrivals, longer where that is fewer than
    # min_load_queries queries (a p95 of a few hundred queries rests on a dozen of them)
    compare_duration_s: Annotated[float, Field(gt=0)] = 1.5
    min_load_queries: Annotated[int, Field(ge=1, le=100_000)] = 400
    round_point_duration_s: Annotated[float, Field(gt=0)] = 0.5  # per probed rate of a round's LBT search
    # a round's LBT search starts just below the side's median LBT so far (rounds.round_start_qps), ramps by this
    # factor and bisects until the bracket is within round_tolerance: one round's LBT is within that below the rate
    # its last probes saw pass, so that two runs can agree within 10% (issue 12)
    round_ramp_factor: Annotated[float, Field(gt=1, le=16)] = 1.1
    round_tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.05
    round_max_steps: Annotated[int, Field(ge=1)] = 10  # probed rates per round's LBT search
    # unloaded latency: this many queries at this fraction of the side's own LBT (queueing negligible)
    unloaded_queries: Annotated[int, Field(ge=5, le=10_000)] = 20
    unloaded_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.1
    sizes: str = "lognormal"  # items per query (recforge.inference.loadgen.QuerySizes.parse)
    seed: int = 0
    synthetic: tuple[Literal[SYNTHETIC_MODELS], ...] = ("rmc1", "rmc2", "rmc3")  # [] skips the synthetic models
    # recforge.models.synthetic.DEFAULT_TABLE_ROWS_SCALE: 2.7 GB of tables in all
    table_rows_scale: Annotated[float, Field(gt=0, le=1)] = 0.25
    zipf_alpha: Annotated[float, Field(gt=0, le=5)] = 1.05
    pooling_sigma: Annotated[float, Field(ge=0, le=3)] = 0.25
    synthetic_batches: Annotated[tuple[Items, ...], Field(min_length=1)] = (1, 16, 64, 256)
    synthetic_lbt: bool = True
    synthetic_sub_batch: Items = 64  # fixed serving knobs of the synthetic LBT runs (workers = `workers`)
    synthetic_threads: Threads = 1
    # TorchScript variants with fused embedding bags benched beside the ONNX ones (recforge.models.synthetic_fused)
    synthetic_fused: tuple[Literal[tuple(FUSED_VARIANTS)], ...] = tuple(FUSED_VARIANTS)
    # production-scale models cannot meet the MovieLens models' 25 ms: an RMC2 query of 167 items gathers 640K
    # embedding rows. Their LBT is measured against this looser target.
    synthetic_p95_target_ms: Annotated[float, Field(gt=0)] = 100.0
    latency_repeats: Annotated[int, Field(ge=1)] = 10
    gemm_size: int = 2048
    array_mib: int = 128
    mlflow: bool = True

    def __post_init__(self) -> None:
        if self.load_fraction not in self.load_fractions:
            raise ConfigError(f"BenchConfig.load_fraction {self.load_fraction} must be one of load_fractions "
                              f"{list(self.load_fractions)} (the headline p95 ratio is measured there)")
        if self.date:
            try:
                dt.date.fromisoformat(self.date)
            except ValueError:
                raise ConfigError(f"BenchConfig.date must be YYYY-MM-DD, got {self.date!r}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BenchConfig:
        return config_from_dict(cls, dict(values or {}))

    def query_sizes(self) -> QuerySizes:
        return QuerySizes.parse(self.sizes)

    def apparatus_ceiling_qps(self) -> float:
        """The in-process load generator's ceiling against a null target with the bench's most demanding load shape
        (smallest sub-batch, most workers), measured once per process (``apparatus_ceiling``)."""
        return cached_ceiling_qps(self.sizes, self.min_sub_batch, self.workers)

    def round_lbt_config(self, floor_qps: float, ceiling_qps: float | None) -> LBTConfig:
        """A round's LBT search (``round_ramp_factor``, ``round_tolerance``, ``round_max_steps``, no confirmation
        runs: the rounds are the repeats) down to ``floor_qps`` at the lowest, up to ``ceiling_qps`` (the apparatus
        ceiling, passed in: measured once by the caller)."""
        floor = max(0.5, float(floor_qps))
        return LBTConfig(p95_target_ms=self.p95_target_ms, start_qps=min(floor, ceiling_qps) if ceiling_qps else floor,
                         apparatus_ceiling_qps=ceiling_qps, ramp_factor=self.round_ramp_factor,
                         tolerance=self.round_tolerance, max_steps=self.round_max_steps, confirm=0)

    def lbt_config(self, start_qps: float, p95_target_ms: float | None = None, *, ramp_factor: float = 2.0,
                   confirm: int | None = None) -> LBTConfig:
        """An LBT search from ``start_qps`` with no cap but the apparatus ceiling (an LBT reaching it is reported
        as limited by the apparatus)."""
        ceiling = self.apparatus_ceiling_qps()
        start = min(max(0.5, float(start_qps)), ceiling)
        return LBTConfig(p95_target_ms=p95_target_ms or self.p95_target_ms, start_qps=start,
                         apparatus_ceiling_qps=ceiling, ramp_factor=ramp_factor, tolerance=self.tolerance,
                         max_steps=self.max_steps, confirm=self.confirm if confirm is None else confirm)

