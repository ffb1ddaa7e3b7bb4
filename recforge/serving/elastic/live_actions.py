"""What the live controller does with a decision: the control law's :class:`~recforge.serving.elastic.control.Decision`
and the nodes whose health failed mapped to actions on the running fleet, and those applied through a narrow
balancer interface.

What the live fleet can do today, and so what is applied:

- **weights** (HAProxy runtime API, through the fleet handle so state.json keeps them for the supervisor's
  restarts): the law's weights, applied when some node's share of the traffic moves by more than
  ``share_tolerance`` or a node goes to or from weight 0 (no churn for a rescaling that changes no share);
- **drain** (weight 0) of a node whose health failed; it gets its weight back from the law once it is healthy;
- never all nodes out: a drain or weight 0 that would leave no UP node with a weight is not applied.

The target node count is applied by recforge.serving.elastic.live_scaling (one node added or removed at a time).
What is decided but not in the fleet's power yet, logged as **advisory** with the reason: load shedding (the
balancer's admission checks a request's validity, not the load) and the batching mode (a node's serving knobs are
fixed when its model is loaded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from recforge.core.errors import RecForgeError, first_line
from recforge.serving.elastic.control import Decision

NO_SHEDDING = "advisory: the balancer has no load shedding (its admission checks request validity only)"
NO_BATCHING = "advisory: a node's batching knobs are fixed when its model is loaded"


@dataclass(frozen=True)
class Action:
    """One thing to do (or, ``advisory``, that would be done if the fleet could), and why."""

    kind: str  # weight, drain, scale, shed, batching
    node: str | None  # scale: the node to remove (None: add one)
    value: Any
    reason: str
    advisory: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "value": self.value, "reason": self.reason,
                "advisory": self.advisory}


class BalancerControl(Protocol):
    """What the controller changes in the balancer (the real one: the fleet handle, :class:`Fleet`)."""

    def set_weight(self, node: str, weight: int) -> None: ...


def shares(weights: Mapping[str, int | None]) -> dict[str, float]:
    """Each node's share of the traffic under ``weights`` (None counts as 0; all 0: all shares 0)."""
    total = sum(w or 0 for w in weights.values())
    return {name: (w or 0) / total if total else 0.0 for name, w in weights.items()}


def plan_actions(decision: Decision | None, *, weights_now: Mapping[str, int | None], up: Sequence[str],
                 unhealthy: Mapping[str, str], last_batching: str | None,
                 share_tolerance: float = 0.05) -> list[Action]:
    """The balancer's actions for this tick, and the advisory ones (the scale action is
    recforge.serving.elastic.live_scaling's). ``weights_now``: every node the controller manages with its weight in
    HAProxy; ``up``: the nodes HAProxy reports UP; ``unhealthy``: node -> why its health failed."""
    target = {name: w for name, w in weights_now.items()}
    reasons: dict[str, str] = {}
    for name, problem in unhealthy.items():
        if name in target and target[name] != 0:
            target[name], reasons[name] = 0, f"drain {name}: {problem}"
    if decision is not None:
        law = {name: w for name, w in decision.weights.items() if name in target and name not in unhealthy}
        before, after = shares({n: weights_now[n] for n in law}), shares(law)
        moved = any(abs(after[n] - before[n]) > share_tolerance or (law[n] == 0) != (not weights_now[n])
                    for n in law)
        if moved:
            for name, weight in law.items():
                if weight != weights_now[name]:
                    verb = "drain" if weight == 0 else "weight"
                    target[name], reasons[name] = weight, f"{verb} {name} -> {weight}: {decision.weight_reason}"
    if not any((target.get(n) or 0) > 0 for n in up) and any((weights_now.get(n) or 0) > 0 for n in up):
        # the changes would leave no UP node in rotation: keep the UP nodes as they are
        for name in up:
            if name in target:
                target[name] = weights_now[name]
                reasons.pop(name, None)
    actions = [Action("drain" if target[n] == 0 else "weight", n, target[n], reasons[n])
               for n in target if target[n] != weights_now[n] and n in reasons]
    if decision is None:
        return actions
    if decision.shed_fraction > 0:
        actions.append(Action("shed", None, round(decision.shed_fraction, 4),
                              f"{decision.shed_reason}; {NO_SHEDDING}", advisory=True))
    if last_batching is not None and decision.batching != last_batching:
        actions.append(Action("batching", None, decision.batching, f"{decision.batching_reason}; {NO_BATCHING}",
                              advisory=True))
    return actions


def apply_actions(actions: Sequence[Action], control: BalancerControl) -> list[dict[str, Any]]:
    """Apply the non-advisory weight and drain actions; each action as logged, with ``applied`` and the error where
    one failed."""
    done = []
    for action in actions:
        record = action.to_dict()
        if action.advisory:
            record["applied"] = False
        else:
            try:
                control.set_weight(action.node, int(action.value))
                record["applied"] = True
            except RecForgeError as err:
                record["applied"], record["error"] = False, first_line(err)
        done.append(record)
    return done
