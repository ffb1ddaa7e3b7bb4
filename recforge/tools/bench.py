"""`make bench`: RecForge's served variants against a plain PyTorch baseline, side by side on this machine.

Per model family of the latest nightly run (and its compress_and_validate results):

* **baseline** -- the trained fp32 model in PyTorch eager, one query at a time: a single worker runs each
  whole query as one forward (no batching, no scheduling), torch on all cores;
* **RecForge** -- the parity-passing variant with the highest latency-bounded throughput (LBT) on
  cpu-onnxruntime among a short list (the compress summary's fastest passing variants), each profiled with
  ``recforge.pipeline.profiling.targets.profile_variant`` (hill-climbed sub-batch size and intra-op threads);

both driven by the DeepRecSys open-loop load generator (Poisson arrivals, lognormal(5.1, 0.2) items per query)
on the same real test rows. Reported: p95 latency of both at the same offered load (``load_fraction`` of the
baseline's LBT) and its ratio, the LBT ratio, both test AUCs (from the compress summary), and the measured
items/s at the LBT against this machine's roofline (``recforge.tools.hw_limits``: measured peak fp32/int8 GEMM rate and
memory bandwidth; FLOPs = 2 x MACs per item, bytes = embedding rows gathered + MLP weights per sub-batch).

Then the synthetic DeepRecSys-scale models (``recforge.models.synthetic``: RMC1/2/3 with Zipf ids and lognormal
pooling, tables scaled by ``table_rows_scale``): latency against batch size and LBT of fp32 against an INT8
variant (dynamic quantization of the MLPs; tables fp32), with the same roofline.

The table is printed and written as JSON + markdown under ``$RECFORGE_HOME/bench/``, and logged to MLflow
(experiment ``recforge-bench``) when the tracking server answers.

CLI::

    python -m recforge.tools.bench [--config '{"point_duration_s": 0.5, "synthetic": []}']   # BENCH_CONF in make bench
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import glob
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.profile import mean_items_per_query
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError, DataError
from recforge.core.timing import median_ms as compress_median_ms
from recforge.inference.loadgen import QuerySizes, run_open_loop
from recforge.inference.onnx import onnx_session
from recforge.models.synthetic import RMC_SPECS, InputPool, SyntheticDLRM, export_synthetic_onnx, onnx_files, rmc_spec
from recforge.pipeline.compression.compress import latency_inputs, load_trained
from recforge.pipeline.data.features import load_split
from recforge.pipeline.profiling.search import LBTConfig, Measurement, lbt_from_config
from recforge.pipeline.profiling.targets import CpuOnnxRuntime, ProfileConfig, load_doc, profile_variant
from recforge.tools.hw_limits import cpu_count, item_limit, measure

log = logging.getLogger(__name__)

FAMILIES = ("dlrm", "wide_deep", "ncf", "din")
EXPERIMENT = "recforge-bench"
NO_NIGHTLY = "no nightly run with compression results yet: run `make run && make compress` first"
MIN_QUERIES_PER_POINT = 20  # a probed rate runs at least this many queries (longer than point_duration_s if need be)
START_RETRIES = 3  # an LBT of 0 at the estimated starting rate is searched again from a 4x lower one, this often
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "int8_dynamic": 1, "int8_static": 1, "int8": 1}


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one `make bench` (``BENCH_CONF`` / ``--config``); unknown keys are refused."""

    date: str = ""  # nightly logical date (YYYY-MM-DD); "" = the latest one with models under the work dir
    families: tuple[str, ...] = FAMILIES
    shortlist: int = 2  # fastest passing variants (compress summary) profiled per family
    p95_target_ms: float = 25.0  # DeepRecSys' tail-latency target
    point_duration_s: float = 1.0  # seconds of Poisson arrivals per probed rate
    start_fraction: float = 0.3  # LBT search starts at this fraction of the single-query capacity estimate
    max_steps: int = 7  # probed rates per LBT search
    tolerance: float = 0.15  # LBT bisection stops within this relative gap
    confirm: int = 2  # extra runs at each final LBT rate, baseline and RecForge alike (profile_search.confirm_lbt)
    max_evaluations: int = 3  # knob settings the hill climb may try per variant
    threads: tuple[int, ...] = (1, 2)  # onnxruntime intra-op thread candidates
    workers: int = 2  # serving worker threads of RecForge
    min_sub_batch: int = 32
    max_sub_batch: int = 256
    baseline_threads: int = 0  # torch threads of the baseline; 0 = the faster of 1 and all cores (measured)
    load_fraction: float = 0.8  # the common offered load, as a fraction of the baseline's LBT
    compare_duration_s: float = 3.0  # seconds of arrivals of the same-load p95 comparison
    sizes: str = "lognormal"  # items per query (recforge.inference.loadgen.QuerySizes.parse)
    seed: int = 0
    synthetic: tuple[str, ...] = ("rmc1", "rmc2", "rmc3")  # [] skips the synthetic models
    table_rows_scale: float = 0.25  # recforge.models.synthetic.DEFAULT_TABLE_ROWS_SCALE: 2.7 GB of tables in all
    zipf_alpha: float = 1.05
    pooling_sigma: float = 0.25
    synthetic_batches: tuple[int, ...] = (1, 16, 64, 256)
    synthetic_lbt: bool = True
    synthetic_sub_batch: int = 64  # fixed serving knobs of the synthetic LBT runs (workers = `workers`)
    synthetic_threads: int = 1
    # production-scale models cannot meet the MovieLens models' 25 ms: an RMC2 query of 167 items gathers 640K
    # embedding rows. Their LBT is measured against this looser target.
    synthetic_p95_target_ms: float = 100.0
    latency_repeats: int = 10
    gemm_size: int = 2048
    array_mib: int = 128
    mlflow: bool = True

    def __post_init__(self) -> None:

        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ConfigError(f"BenchConfig.families must be a non-empty subset of {list(FAMILIES)}, got "
                              f"{list(self.families)}")
        if bad := sorted(set(self.synthetic) - set(RMC_SPECS)):
            raise ConfigError(f"BenchConfig.synthetic: unknown models {bad}; choose from {sorted(RMC_SPECS)}")
        if self.date:
            try:
                dt.date.fromisoformat(self.date)
            except ValueError:
                raise ConfigError(f"BenchConfig.date must be YYYY-MM-DD, got {self.date!r}") from None
        checks = [("point_duration_s", self.point_duration_s > 0), ("compare_duration_s", self.compare_duration_s > 0),
                  ("p95_target_ms", self.p95_target_ms > 0),
                  ("synthetic_p95_target_ms", self.synthetic_p95_target_ms > 0),
                  ("start_fraction", 0 < self.start_fraction <= 1),
                  ("load_fraction", 0 < self.load_fraction <= 1), ("tolerance", 0 < self.tolerance < 1),
                  ("table_rows_scale", 0 < self.table_rows_scale <= 1), ("zipf_alpha", 0 < self.zipf_alpha <= 5),
                  ("pooling_sigma", 0 <= self.pooling_sigma <= 3), ("shortlist", self.shortlist >= 1),
                  ("max_steps", self.max_steps >= 1), ("confirm", 0 <= self.confirm <= 100),
                  ("max_evaluations", self.max_evaluations >= 1),
                  ("workers", 1 <= self.workers <= 64), ("baseline_threads", 0 <= self.baseline_threads <= 64),
                  ("threads", bool(self.threads) and all(1 <= t <= 64 for t in self.threads)),
                  ("synthetic_batches", bool(self.synthetic_batches)
                   and all(1 <= b <= 1024 for b in self.synthetic_batches)),
                  ("synthetic_sub_batch", 1 <= self.synthetic_sub_batch <= 1024),
                  ("synthetic_threads", 1 <= self.synthetic_threads <= 64),
                  ("latency_repeats", self.latency_repeats >= 1)]
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"BenchConfig.{key} is out of range: {getattr(self, key)!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BenchConfig:
        return config.config_from_dict(cls, dict(values or {}))

    def query_sizes(self):

        return QuerySizes.parse(self.sizes)

    def lbt_config(self, start_qps: float, p95_target_ms: float | None = None):

        start = max(0.5, float(start_qps))
        return LBTConfig(p95_target_ms=p95_target_ms or self.p95_target_ms, start_qps=start, max_qps=start * 64,
                         tolerance=self.tolerance, max_steps=self.max_steps, confirm=self.confirm)


