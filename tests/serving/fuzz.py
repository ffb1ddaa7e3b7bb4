"""Hypothesis strategies of the fuzz campaign against the KServe v2 HTTP inference protocol of one served model
(tests/serving/test_fuzz.py sends them through a real fleet's balancer; no test functions here).

Every :class:`Case` is a whole HTTP/1.1 request as it goes on the wire, built from a valid request of the model
(names, datatypes, dims and ``max_batch_size`` read from its config.pbtxt, ids within each input's vocabulary) and,
except for the ``valid`` controls, broken so that it cannot be valid: by one mutation, or for the tensor families
(shape, datatype, names, values) by up to three, each on another input, so that none can undo another. The family
of the first mutation names the case; each case carries the statuses it may be answered with:

==========  ===============================================================================  ===============
family      mutations                                                                        answer
==========  ===============================================================================  ===============
valid       random batch 1..max_batch_size and in-range values; input order, id, outputs,    200, B rows out
            JSON layout, binary-data encoding, chunked transfer, content type, extra headers
shape       rank +-1, dim 0 / negative / huge / float / string / null, inner dim, data       4xx
            length, shape not a list, batch over max_batch_size, batch differing by input
datatype    another KServe type, unknown, lowercase, not a string, missing                   4xx
names       unknown, other case, not a string, missing key, input missing / duplicated /     4xx
            extra
values      id over its vocabulary / under minus it / over int64, float or number-as-string  4xx
            in an int tensor, bool / null / object as a value
json        truncated, control bytes spliced in, trailing garbage, not an object, wrong      4xx
            types for inputs/outputs/parameters, bad classification, deep nesting, huge
            strings, NaN/Infinity literals
binary      Inference-Header-Content-Length missing / <= 0 / not a number / over the body /  4xx
            under or over the JSON header; tensor data short or long; binary_data_size
            wrong or absurd; shape not matching the data
http        Content-Length short / not a number / twice; chunk sizes that lie or are not     4xx
            hex; a header line or the URI over 8 KiB, > 101 headers, control bytes in a
            header name
method      any method but POST on the infer route                                           400, 403, 405
route       the blocked APIs (repository, load/unload, logging, trace, shared memory,        403
            statistics, config writes), also with a trailing slash, a query or odd case
raw         random bytes as the body, random bytes as the whole request                      4xx
==========  ===============================================================================  ===============

Large data (tensor values, huge strings, deep nesting) comes from a drawn seed or a drawn size, not from drawing
every byte, so an example stays within Hypothesis' buffer. :func:`slow_cases` are the two requests whose body never
completes (answered 408 after HAProxy's body timeout); the campaign sends them once, beside the generated ones.
:func:`plan` gives every mutation kind its own example budget. One module over ~500 lines on purpose: every family
builds on the same valid request and request writer (:class:`Draft`), and the table above is the one place that
says what the campaign covers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from recforge.contracts.features import FeatureSpec
from recforge.inference.model_repo import parse_config_pbtxt
from recforge.serving.loadbalancer.admission import KSERVE_DATATYPES, AdmissionLimits, InputLimit, read_limits

OK = frozenset({200})
CLIENT_ERROR = frozenset(range(400, 500))
FORBIDDEN = frozenset({403})
NOT_ALLOWED = frozenset({400, 403, 405})
TIMED_OUT = frozenset({408})
HEADER_LINE_LIMIT = 8 * 1024  # a header line or URI over this is refused (Triton's HTTP parser stops at 8191 bytes)
MAX_HEADERS = 101  # HAProxy's tune.http.maxhdr
RAW = "\u0000raw\u0000"  # a placeholder string replaced by raw JSON text (NaN, deep nesting) after json.dumps

# The mutations of each family; the campaign runs every one with its own example budget.
SHAPE_KINDS = ("rank_extra", "rank_missing", "dim_zero", "dim_negative", "dim_huge", "dim_float", "dim_string",
               "dim_null", "inner_dim_wrong", "data_short", "data_long", "shape_not_list", "batch_mismatch",
               "batch_over_max")
DATATYPE_KINDS = ("other_type", "unknown_type", "lowercase", "not_a_string", "missing")
NAME_KINDS = ("unknown_name", "name_case", "name_not_string", "name_missing")
INPUT_LIST_KINDS = ("missing_input", "duplicate_input", "extra_input")  # names, on the list of inputs
VALUE_KINDS = ("number_as_string", "bool_value", "null_value", "object_value", "id_over_int64", "float_in_int",
               "id_over_vocabulary", "id_under_vocabulary")
JSON_KINDS = ("truncated", "bytes_spliced", "trailing_garbage", "not_an_object", "inputs_wrong_type",
              "outputs_wrong", "parameters_wrong", "classification_invalid", "deep_nesting", "huge_string",
              "nan_literal")
BINARY_KINDS = ("header_length_missing", "header_length_not_positive", "header_length_not_a_number",
                "header_length_over_body", "header_length_under_json", "header_length_over_json", "data_short",
                "data_long", "binary_data_size_wrong", "binary_data_size_absurd", "shape_not_matching_data")
HTTP_KINDS = ("content_length_short", "content_length_not_a_number", "content_length_twice", "chunk_size_short",
              "chunk_size_not_hex", "header_line_too_long", "header_name_too_long", "too_many_headers",
              "header_name_control_bytes", "uri_too_long")
RAW_KINDS = ("random_body", "random_request")


@dataclass(frozen=True)
class ServedModel:
    """What a valid request of the served model looks like: its admission limits (names, KServe datatypes, dims,
    max_batch_size), its output names, for each integer input the vocabulary size of each column, and the columns
    the model looks up in an embedding table (an id outside its vocabulary there is an error; the model may
    ignore the other columns, so a wrong id there is not)."""

    limits: AdmissionLimits
    outputs: tuple[str, ...]
    vocabularies: Mapping[str, tuple[int, ...]]
    looked_up: Mapping[str, tuple[int, ...]]

    @property
    def model(self) -> str:
        return self.limits.model

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.limits.inputs)

    @property
    def infer_path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    def spec(self, name: str) -> InputLimit:
        return next(i for i in self.limits.inputs if i.name == name)


def served_model(config_pbtxt: str | Path, spec: FeatureSpec, looked_up: Mapping[str, tuple[int, ...]],
                 ) -> ServedModel:
    """The served model from its config.pbtxt, with the id vocabularies of the feature contract ``spec`` and the
    columns of each input the model looks up (``{"sparse": (0, 1)}``)."""
    outputs = tuple(o["name"] for o in parse_config_pbtxt(Path(config_pbtxt)).get("output", []))
    vocabularies = {"sparse": tuple(spec.sparse_cardinalities), "genres": (spec.num_genres,),
                    "history": (spec.num_items,)}
    return ServedModel(read_limits(config_pbtxt), outputs, vocabularies, dict(looked_up))


@dataclass(frozen=True)
class Case:
    """One request: ``wire`` is sent as is on a fresh connection; ``rows`` is the batch a valid case asks for."""

    family: str
    mutations: tuple[str, ...]
    wire: bytes
    expect: frozenset[int]
    method: str = "POST"
    rows: int = 0

    def describe(self, limit: int = 600) -> str:
        shown = self.wire if len(self.wire) <= limit else self.wire[:limit] + b"..."
        return f"{self.family} {'+'.join(self.mutations)} ({len(self.wire)} bytes): {shown!r}"


@dataclass
class Draft:
    """A request being built: method, path, headers and body, and how the body is framed (``Content-Length`` as
    given or true, or chunked: the body's chunks or ``chunks`` as given)."""

    path: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Content-Type", "application/json")])
    method: str = "POST"
    chunked: bool = False
    content_length: str | None = None  # as sent; None: the body's length
    chunks: bytes | None = None  # explicit chunked framing (a lie); None: chunks of the body

    def wire(self) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        head += [f"{k}: {v}" for k, v in self.headers]
        if self.chunked:
            head.append("Transfer-Encoding: chunked")
            payload = self.chunks if self.chunks is not None else chunk(self.body)
        else:
            head.append(f"Content-Length: {self.content_length or len(self.body)}")
            payload = self.body
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def chunk(body: bytes, size: int = 4096) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


# ---------------------------------------------------------------------------------------------- valid requests


def tensor_values(served: ServedModel, item: InputLimit, rows: int, rng: np.random.Generator) -> list:
    """``rows`` rows of in-range values of one input, flattened (ids within each column's vocabulary)."""
    shape = (rows, *item.dims)
    if item.datatype.startswith("FP"):
        return rng.normal(0, 1, size=shape).astype(np.float32).ravel().tolist()
    bounds = served.vocabularies.get(item.name, (1,))
    columns = np.broadcast_to(np.array(bounds), shape)  # one vocabulary per column of the last dim
    return (rng.random(shape) * columns).astype(np.int64).ravel().tolist()


def valid_payload(served: ServedModel, rows: int, rng: np.random.Generator) -> dict:
    return {"inputs": [{"name": i.name, "shape": [rows, *i.dims], "datatype": i.datatype,
                        "data": tensor_values(served, i, rows, rng)} for i in served.limits.inputs]}


NUMPY = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}


