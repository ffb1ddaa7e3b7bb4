"""Load shedding at the balancer: the share of inference requests HAProxy answers ``503`` + ``Retry-After`` itself
(set by the elastic controller under overload), the map file that holds it, the configuration lines that apply it,
and how a shed request is told apart from others.

How it works (HAProxy 2.6): the share is a per-mille value under the key ``inference`` in a map file next to the
admin socket (``shed.map``). The frontend reads it for each inference request (``map_str_int``) and, when
``rand(1000)`` falls below it, sends the request to the ``shed`` backend, which has no server: it answers
``503`` with ``Retry-After`` and a one-line JSON body. The controller changes the share at run time with the runtime
API's ``set map`` (no reload) and writes it to the file too, so a reload (a node added, a rollout's admission
refresh) keeps it; a fresh start of HAProxy sheds nothing (:meth:`recforge.serving.loadbalancer.HAProxy.start`
resets the file) until the controller sets the share again. Only inference requests (``POST .../infer``) are shed:
health checks, the model metadata and anything else never are.

Counted: the ``shed`` backend's sessions in ``show stat`` (:data:`SHED_BACKEND`, column ``stot``; a reload starts
it from 0 again, which the controller's count allows for), and in the request log a shed request is the one with
status 503 that HAProxy answered itself (no node, termination state ``LR``:
:attr:`recforge.serving.loadbalancer.requestlog.RequestRecord.shed`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from recforge.core.errors import ConfigError

SHED_BACKEND = "shed"  # the server-less backend that answers the shed requests; its stot counts them
SHED_MAP_FILE = "shed.map"  # next to the admin socket
SHED_KEY = "inference"  # the map's one key
SHED_VAR = "txn.shed_per_mille"
PER_MILLE = 1000
SHED_MARKER = "this request was shed"  # what a client finds in the answer's text (elastic_bench_report)
SHED_MESSAGE = f"the fleet is overloaded: {SHED_MARKER}; retry after the Retry-After seconds"


def shed_map_path(socket_path: str | Path) -> Path:
    """The map file holding the shed share (next to the admin socket, as the server-state file is)."""
    return Path(socket_path).parent / SHED_MAP_FILE


def shed_per_mille(fraction: float) -> int:
    """``fraction`` (0..1) of inference requests as the map's per-mille integer; ConfigError outside [0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction) \
            or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"shed fraction must be a number in [0, 1], got {fraction!r}")
    return round(fraction * PER_MILLE)


def write_shed_map(path: str | Path, per_mille: int) -> Path:
    """Write the map file with ``per_mille`` (atomically: HAProxy may read it in a reload at any moment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{SHED_KEY} {int(per_mille)}\n")
    os.replace(tmp, path)
    return path


def ensure_shed_map(path: str | Path) -> Path:
    """The map file, written with 0 (nothing shed) when there is none; an existing one is kept (a config rewritten
    for a reload keeps the share the controller set)."""
    path = Path(path)
    return path if path.exists() else write_shed_map(path, 0)


def parse_show_map(text: str, key: str = SHED_KEY) -> int | None:
    """The integer value of ``key`` in a ``show map`` answer (``<entry id> <key> <value>`` lines), None when the
    map is unknown to HAProxy (a config from before load shedding) or has no such key."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == key:
            try:
                return int(fields[2])
            except ValueError:
                return None
    return None


def shed_frontend_rules(map_path: str | Path, infer_regex: str) -> list[str]:
    """The frontend lines that read the shed share for an inference request (placed before the route allowlist:
    an ``allow`` ends the request rules)."""
    path = Path(map_path)
    if any(c.isspace() or c in "'\"" for c in str(path)):
        raise ConfigError(f"shed map path {path} must not contain spaces or quotes")
    return [
        f"    # Load shedding ({__name__}): the per mille of inference requests",
        "    # answered 503 here, set at run time by the elastic controller (set map), kept in the file on reloads.",
        f"    acl sheddable path_reg {infer_regex}",
        f"    http-request set-var({SHED_VAR}) str({SHED_KEY}),map_str_int({path},0) if METH_POST sheddable",
    ]


def shed_use_backend_rule() -> str:
    """The frontend line that sends a drawn inference request to the shed backend (``rand(1000)`` below the share:
    the share 0 sheds nothing, 1000 everything)."""
    return f"    use_backend {SHED_BACKEND} if METH_POST sheddable {{ rand({PER_MILLE}),sub({SHED_VAR}) lt 0 }}"


def shed_backend_section(retry_after_s: int) -> list[str]:
    """The server-less backend that answers a shed request: 503, ``Retry-After``, a one-line JSON body (Triton's
    error shape)."""
    body = json.dumps({"error": SHED_MESSAGE})
    return [
        f"backend {SHED_BACKEND}",
        f"    # Shed inference requests ({__name__}); its sessions (show stat: stot) count them.",
        f"    http-request return status 503 content-type application/json string '{body}' "
        f"hdr Retry-After {int(retry_after_s)}",
    ]