# --------------------------------------------------------------------------------------------------------------
# Finding the nightly run and its compression results


@dataclass
class FamilyRun:
    """One family's trained model of the nightly run, its compress summary and its variants' files."""

    family: str
    model_dir: Path
    features_dir: Path
    run_id: str
    summary: dict
    variants: dict[str, dict]  # variant name -> its variants.json entry (onnx_path, precision, base, macs, ...)


def latest_nightly_dir(day: str = "") -> Path:
    """The work folder of nightly ``day`` (default: the latest one that has trained models)."""
    root = config.work_dir()
    days = sorted(p for p in root.glob("????-??-??") if list(p.glob("models/*/model.json"))) if root.exists() else []
    if day:
        days = [p for p in days if p.name == day]
    if not days:
        raise DataError(f"{NO_NIGHTLY} (no trained models under {root}{' for ' + day if day else ''})")
    return days[-1]


def compress_summary(run_id: str, family: str) -> dict:
    """``compression/summary.json`` of a training run: from the local MLflow artifact store when it is on this
    machine (works with MLflow down), else downloaded from the tracking server."""
    local = sorted(glob.glob(str(config.recforge_home() / "mlflow" / "artifacts" / "*" / run_id / "artifacts" /
                                 "compression" / "summary.json")))
    if local:
        return json.loads(Path(local[-1]).read_text())
    if tracking_server_reachable():
        import mlflow

        try:
            path = mlflow.MlflowClient(config.tracking_uri()).download_artifacts(run_id, "compression/summary.json")
            return json.loads(Path(path).read_text())
        except Exception as err:  # noqa: BLE001 - any failure means: no summary for this run
            log.debug("summary of %s not downloadable: %s", run_id, err)
    raise DataError(f"{family}: no compression summary for training run {run_id} (here or in MLflow at "
                    f"{config.tracking_uri()}); {NO_NIGHTLY}")


def variant_catalog(variants_dir: Path) -> dict[str, dict]:
    """Every built variant of one family: {name: entry of its base's variants.json}, onnx_path resolved here."""
    catalog = {}
    for listing in sorted(variants_dir.glob("*/variants.json")):
        for entry in json.loads(listing.read_text()):
            if entry.get("error") or not entry.get("onnx_path"):
                continue
            path = Path(entry["onnx_path"])
            if not path.is_file():  # built on another machine: the same file name in this base folder
                path = listing.parent / path.name
            if path.is_file():
                catalog[entry["name"]] = {**entry, "onnx_path": str(path), "base_dir": str(listing.parent)}
    return catalog