def binary_body(payload: dict) -> tuple[bytes, bytes]:
    """(JSON header, tensor bytes) of ``payload`` in the binary-data extension (every input as raw bytes)."""
    header = copy.deepcopy(payload)
    blobs = []
    for tensor in header["inputs"]:
        blob = np.asarray(tensor.pop("data"), NUMPY[tensor["datatype"]]).tobytes()
        tensor["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    return json.dumps(header, separators=(",", ":")).encode(), b"".join(blobs)


@st.composite
def base(draw, served: ServedModel, max_rows: int | None = None) -> tuple[dict, int]:
    """A valid payload (a dict) of a drawn batch size, and that size."""
    rows = draw(st.integers(1, max_rows or served.limits.max_batch_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return valid_payload(served, rows, rng), rows


@st.composite
def valid_cases(draw, served: ServedModel) -> Case:
    payload, rows = draw(base(served))
    notes = []
    if draw(st.booleans()):
        payload["inputs"] = draw(st.permutations(payload["inputs"]))
        notes.append("input_order")
    if draw(st.booleans()):
        payload["id"] = draw(st.text(max_size=40))
        notes.append("id")
    if draw(st.booleans()):
        payload["outputs"] = [{"name": o, "parameters": {"binary_data": False}} for o in served.outputs]
        notes.append("outputs")
    encoding = draw(st.sampled_from(["json", "json_indented", "binary"]))
    if encoding == "binary":
        header, blobs = binary_body(payload)
        draft = Draft(served.infer_path, header + blobs, [("Content-Type", "application/octet-stream"),
                                                          ("Inference-Header-Content-Length", str(len(header)))])
    else:
        text = json.dumps(payload, indent=2 if encoding == "json_indented" else None)
        draft = Draft(served.infer_path, text.encode())
        if draw(st.booleans()):  # Triton reads JSON whatever the content type says
            draft.headers = [("Content-Type", draw(st.sampled_from(["text/plain", "application/x-anything"])))]
            notes.append("content_type")
    if draw(st.booleans()):
        draft.chunked = True
        notes.append("chunked")
    extra = draw(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 2000)), max_size=20))
    draft.headers += [(f"X-Fuzz-{n}", "v" * size) for n, size in extra]
    return Case("valid", (encoding, *notes), draft.wire(), OK, rows=rows)


