"""The load generator's target for a model served by Triton: one HTTP inference request per sub-batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from recforge.contracts.features import OUTPUT_NAME
from recforge.contracts.headers import served_by
from recforge.core.errors import ConfigError, first_line
from recforge.inference.loadgen import MAX_ITEMS, check_int, load_spec
from recforge.inference.triton.client import encode_request, error_text, http_session
from recforge.inference.triton.errors import TritonError
from recforge.models.export import example_inputs

BODY_CACHE_SIZES = 64  # request bodies kept per load target (sub-batch sizes repeat; memory stays bounded)


class TritonHttpTarget:
    """``recforge.inference.loadgen`` target: a sub-batch of n items is one HTTP inference request to ``model``.

    The inputs of ``max_batch`` rows are built once (``recforge.models.export.example_inputs``), and the request
    bodies of the first 64 sub-batch sizes seen are built once and reused. The connection pool holds ``pool``
    connections (at least the load generator's workers). A non-200 answer raises, which the load generator counts as a
    failed query. The constructor sends one request of ``max_batch`` and one of 1 item (a check that the
    model serves inputs of this spec). ``infer`` returns the fleet node that answered (HAProxy's
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
        self._session = http_session(pool)
        self._path = f"{self.url}/v2/models/{model}/infer"
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
        response = self._session.post(self._path, data=body, timeout=self.timeout,
                                      headers={"Inference-Header-Content-Length": str(header_length),
                                               "Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            raise TritonError(f"HTTP {response.status_code}: {error_text(response)}", response.status_code)
        node = served_by(response.headers)  # the fleet node, when the answer came through the balancer
        if self.requests is not None:
            self.requests.append((node, (time.perf_counter() - start) * 1000.0))  # list.append is atomic
        return node

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"TritonHttpTarget({self.url}, model={self.model!r}, max_batch={self.max_batch})"
