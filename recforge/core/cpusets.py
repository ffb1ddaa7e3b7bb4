"""Where a process may run: its own CPU set and, optionally, a CPU quota (the mechanism behind a Kubernetes CPU
limit) through cgroup v1, with the scheduler's affinity mask as the fallback; and a pure planner that splits the host's
CPUs between the load generator (the *apparatus*), the balancer and the serving nodes.

A :class:`CpuGroup` is one cgroup v1 child named ``recforge/<name>`` under each of the ``cpuset``, ``cpu`` and
``cpuacct`` controllers of ``$RECFORGE_CGROUP_ROOT`` (default ``/sys/fs/cgroup``): ``cpuset.cpus``/``cpuset.mems``
give the CPU set, ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` the quota, ``cpuacct.usage`` the CPU time used.
A process started with :meth:`CpuGroup.launch_prefix` joins the group before it runs (``/bin/sh`` writes its own
pid into the groups, then ``exec``\\ s the command: same pid), so every thread and child it starts is inside too;
:meth:`CpuGroup.add` moves a running process. Where the cgroup filesystem cannot be written, the group falls back to
the affinity mask (``taskset``, ``os.sched_setaffinity``): the CPU set holds, the quota is not enforced and
:attr:`CpuGroup.reason` says why.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError

CGROUP_ROOT_ENV = "RECFORGE_CGROUP_ROOT"
DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "recforge"  # every group of ours lives under <controller>/recforge/
CONTROLLERS = ("cpuset", "cpu", "cpuacct")
DEFAULT_PERIOD_US = 100_000  # the kernel's and Kubernetes' CFS period
MECHANISMS = ("auto", "cgroup", "affinity")
APPARATUS, BALANCER = "apparatus", "balancer"
GROUP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,96}$")
MAX_CPUS = 4096


def cgroup_root() -> Path:
    return Path(os.environ.get(CGROUP_ROOT_ENV, DEFAULT_CGROUP_ROOT))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The kernel's CPU list format (``"0-2,5"``) as sorted CPU ids; ConfigError when it is not one."""
    cpus: set[int] = set()
    for part in str(text).strip().split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"CPU list {text!r} is not of the form 0-2,5")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low or high >= MAX_CPUS:
            raise ConfigError(f"CPU list {text!r}: range {part} is not ascending ids below {MAX_CPUS}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Sequence[int]) -> str:
    """CPU ids in the kernel's list format: (0, 1, 2, 5) -> ``"0-2,5"``."""
    ranges: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = None
    for cpu in [*ordered, None]:
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(ranges)


def host_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity mask)."""
    return tuple(sorted(os.sched_getaffinity(0)))


@typed_config
class CpuPlacement:
    """A CPU set and an optional CPU quota: what a Kubernetes pod with a cpuset and a CPU limit gets."""

    cpus: tuple[int, ...]  # CPU ids of the set
    quota_cores: Annotated[float, Field(gt=0, le=MAX_CPUS)] | None = None  # CFS quota in cores; None: no limit
    period_us: Annotated[int, Field(ge=1000, le=1_000_000)] = DEFAULT_PERIOD_US  # CFS period

    def __post_init__(self) -> None:
        if not self.cpus:
            raise ConfigError("CpuPlacement.cpus: the CPU set is empty")
        if len(set(self.cpus)) != len(self.cpus) or any(c < 0 or c >= MAX_CPUS for c in self.cpus):
            raise ConfigError(f"CpuPlacement.cpus: distinct CPU ids in [0, {MAX_CPUS}) expected, got {self.cpus}")
        if self.quota_cores is not None and self.quota_cores > len(self.cpus):
            raise ConfigError(f"CpuPlacement.quota_cores: {self.quota_cores:g} cores exceed the {len(self.cpus)} "
                              f"CPU(s) of the set {format_cpu_list(self.cpus)}")

    @property
    def cpu_list(self) -> str:
        return format_cpu_list(self.cpus)

    @property
    def quota_us(self) -> int | None:
        return None if self.quota_cores is None else max(1000, round(self.quota_cores * self.period_us))

    def describe(self) -> str:
        quota = f", quota {self.quota_cores:g} cores" if self.quota_cores is not None else ""
        return f"CPUs {self.cpu_list}{quota}"


class CpuGroup:
    """One process group's placement: cgroup v1 ``recforge/<name>`` (mechanism ``cgroup``) or the affinity mask
    (``affinity``: where cgroups cannot be written, or asked for). ``mechanism="auto"`` tries cgroups first.

    :meth:`create` (idempotent) makes the group; :meth:`launch_prefix` starts a command inside it; :meth:`add` moves a
    running process; :meth:`usage_s` reads its CPU seconds; :meth:`remove` deletes it (its processes go back to the
    root group). The caller owns the group: stopping a process leaves its group."""

    def __init__(self, name: str, placement: CpuPlacement, *, mechanism: str = "auto", root: str | Path | None = None):
        if not isinstance(name, str) or not GROUP_NAME.match(name):
            raise ConfigError(f"CPU group name {name!r} must match {GROUP_NAME.pattern}")
        if mechanism not in MECHANISMS:
            raise ConfigError(f"CPU placement mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        if not isinstance(placement, CpuPlacement):
            raise ConfigError(f"placement must be a CpuPlacement, got {placement!r}")
        self.name, self.placement = name, placement
        self.root = Path(root) if root is not None else cgroup_root()
        self.mechanism = mechanism  # "cgroup" or "affinity" once created
        self.reason = ""  # why the affinity mask stands in for a cgroup

    def path(self, controller: str) -> Path:
        return self.root / controller / PARENT / self.name

    # -- creation ---------------------------------------------------------------------------------------------

    def create(self) -> CpuGroup:
        if self.mechanism == "affinity":
            self.reason = self.reason or "affinity asked for"
            return self
        try:
            self._create_cgroup()
            self.mechanism = "cgroup"
        except OSError as err:
            if self.mechanism == "cgroup":
                raise ConfigError(f"cgroup {PARENT}/{self.name} cannot be created under {self.root}: "
                                  f"{err.strerror or err}") from None
            self.mechanism = "affinity"
            self.reason = f"cgroup v1 under {self.root} not writable ({err.strerror or err}): affinity mask only"
            if self.placement.quota_cores is not None:
                self.reason += ", quota not enforced"
        return self

    def _create_cgroup(self) -> None:
        for controller in CONTROLLERS:
            if not (self.root / controller / "cgroup.procs").exists():
                raise FileNotFoundError(2, f"no cgroup v1 {controller} controller at {self.root / controller}")
        top = self.root / "cpuset"
        offered = set(parse_cpu_list(_read(top / "cpuset.cpus")))
        missing = sorted(set(self.placement.cpus) - offered)
        if missing:
            raise ConfigError(f"CPU group {self.name}: CPUs {format_cpu_list(missing)} are not on this host "
                              f"(cpuset {format_cpu_list(sorted(offered))})")
        parent = top / PARENT
        parent.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset is empty: the parent gets the root's
            if not (parent / knob).exists() or not _read(parent / knob):
                _write(parent / knob, _read(top / knob))
        child = self.path("cpuset")
        child.mkdir(exist_ok=True)
        _write(child / "cpuset.mems", _read(parent / "cpuset.mems"))
        _write(child / "cpuset.cpus", self.placement.cpu_list)
        for controller in ("cpu", "cpuacct"):
            (self.root / controller / PARENT).mkdir(exist_ok=True)
            self.path(controller).mkdir(exist_ok=True)
        cpu = self.path("cpu")
        _write(cpu / "cpu.cfs_quota_us", "-1")  # a lower period than the quota in force is refused: clear it first
        _write(cpu / "cpu.cfs_period_us", str(self.placement.period_us))
        _write(cpu / "cpu.cfs_quota_us", str(self.placement.quota_us or -1))

    def set_quota(self, quota_cores: float | None) -> None:
        """Change the CPU quota of the created group in place (None: no limit); its processes keep running under
        the new one from their next CFS period. A cgroup only: the affinity mask has no quota to change."""
        placement = CpuPlacement(cpus=self.placement.cpus, quota_cores=quota_cores, period_us=self.placement.period_us)
        if self.mechanism != "cgroup":
            raise ConfigError(f"CPU group {self.name}: no cgroup ({self.reason or self.mechanism}): its quota cannot "
                              "change")
        _write(self.path("cpu") / "cpu.cfs_quota_us", str(placement.quota_us or -1))
        self.placement = placement

    # -- processes --------------------------------------------------------------------------------------------

    def launch_prefix(self) -> list[str]:
        """Put before a command: the command runs in this group from its first instruction, with its own pid."""
        if self.mechanism == "cgroup":
            joins = " && ".join(f"echo $$ > {shlex.quote(str(self.path(c) / 'cgroup.procs'))}" for c in CONTROLLERS)
            return ["/bin/sh", "-c", f'{joins} && exec "$@"', f"recforge-cpuset-{self.name}"]
        if self.mechanism == "affinity":
            taskset = shutil.which("taskset")
            if taskset is None:
                raise ConfigError("taskset (util-linux) is not installed: no affinity fallback for CPU placement")
            return [taskset, "-c", self.placement.cpu_list]
        raise ConfigError(f"CPU group {self.name} is not created yet; call create() first")

    def add(self, pid: int) -> None:
        """Move the running process ``pid`` (every thread; its future children follow) into this group."""
        if self.mechanism == "cgroup":
            for controller in CONTROLLERS:
                _write(self.path(controller) / "cgroup.procs", str(pid))
        elif self.mechanism == "affinity":
            for tid in _threads(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(tid, self.placement.cpus)
        else:
            raise ConfigError(f"CPU group {self.name} is not created yet; call create() first")

    def usage_s(self) -> float | None:
        """CPU seconds used by the group's processes since it was made (None without a cgroup)."""
        if self.mechanism != "cgroup":
            return None
        try:
            return int(_read(self.path("cpuacct") / "cpuacct.usage")) / 1e9
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Move what is left in the group back to the root group and delete it. Idempotent."""
        if self.mechanism != "cgroup":
            return
        remove_group(self.name, self.root)

    # -- state ------------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """What state files record: enough for :meth:`from_state` and for a person."""
        state = {"name": self.name, "cpus": self.placement.cpu_list, "quota_cores": self.placement.quota_cores,
                 "period_us": self.placement.period_us, "mechanism": self.mechanism}
        if self.reason:
            state["reason"] = self.reason
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], root: str | Path | None = None) -> CpuGroup:
        placement = CpuPlacement(cpus=parse_cpu_list(state["cpus"]), quota_cores=state.get("quota_cores"),
                                 period_us=int(state.get("period_us") or DEFAULT_PERIOD_US))
        group = cls(state["name"], placement, mechanism=state.get("mechanism") or "auto", root=root)
        group.reason = state.get("reason") or ""
        return group

    def __repr__(self) -> str:
        return f"CpuGroup({self.name}, {self.placement.describe()}, {self.mechanism})"


def remove_group(name: str, root: str | Path | None = None) -> None:
    """Delete cgroup ``recforge/<name>`` of every controller; processes still in it move to the root group."""
    base = Path(root) if root is not None else cgroup_root()
    for controller in CONTROLLERS:
        path = base / controller / PARENT / name
        if not path.is_dir():
            continue
        with contextlib.suppress(OSError):
            for pid in _read(path / "cgroup.procs").split():
                with contextlib.suppress(OSError):  # a process that exited meanwhile
                    _write(base / controller / "cgroup.procs", pid)
        with contextlib.suppress(OSError):
            path.rmdir()


def remove_groups(prefix: str, root: str | Path | None = None) -> list[str]:
    """Delete every group of ours whose name starts with ``prefix`` (e.g. a fleet's, after it stopped)."""
    base = Path(root) if root is not None else cgroup_root()
    names = set()
    for controller in CONTROLLERS:
        with contextlib.suppress(OSError):
            names.update(p.name for p in (base / controller / PARENT).iterdir() if p.is_dir()
                         and p.name.startswith(prefix))
    for name in sorted(names):
        remove_group(name, base)
    return sorted(names)


def process_placement(pid: int | None) -> dict[str, Any] | None:
    """Where ``pid`` really runs, read from /proc: its allowed CPUs and its cpuset/cpu cgroups (None if gone)."""
    if not pid:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        membership = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    allowed = next((line.split(":", 1)[1].strip() for line in status.splitlines()
                    if line.startswith("Cpus_allowed_list:")), "")
    cgroups = {}
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] in CONTROLLERS:
            cgroups[parts[1]] = parts[2]
    return {"cpus_allowed": allowed, "cgroups": cgroups}


