"""The fault benchmark's clients: steady valid open-loop traffic through the balancer (:class:`ValidTraffic`, one
:class:`~recforge.tools.fault_bench_figures.RequestRecord` per request) and a closed-loop burst straight to one
node's own port (:class:`Burst`, the ``queue`` fault; it runs in its own process,
``python -m recforge.tools.fault_bench_traffic --help``). Requests are built and sent by
:class:`recforge.inference.triton.TritonHttpTarget` (the model's example inputs, binary tensors, the answering node
from the balancer's node header)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from recforge.core.errors import RecForgeError, first_line
from recforge.inference import triton as tr
from recforge.tools.fault_bench_figures import (
    CONNECTION_REFUSED,
    CONNECTION_RESET,
    OTHER,
    TIMEOUT,
    RequestRecord,
    kind_of_status,
)


def error_kind(err: BaseException) -> str:
    """The kind of a failed request (:data:`recforge.tools.fault_bench_figures.ERROR_KINDS`)."""
    import requests

    if isinstance(err, tr.TritonError) and err.status is not None:
        return kind_of_status(err.status) or OTHER
    if isinstance(err, requests.Timeout):  # before ConnectionError: ConnectTimeout is both
        return TIMEOUT
    if isinstance(err, requests.ConnectionError):
        chain, seen = [], err
        while seen is not None and len(chain) < 8:  # requests -> urllib3 -> socket error
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args and
                                                          isinstance(seen.args[0], BaseException) else None)
        text = " ".join(f"{type(e).__name__} {e}" for e in chain)
        if "ConnectionRefusedError" in text or "Connection refused" in text:
            return CONNECTION_REFUSED
        return CONNECTION_RESET  # reset, aborted, closed without an answer
    return OTHER


class ValidTraffic:
    """Open-loop requests of ``items`` rows to ``model`` at ``url`` at ``rate_qps`` (``arrivals``: ``poisson`` or
    ``fixed``) until :meth:`stop`. A request's send time is its scheduled time, so a client thread that is late
    counts against the latency (no coordinated omission); ``threads`` client threads send them."""

    def __init__(self, url: str, model: str, spec: Any, *, rate_qps: float, items: int, arrivals: str = "poisson",
                 threads: int = 64, timeout_s: float = 5.0, seed: int = 0):
        self.rate_qps, self.items, self.arrivals = rate_qps, items, arrivals
        self.target = tr.TritonHttpTarget(url, model, spec, max_batch=items, seed=seed, pool=threads,
                                          timeout=timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="valid")
        self.rng = np.random.default_rng(seed)
        self.records: list[RequestRecord] = []
        self.in_flight: dict[int, float] = {}  # id of a request -> its send time
        self.sequence = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.dispatcher = threading.Thread(target=self.dispatch, name="valid-dispatch", daemon=True)

    def start(self) -> ValidTraffic:
        self.dispatcher.start()
        return self

    def gap_s(self) -> float:
        return float(self.rng.exponential(1.0 / self.rate_qps)) if self.arrivals == "poisson" else 1.0 / self.rate_qps

    def dispatch(self) -> None:
        due = time.time()
        while not self.stopping.is_set():
            due += self.gap_s()
            delay = due - time.time()
            if delay > 0 and self.stopping.wait(delay):
                return
            self.pool.submit(self.send, due)

    def send(self, sent_at: float) -> None:
        with self.lock:
            self.sequence += 1
            key = self.sequence
            self.in_flight[key] = sent_at
        status, error, node = 200, None, None
        try:
            node = self.target.infer(self.items)
        except Exception as err:  # every failure is a lost request of some kind
            error = error_kind(err)
            status = getattr(err, "status", None)
        record = RequestRecord(sent_at, time.time(), status, error, node)
        with self.lock:
            self.records.append(record)
            del self.in_flight[key]

    def snapshot(self) -> tuple[list[RequestRecord], float | None]:
        """(the records of the requests that ended, the send time of the oldest one still in flight)."""
        with self.lock:
            return list(self.records), min(self.in_flight.values(), default=None)

    def stop(self) -> list[RequestRecord]:
        """Send no more; wait for the requests in flight (each ends by its timeout) and return every record."""
        self.stopping.set()
        self.dispatcher.join()
        self.pool.shutdown(wait=True)
        self.target.close()
        return self.snapshot()[0]


def run_burst(url: str, model: str, spec: Any, *, items: int, concurrency: int, duration_s: float,
              timeout_s: float = 30.0, seed: int = 1) -> dict[str, Any]:
    """``concurrency`` threads sending requests of ``items`` rows back to back to ``url`` for ``duration_s``; what
    was sent and answered 200, and when the burst started and its last request ended (epoch s). Prints ``ready``
    once its requests are built and waits for a line on stdin before the burst (:class:`Burst`)."""
    target = tr.TritonHttpTarget(url, model, spec, max_batch=items, seed=seed, pool=concurrency, timeout=timeout_s)
    counts = {"sent": 0, "answered": 0, "last_end": 0.0}
    lock = threading.Lock()
    print("ready", flush=True)
    sys.stdin.readline()
    started_at = time.time()
    print(f"started {started_at:.6f}", flush=True)  # the fault's instant, for the process that waits on it

    def loop() -> None:
        while time.time() - started_at < duration_s:
            ok = True
            try:
                target.infer(items)
            except Exception:  # a refused or failed burst request is part of the burst, not of the figures
                ok = False
            with lock:
                counts["sent"] += 1
                counts["answered"] += ok
                counts["last_end"] = max(counts["last_end"], time.time())

    threads = [threading.Thread(target=loop, name=f"burst-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target.close()
    return {**counts, "started_at": started_at, "items": items, "concurrency": concurrency,
            "duration_s": round(counts["last_end"] - started_at, 3)}


class Burst:
    """:func:`run_burst` in a process of its own (``python -m recforge.tools.fault_bench_traffic``), so that its
    threads do not share an interpreter with the valid traffic's client: the valid latencies are the fleet's."""

    def __init__(self, url: str, model: str, spec: Any, *, items: int, concurrency: int, duration_s: float):
        self.command = [sys.executable, "-m", "recforge.tools.fault_bench_traffic", "--url", url, "--model", model,
                        "--spec", str(spec), "--items", str(items), "--concurrency", str(concurrency),
                        "--duration-s", str(duration_s)]
        self.items, self.duration_s = items, duration_s
        self.process: subprocess.Popen | None = None
        self.result: dict[str, Any] | None = None
        self.started_at: float | None = None

    def prepare(self) -> Burst:
        """Start the burst process and return once it is ready to send (its start-up's CPU is spent before the
        valid traffic's ``before`` window)."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.PIPE)
        self.expect("ready")
        return self

    def start(self) -> Burst:
        """Release the prepared burst; return once its requests go out (:attr:`started_at`)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        self.started_at = float(self.expect("started").split()[1])
        return self

    def expect(self, word: str) -> str:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(word):
            self.join()  # raises with the process's error
            raise RecForgeError(f"the burst process said {line.strip()!r}, expected {word!r}")
        return line

    def done(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def join(self) -> dict[str, Any]:
        """The burst's summary (:func:`run_burst`); RecForgeError when the burst process failed."""
        if self.result is None:
            assert self.process is not None
            if self.started_at is None:  # prepared, never released
                self.process.kill()
                self.process.communicate()
                self.result = {"released": False}
                return self.result
            try:
                out, err = self.process.communicate(timeout=self.duration_s + 120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, err = self.process.communicate()
            if self.process.returncode != 0:
                raise RecForgeError(f"the burst process failed (exit {self.process.returncode}): "
                                    f"{first_line(err.strip().splitlines()[-1] if err.strip() else 'no output')}")
            self.result = json.loads(out)
        return self.result

    @property
    def last_end(self) -> float:
        return float(self.join()["last_end"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.fault_bench_traffic",
                                     description="A burst of requests straight to one node (the queue fault).")
    parser.add_argument("--url", required=True, help="the node's own URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--spec", required=True, help="the model's spec.json")
    parser.add_argument("--items", type=int, required=True, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    result = run_burst(args.url, args.model, args.spec, items=args.items, concurrency=args.concurrency,
                       duration_s=args.duration_s)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
