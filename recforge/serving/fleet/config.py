"""How the local fleet is set up: the number of nodes, the balancer's port, the hardware target its nodes stand
for (a CPU target of recforge.contracts.targets), and the defaults of ``make fleet-up``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recforge.contracts.targets import DEFAULT_FLEET_TARGET, TARGETS, check_target
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError

DEFAULT_PORT = 8100
DEFAULT_FAMILY = "dlrm"
DEFAULT_TARGET = DEFAULT_FLEET_TARGET  # a Triton fleet serves the champion profiled through Triton
MAX_NODES = 16


def fleet_targets() -> list[str]:
    """The targets a local fleet can stand for: the CPU ones (every node is a CPU tritonserver; the champions of
    both cpu-onnxruntime and cpu-triton are ONNX files its python backend serves with onnxruntime)."""
    return sorted(name for name, kind in TARGETS.items() if kind.device == "cpu")


@typed_config
class FleetConfig:
    """How many nodes, where the balancer listens, and the hardware target the nodes stand for."""

    nodes: Annotated[int, Field(ge=1, le=MAX_NODES)] = 2  # FLEET_NODES
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT  # the balancer's port on 127.0.0.1 (0: any free)
    target: str = DEFAULT_TARGET  # hardware target of every node: its profile sets the weights
    startup_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 180.0
    check_inter_ms: Annotated[int, Field(ge=50, le=60_000)] = 500  # HAProxy health-check period

    def __post_init__(self) -> None:
        check_target(self.target, "FleetConfig.target")
        if self.target not in fleet_targets():
            raise ConfigError(f"FleetConfig.target {self.target!r} runs on {TARGETS[self.target].device}; the local "
                              f"fleet's tritonserver nodes stand for a CPU target: one of {fleet_targets()}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FleetConfig:
        return config_from_dict(cls, dict(values or {}))
