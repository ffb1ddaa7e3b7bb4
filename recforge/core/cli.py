"""Shared plumbing of the stage CLIs (``python -m recforge.<package>.<module>``): one-line errors, JSON results."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from recforge.core.errors import ConfigError, RecForgeError


def json_object(text: str | None, what: str = "--config") -> dict[str, Any]:
    """Parse a JSON object given on a command line; a ConfigError naming ``what`` otherwise."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object, got {text!r}")
    return value


def run_step(step: Callable[[], Any]) -> int:
    """Run ``step``; print its result (JSON for dicts/lists) or its error on one line. Returns the exit code."""
    try:
        result = step()
    except RecForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if isinstance(result, dict | list):
        print(json.dumps(result, indent=2, default=str))
    elif result is not None:
        print(result)
    return 0