def restore_cgroups(pid: int, cgroups: Mapping[str, str], root: str | Path | None = None) -> None:
    """Put ``pid`` back into the cgroups ``cgroups`` (controller -> path, as :func:`process_placement` read them
    before it was moved)."""
    base = Path(root) if root is not None else cgroup_root()
    for controller, path in cgroups.items():
        if controller in CONTROLLERS:
            with contextlib.suppress(OSError):
                _write(base / controller / path.lstrip("/") / "cgroup.procs", str(pid))


@contextlib.contextmanager
def this_process_in(group: CpuGroup) -> Iterator[CpuGroup]:
    """Run the block with this process (every thread, and the children it starts meanwhile) in ``group`` (created
    if need be); afterwards the process is back in the cgroups and on the CPUs it had before. The apparatus of a
    measurement uses it to keep its load generator off the CPUs of the system it measures."""
    pid = os.getpid()
    home = (process_placement(pid) or {}).get("cgroups") or {}
    affinity = os.sched_getaffinity(0)
    group.create().add(pid)
    try:
        yield group
    finally:
        restore_cgroups(pid, home, group.root)
        for tid in _threads(pid):  # the affinity fallback set every thread's mask; cgroup moves reset it
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, affinity)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:  # one write(2) per value: what the cgroup files expect
        fh.write(value)


