"""A stand-in for a Triton node behind a real HAProxy, for balancer tests that need no model: it reads each request's
body and answers 200 with ``{}``, so any other status a client sees came from HAProxy."""

from __future__ import annotations

import http.server


class StubNode(http.server.BaseHTTPRequestHandler):
    """200 ``{}`` to every GET and POST (serve it with ``http.server.ThreadingHTTPServer``)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = answer
