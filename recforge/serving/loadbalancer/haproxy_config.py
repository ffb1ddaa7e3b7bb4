"""The generated ``haproxy.cfg``: the nodes behind the balancer, their capacity weights and the settings, rendered
and checked with ``haproxy -c`` (what the file does: recforge.serving.loadbalancer)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recforge.contracts.headers import NODE_HEADER
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError
from recforge.serving.loadbalancer.admission import (
    AdmissionLimits,
    backend_rules,
    frontend_rules,
    header_limit_rules,
    required_bufsize,
)
from recforge.serving.loadbalancer.requestlog import BODY_HASH_VAR, LOG_FORMAT, UNIQUE_ID_FORMAT
from recforge.serving.loadbalancer.shedding import (
    ensure_shed_map,
    shed_backend_section,
    shed_frontend_rules,
    shed_map_path,
    shed_use_backend_rule,
)

BACKEND = "triton"
FRONTEND = "inference"
MAX_WEIGHT = 256  # HAProxy's largest server weight
EQUAL_WEIGHT = 100  # every node's weight when no node has a profile
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # node names: HAProxy server names, file names, JSON keys
# sun_path is 108 bytes with the NUL, and HAProxy binds "<path>.<pid>.tmp" first and renames it: it refuses a
# stats socket path of more than 97 characters ("socket path ... too long (max 97)")
UNIX_PATH_MAX = 97
SERVER_STATE_FILE = "servers.state"  # next to the admin socket: runtime weights and states across a reload
SERVER_STATES = ("ready", "drain", "maint")
MAX_BUFSIZE = 16 * 1024 * 1024

# The routes forwarded to the nodes; HAProxy answers 403 to every other request. A model name is what Triton
# accepts in a model repository folder, without a leading dot (so "." and ".." never reach a node); "stats" is
# refused as a model name because GET /v2/models/stats is Triton's statistics endpoint. The model's metadata and
# its config are read-only (GET) and are what perf_analyzer, Model Analyzer and the client SDK read first.
MODEL = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
VERSION = r"(/versions/[0-9]+)?"
INFER_ROUTE = rf"^/v2/models/{MODEL}{VERSION}/infer$"
FLEET_METADATA = json.dumps({"name": "recforge-fleet", "version": "1",
                             "extensions": ["model_configuration", "binary_tensor_data"]}, separators=(",", ":"))
ALLOWED_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", INFER_ROUTE),
    ("GET", r"^/v2/health/(ready|live)$"),
    ("GET", rf"^/v2/models/{MODEL}{VERSION}(/ready|/config)?$"),
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


@typed_config
class BackendNode:
    """One server behind the balancer: a name (``[A-Za-z0-9][A-Za-z0-9_-]*``), its HTTP port on ``host``, the
    hardware target whose profile sets its weight, and an optional explicit weight (1..256)."""

    name: Annotated[str, Field(pattern=NAME.pattern)]  # HAProxy server name, file names, JSON keys
    port: Annotated[int, Field(ge=1, le=65535)]
    target: str = ""
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.:-]+$")] = "127.0.0.1"  # a host name or address
    weight: Annotated[int, Field(ge=1, le=MAX_WEIGHT)] | None = None


@typed_config
class BalancerSettings:
    """Knobs of the generated configuration (times in ms unless named _s)."""

    check_inter_ms: Annotated[int, Field(ge=50, le=60_000)] = 500  # active health check period of an UP node
    check_down_inter_ms: Annotated[int, Field(ge=50, le=600_000)] = 1000  # period while DOWN
    check_timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000
    fall: Annotated[int, Field(ge=1, le=100)] = 2  # consecutive failed checks before DOWN
    rise: Annotated[int, Field(ge=1, le=100)] = 2  # consecutive passed checks before UP
    # connection errors on live traffic before health checks speed up (observe layer4)
    error_limit: Annotated[int, Field(ge=1, le=1000)] = 1
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    timeout_connect_ms: Annotated[int, Field(ge=10, le=60_000)] = 1000
    timeout_client_s: Annotated[int, Field(ge=1, le=3600)] = 30
    timeout_server_s: Annotated[int, Field(ge=1, le=3600)] = 30
    timeout_queue_s: Annotated[int, Field(ge=1, le=3600)] = 5
    timeout_http_request_s: Annotated[int, Field(ge=1, le=3600)] = 10
    maxconn: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    # tune.bufsize: the largest request HAProxy buffers (raised to fit the largest admitted request)
    buffer_bytes: Annotated[int, Field(ge=16384, le=16 * 1024 * 1024)] = 131072
    balance: Literal["roundrobin", "leastconn"] = "roundrobin"  # see recforge.serving.loadbalancer
    shed_retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 1  # Retry-After of a shed request (shedding.py)


@dataclass(frozen=True)
class NodeWeight:
    weight: int
    source: str  # where the weight came from, for the config's header comment


def _profile_capacity(profile: Mapping[str, Any], target: str) -> float:
    qps = profile.get("latency_bounded_throughput_qps")
    if not isinstance(qps, int | float) or isinstance(qps, bool) or not math.isfinite(qps) or qps < 0:
        raise ConfigError(f"profile of target {target!r} has no valid latency_bounded_throughput_qps ({qps!r}); "
                          "re-run python -m recforge.pipeline.profiling.profile_variant for it")
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
    """Each node's HAProxy weight and where it came from (see recforge.serving.loadbalancer for the rounding)."""
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
                          "targets (python -m recforge.pipeline.profiling.profile_variant) or give them explicit "
                          "weights")
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


