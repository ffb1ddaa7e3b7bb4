"""Triton's own load tool, ``perf_analyzer``, run against any Triton HTTP endpoint (one node or a balancer) for any
model: finding the binary and its environment, an ``--input-data`` file of valid rows, one run, and its output parsed
into a :class:`PerfResult`.

The binary comes from the ``tritonclient==2.41.0`` wheel (newer wheels here do not ship it) and is installed by
``infra/local/perf-analyzer.sh`` (``make setup``) into ``<venv>/opt/perf_analyzer/{bin,lib}``; ``lib/`` links the two
shared libraries it needs (``libb64.so.0d``, ``libcudart.so.12``) from the nvidia-pytriton wheel, so the run puts it
on ``LD_LIBRARY_PATH`` (:func:`perf_analyzer_env`). ``$RECFORGE_PERF_ANALYZER`` names another binary.

Input rows: perf_analyzer's ``--input-data zero|random`` knows nothing of vocabularies, and a random id past an
embedding table's cardinality is an error, not a measurement. :func:`input_rows` reads the served model's config
(``GET /v2/models/<m>/config``) and, given the model's :class:`~recforge.contracts.features.FeatureSpec`, fills every
input of the named-tensor contract with :func:`recforge.models.export.example_inputs` (ids below each cardinality,
0-padded multi-valued slots, standard-normal dense features); any other input gets zeros (index 0 is valid for every
vocabulary of the contract: padding/unknown), and the result says which inputs are zeros.

Before the run, :func:`preflight` checks the two reads perf_analyzer makes first: the server metadata ``GET /v2``
and the model config. perf_analyzer asks for the model's statistics (``/v2/models/<m>/stats``) only when the server
metadata lists the ``statistics`` extension, and stops at the first refused statistics call; without them the
result has client-side figures only (``server_*`` fields None).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recforge.contracts.features import FeatureSpec
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError, RecForgeError, first_line
from recforge.inference.triton.client import NUMPY_DTYPES, control_session, model_config
from recforge.models.export import example_inputs

ENV_BINARY = "RECFORGE_PERF_ANALYZER"
INSTALL_HINT = "run `make setup` (infra/local/perf-analyzer.sh installs it from the tritonclient 2.41.0 wheel)"
RUN_MARGIN_S = 60.0  # on top of the measurement windows: connecting, reading the config, warm-up


def install_dir() -> Path:
    """Where infra/local/perf-analyzer.sh installs perf_analyzer: ``<this venv>/opt/perf_analyzer``."""
    return Path(sys.prefix) / "opt" / "perf_analyzer"


def perf_analyzer_binary() -> Path:
    """``$RECFORGE_PERF_ANALYZER``, else ``<venv>/opt/perf_analyzer/bin/perf_analyzer``; ConfigError if missing."""
    explicit = os.environ.get(ENV_BINARY)
    path = Path(explicit) if explicit else install_dir() / "bin" / "perf_analyzer"
    if not path.is_file() or not os.access(path, os.X_OK):
        where = f"${ENV_BINARY}={explicit}" if explicit else str(path)
        raise ConfigError(f"perf_analyzer is not installed ({where} is missing or not executable); {INSTALL_HINT}")
    return path


def perf_analyzer_env(binary: str | Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a perf_analyzer run: the ``lib/`` folder beside its ``bin/`` first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    libs = Path(binary).resolve().parent.parent / "lib"
    kept = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libs), *kept] if libs.is_dir() else kept)
    return env


@typed_config
class PerfOptions:
    """One perf_analyzer load point: an open-loop request rate (Poisson or constant arrivals) or a closed-loop
    concurrency, ``batch_size`` rows per request."""

    model: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
    request_rate: Annotated[float, Field(gt=0, le=1e6)] | None = None  # requests/s (perf_analyzer's -b rows each)
    concurrency: Annotated[int, Field(ge=1, le=1024)] | None = None  # requests in flight (closed loop)
    distribution: Literal["poisson", "constant"] = "poisson"  # of the request-rate arrivals
    batch_size: Annotated[int, Field(ge=1, le=1 << 16)] = 1
    measurement_interval_ms: Annotated[int, Field(ge=100, le=600_000)] = 5000  # one measurement window
    stability_percentage: Annotated[float, Field(gt=0, le=1000)] = 10.0  # 3 windows within this % = stable
    max_trials: Annotated[int, Field(ge=3, le=100)] = 10  # windows before giving up on a stable measurement
    percentile: Annotated[int, Field(ge=1, le=99)] | None = None  # stabilise on this latency percentile, else avg
    max_threads: Annotated[int, Field(ge=1, le=256)] = 4  # request-rate mode: threads sending synchronous requests
    input_rows: Annotated[int, Field(ge=1, le=10_000)] = 64  # distinct rows in the --input-data file
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    version: Annotated[int, Field(ge=1)] | None = None  # model version (perf_analyzer -x), else Triton's choice

    def __post_init__(self) -> None:
        if (self.request_rate is None) == (self.concurrency is None):
            raise ConfigError("PerfOptions: give exactly one of request_rate and concurrency")

    @property
    def timeout_s(self) -> float:
        """Wall-clock bound of the run: every window it may take, plus :data:`RUN_MARGIN_S`."""
        return self.max_trials * self.measurement_interval_ms / 1000 + RUN_MARGIN_S

    @property
    def load(self) -> str:
        if self.request_rate is not None:
            return f"{self.request_rate:g} requests/s ({self.distribution})"
        return f"concurrency {self.concurrency}"


# --------------------------------------------------------------------------------------------------------------
# Input data


def input_rows(config: Mapping[str, Any], rows: int, *, spec: FeatureSpec | None = None,
               seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``rows`` valid samples per input of a model config (Triton's JSON form: ``input`` with ``name``,
    ``data_type``, ``dims`` without the batch dim), as ({name: array [rows, *dims]}, {name: "spec" | "zeros"}).
    With ``spec``, the inputs of the named-tensor contract whose dims and dtype match it come from
    :func:`example_inputs`; every other input is zeros. A variable dim (-1) is given length 1."""
    if rows < 1:
        raise ConfigError(f"rows must be >= 1, got {rows}")
    generated = {k: v.numpy() for k, v in example_inputs(spec, rows, seed).items()} if spec is not None else {}
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for tensor in config.get("input") or []:
        name = tensor["name"]
        datatype = str(tensor.get("data_type", "")).removeprefix("TYPE_")
        dtype = NUMPY_DTYPES.get(datatype)
        if dtype is None:
            raise ConfigError(f"input {name!r} has data type {tensor.get('data_type')!r}, which perf input data "
                              "cannot be generated for")
        dims = [max(int(d), 1) for d in tensor.get("dims") or []]
        candidate = generated.get(name)
        if candidate is not None and list(candidate.shape[1:]) == dims and candidate.dtype == dtype:
            arrays[name], sources[name] = np.ascontiguousarray(candidate), "spec"
        else:
            arrays[name], sources[name] = np.zeros([rows, *dims], dtype=dtype), "zeros"
    if not arrays:
        raise ConfigError(f"model config of {config.get('name')!r} lists no inputs")
    return arrays, sources


