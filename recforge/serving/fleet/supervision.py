"""What the fleet's supervisor decides for one node, from what it observes: the restart policy (crash or hang
detection, exponential backoff, the crash-loop limit) as a small pure class with an injected clock value, so the
unit tests drive it with fake times and fake observations. The process, HTTP and HAProxy actions live in
:mod:`recforge.serving.fleet.supervisor`."""

from __future__ import annotations

import dataclasses
from collections import deque

from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError


@typed_config
class SupervisorConfig:
    """How the supervisor watches and restarts the fleet's nodes."""

    interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # one look at every node per interval
    unhealthy_after: Annotated[int, Field(ge=1, le=1000)] = 3  # failed /v2/health/ready in a row = a hung node
    health_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0  # one health check's HTTP timeout (a busy node passes)
    backoff_initial_s: Annotated[float, Field(ge=0, le=3600)] = 1.0  # wait before the 2nd restart in the window
    backoff_factor: Annotated[float, Field(ge=1, le=10)] = 2.0  # each further restart waits this much longer
    backoff_max_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    max_restarts: Annotated[int, Field(ge=1, le=1000)] = 3  # restarts within restart_window_s before giving up
    restart_window_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    ready_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 180.0  # a restarted node must be ready by then
    # a node failing its health checks while its processes keep using CPU is busy, not hung: counted healthy this
    # long at most (0: every failed check counts); "using CPU" = at least busy_cpu_fraction CPU-s per wall second
    busy_grace_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    busy_cpu_fraction: Annotated[float, Field(gt=0, le=256)] = 0.05
    # crash records (recforge.serving.fleet.crashes): requests accepted this long before a failure are suspects
    suspect_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # a request body that was a suspect of this many crashes is answered 422 by the balancer from then on (0: never)
    quarantine_after: Annotated[int, Field(ge=0, le=100)] = 2

    def __post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(f"SupervisorConfig.backoff_max_s ({self.backoff_max_s:g}) is below backoff_initial_s "
                              f"({self.backoff_initial_s:g})")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do for a node after one observation: take it out of rotation, restart it, raise the crash-loop
    alarm (after which the node is left alone), or nothing. ``reason`` says why, for the log."""

    take_out: bool = False
    restart: bool = False
    alarm: bool = False
    reason: str = ""


NOTHING = Decision()


class RestartPolicy:
    """The restart decisions for one node. Call :meth:`observe` once per look (``now`` from a monotonic clock),
    then :meth:`restarted` or :meth:`restart_failed` after acting on a ``restart`` decision.

    A node is failed when its process is gone (a crash) or its health check failed ``unhealthy_after`` times in a
    row (a hang). The first restart of a window is immediate; the n-th waits ``backoff_initial_s *
    backoff_factor**(n-2)`` (at most ``backoff_max_s``). When ``max_restarts`` restarts happened within
    ``restart_window_s`` and the node fails again, the policy raises the alarm once and restarts it no more."""

    def __init__(self, cfg: SupervisorConfig):
        self.cfg = cfg
        self.failed_checks = 0
        self.down_since: float | None = None  # when the failure was detected (recovery time starts here)
        self.failure: str | None = None  # "crash" or "hang"
        self.next_attempt_at: float | None = None
        self.restart_times: deque[float] = deque()
        self.given_up = False

    def recent_restarts(self, now: float) -> int:
        while self.restart_times and now - self.restart_times[0] > self.cfg.restart_window_s:
            self.restart_times.popleft()
        return len(self.restart_times)

    def backoff_s(self, restarts_so_far: int) -> float:
        """Wait before the next restart after ``restarts_so_far`` restarts in the window (0: none)."""
        if restarts_so_far == 0:
            return 0.0
        delay = self.cfg.backoff_initial_s * self.cfg.backoff_factor ** (restarts_so_far - 1)
        return min(self.cfg.backoff_max_s, delay)

    def observe(self, now: float, *, alive: bool, healthy: bool) -> Decision:
        """The decision after seeing the node's process ``alive`` (or gone) and its health check ``healthy``."""
        if self.given_up:
            return NOTHING
        if self.down_since is None:
            if alive and healthy:
                self.failed_checks = 0
                return NOTHING
            if alive:
                self.failed_checks += 1
                if self.failed_checks < self.cfg.unhealthy_after:
                    return NOTHING
            self.failure = "crash" if not alive else "hang"
            self.down_since = now
            self.next_attempt_at = now + self.backoff_s(self.recent_restarts(now))
            detected = ("process exited" if not alive
                        else f"health check failed {self.failed_checks} times in a row")
            decision = self.attempt(now)
            return dataclasses.replace(decision, take_out=True, reason=f"{detected}; {decision.reason}")
        return self.attempt(now)

    def attempt(self, now: float) -> Decision:
        """While the node is down: restart when its backoff has passed, or give up after too many restarts."""
        assert self.next_attempt_at is not None
        if self.recent_restarts(now) >= self.cfg.max_restarts:
            self.given_up = True
            return Decision(alarm=True, reason=f"{len(self.restart_times)} restarts within "
                                               f"{self.cfg.restart_window_s:g} s: crash loop, not restarting")
        if now < self.next_attempt_at:
            return Decision(reason=f"backoff until +{self.next_attempt_at - now:.1f} s")
        self.restart_times.append(now)
        return Decision(restart=True, reason=f"restart {len(self.restart_times)} of {self.cfg.max_restarts} "
                                             f"in the window ({self.failure})")

    def restarted(self, now: float) -> float:
        """The restarted node is back in rotation; returns its recovery seconds (failure detected -> back)."""
        assert self.down_since is not None
        recovery = now - self.down_since
        self.down_since = self.failure = self.next_attempt_at = None
        self.failed_checks = 0
        return recovery

    def restart_failed(self, now: float) -> None:
        """The restart did not bring the node back: try again after the backoff."""
        self.next_attempt_at = now + self.backoff_s(self.recent_restarts(now))


class BusyWatch:
    """Tells a busy node from a hung one. A node under a load it cannot keep up with answers its health check late
    and would look hung; a hung one (stopped, deadlocked, waiting forever) uses no CPU. So a failed check counts as
    busy, not failed, while the node's processes used at least ``busy_cpu_fraction`` CPU-seconds per wall second
    since the last look and are not stopped (SIGSTOP, a debugger), for at most ``busy_grace_s`` in a row (a node
    spinning without answering is restarted after that). Pure: times and CPU seconds are given by the caller."""

    def __init__(self, cfg: SupervisorConfig):
        self.cfg = cfg
        self.last: dict[str, tuple[float, float]] = {}  # unit -> (when, CPU seconds) of the last look
        self.since: dict[str, float] = {}  # unit -> when its current busy stretch began

    def busy(self, unit: str, now: float, cpu_s: float | None, *, stopped: bool, healthy: bool) -> bool:
        """True when this failed health check should count as passed: the node is busy, not hung."""
        last = self.last.get(unit)
        if cpu_s is None:
            self.last.pop(unit, None)
        else:
            self.last[unit] = (now, cpu_s)
        if healthy or stopped or cpu_s is None or last is None or not self.cfg.busy_grace_s:
            self.since.pop(unit, None)
            return False
        wall = now - last[0]
        if wall <= 0 or cpu_s - last[1] < self.cfg.busy_cpu_fraction * wall:
            self.since.pop(unit, None)
            return False
        return now - self.since.setdefault(unit, now) < self.cfg.busy_grace_s
