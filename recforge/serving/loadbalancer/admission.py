"""Admission at the balancer: the limits of the served model (from its config.pbtxt) and the HAProxy rules that
answer a KServe v2 inference request which cannot be valid for it, before it reaches a node.

What is checked where (the measurements behind it: docs/serving.md, "Malformed requests"):

* **HAProxy, before the body is read**: ``Content-Length`` over :attr:`AdmissionLimits.max_body_bytes` -> 413
  (a bare Triton waits for the promised bytes, holding the connection); on every route, a URI over
  :data:`MAX_HEADER_LINE_BYTES` -> 414 and a header line over it -> 431 (Triton's HTTP parser closes the
  connection on 8 KiB or more, which HAProxy would answer 502).
* **HAProxy, on the buffered body** (``http-request wait-for-body``; ``tune.bufsize`` is raised so the largest
  admitted body fits): a body over the limit (chunked requests too) -> 413; for binary-data requests
  ``Inference-Header-Content-Length`` must be an integer in [1, min(body size, :data:`MAX_JSON_HEADER_BYTES`)]
  -> 400; a JSON request must end with ``}`` (truncated bodies) -> 400; for each of the model's inputs
  ``inputs[i]`` (HAProxy's ``json_query`` over a copy, made once, of the JSON body or of a binary request's first
  :data:`MAX_JSON_HEADER_BYTES`, its JSON header; not over the whole body, tensor bytes and all, each time):
  ``name`` one of the model's inputs, ``datatype`` the one of that
  input, ``shape`` of the model's rank with the batch dimension an integer in [1, max_batch_size] (the same in
  every input) and every other dimension equal to the model's -> 400; a request with more inputs than the model
  -> 400. A jagged model (:class:`AdmissionLimits`: the TorchScript models with fused embedding bags) is checked
  the same way with its own first dimensions: items in [1, max_items_per_request], the same in every item-major
  input, and ids in [0, max_ids_per_request]. The shape checks are what keep a node alive: a shape such as
  ``[1, 10**12]`` with a few values makes tritonserver allocate for the declared shape and abort
  (``std::bad_alloc``).
* **Triton**: what ``json_query`` cannot see (a syntax error after the fields read above, a ``data`` array whose
  length does not match the shape, numbers written as strings, duplicate input names). Triton's HTTP frontend
  answers some of these 500 although they are the client's fault; the balancer turns a 500 of an inference
  request whose message is one of Triton's request-parsing errors (:data:`TRITON_PARSE_ERRORS`) into 400 with
  Triton's message unchanged. Every other 500 passes as it is.

``json_query`` stops at the first match: it is a check of the fields it reads, not a JSON validator, which is why
Triton's own parsing stays the last line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.core.errors import ConfigError
from recforge.inference.model_repo import parse_config_pbtxt

# Bytes per tensor element in a JSON request: the longest float a client writes ("-1.2345678901234568e-05", 23)
# or int64 (20) with ", " and room for the brackets of nested rows; binary data needs 8 at most.
JSON_BYTES_PER_ELEMENT = 32
BODY_SLACK_BYTES = 65536  # names, datatypes, shapes, parameters, request id, outputs
# Triton's messages for a request it could not parse (answered 500 by its HTTP frontend, 2.4x).
TRITON_PARSE_ERRORS = ("Unable to parse", "failed to parse the request JSON", "Unable to set",
                       "failed to get request params")
KSERVE_DATATYPES = {"TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_INT8": "INT8", "TYPE_INT16": "INT16",
                    "TYPE_INT32": "INT32", "TYPE_INT64": "INT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32",
                    "TYPE_FP64": "FP64", "TYPE_STRING": "BYTES", "TYPE_BF16": "BF16", "TYPE_UINT16": "UINT16",
                    "TYPE_UINT32": "UINT32", "TYPE_UINT64": "UINT64"}
MAX_JSON_HEADER_BYTES = 4096  # a binary request's JSON header: names, datatypes, shapes, parameters (~0.5 KiB)
MAX_BATCH_DIGITS = 9  # a batch dimension is at most this many digits before it is compared as an integer
MAX_HEADER_LINE_BYTES = 8000  # Triton 2.4x's HTTP parser drops a URI, header name or value of 8190+ bytes


BATCH, ITEMS, IDS = "batch", "items", "ids"  # what an input's first dimension counts (InputLimit.leading)


@dataclass(frozen=True)
class InputLimit:
    """One model input: its name, KServe v2 datatype (``INT64``, ``FP32``, ...), dims after the first, and what its
    first dimension counts: ``batch`` (a batching model's batch dimension), or, in a jagged model, ``items`` (one row
    per item) or ``ids`` (a flat list of embedding ids, as many as the request's bags hold)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    leading: str = BATCH


@dataclass(frozen=True)
class AdmissionLimits:
    """What a valid inference request for ``model`` looks like, and where that came from (``source``).

    A batching model (``max_batch_size`` >= 1 in its config) takes every input as [B, dims...] with one B in
    [1, max_batch_size]. A jagged model (``max_batch_size: 0``, e.g. the TorchScript models with fused embedding
    bags: ``dense`` [B, Dd], ``indices`` [N], ``lengths`` [B, T]) takes B items, at most ``max_batch_size`` (its
    ``max_items_per_request`` parameter), the same B in every item-major input, and N ids, at most ``max_ids``
    (``max_ids_per_request``)."""

    model: str
    max_batch_size: int
    inputs: tuple[InputLimit, ...]
    source: str
    max_ids: int = 0  # a jagged model's most ids a request may carry; 0 for a batching model

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"admission needs a batching model (max_batch_size >= 1) or a jagged one "
                              f"(max_items_per_request and max_ids_per_request parameters), {self.model} has "
                              f"max_batch_size {self.max_batch_size}")
        if not self.inputs:
            raise ConfigError(f"model {self.model} has no inputs to admit requests for")
        for item in self.inputs:
            if any(d < 1 for d in item.dims):
                raise ConfigError(f"input {item.name} of {self.model} has variable dims {list(item.dims)}; the "
                                  "balancer admits fixed dims only")
            if item.leading not in (BATCH, ITEMS, IDS):
                raise ConfigError(f"input {item.name} of {self.model}: leading {item.leading!r} is none of "
                                  f"{BATCH}, {ITEMS}, {IDS}")
        if any(i.leading == IDS for i in self.inputs) and self.max_ids < 1:
            raise ConfigError(f"model {self.model} has an id list input but no max_ids_per_request >= 1")

    def leading_max(self, item: InputLimit) -> int:
        """The largest first dimension ``item`` may have in one request."""
        return self.max_ids if item.leading == IDS else self.max_batch_size

    @property
    def elements_per_row(self) -> int:
        return sum(_product(i.dims) for i in self.inputs)

    @property
    def max_elements(self) -> int:
        """The most values a valid request carries, over all inputs."""
        return sum(self.leading_max(i) * _product(i.dims) for i in self.inputs)

    @property
    def max_body_bytes(self) -> int:
        """The largest body a valid request can have: the most values of every input written as JSON."""
        return self.max_elements * JSON_BYTES_PER_ELEMENT + BODY_SLACK_BYTES

    def describe(self) -> str:
        inputs = ", ".join(f"{i.name} {i.datatype} {_shape(i)}" for i in self.inputs)
        if self.max_ids:
            return (f"model {self.model}: jagged, at most {self.max_batch_size} items (B) and {self.max_ids} ids (N) "
                    f"a request, inputs {inputs}")
        return f"model {self.model}: max_batch_size {self.max_batch_size}, inputs {inputs}"