def input_data_document(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON: one step per row, each input's values flat with its shape (the
    batch dim left out; perf_analyzer makes batches of ``-b`` rows). Floats stay floats in the JSON (perf_analyzer
    refuses ``0`` for an FP32 input)."""
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise ConfigError(f"every input needs the same number of rows, got {sorted(rows)}")
    steps = []
    for i in range(rows.pop()):
        steps.append({name: {"content": array[i].reshape(-1).tolist(), "shape": list(array.shape[1:])}
                      for name, array in arrays.items()})
    return {"data": steps}


# --------------------------------------------------------------------------------------------------------------
# Running it


def host_port(url: str) -> str:
    """perf_analyzer's ``-u``: ``host:port`` of an ``http://host:port`` URL (no path, no https)."""
    match = re.fullmatch(r"(?:http://)?([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})/?", url.strip())
    if not match:
        raise ConfigError(f"url must be http://host:port (perf_analyzer speaks plain HTTP here), got {url!r}")
    return f"{match.group(1)}:{match.group(2)}"


def perf_analyzer_command(binary: str | Path, url: str, options: PerfOptions, *, input_data: str | Path,
                          csv_path: str | Path) -> list[str]:
    """The perf_analyzer command line of one load point (HTTP, synchronous requests)."""
    o = options
    command = [str(binary), "-m", o.model, "-u", host_port(url), "-i", "http", "-b", str(o.batch_size),
               "--input-data", str(input_data), "--measurement-interval", str(o.measurement_interval_ms),
               "--stability-percentage", f"{o.stability_percentage:g}", "--max-trials", str(o.max_trials),
               "-f", str(csv_path)]
    if o.request_rate is not None:
        command += ["--request-rate-range", f"{o.request_rate:g}", "--request-distribution", o.distribution,
                    "--max-threads", str(o.max_threads)]
    else:
        command += ["--concurrency-range", str(o.concurrency)]
    if o.percentile is not None:
        command.append(f"--percentile={o.percentile}")
    if o.version is not None:
        command += ["-x", str(o.version)]
    return command


