"""Profiling stage: hardware targets behind one interface, and the profile of one variant on each of them.

A :class:`HardwareTarget` says whether it can run here (``available()``), what it runs on (``describe()``) and
builds a ``recforge.inference.loadgen`` target for a knob setting (``make_load_target``). :func:`profile_variant` measures
the latency-bounded throughput (LBT) of one ONNX variant on one target: every LBT probe is an open-loop
``run_open_loop`` of ``point_duration_s`` seconds; :class:`~recforge.pipeline.profiling.search.HillClimb` climbs the
DeepRecSched axes (sub-batch size, and intra-op threads on a CPU); the single-request latency against batch size
is measured with onnxruntime; the result is a profile document validated against ``recforge/contracts/profile_schema.json``.
:func:`profile_all` profiles every target and reports a failing or unavailable one on one line without stopping
the others.

Targets:

* :class:`CpuOnnxRuntime` (kind ``cpu-onnxruntime``): onnxruntime's CPU provider; knobs ``threads`` (intra-op),
  ``sub_batch``, ``workers``.
* :class:`GpuOnnxRuntime` (kind ``gpu-onnxruntime``): onnxruntime's CUDA provider; available when a CUDA device
  is present and onnxruntime has the CUDA provider, skipped with the missing piece named otherwise. Not run on
  a GPU in this project's CI (none there); FP16 variants are profiled only when it is available.
* :class:`HybridCpuGpu` (kind ``hybrid-onnxruntime``): DeepRecSched's scheduler (Gupta et al., ISCA 2020):
  queries of more than ``gpu_threshold`` items run whole on a GPU target, the others are split into sub-batches
  on the CPU target; knobs ``sub_batch``, ``gpu_threshold`` (searched together), ``threads``, ``gpu_workers``.
  Available when both parts are.
* :class:`CpuTriton` (kind ``cpu-triton``): a real ``tritonserver`` (``recforge.inference.triton``) on 127.0.0.1 serving a
  local-flavour model repository (``recforge.inference.model_repo``: python backend running onnxruntime) over HTTP; knobs
  ``sub_batch`` and ``profile_search.triton_axes`` (``preferred_batch``, ``queue_delay_us``, ``instances``), plus
  ``threads`` per instance. One server per profiled variant, one model per knob setting (only the setting being
  measured is loaded); the server is stopped when the variant's profiling ends.

A hardware target may also have ``close()`` (called when :func:`profile_variant` is done with it, also on
failure) and ``latency_vs_batch(load_target, batches, repeats)`` (single-request latency measured through its
own serving stack instead of in-process onnxruntime); a load target may have ``activate()`` (called before each
use: a server-side target makes its knob setting the live one) and ``close()``.

CLI::

    python -m recforge.pipeline.profiling.targets --onnx M.onnx --spec spec.json --family F --variant V \\
        --accuracy '{"auc": 0.78, "delta_auc": -0.001}' --run-id RUNID [--out profile.json] [--config JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recforge.core.cli import json_object, run_step
from recforge.core.config import config_from_dict, recforge_home
from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.hashing import sha256_file as file_sha256
from recforge.core.hw import cpu_model as _cpu_model
from recforge.core.ports import free_ports
from recforge.inference.loadgen import MAX_ITEMS, Offload, OnnxTarget, QuerySizes, load_spec, run_open_loop
from recforge.inference.model_repo import ServingConfig, write_model_repository
from recforge.inference.onnx import onnx_latency_ms
from recforge.inference.triton import TritonError, TritonHttpTarget, TritonServer, check_installation
from recforge.models.export import example_inputs
from recforge.pipeline.profiling.search import (
    HillClimb,
    LBTConfig,
    LBTEvaluator,
    Measurement,
    build_profile,
    confirm_lbt,
    deeprecsched_axes,
    knob_key,
    mean_items_per_query,
    triton_axes,
    validate_profile,
)

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id, as the profile schema wants


# --------------------------------------------------------------------------------------------------------------
# Hardware targets


@runtime_checkable
class HardwareTarget(Protocol):
    """One hardware + serving stack a variant is profiled on."""

    name: str  # as configured (e.g. "cpu"); one profile per name
    kind: str  # cpu-onnxruntime | cpu-triton | gpu-<runtime> (the profile schema's target.kind)

    def available(self) -> tuple[bool, str]:
        """(True, "") when this target can run here, else (False, why)."""
        ...

    def describe(self) -> str:
        """The device (CPU model and cores, or GPU model and memory)."""
        ...

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> Any:
        """A ``recforge.inference.loadgen`` target (name, infer(n_items)) serving ``onnx_path`` with these knobs."""
        ...


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CpuOnnxRuntime:
    """onnxruntime on the CPU (``recforge.inference.loadgen.OnnxTarget``); ``threads`` is the default intra-op thread count,
    overridden by a ``threads`` knob."""

    kind = "cpu-onnxruntime"

    def __init__(self, threads: int = 1, *, name: str = "cpu", max_batch: int = MAX_ITEMS, seed: int = 0):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"CpuOnnxRuntime.threads must be an integer >= 1, got {threads!r}")
        self.threads, self.name, self.max_batch, self.seed = threads, name, max_batch, seed

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as err:
            return False, f"onnxruntime is not importable: {err}"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return False, "onnxruntime has no CPUExecutionProvider"
        return True, ""

    def describe(self) -> str:
        return f"{_cpu_model()}, {_cpu_count()} cores"

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> OnnxTarget:
        return OnnxTarget(onnx_path, spec, threads=int(knobs.get("threads", self.threads)),
                          max_batch=self.max_batch, seed=self.seed)

    def __repr__(self) -> str:
        return f"CpuOnnxRuntime(name={self.name!r}, threads={self.threads})"


class _TritonSetting:
    """The load target of one knob setting on :class:`CpuTriton`'s server: model ``model`` (its own folder in the
    repository). ``activate()`` makes it the loaded model; ``infer`` sends HTTP requests to it."""

    def __init__(self, owner: CpuTriton, model: str, spec: Any, pool: int, max_batch: int):
        self.owner, self.model, self.spec, self.pool = owner, model, spec, pool
        self.name = f"triton:{model}"
        self.max_batch = max_batch
        self.client: Any = None

    def activate(self) -> None:
        self.owner._activate(self.model)
        if self.client is None:

            self.client = TritonHttpTarget(self.owner.server.url, self.model, self.spec, max_batch=self.max_batch,
                                           seed=self.owner.seed, pool=self.pool)

    def infer(self, n_items: int) -> None:
        self.client.infer(n_items)

    def latency_ms(self, n_items: int, repeats: int, warmup: int = 2) -> float:
        """Median ms of one request of ``n_items`` sent alone (no queueing), HTTP round trip included."""
        for _ in range(warmup):
            self.client.infer(n_items)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.client.infer(n_items)
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class CpuTriton:
    """A real Triton Inference Server on the CPU (``recforge.inference.triton.TritonServer``: the nvidia-pytriton
    ``tritonserver``, python backend running onnxruntime, ``threads`` intra-op threads per instance unless a
    ``threads`` knob says otherwise).

    ``make_load_target`` writes a local-flavour model repository entry for the knob setting (``max_batch_size``,
    ``preferred_batch``, ``queue_delay_us``, ``instances``, ``threads``), starts the server on free 127.0.0.1
    ports on first use (explicit model control), and returns a load target whose ``activate()`` loads that
    model and unloads the previous setting's. :meth:`close` stops the server and deletes the repository.
    ``server_args`` are extra tritonserver arguments."""

    kind = "cpu-triton"

    def __init__(self, threads: int = 1, *, name: str = "cpu-triton", max_batch: int = MAX_ITEMS, seed: int = 0,
                 startup_timeout_s: float = 120.0, server_args: Sequence[str] = (),
                 work_root: str | Path | None = None):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"CpuTriton.threads must be an integer >= 1, got {threads!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_ITEMS:
            raise ConfigError(f"CpuTriton.max_batch must be an integer in [1, {MAX_ITEMS}], got {max_batch!r}")
        self.threads, self.name, self.max_batch, self.seed = threads, name, max_batch, seed
        self.startup_timeout_s = startup_timeout_s
        self.server_args = tuple(server_args)
        self.work_root = Path(work_root) if work_root is not None else None
        self.server: Any = None
        self.server_version = ""
        self._dir: Path | None = None
        self._models: dict[str, str] = {}  # knob key -> model name
        self._settings: list[_TritonSetting] = []
        self._active: str | None = None

    def available(self) -> tuple[bool, str]:

        return check_installation()

    def describe(self) -> str:
        stack = f"tritonserver {self.server_version}" if self.server_version else "tritonserver"
        return f"{_cpu_model()}, {_cpu_count()} cores; {stack} (nvidia-pytriton), python backend + onnxruntime"

    def _ensure_server(self) -> Any:

        if self.server is not None and self.server.alive():
            return self.server
        if self.server is not None:  # it died: say so rather than silently starting another
            raise TritonError(f"tritonserver of target {self.name} exited (code {self.server.process.returncode}):\n"
                              f"{self.server.log_tail()}")

        root = self.work_root or recforge_home() / "triton" / "profiling"
        root.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=root))
        (self._dir / "repo").mkdir()
        for attempt in range(3):  # a free port can be taken between choosing it and the server binding it
            http, grpc, metrics = free_ports(3)
            server = TritonServer(self._dir / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics,
                                  log_path=self._dir / "tritonserver.log", model_control="explicit",
                                  extra_args=self.server_args, startup_timeout_s=self.startup_timeout_s)
            try:
                server.start().wait_ready()
            except TritonError as err:
                server.stop()
                if attempt < 2 and "address already in use" in str(err).lower():
                    continue
                raise
            self.server = server
            break
        try:
            self.server_version = self.server.http.get(f"{self.server.url}/v2", timeout=5).json().get("version", "")
        except Exception:  # the version is decoration only
            self.server_version = ""
        log.info("tritonserver for target %s ready in %.1f s at %s", self.name, self.server.ready_after_s,
                 self.server.url)
        return self.server

    def _activate(self, model: str) -> None:
        if self._active == model:
            return
        server = self._ensure_server()
        if self._active is not None:  # one setting at a time: its instances get the cores alone
            server.unload_model(self._active)
            self._active = None
        server.load_model(model)
        self._active = model

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> _TritonSetting:

        serving = ServingConfig(
            max_batch_size=int(knobs.get("max_batch_size", self.max_batch)),
            preferred_batch_size=tuple(sorted(int(b) for b in knobs.get("preferred_batch", ()))),
            max_queue_delay_microseconds=int(knobs.get("queue_delay_us", 0)),
            instance_count=int(knobs.get("instances", 1)),
            threads_per_instance=int(knobs.get("threads", self.threads)),
            warmup_batch_sizes=(1,),
            sources={k: f"cpu-triton profiling: knob setting under evaluation {json.dumps(dict(knobs))}"
                     for k in ("max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds",
                               "instance_count", "threads_per_instance")},
        )
        key = knob_key({**serving.to_dict(), "sources": None, "onnx": str(onnx_path)})
        server = self._ensure_server()
        model = self._models.get(key)
        if model is None:
            model = f"setting_{len(self._models) + 1}"
            write_model_repository(server.model_repository, model_name=model, onnx_path=onnx_path, spec=spec,
                                   serving_config=serving, flavour="local",
                                   provenance={"purpose": f"cpu-triton profiling of {onnx_path}",
                                               "knobs": dict(knobs)})
            self._models[key] = model
        pool = int(knobs.get("workers", 2)) + 2
        setting = _TritonSetting(self, model, spec, pool, serving.max_batch_size)
        setting.activate()
        self._settings.append(setting)
        return setting

    def latency_vs_batch(self, load_target: Any, batches: Sequence[int], repeats: int) -> dict[int, float]:
        """{batch: median ms of one request alone} through the server at ``load_target``'s knob setting; batches
        above the model's max_batch_size are left out."""
        load_target.activate()
        return {int(b): load_target.latency_ms(int(b), repeats) for b in sorted(set(batches))
                if int(b) <= load_target.max_batch}

    def close(self) -> None:
        """Stop the server and delete its model repository (idempotent)."""
        for setting in self._settings:
            setting.close()
        self._settings.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._models.clear()
        self._active = None

    def __repr__(self) -> str:
        return f"CpuTriton(name={self.name!r}, threads={self.threads})"


