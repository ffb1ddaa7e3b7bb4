"""Which hardware targets exist and which run here: :func:`default_targets` (one of each kind this build
profiles), :func:`probe_targets` / :func:`detect_targets` (the available ones, and why the others are not), and
:func:`resolve_targets` (the targets a config names)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from recforge.pipeline.profiling.targets.base import HardwareTarget, failure_reason
from recforge.pipeline.profiling.targets.cpu_onnxruntime import CpuOnnxRuntime
from recforge.pipeline.profiling.targets.cpu_triton import CpuTriton
from recforge.pipeline.profiling.targets.gpu_onnxruntime import GpuOnnxRuntime
from recforge.pipeline.profiling.targets.hybrid import HybridCpuGpu

log = logging.getLogger(__name__)


def default_targets(threads: int = 1) -> list[HardwareTarget]:
    """Every target this stage knows (``recforge.contracts.targets.PROFILED_TARGETS``), available here or not."""
    return [CpuOnnxRuntime(threads=threads), CpuTriton(threads=threads, isolate=True), GpuOnnxRuntime(),
            HybridCpuGpu(CpuOnnxRuntime(threads=threads), GpuOnnxRuntime())]


def probe_targets(candidates: Sequence[HardwareTarget]) -> tuple[list[HardwareTarget], dict[str, str]]:
    """(the available candidates, {name: why not} for the others); a crashing ``available()`` counts as not."""
    available, skipped = [], {}
    for target in candidates:
        try:
            ok, reason = target.available()
        except Exception as err:  # a probe must not take the others down
            ok, reason = False, f"availability check failed: {failure_reason(err)}"
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


def resolve_targets(names: Sequence[str], threads: int = 1) -> tuple[list[HardwareTarget], dict[str, str]]:
    """(the targets of :func:`default_targets` named in ``names``, in that order and each once; {name: why} for
    the names that are no target of this build)."""
    known = {t.name: t for t in default_targets(threads=threads)}
    chosen, unknown = [], {}
    for name in names:
        if name not in known:
            unknown[name] = f"unknown target {name!r} (this build profiles {', '.join(known)}): skipped"
        elif known[name] not in chosen:
            chosen.append(known[name])
    return chosen, unknown
