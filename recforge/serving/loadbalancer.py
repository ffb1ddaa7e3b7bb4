"""The fleet's load balancer: an HAProxy 2.6 configuration generated from the fleet and its profiles, the
haproxy process, and its runtime API (weights and server states changed without a reload).

What the generated ``haproxy.cfg`` does (:func:`render_config`):

* one ``frontend`` bound to ``127.0.0.1:<port>`` (HTTP mode) that forwards **only** the inference and health
  routes of Triton's KServe v2 HTTP API (:data:`ALLOWED_ROUTES`): ``POST /v2/models/<m>[/versions/<v>]/infer``,
  ``GET /v2/health/ready|live`` and the model metadata/readiness ``GET /v2/models/<m>[/versions/<v>][/ready]``.
  Every other request (model control ``/v2/repository/...``, ``/v2/models/<m>/config``, ``/stats``, ``/v2/logging``,
  ``/v2/trace``, shared memory, server metadata ``/v2``) is answered 403 by HAProxy and never reaches a node.
  Model loading and unloading go to one node's own port (``recforge.serving.fleet``), never through the balancer; Triton's
  metrics port is never behind it.
* one ``backend triton``: ``balance roundrobin`` (weighted, changeable at run time; ``leastconn`` is a setting:
  it follows the weights only under concurrency — among idle nodes it alternates, so at the few concurrent
  requests of a fast model a 10 % canary weight got ~40 % of the requests in the rollout test, which is why
  weighted round robin is the default); one ``server`` line per node whose ``weight`` is proportional to
  the node's measured capacity (:func:`capacity_weights`); active health checks ``GET /v2/health/ready`` expecting
  200 every ``check_inter_ms`` (``fall``/``rise`` consecutive results flip a node DOWN/UP; a connection error seen
  on live traffic switches that node's checks to ``fastinter``, ``observe layer4``: it does not mark it DOWN by
  itself, since one refused connection on the last healthy node would take the whole fleet out); ``retries 2``
  with ``retry-on conn-failure empty-response 503`` and ``option redispatch 1`` so a request that finds a node
  dead (refused, or closed without an answer because the node was killed mid-request) is sent again to another
  node instead of failing.
  L7 retries need the whole request in HAProxy's buffer before it is sent, hence ``option http-buffer-request``
  (without it, requests in flight on a killed node were lost: 2-4 of 600 in the test, none with it); requests
  larger than ``tune.bufsize`` (``buffer_bytes``) are forwarded but cannot be retried.
* every answer carries ``X-RecForge-Node: <server name>`` (``http-response set-header``): the load generator
  attributes each request to the node that served it, so the rollout's canary gate compares the canary's queries
  with the others' under the same load (:func:`recforge.serving.rollout.gate`). The node names are the fleet's own labels
  (node0, node1, ...), nothing about the host.
* the admin runtime API on a unix socket in the state folder (``stats socket ... mode 600 level admin``), no TCP
  stats page. ``show stat`` / ``show servers state`` there are parsed by :meth:`HAProxy.servers` and
  :meth:`HAProxy.server_state`.

Weights (:func:`capacity_weights`): HAProxy weights are integers 1..256 (0 would take a node out of rotation). A node
gets ``round(256 * c / c_max)`` clipped to [1, 256], where ``c`` is the latency-bounded throughput (qps) in the
profile of the node's hardware target and ``c_max`` the largest among the nodes; so the fastest node weighs 256 and
the ratios are kept to within 1/512 of the fastest node's capacity. A node with an explicit ``weight`` keeps it. If
no node has a profile, all weigh the same (100). Mixing profiled and unprofiled nodes is refused: there is no
capacity to compare with. The generated file starts with a comment giving each weight's source.

The process (:class:`HAProxy`) runs ``haproxy -W -db -f haproxy.cfg`` in the foreground as our child (master-worker
mode, no daemon), after ``haproxy -c`` has validated the file; ``stop()`` ends it. Runtime changes
(``set server triton/<node> weight N``, ``... state ready|drain|maint``) go through the socket and keep the worker
(its pid does not change).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recforge.contracts.headers import NODE_HEADER
from recforge.core.errors import ConfigError, RecForgeError

BACKEND = "triton"
FRONTEND = "inference"
MAX_WEIGHT = 256  # HAProxy's largest server weight
EQUAL_WEIGHT = 100  # every node's weight when no node has a profile
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # node names: HAProxy server names, file names, JSON keys
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
SERVER_STATES = ("ready", "drain", "maint")
BALANCE_ALGORITHMS = ("roundrobin", "leastconn")  # both take weights and runtime weight changes

# The routes forwarded to the nodes; HAProxy answers 403 to every other request. A model name is what Triton
# accepts in a model repository folder, without a leading dot (so "." and ".." never reach a node); "stats" is
# refused as a model name because GET /v2/models/stats is Triton's statistics endpoint.
MODEL = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
VERSION = r"(/versions/[0-9]+)?"
ALLOWED_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", rf"^/v2/models/{MODEL}{VERSION}/infer$"),
    ("GET", r"^/v2/health/(ready|live)$"),
    ("GET", rf"^/v2/models/{MODEL}{VERSION}(/ready)?$"),
)


def haproxy_binary() -> str:
    """The haproxy executable (``$RECFORGE_HAPROXY``, else ``haproxy`` on PATH or /usr/sbin)."""
    explicit = os.environ.get("RECFORGE_HAPROXY")
    found = explicit or shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else "")
    if not found or not Path(found).exists():
        raise ConfigError("haproxy is not installed; run `make setup` (infra/local/system-packages.sh installs it)")
    return found


# --------------------------------------------------------------------------------------------------------------
# What to balance


@dataclass(frozen=True)
class BackendNode:
    """One server behind the balancer: a name (``[A-Za-z0-9][A-Za-z0-9_-]*``), its HTTP port on ``host``, the
    hardware target whose profile sets its weight, and an optional explicit weight (1..256)."""

    name: str
    port: int
    target: str = ""
    host: str = "127.0.0.1"
    weight: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ConfigError(f"node name {self.name!r} must match {NAME.pattern} (letters, digits, _ and -)")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"node {self.name}: port must be an integer in [1, 65535], got {self.port!r}")
        if self.weight is not None and (not isinstance(self.weight, int) or not 1 <= self.weight <= MAX_WEIGHT):
            raise ConfigError(f"node {self.name}: weight must be an integer in [1, {MAX_WEIGHT}], got {self.weight!r}")
        if not re.match(r"^[A-Za-z0-9.:-]+$", self.host):
            raise ConfigError(f"node {self.name}: host {self.host!r} is not a host name or address")


@dataclass(frozen=True)
class BalancerSettings:
    """Knobs of the generated configuration (times in ms unless named _s)."""

    check_inter_ms: int = 500  # active health check period of an UP node
    check_down_inter_ms: int = 1000  # period while DOWN
    check_timeout_ms: int = 1000
    fall: int = 2  # consecutive failed checks before DOWN
    rise: int = 2  # consecutive passed checks before UP
    error_limit: int = 1  # connection errors on live traffic before health checks speed up (observe layer4)
    retries: int = 2
    timeout_connect_ms: int = 1000
    timeout_client_s: int = 30
    timeout_server_s: int = 30
    timeout_queue_s: int = 5
    timeout_http_request_s: int = 10
    maxconn: int = 2000
    buffer_bytes: int = 131072  # tune.bufsize: the largest request HAProxy can still retry on another node
    balance: str = "roundrobin"  # or "leastconn" (see the module docstring)

    def __post_init__(self):
        if self.balance not in BALANCE_ALGORITHMS:
            raise ConfigError(f"BalancerSettings.balance must be one of {BALANCE_ALGORITHMS}, got {self.balance!r}")
        for name, low, high in (("check_inter_ms", 50, 60_000), ("check_down_inter_ms", 50, 600_000),
                                ("check_timeout_ms", 50, 60_000), ("fall", 1, 100), ("rise", 1, 100),
                                ("error_limit", 1, 1000), ("retries", 0, 10), ("timeout_connect_ms", 10, 60_000),
                                ("timeout_client_s", 1, 3600), ("timeout_server_s", 1, 3600),
                                ("timeout_queue_s", 1, 3600), ("timeout_http_request_s", 1, 3600),
                                ("maxconn", 1, 1_000_000), ("buffer_bytes", 16384, 16 * 1024 * 1024)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"BalancerSettings.{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class NodeWeight:
    weight: int
    source: str  # where the weight came from, for the config's header comment


def _profile_capacity(profile: Mapping[str, Any], target: str) -> float:
    qps = profile.get("latency_bounded_throughput_qps")
    if not isinstance(qps, int | float) or isinstance(qps, bool) or not math.isfinite(qps) or qps < 0:
        raise ConfigError(f"profile of target {target!r} has no valid latency_bounded_throughput_qps ({qps!r}); "
                          "re-run python -m recforge.pipeline.profiling.targets for it")
    return float(qps)


def profiles_by_target(profiles: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None,
                       ) -> dict[str, Mapping[str, Any]]:
    """Profiles keyed by hardware target name: a mapping as given, or a list keyed by each ``target.name``."""
    if profiles is None:
        return {}
    if isinstance(profiles, Mapping):
        return dict(profiles)
    out: dict[str, Mapping[str, Any]] = {}
    for profile in profiles:
        try:
            name = profile["target"]["name"]
        except (KeyError, TypeError):
            raise ConfigError("a profile without target.name cannot set a weight; pass profiles keyed by target "
                              "name or documents of recforge/contracts/profile_schema.json") from None
        if name in out:
            raise ConfigError(f"two profiles for target {name!r}; pass the one of the model being served")
        out[name] = profile
    return out


def capacity_weights(nodes: Sequence[BackendNode],
                     profiles: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
                     ) -> dict[str, NodeWeight]:
    """Each node's HAProxy weight and where it came from (see the module docstring for the rounding)."""
    by_target = profiles_by_target(profiles)
    capacity: dict[str, float] = {}
    describe: dict[str, str] = {}
    for node in nodes:
        if node.weight is not None:
            continue
        profile = by_target.get(node.target) if node.target else None
        if profile is not None:
            capacity[node.name] = _profile_capacity(profile, node.target)
            variant = f"{profile.get('model_family', '?')}/{profile.get('variant', '?')}"
            measured = str(profile.get("measured_at", "?"))
            describe[node.name] = (f"profile of target {node.target} ({variant}, measured {measured}): "
                                   f"latency-bounded throughput {capacity[node.name]:g} qps")
    unweighted = [n for n in nodes if n.weight is None]
    unprofiled = [n.name for n in unweighted if n.name not in capacity]
    if capacity and unprofiled:
        raise ConfigError(f"nodes {unprofiled} have no profile for their target while others do; profile their "
                          "targets (python -m recforge.pipeline.profiling.targets) or give them explicit weights")
    weights: dict[str, NodeWeight] = {}
    top = max(capacity.values(), default=0.0)
    for node in nodes:
        if node.weight is not None:
            weights[node.name] = NodeWeight(node.weight, "explicit weight")
        elif not capacity:
            weights[node.name] = NodeWeight(EQUAL_WEIGHT, "no profile for any node: equal weights")
        elif top <= 0:
            weights[node.name] = NodeWeight(1, describe[node.name] + "; no node met the SLO: equal weights")
        else:
            weight = min(MAX_WEIGHT, max(1, round(MAX_WEIGHT * capacity[node.name] / top)))
            weights[node.name] = NodeWeight(weight, describe[node.name] + f" -> round(256 x {capacity[node.name]:g}"
                                                                          f" / {top:g})")
    return weights