# ---------------------------------------------------------------------------------------------- tensor mutations

# A tensor mutation changes one input (``index``) of a payload so that it cannot be valid, whatever the other
# inputs are; a whole-request mutation changes the list of inputs. Each returns its name.
Mutation = Callable[..., str]


def current_rows(tensor: dict) -> int:
    return len(tensor.get("data", [])) // max(1, int(np.prod(tensor["shape"][1:] or [1])))


def shape_mutation(draw, served: ServedModel, payload: dict, index: int, kind: str | None = None) -> str:
    tensor = payload["inputs"][index]
    shape = list(tensor["shape"])
    kind = kind or draw(st.sampled_from(SHAPE_KINDS))
    at = draw(st.integers(0, len(shape) - 1))
    if kind == "rank_extra":
        tensor["shape"] = shape + [1]
    elif kind == "rank_missing":
        tensor["shape"] = shape[:draw(st.integers(0, len(shape) - 1))]
    elif kind in ("dim_zero", "dim_negative", "dim_huge", "dim_float", "dim_string", "dim_null"):
        shape[at] = {"dim_zero": 0, "dim_negative": -draw(st.integers(1, 2**40)),
                     "dim_huge": draw(st.sampled_from([2**31, 10**9 + 7, 10**12, 2**63 - 1, 2**64, 10**30])),
                     "dim_float": shape[at] + draw(st.sampled_from([0.5, 0.25, 1e-9])), "dim_string": str(shape[at]),
                     "dim_null": None}[kind]
        tensor["shape"] = shape
    elif kind == "inner_dim_wrong":
        item = served.spec(tensor["name"])
        dim = item.dims[-1] + draw(st.integers(-item.dims[-1] + 1, 64).filter(bool))
        tensor["shape"] = [shape[0], *item.dims[:-1], dim]
        tensor["data"] = [tensor["data"][0]] * int(np.prod(tensor["shape"]))
    elif kind == "data_short":
        tensor["data"] = tensor["data"][:-draw(st.integers(1, len(tensor["data"])))]
    elif kind == "data_long":
        tensor["data"] = tensor["data"] + tensor["data"][:1] * draw(st.integers(1, 64))
    elif kind == "shape_not_list":
        tensor["shape"] = draw(st.sampled_from([shape[0], str(shape), {"0": shape[0]}, None, True]))
    else:  # this input has other rows than the request's batch (or more than max_batch_size), data to match
        rows = current_rows(tensor)
        most = served.limits.max_batch_size
        other = draw(st.integers(most + 1, most + 64) if kind == "batch_over_max"
                     else st.integers(1, most).filter(lambda r: r != rows))
        tensor["shape"] = [other, *shape[1:]]
        tensor["data"] = (tensor["data"] * (other // max(rows, 1) + 1))[:other * int(np.prod(shape[1:]))]
    return kind


def datatype_mutation(draw, served: ServedModel, payload: dict, index: int, kind: str | None = None) -> str:
    tensor = payload["inputs"][index]
    right = served.spec(tensor["name"]).datatype if tensor["name"] in served.names else "FP32"
    kind = kind or draw(st.sampled_from(DATATYPE_KINDS))
    if kind == "other_type":
        tensor["datatype"] = draw(st.sampled_from(sorted(set(KSERVE_DATATYPES.values()) - {right})))
    elif kind == "unknown_type":
        tensor["datatype"] = draw(st.text(max_size=12).filter(lambda t: t not in KSERVE_DATATYPES.values()))
    elif kind == "lowercase":
        tensor["datatype"] = right.lower()
    elif kind == "not_a_string":
        tensor["datatype"] = draw(st.sampled_from([64, None, [right], {"type": right}, True]))
    else:
        del tensor["datatype"]
    return kind


def name_mutation(draw, served: ServedModel, payload: dict, index: int, kind: str | None = None) -> str:
    tensor = payload["inputs"][index]
    kind = kind or draw(st.sampled_from(NAME_KINDS))
    if kind == "unknown_name":
        tensor["name"] = draw(st.text(max_size=20).filter(lambda t: t not in served.names))
    elif kind == "name_case":
        tensor["name"] = tensor["name"].upper() if tensor["name"].upper() != tensor["name"] else "x" + tensor["name"]
    elif kind == "name_not_string":
        tensor["name"] = draw(st.sampled_from([1, None, [tensor["name"]], False]))
    else:
        del tensor["name"]
    return kind


def input_list_mutation(draw, served: ServedModel, payload: dict, kind: str) -> str:
    """A whole-request mutation (applied first, before any tensor mutation): an input missing, a name twice, or
    an input too many."""
    inputs = payload["inputs"]
    if kind == "missing_input":
        del inputs[draw(st.integers(0, len(inputs) - 1))]
    elif kind == "duplicate_input":  # one input replaced by a copy of another: a name twice, one name missing
        source, target = draw(st.permutations(range(len(inputs))))[:2]
        inputs[target] = copy.deepcopy(inputs[source])
    elif kind == "extra_input":
        extra = copy.deepcopy(draw(st.sampled_from(inputs)))
        if draw(st.booleans()):
            extra["name"] = draw(st.text(min_size=1, max_size=12).filter(lambda t: t not in served.names))
        inputs.insert(draw(st.integers(0, len(inputs))), extra)
    return kind


def value_kinds(served: ServedModel, tensor: dict) -> tuple[str, ...]:
    """The value mutations that break ``tensor``: ids out of range only in a column the model looks up."""
    integer = tensor.get("datatype") in ("INT64", "INT32")
    looked_up = integer and bool(served.looked_up.get(tensor.get("name"), ()))
    return VALUE_KINDS[:4] + VALUE_KINDS[4:6] * integer + VALUE_KINDS[6:] * looked_up


def value_mutation(draw, served: ServedModel, payload: dict, index: int, kind: str | None = None) -> str:
    tensor = payload["inputs"][index]
    columns = served.looked_up.get(tensor["name"], ())
    kind = kind or draw(st.sampled_from(value_kinds(served, tensor)))
    data = tensor["data"]
    if not data:
        tensor["data"] = data = [0]
    at = draw(st.integers(0, len(data) - 1))
    if kind in ("id_over_vocabulary", "id_under_vocabulary"):  # in a column the model looks up
        width = served.spec(tensor["name"]).dims[-1]
        column = draw(st.sampled_from(columns))
        at = at - at % width + column
        vocabulary = served.vocabularies[tensor["name"]][column]
        beyond = draw(st.integers(0, 2**62))
        data[at] = vocabulary + beyond if kind == "id_over_vocabulary" else -vocabulary - 1 - beyond
    elif kind == "id_over_int64":
        data[at] = 2**63 + draw(st.integers(0, 2**64))
    elif kind == "float_in_int":
        data[at] = data[at] + 0.5
    else:
        data[at] = {"number_as_string": str(data[at]), "bool_value": True, "null_value": None,
                    "object_value": {"v": data[at]}}[kind]
    return kind


TENSOR_FAMILIES: dict[str, Mutation] = {"shape": shape_mutation, "datatype": datatype_mutation,
                                        "names": name_mutation, "values": value_mutation}


@st.composite
def tensor_cases(draw, served: ServedModel, family: str, kind: str) -> Case:
    """``kind`` of ``family`` (on the list of inputs, or on one input), then 0-2 mutations of any tensor family,
    each on another input."""
    payload, _ = draw(base(served, max_rows=32))
    inputs = payload["inputs"]
    first = None
    if kind in INPUT_LIST_KINDS:
        input_list_mutation(draw, served, payload, kind)
    else:
        fits = [i for i, tensor in enumerate(inputs) if family != "values" or kind in value_kinds(served, tensor)]
        first = draw(st.sampled_from(fits))
        TENSOR_FAMILIES[family](draw, served, payload, first, kind)
    applied = [kind]
    others = [i for i in draw(st.permutations(range(len(inputs)))) if i != first]
    for name, index in zip(draw(st.lists(st.sampled_from(sorted(TENSOR_FAMILIES)), max_size=2)), others,
                           strict=False):
        applied.append(f"{name}.{TENSOR_FAMILIES[name](draw, served, payload, index)}")
    draft = Draft(served.infer_path, json.dumps(payload).encode())
    draft.chunked = draw(st.booleans())
    return Case(family, tuple(applied), draft.wire(), CLIENT_ERROR)


# ---------------------------------------------------------------------------------------------- JSON structure

CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r")  # never valid unescaped, in or out of strings


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@st.composite
def json_cases(draw, served: ServedModel, kind: str) -> Case:
    payload, _ = draw(base(served, max_rows=32))
    tensor = draw(st.sampled_from(payload["inputs"]))
    raw = None
    if kind == "inputs_wrong_type":
        payload["inputs"] = draw(st.sampled_from([{"name": tensor["name"]}, "inputs", 4, None, True, [], [[]], [1]]))
    elif kind == "outputs_wrong":
        output = served.outputs[0]
        payload["outputs"] = draw(st.sampled_from([
            output, 1, {"name": output}, [1], [{"name": "no-such-output"}], [{}],
            [{"name": output, "parameters": {"binary_data": "yes"}}]]))
    elif kind == "parameters_wrong":
        payload["parameters"] = draw(st.sampled_from([[1, 2], "p", 3, {"p": [1]}, {"p": {"q": 1}},
                                                      {"timeout": -5}, {"binary_data_output": "yes"}]))
    elif kind == "classification_invalid":
        payload["outputs"] = [{"name": served.outputs[0],
                               "parameters": {"classification": draw(st.sampled_from([-1, "3", 1.5, None, [2]]))}}]
    elif kind == "deep_nesting":
        where = draw(st.sampled_from(["inputs", "data", "shape", "parameters", "outputs"]))
        depth = draw(st.integers(50, 100_000 if where != "parameters" else 30_000))  # within the body limit
        if where in ("data", "shape"):
            tensor[where] = RAW
        else:
            payload[where] = RAW
        raw = nested(depth) if where != "parameters" else "{" + '"p": {' * depth + '"q": 1' + "}" * depth + "}"
    elif kind == "huge_string":
        size = draw(st.integers(HEADER_LINE_LIMIT, 200_000))
        where = draw(st.sampled_from(["name", "datatype", "data"]))
        text = draw(st.characters(codec="utf-8", exclude_categories=["Cs"])) * size
        if where == "data":
            tensor["data"][0] = text
        else:
            tensor[where] = text
    elif kind == "nan_literal":
        where = draw(st.sampled_from(["shape", "name", "data"]))
        if where == "data" and tensor["datatype"].startswith("FP"):  # Triton reads NaN as a float: not an error
            where = "shape"
        raw = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        if where == "shape":
            tensor["shape"][draw(st.integers(0, len(tensor["shape"]) - 1))] = RAW
        elif where == "name":
            tensor["name"] = RAW
        else:
            tensor["data"][0] = RAW
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()))
    if raw is not None:
        text = text.replace(json.dumps(RAW), raw)
    body = text.encode()
    if kind == "truncated":  # no strict prefix of a JSON object is one
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif kind == "bytes_spliced":
        noise = bytearray(draw(st.binary(max_size=24)))
        noise.insert(draw(st.integers(0, len(noise))), draw(st.sampled_from(CONTROL_BYTES)))
        at = draw(st.integers(0, len(body)))
        body = body[:at] + bytes(noise) + body[at:]
    elif kind == "trailing_garbage":
        body += draw(st.sampled_from([b"{}", b" {\"inputs\": []}", b"x}", b",}", b"]}"]))
    elif kind == "not_an_object":
        body = draw(st.sampled_from([b"", b" ", b"[]", b"[" + body + b"]", b'"inputs"', b"null", b"1", b"true",
                                     b"{}", b'{"inputs": null}', b'{"inputs": {}}']))
    draft = Draft(served.infer_path, body)
    draft.chunked = draw(st.booleans())
    return Case("json", (kind,), draft.wire(), CLIENT_ERROR)