def _cuda_devices() -> list[str]:
    """Names of the CUDA devices here ([] when none): torch's view, else ``nvidia-smi -L`` (this venv's torch is
    the CPU wheel, which sees no GPU even on a GPU machine)."""
    import shutil
    import subprocess

    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_properties(i).name for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken CUDA install is "no device" here
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [line.split(":", 1)[1].split("(")[0].strip() for line in out.stdout.splitlines()
                if line.startswith("GPU ")] if out.returncode == 0 else []
    return []


class GpuOnnxRuntime:
    """onnxruntime's CUDA execution provider (kind ``gpu-onnxruntime``): the same ONNX variant, the same load
    generator, sub-batches run on the GPU. Available when a CUDA device is present *and* onnxruntime has the
    CUDA provider (the ``onnxruntime-gpu`` build); skipped with the missing piece named otherwise."""

    kind = "gpu-onnxruntime"

    def __init__(self, *, name: str = "gpu", device_index: int = 0, max_batch: int = MAX_ITEMS, seed: int = 0):
        self.name, self.device_index, self.max_batch, self.seed = name, device_index, max_batch, seed
        self.threads = 1  # host threads per session; the GPU does the work

    def available(self) -> tuple[bool, str]:
        devices = _cuda_devices()
        if not devices:
            return False, "no CUDA device: skipped"
        try:
            import onnxruntime as ort
        except ImportError as err:
            return False, f"onnxruntime is not importable: {err}"
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, (f"CUDA device {devices[0]} present, but onnxruntime {ort.__version__} has no "
                           "CUDAExecutionProvider (the serving environment needs onnxruntime-gpu): skipped")
        return True, ""

    def describe(self) -> str:
        devices = _cuda_devices()
        return devices[self.device_index] if len(devices) > self.device_index else "CUDA device"

    def providers(self) -> list[Any]:
        return [("CUDAExecutionProvider", {"device_id": self.device_index}), "CPUExecutionProvider"]

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> OnnxTarget:
        target = OnnxTarget(onnx_path, spec, threads=1, max_batch=self.max_batch, seed=self.seed,
                            providers=self.providers())
        if "CUDAExecutionProvider" not in target.session.get_providers():
            raise ConfigError(f"target {self.name}: onnxruntime fell back to the CPU for {onnx_path}")
        return target

    def latency_vs_batch(self, load_target: OnnxTarget, batches: Sequence[int], repeats: int) -> dict[int, float]:
        """{batch: median ms of one request alone} on the GPU session (host-device copies included)."""
        import statistics
        import time

        out = {}
        for b in sorted(set(int(b) for b in batches if int(b) <= load_target.max_batch)):
            load_target.infer(b)  # warm-up (kernel selection)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                load_target.infer(b)
                times.append((time.perf_counter() - start) * 1000.0)
            out[b] = statistics.median(times)
        return out

    def __repr__(self) -> str:
        return f"GpuOnnxRuntime(name={self.name!r}, device={self.device_index})"