# --------------------------------------------------------------------------------------------------------------
# The configuration


def _check_unix_path(path: Path, what: str) -> None:
    if len(str(path)) > UNIX_PATH_MAX:
        raise ConfigError(f"{what} {path} is longer than {UNIX_PATH_MAX} characters (a unix socket limit); "
                          "use a shorter state folder (RECFORGE_HOME)")


def render_config(nodes: Sequence[BackendNode], *, port: int, socket_path: str | Path,
                  profiles: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
                  settings: BalancerSettings | None = None) -> str:
    """The text of haproxy.cfg for ``nodes`` behind ``127.0.0.1:port`` (see the module docstring)."""
    settings = settings or BalancerSettings()
    if not nodes:
        raise ConfigError("the load balancer needs at least one node")
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ConfigError(f"node names must be unique, got {names}")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"balancer port must be an integer in [1, 65535], got {port!r}")
    socket_path = Path(socket_path)
    _check_unix_path(socket_path, "admin socket")
    weights = capacity_weights(nodes, profiles)
    s = settings
    lines = ["# Generated by recforge/serving/loadbalancer.py (RecForge): do not edit, regenerate it.",
             f"# Server weights (1..256, {s.balance} divides the traffic in proportion to them):"]
    lines += [f"#   {n.name} = {weights[n.name].weight}: {weights[n.name].source}" for n in nodes]
    lines += [
        "",
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        "    stats timeout 30s",
        f"    maxconn {s.maxconn}",
        f"    tune.bufsize {s.buffer_bytes}",
        "    log stderr format raw local0 info",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        f"    timeout connect {s.timeout_connect_ms}ms",
        f"    timeout client {s.timeout_client_s}s",
        f"    timeout server {s.timeout_server_s}s",
        f"    timeout queue {s.timeout_queue_s}s",
        f"    timeout http-request {s.timeout_http_request_s}s",
        "    timeout http-keep-alive 10s",
        f"    timeout check {s.check_timeout_ms}ms",
        "",
        f"frontend {FRONTEND}",
        f"    bind 127.0.0.1:{port}",
        "    # Only inference, health and model metadata reach the nodes; the rest (model control, config,",
        "    # statistics, logging, trace, shared memory) is refused here.",
    ]
    # GET /v2/models/stats is Triton's statistics of every model, not the metadata of a model named "stats".
    lines.append("    http-request deny deny_status 403 if { path /v2/models/stats }")
    for i, (method, regex) in enumerate(ALLOWED_ROUTES):
        lines.append(f"    acl route{i} path_reg {regex}")
        lines.append(f"    http-request allow if METH_{method} route{i}")
    lines += [
        "    http-request deny deny_status 403",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        f"    balance {s.balance}",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        "    option http-buffer-request",
        "    option redispatch 1",
        f"    retries {s.retries}",
        "    retry-on conn-failure empty-response 503",
        f"    http-response set-header {NODE_HEADER} %[srv_name]",
        f"    default-server check inter {s.check_inter_ms}ms fastinter {max(50, s.check_inter_ms // 2)}ms "
        f"downinter {s.check_down_inter_ms}ms fall {s.fall} rise {s.rise} "
        f"observe layer4 error-limit {s.error_limit} on-error fastinter",
    ]
    lines += [f"    server {n.name} {n.host}:{n.port} weight {weights[n.name].weight}" for n in nodes]
    return "\n".join(lines) + "\n"