# ---------------------------------------------------------------------------------------------- binary data


@st.composite
def binary_cases(draw, served: ServedModel, kind: str) -> Case:
    payload, rows = draw(base(served, max_rows=32))
    index = draw(st.integers(0, len(payload["inputs"]) - 1))
    header, blobs = binary_body(payload)
    if kind in ("binary_data_size_wrong", "binary_data_size_absurd", "shape_not_matching_data"):
        document = json.loads(header)
        tensor = document["inputs"][index]
        if kind == "binary_data_size_wrong":
            size = tensor["parameters"]["binary_data_size"]
            tensor["parameters"]["binary_data_size"] = size + draw(st.integers(-size, 4096).filter(bool))
        elif kind == "binary_data_size_absurd":
            tensor["parameters"]["binary_data_size"] = draw(st.sampled_from([2**40, 2**63 - 1, -1, "8", 1.5, None]))
        else:
            tensor["shape"][0] = rows + draw(st.integers(-rows + 1, 64).filter(bool))
        header = json.dumps(document, separators=(",", ":")).encode()
    if kind == "data_short":
        blobs = blobs[:-draw(st.integers(1, len(blobs)))]
    elif kind == "data_long":
        blobs += bytes(draw(st.integers(1, 4096)))
    length = str(len(header))
    if kind == "header_length_not_positive":
        length = str(-draw(st.integers(0, 2**40)))
    elif kind == "header_length_not_a_number":
        length = draw(st.sampled_from([" ", "abc", "1e3", "0x10", "12.5", f"{len(header)} 1", "+-1"]))
    elif kind == "header_length_over_body":
        length = str(len(header) + len(blobs) + draw(st.integers(1, 2**40)))
    elif kind == "header_length_under_json":
        length = str(draw(st.integers(1, len(header) - 1)))
    elif kind == "header_length_over_json":
        length = str(len(header) + draw(st.integers(1, len(blobs))))
    headers = [("Content-Type", "application/octet-stream")]
    if kind != "header_length_missing":
        headers.append(("Inference-Header-Content-Length", length))
    draft = Draft(served.infer_path, header + blobs, headers)
    draft.chunked = draw(st.booleans())
    return Case("binary", (kind,), draft.wire(), CLIENT_ERROR)