def find_family_runs(cfg: BenchConfig) -> tuple[str, list[FamilyRun]]:
    """(logical date, one FamilyRun per configured family). DataError with a one-line fix when any is missing."""
    day_dir = latest_nightly_dir(cfg.date)
    runs = []
    for family in cfg.families:
        model_dir = day_dir / "models" / family
        card_path = model_dir / "model.json"
        if not card_path.is_file():
            raise DataError(f"{family}: no trained model in {model_dir}; {NO_NIGHTLY}")
        card = json.loads(card_path.read_text())
        summary = compress_summary(card["run_id"], family)
        variants = variant_catalog(day_dir / "variants" / family)
        if not variants:
            raise DataError(f"{family}: no variant files under {day_dir / 'variants' / family}; {NO_NIGHTLY}")
        runs.append(FamilyRun(family, model_dir, day_dir / "features", card["run_id"], summary, variants))
    return day_dir.name, runs


def shortlist(run: FamilyRun, k: int) -> list[dict]:
    """The ``k`` fastest parity-passing variants of the summary (ORT latency at batch 256) with files here."""
    rows = [v for v in run.summary.get("variants", [])
            if v.get("passed") and v["variant"] in run.variants and v.get("variant_run_id")]
    rows.sort(key=lambda v: (v.get("latency_ms_b256") is None, v.get("latency_ms_b256") or 0.0))
    if not rows:
        raise DataError(f"{run.family}: no parity-passing variant with its ONNX file on this machine; "
                        "run `make compress` first")
    return rows[:k]


# --------------------------------------------------------------------------------------------------------------
# Load targets


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch with ``threads`` intra-op threads and non-deterministic (fast) kernels, restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class TorchEagerTarget:
    """The baseline: ``model(**inputs[:n])`` in PyTorch eager (eval, no_grad) on fixed input rows."""

    def __init__(self, model: Any, inputs: Mapping[str, np.ndarray], name: str = "torch-eager-fp32"):
        import torch

        self.model, self.name = model.eval(), name
        self.feed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        self.max_batch = min(len(v) for v in self.feed.values())
        self._no_grad = torch.no_grad

    def infer(self, n_items: int) -> None:
        with self._no_grad():
            self.model(**{k: v[:n_items] for k, v in self.feed.items()})


class ArrayOnnxTarget:
    """An ONNX model in onnxruntime (``threads`` intra-op threads) on fixed input rows (the same as the baseline)."""

    def __init__(self, onnx_path: str | Path, inputs: Mapping[str, np.ndarray], threads: int = 1):

        self.session = onnx_session(onnx_path, threads)
        self.name = f"{Path(onnx_path).name}@{threads}t"
        names = [i.name for i in self.session.get_inputs()]
        self.feed = {n: np.ascontiguousarray(inputs[n]) for n in names}
        self.max_batch = min(len(v) for v in self.feed.values())

    def infer(self, n_items: int) -> None:
        self.session.run(None, {k: v[:n_items] for k, v in self.feed.items()})


class SyntheticOnnxTarget:
    """A synthetic RMC model in onnxruntime; each sub-batch is the next window of a Zipf/lognormal input pool."""

    def __init__(self, onnx_path: str | Path, pool: Any, threads: int = 1):

        self.session, self.pool = onnx_session(onnx_path, threads), pool
        self.name = f"{Path(onnx_path).name}@{threads}t"
        self.max_batch = min(1024, pool.items)

    def infer(self, n_items: int) -> None:
        self.session.run(None, self.pool.batch(n_items))


def _real_inputs_cpu_target(inputs: Mapping[str, np.ndarray], threads: int):
    """recforge.pipeline.profiling.targets's cpu-onnxruntime target, serving on the same real rows as the baseline."""

    class RealRowsCpuOnnxRuntime(CpuOnnxRuntime):
        def make_load_target(self, onnx_path, spec, knobs):
            return ArrayOnnxTarget(onnx_path, inputs, int(knobs.get("threads", self.threads)))

    return RealRowsCpuOnnxRuntime(threads=threads, max_batch=min(len(v) for v in inputs.values()))


def baseline_thread_count(baseline: TorchEagerTarget, items: int, cfg: BenchConfig) -> tuple[int, float]:
    """(torch threads of the baseline, its single-query ms). ``cfg.baseline_threads`` when set; else the faster
    of 1 thread and all cores: torch defaults to all cores, but on a busy machine its OpenMP threads spin against
    the neighbours (a 167-item DLRM query measured 2 ms on 1 thread and 144 ms on 2 of 2 busy cores), and
    the baseline should not lose by that artefact."""

    options = [cfg.baseline_threads] if cfg.baseline_threads else sorted({1, cpu_count()})
    timed = []
    for threads in options:
        with torch_threads(threads):
            timed.append((single_query_ms(baseline, items, cfg.latency_repeats), threads))
    query_ms, threads = min(timed)
    return threads, query_ms


def single_query_ms(target: Any, items: int, repeats: int) -> float:
    """Median ms of one sub-batch of ``items`` items on ``target`` (for the LBT search's starting rate)."""
    return median_ms(lambda: target.infer(min(items, target.max_batch)), repeats, warmup=2)


def median_ms(call: Callable[[], Any], repeats: int, warmup: int = 1) -> float:

    return compress_median_ms(call, repeats, warmup)