def _close(*parts: Any) -> None:
    """``close()`` each part that has one (targets and load targets may hold servers or sessions)."""
    for part in parts:
        if hasattr(part, "close"):
            part.close()


class HybridLoadTarget:
    """The load target of a :class:`HybridCpuGpu` setting: ``infer`` runs on the CPU part (sub-batches); the GPU
    part takes whole queries through :meth:`offload`."""

    def __init__(self, cpu: Any, gpu: Any):
        self.cpu, self.gpu = cpu, gpu
        self.name = f"{cpu.name} + {gpu.name}"
        self.max_batch = int(getattr(cpu, "max_batch", MAX_ITEMS))

    def infer(self, n_items: int) -> None:
        self.cpu.infer(n_items)

    def offload(self, knobs: Mapping[str, Any]) -> Offload:
        return Offload(self.gpu, int(knobs["gpu_threshold"]), workers=int(knobs.get("gpu_workers", 1)))

    def close(self) -> None:
        _close(self.cpu, self.gpu)


class HybridCpuGpu:
    """DeepRecSched's hybrid scheduling (kind ``hybrid-onnxruntime``): one CPU target and one GPU target serve
    the same variant; the load generator sends a query of more than ``gpu_threshold`` items whole to the GPU
    (``recforge.inference.loadgen.Offload``) and splits the smaller ones into sub-batches on the CPU. The threshold is
    hill-climbed together with the sub-batch size: large queries amortise the GPU's launch and copy cost, small
    ones are cheaper on the CPU cores (DeepRecSys fig. 11: the optimal threshold moves with load and model).
    Available when both parts are; the reason names the missing part otherwise."""

    kind = "hybrid-onnxruntime"

    def __init__(self, cpu: HardwareTarget | None = None, gpu: HardwareTarget | None = None, *,
                 name: str = "hybrid"):
        self.cpu = cpu if cpu is not None else CpuOnnxRuntime()
        self.gpu = gpu if gpu is not None else GpuOnnxRuntime()
        self.name = name
        self.threads = int(getattr(self.cpu, "threads", 1))
        self.max_batch = int(getattr(self.cpu, "max_batch", MAX_ITEMS))

    def available(self) -> tuple[bool, str]:
        for part in (self.cpu, self.gpu):
            ok, reason = part.available()
            if not ok:
                return False, f"needs {part.kind} target {part.name!r}: {reason}"
        return True, ""

    def describe(self) -> str:
        return f"{self.cpu.describe()} + {self.gpu.describe()}"

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> HybridLoadTarget:
        cpu = self.cpu.make_load_target(onnx_path, spec, knobs)
        try:
            gpu = self.gpu.make_load_target(onnx_path, spec, knobs)
        except BaseException:
            _close(cpu)
            raise
        return HybridLoadTarget(cpu, gpu)

    def close(self) -> None:
        _close(self.cpu, self.gpu)

    def __repr__(self) -> str:
        return f"HybridCpuGpu(name={self.name!r}, cpu={self.cpu!r}, gpu={self.gpu!r})"