# ---------------------------------------------------------------------------------------------- HTTP level


@st.composite
def http_cases(draw, served: ServedModel, kind: str) -> Case:
    payload, _ = draw(base(served, max_rows=16))
    draft = Draft(served.infer_path, json.dumps(payload).encode())
    too_long = draw(st.integers(HEADER_LINE_LIMIT + 1, 200_000))
    if kind == "content_length_short":
        draft.content_length = str(len(draft.body) - draw(st.integers(1, len(draft.body))))
    elif kind == "content_length_not_a_number":
        draft.content_length = draw(st.sampled_from(["-1", "abc", "1e3", "0x10", f"{len(draft.body)}.0", " "]))
    elif kind == "content_length_twice":
        draft.headers.append(("Content-Length", str(len(draft.body) - draw(st.integers(1, 9)))))
    elif kind in ("chunk_size_short", "chunk_size_not_hex"):
        draft.chunked = True
        size = (b"%x" % max(1, len(draft.body) - draw(st.integers(1, 64))) if kind == "chunk_size_short"
                else draw(st.sampled_from([b"zz", b"-5", b"0x10", b" ", b"1 2"])))
        draft.chunks = size + b"\r\n" + draft.body + b"\r\n0\r\n\r\n"
    elif kind == "header_line_too_long":
        draft.headers.append(("X-Fuzz", "a" * too_long))
    elif kind == "header_name_too_long":
        draft.headers.append(("X" * too_long, "1"))
    elif kind == "too_many_headers":
        draft.headers += [(f"X-Fuzz-{i}", "1") for i in range(MAX_HEADERS + draw(st.integers(0, 400)))]
    elif kind == "header_name_control_bytes":
        byte = chr(draw(st.sampled_from(CONTROL_BYTES + b" (),/;<=>?@[]{}\"")))
        draft.headers.append((f"X{byte}Fuzz", "1"))
    else:
        draft.path += "?q=" + "a" * too_long
    return Case("http", (kind,), draft.wire(), CLIENT_ERROR)