def load_run(target: Any, rate: float, cfg: BenchConfig, duration_s: float, sub_batch: int, workers: int):

    return run_open_loop(target, rate, duration_s=duration_s, sizes=cfg.query_sizes(), sub_batch=sub_batch,
                         workers=workers, seed=cfg.seed, drain_timeout_s=max(2.0, 4 * cfg.p95_target_ms / 1000))


def measure_fn(target_for: Callable[[dict], Any], cfg: BenchConfig, sub_batch: int | None = None,
               workers: int | None = None):
    """A ``recforge.pipeline.profiling.search.Measure`` over :func:`load_run` (the achieved rate corrected for Poisson noise in
    the number of issued queries, as recforge.pipeline.profiling.targets does)."""

    def measure(rate: float, knobs: dict) -> Measurement:
        duration = max(cfg.point_duration_s, MIN_QUERIES_PER_POINT / rate)  # low rates: enough queries for a p95
        result = load_run(target_for(knobs), rate, cfg, duration,
                          sub_batch or int(knobs["sub_batch"]), workers or int(knobs.get("workers", cfg.workers)))
        return Measurement.from_load(result, rate, duration)

    return measure


def search_lbt(measure: Callable, knobs: Mapping[str, Any], cfg: BenchConfig, start_qps: float,
               p95_target_ms: float | None = None) -> Any:
    """LBT search from ``start_qps`` (an estimate from single-query timings, which a busy machine or the load
    generator's own overhead can make too optimistic): when even the start breaks the SLO, search again from a 4x
    lower rate, up to START_RETRIES times."""

    for _ in range(START_RETRIES):
        lbt = lbt_from_config(measure, knobs, cfg.lbt_config(start_qps, p95_target_ms))
        if lbt.lbt_qps > 0 or start_qps <= 0.5:
            return lbt
        start_qps /= 4
    return lbt_from_config(measure, knobs, cfg.lbt_config(start_qps, p95_target_ms))


def profile_with_retries(variant: Mapping[str, Any], row: Mapping[str, Any], family: str, target: Any,
                         accuracy: Mapping[str, float], cfg: BenchConfig, start_qps: float) -> dict:
    """``recforge.pipeline.profiling.targets.profile_variant`` with the bench's short settings; like :func:`search_lbt`, searched again
    from a 4x lower starting rate when no knob setting meets the SLO at the estimated one."""

    for attempt in range(START_RETRIES + 1):
        start = max(0.5, start_qps / 4**attempt)
        pcfg = ProfileConfig(p95_target_ms=cfg.p95_target_ms, point_duration_s=cfg.point_duration_s,
                             start_qps=start, max_qps=start * 64, tolerance=cfg.tolerance, max_steps=cfg.max_steps,
                             sizes=cfg.sizes, min_sub_batch=cfg.min_sub_batch, max_sub_batch=cfg.max_sub_batch,
                             threads=tuple(cfg.threads), workers=cfg.workers, seed=cfg.seed,
                             max_evaluations=cfg.max_evaluations, confirm=cfg.confirm,
                             latency_batches=(1, 64, 256),
                             latency_repeats=cfg.latency_repeats)
        doc = profile_variant(variant["onnx_path"], str(Path(variant["base_dir"]) / "spec.json"), target,
                              family=family, variant=row["variant"], variant_run_id=row["variant_run_id"],
                              accuracy=accuracy, cfg=pcfg)
        if doc["latency_bounded_throughput_qps"] > 0 or start <= 0.5:
            break
    return doc


def _lbt_summary(lbt: Any, mean_items: float) -> dict:
    at = lbt.at_lbt
    return {"lbt_qps": lbt.lbt_qps, "capped": lbt.capped, "converged": lbt.converged, "note": lbt.note,
            "items_per_s": at.achieved_qps * mean_items if at else 0.0,
            "p95_ms_at_lbt": at.p95_ms if at else None, "curve": lbt.curve(), "knobs": dict(lbt.knobs)}


# --------------------------------------------------------------------------------------------------------------
# Work per item: FLOPs and bytes


def embedding_elements_per_item(model: Any, inputs: Mapping[str, np.ndarray], rows: int = 64) -> tuple[float, int]:
    """(embedding values gathered per item, embedding parameters): every nn.Embedding's looked-up ids x its
    dimension, counted with forward hooks on ``rows`` real rows (padding slots count: they are gathered too)."""
    import torch
    from torch import nn

    counted = [0]
    hooks = []
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for table in tables:
        hooks.append(table.register_forward_hook(
            lambda module, args, out: counted.__setitem__(0, counted[0] + args[0].numel() * module.embedding_dim)))
    try:
        with torch.no_grad():
            model(**{k: torch.from_numpy(np.ascontiguousarray(v[:rows])) for k, v in inputs.items()})
    finally:
        for hook in hooks:
            hook.remove()
    return counted[0] / rows, sum(t.weight.numel() for t in tables)


def work_per_item(model: Any, inputs: Mapping[str, np.ndarray], macs_per_item: float, precision: str,
                  sub_batch: int) -> dict[str, float]:
    """FLOPs (2 x MACs) and bytes per item: embedding values gathered + every other weight once per sub-batch,
    at the precision's element size (int8 variants store tables and MLP weights in 8 bits)."""
    element = ELEMENT_BYTES.get(precision, 4)
    gathered, embedding_params = embedding_elements_per_item(model, inputs)
    dense_params = sum(p.numel() for p in model.parameters()) - embedding_params
    return {"flops_per_item": 2.0 * macs_per_item,
            "bytes_per_item": element * (gathered + dense_params / max(1, sub_batch)),
            "embedding_bytes_per_item": element * gathered, "element_bytes": element}


