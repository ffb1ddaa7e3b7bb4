"""recforge.pipeline.profiling.targets: each hardware target, their names (== kinds), and the factory that says
which ones run here."""

from __future__ import annotations

import contextlib
import logging

from recforge.contracts.targets import GPU_TRITON, PROFILED_TARGETS, TARGETS
from recforge.core import cpusets
from recforge.pipeline.profiling.targets import gpu_onnxruntime
from recforge.pipeline.profiling.targets.base import HardwareTarget, apparatus_of
from recforge.pipeline.profiling.targets.cpu_onnxruntime import CpuOnnxRuntime
from recforge.pipeline.profiling.targets.cpu_triton import CpuTriton
from recforge.pipeline.profiling.targets.factory import default_targets, detect_targets, resolve_targets
from recforge.pipeline.profiling.targets.hybrid import HybridCpuGpu
from tests.pipeline.profiling.fakes import Absent, Sleeping


def test_detect_targets_here_skips_gpu(caplog):
    skipped: dict[str, str] = {}
    with caplog.at_level(logging.INFO, logger="recforge.pipeline.profiling.targets.factory"):
        found = detect_targets(skipped=skipped)
    assert [t.kind for t in found] == ["cpu-onnxruntime", "cpu-triton"]
    assert isinstance(found[0], HardwareTarget)
    assert skipped == {"gpu-onnxruntime": "no CUDA device: skipped",
                       "hybrid-onnxruntime": "needs gpu-onnxruntime target: no CUDA device: skipped"}
    assert "gpu-onnxruntime skipped: no CUDA device" in caplog.text


def test_every_target_is_named_by_its_kind_and_the_factory_has_one_per_profiled_target():
    targets = default_targets(threads=2)
    assert [t.name for t in targets] == [t.kind for t in targets]
    assert sorted(t.name for t in targets) == sorted(PROFILED_TARGETS)
    assert all(isinstance(t, HardwareTarget) and t.name in TARGETS for t in targets)
    assert GPU_TRITON in TARGETS and GPU_TRITON not in PROFILED_TARGETS  # sized by k8s, profiled elsewhere


def test_targets_resolve_by_name_once_each_and_unknown_ones_are_reported():
    targets, unknown = resolve_targets(["cpu-onnxruntime", "gpu-onnxruntime", "tpu-v9", "cpu-onnxruntime", "cpu"])
    assert [t.kind for t in targets] == ["cpu-onnxruntime", "gpu-onnxruntime"]
    assert list(unknown) == ["tpu-v9", "cpu"]  # "cpu" was the old name of cpu-onnxruntime: one vocabulary now
    assert "unknown target 'tpu-v9'" in unknown["tpu-v9"] and "cpu-onnxruntime" in unknown["cpu"]


def test_gpu_onnxruntime_target_names_what_is_missing(monkeypatch):
    """No GPU can run here: the device list is faked to check the second reason (CUDA device, CPU-only ORT)."""
    target = gpu_onnxruntime.GpuOnnxRuntime()
    monkeypatch.setattr(gpu_onnxruntime, "cuda_devices", lambda: [])
    assert target.available() == (False, "no CUDA device: skipped")
    monkeypatch.setattr(gpu_onnxruntime, "cuda_devices", lambda: ["NVIDIA H100"])
    ok, why = target.available()
    assert not ok and "NVIDIA H100 present" in why and "CUDAExecutionProvider" in why and "onnxruntime-gpu" in why
    assert target.kind == target.name == "gpu-onnxruntime" and target.describe() == "NVIDIA H100"
    assert any(t.kind == "gpu-onnxruntime" for t in default_targets())


def test_hybrid_target_names_the_missing_part(monkeypatch):
    monkeypatch.setattr(gpu_onnxruntime, "cuda_devices", lambda: [])
    hybrid = HybridCpuGpu()
    assert hybrid.available() == (False, "needs gpu-onnxruntime target: no CUDA device: skipped")
    assert hybrid.name == hybrid.kind == "hybrid-onnxruntime"
    assert HybridCpuGpu(Sleeping("c", "cpu-onnxruntime", 1, 0), Absent()).available() == (
        False, "needs cpu-onnxruntime target 'absent': not plugged in")


def test_an_isolated_triton_target_splits_the_cpus_between_server_and_load_generator(monkeypatch):
    monkeypatch.setattr(cpusets, "host_cpus", lambda: (0, 1, 2))
    target = CpuTriton(isolate=True)  # nothing starts until a setting is measured
    assert target.client_group.placement.cpus == (0,) and target.placement.placement.cpus == (1,)
    assert target.cpus == 1  # the knob search's instance counts stop at the server's CPU set
    assert "server on CPUs 1, load generator on CPUs 0" in target.describe()
    assert target.apparatus_doc() == {"placement": "isolated", "server_cpus": "1", "client_cpus": "0"}
    assert CpuOnnxRuntime().apparatus_doc() == {"placement": "in-process"}
    assert apparatus_of(CpuOnnxRuntime()).__class__ is contextlib.nullcontext  # in-process: nothing to split


def test_on_one_cpu_an_isolated_triton_target_shares_it_and_says_why(monkeypatch):
    monkeypatch.setattr(cpusets, "host_cpus", lambda: (0,))
    target = CpuTriton(isolate=True)
    assert target.client_group is None and target.placement is None and target.apparatus_doc() == {"placement":
                                                                                                     "shared"}
    assert "load generator on the server's CPUs (cannot place" in target.describe()
    with target.apparatus():  # runs as it is
        pass
