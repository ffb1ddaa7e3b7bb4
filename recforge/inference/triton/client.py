"""HTTP client of a Triton server: KServe v2 inference with Triton's binary tensor extension (numpy in, numpy out),
the model repository API (load, unload, ready, index, config) and the ``requests`` sessions they use."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recforge.core.errors import ConfigError
from recforge.inference.triton.errors import TritonError

# numpy dtype <-> KServe v2 datatype (config.pbtxt uses TYPE_<same name>, except BYTES -> TYPE_STRING)
V2_DATATYPES = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64", np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}
NUMPY_DTYPES = {v: k for k, v in V2_DATATYPES.items()}


def http_session(pool: int = 4) -> Any:
    """A ``requests`` session for 127.0.0.1 with ``pool`` pooled connections and no retries."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool), max_retries=0)
    session.mount("http://", adapter)
    session.trust_env = False  # 127.0.0.1 only: no proxies from the environment
    return session


def control_session() -> Any:
    """A session for control-plane calls (health, repository API): no keep-alive, so that no idle connection
    holds a stopping server for its whole exit timeout."""
    session = http_session(1)
    session.headers["Connection"] = "close"
    return session


@contextlib.contextmanager
def session_or_own(session: Any) -> Any:
    """The given session, or a one-off one that is closed afterwards (an idle keep-alive connection would hold
    a stopping server for its whole exit timeout)."""
    if session is not None:
        yield session
        return
    own = control_session()
    try:
        yield own
    finally:
        own.close()


def error_text(response: Any) -> str:
    """Triton's error message of a refused request (its JSON ``error``, else the body or the HTTP reason)."""
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return response.text.strip()[:500] or response.reason


def load_model(url: str, name: str, *, config: Mapping[str, Any] | None = None, timeout: float = 120.0,
               session: Any = None, log_tail: Any = None) -> None:
    """POST /v2/repository/models/<name>/load (re-reads the model's files: a changed config.pbtxt takes effect).
    TritonError with Triton's message when the load fails."""
    with session_or_own(session) as session:
        body = {"parameters": {"config": json.dumps(dict(config))}} if config is not None else {}
        response = session.post(f"{url}/v2/repository/models/{name}/load", json=body, timeout=timeout)
        if response.status_code != 200:
            tail = f"\nserver log tail:\n{log_tail(1500)}" if log_tail else ""
            raise TritonError(f"loading model {name!r} on {url} failed (HTTP {response.status_code}): "
                              f"{error_text(response)}{tail}", response.status_code)


def unload_model(url: str, name: str, *, timeout: float = 60.0, session: Any = None) -> None:
    with session_or_own(session) as session:
        response = session.post(f"{url}/v2/repository/models/{name}/unload", json={}, timeout=timeout)
        if response.status_code != 200:
            raise TritonError(f"unloading model {name!r} on {url} failed (HTTP {response.status_code}): "
                              f"{error_text(response)}", response.status_code)
        deadline = time.monotonic() + timeout  # unload is asynchronous: wait until the model is gone
        while model_ready(url, name, session=session) and time.monotonic() < deadline:
            time.sleep(0.05)


def model_ready(url: str, name: str, version: int | str | None = None, *, session: Any = None) -> bool:
    import requests

    with session_or_own(session) as session:
        path = f"{url}/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        try:
            return session.get(path, timeout=5).status_code == 200
        except requests.RequestException:
            return False


def repository_index(url: str, *, session: Any = None) -> list[dict]:
    """[{name, version, state, reason}] of every model in the server's repository."""
    with session_or_own(session) as session:
        response = session.post(f"{url}/v2/repository/index", json={}, timeout=10)
        if response.status_code != 200:
            raise TritonError(f"repository index of {url} failed (HTTP {response.status_code}): "
                              f"{error_text(response)}", response.status_code)
        return response.json()


def model_config(url: str, name: str, *, session: Any = None) -> dict:
    """The model's configuration as the server sees it (JSON form of config.pbtxt)."""
    with session_or_own(session) as session:
        response = session.get(f"{url}/v2/models/{name}/config", timeout=10)
        if response.status_code != 200:
            raise TritonError(f"config of model {name!r} on {url} failed (HTTP {response.status_code}): "
                              f"{error_text(response)}", response.status_code)
        return response.json()



def encode_request(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> tuple[bytes, int]:
    """(body, json header length) of an inference request carrying every input as raw little-endian bytes."""
    header: dict[str, Any] = {"inputs": []}
    blobs = []
    for name, array in inputs.items():
        array = np.asarray(array)
        datatype = V2_DATATYPES.get(array.dtype)
        if datatype is None:
            raise ConfigError(f"input {name!r} has dtype {array.dtype}, which has no Triton datatype")
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": datatype,
                                 "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    else:
        header["parameters"] = {"binary_data_output": True}
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(blobs), len(head)


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """{output name: array} of a v2 inference response (binary or JSON tensor data)."""
    head = json.loads(body[:header_length] if header_length is not None else body)
    offset = header_length or 0
    out = {}
    for output in head.get("outputs", []):
        dtype = NUMPY_DTYPES.get(output["datatype"])
        if dtype is None:
            raise TritonError(f"output {output['name']!r} has datatype {output['datatype']}, not supported here")
        shape = [int(d) for d in output["shape"]]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[output["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype.newbyteorder("<")) \
                .astype(dtype).reshape(shape)
            offset += size
        else:
            out[output["name"]] = np.asarray(output["data"], dtype=dtype).reshape(shape)
    return out


def infer(url: str, model: str, inputs: Mapping[str, np.ndarray], *, outputs: Sequence[str] | None = None,
          version: int | str | None = None, timeout: float = 30.0, session: Any = None) -> dict[str, np.ndarray]:
    """Run ``model`` on the server at ``url`` (``http://host:port``) with ``inputs`` (name -> numpy array, batch
    dimension first); {output name: numpy array}. A refused request raises TritonError with the HTTP status
    and Triton's message."""
    with session_or_own(session) as session:
        body, header_length = encode_request(inputs, outputs)
        path = f"{url}/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"
        response = session.post(path, data=body, timeout=timeout,
                                headers={"Inference-Header-Content-Length": str(header_length),
                                         "Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            raise TritonError(f"inference on {model!r} failed (HTTP {response.status_code}): {error_text(response)}",
                              response.status_code)
        length = response.headers.get("Inference-Header-Content-Length")
        return decode_response(response.content, int(length) if length is not None else None)

