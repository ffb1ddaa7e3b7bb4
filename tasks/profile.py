"""Profiling stage: hardware targets behind one interface, and the profile of one variant on each of them.

A :class:`HardwareTarget` says whether it can run here (``available()``), what it runs on (``describe()``) and
builds a ``serving.loadgen`` target for a knob setting (``make_load_target``). :func:`profile_variant` measures
the latency-bounded throughput (LBT) of one ONNX variant on one target: every LBT probe is an open-loop
``run_open_loop`` of ``point_duration_s`` seconds; :class:`~tasks.profile_search.HillClimb` climbs the
DeepRecSched axes (sub-batch size, and intra-op threads on a CPU); the single-request latency against batch size
is measured with onnxruntime; the result is a profile document validated against ``serving/profile_schema.json``.
:func:`profile_all` profiles every target and reports a failing or unavailable one on one line without stopping
the others.

Targets:

* :class:`CpuOnnxRuntime` (kind ``cpu-onnxruntime``): onnxruntime's CPU provider; knobs ``threads`` (intra-op),
  ``sub_batch``, ``workers``.
* :class:`GpuTorch` (kind ``gpu-torch``): a placeholder; ``available()`` checks ``torch.cuda.is_available()``
  and ``make_load_target`` raises until GPU serving is built.
* TODO(cpu-triton): a Triton Inference Server CPU target (kind ``cpu-triton``, knobs from
  ``profile_search.triton_axes``) is a later piece.

CLI::

    python -m tasks.profile --onnx M.onnx --spec spec.json --family F --variant V \\
        --accuracy '{"auc": 0.78, "delta_auc": -0.001}' --run-id RUNID [--out profile.json] [--config JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from serving.loadgen import MAX_ITEMS, OnnxTarget, QuerySizes, run_open_loop
from tasks.config import config_from_dict
from tasks.errors import ConfigError, RecForgeError
from tasks.profile_search import (
    HillClimb,
    LBTConfig,
    LBTEvaluator,
    Measurement,
    build_profile,
    deeprecsched_axes,
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
        """A ``serving.loadgen`` target (name, infer(n_items)) serving ``onnx_path`` with these knobs."""
        ...


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CpuOnnxRuntime:
    """onnxruntime on the CPU (``serving.loadgen.OnnxTarget``); ``threads`` is the default intra-op thread count,
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


