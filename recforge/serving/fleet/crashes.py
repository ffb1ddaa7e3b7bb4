"""What was on a node when it crashed or hung, and the quarantine of requests that crash nodes.

When the supervisor sees a node fail it records a crash: the node, the failure (``crash`` / ``hang``), when it was
detected, and the **suspects** — the requests the balancer's log shows on that node that ended on the node's side
(recforge.serving.loadbalancer.requestlog), each with its body SHA-256, path, size and accept time. One line per
crash in ``<fleet dir>/crashes.jsonl``; ``python -m recforge.serving.fleet crashes`` lists them.

A crash alone does not say which suspect killed the node (a node killed from outside has suspects too: the requests
it was serving). A body hash that was a suspect of ``quarantine_after`` different crashes is **quarantined**: added
to the balancer's quarantine list (``<fleet dir>/haproxy/quarantine.lst``, read by HAProxy at start and updated at
run time with ``add acl``), so HAProxy answers that request 422 and it never reaches a node again — a client that
re-sends a poison request on its own can kill at most ``quarantine_after`` nodes, once.
``python -m recforge.serving.fleet release <sha256>`` lifts a quarantine.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recforge.core.errors import ConfigError
from recforge.serving.loadbalancer.requestlog import RequestRecord

CRASHES_FILE = "crashes.jsonl"
QUARANTINE_FILE = "quarantine.lst"  # inside the fleet's haproxy/ folder
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def crashes_path(root: Path) -> Path:
    return root / CRASHES_FILE


def quarantine_path(root: Path) -> Path:
    return root / "haproxy" / QUARANTINE_FILE


def crash_record(node: str, failure: str, detected_at: float, suspects: Sequence[RequestRecord]) -> dict[str, Any]:
    """The JSON record of one failure of ``node`` detected at ``detected_at`` (epoch s)."""
    return {"node": node, "failure": failure, "detected_at": round(detected_at, 3),
            "suspects": [{"body_sha256": r.body_sha256, "method": r.method, "path": r.path,
                          "accepted_at": r.accepted_at, "termination": r.termination, "status": r.status,
                          "request_bytes": r.request_bytes, "unique_id": r.unique_id} for r in suspects]}


def append_crash(root: Path, record: dict[str, Any]) -> None:
    with open(crashes_path(root), "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_crashes(root: Path) -> list[dict[str, Any]]:
    """Every crash record of the fleet in ``root``, oldest first (unreadable lines are skipped)."""
    try:
        lines = crashes_path(root).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def suspect_counts(crashes: Iterable[dict[str, Any]]) -> Counter[str]:
    """How many different crashes each body hash was a suspect of."""
    counts: Counter[str] = Counter()
    for crash in crashes:
        counts.update({s["body_sha256"] for s in crash.get("suspects", []) if s.get("body_sha256")})
    return counts


def to_quarantine(crashes: Iterable[dict[str, Any]], quarantine_after: int, already: Iterable[str] = ()) -> list[str]:
    """The body hashes that were suspects of at least ``quarantine_after`` crashes and are not quarantined yet
    (``quarantine_after`` 0: never)."""
    if quarantine_after <= 0:
        return []
    done = set(already)
    return sorted(h for h, n in suspect_counts(crashes).items() if n >= quarantine_after and h not in done)


def read_quarantine(root: Path) -> list[str]:
    try:
        return [line.strip() for line in quarantine_path(root).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def write_quarantine(root: Path, hashes: Iterable[str]) -> Path:
    path = quarantine_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{h}\n" for h in sorted(set(hashes))))
    tmp.replace(path)
    return path


def check_sha256(value: str) -> str:
    if not SHA256.match(value):
        raise ConfigError(f"{value!r} is not a body SHA-256 (64 lowercase hex digits)")
    return value
