"""A rollout's state file (what every node served before, for rollback) and the history of every rollout.

``$RECFORGE_HOME/rollouts/<rollout id>.json`` is written by every step; ``history.jsonl`` beside it gets one line
per finished rollout.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.core import config
from recforge.core.errors import ConfigError

ROLLOUT_ID = re.compile(r"[A-Za-z0-9_.:+-]{1,200}")


def rollouts_dir() -> Path:
    return config.recforge_home() / "rollouts"


def state_path(rollout_id: str) -> Path:
    if not ROLLOUT_ID.fullmatch(rollout_id or ""):
        raise ConfigError(f"rollout id must be 1-200 of [A-Za-z0-9_.:+-], got {rollout_id!r}")
    return rollouts_dir() / f"{rollout_id.replace(':', '_').replace('+', '_')}.json"


def save_state(plan: Mapping[str, Any]) -> None:
    path = state_path(plan["rollout_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plan, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_state(rollout_id: str) -> dict[str, Any] | None:
    path = state_path(rollout_id)
    return json.loads(path.read_text()) if path.is_file() else None


def history_path() -> Path:
    return rollouts_dir() / "history.jsonl"


def append_history(record: Mapping[str, Any]) -> None:
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=str, sort_keys=True) + "\n")


def read_history(model: str | None = None) -> list[dict[str, Any]]:
    path = history_path()
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if model is None or r.get("model") == model]


def json_number(value: float) -> float | None:
    """``value``, or None when it is NaN or infinite: a plan goes through XCom and the history is JSON, neither
    takes NaN."""
    return value if math.isfinite(value) else None