@st.composite
def method_cases(draw, served: ServedModel) -> Case:
    payload, _ = draw(base(served, max_rows=4))
    method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "post",
                                   "FUZZ"]))
    draft = Draft(served.infer_path, json.dumps(payload).encode(), method=method)
    return Case("method", (method,), draft.wire(), NOT_ALLOWED, method=method)


def blocked_routes(model: str) -> list[tuple[str, str]]:
    """(method, path) of the Triton APIs the balancer refuses: model control, logging, trace, shared memory,
    statistics, and writes to the model config."""
    return [("POST", "/v2/repository/index"), ("POST", f"/v2/repository/models/{model}/load"),
            ("POST", f"/v2/repository/models/{model}/unload"), ("GET", "/v2/logging"), ("POST", "/v2/logging"),
            ("GET", "/v2/trace/setting"), ("POST", "/v2/trace/setting"), ("GET", f"/v2/models/{model}/trace/setting"),
            ("GET", "/v2/systemsharedmemory/status"), ("POST", "/v2/systemsharedmemory/region/r/register"),
            ("POST", "/v2/systemsharedmemory/unregister"), ("GET", "/v2/cudasharedmemory/status"),
            ("POST", "/v2/cudasharedmemory/region/r/register"), ("GET", "/v2/models/stats"),
            ("GET", f"/v2/models/{model}/stats"), ("GET", f"/v2/models/{model}/versions/1/stats"),
            ("POST", f"/v2/models/{model}/config"), ("PUT", f"/v2/models/{model}/config")]