def default_targets(threads: int = 1) -> list[HardwareTarget]:
    """Every target this stage knows, available here or not."""
    return [CpuOnnxRuntime(threads=threads), CpuTriton(threads=threads), GpuOnnxRuntime(),
            HybridCpuGpu(CpuOnnxRuntime(threads=threads), GpuOnnxRuntime())]


def probe_targets(candidates: Sequence[HardwareTarget]) -> tuple[list[HardwareTarget], dict[str, str]]:
    """(the available candidates, {name: why not} for the others); a crashing ``available()`` counts as not."""
    available, skipped = [], {}
    for target in candidates:
        try:
            ok, reason = target.available()
        except Exception as err:  # a probe must not take the others down
            ok, reason = False, f"availability check failed: {_one_line(err)}"
        if ok:
            available.append(target)
        else:
            skipped[target.name] = reason or "not available"
    return available, skipped


def detect_targets(candidates: Sequence[HardwareTarget] | None = None,
                   skipped: dict[str, str] | None = None) -> list[HardwareTarget]:
    """The available targets among ``candidates`` (default: :func:`default_targets`); each skipped one is logged
    with its reason (and added to ``skipped`` when given)."""
    available, not_here = probe_targets(default_targets() if candidates is None else candidates)
    for name, reason in not_here.items():
        log.info("target %s skipped: %s", name, reason)
    if skipped is not None:
        skipped.update(not_here)
    return available


