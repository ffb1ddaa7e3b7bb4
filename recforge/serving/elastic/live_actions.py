"""What the live controller does with a decision: the control law's :class:`~recforge.serving.elastic.control.Decision`
and the nodes whose health failed mapped to actions on the running fleet, and those applied through a narrow
balancer interface.

What the live fleet can do today, and so what is applied:

- **weights** (HAProxy runtime API, through the fleet handle so state.json keeps them for the supervisor's
  restarts): the law's weights, applied when some node's share of the traffic moves by more than
  ``share_tolerance`` or a node goes to or from weight 0 (no churn for a rescaling that changes no share);
- **drain** (weight 0) of a node whose health failed; it gets its weight back from the law once it is healthy;
- never all nodes out: a drain or weight 0 that would leave no UP node with a weight is not applied;
- **batching** (through the fleet handle, in the background: recforge.serving.elastic.live_batching;
  recforge.serving.fleet.batching reloads the node's model with the mode's knob set and records the mode in
  state.json): the law's batching mode, node by node — one UP node per tick whose mode differs —; advisory, with the
  reason, where the fleet cannot switch (a model without dynamic batching, or no batching wait to remove);
- **shed** (HAProxy's runtime API, through the fleet handle: recforge.serving.loadbalancer.shedding): the law's shed
  fraction of inference requests answered 503 + Retry-After at the balancer, applied when it moves by more than
  ``shed_tolerance`` from what the balancer sheds now, or falls to 0 (stop shedding at once); advisory, with the
  reason, for a balancer whose config has no shedding.

The target node count is applied by recforge.serving.elastic.live_scaling (one node added or removed at a time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from recforge.core.errors import RecForgeError, first_line
from recforge.serving.elastic.control import Decision

NO_SHEDDING = "advisory: the balancer's config has no load shedding (generated before it: restart the fleet)"
NO_BATCHING = "advisory: the fleet cannot switch its nodes' batching knobs"


@dataclass(frozen=True)
class Action:
    """One thing to do (or, ``advisory``, that would be done if the fleet could), and why."""

    kind: str  # weight, drain, scale, shed, batching
    node: str | None  # scale: the node to remove (None: add one); batching: the node to switch (None: advisory)
    value: Any
    reason: str
    advisory: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "value": self.value, "reason": self.reason,
                "advisory": self.advisory}


class BalancerControl(Protocol):
    """What the controller changes in the balancer, and a node's batching mode (the real one: the fleet handle,
    :class:`Fleet`)."""

    def set_weight(self, node: str, weight: int) -> None: ...

    def set_shed_fraction(self, fraction: float) -> None: ...

    def set_batching(self, node: str, mode: str) -> Any: ...  # run by live_batching.BatchingSwitcher


def shares(weights: Mapping[str, int | None]) -> dict[str, float]:
    """Each node's share of the traffic under ``weights`` (None counts as 0; all 0: all shares 0)."""
    total = sum(w or 0 for w in weights.values())
    return {name: (w or 0) / total if total else 0.0 for name, w in weights.items()}


def plan_actions(decision: Decision | None, *, weights_now: Mapping[str, int | None], up: Sequence[str],
                 unhealthy: Mapping[str, str], last_batching: str | None,
                 share_tolerance: float = 0.05, batching_modes: Mapping[str, str] | None = None,
                 no_batching: str = NO_BATCHING, shed_now: float | None = None,
                 shed_tolerance: float = 0.02) -> list[Action]:
    """The balancer's actions for this tick, and the advisory ones (the scale action is
    recforge.serving.elastic.live_scaling's). ``weights_now``: every node the controller manages with its weight in
    HAProxy; ``up``: the nodes HAProxy reports UP; ``unhealthy``: node -> why its health failed;
    ``batching_modes``: the batching mode of each node the controller may switch (None: the fleet cannot, and a
    change of the law's mode is advisory with ``no_batching``); ``shed_now``: the fraction the balancer sheds now
    (None: it cannot shed; :func:`shed_action`)."""
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
    shed = shed_action(decision, shed_now, shed_tolerance)
    if shed is not None:
        actions.append(shed)
    if batching_modes is not None:  # one node per tick: the others serve on in their mode meanwhile
        behind = [n for n in up
                  if n in batching_modes and n not in unhealthy and batching_modes[n] != decision.batching]
        if behind:
            actions.append(Action("batching", behind[0], decision.batching,
                                  f"{decision.batching_reason}; {behind[0]} first of {len(behind)} node(s) to switch"))
    elif last_batching is not None and decision.batching != last_batching:
        actions.append(Action("batching", None, decision.batching, f"{decision.batching_reason}; {no_batching}",
                              advisory=True))
    return actions


def shed_action(decision: Decision, shed_now: float | None, tolerance: float) -> Action | None:
    """The shed action of a decision. Where the balancer can shed (``shed_now``: the fraction it sheds now) the
    law's fraction, to the balancer's per-mille resolution, when it differs from ``shed_now`` by more than
    ``tolerance`` (no churn for small moves) or is 0 while the balancer sheds; where it cannot (None), an advisory
    action while the law would shed."""
    if shed_now is None:
        if decision.shed_fraction <= 0:
            return None
        return Action("shed", None, round(decision.shed_fraction, 4), f"{decision.shed_reason}; {NO_SHEDDING}",
                      advisory=True)
    wanted = round(min(max(decision.shed_fraction, 0.0), 1.0), 3)
    if abs(wanted - shed_now) <= tolerance and not (wanted == 0 < shed_now):
        return None
    reason = decision.shed_reason or "stop shedding: the ready nodes carry the arrivals"
    return Action("shed", None, wanted, f"{reason} (was {shed_now:.1%})")


def apply_actions(actions: Sequence[Action], control: BalancerControl) -> list[dict[str, Any]]:
    """Apply the non-advisory weight, drain and shed actions (a batching action is run in the background:
    recforge.serving.elastic.live_batching); each action as logged, with ``applied`` and the error where one failed."""
    done = []
    for action in actions:
        record = action.to_dict()
        if action.advisory:
            record["applied"] = False
        else:
            try:
                if action.kind == "shed":
                    control.set_shed_fraction(float(action.value))
                else:
                    control.set_weight(action.node, int(action.value))
                record["applied"] = True
            except RecForgeError as err:
                record["applied"], record["error"] = False, first_line(err)
        done.append(record)
    return done
