"""Settings of one `make bench` (``BENCH_CONF`` / ``--config``): the typed :class:`BenchConfig`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import QuerySizes
from recforge.models.families import DEEP_FAMILIES
from recforge.models.synthetic import RMC_SPECS
from recforge.pipeline.profiling.lbt import LBTConfig

FAMILIES = DEEP_FAMILIES  # the served families (not the logreg baseline)
SYNTHETIC_MODELS = tuple(sorted(RMC_SPECS))
Threads = Annotated[int, Field(ge=1, le=64)]
Items = Annotated[int, Field(ge=1, le=1024)]


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
    # torch threads of the baseline; 0 = the faster of 1 and all cores (measured)
    baseline_threads: Annotated[int, Field(ge=0, le=64)] = 0
    load_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8  # the common offered load, a fraction of baseline LBT
    compare_duration_s: Annotated[float, Field(gt=0)] = 3.0  # seconds of arrivals of the same-load p95 comparison
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
    # production-scale models cannot meet the MovieLens models' 25 ms: an RMC2 query of 167 items gathers 640K
    # embedding rows. Their LBT is measured against this looser target.
    synthetic_p95_target_ms: Annotated[float, Field(gt=0)] = 100.0
    latency_repeats: Annotated[int, Field(ge=1)] = 10
    gemm_size: int = 2048
    array_mib: int = 128
    mlflow: bool = True

    def __post_init__(self) -> None:
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

    def lbt_config(self, start_qps: float, p95_target_ms: float | None = None) -> LBTConfig:
        start = max(0.5, float(start_qps))
        return LBTConfig(p95_target_ms=p95_target_ms or self.p95_target_ms, start_qps=start, max_qps=start * 64,
                         tolerance=self.tolerance, max_steps=self.max_steps, confirm=self.confirm)