# --------------------------------------------------------------------------------------------------------------
# Configuration


def _int_ok(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class ProfileConfig:
    """Settings of one profiling run (``profile:`` section of a run config); :meth:`from_dict` rejects unknown
    keys and wrong types."""

    p95_target_ms: float = 25.0
    point_duration_s: float = 2.0  # one open-loop run per probed rate
    start_qps: float = 20.0
    max_qps: float = 2000.0
    tolerance: float = 0.1
    max_steps: int = 10  # probed rates per knob setting
    repeats: int = 1  # load runs per probed rate
    confirm: int = 2  # extra load runs at the best setting's LBT rate before it stands (profile_search.confirm_lbt)
    max_error_rate: float = 0.0
    min_achieved_ratio: float = 0.9
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes.parse syntax
    min_sub_batch: int = 16
    max_sub_batch: int = 1024
    threads: tuple[int, ...] = (1, 2)  # intra-op thread candidates (CPU targets): a search axis when > 1 value
    workers: int = 2
    seed: int = 0
    max_evaluations: int = 12  # knob settings the hill climb may evaluate
    latency_batches: tuple[int, ...] = (1, 16, 64, 256, 1024)
    latency_repeats: int = 20
    # cpu-triton only: the profile_search.triton_axes searched next to sub_batch, and the load generator's
    # concurrent HTTP requests (Triton's own queue and instances schedule them; more in flight lets it batch)
    triton_queue_delays_us: tuple[int, ...] = (0, 100, 500, 2000)
    triton_max_instances: int = 2
    triton_workers: int = 4
    # hybrid targets only: DeepRecSched's GPU offload thresholds (items, ascending; the climb starts from the last,
    # where nothing is offloaded); () = from the query sizes (offload_thresholds); the threads feeding the GPU
    gpu_thresholds: tuple[int, ...] = ()
    gpu_workers: int = 1

    def __post_init__(self) -> None:
        self.lbt_config()  # validates the LBT fields
        if not 0 < self.point_duration_s <= 3600:
            raise ConfigError(f"ProfileConfig.point_duration_s must be in (0, 3600], got {self.point_duration_s}")
        deeprecsched_axes(self.max_sub_batch, min_sub_batch=self.min_sub_batch)  # validates the bounds
        if not self.threads or any(not _int_ok(t, 1, 64) for t in self.threads) or \
                len(set(self.threads)) != len(self.threads):
            raise ConfigError(f"ProfileConfig.threads must be distinct integers in [1, 64], got {self.threads}")
        for key, low, high in (("workers", 1, 256), ("seed", 0, 2**63 - 1), ("max_evaluations", 1, 10_000),
                               ("confirm", 0, 100),
                               ("latency_repeats", 1, 10_000)):
            if not _int_ok(getattr(self, key), low, high):
                raise ConfigError(f"ProfileConfig.{key} must be an integer in [{low}, {high}], "
                                  f"got {getattr(self, key)!r}")
        if not self.latency_batches or any(not _int_ok(b, 1, MAX_ITEMS) for b in self.latency_batches):
            raise ConfigError(f"ProfileConfig.latency_batches must be integers in [1, {MAX_ITEMS}], "
                              f"got {self.latency_batches}")
        self.query_sizes()  # validates sizes
        triton_axes(self.max_sub_batch, max_instances=self.triton_max_instances,
                    queue_delays_us=self.triton_queue_delays_us)  # validates the Triton axes
        if not _int_ok(self.triton_workers, 1, 256):
            raise ConfigError(f"ProfileConfig.triton_workers must be an integer in [1, 256], "
                              f"got {self.triton_workers!r}")
        if not _int_ok(self.gpu_workers, 1, 64):
            raise ConfigError(f"ProfileConfig.gpu_workers must be an integer in [1, 64], got {self.gpu_workers!r}")
        if any(not _int_ok(t, 0, MAX_ITEMS) for t in self.gpu_thresholds):
            raise ConfigError(f"ProfileConfig.gpu_thresholds must be integers in [0, {MAX_ITEMS}], "
                              f"got {self.gpu_thresholds}")
        if self.gpu_thresholds:
            deeprecsched_axes(gpu_thresholds=self.gpu_thresholds)  # validates their order

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ProfileConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lbt_config(self) -> LBTConfig:
        return LBTConfig(p95_target_ms=self.p95_target_ms, start_qps=self.start_qps, max_qps=self.max_qps,
                         max_error_rate=self.max_error_rate, min_achieved_ratio=self.min_achieved_ratio,
                         tolerance=self.tolerance, max_steps=self.max_steps, repeats=self.repeats)

    def query_sizes(self) -> QuerySizes:
        return QuerySizes.parse(self.sizes)


# --------------------------------------------------------------------------------------------------------------
# Profiling


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_doc(sizes: QuerySizes, sub_batch_axis: Sequence[int]) -> dict[str, Any]:
    """The profile's ``load`` section for these query sizes and sub-batch axis."""
    if sizes.kind == "lognormal":
        doc: dict[str, Any] = {"distribution": "lognormal", "params": {"mu": sizes.params[0], "sigma": sizes.params[1]}}
    elif sizes.kind == "normal":
        doc = {"distribution": "normal", "params": {"mean": sizes.params[0], "std": sizes.params[1]}}
    elif sizes.kind == "file":
        doc = {"distribution": "empirical", "params": {"source": sizes.source},
               "mean_items_per_query": sum(sizes.values) / len(sizes.values)}
    else:  # fixed n items: an empirical distribution of one value
        n = int(sizes.params[0])
        doc = {"distribution": "empirical", "params": {"source": f"fixed:{n}"}, "mean_items_per_query": float(n)}
    if len(sub_batch_axis) == 1:
        doc["sub_batch_policy"] = {"mode": "fixed", "sub_batch": int(sub_batch_axis[0])}
    else:
        doc["sub_batch_policy"] = {"mode": "searched"}
    return doc


def _search_space(target: HardwareTarget, cfg: ProfileConfig) -> tuple[dict[str, tuple], dict[str, Any], dict]:
    """(axes, fixed knobs, start): DeepRecSched's sub-batch axis, plus intra-op threads on CPU targets, plus the
    Triton axes on cpu-triton (climbed from plain serving: one request per typical query, no preferred size, the
    shortest queue delay, one instance; the Triton max_batch_size is a fixed knob, so that a profile records it)."""
    axes = dict(deeprecsched_axes(cfg.max_sub_batch, min_sub_batch=cfg.min_sub_batch))
    fixed: dict[str, Any] = {"workers": cfg.workers}
    start: dict[str, Any] = {}
    if target.kind.startswith(("cpu-", "hybrid-")):
        if len(cfg.threads) > 1:
            axes["threads"] = tuple(cfg.threads)
        else:
            fixed["threads"] = cfg.threads[0]
    if target.kind.startswith("hybrid-"):
        thresholds = cfg.gpu_thresholds or offload_thresholds(cfg.query_sizes(), seed=cfg.seed)
        axes.update(deeprecsched_axes(cfg.max_sub_batch, min_sub_batch=cfg.min_sub_batch, gpu_thresholds=thresholds))
        fixed["gpu_workers"] = cfg.gpu_workers
        start = {"gpu_threshold": thresholds[-1]}  # DeepRecSched starts CPU-only and offloads step by step
    if target.kind == "cpu-triton":
        triton = triton_axes(cfg.max_sub_batch, max_instances=cfg.triton_max_instances,
                             queue_delays_us=cfg.triton_queue_delays_us)
        axes.update(triton)
        fixed["workers"] = cfg.triton_workers
        fixed["max_batch_size"] = int(getattr(target, "max_batch", MAX_ITEMS))
        # every request pays an HTTP round trip and a hop to the python backend (~2-3 ms here), so start from one
        # request per typical query (the smallest sub-batch >= the mean query) and let the climb split it
        mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), axes["sub_batch"]))
        sub_batch = next((b for b in axes["sub_batch"] if b >= mean_items), axes["sub_batch"][-1])
        start = {"sub_batch": sub_batch, "preferred_batch": [], "queue_delay_us": triton["queue_delay_us"][0],
                 "instances": 1}
    return axes, fixed, start


