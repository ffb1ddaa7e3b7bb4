"""The ``cpu-triton`` target: a real ``tritonserver`` (``recforge.inference.triton``) on 127.0.0.1 serving a
local-flavour model repository (``recforge.inference.model_repo``: python backend running onnxruntime) over HTTP.

Knobs ``sub_batch`` and ``search.axes.triton_batching_axes`` (``instances``, ``queue_delay_us``,
``preferred_batch``, ``max_batch_size``), plus ``threads`` per instance. One server per profiled variant, one
model per knob setting (only the setting being measured is loaded); the server is stopped when the variant's
profiling ends.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.contracts.targets import CPU_TRITON
from recforge.core import cpusets as cs
from recforge.core.config import recforge_home
from recforge.core.errors import ConfigError, first_line
from recforge.core.hw import cpu_count, cpu_model
from recforge.core.ports import free_ports
from recforge.core.timing import median_ms
from recforge.inference.loadgen import MAX_ITEMS
from recforge.inference.model_repo import ServingConfig, write_model_repository
from recforge.inference.triton import TritonError, TritonHttpTarget, TritonServer, check_installation
from recforge.pipeline.profiling.search.axes import max_batch_sizes as max_batch_sizes_for
from recforge.pipeline.profiling.search.base import knob_key

log = logging.getLogger(__name__)
GROUPS = itertools.count()  # tells apart the CPU groups of several isolated targets of one process


class TritonSetting:
    """The load target of one knob setting on :class:`CpuTriton`'s server: model ``model`` (its own folder in the
    repository). ``activate()`` makes it the loaded model; ``infer`` sends HTTP requests to it."""

    def __init__(self, owner: CpuTriton, model: str, spec: Any, pool: int, max_batch: int):
        self.owner, self.model, self.spec, self.pool = owner, model, spec, pool
        self.name = f"triton:{model}"
        self.max_batch = max_batch
        self.client: Any = None

    def activate(self) -> None:
        self.owner.activate(self.model)
        if self.client is None:
            self.client = TritonHttpTarget(self.owner.server.url, self.model, self.spec, max_batch=self.max_batch,
                                           seed=self.owner.seed, pool=self.pool)

    def infer(self, n_items: int) -> None:
        self.client.infer(n_items)

    def latency_ms(self, n_items: int, repeats: int, warmup: int = 2) -> float:
        """Median ms of one request of ``n_items`` sent alone (no queueing), HTTP round trip included."""
        return median_ms(lambda: self.client.infer(n_items), repeats, warmup)

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
    ``server_args`` are extra tritonserver arguments. ``max_batch_sizes`` are the max_batch_size candidates the
    knob search tries (default ``search.axes.max_batch_sizes(max_batch)``: about one query, and ``max_batch``);
    ``cpus`` the CPUs the node may use (default: this process's, or its CPU set's), which bounds the instance
    counts searched.

    ``isolate`` gives the server (and its backend stubs) and the load generator disjoint CPU sets
    (``recforge.core.cpusets.measurement_groups``): the server starts in its set, and a measurement runs inside
    :meth:`apparatus`, which moves this process to the other set for its duration. On a host with one CPU the two
    share it, and :meth:`describe` says so. :meth:`close` removes the groups."""

    kind = name = CPU_TRITON

    def __init__(self, threads: int = 1, *, max_batch: int = MAX_ITEMS, seed: int = 0,
                 startup_timeout_s: float = 120.0, server_args: Sequence[str] = (),
                 work_root: str | Path | None = None, max_batch_sizes: Sequence[int] | None = None,
                 cpus: int | None = None, isolate: bool = False):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"CpuTriton.threads must be an integer >= 1, got {threads!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_ITEMS:
            raise ConfigError(f"CpuTriton.max_batch must be an integer in [1, {MAX_ITEMS}], got {max_batch!r}")
        self.threads, self.max_batch, self.seed = threads, max_batch, seed
        sizes = tuple(max_batch_sizes) if max_batch_sizes is not None else max_batch_sizes_for(max_batch)
        if not sizes or list(sizes) != sorted(set(sizes)) or sizes[-1] != max_batch or any(
                not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
            raise ConfigError(f"CpuTriton.max_batch_sizes must be distinct integers >= 1, ascending, ending with "
                              f"max_batch {max_batch}, got {max_batch_sizes!r}")
        self.max_batch_sizes = sizes
        if cpus is not None and (not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1):
            raise ConfigError(f"CpuTriton.cpus must be an integer >= 1, got {cpus!r}")
        self.host_cores = cpu_count()  # before apparatus() narrows this process's CPUs
        self.client_group: cs.CpuGroup | None = None  # the load generator's CPU set (isolate)
        self.placement: cs.CpuGroup | None = None  # the server's
        self.shared_reason = ""  # why isolate could not split the CPUs
        if isolate:
            try:
                self.client_group, self.placement = cs.measurement_groups(f"profiling-{os.getpid()}-{next(GROUPS)}")
            except ConfigError as err:
                self.shared_reason = first_line(err)
        self.cpus = cpus if cpus is not None else (len(self.placement.placement.cpus) if self.placement
                                                   else self.host_cores)
        self.startup_timeout_s = startup_timeout_s
        self.server_args = tuple(server_args)
        self.work_root = Path(work_root) if work_root is not None else None
        self.server: Any = None
        self.server_version = ""
        self._dir: Path | None = None
        self._models: dict[str, str] = {}  # knob key -> model name
        self._settings: list[TritonSetting] = []
        self._active: str | None = None

    def available(self) -> tuple[bool, str]:
        return check_installation()

    def describe(self) -> str:
        stack = f"tritonserver {self.server_version}" if self.server_version else "tritonserver"
        text = f"{cpu_model()}, {self.host_cores} cores; {stack} (nvidia-pytriton), python backend + onnxruntime"
        if self.placement is not None and self.client_group is not None:
            return (f"{text}; server on CPUs {self.placement.placement.cpu_list}, load generator on CPUs "
                    f"{self.client_group.placement.cpu_list}")
        return f"{text}; load generator on the server's CPUs" + (f" ({self.shared_reason})" if self.shared_reason
                                                                 else "")

    def apparatus_doc(self) -> dict[str, str]:
        """Where the load generator runs against this server, as the profile's ``target.apparatus`` records it."""
        if self.placement is not None and self.client_group is not None:
            return {"placement": "isolated", "server_cpus": self.placement.placement.cpu_list,
                    "client_cpus": self.client_group.placement.cpu_list}
        return {"placement": "shared"}

    def apparatus(self) -> contextlib.AbstractContextManager:
        """The context a measurement of this target runs in: this process on the load generator's CPU set when the
        target is isolated, else as it is."""
        return cs.this_process_in(self.client_group) if self.client_group is not None else contextlib.nullcontext()

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
                                  extra_args=self.server_args, startup_timeout_s=self.startup_timeout_s,
                                  placement=self.placement)
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

    def activate(self, model: str) -> None:
        """Load ``model`` (a knob setting) and unload the previous one: one setting at a time."""
        if self._active == model:
            return
        server = self._ensure_server()
        if self._active is not None:  # one setting at a time: its instances get the cores alone
            server.unload_model(self._active)
            self._active = None
        server.load_model(model)
        self._active = model

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> TritonSetting:
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
        setting = TritonSetting(self, model, spec, pool, serving.max_batch_size)
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
        for group in (self.placement, self.client_group):
            if group is not None:
                group.remove()
        self._models.clear()
        self._active = None

    def __repr__(self) -> str:
        return f"CpuTriton(threads={self.threads})"
