"""The live controller's scale-out and scale-in: the control law's target node count turned into one node operation
on the running fleet (:func:`plan_scale`, pure), and those operations run one at a time in a background thread
(:class:`NodeOperator`) so the control loop keeps ticking while a node starts (seconds to minutes).

The rules (docs/elastic.md, "The live controller"):

- the target is clamped to [min, max] first (the controller's and the fleet's bounds: ``FleetConfig.min_nodes``, the
  machine's CPUs);
- one node operation at a time: while one runs, nothing else is started (the law counts the starting node as
  ``FleetSignals.starting``, so it does not ask for it twice);
- scale-up fast: a node is added as soon as the law's target is above the fleet's node count, one per operation;
  the next one the tick after it is in rotation, if the target still asks for it;
- scale-down slow: the law only lowers its target after its stabilisation window (``scale_down_window_s``) and by at
  most ``scale_down_step`` per tick; the live side removes one node per operation, the one the law or the health
  checks took out of rotation first (weight 0), else the newest;
- a failed add (the fleet retried the start once and reported it) blocks further adds for ``retry_after_s``: the
  failure is logged, never waited on;
- no operation while the nodes serve different versions (a rollout owns the fleet) or a node is in a state the
  controller does not own (drained by an operator or a rollout).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from recforge.serving.elastic.background import OneAtATime
from recforge.serving.elastic.control import Decision
from recforge.serving.elastic.live_actions import Action

ADD, REMOVE = "add", "remove"


class NodeOperations(Protocol):
    """What the controller asks of the fleet (the real one: :class:`recforge.serving.fleet.Fleet`)."""

    def add_node(self) -> dict[str, Any]: ...

    def remove_node(self, name: str) -> dict[str, Any]: ...


def node_index(name: str) -> int:
    """The K of ``nodeK`` (other names sort first)."""
    match = re.fullmatch(r"node(\d+)", name)
    return int(match.group(1)) if match else -1


def removal_candidate(managed: Mapping[str, int | None], unhealthy: Sequence[str]) -> str | None:
    """The node to remove: one out of rotation (weight 0, or unhealthy) first, else the newest (highest K)."""
    if len(managed) < 2:
        return None
    out = [n for n, w in managed.items() if not w or n in unhealthy]
    pool = out or list(managed)
    return max(pool, key=lambda n: (node_index(n), n))


def plan_scale(decision: Decision | None, *, nodes_now: int, managed: Mapping[str, int | None],
               unhealthy: Sequence[str], min_nodes: int, max_nodes: int, in_flight: str | None,
               blocked: str | None) -> Action | None:
    """The scale action of this tick (None: nothing to do). ``nodes_now``: every node in state.json (starting ones
    included); ``managed``: the nodes in rotation the controller owns with their weights; ``in_flight``: the node
    operation running now (a description) or None; ``blocked``: why adds are held back now (a recent failure)."""
    if decision is None:
        return None
    bounded = min(max_nodes, max(min_nodes, decision.target_nodes))
    if bounded == nodes_now:
        return None
    bounds = f"(bounds [{min_nodes}, {max_nodes}])"
    if in_flight is not None:
        return Action("scale", None, bounded, f"{decision.scale_reason} {bounds}; waiting: {in_flight}",
                      advisory=True)
    if bounded > nodes_now:
        if blocked is not None:
            return Action("scale", None, bounded, f"{decision.scale_reason} {bounds}; not now: {blocked}",
                          advisory=True)
        return Action("scale", None, bounded, f"add a node ({nodes_now} -> {nodes_now + 1} of {bounded}): "
                                              f"{decision.scale_reason} {bounds}")
    victim = removal_candidate(managed, unhealthy)
    if victim is None or nodes_now != len(managed):  # a node it does not own is drained or starting: wait
        return Action("scale", None, bounded, f"{decision.scale_reason} {bounds}; not now: a node is not the "
                                              "controller's (drained by an operator or a rollout, or starting)",
                      advisory=True)
    return Action("scale", victim, bounded, f"remove {victim} ({nodes_now} -> {nodes_now - 1} of {bounded}): "
                                            f"{decision.scale_reason} {bounds}")


class NodeOperator(OneAtATime):
    """Runs the node operations one at a time in a background thread (:class:`OneAtATime`); a failed add holds the
    next ones back for ``retry_after_s`` (seconds of ``clock``)."""

    def __init__(self, operations: NodeOperations, clock: Any, *, retry_after_s: float = 60.0):
        super().__init__(clock)
        self.operations, self.retry_after_s = operations, retry_after_s
        self.failed_at: float | None = None
        self.last_failure = ""

    def in_flight(self) -> str | None:
        """The running operation, described for the log (None when none runs)."""
        running = self.running()
        if running is None:
            return None
        current, seconds = running
        return f"{current['operation']} {current['node'] or 'a new node'} running for {seconds:.1f} s"

    def starting(self) -> int:
        """Nodes being added now (0 or 1): the law's ``FleetSignals.starting``."""
        running = self.running()
        return int(running is not None and running[0]["operation"] == ADD)

    def blocked(self) -> str | None:
        """Why no node is added now: the last add failed less than ``retry_after_s`` ago."""
        if self.failed_at is None or self.clock() - self.failed_at >= self.retry_after_s:
            return None
        return (f"the last add failed {self.clock() - self.failed_at:.0f} s ago ({self.last_failure}); "
                f"next try after {self.retry_after_s:g} s")

    def submit(self, action: Action) -> bool:
        """Start the operation of a (non-advisory) scale action: an add when ``action.node`` is None, else the
        removal of that node. False when one is already running."""
        if action.node is None:
            return self.start({"operation": ADD, "node": None, "reason": action.reason}, self.operations.add_node)
        node = str(action.node)
        return self.start({"operation": REMOVE, "node": node, "reason": action.reason},
                          lambda: self.operations.remove_node(node))

    def ended(self, outcome: dict[str, Any]) -> None:
        if outcome["operation"] == ADD and not outcome["applied"]:
            self.failed_at, self.last_failure = self.clock(), outcome["error"]