OFFLOAD_FRACTIONS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0)


def offload_thresholds(sizes: QuerySizes, fractions: Sequence[float] = OFFLOAD_FRACTIONS, *, seed: int = 0,
                       n: int = 20_000) -> tuple[int, ...]:
    """GPU thresholds (ascending) that offload about these fractions of the queries, from a sample of the query
    sizes: fraction 1 is threshold 0 (everything), fraction 0 is MAX_ITEMS (nothing). Fixed item steps would
    leave the climb on a plateau: lognormal(5.1, 0.2) queries are 100-270 items, so thresholds 256 and 1024
    offload almost the same nothing, and a hill climb starting CPU-only would stop there."""
    import numpy as np

    sample = np.sort(sizes.sample(n, seed))
    out = set()
    for f in fractions:
        if f >= 1:
            out.add(0)
        elif f <= 0:
            out.add(MAX_ITEMS)
        else:  # queries of more than the (1 - f) quantile are offloaded
            out.add(int(np.quantile(sample, 1.0 - f)))
    return tuple(sorted(out))


def latency_vs_batch(onnx_path: str | Path, spec: Any, batches: Sequence[int], threads: int, repeats: int,
                     seed: int = 0) -> dict[int, float]:
    """{batch: median ms of one onnxruntime request of that many items} (no queueing)."""

    spec = load_spec(spec)
    return {int(b): onnx_latency_ms(onnx_path, example_inputs(spec, int(b), seed), threads=threads,
                                    repeats=repeats, warmup=min(3, repeats))
            for b in sorted(set(batches))}


