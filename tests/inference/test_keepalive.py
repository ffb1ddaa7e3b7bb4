"""recforge.inference.triton.keepalive: kept connections per thread, an idle close noticed before reuse, a failed
request never resent, Triton's error text, and the headers it keeps — against a stdlib HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest

from recforge.core.errors import ConfigError
from recforge.inference.triton.keepalive import KeepAliveClient, Reply


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        server = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.requests.append((self.client_address[1], self.path, body))
        if self.path == "/reset":  # a request that takes the server down mid-answer
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        status, payload = (400, json.dumps({"error": "bad input"}).encode()) if self.path == "/bad" else (200, body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-RecForge-Node", "node1")
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        if self.path in ("/close", "/quiet-close"):
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_one_thread_keeps_one_connection_and_gets_the_headers_it_asked_for(server):
    client = KeepAliveClient(url(server), keep_headers=("X-RecForge-Node",))
    replies = [client.post("/infer", f"r{i}".encode(), {}) for i in range(5)]
    assert [r.body for r in replies] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    assert all(r.status == 200 and r.headers == {"x-recforge-node": "node1"} for r in replies)
    assert len({port for port, _, _ in server.requests}) == 1  # one kept connection
    client.close()


def test_threads_get_their_own_connections(server):
    client = KeepAliveClient(url(server))
    threads = [threading.Thread(target=lambda: [client.post("/infer", b"x", {}) for _ in range(3)]) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.requests) == 9 and len({port for port, _, _ in server.requests}) == 3
    client.close()


def test_a_connection_the_server_closed_is_replaced_before_the_next_request(server):
    client = KeepAliveClient(url(server))
    assert client.post("/close", b"a", {}).status == 200  # the server says Connection: close
    assert client.post("/infer", b"b", {}).status == 200
    ports = [port for port, _, _ in server.requests]
    assert len(ports) == 2 and ports[0] != ports[1]
    client.close()


def test_an_idle_close_by_the_server_is_not_a_failed_request(server):
    client = KeepAliveClient(url(server))
    client.post("/quiet-close", b"a", {})  # answered as kept alive, then closed by the server (an idle timeout)
    time.sleep(0.1)
    assert client.post("/infer", b"b", {}).body == b"b"  # noticed before sending: no failure, sent once
    assert [path for _, path, _ in server.requests] == ["/quiet-close", "/infer"]
    client.close()


def test_a_request_that_fails_in_transport_raises_and_is_not_resent(server):
    client = KeepAliveClient(url(server), timeout=5.0)
    with pytest.raises((ConnectionError, OSError)):
        client.post("/reset", b"poison", {})
    assert [path for _, path, _ in server.requests] == ["/reset"]  # sent once, never retried
    assert client.post("/infer", b"next", {}).body == b"next"  # a fresh connection for the next request
    client.close()


def test_triton_error_text_and_refused_urls(server):
    reply = KeepAliveClient(url(server)).post("/bad", b"x", {})
    assert reply.status == 400 and reply.error_text() == "bad input"
    assert Reply(502, "Bad Gateway", {}, b"").error_text() == "Bad Gateway"
    assert Reply(500, "Internal", {}, b"plain text\n").error_text() == "plain text"
    with pytest.raises(ConfigError, match="http://host:port"):
        KeepAliveClient("https://example.org")