def server_state_path(socket_path: str | Path) -> Path:
    """Where the runtime weights and server states are saved before a reload (next to the admin socket)."""
    return Path(socket_path).parent / SERVER_STATE_FILE


def _check_unix_path(path: Path, what: str) -> None:
    if len(str(path)) > UNIX_PATH_MAX:
        raise ConfigError(f"{what} {path} is longer than {UNIX_PATH_MAX} characters (HAProxy's unix socket "
                          "limit); use a shorter folder (admin_socket_path picks one)")


def admin_socket_path(folder: str | Path) -> Path:
    """Where the balancer whose files are in ``folder`` gets its admin socket: ``folder/admin.sock`` when that is
    short enough for HAProxy (:data:`UNIX_PATH_MAX`), else ``admin.sock`` in a private folder of this user under the
    temp dir named by a hash of ``folder`` (mode 700; the same folder always gets the same path, so a later
    process finds it). The server-state and shed-map files live next to the socket."""
    folder = Path(folder)
    path = folder / "admin.sock"
    if len(str(path)) <= UNIX_PATH_MAX:
        return path
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"recforge-{os.getuid()}" / digest
    for directory in (short.parent, short):
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(f"{directory} (for the admin socket of {folder}) is not private to this user: "
                              "remove it, or use a shorter folder")
    return short / "admin.sock"


def render_config(nodes: Sequence[BackendNode], *, port: int, socket_path: str | Path,
                  profiles: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
                  settings: BalancerSettings | None = None, admission: AdmissionLimits | None = None,
                  quarantine_path: str | Path | None = None) -> str:
    """The text of haproxy.cfg for ``nodes`` behind ``127.0.0.1:port`` (see recforge.serving.loadbalancer);
    with ``admission``, inference requests that cannot be valid for that model are answered by HAProxy
    (recforge.serving.loadbalancer.admission); with ``quarantine_path`` (a file of body SHA-256s, one per line,
    which must exist), an inference request whose body hash is listed there is answered 422 and never reaches a
    node (the fleet's supervisor adds the hash of a request that crashed nodes: recforge.serving.fleet.crashes).
    Inference requests are shed (503 + Retry-After) in the share the map file next to ``socket_path`` holds
    (recforge.serving.loadbalancer.shedding; :func:`write_config` creates it with 0: nothing shed)."""
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
    bufsize = s.buffer_bytes if admission is None else max(s.buffer_bytes, required_bufsize(admission))
    if bufsize > MAX_BUFSIZE:
        raise ConfigError(f"the largest valid request of {admission.model if admission else '?'} needs a "
                          f"{bufsize}-byte HAProxy buffer, over {MAX_BUFSIZE}; lower max_batch_size")
    lines = ["# Generated by recforge/serving/loadbalancer/haproxy_config.py (RecForge): do not edit, regenerate it.",
             f"# Server weights (1..256, {s.balance} divides the traffic in proportion to them):"]
    lines += [f"#   {n.name} = {weights[n.name].weight}: {weights[n.name].source}" for n in nodes]
    lines += [
        "",
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        f"    server-state-file {server_state_path(socket_path)}  # written by HAProxy.reload: weights, states",
        "    stats timeout 30s",
        f"    maxconn {s.maxconn}",
        f"    tune.bufsize {bufsize}" + ("" if bufsize == s.buffer_bytes else
                                          "  # the largest admitted request plus headers (admission.py)"),
        "    log stderr format raw local0 info",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    load-server-state-from-file global",
        "    option dontlognull",
        "    option idle-close-on-response  # a reload closes idle keep-alive clients after an answer, no reset",
        "    # One line per request: node, termination state, body SHA-256 (loadbalancer/requestlog.py)",
        f"    unique-id-format {UNIQUE_ID_FORMAT}",
        f"    log-format \"{LOG_FORMAT}\"",
        f"    timeout connect {s.timeout_connect_ms}ms",
        f"    timeout client {s.timeout_client_s}s",
        f"    timeout server {s.timeout_server_s}s",
        f"    timeout queue {s.timeout_queue_s}s",
        f"    timeout http-request {s.timeout_http_request_s}s",
        "    timeout http-keep-alive 10s",
        f"    timeout check {s.check_timeout_ms}ms",
        "",
        *shed_backend_section(s.shed_retry_after_s),
        "",
        f"frontend {FRONTEND}",
        f"    bind 127.0.0.1:{port}",
        "    # Only inference, health, and the model's metadata and config (GET) reach the nodes; the rest (model",
        "    # control, statistics, logging, trace, shared memory) is refused here.",
    ]
    lines += header_limit_rules()
    if admission is not None:
        lines += frontend_rules(admission, INFER_ROUTE, s.timeout_http_request_s)
    lines += shed_frontend_rules(shed_map_path(socket_path), INFER_ROUTE)
    # GET /v2/models/stats is Triton's statistics of every model, not the metadata of a model named "stats".
    lines.append("    http-request deny deny_status 403 if { path /v2/models/stats }")
    # GET /v2 (server metadata) is the first thing perf_analyzer and the client SDK read. The nodes' own answer
    # lists the statistics extension, which would send perf_analyzer to the blocked statistics API: the balancer
    # answers with the fleet's metadata and the extensions it really offers.
    lines.append(f"    http-request return status 200 content-type application/json string '{FLEET_METADATA}' "
                 "if METH_GET { path /v2 }")
    for i, (method, regex) in enumerate(ALLOWED_ROUTES):
        lines.append(f"    acl route{i} path_reg {regex}")
        lines.append(f"    http-request allow if METH_{method} route{i}")
    lines += [
        "    http-request deny deny_status 403",
        shed_use_backend_rule(),
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        f"    balance {s.balance}",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        "    option http-buffer-request",
        "    # Retries only when the request never ran on a node: the connection was refused or not established (a",
        "    # node already down), or the node answered 503 (Triton refused it before running it: its queue is full,",
        "    # max_queue_size, or the model is unavailable). A request whose attempt ended in a reset, an empty answer",
        "    # or a timeout is not sent again: it may be what killed the node, and would kill the next (poison).",
        "    option redispatch 1",
        f"    retries {s.retries}",
        "    retry-on conn-failure 503",
        f"    http-response set-header {NODE_HEADER} %[srv_name]",
        *(backend_rules() if admission is not None else []),
        *body_hash_rules(s.timeout_http_request_s, quarantine_path),
        "    # A node marked DOWN (a failed health check: crashed or hung) has its sessions killed: their clients",
        "    # get an answer now rather than after the server timeout of a hung node.",
        f"    default-server check inter {s.check_inter_ms}ms fastinter {max(50, s.check_inter_ms // 2)}ms "
        f"downinter {s.check_down_inter_ms}ms fall {s.fall} rise {s.rise} "
        f"observe layer4 error-limit {s.error_limit} on-error fastinter on-marked-down shutdown-sessions",
    ]
    lines += [f"    server {n.name} {n.host}:{n.port} weight {weights[n.name].weight}" for n in nodes]
    return "\n".join(lines) + "\n"