def write_config(path: str | Path, nodes: Sequence[BackendNode], *, port: int, socket_path: str | Path,
                 profiles: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
                 settings: BalancerSettings | None = None, validate: bool = True) -> Path:
    """Write haproxy.cfg (see :func:`render_config`) and, unless ``validate`` is False, check it with
    ``haproxy -c``. Returns the path."""
    path = Path(path)
    text = render_config(nodes, port=port, socket_path=socket_path, profiles=profiles, settings=settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if validate:
        check_config(path)
    return path


def check_config(path: str | Path) -> None:
    """``haproxy -c -f path``; a ConfigError with HAProxy's first alert if the file is not valid."""
    out = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0:
        text = (out.stderr + out.stdout).strip().splitlines()
        alert = next((line for line in text if "ALERT" in line), text[0] if text else f"exit {out.returncode}")
        raise ConfigError(f"haproxy rejects {path}: {alert.strip()}")


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
    ``log_path`` and waits until the admin socket answers and (unless ``wait_up`` is 0) a server is UP.
    """

    config_path: Path
    socket_path: Path
    log_path: Path
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)
    pid: int | None = None

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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([haproxy_binary(), "-W", "-db", "-f", str(self.config_path)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
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

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and _alive(self.pid)

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
            raise BalancerError(f"haproxy refused {command!r}: {answer.splitlines()[0]}")

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _is_haproxy(pid: int, config_path: Path) -> bool:
    """True when ``pid`` is an haproxy serving ``config_path`` (so a stale pid of another process is spared)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(args) and Path(args[0].decode(errors="replace")).name == "haproxy" and \
        str(config_path).encode() in args


def _wait_gone(pid: int, process: subprocess.Popen | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.05)
    return False
