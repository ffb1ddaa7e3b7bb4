"""What a release manager chooses for a rollout (the ``rollout`` DAG's Params), and the error of a failed step."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from recforge.contracts.targets import CPU_TRITON, check_target
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import RecForgeError
from recforge.inference.loadgen import QuerySizes


class RolloutFailed(RecForgeError):
    """A rollout step failed (model did not load, smoke test or gate failed); the fleet is rolled back."""


@typed_config
class RolloutConfig:
    """What a release manager chooses (the rollout DAG's Params)."""

    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]  # a registered model name
    target: str = CPU_TRITON  # the fleet's target (recforge.contracts.targets)
    version: str = ""  # a version number or an alias; empty: champion-<target>
    canary_weight_pct: Annotated[int, Field(ge=1, le=50)] = 10
    canary_duration_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    p95_slo_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0  # 0: the p95 target of the version's profile
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.001
    load_qps: Annotated[float, Field(ge=0, le=1e6)] = 0.0  # 0: load_fraction x the fleet's profiled capacity
    # of the profiled capacity x the hosts of the fleet (local nodes share one host)
    load_fraction: Annotated[float, Field(ge=0.01, le=1)] = 0.25
    # the canary's queries may be this much slower than the others' (see recforge.serving.rollout.gate)
    max_p95_regression: Annotated[float, Field(ge=0, le=10)] = 0.2
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes syntax
    smoke_rows: Annotated[int, Field(ge=1, le=1024)] = 16
    smoke_atol: Annotated[float, Field(ge=0, le=1)] = 1e-4
    drain_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    load_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_target(self.target, "RolloutConfig.target")
        QuerySizes.parse(self.sizes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RolloutConfig:
        return config_from_dict(cls, dict(d or {}))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RolloutConfig:
        """From the rollout DAG's Params (their names are this class's fields); a ``config`` Param, when
        present, holds the other fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in params.items() if k in fields}
        return cls.from_dict(d | dict(params.get("config") or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def reference(self) -> str:
        return self.version or f"champion-{self.target}"