# ---------------------------------------------------------------------------------------------------------------
# The planner


@typed_config
class CpuPlanConfig:
    """How the host's CPUs are split: the apparatus (load generator), the balancer and each node get their own CPU
    sets; ``share`` lets the balancer and the nodes share what is left when there are too few CPUs for disjoint
    sets (the apparatus always keeps its own)."""

    nodes: Annotated[int, Field(ge=0, le=256)]
    node_cpus: Annotated[int, Field(ge=1, le=MAX_CPUS)] = 1
    apparatus_cpus: Annotated[int, Field(ge=0, le=MAX_CPUS)] = 1  # 0: the load comes from elsewhere
    balancer_cpus: Annotated[int, Field(ge=0, le=MAX_CPUS)] = 1  # 0: no balancer to place
    node_quota_cores: Annotated[float, Field(gt=0, le=MAX_CPUS)] | None = None  # CFS quota of each node
    # the quota's CFS period: a node that spends its quota waits out the rest of the period, so a short period keeps
    # that stall under a latency SLO (Kubernetes' 100 ms stalls a 0.2-core pod for up to 80 ms)
    node_period_us: Annotated[int, Field(ge=1000, le=1_000_000)] = DEFAULT_PERIOD_US
    share: bool = False
    # the balancer on the apparatus' CPUs instead of its own: where there are too few CPUs for both, the pair that
    # shares least harmfully when the nodes have CPU quotas (docs/elastic.md: on a shared CPU the balancer waits
    # behind the nodes' time slices on every request; the load generator leaves most of its CPU idle)
    balancer_with_apparatus: bool = False

    def __post_init__(self) -> None:
        if self.balancer_with_apparatus and not (self.apparatus_cpus and self.balancer_cpus):
            raise ConfigError("CpuPlanConfig.balancer_with_apparatus needs apparatus_cpus and balancer_cpus >= 1")
        if self.node_quota_cores is not None and self.node_quota_cores > self.node_cpus:
            raise ConfigError(f"CpuPlanConfig.node_quota_cores: {self.node_quota_cores:g} cores exceed the "
                              f"{self.node_cpus} CPU(s) of a node's set (node_cpus)")