def roofline(work: Mapping[str, float], limits: Any, precision: str, measured_items_per_s: float) -> dict:

    limit = item_limit(work["flops_per_item"], work["bytes_per_item"], limits.peak_ops(precision),
                       limits.bandwidth_bytes_per_s)
    return {**limit, "measured_items_per_s": measured_items_per_s,
            "fraction_of_limit": measured_items_per_s / limit["items_per_s"]}


# --------------------------------------------------------------------------------------------------------------
# One family


def bench_family(run: FamilyRun, cfg: BenchConfig, limits: Any) -> dict:
    """Baseline and RecForge of one family: LBTs, same-load p95, AUCs, roofline."""

    mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), (1,)))
    typical = max(1, round(mean_items))
    inputs = latency_inputs(load_split(run.features_dir, "test"), 1024)
    model, _, _ = load_trained(run.model_dir)
    started = time.perf_counter()

    # baseline: PyTorch eager fp32, one whole query per forward, one worker
    baseline = TorchEagerTarget(model, inputs)
    baseline_threads, query_ms = baseline_thread_count(baseline, typical, cfg)
    with torch_threads(baseline_threads):
        baseline_lbt = search_lbt(measure_fn(lambda _k: baseline, cfg, sub_batch=1024, workers=1),
                                  {"sub_batch": "whole query", "workers": 1, "threads": baseline_threads},
                                  cfg, cfg.start_fraction * 1000.0 / query_ms)
    log.info("%s baseline (eager fp32): LBT %.1f qps", run.family, baseline_lbt.lbt_qps)

    # RecForge: profile the short list, keep the best LBT
    rows = shortlist(run, cfg.shortlist)
    target = _real_inputs_cpu_target(inputs, cfg.threads[0])
    profiles = []
    for row in rows:
        variant = run.variants[row["variant"]]
        probe = ArrayOnnxTarget(variant["onnx_path"], inputs, 1)
        capacity = cfg.workers * 1000.0 / single_query_ms(probe, typical, cfg.latency_repeats)
        accuracy = {"auc": row["auc"], "delta_auc": row.get("delta_auc") or 0.0}
        doc = profile_with_retries(variant, row, run.family, target, accuracy, cfg, cfg.start_fraction * capacity)
        profiles.append((row, variant, doc))
        log.info("%s %s: LBT %.1f qps at %s", run.family, row["variant"], doc["latency_bounded_throughput_qps"],
                 doc["search"]["best_knobs"])
    row, variant, best = max(profiles, key=lambda p: p[2]["latency_bounded_throughput_qps"])
    knobs = best["search"]["best_knobs"]

    # the same offered load for both
    # (a baseline failing even its starting rate is compared at half that rate)
    rate = cfg.load_fraction * baseline_lbt.lbt_qps if baseline_lbt.lbt_qps > 0 else 0.5 * baseline_lbt.config.start_qps
    with torch_threads(baseline_threads):
        base_at = load_run(baseline, rate, cfg, cfg.compare_duration_s, 1024, 1)
    recforge_target = ArrayOnnxTarget(variant["onnx_path"], inputs, int(knobs.get("threads", cfg.threads[0])))
    ours_at = load_run(recforge_target, rate, cfg, cfg.compare_duration_s, int(knobs["sub_batch"]),
                       int(knobs.get("workers", cfg.workers)))

    # roofline of both
    fp32 = run.variants.get("fp32", {})
    base_model, _, _ = load_trained(Path(variant["base_dir"]))
    baseline_work = work_per_item(model, inputs, fp32.get("macs_per_item") or variant["macs_per_item"], "fp32", typical)
    recforge_work = work_per_item(base_model, inputs, variant["macs_per_item"], variant["precision"],
                                  int(knobs["sub_batch"]))
    baseline_summary = _lbt_summary(baseline_lbt, mean_items)
    fp32_auc = next((v["auc"] for v in run.summary["variants"] if v["variant"] == "fp32"), None)
    result = {
        "family": run.family, "training_run_id": run.run_id,
        "baseline": {"what": f"PyTorch eager fp32, one query per forward, 1 worker, {baseline_threads} threads",
                     "auc": fp32_auc, **baseline_summary,
                     "roofline": roofline(baseline_work, limits, "fp32", baseline_summary["items_per_s"])},
        "recforge": {"variant": row["variant"], "variant_run_id": row["variant_run_id"], "precision":
                     variant["precision"], "auc": row["auc"], "delta_auc": row.get("delta_auc"), "knobs": knobs,
                     "lbt_qps": best["latency_bounded_throughput_qps"], "capped": best["lbt_capped"],
                     "items_per_s": best["items_per_s"], "curve": best["curve"],
                     "latency_vs_batch": best["latency_vs_batch"],
                     "roofline": roofline(recforge_work, limits, variant["precision"], best["items_per_s"])},
        "shortlist": [{"variant": r["variant"], "lbt_qps": d["latency_bounded_throughput_qps"],
                       "best_knobs": d["search"]["best_knobs"], "summary_latency_ms_b256": r.get("latency_ms_b256")}
                      for r, _, d in profiles],
        "same_load": {"offered_qps": rate, "load_fraction": cfg.load_fraction, "duration_s": cfg.compare_duration_s,
                      "baseline": _load_figures(base_at), "recforge": _load_figures(ours_at)},
        "seconds": time.perf_counter() - started,
    }
    result["lbt_ratio"] = _ratio(result["recforge"]["lbt_qps"], result["baseline"]["lbt_qps"])
    result["p95_ratio"] = _ratio(result["same_load"]["recforge"]["p95_ms"], result["same_load"]["baseline"]["p95_ms"])
    return result


