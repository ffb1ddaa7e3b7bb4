"""One ``tritonserver`` process: started in its own process group on 127.0.0.1 ports (optionally inside a CPU set and
quota), health-checked, stopped, with its log's errors at hand when it fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.core.cpusets import CpuGroup
from recforge.core.errors import ConfigError
from recforge.inference.triton.client import control_session, load_model, model_ready, unload_model
from recforge.inference.triton.errors import TritonError
from recforge.inference.triton.install import prepare_backends, server_env, tritonserver_binary

LOG_TAIL_CHARS = 3000


class TritonServer:
    """One ``tritonserver`` process on ``host`` (127.0.0.1) with the given ports.

    ``model_control="explicit"`` starts with only ``load_models`` loaded (others via :meth:`load_model`);
    ``"none"`` loads every model in the repository. The server log goes to ``log_path``. Use as a context
    manager, or call :meth:`start`, :meth:`wait_ready` and :meth:`stop`. With ``placement`` (a
    :class:`recforge.core.cpusets.CpuGroup`, created at start if it is not yet) the server and its python-backend
    stubs run inside that CPU set and quota from their first instruction; the caller owns (and removes) the group.
    """

    def __init__(self, model_repository: str | Path, *, http_port: int, grpc_port: int, metrics_port: int,
                 log_path: str | Path, model_control: str = "explicit", load_models: Sequence[str] = (),
                 host: str = "127.0.0.1", extra_args: Sequence[str] = (), backend_directory: str | Path | None = None,
                 startup_timeout_s: float = 120.0, placement: CpuGroup | None = None):
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
        if placement is not None and not isinstance(placement, CpuGroup):
            raise ConfigError(f"placement must be a recforge.core.cpusets.CpuGroup, got {placement!r}")
        self.placement = placement
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
        if self.placement is not None:
            command = self.placement.create().launch_prefix() + command
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
            self._http = control_session()
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

