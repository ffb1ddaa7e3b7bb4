"""The running balancer: the supervised haproxy process and its admin runtime API (weights, server states and the
shed share changed without a reload, ``show stat`` / ``show servers state`` parsed)."""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recforge.core.cpusets import CpuGroup
from recforge.core.errors import ConfigError, RecForgeError
from recforge.serving.loadbalancer.haproxy_config import (
    BACKEND,
    MAX_WEIGHT,
    NAME,
    SERVER_STATES,
    check_config,
    haproxy_binary,
    server_state_path,
)
from recforge.serving.loadbalancer.shedding import (
    PER_MILLE,
    SHED_BACKEND,
    SHED_KEY,
    parse_show_map,
    shed_map_path,
    shed_per_mille,
    write_shed_map,
)
from recforge.serving.pids import cmdline, pid_alive

# --------------------------------------------------------------------------------------------------------------
# The runtime API


class BalancerError(RecForgeError):
    """HAProxy's runtime API refused a command or did not answer."""


def runtime_command(socket_path: str | Path, command: str, timeout_s: float = 5.0) -> str:
    """Send one command to HAProxy's admin socket and return its answer (text, may be empty)."""
    if "\n" in command or ";" in command:
        raise ConfigError(f"runtime command must be one command on one line, got {command!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as err:
            raise BalancerError(f"haproxy admin socket {socket_path} did not answer {command!r}: "
                                f"{err.strerror or err}; is the balancer running?") from None
    return b"".join(chunks).decode(errors="replace")


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """``show stat`` CSV as one dict per proxy/server row (column names from the ``# pxname,...`` header)."""
    text = text.lstrip()
    if not text.startswith("# "):
        raise BalancerError(f"unexpected answer to show stat: {text[:200]!r}")
    rows = csv.DictReader(io.StringIO(text[2:]))
    return [{k: v for k, v in row.items() if k} for row in rows if row.get("pxname")]


def parse_servers_state(text: str) -> list[dict[str, str]]:
    """``show servers state`` (format 1) as one dict per server, keyed by the header's field names."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if line.startswith("# ")), None)
    if header is None:
        raise BalancerError(f"unexpected answer to show servers state: {text[:200]!r}")
    keys = header[2:].split()
    rows = []
    for line in lines[lines.index(header) + 1:]:
        values = line.split()
        rows.append(dict(zip(keys, values, strict=False)))
    return rows


def shed_requests(rows: list[dict[str, str]]) -> int | None:
    """The requests the balancer shed since its worker started: the shed backend's sessions in ``show stat`` rows
    (None: a config without shedding)."""
    for row in rows:
        if row.get("pxname") == SHED_BACKEND and row.get("svname") == "BACKEND":
            return _int(row.get("stot")) or 0
    return None


def server_status(row: Mapping[str, str]) -> str:
    """The state word of a ``show stat`` server row: UP, DOWN, DRAIN, MAINT, NOLB (transitions such as
    ``UP 1/2`` keep their first word)."""
    return (row.get("status") or "").split(" ")[0]


# --------------------------------------------------------------------------------------------------------------
# The process


@dataclass
class HAProxy:
    """An haproxy process serving ``config_path`` (from :func:`write_config`), supervised by us.

    ``start()`` validates the file, starts ``haproxy -W -db`` in its own process group with output to
    ``log_path`` and waits until the admin socket answers and (unless ``wait_up`` is 0) a server is UP. With
    ``placement`` (a :class:`recforge.core.cpusets.CpuGroup`) master and worker run inside that CPU set. A fresh
    start sheds nothing (the shed map, when the config has one, is reset to 0; a reload keeps it).
    """

    config_path: Path
    socket_path: Path
    log_path: Path
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    pid: int | None = None
    placement: CpuGroup | None = field(default=None, repr=False)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HAProxy:
        """A handle on a running balancer from :meth:`state` (e.g. read back from the fleet's state.json)."""
        return cls(Path(state["config"]), Path(state["socket"]), Path(state["log"]), int(state["port"]),
                   pid=state.get("pid"))

    def state(self) -> dict[str, Any]:
        return {"config": str(self.config_path), "socket": str(self.socket_path), "log": str(self.log_path),
                "port": self.port, "pid": self.pid}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> HAProxy:
        check_config(self.config_path)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server_state_path(self.socket_path).unlink(missing_ok=True)  # a fresh start begins from the config
        if shed_map_path(self.socket_path).exists():  # ... and sheds nothing until the controller says so
            write_shed_map(shed_map_path(self.socket_path), 0)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            prefix = self.placement.create().launch_prefix() if self.placement is not None else []
            self.process = subprocess.Popen([*prefix, haproxy_binary(), "-W", "-db", "-f", str(self.config_path)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=haproxy_environment())
        self.pid = self.process.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RecForgeError(f"haproxy exited with status {self.process.returncode} at start; "
                                    f"see {self.log_path}: {_tail(self.log_path)}")
            if self.socket_path.exists():
                try:
                    runtime_command(self.socket_path, "show info", timeout_s=1.0)
                    return self
                except BalancerError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RecForgeError(f"haproxy did not open its admin socket {self.socket_path} in {timeout_s:g} s; "
                            f"see {self.log_path}")

    def reload(self, timeout_s: float = 15.0) -> int:
        """Load ``config_path`` again without dropping a connection: the runtime states and weights are saved to
        the server-state file the config names, the master (``-W``) gets SIGUSR2 and starts a new worker on the same
        listening sockets while the old one finishes its requests (idle keep-alive clients get ``Connection:
        close`` with their next answer). Returns the new worker's pid; BalancerError if it does not come."""
        check_config(self.config_path)
        if self.pid is None or not self.running():
            raise BalancerError(f"haproxy of {self.config_path} is not running; nothing to reload")
        old = self.worker_pid()
        server_state_path(self.socket_path).write_text(self.command("show servers state"))
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                new = self.worker_pid()
            except BalancerError:
                new = old
            if new != old:
                return new
            time.sleep(0.05)
        raise BalancerError(f"haproxy did not start a new worker within {timeout_s:g} s of a reload; see "
                            f"{self.log_path}: {_tail(self.log_path)}")

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the master and its worker (SIGTERM, then SIGKILL of the group). Idempotent."""
        pid = self.pid
        if pid is None:
            return
        if self.process is not None or _is_haproxy(pid, self.config_path):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    break
                if _wait_gone(pid, self.process, timeout_s):
                    break
        if self.process is not None:
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.socket_path.unlink(missing_ok=True)
        self.pid, self.process = None, None

    # runtime API ---------------------------------------------------------------------------------------------

    def command(self, command: str) -> str:
        return runtime_command(self.socket_path, command)

    def _checked(self, command: str) -> None:
        answer = self.command(command).strip()
        if answer:  # set server ... answers nothing on success
            refusal = answer.partition("\n")[0]
            raise BalancerError(f"haproxy refused {command!r}: {refusal}")

    def set_weight(self, node: str, weight: int) -> None:
        """Change a node's weight now (no reload): 0 takes it out of rotation, 1..256 as in the config."""
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
            raise ConfigError(f"weight must be an integer in [0, {MAX_WEIGHT}], got {weight!r}")
        self._checked(f"set server {BACKEND}/{_node(node)} weight {weight}")

    def set_state(self, node: str, state: str) -> None:
        """``ready`` (in rotation), ``drain`` (no new requests, in-flight finish; health checks go on) or
        ``maint`` (out, health checks stopped)."""
        if state not in SERVER_STATES:
            raise ConfigError(f"server state must be one of {SERVER_STATES}, got {state!r}")
        self._checked(f"set server {BACKEND}/{_node(node)} state {state}")

    def set_shed_fraction(self, fraction: float) -> int:
        """Answer ``fraction`` (0..1) of inference requests 503 + Retry-After from now on, without a reload
        (recforge.serving.loadbalancer.shedding): the map file is written first (a reload in between reads it),
        then the running worker's map is set. Returns the per mille set; BalancerError when this balancer's config
        has no shedding."""
        value = shed_per_mille(fraction)
        path = shed_map_path(self.socket_path)
        write_shed_map(path, value)
        self._checked(f"set map {path} {SHED_KEY} {value}")
        return value

    def shed_fraction(self) -> float | None:
        """The fraction of inference requests shed now (the running worker's map; None: a config without
        shedding)."""
        value = parse_show_map(self.command(f"show map {shed_map_path(self.socket_path)}"))
        return None if value is None else value / PER_MILLE

    def shedding(self) -> dict[str, Any] | None:
        """The shed fraction now and the requests shed since this worker started (``show stat`` of the shed
        backend); None for a config without shedding."""
        fraction = self.shed_fraction()
        if fraction is None:
            return None
        return {"fraction": fraction, "requests": shed_requests(self.stats())}

    def stats(self) -> list[dict[str, str]]:
        """Every ``show stat`` row (frontend, backend and servers) as a dict of HAProxy's CSV columns."""
        return parse_show_stat(self.command("show stat"))

    def server_state(self) -> list[dict[str, str]]:
        """``show servers state triton`` rows (srv_name, srv_op_state, srv_admin_state, srv_uweight, ...)."""
        return parse_servers_state(self.command(f"show servers state {BACKEND}"))

    def servers(self) -> dict[str, dict[str, Any]]:
        """Per node: status (UP/DOWN/DRAIN/MAINT), weight, current and total sessions, check result."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.stats():
            if row.get("pxname") != BACKEND or row.get("svname") in ("BACKEND", "FRONTEND"):
                continue
            out[row["svname"]] = {
                "status": server_status(row), "status_detail": row.get("status", ""),
                "weight": _int(row.get("weight")), "current_sessions": _int(row.get("scur")),
                "total_sessions": _int(row.get("stot")), "check": row.get("check_status", ""),
                "last_change_s": _int(row.get("lastchg")), "retries": _int(row.get("wretr")),
                "redispatches": _int(row.get("wredis")), "connection_errors": _int(row.get("econ")),
                "response_errors": _int(row.get("eresp")),
            }
        return out

    def worker_pid(self) -> int:
        """Pid of the worker serving traffic (``show info``); stays the same across runtime changes."""
        for line in self.command("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        raise BalancerError("haproxy's show info has no Pid line")

    def wait_status(self, node: str, status: str, timeout_s: float = 10.0) -> None:
        """Wait until ``node``'s status word is ``status`` (e.g. UP, DOWN)."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = self.servers().get(node, {}).get("status")
            if seen == status:
                return
            time.sleep(0.1)
        raise RecForgeError(f"node {node} is {seen} in haproxy after {timeout_s:g} s, expected {status}")


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _node(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"node name {name!r} must match {NAME.pattern}")
    return name


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _is_haproxy(pid: int, config_path: Path) -> bool:
    """True when ``pid`` is an haproxy serving ``config_path`` (so a stale pid of another process is spared)."""
    args = cmdline(pid)
    return bool(args) and Path(args[0]).name == "haproxy" and str(config_path) in args


# glibc serves an allocation over its mmap threshold (128 KiB at first) with a fresh mmap and unmaps it when freed:
# every request's tune.bufsize-sized buffers (1.4 MiB for a 1,024-row model) came from new pages, and the page
# faults, zeroing and TLB flushes cost HAProxy ~0.5 ms of CPU a request (docs/serving.md, "Balancer CPU")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def haproxy_environment() -> dict[str, str]:
    """HAProxy's environment: ours, with glibc's allocator kept from unmapping its request buffers."""
    return {**os.environ, **MALLOC_ENV}


def _wait_gone(pid: int, process: subprocess.Popen | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False