def preflight(url: str, model: str) -> dict[str, Any]:
    """The model config, after checking that ``url`` answers the reads perf_analyzer makes before any load: the
    server metadata ``GET /v2`` and ``GET /v2/models/<model>/config``. ConfigError naming the refused one."""
    import requests

    session = control_session()
    try:
        try:
            response = session.get(f"{url}/v2", timeout=10)
        except requests.RequestException as err:
            raise ConfigError(f"{url} does not answer: {first_line(err)}") from None
        if response.status_code != 200:
            raise ConfigError(f"{url} answers GET /v2 (the server metadata, perf_analyzer's first read) with HTTP "
                              f"{response.status_code}; perf_analyzer cannot run against it (a balancer in front "
                              "must let GET /v2 through or answer it)")
        return model_config(url, model, session=session)
    finally:
        session.close()


@dataclass(frozen=True)
class PerfResult:
    """One perf_analyzer load point: client-side figures, server-side ones where the server reported them
    (None otherwise), the errors it printed and its exit status. Times in microseconds."""

    load: str
    batch_size: int
    returncode: int
    request_count: int | None = None
    throughput_infer_per_s: float | None = None
    latency_us: dict[str, int] = field(default_factory=dict)  # p50, p90, p95, p99, avg (what was printed)
    client_send_us: int | None = None
    client_recv_us: int | None = None
    network_server_us: int | None = None  # "Network+Server Send/Recv": only with server statistics
    server_queue_us: int | None = None
    server_compute_input_us: int | None = None
    server_compute_infer_us: int | None = None
    server_compute_output_us: int | None = None
    server_request_count: int | None = None
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Exit status 0, no error printed, requests completed."""
        return self.returncode == 0 and not self.errors and bool(self.request_count)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": list(self.errors), "ok": self.ok}


CSV_COLUMNS = {  # perf_analyzer's CSV header -> PerfResult field (latencies go to latency_us)
    "Client Send": "client_send_us", "Client Recv": "client_recv_us",
    "Network+Server Send/Recv": "network_server_us", "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us", "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
}
LATENCY_COLUMN = re.compile(r"^(p\d+|Avg) latency$")
ERROR_LINES = (re.compile(r"^Thread \[\d+\] had error: (.+)$"), re.compile(r"^error: (.+)$"),
               re.compile(r"^(Failed to .+)$"))
STDOUT_FIGURES = {
    "request_count": re.compile(r"^\s*Request count: (\d+)\s*$", re.M),
    "throughput": re.compile(r"^\s*Throughput: ([0-9.]+) infer/sec\s*$", re.M),
    "server_request_count": re.compile(r"^\s*Successful request count: (\d+)\s*$", re.M),
}
STDOUT_LATENCY = re.compile(r"^\s*(p\d+|Avg) latency: (\d+) usec", re.M)


def parse_csv(text: str) -> list[dict[str, str]]:
    """perf_analyzer's ``-f`` CSV: one dict per load point (empty for an empty file)."""
    return [dict(row) for row in csv.DictReader(io.StringIO(text)) if row]


