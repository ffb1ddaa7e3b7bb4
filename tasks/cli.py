"""Shared plumbing of the stage CLIs (``python -m tasks.<stage>``): one-line errors, JSON results."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from tasks.errors import RecForgeError


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
