"""The live controller's batching switches, run one at a time in a background thread (:class:`BatchingSwitcher`): a
switch reloads a node's model (seconds; a node that hangs meanwhile holds it until the load's timeout), and the
control loop keeps ticking — draining, weighing, scaling — while it runs. Which node to switch and to what is
recforge.serving.elastic.live_actions' (one UP node per tick whose mode differs from the law's); the switch itself
is the fleet handle's (:meth:`Fleet.set_batching`, recforge.serving.fleet.batching)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from recforge.core.errors import first_line
from recforge.serving.elastic.live_actions import Action

SWITCH = "batching"  # the operation's name in the controller's log (beside the node operations add / remove)


class BatchingSwitcher:
    """Runs ``switch(node, mode)`` for one batching action at a time in a background thread; :meth:`finished` hands
    the results to the control loop, which logs them. ``clock`` gives the seconds they are reported in."""

    def __init__(self, switch: Callable[[str, str], Mapping[str, Any] | None], clock: Any):
        self.switch, self.clock = switch, clock
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.current: dict[str, Any] | None = None
        self.done: list[dict[str, Any]] = []

    def in_flight(self) -> str | None:
        """The running switch, described for the log (None when none runs)."""
        with self.lock:
            current = self.current
        if current is None:
            return None
        seconds = self.clock() - current["started_s"]
        return f"batching {current['node']} -> {current['mode']} running for {seconds:.1f} s"

    def submit(self, action: Action) -> dict[str, Any]:
        """Start the switch of a (non-advisory) batching action; the action as logged, ``applied`` when it started
        (its end is logged with the node operations), not when another switch still runs."""
        record = action.to_dict()
        with self.lock:
            if self.current is not None:
                record.update(applied=False, error=f"a switch of {self.current['node']} is still running")
                return record
            self.current = {"node": action.node, "mode": action.value, "started_s": self.clock(),
                            "reason": action.reason}
        self.thread = threading.Thread(target=self.run, args=(str(action.node), str(action.value)), daemon=True,
                                       name="recforge-batching-switch")
        self.thread.start()
        record["applied"] = True
        return record

    def run(self, node: str, mode: str) -> None:
        try:
            outcome = {"operation": SWITCH, "node": node, "mode": mode, "applied": True,
                       **dict(self.switch(node, mode) or {})}
        except Exception as err:  # reported, never raised into the loop: the node serves on in its mode
            outcome = {"operation": SWITCH, "node": node, "mode": mode, "applied": False, "error": first_line(err)}
        with self.lock:
            current, self.current = self.current, None
            outcome["seconds_in_flight"] = round(self.clock() - (current or {}).get("started_s", self.clock()), 2)
            outcome["reason"] = (current or {}).get("reason", "")
            self.done.append(outcome)

    def finished(self) -> list[dict[str, Any]]:
        """The switches that ended since the last call."""
        with self.lock:
            done, self.done = self.done, []
        return done

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the running switch (if any) has ended (the tests)."""
        if self.thread is not None:
            self.thread.join(timeout_s)
