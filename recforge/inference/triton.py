"""A real Triton Inference Server on this machine: the ``tritonserver`` of the nvidia-pytriton wheel, started,
health-checked and stopped from Python, plus a small HTTP client and a ``recforge.inference.loadgen`` target.

The wheel ships ``pytriton/tritonserver/bin/tritonserver`` with the **python backend only**. The backend
directory the server is given is prepared under ``$RECFORGE_HOME/triton/backends`` (:func:`prepare_backends`):
``python/`` holds copies of the wheel's ``libtriton_python.so`` and ``triton_python_backend_utils.py`` and the
Python 3.11 ``triton_python_backend_stub`` (from ``python_backend_stubs/3.11/``); site-packages is never
modified. The copies lose their ``$ORIGIN`` rpath, so the server runs with the wheel's
``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``. The stub embeds the Python of the ``python3`` first on
``PATH``: this interpreter's ``bin`` folder (the venv, numpy<2 + onnxruntime) is put first, because with
numpy 2.x every python-backend response fails.

:class:`TritonServer` runs one server process (its own process group) on 127.0.0.1 ports; ``wait_ready``
polls ``/v2/health/ready`` and raises with the tail of the server log when the process dies or the wait times
out. :func:`infer` speaks the KServe v2 HTTP protocol with Triton's binary tensor extension (numpy in,
numpy out); :class:`TritonHttpTarget` is the load generator's target for a model served by Triton.

CLI::

    python -m recforge.inference.triton serve --repo REPO [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
        [--model-control none|explicit] [--load-model M ...]      # foreground until Ctrl-C
    python -m recforge.inference.triton check                                # is the server runnable here?
    python -m recforge.inference.triton infer --url URL --model M --spec SPEC.json [--batch 4]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.features import OUTPUT_NAME
from recforge.contracts.headers import served_by
from recforge.core.cli import run_step
from recforge.core.config import recforge_home
from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.hashing import sha256_file
from recforge.inference.loadgen import MAX_ITEMS, check_int, load_spec
from recforge.inference.model_repo import verify_model_repository
from recforge.models.export import example_inputs

STUB_PYTHON = "3.11"  # the stub must match the interpreter whose packages it embeds (the venv's)
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
LOG_TAIL_CHARS = 3000
BODY_CACHE_SIZES = 64  # request bodies kept per load target (sub-batch sizes repeat; memory stays bounded)

# numpy dtype <-> KServe v2 datatype (config.pbtxt uses TYPE_<same name>, except BYTES -> TYPE_STRING)
V2_DATATYPES = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64", np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}
NUMPY_DTYPES = {v: k for k, v in V2_DATATYPES.items()}


class TritonError(RecForgeError):
    """The Triton server could not be started, did not become ready, or refused a request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------------------------
# The installation


def pytriton_dir() -> Path:
    """The installed ``pytriton`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("nvidia-pytriton is not installed in this environment; run `make setup` "
                          "(it pins nvidia-pytriton, which ships the tritonserver binary)")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_binary() -> Path:
    """``site-packages/pytriton/tritonserver/bin/tritonserver``; ConfigError when it is missing."""
    path = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"tritonserver binary {path} is missing or not executable; reinstall nvidia-pytriton "
                          "(`make setup`)")
    return path


def server_libs_dir() -> Path:
    """The wheel's bundled shared libraries (the copied backend files find them through LD_LIBRARY_PATH)."""
    return pytriton_dir().parent / "nvidia_pytriton.libs"


def stub_source(python_version: str = STUB_PYTHON) -> Path:
    path = pytriton_dir() / "tritonserver" / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not path.is_file():
        raise ConfigError(f"python backend stub for Python {python_version} is missing at {path}; reinstall "
                          "nvidia-pytriton")
    return path


