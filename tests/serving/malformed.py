"""A deterministic list of malformed KServe v2 inference requests for a model of the shared tensor contract
(recforge.contracts.features), and one valid request: the regression list of tests/serving/test_admission.py.

Each case is (kind, headers, body bytes); ``max_batch`` and the per-input dims come from the served model's config.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

from recforge.contracts.features import OUTPUT_NAME

DTYPES = {"sparse": "INT64", "genres": "INT64", "history": "INT64", "dense": "FP32"}
JSON = {"Content-Type": "application/json"}


def tensor(name: str, batch: int, dims: Mapping[str, int], *, shape: list[int] | None = None,
           datatype: str | None = None, data: list | None = None) -> dict:
    shape = shape if shape is not None else [batch, dims[name]]
    if data is None:  # as many values as the shape says (every case with an odd shape passes its own data)
        count = int(np.prod(shape))
        data = [0.5] * count if DTYPES[name] == "FP32" else [1] * count
    return {"name": name, "shape": shape, "datatype": datatype or DTYPES[name], "data": data}


def request(batch: int, dims: Mapping[str, int], **override: dict) -> dict:
    return {"inputs": [override.get(name) or tensor(name, batch, dims) for name in DTYPES]}


def body(payload: dict) -> bytes:
    return json.dumps(payload).encode()


def valid_request(dims: Mapping[str, int], batch: int = 2) -> tuple[dict[str, str], bytes]:
    return JSON, body(request(batch, dims))


def binary_request(dims: Mapping[str, int], batch: int, *, header_extra: int = 0,
                   truncate: int = 0) -> tuple[dict[str, str], bytes]:
    """A binary-data request (KServe v2 binary extension); ``header_extra`` makes Inference-Header-Content-Length
    claim more than the JSON header, ``truncate`` cuts bytes off the tensor data."""
    inputs, blobs = [], []
    for name in DTYPES:
        array = np.ones((batch, dims[name]), np.float32 if DTYPES[name] == "FP32" else np.int64)
        blob = array.tobytes()
        inputs.append({"name": name, "shape": list(array.shape), "datatype": DTYPES[name],
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    data = header + b"".join(blobs)
    if truncate:
        data = data[:-truncate]
    return ({"Content-Type": "application/octet-stream",
             "Inference-Header-Content-Length": str(len(header) + header_extra)}, data)


def malformed_requests(dims: Mapping[str, int], max_batch: int,
                       max_body: int = 1 << 20) -> list[tuple[str, dict[str, str], bytes]]:
    """(kind, headers, body) of each malformed request; none of them can be valid for the model (``max_body``: the
    largest valid body, which ``body_over_limit`` passes by 1 KiB)."""
    huge = 10**12
    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("wrong_dtype", JSON, body(request(2, dims, dense=tensor("dense", 2, dims, datatype="INT64",
                                                                   data=[1] * 2 * dims["dense"])))),
        ("dtype_string_unknown", JSON, body(request(2, dims, dense=tensor("dense", 2, dims, datatype="FP99")))),
        ("shape_mismatch_data", JSON, body(request(2, dims, dense=tensor("dense", 2, dims, shape=[2, dims["dense"]],
                                                                          data=[0.5])))),
        ("shape_wrong_inner_dim", JSON, body(request(2, dims, history=tensor(
            "history", 2, dims, shape=[2, dims["history"] + 3], data=[1] * 2 * (dims["history"] + 3))))),
        ("shape_wrong_rank", JSON, body(request(2, dims, sparse=tensor("sparse", 2, dims, shape=[2, dims["sparse"], 1],
                                                                       data=[1] * 2 * dims["sparse"])))),
        ("batch_over_max", JSON, body(request(max_batch + 1, dims))),
        ("batch_mismatch_between_inputs", JSON, body(request(2, dims, genres=tensor("genres", 3, dims)))),
        ("absurd_dim", JSON, body(request(1, dims, history=tensor("history", 1, dims, shape=[1, huge], data=[1])))),
        ("absurd_batch", JSON, body(request(1, dims, dense=tensor("dense", 1, dims, shape=[huge, dims["dense"]],
                                                                   data=[0.5])))),
        ("negative_dim", JSON, body(request(1, dims, sparse=tensor("sparse", 1, dims, shape=[1, -dims["sparse"]],
                                                                    data=[1] * dims["sparse"])))),
        ("negative_batch", JSON, body(request(1, dims, sparse=tensor("sparse", 1, dims, shape=[-1, dims["sparse"]],
                                                                      data=[1] * dims["sparse"])))),
        ("zero_batch", JSON, body(request(1, dims, sparse=tensor("sparse", 1, dims, shape=[0, dims["sparse"]],
                                                                  data=[])))),
        ("wrong_input_name", JSON, body({"inputs": [*request(1, dims)["inputs"][:3],
                                                    {**tensor("dense", 1, dims), "name": "densse"}]})),
        ("missing_input", JSON, body({"inputs": request(1, dims)["inputs"][:3]})),
        ("extra_input", JSON, body({"inputs": [*request(1, dims)["inputs"], {**tensor("dense", 1, dims),
                                                                           "name": "extra"}]})),
        ("truncated_json", JSON, body(request(2, dims))[:-7]),
        ("unparseable_json", JSON, b'{"inputs": [{"name": "sparse", "shape": [1, 6], "datatype": "INT64", "data": '
                                   b'[1, 2, 3,,]}]}'),
        ("not_an_object", JSON, b"[1, 2, 3]"),
        ("inputs_not_a_list", JSON, b'{"inputs": {"name": "sparse"}}'),
        ("shape_not_integers", JSON, body(request(1, dims, sparse=tensor("sparse", 1, dims, shape=["1", "6"],
                                                                          data=[1] * dims["sparse"])))),
        ("float_dims", JSON, body(request(1, dims, sparse=tensor("sparse", 1, dims, shape=[1.5, dims["sparse"]],
                                                                  data=[1] * dims["sparse"])))),
        ("huge_content_length", {**JSON, "Content-Length": str(10**11)}, body(request(1, dims))),
        ("body_over_limit", JSON, b'{"inputs": [], "pad": "' + b"x" * (max_body + 1024) + b'"}'),
        ("binary_header_longer_than_body", *binary_request(dims, 2, header_extra=10**6)),
        ("binary_header_length_negative", {"Content-Type": "application/octet-stream",
                                           "Inference-Header-Content-Length": "-5"},
         binary_request(dims, 2)[1]),
        ("binary_data_truncated", *binary_request(dims, 2, truncate=5)),
        ("binary_data_size_absurd", {"Content-Type": "application/octet-stream",
                                     "Inference-Header-Content-Length": "0"}, b""),
    ]
    # the binary header claims a size far beyond the data that follows
    header = json.dumps({"inputs": [{"name": "dense", "shape": [1, dims["dense"]], "datatype": "FP32",
                                     "parameters": {"binary_data_size": huge}}]}).encode()
    cases[-1] = ("binary_data_size_absurd", {"Content-Type": "application/octet-stream",
                                             "Inference-Header-Content-Length": str(len(header))},
                 header + struct.pack("<f", 0.5) * dims["dense"])
    # Found by the fuzz campaign (tests/serving/test_fuzz.py), through the balancer before the fix:
    cases += [
        # Triton's HTTP parser closes the connection on a header line (or URI) of 8 KiB or more: HAProxy said 502
        ("header_line_too_long", {**JSON, "X-Padding": "a" * 9000}, body(request(2, dims))),
        # a list as the request's parameters: Triton answered 500 "failed to get request params."
        ("parameters_not_an_object", JSON, body({**request(2, dims), "parameters": [1, 2]})),
        # a negative classification count: Triton answered 500 "Unable to set 'classification'"
        ("classification_negative", JSON, body({**request(2, dims), "outputs": [
            {"name": OUTPUT_NAME, "parameters": {"classification": -1}}]})),
    ]
    return cases