@dataclass(frozen=True)
class CpuPlan:
    """Each role's placement (``apparatus``, ``balancer``, ``node0``, ...) and what shares a CPU with what."""

    placements: dict[str, CpuPlacement]
    shared: tuple[str, ...] = ()  # e.g. "CPU 1: balancer, node0, node1"

    @property
    def isolated(self) -> bool:
        return not self.shared

    def describe(self) -> str:
        roles = "; ".join(f"{role} {p.describe()}" for role, p in self.placements.items())
        return roles + (f" (shared: {'; '.join(self.shared)})" if self.shared else " (disjoint)")


def plan_cpus(cpus: Sequence[int], cfg: CpuPlanConfig) -> CpuPlan:
    """Split ``cpus`` (the host's, e.g. :func:`host_cpus`) between the roles of ``cfg``, lowest CPUs first:
    apparatus, balancer, node0, node1, ... Disjoint sets when they fit; otherwise, with ``cfg.share``, the apparatus
    keeps its own CPUs and the balancer and nodes share the rest round-robin; otherwise a one-line ConfigError that
    says what would share what."""
    host = tuple(sorted(set(cpus)))
    if cfg.balancer_with_apparatus:  # plan without a balancer, then put it on the apparatus' CPUs
        plan = plan_cpus(host, replace(cfg, balancer_cpus=0, balancer_with_apparatus=False))
        apparatus = plan.placements[APPARATUS]
        placements = {APPARATUS: apparatus, BALANCER: _placement(BALANCER, apparatus.cpus, cfg),
                      **{k: v for k, v in plan.placements.items() if k != APPARATUS}}
        together = f"CPU {format_cpu_list(apparatus.cpus)}: apparatus, balancer (balancer_with_apparatus)"
        return CpuPlan(placements, (together, *plan.shared))
    needed = cfg.apparatus_cpus + cfg.balancer_cpus + cfg.nodes * cfg.node_cpus
    roles = [(APPARATUS, cfg.apparatus_cpus), (BALANCER, cfg.balancer_cpus)]
    roles += [(f"node{i}", cfg.node_cpus) for i in range(cfg.nodes)]
    if needed <= len(host):
        placements, cursor = {}, 0
        for role, count in roles:
            if count:
                placements[role] = _placement(role, host[cursor:cursor + count], cfg)
                cursor += count
        return CpuPlan(placements)
    shared_plan = _shared_plan(host, roles, cfg)
    if not cfg.share:
        asked = f"apparatus {cfg.apparatus_cpus} + balancer {cfg.balancer_cpus} + {cfg.nodes} node(s) x {cfg.node_cpus}"
        raise ConfigError(f"cannot isolate: disjoint CPU sets need {needed} CPUs ({asked}), this host has "
                          f"{len(host)} ({format_cpu_list(host)}); with sharing allowed: {shared_plan.describe()}")
    return shared_plan