@st.composite
def route_cases(draw, served: ServedModel) -> Case:
    method, path = draw(st.sampled_from(blocked_routes(served.model)))
    variant = draw(st.sampled_from(["as_is", "trailing_slash", "query", "upper_case", "double_slash"]))
    path = {"as_is": path, "trailing_slash": path + "/", "query": path + "?x=1", "upper_case": path.upper(),
            "double_slash": path.replace("/v2/", "//v2/", 1)}[variant]
    draft = Draft(path, b'{"parameters": {"unload_dependents": true}}', method=method)
    return Case("route", (f"{method} {path}",), draft.wire(), FORBIDDEN, method=method)


@st.composite
def raw_cases(draw, served: ServedModel, kind: str) -> Case:
    if kind == "random_body":  # a body that is not a JSON object (its first non-blank byte is not "{")
        body = draw(st.binary(max_size=4096).filter(lambda b: not b.lstrip().startswith(b"{")))
        return Case("raw", ("random_body",), Draft(served.infer_path, body).wire(), CLIENT_ERROR)
    head = draw(st.binary(min_size=1, max_size=2048).filter(lambda b: b.strip(b"\r\n")))
    return Case("raw", ("random_request",), head.lstrip(b"\r\n") + b"\r\n\r\n", CLIENT_ERROR)