def profile_variant(onnx_path: str | Path, spec: Any, target: HardwareTarget, *, family: str, variant: str,
                    variant_run_id: str, accuracy: Mapping[str, float], cfg: ProfileConfig | None = None) -> dict:
    """The validated profile document of ``onnx_path`` on ``target`` (LBT search over the knobs, LBT curve at the
    best knobs, latency against batch size). Raises when the target cannot serve the model."""
    cfg = cfg or ProfileConfig()
    check_run_id(variant_run_id)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"onnx_path {onnx_path} is not a file")
    sizes = cfg.query_sizes()
    axes, fixed, start = _search_space(target, cfg)
    load_targets: dict[str, Any] = {}  # one loaded model per knob setting that changes the session

    def load_target(knobs: Mapping[str, Any]) -> Any:
        key = json.dumps({k: v for k, v in knobs.items() if k not in ("sub_batch", "workers", "gpu_threshold",
                                                                       "gpu_workers")}, sort_keys=True)
        if key not in load_targets:
            load_targets[key] = target.make_load_target(onnx_path, spec, dict(knobs))
        elif hasattr(load_targets[key], "activate"):  # a server-side setting another one may have displaced
            load_targets[key].activate()
        return load_targets[key]

    def measure(rate: float, knobs: dict) -> Measurement:
        used = load_target(knobs)
        offload = used.offload(knobs) if "gpu_threshold" in knobs else None  # a hybrid target's GPU part
        result = run_open_loop(used, rate, duration_s=cfg.point_duration_s, sizes=sizes,
                               sub_batch=int(knobs["sub_batch"]), workers=int(knobs.get("workers", cfg.workers)),
                               seed=cfg.seed, offload=offload)

        return Measurement.from_load(result, rate, cfg.point_duration_s)

    evaluator = LBTEvaluator(measure, cfg.lbt_config())
    notes = []
    try:
        search = HillClimb(axes, start, fixed=fixed, max_evaluations=cfg.max_evaluations).search(evaluator)
        # the climb compares single short runs; the figure that goes into the registry is re-measured
        lbt = confirm_lbt(measure, evaluator.result_for(search.best_knobs), cfg.confirm)
        threads = int(search.best_knobs.get("threads", getattr(target, "threads", 1)))
        if hasattr(target, "latency_vs_batch"):  # through the target's own serving stack
            batch_ms = target.latency_vs_batch(load_target(search.best_knobs), cfg.latency_batches,
                                               cfg.latency_repeats)
            notes.append("latency_vs_batch measured through the server at the best knobs (HTTP round trip "
                         "included)")
        else:
            batch_ms = latency_vs_batch(onnx_path, spec, cfg.latency_batches, threads, cfg.latency_repeats, cfg.seed)
        device = target.describe()
    finally:  # servers and sessions end with the variant's profiling, also when it fails
        _close(*load_targets.values(), target)
    doc = build_profile(
        model_family=family, variant=variant, variant_run_id=variant_run_id, onnx_sha256=file_sha256(onnx_path),
        target={"name": target.name, "kind": target.kind, "device": device, "threads": threads,
                "workers": int(search.best_knobs.get("workers", cfg.workers))},
        load=load_doc(sizes, axes["sub_batch"]), search=search, lbt=lbt, accuracy=accuracy,
        latency_vs_batch=batch_ms,
        notes=[f"{len(evaluator.results)} knob settings, {cfg.point_duration_s:g} s per load point", *notes],
    )
    validate_profile(doc)
    return doc


