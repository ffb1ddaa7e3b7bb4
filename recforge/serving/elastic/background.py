"""One operation at a time in a background thread, for the live controller (:class:`OneAtATime`): a node added or
removed (recforge.serving.elastic.live_scaling) or a node's batching mode switched
(recforge.serving.elastic.live_batching) takes seconds to minutes, and the control loop keeps ticking — draining,
weighing, scaling — while it runs. The loop starts an operation, asks what is in flight, and collects what ended
(:meth:`OneAtATime.finished`) to log it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from recforge.core.errors import first_line


class OneAtATime:
    """Runs one operation at a time in a daemon thread. An operation is an entry (``operation``, ``node``,
    ``reason`` and what else its log line names) and the work that does it: ``work()`` returns what its outcome adds
    (or None); an exception is its error, reported and never raised into the loop. Every outcome has ``applied``,
    ``seconds_in_flight`` (by ``clock``) and the entry's ``reason``."""

    def __init__(self, clock: Any):
        self.clock = clock
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.current: dict[str, Any] | None = None
        self.done: list[dict[str, Any]] = []

    def start(self, entry: Mapping[str, Any], work: Callable[[], Mapping[str, Any] | None]) -> bool:
        """Start ``work`` for ``entry`` in the background; False when another operation still runs."""
        with self.lock:
            if self.current is not None:
                return False
            self.current = {**entry, "started_s": self.clock()}
        self.thread = threading.Thread(target=self.run, args=(dict(entry), work), daemon=True,
                                       name=f"recforge-{entry['operation']}")
        self.thread.start()
        return True

    def run(self, entry: dict[str, Any], work: Callable[[], Mapping[str, Any] | None]) -> None:
        said = {k: v for k, v in entry.items() if k != "reason"}
        try:
            outcome = {**said, "applied": True, **dict(work() or {})}
        except Exception as err:  # reported, never raised into the loop: the fleet serves on as it was
            outcome = {**said, "applied": False, "error": first_line(err)}
        with self.lock:
            current, self.current = self.current, None
            outcome["seconds_in_flight"] = round(self.clock() - (current or {}).get("started_s", self.clock()), 2)
            outcome["reason"] = entry.get("reason", "")
            self.ended(outcome)
            self.done.append(outcome)

    def ended(self, outcome: dict[str, Any]) -> None:
        """Called with each outcome (under the lock) before it is handed on; a subclass keeps what it needs."""

    def running(self) -> tuple[dict[str, Any], float] | None:
        """(the entry of the running operation, seconds it has run), or None when none runs."""
        with self.lock:
            current = self.current
        return None if current is None else (current, self.clock() - current["started_s"])

    def finished(self) -> list[dict[str, Any]]:
        """The operations that ended since the last call."""
        with self.lock:
            done, self.done = self.done, []
        return done

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the running operation (if any) has ended (the tests, and a controller that exits)."""
        if self.thread is not None:
            self.thread.join(timeout_s)
