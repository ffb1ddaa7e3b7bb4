"""The load generator's target for a model served by Triton: one HTTP inference request per sub-batch."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from recforge.contracts.features import OUTPUT_NAME
from recforge.contracts.headers import NODE_HEADER
from recforge.core.errors import ConfigError, first_line
from recforge.inference.loadgen import MAX_ITEMS, check_int, load_spec
from recforge.inference.triton.client import encode_request
from recforge.inference.triton.errors import TritonError
from recforge.inference.triton.keepalive import KeepAliveClient
from recforge.models.export import example_inputs

BODY_CACHE_SIZES = 64  # request bodies kept per load target (sub-batch sizes repeat; memory stays bounded)


class TritonHttpTarget:
    """``recforge.inference.loadgen`` target: a sub-batch of n items is one HTTP inference request to ``model``.

    The inputs of ``max_batch`` rows are built once (``recforge.models.export.example_inputs``), and the request
    bodies of the first 64 sub-batch sizes seen are built once and reused. Each sending thread keeps its own
    connection (:class:`recforge.inference.triton.keepalive.KeepAliveClient`: the apparatus' CPU per request
    stays small); ``pool`` is kept for callers and bounds nothing. A non-200 answer raises, which the load
    generator counts as a failed query. The constructor sends one request of ``max_batch`` and one of 1 item (a
    check that the model serves inputs of this spec). ``infer`` returns the fleet node that answered (HAProxy's
    ``X-RecForge-Node`` header; None straight from a server), which the load generator records per query; with
    ``record``, ``requests`` also collects (node, ms) of every answered request."""

    def __init__(self, url: str, model: str, spec: Any, max_batch: int = 1024, seed: int = 0, *, pool: int = 16,
                 timeout: float = 30.0, record: bool = False):
        self.url, self.model = url.rstrip("/"), model
        self.max_batch = check_int("max_batch", max_batch, 1, MAX_ITEMS)
        self.spec = load_spec(spec)
        self.name = f"triton:{model}"
        self.timeout = timeout
        self.output = OUTPUT_NAME
        built = example_inputs(self.spec, self.max_batch, check_int("seed", seed, 0, 2**63 - 1))
        self._inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in built.items()}
        self._bodies: dict[int, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self._client = KeepAliveClient(self.url, timeout=timeout, keep_headers=(NODE_HEADER,))
        self._path = f"{urlsplit(self.url).path}/v2/models/{model}/infer"
        self.requests: list[tuple[str | None, float]] | None = None  # (node, ms) of each answered request
        try:
            for n in (self.max_batch, 1):
                self.infer(n)
        except Exception as err:
            self.close()
            raise ConfigError(f"model {model!r} on {url} does not serve inputs of this spec: "
                              f"{first_line(err)}") from None
        if record:  # from here on: the checks above are not part of the load
            self.requests = []

    def _body(self, n_items: int) -> tuple[bytes, int]:
        body = self._bodies.get(n_items)
        if body is None:
            body = encode_request({k: v[:n_items] for k, v in self._inputs.items()}, [self.output])
            with self._lock:
                if len(self._bodies) < BODY_CACHE_SIZES:
                    self._bodies[n_items] = body
        return body

    def infer(self, n_items: int) -> str | None:
        if not 1 <= n_items <= self.max_batch:
            raise ValueError(f"sub-batch of {n_items} items outside [1, {self.max_batch}] (max_batch)")
        body, header_length = self._body(n_items)
        start = time.perf_counter()
        reply = self._client.post(self._path, body, {"Inference-Header-Content-Length": str(header_length),
                                                     "Content-Type": "application/octet-stream"})
        if reply.status != 200:
            raise TritonError(f"HTTP {reply.status}: {reply.error_text()}", reply.status)
        node = reply.headers.get(NODE_HEADER.lower())  # the fleet node, when the answer came through the balancer
        if self.requests is not None:
            self.requests.append((node, (time.perf_counter() - start) * 1000.0))  # list.append is atomic
        return node

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"TritonHttpTarget({self.url}, model={self.model!r}, max_batch={self.max_batch})"