def parse_errors(stdout: str) -> tuple[str, ...]:
    """The distinct error lines perf_analyzer printed (a failed request, a refused read, an unstable or
    unsustained load), in order."""
    found: list[str] = []
    for line in stdout.splitlines():
        for pattern in ERROR_LINES:
            match = pattern.match(line.strip())
            if match and match.group(1) not in found:
                found.append(match.group(1))
                break
    return tuple(found)


def parse_result(stdout: str, csv_text: str, *, returncode: int, options: PerfOptions) -> PerfResult:
    """A :class:`PerfResult` from perf_analyzer's stdout (counts, errors) and its CSV (the figures); from the
    stdout alone when no CSV was written (perf_analyzer writes none after a failed run)."""
    figures: dict[str, Any] = {}
    latency: dict[str, int] = {}
    rows = parse_csv(csv_text)
    if rows:
        row = rows[-1]
        for column, value in row.items():
            if column in CSV_COLUMNS and value not in ("", None):
                figures[CSV_COLUMNS[column]] = int(float(value))
            elif column == "Inferences/Second":
                figures["throughput_infer_per_s"] = float(value)
            elif (match := LATENCY_COLUMN.match(column or "")) and value not in ("", None):
                latency[match.group(1).lower()] = int(float(value))
    for name, value in STDOUT_LATENCY.findall(stdout):
        latency.setdefault(name.lower(), int(value))
    for name, pattern in STDOUT_FIGURES.items():
        found = pattern.findall(stdout)
        if not found:
            continue
        if name == "throughput":
            figures.setdefault("throughput_infer_per_s", float(found[-1]))
        else:
            figures[name] = int(found[-1])
    return PerfResult(load=options.load, batch_size=options.batch_size, returncode=returncode, latency_us=latency,
                      errors=parse_errors(stdout), **figures)


@dataclass(frozen=True)
class PerfRun:
    """What one run did: its command line, its whole output, the parsed result and which inputs were zeros."""

    command: list[str]
    stdout: str
    result: PerfResult
    input_sources: dict[str, str]


def run_perf_analyzer(url: str, options: PerfOptions, *, spec: FeatureSpec | None = None,
                      workdir: str | Path | None = None, binary: str | Path | None = None) -> PerfRun:
    """Run perf_analyzer once against ``url`` (a node or a balancer): preflight, write valid input rows for the
    served model (:func:`input_rows`), run it, parse its output. The input data and CSV go to ``workdir`` (a
    temporary folder, removed afterwards, when None). A failed run is returned, not raised (its errors are in the
    result); RecForgeError when it does not finish within ``options.timeout_s``."""
    binary = Path(binary) if binary is not None else perf_analyzer_binary()
    config = preflight(url, options.model)
    max_batch = int(config.get("max_batch_size") or 0)
    if options.batch_size > max(max_batch, 1):
        raise ConfigError(f"batch_size {options.batch_size} exceeds the max_batch_size {max_batch} of "
                          f"{options.model} at {url}")
    arrays, sources = input_rows(config, options.input_rows, spec=spec, seed=options.seed)
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        data_path, csv_path = folder / "input_data.json", folder / "perf_analyzer.csv"
        data_path.write_text(json.dumps(input_data_document(arrays)))
        csv_path.unlink(missing_ok=True)
        command = perf_analyzer_command(binary, url, options, input_data=data_path, csv_path=csv_path)
        try:
            done = subprocess.run(command, env=perf_analyzer_env(binary), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=options.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise RecForgeError(f"perf_analyzer did not finish within {options.timeout_s:g} s: "
                                f"{' '.join(command)}") from None
        stdout = done.stdout
        csv_text = csv_path.read_text() if csv_path.is_file() else ""
    result = parse_result(stdout, csv_text, returncode=done.returncode, options=options)
    return PerfRun(command=command, stdout=stdout, result=result, input_sources=sources)


__all__ = ["ENV_BINARY", "PerfOptions", "PerfResult", "PerfRun", "host_port", "input_data_document", "input_rows",
           "install_dir", "parse_csv", "parse_errors", "parse_result", "perf_analyzer_binary",
           "perf_analyzer_command", "perf_analyzer_env", "preflight", "run_perf_analyzer"]
