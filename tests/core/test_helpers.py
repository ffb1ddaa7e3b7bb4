"""recforge.core's small helpers: hashing, free ports, host description, median timing."""

from __future__ import annotations

import hashlib
import socket

from recforge.core import timing
from recforge.core.hashing import sha256_bytes, sha256_file
from recforge.core.hw import cpu_count, cpu_model
from recforge.core.ports import free_ports


def test_sha256_of_bytes_and_file(tmp_path):
    data = b"recforge" * 300_000  # > 1 MiB: read in several chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == expected
    assert sha256_file(path) == expected
    assert sha256_file(str(path)) == expected


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_host_description():
    assert cpu_count() >= 1
    assert isinstance(cpu_model(), str) and cpu_model()


def test_median_ms_warms_up_then_takes_the_median(monkeypatch):
    clock = iter([0, 1_000_000, 10_000_000, 13_000_000, 20_000_000, 20_500_000])  # 1, 3 and 0.5 ms, in ns
    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: next(clock))
    calls = []
    assert timing.median_ms(lambda: calls.append(1), repeats=3, warmup=2) == 1.0
    assert len(calls) == 5