def check_run_id(variant_run_id: str) -> str:
    if not isinstance(variant_run_id, str) or not RUN_ID.fullmatch(variant_run_id):
        raise ConfigError(f"variant_run_id must be an MLflow run id (32 lowercase hex digits), got {variant_run_id!r}")
    return variant_run_id


def profile_all(onnx_path: str | Path, spec: Any, targets: Sequence[HardwareTarget], *, family: str, variant: str,
                variant_run_id: str, accuracy: Mapping[str, float],
                cfg: ProfileConfig | None = None) -> tuple[list[dict], dict[str, str]]:
    """(profiles, {target name: why skipped}): each available target profiled in turn; an unavailable target or
    one that raises is reported on one line and the others still run."""
    check_run_id(variant_run_id)  # a bad argument is the caller's error, not every target's
    if not Path(onnx_path).is_file():
        raise ConfigError(f"onnx_path {onnx_path} is not a file")
    available, skipped = probe_targets(targets)
    profiles = []
    for target in available:
        try:
            profiles.append(profile_variant(onnx_path, spec, target, family=family, variant=variant,
                                            variant_run_id=variant_run_id, accuracy=accuracy, cfg=cfg))
        except Exception as err:  # one broken target must not stop the others
            skipped[target.name] = _one_line(err)
            log.warning("target %s failed: %s", target.name, skipped[target.name])
    return profiles, skipped


# --------------------------------------------------------------------------------------------------------------
# CLI


def _out_path(out: Path, name: str, many: bool) -> Path:
    return out.with_name(f"{out.stem}.{name}{out.suffix or '.json'}") if many else out


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.profiling.targets", description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", required=True, help="ONNX model of the variant")
    parser.add_argument("--spec", required=True, help="feature spec JSON of the model")
    parser.add_argument("--family", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--accuracy", required=True,
                        help='JSON {"auc": ..., "delta_auc": ...} of the variant (from compress_and_validate)')
    parser.add_argument("--run-id", required=True, help="MLflow run id of the variant (32 hex digits)")
    parser.add_argument("--out", default="profile.json",
                        help="profile JSON; with several targets one file per target: <stem>.<target>.json")
    parser.add_argument("--config", default=None, help="ProfileConfig as a JSON object")
    parser.add_argument("--targets", default=None,
                        help="comma-separated target names or kinds (default: all: cpu, cpu-triton, gpu)")
    args = parser.parse_args(argv)

    def step() -> dict:
        cfg = ProfileConfig.from_dict(json_object(args.config))
        accuracy = json_object(args.accuracy, "--accuracy")
        known = [CpuOnnxRuntime(threads=cfg.threads[0]), CpuTriton(threads=cfg.threads[0]), GpuOnnxRuntime()]
        names = [n.strip() for n in args.targets.split(",") if n.strip()] if args.targets else None
        if names is None:
            targets = known
        else:
            unknown = [n for n in names if not any(n in (t.name, t.kind) for t in known)]
            if unknown:
                raise ConfigError(f"--targets: unknown target(s) {unknown}; known: "
                                  f"{', '.join(f'{t.name} ({t.kind})' for t in known)}")
            targets = [t for t in known if t.name in names or t.kind in names]
        profiles, skipped = profile_all(args.onnx, args.spec, targets, family=args.family, variant=args.variant,
                                        variant_run_id=args.run_id, accuracy=accuracy, cfg=cfg)
        if not profiles:
            raise RecForgeError("no target produced a profile: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        out = Path(args.out)
        written = []
        for doc in profiles:
            path = _out_path(out, doc["target"]["name"], len(profiles) > 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=2) + "\n")
            written.append({"target": doc["target"]["name"], "path": str(path),
                            "lbt_qps": doc["latency_bounded_throughput_qps"], "lbt_capped": doc["lbt_capped"],
                            "best_knobs": doc["search"]["best_knobs"]})
        return {"profiles": written, "skipped": skipped}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