def body_hash_rules(body_timeout_s: int, quarantine_path: str | Path | None) -> list[str]:
    """The backend lines that hash each inference request's body into the request log and, with a quarantine
    file, answer 422 to a request whose hash is listed there."""
    infer = "METH_POST { path_end /infer }"
    lines = [f"    http-request wait-for-body time {body_timeout_s}s if {infer}",
             f"    http-request set-var({BODY_HASH_VAR}) req.body,sha2(256),hex,lower if {infer}"]
    if quarantine_path is not None:
        path = Path(quarantine_path)
        if any(c.isspace() or c in "'\"" for c in str(path)):
            raise ConfigError(f"quarantine file path {path} must not contain spaces or quotes")
        message = json.dumps({"error": "this request crashed fleet nodes before and is quarantined; see `python -m "
                                       "recforge.serving.fleet crashes` (its body SHA-256 is in the request log)"})
        lines += ["    # Requests that crashed nodes (recforge/serving/fleet/crashes.py), listed by body SHA-256.",
                  f"    acl quarantined var({BODY_HASH_VAR}) -m str -f {path}",
                  f"    http-request return status 422 content-type application/json string '{message}' "
                  "if quarantined"]
    return lines


def write_config(path: str | Path, nodes: Sequence[BackendNode], *, port: int, socket_path: str | Path,
                 profiles: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
                 settings: BalancerSettings | None = None, admission: AdmissionLimits | None = None,
                 quarantine_path: str | Path | None = None, validate: bool = True) -> Path:
    """Write haproxy.cfg (see :func:`render_config`) and, unless ``validate`` is False, check it with
    ``haproxy -c``. Returns the path."""
    path = Path(path)
    text = render_config(nodes, port=port, socket_path=socket_path, profiles=profiles, settings=settings,
                         admission=admission, quarantine_path=quarantine_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    ensure_shed_map(shed_map_path(socket_path))  # the config reads it; a share set at run time is kept
    if validate:
        check_config(path)
    return path


def check_config(path: str | Path) -> None:
    """``haproxy -c -f path``; a ConfigError with HAProxy's first alert if the file is not valid."""
    out = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0:
        text = (out.stderr + out.stdout).strip().splitlines()
        alert = next((line for line in text if "ALERT" in line), text[0] if text else f"exit {out.returncode}")
        raise ConfigError(f"haproxy rejects {path}: {alert.strip()}")