def check_installation() -> tuple[bool, str]:
    """(True, "") when a Triton server can be started here, else (False, why) on one line."""
    if sys.version_info[:2] != tuple(int(x) for x in STUB_PYTHON.split(".")):
        return False, (f"the python backend stub is for Python {STUB_PYTHON}, this interpreter is "
                       f"{sys.version_info.major}.{sys.version_info.minor}")
    try:
        tritonserver_binary()
        stub_source()
        source = pytriton_dir() / "tritonserver" / "backends" / "python"
        for name in PYTHON_BACKEND_FILES:
            if not (source / name).is_file():
                return False, f"python backend file {source / name} is missing; reinstall nvidia-pytriton"
    except ConfigError as err:
        return False, str(err)
    if not server_libs_dir().is_dir():
        return False, f"{server_libs_dir()} (the wheel's bundled libraries) is missing; reinstall nvidia-pytriton"
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed: the python-backend model.py needs it"
    return True, ""


def _same_file(a: Path, b: Path) -> bool:
    if not b.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    return sha256_file(a) == sha256_file(b)


def backends_dir(home: str | Path | None = None) -> Path:

    return Path(home if home is not None else recforge_home()) / "triton" / "backends"


def prepare_backends(home: str | Path | None = None) -> Path:
    """The ``--backend-directory`` for the server: ``<home>/triton/backends/python/`` with copies of the wheel's
    python backend and the 3.11 stub (refreshed when they differ; written atomically, so concurrent callers
    are safe). ``home`` defaults to RECFORGE_HOME."""
    ok, why = check_installation()
    if not ok:
        raise ConfigError(f"cannot prepare the Triton backends: {why}")
    source = pytriton_dir() / "tritonserver" / "backends" / "python"
    root = backends_dir(home)
    target = root / "python"
    target.mkdir(parents=True, exist_ok=True)
    files = [(source / name, target / name) for name in PYTHON_BACKEND_FILES]
    files.append((stub_source(), target / "triton_python_backend_stub"))
    for src, dst in files:
        if _same_file(src, dst):
            continue
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return root


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the server process: this interpreter's bin folder first on PATH (the stub embeds that
    ``python3``) and the wheel's libraries on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    python_bin = str(Path(sys.executable).parent)  # not resolved: the venv's bin, not the base interpreter's
    env["PATH"] = os.pathsep.join([python_bin, *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    libs = str(server_libs_dir())
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libs, *[p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --------------------------------------------------------------------------------------------------------------
# The server


def _session(pool: int = 4) -> Any:
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool), max_retries=0)
    session.mount("http://", adapter)
    session.trust_env = False  # 127.0.0.1 only: no proxies from the environment
    return session


def _control_session() -> Any:
    """A session for control-plane calls (health, repository API): no keep-alive, so that no idle connection
    holds a stopping server for its whole exit timeout."""
    session = _session(1)
    session.headers["Connection"] = "close"
    return session


@contextlib.contextmanager
def _using(session: Any) -> Any:
    """The given session, or a one-off one that is closed afterwards (an idle keep-alive connection would hold
    a stopping server for its whole exit timeout)."""
    if session is not None:
        yield session
        return
    own = _control_session()
    try:
        yield own
    finally:
        own.close()


def _error_text(response: Any) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return response.text.strip()[:500] or response.reason


class TritonServer:
    """One ``tritonserver`` process on ``host`` (127.0.0.1) with the given ports.

    ``model_control="explicit"`` starts with only ``load_models`` loaded (others via :meth:`load_model`);
    ``"none"`` loads every model in the repository. The server log goes to ``log_path``. Use as a context
    manager, or call :meth:`start`, :meth:`wait_ready` and :meth:`stop`.
    """

    def __init__(self, model_repository: str | Path, *, http_port: int, grpc_port: int, metrics_port: int,
                 log_path: str | Path, model_control: str = "explicit", load_models: Sequence[str] = (),
                 host: str = "127.0.0.1", extra_args: Sequence[str] = (), backend_directory: str | Path | None = None,
                 startup_timeout_s: float = 120.0):
        if model_control not in ("explicit", "none"):
            raise ConfigError(f"model_control must be 'explicit' or 'none', got {model_control!r}")
        for name, port in (("http_port", http_port), ("grpc_port", grpc_port), ("metrics_port", metrics_port)):
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ConfigError(f"{name} must be a TCP port in [1, 65535], got {port!r}")
        if len({http_port, grpc_port, metrics_port}) != 3:
            raise ConfigError(f"http, grpc and metrics ports must differ, got {http_port}, {grpc_port}, {metrics_port}")
        if model_control == "none" and load_models:
            raise ConfigError("load_models needs model_control='explicit' (with 'none' every model is loaded)")
        self.model_repository = Path(model_repository)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log_path = Path(log_path)
        self.model_control = model_control
        self.load_models = list(load_models)
        self.host = host
        self.extra_args = list(extra_args)
        self.backend_directory = Path(backend_directory) if backend_directory else None
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._log_file: Any = None
        self._http: Any = None
        self.started_at: float | None = None
        self.ready_after_s: float | None = None  # seconds from start() to ready

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        args = [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory or prepare_backends()}",
            f"--model-control-mode={self.model_control}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--strict-readiness=true", "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]
        args += [f"--load-model={m}" for m in self.load_models]
        return args + self.extra_args

    def start(self) -> TritonServer:
        if self.alive():
            return self
        if not self.model_repository.is_dir():
            raise ConfigError(f"model repository {self.model_repository} is not a folder")
        command = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=server_env(), start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_excerpt(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The log's error lines (Triton's ``E...`` lines, "error", "unrecognized", "failed"), then its tail: a
        server that dies at start prints its reason first and a long usage text after it."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        pattern = ("error", "unrecognized", "failed", "invalid")
        errors = [line for line in text.splitlines()
                  if (line[:1] == "E" and line[1:2].isdigit()) or any(p in line.lower() for p in pattern)]
        tail = text[-chars:]
        picked = [line for line in errors[:20] if line not in tail]
        return ("\n".join(picked) + "\n...\n" if picked else "") + tail

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - chars))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    @property
    def http(self) -> Any:
        if self._http is None:
            self._http = _control_session()
        return self._http

    def ready(self) -> bool:
        import requests

        try:
            return self.http.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float | None = None) -> TritonServer:
        """Block until ``/v2/health/ready`` answers 200; TritonError with the log tail if the process exits or
        ``timeout`` (default ``startup_timeout_s``) passes."""
        if self.process is None:
            raise TritonError("wait_ready() before start()")
        deadline = time.monotonic() + (self.startup_timeout_s if timeout is None else timeout)
        while True:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self.process.returncode} before it was ready "
                                  f"(log {self.log_path}):\n{self.log_excerpt()}")
            if self.ready():
                self.ready_after_s = time.monotonic() - (self.started_at or time.monotonic())
                return self
            if time.monotonic() > deadline:
                tail = self.log_excerpt()
                self.stop()
                waited = self.startup_timeout_s if timeout is None else timeout
                raise TritonError(f"tritonserver on {self.url} was not ready after {waited:g} s "
                                  f"(log {self.log_path}):\n{tail}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to the server's process group (graceful: in-flight requests finish), SIGKILL after
        ``timeout`` seconds. Returns the exit code (None if it was never started)."""
        code = None
        if self._http is not None:  # first: an idle keep-alive connection delays the server's exit
            self._http.close()
            self._http = None
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
            # stubs are in the same group; make sure none outlives the server
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"TritonServer({self.model_repository}, url={self.url}, {state})"

    # repository API ------------------------------------------------------------------------------------------

    def load_model(self, name: str, *, config: Mapping[str, Any] | None = None, timeout: float = 120.0) -> None:
        load_model(self.url, name, config=config, timeout=timeout, session=self.http, log_tail=self.log_tail)

    def unload_model(self, name: str, *, timeout: float = 60.0) -> None:
        unload_model(self.url, name, timeout=timeout, session=self.http)

    def model_ready(self, name: str, version: int | str | None = None) -> bool:
        return model_ready(self.url, name, version, session=self.http)


def load_model(url: str, name: str, *, config: Mapping[str, Any] | None = None, timeout: float = 120.0,
               session: Any = None, log_tail: Any = None) -> None:
    """POST /v2/repository/models/<name>/load (re-reads the model's files: a changed config.pbtxt takes effect).
    TritonError with Triton's message when the load fails."""
    with _using(session) as session:
        body = {"parameters": {"config": json.dumps(dict(config))}} if config is not None else {}
        response = session.post(f"{url}/v2/repository/models/{name}/load", json=body, timeout=timeout)
        if response.status_code != 200:
            tail = f"\nserver log tail:\n{log_tail(1500)}" if log_tail else ""
            raise TritonError(f"loading model {name!r} on {url} failed (HTTP {response.status_code}): "
                              f"{_error_text(response)}{tail}", response.status_code)


def unload_model(url: str, name: str, *, timeout: float = 60.0, session: Any = None) -> None:
    with _using(session) as session:
        response = session.post(f"{url}/v2/repository/models/{name}/unload", json={}, timeout=timeout)
        if response.status_code != 200:
            raise TritonError(f"unloading model {name!r} on {url} failed (HTTP {response.status_code}): "
                              f"{_error_text(response)}", response.status_code)
        deadline = time.monotonic() + timeout  # unload is asynchronous: wait until the model is gone
        while model_ready(url, name, session=session) and time.monotonic() < deadline:
            time.sleep(0.05)


def model_ready(url: str, name: str, version: int | str | None = None, *, session: Any = None) -> bool:
    import requests

    with _using(session) as session:
        path = f"{url}/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        try:
            return session.get(path, timeout=5).status_code == 200
        except requests.RequestException:
            return False


def repository_index(url: str, *, session: Any = None) -> list[dict]:
    """[{name, version, state, reason}] of every model in the server's repository."""
    with _using(session) as session:
        response = session.post(f"{url}/v2/repository/index", json={}, timeout=10)
        if response.status_code != 200:
            raise TritonError(f"repository index of {url} failed (HTTP {response.status_code}): "
                              f"{_error_text(response)}", response.status_code)
        return response.json()


def model_config(url: str, name: str, *, session: Any = None) -> dict:
    """The model's configuration as the server sees it (JSON form of config.pbtxt)."""
    with _using(session) as session:
        response = session.get(f"{url}/v2/models/{name}/config", timeout=10)
        if response.status_code != 200:
            raise TritonError(f"config of model {name!r} on {url} failed (HTTP {response.status_code}): "
                              f"{_error_text(response)}", response.status_code)
        return response.json()


# --------------------------------------------------------------------------------------------------------------
# Inference over HTTP (KServe v2 + Triton's binary tensor extension)


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
    with _using(session) as session:
        body, header_length = encode_request(inputs, outputs)
        path = f"{url}/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"
        response = session.post(path, data=body, timeout=timeout,
                                headers={"Inference-Header-Content-Length": str(header_length),
                                         "Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            raise TritonError(f"inference on {model!r} failed (HTTP {response.status_code}): {_error_text(response)}",
                              response.status_code)
        length = response.headers.get("Inference-Header-Content-Length")
        return decode_response(response.content, int(length) if length is not None else None)


class TritonHttpTarget:
    """``recforge.inference.loadgen`` target: a sub-batch of n items is one HTTP inference request to ``model``.

    The inputs of ``max_batch`` rows are built once (``recforge.models.export.example_inputs``), and the request
    bodies of the first 64 sub-batch sizes seen are built once and reused. The connection pool holds ``pool``
    connections (at least the load generator's workers). A non-200 answer raises, which the load generator counts as a
    failed query. The constructor sends one request of ``max_batch`` and one of 1 item (a check that the
    model serves inputs of this spec). ``infer`` returns the fleet node that answered (HAProxy's
    ``X-RecForge-Node`` header; None straight from a server), which the load generator records per query; with
    ``record``, ``requests`` also collects (node, ms) of every answered request."""

    def __init__(self, url: str, model: str, spec: Any, max_batch: int = 1024, seed: int = 0, *, pool: int = 16,
                 timeout: float = 30.0, record: bool = False):

        self.url, self.model = url.rstrip("/"), model
        self.max_batch = check_int("max_batch", max_batch, 1, MAX_ITEMS)
        self.spec = load_spec(spec)
        self.name = f"triton:{model}"
        self.timeout = timeout
        self.output = OUTPUT_NAME
        built = example_inputs(self.spec, self.max_batch, check_int("seed", seed, 0, 2**63 - 1))
        self._inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in built.items()}
        self._bodies: dict[int, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self._session = _session(pool)
        self._path = f"{self.url}/v2/models/{model}/infer"
        self.requests: list[tuple[str | None, float]] | None = None  # (node, ms) of each answered request
        try:
            for n in (self.max_batch, 1):
                self.infer(n)
        except Exception as err:
            self.close()
            raise ConfigError(f"model {model!r} on {url} does not serve inputs of this spec: "
                              f"{str(err).splitlines()[0]}") from None
        if record:  # from here on: the checks above are not part of the load
            self.requests = []

    def _body(self, n_items: int) -> tuple[bytes, int]:
        body = self._bodies.get(n_items)
        if body is None:
            body = encode_request({k: v[:n_items] for k, v in self._inputs.items()}, [self.output])
            with self._lock:
                if len(self._bodies) < BODY_CACHE_SIZES:
                    self._bodies[n_items] = body
        return body

    def infer(self, n_items: int) -> str | None:
        if not 1 <= n_items <= self.max_batch:
            raise ValueError(f"sub-batch of {n_items} items outside [1, {self.max_batch}] (max_batch)")
        body, header_length = self._body(n_items)
        start = time.perf_counter()
        response = self._session.post(self._path, data=body, timeout=self.timeout,
                                      headers={"Inference-Header-Content-Length": str(header_length),
                                               "Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            raise TritonError(f"HTTP {response.status_code}: {_error_text(response)}", response.status_code)
        node = served_by(response.headers)  # the fleet node, when the answer came through the balancer
        if self.requests is not None:
            self.requests.append((node, (time.perf_counter() - start) * 1000.0))  # list.append is atomic
        return node

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"TritonHttpTarget({self.url}, model={self.model!r}, max_batch={self.max_batch})"


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m recforge.inference.triton", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run tritonserver in the foreground until Ctrl-C / SIGTERM")
    serve.add_argument("--repo", required=True, help="model repository folder")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--model-control", choices=("none", "explicit"), default="none")
    serve.add_argument("--load-model", action="append", default=[], help="with --model-control explicit")
    serve.add_argument("--log", default=None, help="server log file (default <repo>/../tritonserver.log)")
    serve.add_argument("--skip-verify", action="store_true", help="serve without checking model.onnx hashes")
    sub.add_parser("check", help="say whether a Triton server can be started here")
    inf = sub.add_parser("infer", help="one request with example inputs of a spec; prints the outputs")
    inf.add_argument("--url", required=True)
    inf.add_argument("--model", required=True)
    inf.add_argument("--spec", required=True)
    inf.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)

    def step() -> Any:
        if args.command == "check":
            ok, why = check_installation()
            if not ok:
                raise ConfigError(why)
            return {"tritonserver": str(tritonserver_binary()), "backends": str(prepare_backends())}
        if args.command == "infer":

            feed = {k: v.numpy() for k, v in example_inputs(load_spec(args.spec), args.batch).items()}
            return {k: v.tolist() for k, v in infer(args.url, args.model, feed).items()}
        repo = Path(args.repo)
        if not args.skip_verify:

            verify_model_repository(repo)
        server = TritonServer(repo, http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, model_control=args.model_control,
                              load_models=args.load_model,
                              log_path=args.log or repo.resolve().parent / "tritonserver.log")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with server:
            print(f"tritonserver ready in {server.ready_after_s:.1f} s: {server.url} (metrics {server.metrics_url},"
                  f" log {server.log_path}); Ctrl-C stops it", flush=True)
            try:
                while not stop.is_set() and server.alive():
                    stop.wait(1.0)
            except KeyboardInterrupt:
                pass
            if not server.alive():
                raise TritonError(f"tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}")
        return None

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
