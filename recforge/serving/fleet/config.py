"""How the local fleet is set up: the number of nodes, the balancer's port, the hardware target its nodes stand
for (a CPU target of recforge.contracts.targets), the CPU placement of its processes (opt-in), and the defaults of
``make fleet-up``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recforge.contracts.targets import DEFAULT_FLEET_TARGET, TARGETS, check_target
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.cpusets import DEFAULT_PERIOD_US, CpuPlan, CpuPlanConfig, plan_cpus
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
    # FLEET_MIN_NODES: scale-in (recforge.serving.fleet.scaling) stops here; None: at ``nodes``, what fleet up started
    min_nodes: Annotated[int, Field(ge=1, le=MAX_NODES)] | None = None
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT  # the balancer's port on 127.0.0.1 (0: any free)
    target: str = DEFAULT_TARGET  # hardware target of every node: its profile sets the weights
    startup_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 180.0
    check_inter_ms: Annotated[int, Field(ge=50, le=60_000)] = 500  # HAProxy health-check period
    # CPU placement (recforge.core.cpusets), off by default: each node its own set of node_cpus CPUs
    node_cpus: Annotated[int, Field(ge=0, le=256)] = 0  # 0: no placement, every process on every CPU
    cpu_quota: Annotated[float, Field(ge=0, le=256)] = 0.0  # CFS quota of each node in cores (0: none)
    cpu_period_us: Annotated[int, Field(ge=1000, le=1_000_000)] = DEFAULT_PERIOD_US  # the quota's CFS period
    apparatus_cpus: Annotated[int, Field(ge=0, le=256)] = 1  # with node_cpus: kept free for the load generator
    share_cpus: bool = False  # with node_cpus: balancer and nodes may share CPUs when too few for disjoint sets
    # with node_cpus: the balancer on the apparatus' CPUs, not its own (recforge.core.cpusets.CpuPlanConfig)
    balancer_with_apparatus: bool = False

    def __post_init__(self) -> None:
        if self.min_nodes is not None and self.min_nodes > self.nodes:
            raise ConfigError(f"FleetConfig.min_nodes {self.min_nodes} is above nodes={self.nodes}: start at least "
                              "the fewest nodes the fleet may have")
        if self.cpu_quota and not self.node_cpus:
            raise ConfigError("FleetConfig.cpu_quota needs node_cpus > 0 (a quota is set on a node's CPU set)")
        if self.cpu_quota > self.node_cpus:
            raise ConfigError(f"FleetConfig.cpu_quota: {self.cpu_quota:g} cores exceed node_cpus={self.node_cpus}")
        check_target(self.target, "FleetConfig.target")
        if self.target not in fleet_targets():
            raise ConfigError(f"FleetConfig.target {self.target!r} runs on {TARGETS[self.target].device}; the local "
                              f"fleet's tritonserver nodes stand for a CPU target: one of {fleet_targets()}")

    @property
    def fewest_nodes(self) -> int:
        """The fewest nodes the fleet may be scaled in to."""
        return self.min_nodes if self.min_nodes is not None else self.nodes

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FleetConfig:
        return config_from_dict(cls, dict(values or {}))

    def cpu_plan(self, host: Sequence[int]) -> CpuPlan | None:
        """Where the apparatus, the balancer and each node run on ``host``'s CPUs (None: placement off);
        ConfigError when the sets cannot be disjoint and ``share_cpus`` is off."""
        if not self.node_cpus:
            return None
        return plan_cpus(host, CpuPlanConfig(nodes=self.nodes, node_cpus=self.node_cpus,
                                             apparatus_cpus=self.apparatus_cpus,
                                             node_quota_cores=self.cpu_quota or None,
                                             node_period_us=self.cpu_period_us, share=self.share_cpus,
                                             balancer_with_apparatus=self.balancer_with_apparatus))