def plan(served: ServedModel, examples: int = 6) -> list[tuple[str, str, st.SearchStrategy[Case], int]]:
    """(family, mutation, strategy, example budget) of the campaign: every mutation kind is run on its own, so
    that each is covered however Hypothesis spreads its choices; the valid controls get 100 examples, the
    methods and the blocked routes 20 and 30, every other mutation ``examples``."""
    kinds: list[tuple[str, str, st.SearchStrategy[Case], int]] = [
        ("valid", "any", valid_cases(served), 100), ("method", "any", method_cases(served), 20),
        ("route", "any", route_cases(served), 30)]
    tensor_kinds = {"shape": SHAPE_KINDS, "datatype": DATATYPE_KINDS, "names": NAME_KINDS + INPUT_LIST_KINDS,
                    "values": VALUE_KINDS}
    kinds += [(family, kind, tensor_cases(served, family, kind), examples)
              for family, family_kinds in tensor_kinds.items() for kind in family_kinds]
    for family, family_kinds, strategy in (("json", JSON_KINDS, json_cases), ("binary", BINARY_KINDS, binary_cases),
                                           ("http", HTTP_KINDS, http_cases), ("raw", RAW_KINDS, raw_cases)):
        kinds += [(family, kind, strategy(served, kind), examples) for kind in family_kinds]
    return kinds


def slow_cases(served: ServedModel) -> Sequence[Case]:
    """Requests whose body never completes (the client keeps the connection open): HAProxy answers 408 when its
    body timeout (``timeout http-request``) passes."""
    body = json.dumps(valid_payload(served, 2, np.random.default_rng(0))).encode()
    over = Draft(served.infer_path, body, content_length=str(len(body) + 100))
    chunked = Draft(served.infer_path, body, chunked=True, chunks=b"%x\r\n" % (len(body) + 100) + body)
    return [Case("http", ("content_length_over_body",), over.wire(), TIMED_OUT),
            Case("http", ("chunk_never_ends",), chunked.wire(), TIMED_OUT)]
