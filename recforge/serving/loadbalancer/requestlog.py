"""The balancer's request log: one line per request in a fixed format (:data:`LOG_FORMAT`) that names the node that
got it, how the exchange ended (HAProxy's termination state) and the SHA-256 of the request body, and its parser.

The fleet's supervisor reads it when a node dies or hangs: the requests that were on that node when it failed
(termination state starting with ``S``/``s``: the server aborted, reset or timed out; ``K``: the session was
killed because the node was marked down) are the suspects of the crash, recorded with their hash so an operator can
find the request that killed a node (``recforge.serving.fleet.crashes``). The body hash is what a client computes
with ``sha256sum`` on the body it sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LOG_TAG = "recforge-request"
# %Ts.%ms accept time (epoch s, ms); %ID unique id; %s server; %ST status; %ts termination state (2 chars); %Ta total
# active ms; %U request bytes; %HM method; %HPO path without the query string; body sha256 (or "-": not hashed).
LOG_FORMAT = (f"{LOG_TAG} %Ts.%ms %ID %s %ST %ts %Ta %U %HM %HPO %[var(txn.body_sha256)]")
UNIQUE_ID_FORMAT = "%{+X}o%ci%cp%Ts%rt%pid"
BODY_HASH_VAR = "txn.body_sha256"
LINE = re.compile(rf"{LOG_TAG} (?P<accepted>\d+)\.(?P<ms>\d+) (?P<id>\S+) (?P<node>\S+) (?P<status>-?\d+) "
                  r"(?P<termination>\S{2}) (?P<total_ms>-?\d+) (?P<bytes>\d+) (?P<method>\S+) (?P<path>\S+) "
                  r"(?P<sha256>[0-9a-f]{64}|-)\s*$")
SERVER_SIDE = ("S", "s", "K")  # the node aborted, reset or timed out; or the session was killed when it went down
NO_SERVER = "<NOSRV>"  # the node field of a request HAProxy answered itself


@dataclass(frozen=True)
class RequestRecord:
    """One request as the balancer logged it."""

    accepted_at: float  # epoch seconds
    unique_id: str
    node: str  # NO_SERVER when HAProxy answered itself (admission, 403, shedding)
    status: int  # -1 when no answer was sent
    termination: str  # HAProxy's two-letter termination state, "--" for a normal end
    total_ms: int
    request_bytes: int
    method: str
    path: str
    body_sha256: str | None

    @property
    def ended_on_server_side(self) -> bool:
        """The exchange ended because of the node (it aborted, reset, timed out) or its session was killed."""
        return self.termination[0] in SERVER_SIDE

    @property
    def shed(self) -> bool:
        """The balancer shed the request under overload (recforge.serving.loadbalancer.shedding): a 503 HAProxy
        answered itself, locally (termination ``L.``); its own 503s for no server or a queue timeout end ``SC`` or
        ``sQ``."""
        return self.status == 503 and self.node == NO_SERVER and self.termination[0] == "L"

    def to_dict(self) -> dict[str, object]:
        return {"accepted_at": self.accepted_at, "unique_id": self.unique_id, "node": self.node,
                "status": self.status, "termination": self.termination, "total_ms": self.total_ms,
                "request_bytes": self.request_bytes, "method": self.method, "path": self.path,
                "body_sha256": self.body_sha256}


def parse_line(line: str) -> RequestRecord | None:
    """The record of one log line, or None for a line of another kind (HAProxy's own messages)."""
    match = LINE.search(line)
    if match is None:
        return None
    g = match.groupdict()
    return RequestRecord(accepted_at=int(g["accepted"]) + int(g["ms"]) / 1000, unique_id=g["id"], node=g["node"],
                         status=int(g["status"]), termination=g["termination"], total_ms=int(g["total_ms"]),
                         request_bytes=int(g["bytes"]), method=g["method"], path=g["path"],
                         body_sha256=None if g["sha256"] == "-" else g["sha256"])


def parse_lines(lines: Iterable[str]) -> Iterator[RequestRecord]:
    for line in lines:
        record = parse_line(line)
        if record is not None:
            yield record


def failed_on(records: Iterable[RequestRecord], node: str, since: float, until: float) -> list[RequestRecord]:
    """The requests that were on ``node`` when it failed: accepted in [since, until] (epoch s) and ended by the
    node's side (:attr:`RequestRecord.ended_on_server_side`)."""
    return [r for r in records
            if r.node == node and r.ended_on_server_side and since <= r.accepted_at <= until]


class LogTail:
    """Reads what was appended to a log file since the last call (from its start, or with ``from_end`` from its end
    when first opened), keeping only the requests that ended on a node's side; survives the file being truncated
    or replaced."""

    def __init__(self, path: str, keep: int = 10_000, from_end: bool = False):
        self.path = path
        self.keep = keep
        self.from_end = from_end
        self.offset: int | None = None
        self.inode: int | None = None
        self.failures: list[RequestRecord] = []

    def poll(self) -> list[RequestRecord]:
        """New server-side failures since the last poll (also kept in :attr:`failures`, the last ``keep``)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self.offset is None or stat.st_ino != self.inode or stat.st_size < self.offset:
            start_at_end = self.offset is None and self.from_end
            self.inode, self.offset = stat.st_ino, stat.st_size if start_at_end else 0
            if start_at_end:
                return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete = data.rfind(b"\n") + 1  # a line being written stays for the next poll
        self.offset += complete
        new = [r for r in parse_lines(data[:complete].decode(errors="replace").splitlines())
               if r.ended_on_server_side]
        self.failures = (self.failures + new)[-self.keep:]
        return new
