"""Polling in tests that watch real processes: wait until a condition holds, or fail naming what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(predicate: Callable[[], Any], what: str, timeout_s: float, detail: Callable[[], str] | None = None,
         every_s: float = 0.2) -> Any:
    """The first truthy value of ``predicate()``, asked every ``every_s``; AssertionError naming ``what`` (and
    ``detail()``, e.g. a log's tail) when none comes within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"{what} not within {timeout_s:g} s" + (f"; {detail()}" if detail else ""))
