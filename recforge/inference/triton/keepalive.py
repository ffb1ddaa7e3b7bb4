"""A lean HTTP/1.1 client for the load generator's hot path: one keep-alive ``http.client`` connection per thread,
no retries, no proxies, no cookie or redirect handling.

Why not ``requests``: the apparatus must cost far less than the system it measures (issue 12: its ceiling >= 5x the
rates it drives). Against a null target on one CPU, a ``requests`` session spends ~0.45 ms of CPU per inference
request (adapters, cookie jar, header merging, urllib3's pool); ``http.client`` on a kept connection spends a fraction
of that (``make bench-apparatus`` reports the ceiling). The behaviour the load generator relies on stays: a request
is sent once (a failure is a failed request, never retried onto another connection), and a connection the server
closed while idle is noticed before it is reused, so that an idle close is not counted as a failed request.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from recforge.core.errors import ConfigError


@dataclass(frozen=True)
class Reply:
    """An answered request: status, the headers the caller asked for, the body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def error_text(self) -> str:
        """Triton's error message of a refused request (its JSON ``error``, else the body or the reason)."""
        try:
            parsed = json.loads(self.body)
            if isinstance(parsed, dict) and "error" in parsed:
                return str(parsed["error"])
        except ValueError:
            pass
        return self.body.decode("utf-8", "replace").strip()[:500] or self.reason


class KeepAliveClient:
    """POSTs to one ``http://host:port`` origin from many threads, each on its own kept connection.

    ``keep_headers`` names the response headers :meth:`post` returns (lower case); the others are not copied."""

    def __init__(self, url: str, *, timeout: float = 30.0, keep_headers: tuple[str, ...] = ()):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"KeepAliveClient: an http://host:port URL is needed, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.keep_headers = tuple(h.lower() for h in keep_headers)
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # an idle close by the server: reconnect before sending, nothing was sent on it
        if conn is None:
            if self._closed:
                raise ConfigError("KeepAliveClient is closed")
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        """Send one POST and read the whole answer. Any transport error propagates (the request failed) and the
        thread's connection is closed, so the next request starts on a fresh one."""
        conn = self._connection()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()  # http.client opens a new connection on the next request
            raise
        kept = {name: value for name in self.keep_headers if (value := response.getheader(name)) is not None}
        if response.will_close:
            conn.close()
        return Reply(response.status, response.reason, kept, data)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _closed_by_peer(sock) -> bool:
    """A kept connection is readable while idle only when the peer closed it (or sent something unasked)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