def _load_figures(result: Any) -> dict:
    return {k: v for k, v in result.to_dict().items()
            if k in ("p50_ms", "p95_ms", "p99_ms", "achieved_qps", "items_per_s", "queries", "completed", "errors")}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not denominator or not math.isfinite(numerator) \
            or not math.isfinite(denominator):
        return None
    return float(numerator) / float(denominator)


# --------------------------------------------------------------------------------------------------------------
# Synthetic DeepRecSys-scale models


def quantize_mlps_int8(src: Path, dst: Path) -> int:
    """An INT8 variant of a synthetic model: every Gemm with a constant weight becomes onnxruntime's
    ``DynamicQuantizeMatMul`` (activations quantized per batch at run time, weights int8 per output column,
    7-bit as recforge.pipeline.compression.compress does on x86 without VNNI). The embedding table keeps referring to ``src``'s external
    data file: nothing of the GBs of tables is copied (``dst`` must be in the same folder). Returns Gemms
    rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    if src.parent != dst.parent:
        raise ConfigError("quantize_mlps_int8: dst must be in the folder of src (they share the tables' file)")
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not (node.op_type == "Gemm" and node.input[1] in initializers and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]], base_dir=str(src.parent))
        weight = weight.T if attrs.get("transB", 0) else weight  # [K, N]
        scale = (np.abs(weight).max(axis=0) / 63.0).astype(np.float32)
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(weight / scale), -64, 63).astype(np.int8)
        name = f"{node.name or node.output[0]}_int8"
        tensors = [numpy_helper.from_array(np.ascontiguousarray(quantized), f"{name}_w"),
                   numpy_helper.from_array(scale, f"{name}_scale"),
                   numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero")]
        inputs = [node.input[0], f"{name}_w", f"{name}_scale", f"{name}_zero"]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]], base_dir=str(src.parent))
            tensors.append(numpy_helper.from_array(np.broadcast_to(bias, scale.shape).astype(np.float32),
                                                   f"{name}_bias"))
            inputs.append(f"{name}_bias")
        graph.initializer.extend(tensors)
        nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, list(node.output), name=name,
                                      domain="com.microsoft"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return rewritten


def _bench_synthetic_variant(spec: Any, precision: str, path: Path, pool: Any, mean_items: float, cfg: BenchConfig,
                             limits: Any) -> dict:
    target = SyntheticOnnxTarget(path, pool, cfg.synthetic_threads)
    sub_batch = cfg.synthetic_sub_batch
    batch_ms = {int(b): median_ms(lambda b=b: target.infer(b), cfg.latency_repeats, 2)
                for b in sorted(cfg.synthetic_batches)}
    figures: dict[str, Any] = {"latency_ms_vs_batch": batch_ms}
    work = {"flops_per_item": 2.0 * spec.mlp_macs_per_item,
            "bytes_per_item": 4 * spec.lookups_per_item * spec.embedding_dim
            + ELEMENT_BYTES[precision] * spec.mlp_parameters / sub_batch}
    measured = sub_batch * 1000.0 / (batch_ms.get(sub_batch) or median_ms(lambda: target.infer(sub_batch), 3, 1))
    if cfg.synthetic_lbt:
        capacity = cfg.workers * 1000.0 / median_ms(lambda: target.infer(min(1024, round(mean_items))), 3, 1)
        lbt = search_lbt(measure_fn(lambda _knobs: target, cfg, sub_batch=sub_batch, workers=cfg.workers),
                         {"sub_batch": sub_batch, "workers": cfg.workers, "threads": cfg.synthetic_threads},
                         cfg, cfg.start_fraction * capacity, cfg.synthetic_p95_target_ms)
        figures |= _lbt_summary(lbt, mean_items)
        if figures["items_per_s"] > 0:
            measured = figures["items_per_s"]
        else:
            figures["note"] = (f"LBT 0 at p95 <= {cfg.synthetic_p95_target_ms:g} ms; items/s = {sub_batch} items / "
                               f"latency at batch {sub_batch}")
    else:
        figures["note"] = f"items/s = {sub_batch} items / latency at batch {sub_batch} (no LBT search)"
    figures["roofline"] = roofline(work, limits, precision, measured)
    return figures


def bench_synthetic(name: str, cfg: BenchConfig, limits: Any, workdir: Path) -> dict:
    """fp32 and INT8 (MLPs) of one synthetic RMC at ``cfg.table_rows_scale``: latency vs batch, LBT, roofline."""

    spec = rmc_spec(name, cfg.table_rows_scale)
    started = time.perf_counter()
    model = SyntheticDLRM(spec, seed=cfg.seed)
    fp32_path = export_synthetic_onnx(model, workdir / f"{name}.onnx")
    del model
    gc.collect()
    int8_path = workdir / f"{name}.int8.onnx"
    quantize_mlps_int8(fp32_path, int8_path)
    build_s = time.perf_counter() - started
    pool = InputPool.sized(spec, 1024, alpha=cfg.zipf_alpha, sigma=cfg.pooling_sigma, seed=cfg.seed)
    mean_items = mean_items_per_query(load_doc(cfg.query_sizes(), (1,)))
    out = {"model": name, "spec": spec.to_dict(), "table_rows_scale": cfg.table_rows_scale,
           "table_bytes": spec.table_bytes, "lookups_per_item": spec.lookups_per_item,
           "zipf_alpha": cfg.zipf_alpha, "pooling_sigma": cfg.pooling_sigma,
           "onnx_bytes": sum(p.stat().st_size for p in onnx_files(fp32_path)), "build_s": build_s, "variants": {}}
    for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
        out["variants"][precision] = _bench_synthetic_variant(spec, precision, path, pool, mean_items, cfg, limits)
        gc.collect()
    out["int8_lbt_ratio"] = _ratio(out["variants"]["int8"].get("lbt_qps"), out["variants"]["fp32"].get("lbt_qps"))
    for path in (*onnx_files(int8_path)[:1], *onnx_files(fp32_path)):
        path.unlink(missing_ok=True)
    out["seconds"] = time.perf_counter() - started
    return out


# --------------------------------------------------------------------------------------------------------------
# The whole benchmark


def tracking_server_reachable(uri: str | None = None, timeout_s: float = 2.0) -> bool:
    uri = uri or config.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True  # a file/database store is always "reachable"
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).ok
    except requests.RequestException:
        return False


def run_bench(cfg: BenchConfig, out_dir: Path | None = None,
              limits_fn: Callable[[BenchConfig], Any] | None = None) -> dict:
    """The whole benchmark; writes ``bench-<stamp>.{json,md}`` and ``latest.{json,md}`` under ``out_dir``
    (default ``$RECFORGE_HOME/bench``) and logs to MLflow when reachable. Returns the result document."""

    started = time.perf_counter()
    day, runs = find_family_runs(cfg)  # fails first, before any measuring, when there is nothing to bench
    limits = (limits_fn or (lambda c: measure(c.gemm_size, c.array_mib)))(cfg)
    log.info("machine: %s", limits.to_dict())
    families = [bench_family(run, cfg, limits) for run in runs]
    synthetic = []
    if cfg.synthetic:
        workdir = Path(tempfile.mkdtemp(prefix="recforge-bench-", dir=config.work_dir()))
        try:
            synthetic = [bench_synthetic(name, cfg, limits, workdir) for name in cfg.synthetic]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    doc = {"nightly_date": day, "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "code_version": config.git_commit(), "config": dataclasses.asdict(cfg), "machine": limits.to_dict(),
           "families": families, "synthetic": synthetic}
    doc["wall_s"] = time.perf_counter() - started
    doc["markdown"] = format_markdown(doc)
    out_dir = Path(out_dir or config.recforge_home() / "bench")
    doc["written"] = write_outputs(doc, out_dir)
    doc["mlflow"] = log_to_mlflow(doc) if cfg.mlflow else "disabled (config mlflow=false)"
    return doc


def write_outputs(doc: dict, out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = doc["measured_at"].replace(":", "").replace("+0000", "Z")
    written = []
    for stem in (f"bench-{stamp}", "latest"):
        (out_dir / f"{stem}.json").write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(doc["markdown"])
        written += [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
    return written


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def log_to_mlflow(doc: dict) -> str:
    """Log the figures and the table on a run of experiment ``recforge-bench``; a one-line status either way."""
    uri = config.tracking_uri()
    if not tracking_server_reachable(uri):
        return f"not logged: no MLflow tracking server answers at {uri} (start one with `make mlflow-up`)"
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"bench-{doc['nightly_date']}",
                              tags={"recforge.kind": "bench", "recforge.logical_date": doc["nightly_date"]}) as run:
            mlflow.log_params({"nightly_date": doc["nightly_date"], "device": doc["machine"]["device"],
                               **{k: json.dumps(v) if isinstance(v, list | tuple) else v
                                  for k, v in doc["config"].items()}})
            mlflow.log_metrics({k: float(v) for k, v in bench_metrics(doc).items() if v is not None})
            mlflow.log_dict(_json_safe({k: v for k, v in doc.items() if k != "markdown"}), "bench.json")
            mlflow.log_text(doc["markdown"], "bench.md")
            return f"logged: MLflow run {run.info.run_id} in experiment {EXPERIMENT} at {uri}"
    except Exception as err:  # noqa: BLE001 - the benchmark's figures are written either way
        return f"not logged: MLflow at {uri} failed: {str(err).splitlines()[0][:200]}"


def bench_metrics(doc: dict) -> dict[str, float | None]:
    """The headline figures as flat MLflow metric names."""
    m = doc["machine"]
    metrics: dict[str, float | None] = {"machine.fp32_gflops": m["fp32_flops"] / 1e9,
                                        "machine.int8_gops": m["int8_ops"] / 1e9,
                                        "machine.bandwidth_gbps": m["bandwidth_bytes_per_s"] / 1e9,
                                        "wall_s": doc["wall_s"]}
    for f in doc["families"]:
        k = f["family"]
        metrics |= {f"{k}.lbt_ratio": f["lbt_ratio"], f"{k}.p95_ratio": f["p95_ratio"],
                    f"{k}.baseline_lbt_qps": f["baseline"]["lbt_qps"],
                    f"{k}.recforge_lbt_qps": f["recforge"]["lbt_qps"],
                    f"{k}.baseline_p95_ms": f["same_load"]["baseline"]["p95_ms"],
                    f"{k}.recforge_p95_ms": f["same_load"]["recforge"]["p95_ms"],
                    f"{k}.baseline_auc": f["baseline"]["auc"], f"{k}.recforge_auc": f["recforge"]["auc"],
                    f"{k}.recforge_fraction_of_limit": f["recforge"]["roofline"]["fraction_of_limit"],
                    f"{k}.baseline_fraction_of_limit": f["baseline"]["roofline"]["fraction_of_limit"]}
    for s in doc["synthetic"]:
        for precision, v in s["variants"].items():
            metrics[f"{s['model']}.{precision}.lbt_qps"] = v.get("lbt_qps")
            metrics[f"{s['model']}.{precision}.fraction_of_limit"] = v["roofline"]["fraction_of_limit"]
    return metrics


def _f(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def format_markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"## RecForge bench — nightly {doc['nightly_date']}, measured {doc['measured_at']}", "",
             f"Machine: {m['device']}; measured peaks: fp32 GEMM {m['fp32_flops'] / 1e9:.0f} GFLOP/s, "
             f"int8 GEMM {m['int8_ops'] / 1e9:.0f} Gop/s, memory {m['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (triad). "
             f"Load: Poisson arrivals, {doc['config']['sizes']} items/query (DeepRecSys), p95 target "
             f"{doc['config']['p95_target_ms']:g} ms.", "",
             "| family | RecForge variant (knobs) | AUC fp32 → variant | LBT qps baseline → RecForge | LBT × | "
             "same load qps | p95 ms baseline → RecForge | p95 ratio | items/s at LBT | roofline items/s (bound) | "
             "% of roofline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in doc["families"]:
        b, r, s = f["baseline"], f["recforge"], f["same_load"]
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items())
        lines.append(
            f"| {f['family']} | {r['variant']} ({knobs}) | {_f(b['auc'], '.4f')} → {_f(r['auc'], '.4f')} | "
            f"{_f(b['lbt_qps'], '.0f')} → {_f(r['lbt_qps'], '.0f')}{' (capped)' if r['capped'] else ''} | "
            f"{_f(f['lbt_ratio'], '.2f')} | {_f(s['offered_qps'], '.0f')} | {_f(s['baseline']['p95_ms'], '.2f')} → "
            f"{_f(s['recforge']['p95_ms'], '.2f')} | {_f(f['p95_ratio'], '.2f')} | {_f(r['items_per_s'], '.3g')} | "
            f"{_f(r['roofline']['items_per_s'], '.3g')} ({r['roofline']['bound']}) | "
            f"{_f(100 * r['roofline']['fraction_of_limit'], '.2g')}% |")
    lines += ["", "Baseline: the trained fp32 model in PyTorch eager, one whole query per forward, one worker. "
              "RecForge: the parity-passing variant with the best LBT on cpu-onnxruntime among the compress "
              "summary's fastest, with its hill-climbed serving knobs. Roofline = min(peak ops / (2·MACs per item), "
              "bandwidth / bytes per item); the MovieLens models' tables fit in cache, so their memory bound is loose."]
    if doc["synthetic"]:
        lines += ["", "### Synthetic DeepRecSys-scale models (random weights, Zipf ids, lognormal pooling)", "",
                  "| model | tables × rows (scale) | lookups/item | tables GB | precision | ms at batch "
                  f"{'/'.join(str(b) for b in doc['config']['synthetic_batches'])} | LBT qps | items/s | "
                  "roofline items/s (bound) | % of roofline |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in doc["synthetic"]:
            spec = s["spec"]
            for precision, v in s["variants"].items():
                ms = "/".join(_f(x, ".3g") for x in v["latency_ms_vs_batch"].values())
                lines.append(
                    f"| {s['model']} | {spec['num_tables']} × {spec['rows_per_table']:,} ({s['table_rows_scale']:g}) | "
                    f"{s['lookups_per_item']:.0f} | {s['table_bytes'] / 1e9:.2f} | {precision} | {ms} | "
                    f"{_f(v.get('lbt_qps'), '.0f')} | {_f(v['roofline']['measured_items_per_s'], '.3g')} | "
                    f"{_f(v['roofline']['items_per_s'], '.3g')} ({v['roofline']['bound']}) | "
                    f"{_f(100 * v['roofline']['fraction_of_limit'], '.2g')}% |")
        lines += ["", f"Synthetic LBT at p95 <= {doc['config']['synthetic_p95_target_ms']:g} ms; where it is 0, "
                  "items/s is one sub-batch's items / its latency. Serving knobs fixed: "
                  f"sub-batch {doc['config']['synthetic_sub_batch']}, "
                  f"{doc['config']['workers']} workers, {doc['config']['synthetic_threads']} thread(s); INT8 = dynamic "
                  "quantization of the MLPs (DynamicQuantizeMatMul), tables fp32. Bytes per item = fp32 embedding rows "
                  "gathered + MLP weights once per sub-batch."]
    lines += ["", f"Wall time {doc['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m recforge.tools.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="{}", help="BenchConfig overrides as a JSON object (BENCH_CONF)")
    parser.add_argument("--out", default=None, help="output folder (default $RECFORGE_HOME/bench)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnxruntime", "mlflow", "urllib3", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def step() -> str:
        cfg = BenchConfig.from_dict(json_object(args.config, "BENCH_CONF"))
        doc = run_bench(cfg, Path(args.out) if args.out else None)
        return f"{doc['markdown']}\nwritten: {', '.join(doc['written'][2:])}\nMLflow: {doc['mlflow']}"

    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
