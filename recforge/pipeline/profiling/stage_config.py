"""What the profiling stage profiles: :class:`ProfileStageConfig` (the ``profile_variants`` DAG params) and the
stage's profiling budget on top of ``ProfileConfig``'s defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from recforge.contracts.targets import PROFILED_TARGETS
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.profile_config import ProfileConfig

DEFAULT_TARGETS = PROFILED_TARGETS  # every target this build profiles; the unavailable ones are reported, skipped
# The stage's profiling budget on top of ProfileConfig's defaults: about 15 s per (variant, target) on 2 cores,
# so that four families x (Pareto variants + fp32) x (onnxruntime + Triton) stay within ~10 min
# (1 s points and 4 knob settings took 11.6 min for the 13 variants of 1998-04-22 on a busy box).
# threads=1: with 2 workers on 2 cores a second intra-op thread only oversubscribes (measured: LBT 125 vs 350 qps
# at sub-batch 16). Sub-batches from 32: 16 was never the best on onnxruntime and gave Triton LBT 0 (too many
# HTTP requests per query), where a hill climb cannot start. start_qps 50: Triton's LBT here is ~100-200 qps.
STAGE_PROFILE_DEFAULTS: dict[str, Any] = {
    "point_duration_s": 0.75, "start_qps": 50.0, "max_steps": 7, "tolerance": 0.2, "threads": [1],
    "min_sub_batch": 32, "max_evaluations": 3, "latency_repeats": 10,
}


@typed_config
class ProfileStageConfig:
    """What the stage profiles (``profile_variants`` DAG params; :meth:`from_dict` rejects unknown keys).

    ``targets`` are target names (``recforge.contracts.targets``); an unknown or unavailable one is reported and
    skipped. ``profile`` overrides ``ProfileConfig`` fields on top of :data:`STAGE_PROFILE_DEFAULTS`. Variants of
    a ``gpu_only_precisions`` precision are only selected when a GPU target is available, and only profiled on
    GPU targets. ``traffic`` chooses the load's query sizes (docs/profiling.md, "Feedback").
    """

    targets: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)] = DEFAULT_TARGETS
    # from the Pareto front, fastest first; the fp32 reference comes on top
    max_variants_per_family: Annotated[int, Field(ge=0, le=100)] = 3
    include_reference: bool = True
    gpu_only_precisions: tuple[str, ...] = ("fp16",)
    profile: dict[str, Any] = field(default_factory=dict)  # ProfileConfig fields
    # "latest": the query sizes of the newest traffic profile the fleet recorded (served_traffic), unless it is
    # older than traffic_max_age_days or profile.sizes is given; "none": ProfileConfig's sizes
    traffic: Literal["latest", "none"] = "latest"
    traffic_max_age_days: Annotated[float, Field(gt=0, le=365)] = 7.0

    def __post_init__(self) -> None:
        if self.max_variants_per_family == 0 and not self.include_reference:
            raise ConfigError("ProfileStageConfig: max_variants_per_family 0 without include_reference selects "
                              "nothing; raise max_variants_per_family")
        self.profile_config()  # validates the overrides

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ProfileStageConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets),
                "gpu_only_precisions": list(self.gpu_only_precisions), "profile": dict(self.profile)}

    def profile_config(self, sizes: str | None = None) -> ProfileConfig:
        """The ProfileConfig of this stage; ``sizes``: the query sizes instead of the configured ones (a traffic
        profile's sample, ``served_traffic.traffic_sizes``)."""
        return ProfileConfig.from_dict({**STAGE_PROFILE_DEFAULTS, **dict(self.profile),
                                        **({"sizes": sizes} if sizes is not None else {})})