def measurement_groups(tag: str, host: Sequence[int] | None = None) -> tuple[CpuGroup, CpuGroup]:
    """(apparatus, node) CPU groups ``<tag>-client`` and ``<tag>-node`` on the planner's first two disjoint CPU sets
    of ``host`` (default: :func:`host_cpus`): a load generator and the one node it measures, never on the same cores.
    Neither is created yet. A one-line ConfigError on a host with one CPU."""
    plan = plan_cpus(host_cpus() if host is None else host, CpuPlanConfig(nodes=1, balancer_cpus=0))
    return CpuGroup(f"{tag}-client", plan.placements[APPARATUS]), CpuGroup(f"{tag}-node", plan.placements["node0"])


def _shared_plan(host: tuple[int, ...], roles: list[tuple[str, int]], cfg: CpuPlanConfig) -> CpuPlan:
    rest = host[cfg.apparatus_cpus:]
    if not rest:
        raise ConfigError(f"cannot place: the apparatus takes {cfg.apparatus_cpus} of the host's {len(host)} CPUs "
                          f"({format_cpu_list(host)}), none is left for the balancer and nodes")
    too_wide = [(role, n) for role, n in roles[1:] if n > len(rest)]
    if too_wide:
        role, count = too_wide[0]
        raise ConfigError(f"cannot place: {role} asks for {count} CPUs, only {len(rest)} are left after the "
                          f"apparatus ({format_cpu_list(rest)})")
    placements: dict[str, CpuPlacement] = {}
    if cfg.apparatus_cpus:
        placements[APPARATUS] = _placement(APPARATUS, host[:cfg.apparatus_cpus], cfg)
    cursor = 0
    for role, count in roles[1:]:
        if count:
            picked = tuple(rest[(cursor + k) % len(rest)] for k in range(count))
            placements[role] = _placement(role, picked, cfg)
            cursor = (cursor + count) % len(rest)
    users: dict[int, list[str]] = {}
    for role, placement in placements.items():
        for cpu in placement.cpus:
            users.setdefault(cpu, []).append(role)
    shared = []
    for cpu, names in sorted(users.items()):
        if len(names) > 1:
            quotas = [placements[n].quota_cores / len(placements[n].cpus) for n in names
                      if placements[n].quota_cores is not None]
            notes = [f"no quota: {', '.join(n for n in names if placements[n].quota_cores is None)}"]
            if len(quotas) == len(names):
                notes = [f"quotas add up to {sum(quotas):g} of 1 core" + (": not guaranteed" if sum(quotas) > 1
                                                                            else "")]
            shared.append(f"CPU {cpu}: {', '.join(names)} ({notes[0]})")
    return CpuPlan(placements, tuple(shared))


def _placement(role: str, cpus: tuple[int, ...], cfg: CpuPlanConfig) -> CpuPlacement:
    if role.startswith("node"):
        return CpuPlacement(cpus=cpus, quota_cores=cfg.node_quota_cores, period_us=cfg.node_period_us)
    return CpuPlacement(cpus=cpus)