class GpuTorch:
    """GPU placeholder (kind ``gpu-torch``): detected through ``torch.cuda``; serving on it is not built yet, so
    ``make_load_target`` raises (``profile_all`` reports that as the target's one-line error)."""

    kind = "gpu-torch"

    def __init__(self, *, name: str = "gpu", device_index: int = 0):
        self.name, self.device_index = name, device_index

    def available(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError as err:
            return False, f"torch is not importable: {err}"
        if not torch.cuda.is_available():
            return False, "no CUDA device: skipped"
        return True, ""

    def describe(self) -> str:
        import torch

        props = torch.cuda.get_device_properties(self.device_index)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"

    def make_load_target(self, onnx_path: str | Path, spec: Any, knobs: Mapping[str, Any]) -> Any:
        raise ConfigError(f"target {self.name} ({self.kind}): GPU serving is not implemented yet")

    def __repr__(self) -> str:
        return f"GpuTorch(name={self.name!r})"


def default_targets(threads: int = 1) -> list[HardwareTarget]:
    """Every target this stage knows, available here or not."""
    return [CpuOnnxRuntime(threads=threads), GpuTorch()]


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
    max_error_rate: float = 0.0
    min_achieved_ratio: float = 0.9
    sizes: str = "lognormal"  # serving.loadgen.QuerySizes.parse syntax
    min_sub_batch: int = 16
    max_sub_batch: int = 1024
    threads: tuple[int, ...] = (1, 2)  # intra-op thread candidates (CPU targets): a search axis when > 1 value
    workers: int = 2
    seed: int = 0
    max_evaluations: int = 12  # knob settings the hill climb may evaluate
    latency_batches: tuple[int, ...] = (1, 16, 64, 256, 1024)
    latency_repeats: int = 20

    def __post_init__(self) -> None:
        self.lbt_config()  # validates the LBT fields
        if not 0 < self.point_duration_s <= 3600:
            raise ConfigError(f"ProfileConfig.point_duration_s must be in (0, 3600], got {self.point_duration_s}")
        deeprecsched_axes(self.max_sub_batch, min_sub_batch=self.min_sub_batch)  # validates the bounds
        if not self.threads or any(not _int_ok(t, 1, 64) for t in self.threads) or \
                len(set(self.threads)) != len(self.threads):
            raise ConfigError(f"ProfileConfig.threads must be distinct integers in [1, 64], got {self.threads}")
        for key, low, high in (("workers", 1, 256), ("seed", 0, 2**63 - 1), ("max_evaluations", 1, 10_000),
                               ("latency_repeats", 1, 10_000)):
            if not _int_ok(getattr(self, key), low, high):
                raise ConfigError(f"ProfileConfig.{key} must be an integer in [{low}, {high}], "
                                  f"got {getattr(self, key)!r}")
        if not self.latency_batches or any(not _int_ok(b, 1, MAX_ITEMS) for b in self.latency_batches):
            raise ConfigError(f"ProfileConfig.latency_batches must be integers in [1, {MAX_ITEMS}], "
                              f"got {self.latency_batches}")
        self.query_sizes()  # validates sizes

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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _search_space(target: HardwareTarget, cfg: ProfileConfig) -> tuple[dict[str, tuple], dict[str, Any]]:
    """(axes, fixed knobs): DeepRecSched's sub-batch axis, plus intra-op threads on CPU targets."""
    axes = dict(deeprecsched_axes(cfg.max_sub_batch, min_sub_batch=cfg.min_sub_batch))
    fixed: dict[str, Any] = {"workers": cfg.workers}
    if target.kind.startswith("cpu-"):
        if len(cfg.threads) > 1:
            axes["threads"] = tuple(cfg.threads)
        else:
            fixed["threads"] = cfg.threads[0]
    return axes, fixed


def latency_vs_batch(onnx_path: str | Path, spec: Any, batches: Sequence[int], threads: int, repeats: int,
                     seed: int = 0) -> dict[int, float]:
    """{batch: median ms of one onnxruntime request of that many items} (no queueing)."""
    from model_defs.export import example_inputs
    from serving.loadgen import load_spec
    from tasks.compress import onnx_latency_ms

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
    axes, fixed = _search_space(target, cfg)
    load_targets: dict[str, Any] = {}  # one loaded model per knob setting that changes the session

    def load_target(knobs: Mapping[str, Any]) -> Any:
        key = json.dumps({k: v for k, v in knobs.items() if k not in ("sub_batch", "workers")}, sort_keys=True)
        if key not in load_targets:
            load_targets[key] = target.make_load_target(onnx_path, spec, dict(knobs))
        return load_targets[key]

    def measure(rate: float, knobs: dict) -> Measurement:
        result = run_open_loop(load_target(knobs), rate, duration_s=cfg.point_duration_s, sizes=sizes,
                               sub_batch=int(knobs["sub_batch"]), workers=int(knobs.get("workers", cfg.workers)),
                               seed=cfg.seed)

        def ms(value: Any) -> float:
            return float(value) if value is not None else math.nan

        # Poisson noise: a short window issues fewer queries than rate x duration about half the time, which the
        # saturation rule (achieved >= ratio x offered) would read as falling behind. Scale the achieved rate by
        # offered / actually-issued so that only the server's lag (completions stretching past the window) counts.
        issued_qps = result.queries / cfg.point_duration_s
        achieved = float(result.achieved_qps) * (rate / issued_qps if issued_qps > 0 else 1.0)
        return Measurement(rate_qps=rate, p50_ms=ms(result.p50_ms), p95_ms=ms(result.p95_ms),
                           p99_ms=ms(result.p99_ms), achieved_qps=achieved,
                           errors=int(result.errors), queries=int(result.queries))

    evaluator = LBTEvaluator(measure, cfg.lbt_config())
    search = HillClimb(axes, fixed=fixed, max_evaluations=cfg.max_evaluations).search(evaluator)
    lbt = evaluator.result_for(search.best_knobs)
    threads = int(search.best_knobs.get("threads", getattr(target, "threads", 1)))
    batch_ms = latency_vs_batch(onnx_path, spec, cfg.latency_batches, threads, cfg.latency_repeats, cfg.seed)
    doc = build_profile(
        model_family=family, variant=variant, variant_run_id=variant_run_id, onnx_sha256=file_sha256(onnx_path),
        target={"name": target.name, "kind": target.kind, "device": target.describe(), "threads": threads,
                "workers": int(search.best_knobs.get("workers", cfg.workers))},
        load=load_doc(sizes, axes["sub_batch"]), search=search, lbt=lbt, accuracy=accuracy,
        latency_vs_batch=batch_ms,
        notes=[f"{len(evaluator.results)} knob settings, {cfg.point_duration_s:g} s per load point"],
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
    from tasks.cli import json_object, run_step

    parser = argparse.ArgumentParser(prog="python -m tasks.profile", description=__doc__.split("\n")[0])
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
    args = parser.parse_args(argv)

    def step() -> dict:
        cfg = ProfileConfig.from_dict(json_object(args.config))
        accuracy = json_object(args.accuracy, "--accuracy")
        targets = [CpuOnnxRuntime(threads=cfg.threads[0]), GpuTorch()]
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