LEADING_SYMBOL = {BATCH: "B", ITEMS: "B", IDS: "N"}
LEADING_MIN = {BATCH: 1, ITEMS: 1, IDS: 0}  # a request may have no ids (every bag empty), never no items


def _shape(item: InputLimit) -> str:
    return "[" + ", ".join([LEADING_SYMBOL[item.leading], *map(str, item.dims)]) + "]"


def _product(dims: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _positive_parameter(config: Mapping[str, Any], key: str) -> int:
    value = ((config.get("parameters") or {}).get(key) or {}).get("string_value", "")
    return int(value) if str(value).isdigit() else 0


def limits_from_model_config(config: Mapping[str, Any], source: str) -> AdmissionLimits:
    """The limits of a model from its parsed config.pbtxt (recforge.inference.model_repo.parse_config_pbtxt). A
    config with ``max_batch_size: 0`` is a jagged model when it has the ``max_items_per_request`` and
    ``max_ids_per_request`` parameters: each input's dims then start with -1, a rank-1 input is its id list and the
    others are item-major (one row per item)."""
    max_batch = int(config.get("max_batch_size", 0))
    jagged = max_batch == 0 and _positive_parameter(config, "max_ids_per_request") > 0
    inputs = []
    for item in config.get("input", []):
        datatype = KSERVE_DATATYPES.get(item.get("data_type", ""))
        if datatype is None:
            raise ConfigError(f"input {item.get('name')!r} of {source} has data_type {item.get('data_type')!r}, "
                              "which the balancer does not know")
        dims = tuple(int(d) for d in item.get("dims", []))
        if not jagged:
            inputs.append(InputLimit(item["name"], datatype, dims))
            continue
        if not dims or dims[0] != -1:
            raise ConfigError(f"input {item['name']!r} of {source}: a jagged model's inputs start with a variable "
                              f"dimension, got dims {list(dims)}")
        inputs.append(InputLimit(item["name"], datatype, dims[1:], IDS if len(dims) == 1 else ITEMS))
    if jagged:
        return AdmissionLimits(config.get("name", "?"), _positive_parameter(config, "max_items_per_request"),
                               tuple(inputs), source, max_ids=_positive_parameter(config, "max_ids_per_request"))
    return AdmissionLimits(config.get("name", "?"), max_batch, tuple(inputs), source)


# --------------------------------------------------------------------------------------------------------------
# HAProxy rules


def _error(message: str) -> str:
    """A JSON error body as an HAProxy single-quoted argument (Triton's own error shape: {"error": ...})."""
    text = json.dumps({"error": message})
    if "'" in text:
        raise ConfigError(f"admission message {message!r} cannot contain a single quote")
    return f"'{text}'"


def _reject(status: int, message: str, condition: str) -> str:
    return (f"    http-request return status {status} content-type application/json string {_error(message)} "
            f"if {condition}")


def required_bufsize(limits: AdmissionLimits) -> int:
    """A ``tune.bufsize`` that holds the largest admitted body plus headers (HAProxy's ``maxrewrite`` reserve)."""
    need = limits.max_body_bytes + 65536
    return -(-need // 4096) * 4096


def header_limit_rules() -> list[str]:
    """The frontend lines, on every route and with or without a model's limits, that answer a URI or a header line
    Triton's HTTP parser would drop (414/431 instead of the 502 HAProxy would give for the closed connection)."""
    return [
        _reject(414, f"the URI is over {MAX_HEADER_LINE_BYTES} bytes", f"{{ url,length gt {MAX_HEADER_LINE_BYTES} }}"),
        _reject(431, f"a header line is over {MAX_HEADER_LINE_BYTES} bytes",
                f"{{ req.hdrs -m reg [^\\r\\n]{{{MAX_HEADER_LINE_BYTES},}} }}"),
    ]


def frontend_rules(limits: AdmissionLimits, infer_regex: str, body_timeout_s: int) -> list[str]:
    """The frontend lines that admit or answer an inference request (placed before the route allowlist)."""
    lim = limits
    names = " ".join(i.name for i in lim.inputs)
    n = len(lim.inputs)
    cond = "infer METH_POST"
    lines = [
        f"    # Admission ({__name__}): {lim.describe()}",
        f"    # from {lim.source}.",
        f"    # Body limit {lim.max_body_bytes} bytes = {_body_terms(lim)} x {JSON_BYTES_PER_ELEMENT} bytes per JSON "
        f"value + {BODY_SLACK_BYTES}.",
        "    # What is checked here and what is left to Triton: recforge/serving/loadbalancer/admission.py.",
        f"    acl infer path_reg {infer_regex}",
        "    acl binary req.hdr(inference-header-content-length) -m found",
        f"    http-request set-var(txn.infer) bool(true) if {cond}",
        _reject(413, f"Content-Length is over {lim.max_body_bytes} bytes, the largest valid request for "
                     f"{lim.model} ({_limit_words(lim)})",
                f"{cond} {{ req.hdr_val(content-length) gt {lim.max_body_bytes} }}"),
        f"    http-request wait-for-body time {body_timeout_s}s if {cond}",
        _reject(413, f"request body is over {lim.max_body_bytes} bytes, the largest valid request for "
                     f"{lim.model} ({_limit_words(lim)})",
                f"{cond} {{ req.body_len gt {lim.max_body_bytes} }}"),
        "    http-request set-var(txn.header_length) req.hdr_val(inference-header-content-length) "
        f"if {cond} binary",
        _reject(400, "Inference-Header-Content-Length must be an integer from 1 to the body size",
                f"{cond} binary !{{ var(txn.header_length) -m int ge 1 }}"),
        _reject(400, "Inference-Header-Content-Length is larger than the body",
                f"{cond} binary {{ req.body_len,sub(txn.header_length) lt 0 }}"),
        _reject(400, "the request body is not a complete JSON object (it does not end with })",
                f"{cond} !binary !{{ req.body -m reg [}}][[:space:]]*$ }}"),
        _reject(400, f"Inference-Header-Content-Length is over {MAX_JSON_HEADER_BYTES}: the JSON header of a binary "
                     "request names the inputs and their shapes",
                f"{cond} binary {{ var(txn.header_length) -m int gt {MAX_JSON_HEADER_BYTES} }}"),
        # the JSON the checks below read, copied once: of a binary request, the first MAX_JSON_HEADER_BYTES (its
        # JSON header, then tensor bytes json_query never reaches); json_query over the whole buffered body cost
        # ~1 ms of balancer CPU per 29 KB request (45 copies of it)
        f"    http-request set-var(txn.json) req.body,bytes(0,{MAX_JSON_HEADER_BYTES}) if {cond} binary",
        f"    http-request set-var(txn.json) req.body if {cond} !binary",
    ]
    groups: dict[str, list[str]] = {}  # what a first dimension counts -> the inputs that share it
    for item in lim.inputs:
        groups.setdefault(item.leading, []).append(item.name)
    for i in range(n):
        lines += [
            f"    http-request set-var(txn.name{i}) var(txn.json),json_query('$.inputs[{i}].name') if {cond}",
            _reject(400, f"inputs[{i}].name is missing: the body must be a JSON object whose inputs list has the "
                         f"{n} inputs of {lim.model} ({names})", f"{cond} !{{ var(txn.name{i}) -m found }}"),
            _reject(400, f"inputs[{i}].name is not an input of {lim.model} (expected one of {names})",
                    f"{cond} !{{ var(txn.name{i}) -m str {names} }}"),
            f"    http-request set-var(txn.datatype{i}) var(txn.json),json_query('$.inputs[{i}].datatype') if {cond}",
            f"    http-request set-var(txn.batch{i}) var(txn.json),json_query('$.inputs[{i}].shape[0]') if {cond}",
            _reject(400, f"inputs[{i}].shape[0] ({FIRST_DIM[BATCH] if BATCH in groups else 'its first dimension'}) "
                         f"must be an integer from {_smallest(lim)} to {_largest(lim)}",
                    f"{cond} !{{ var(txn.batch{i}) -m reg ^(0|[1-9][0-9]{{0,{MAX_BATCH_DIGITS - 1}}})$ }}"),
        ]
        for leading, members in groups.items():
            if len(members) < 2:
                continue
            shared, member = f"txn.{leading}_dim", f"{{ var(txn.name{i}) -m str {' '.join(members)} }}"
            lines += [
                f"    http-request set-var({shared}) var(txn.batch{i}) "
                f"if {cond} {member} !{{ var({shared}) -m found }}",
                _reject(400, f"inputs[{i}].shape[0] differs from {FIRST_DIM[leading]} of the inputs before it: "
                             f"{', '.join(members)} have the same first dimension",
                        f"{cond} {member} !{{ var(txn.batch{i}),sub({shared}) -m int 0 }}"),
            ]
        for item in lim.inputs:
            is_item = f"{{ var(txn.name{i}) -m str {item.name} }}"
            low, high = LEADING_MIN[item.leading], lim.leading_max(item)
            lines.append(_reject(400, _over_message(i, item, lim),
                                 f"{cond} {is_item} !{{ var(txn.batch{i}) -m int {low}:{high} }}"))
            shape = _shape(item)
            lines.append(_reject(400, f"input {item.name} must have datatype {item.datatype}",
                                 f"{cond} {is_item} !{{ var(txn.datatype{i}) -m str {item.datatype} }}"))
            for j, dim in enumerate(item.dims, start=1):
                lines.append(_reject(
                    400, f"input {item.name} must have shape {shape} ({LEADING_SYMBOL[item.leading]} from {low} to "
                         f"{high})",
                    f"{cond} {is_item} !{{ var(txn.json),json_query('$.inputs[{i}].shape[{j}]') -m str {dim} }}"))
            lines.append(_reject(
                400, f"input {item.name} must have shape {shape}: {len(item.dims) + 1} dimensions",
                f"{cond} {is_item} "
                f"{{ var(txn.json),json_query('$.inputs[{i}].shape[{len(item.dims) + 1}]') -m found }}"))
    lines.append(_reject(400, f"the request has more than the {n} inputs of {lim.model} ({names})",
                         f"{cond} {{ var(txn.json),json_query('$.inputs[{n}].name') -m found }}"))
    return lines


FIRST_DIM = {BATCH: "the batch dimension", ITEMS: "the number of items", IDS: "the number of ids"}
LIMIT_NAME = {BATCH: "max_batch_size", ITEMS: "max_items_per_request", IDS: "max_ids_per_request"}


def _limit_words(lim: AdmissionLimits) -> str:
    if lim.max_ids:
        return f"max_items_per_request {lim.max_batch_size}, max_ids_per_request {lim.max_ids}"
    return f"max_batch_size {lim.max_batch_size}"


def _body_terms(lim: AdmissionLimits) -> str:
    if not lim.max_ids:
        return f"max_batch_size {lim.max_batch_size} x {lim.elements_per_row} values per row"
    items = sum(_product(i.dims) for i in lim.inputs if i.leading != IDS)
    ids = sum(_product(i.dims) for i in lim.inputs if i.leading == IDS)
    return f"({lim.max_batch_size} items x {items} values + {lim.max_ids} ids x {ids} values)"


def _smallest(lim: AdmissionLimits) -> int:
    return min(LEADING_MIN[i.leading] for i in lim.inputs)


def _largest(lim: AdmissionLimits) -> int:
    return max(lim.leading_max(i) for i in lim.inputs)


def _over_message(i: int, item: InputLimit, lim: AdmissionLimits) -> str:
    if item.leading == BATCH:
        return f"inputs[{i}].shape[0] (the batch dimension) is over max_batch_size {lim.max_batch_size}"
    return (f"input {item.name}: shape[0] ({FIRST_DIM[item.leading]}) must be from {LEADING_MIN[item.leading]} to "
            f"{LIMIT_NAME[item.leading]} {lim.leading_max(item)}")


def backend_rules() -> list[str]:
    """The backend lines that answer 400, with Triton's message, a 500 Triton gave to a request it could not parse."""
    parse_errors = " ".join(f"'{e}'" for e in TRITON_PARSE_ERRORS)
    return [
        "    # Triton answers 500 to some requests it cannot parse; those are the client's errors: 400, Triton's",
        "    # message kept (recforge/serving/loadbalancer/admission.py).",
        "    http-response wait-for-body time 1s if { status 500 } { var(txn.infer) -m bool }",
        f"    http-response set-status 400 if {{ status 500 }} {{ var(txn.infer) -m bool }} "
        f"{{ res.body -m sub {parse_errors} }}",
    ]


def common_limits(limits: Sequence[AdmissionLimits]) -> AdmissionLimits:
    """What every one of ``limits`` admits (nodes serving different versions side by side, during a rollout): the
    smallest ``max_batch_size`` (and ``max_ids``); the inputs must be the same (a client cannot send a request
    valid for both)."""
    if not limits:
        raise ConfigError("no model config to admit requests for")
    first = limits[0]
    for other in limits[1:]:
        if other.inputs != first.inputs:
            raise ConfigError(f"{other.source} and {first.source} have different inputs ({other.describe()} vs "
                              f"{first.describe()}): one balancer route cannot admit requests valid for both")
    sources = list(dict.fromkeys(item.source for item in limits))
    return AdmissionLimits(first.model, min(item.max_batch_size for item in limits), first.inputs,
                           " and ".join(sources), max_ids=min(item.max_ids for item in limits))


def read_limits(config_pbtxt: str | Path) -> AdmissionLimits:
    """The limits of the model whose config.pbtxt is at ``config_pbtxt`` (the file the nodes serve)."""
    return limits_from_model_config(parse_config_pbtxt(Path(config_pbtxt)), str(config_pbtxt))
