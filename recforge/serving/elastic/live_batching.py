"""The live controller's batching switches, run one at a time in a background thread (:class:`BatchingSwitcher`): a
switch reloads a node's model (seconds; a node that hangs meanwhile holds it until the load's timeout), and the
control loop keeps ticking — draining, weighing, scaling — while it runs. Which node to switch and to what is
recforge.serving.elastic.live_actions' (one UP node per tick whose mode differs from the law's); the switch itself
is the fleet handle's (:meth:`Fleet.set_batching`, recforge.serving.fleet.batching)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from recforge.serving.elastic.background import OneAtATime
from recforge.serving.elastic.live_actions import Action

SWITCH = "batching"  # the operation's name in the controller's log (beside the node operations add / remove)


class BatchingSwitcher(OneAtATime):
    """Runs ``switch(node, mode)`` for one batching action at a time in a background thread (:class:`OneAtATime`)."""

    def __init__(self, switch: Callable[[str, str], Mapping[str, Any] | None], clock: Any):
        super().__init__(clock)
        self.switch = switch

    def in_flight(self) -> str | None:
        """The running switch, described for the log (None when none runs)."""
        running = self.running()
        if running is None:
            return None
        current, seconds = running
        return f"batching {current['node']} -> {current['mode']} running for {seconds:.1f} s"

    def submit(self, action: Action) -> dict[str, Any]:
        """Start the switch of a (non-advisory) batching action; the action as logged, ``applied`` when it started
        (its end is logged with the batching switches), not when another switch still runs."""
        record = action.to_dict()
        node, mode = str(action.node), str(action.value)
        if self.start({"operation": SWITCH, "node": node, "mode": mode, "reason": action.reason},
                      lambda: self.switch(node, mode)):
            record["applied"] = True
        else:
            running = self.running()
            record.update(applied=False, error=f"a switch of {running[0]['node'] if running else 'a node'} is still "
                                               "running")
        return record
