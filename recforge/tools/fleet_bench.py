"""The headline on the served path (``make bench-fleet``): what a user deploys on the local Triton fleet, the baseline
against RecForge, under the same load through the same balancer, in interleaved rounds.

* ``default`` (the baseline): the fp32 model (the nightly's trained model, ``--baseline-onnx``) with Triton's default
  serving, no ``dynamic_batching`` block and one instance (the same ``max_batch_size``, so that the client's
  sub-batches fit). The fleet starts like the other one and every node is then re-staged with this model and config
  through its own port (``Fleet.stage_on_node``).
* ``generated`` (RecForge): the champion with the serving config ``make fleet-up`` serves,
  :func:`recforge.inference.model_repo.serving_config_from_profile` of its profile (dynamic batching with the
  profiled preferred sizes and queue delay, the profiled instances).

Each fleet (``recforge.serving.fleet.up``, ``cfg.nodes`` tritonserver nodes behind HAProxy on a free port) lives in its
own folder ``$RECFORGE_HOME/fleet-bench/<name>/{generated,default}``, so a user's fleet in ``$RECFORGE_HOME/fleet`` is
never touched; each node's config is read back from Triton (``/v2/models/<m>/config``) and checked before any load
runs. The client side is identical: the same query sizes (lognormal(5.1, 0.2) items per query), sub-batch size and
workers (the profile's ``best_knobs``), seed, durations and SLO; the LBT search is
:func:`recforge.pipeline.profiling.lbt.latency_bounded_throughput` over :func:`recforge.inference.loadgen.run_open_loop`
on a :class:`recforge.inference.triton.TritonHttpTarget` of the balancer's URL, with no cap but the apparatus ceiling
(``apparatus_ceiling_qps``, by default the HTTP client's from ``make bench-apparatus``'s ``apparatus.json``).

``--baseline-profile P.json`` makes the baseline the same champion served with the config generated from another
profile ``P`` (and ``P``'s client knobs): e.g. the profile of an earlier night, measured under the default query
sizes, against tonight's, measured under the traffic the fleet served (docs/profiling.md, "Feedback"); with
``"sizes"`` set to that traffic's sample, the comparison is the LBT at the live mix before and after the loop.

The rounds run baseline then RecForge (A B A B ..., ``rounds``, default 5); each side's search starts from its
previous LBT, and after each search the side also runs at ``load_fraction`` of the round's baseline LBT (the same
offered rate for both). Every ratio (p95 at the same load, LBT) is taken within a round, then summarized as a median
with an order-statistic interval (``recforge.core.intervals``). Both fleets are always brought down.

The results go to ``$RECFORGE_HOME/bench/fleet_configs.json`` (one entry per model and target, the latest run
replacing an older one) and ``fleet_configs.md`` (the table of every entry); the output has the machine-readable
``bench: family=F path=served ...`` line (``recforge.tools.bench.bench_line``).

CLI::

    python -m recforge.tools.fleet_bench [--family dlrm] [--target cpu-triton] [--config JSON]
                                  [--onnx M.onnx --spec spec.json [--profile P.json] [--model NAME]
                                   [--baseline-onnx fp32.onnx]] [--baseline-profile P.json]

``--config`` takes :class:`FleetBenchConfig` fields, e.g. ``'{"point_duration_s": 3, "rounds": 6}'``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recforge.contracts.profile import read_profile
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.hw import load_average
from recforge.core.intervals import median_interval
from recforge.core.timing import utc_now
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.inference.loadgen import QuerySizes, run_open_loop
from recforge.inference.model_repo import ServingConfig
from recforge.inference.triton import TritonHttpTarget
from recforge.pipeline.profiling.lbt import LBTConfig, Measure, Measurement, latency_bounded_throughput
from recforge.serving import fleet as fl
from recforge.serving.fleet.config import DEFAULT_FAMILY
from recforge.tools.bench.apparatus_share import apparatus_share_figures
from recforge.tools.bench.bench_line import format_bench_line
from recforge.tools.bench.rounds import RESTART_FRACTION, interleaved_order, ratio
from recforge.tools.fleet_bench_report import CONFIGS, describe_knobs, render_table, write_results
from recforge.tools.perf_fleet import on_the_apparatus

RUN_ORDER = ("default", "generated")  # in each round: the baseline first (its LBT sets the same-load rate)
DEFAULT_SUB_BATCH, DEFAULT_WORKERS, DEFAULT_P95_MS, DEFAULT_START_QPS = 64, 8, 25.0, 10.0
MIN_QUERIES_PER_POINT = 20  # a probed rate runs at least this many queries (longer than point_duration_s if need be)
START_RETRIES = 2  # an LBT of 0 at start_qps is searched again from a 4x lower rate, this often


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Knob = Annotated[int, Field(ge=1, le=1024)]


@typed_config
class FleetBenchConfig:
    """Settings of the comparison (``--config`` JSON). None: taken from the model's profile."""

    # the apparatus isolated (recforge.serving.fleet.FleetConfig's placement): each node on its own node_cpus CPUs,
    # the load generator (and the balancer, with balancer_with_apparatus) on apparatus_cpus others; the default,
    # one node on one CPU, is what the nightly's cpu-triton profile measures. node_cpus 0: no placement, every
    # process on every CPU (the client then measures itself as much as the fleet)
    nodes: int = 1  # checked as recforge.serving.fleet.FleetConfig checks it, as are the next three
    node_cpus: int = 1
    apparatus_cpus: int = 1
    balancer_with_apparatus: bool = True
    p95_target_ms: Positive | None = None  # None: the profile's p95 target (25 ms without a profile)
    start_qps: Positive | None = None  # None: a quarter of the profile's LBT (10 qps without a profile)
    max_qps: Positive | None = None  # an explicit bound on the LBT ramp (None: none but the apparatus ceiling)
    # the apparatus' ceiling (queries/s of the HTTP load generator against a null target); None: make
    # bench-apparatus' $RECFORGE_HOME/bench/apparatus.json when there is one, else unknown (no bound)
    apparatus_ceiling_qps: Positive | None = None
    point_duration_s: Positive = 2.0  # per probed rate (longer at low rates: MIN_QUERIES_PER_POINT queries)
    # a load run at start_qps before each search (connections, model caches)
    warmup_s: Annotated[float, Field(ge=0, le=600)] = 1.0
    tolerance: float = 0.1  # this and the next four: checked by recforge.pipeline.profiling.lbt.LBTConfig
    max_steps: int = 12
    repeats: int = 1
    max_error_rate: float = 0.0
    min_achieved_ratio: float = 0.9
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes.parse: lognormal(5.1, 0.2) items per query
    # both sides' client knobs; None: each side's profile's best_knobs (64 and 8 without one); the baseline's
    # profile is the champion's, unless --baseline-profile names another
    sub_batch: Knob | None = None
    workers: Knob | None = None
    seed: int = 0
    check_inter_ms: int = 500  # checked as recforge.serving.fleet.FleetConfig checks it
    # folder under $RECFORGE_HOME/fleet-bench (default: <model>-<target>)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    # interleaved rounds (baseline, RecForge, baseline, ...); every ratio is the median over them with an interval
    rounds: Annotated[int, Field(ge=1, le=20)] = 5
    round_ramp_factor: Annotated[float, Field(gt=1, le=16)] = 1.25  # LBT ramp from the 2nd round on
    load_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8  # same-load p95 at this fraction of the baseline LBT
    compare_duration_s: Positive = 3.0  # seconds of arrivals of that same-load run
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95

    def __post_init__(self) -> None:
        QuerySizes.parse(self.sizes)
        self.fleet_config()  # the fleet's own checks
        self.lbt_kwargs(self.start_qps or DEFAULT_START_QPS, self.p95_target_ms or DEFAULT_P95_MS)  # bounds

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FleetBenchConfig:
        return config.config_from_dict(cls, dict(values or {}))

    def fleet_config(self, target: str = fl.DEFAULT_TARGET) -> fl.FleetConfig:
        """The fleet each side runs on (on a free port)."""
        return fl.FleetConfig(nodes=self.nodes, port=0, target=target, check_inter_ms=self.check_inter_ms,
                              node_cpus=self.node_cpus, apparatus_cpus=self.apparatus_cpus,
                              balancer_with_apparatus=self.balancer_with_apparatus)

    def lbt_kwargs(self, start_qps: float, p95_target_ms: float, *, ceiling_qps: float | None = None,
                   ramp_factor: float = 2.0) -> dict[str, Any]:
        """Keyword arguments of recforge.pipeline.profiling.lbt.latency_bounded_throughput (checked by LBTConfig):
        no cap on the ramp but ``max_qps`` when set and the apparatus ceiling ``ceiling_qps`` when known."""
        start = float(start_qps) if ceiling_qps is None else min(float(start_qps), float(ceiling_qps))
        kwargs = {"p95_target_ms": float(p95_target_ms), "start_qps": start,
                  "max_qps": max(float(self.max_qps), start) if self.max_qps is not None else None,
                  "apparatus_ceiling_qps": ceiling_qps, "ramp_factor": ramp_factor, "tolerance": self.tolerance,
                  "max_steps": self.max_steps, "repeats": self.repeats, "max_error_rate": self.max_error_rate,
                  "min_achieved_ratio": self.min_achieved_ratio}
        LBTConfig(**kwargs)
        return kwargs


def calibrated_ceiling_qps(home: str | Path | None = None) -> float | None:
    """The HTTP load generator's ceiling (queries/s of the DeepRecSys mix) that ``make bench-apparatus`` measured
    against a null target, from ``$RECFORGE_HOME/bench/apparatus.json``; None without a usable one."""
    path = Path(home if home is not None else config.recforge_home()) / "bench" / "apparatus.json"
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        value = float(json.loads(path.read_text())["mix"]["queries_per_s"])
        return value if math.isfinite(value) and value > 0 else None
    return None


# --------------------------------------------------------------------------------------------------------------
# The two serving configs


def default_serving_config(generated: Any) -> Any:
    """Triton's default serving of the model: no dynamic batching, one instance, default threads and warm-up; only
    ``max_batch_size`` is the generated config's (the largest request the client may send)."""
    why = "Triton's default (recforge.tools.fleet_bench baseline)"
    return ServingConfig(max_batch_size=generated.max_batch_size, dynamic_batching=False,
                         max_queue_delay_microseconds=0, instance_count=1, instance_kind=generated.instance_kind,
                         sources={"dynamic_batching": why, "instance_count": why,
                                  "max_batch_size": "the generated config's (the client's largest request)"})


def config_knobs(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The serving knobs of a model config, parsed from config.pbtxt (recforge.inference.model_repo.parse_config_pbtxt)
    or as Triton serves it (its JSON form, where int64 values are strings)."""
    batching = model_config.get("dynamic_batching")
    params = {k: (v or {}).get("string_value") for k, v in (model_config.get("parameters") or {}).items()}
    groups = model_config.get("instance_group") or [{}]
    threads = params.get("intra_op_thread_count")
    return {
        "max_batch_size": int(model_config.get("max_batch_size") or 0),
        "dynamic_batching": batching is not None,
        "preferred_batch_size": [int(b) for b in (batching or {}).get("preferred_batch_size") or []],
        "max_queue_delay_us": int((batching or {}).get("max_queue_delay_microseconds") or 0)
        if batching is not None else None,
        "instances": sum(int(g.get("count") or 1) for g in groups),
        "intra_op_threads": int(threads) if threads else None,
    }


def _check_served(label: str, node: str, served: Mapping[str, Any], intended: Any) -> None:
    if served["dynamic_batching"] != intended.dynamic_batching or served["instances"] != intended.instance_count \
            or served["max_batch_size"] != intended.max_batch_size:
        raise RecForgeError(f"{label} fleet: {node} serves {describe_knobs(served)}, not the intended config "
                            f"(dynamic_batching {intended.dynamic_batching}, {intended.instance_count} instance(s), "
                            f"max_batch_size {intended.max_batch_size}); see its tritonserver.log")


# --------------------------------------------------------------------------------------------------------------
# Load


def _measure(target: Any, cfg: FleetBenchConfig, sizes: Any, sub_batch: int, workers: int, p95_target_ms: float,
             loads: dict[float, dict[str, Any]]) -> Measure:
    """A recforge.pipeline.profiling.lbt.Measure over recforge.inference.loadgen.run_open_loop on ``target``; each
    rate's load summary goes into ``loads`` (the items/s at the LBT come from there)."""
    def measure(rate: float, knobs: dict) -> Measurement:
        duration = max(cfg.point_duration_s, MIN_QUERIES_PER_POINT / rate)  # low rates: enough queries for a p95
        result = run_open_loop(target, rate, duration_s=duration, sizes=sizes, sub_batch=sub_batch, workers=workers,
                               seed=cfg.seed, drain_timeout_s=max(2.0, 4 * p95_target_ms / 1000))
        loads[rate] = result.to_dict()
        return Measurement.from_load(result, rate, duration)

    return measure


def search_lbt(url: str, model: str, spec: str, cfg: FleetBenchConfig, *, sub_batch: int, workers: int,
               start_qps: float, p95_target_ms: float, ceiling_qps: float | None = None,
               ramp_factor: float = 2.0) -> dict[str, Any]:
    """The LBT of the fleet at ``url`` (through the balancer): a warm-up run at ``start_qps``, then
    latency_bounded_throughput (no cap but the apparatus ceiling), searched again from a 4x lower rate when even the
    start breaks the SLO."""
    sizes = QuerySizes.parse(cfg.sizes)
    target = TritonHttpTarget(url, model, spec, max_batch=sub_batch, seed=cfg.seed, pool=max(workers, 8))
    loads: dict[float, dict[str, Any]] = {}
    try:
        if cfg.warmup_s > 0:
            run_open_loop(target, start_qps, duration_s=cfg.warmup_s, sizes=sizes, sub_batch=sub_batch,
                          workers=workers, seed=cfg.seed + 1, drain_timeout_s=2.0)
        measure = _measure(target, cfg, sizes, sub_batch, workers, p95_target_ms, loads)
        searches = []
        for attempt in range(START_RETRIES + 1):
            lbt = latency_bounded_throughput(measure, {"sub_batch": sub_batch, "workers": workers},
                                             **cfg.lbt_kwargs(start_qps / 4**attempt, p95_target_ms,
                                                              ceiling_qps=ceiling_qps, ramp_factor=ramp_factor))
            searches.append(lbt)
            if lbt.lbt_qps > 0:
                break
    finally:
        target.close()
    at = lbt.at_lbt
    load_at = loads.get(lbt.lbt_qps, {}) if at is not None else {}
    return {
        "lbt_qps": lbt.lbt_qps, "capped": lbt.capped, "lbt_limit": lbt.limit, "converged": lbt.converged,
        "note": lbt.note,
        "start_qps": lbt.config.start_qps, "searches": len(searches),
        "p50_ms_at_lbt": at.p50_ms if at else None, "p95_ms_at_lbt": at.p95_ms if at else None,
        "p99_ms_at_lbt": at.p99_ms if at else None, "achieved_qps_at_lbt": at.achieved_qps if at else None,
        # items/s sustained at the LBT: achieved queries/s x items per issued query (the load generator's own
        # items_per_s divides by a window that includes the drain, which short windows make too low)
        "items_per_s_at_lbt": at.achieved_qps * load_at["mean_items"] if at and load_at.get("mean_items") else None,
        "mean_items_at_lbt": load_at.get("mean_items"), "loadgen_at_lbt": load_at or None,
        "curve": [point for s in searches for point in s.curve()],
    }


def same_load_run(url: str, model: str, spec: str, cfg: FleetBenchConfig, *, sub_batch: int, workers: int,
                  rate: float, p95_target_ms: float) -> dict[str, Any]:
    """One load run of ``cfg.compare_duration_s`` at ``rate`` through the balancer: p50/p95, achieved rate, errors
    and the apparatus' share of the latency (``recforge.tools.bench.apparatus_share``)."""
    target = TritonHttpTarget(url, model, spec, max_batch=sub_batch, seed=cfg.seed, pool=max(workers, 8))
    try:
        result = run_open_loop(target, rate, duration_s=cfg.compare_duration_s, sizes=QuerySizes.parse(cfg.sizes),
                               sub_batch=sub_batch, workers=workers, seed=cfg.seed + 2,
                               drain_timeout_s=max(2.0, 4 * p95_target_ms / 1000))
    finally:
        target.close()
    figures = {k: v for k, v in result.to_dict().items()
               if k in ("p50_ms", "p95_ms", "p99_ms", "achieved_qps", "queries", "errors")}
    return {"offered_qps": rate, **figures, **apparatus_share_figures(result)}


# --------------------------------------------------------------------------------------------------------------
# The comparison




def bench_root(home: str | Path | None = None) -> Path:
    return Path(home if home is not None else config.recforge_home()) / "fleet-bench"


def auc_ratio(profile: Mapping[str, Any] | None, same_model: bool) -> float | None:
    """The champion's test AUC over fp32's, from its profile's accuracy (auc, delta_auc against fp32); 1 when both
    sides serve the same model; None without the figures."""
    if same_model:
        return 1.0
    accuracy = (profile or {}).get("accuracy") or {}
    auc, delta = accuracy.get("auc"), accuracy.get("delta_auc")
    if not isinstance(auc, int | float) or not isinstance(delta, int | float):
        return None
    return ratio(auc, auc - delta)


def client_knobs(cfg: FleetBenchConfig, profile: Mapping[str, Any] | None, serving: Any) -> tuple[int, int]:
    """``(sub_batch, workers)`` of one side: the config's, else its profile's best_knobs, else the defaults; a
    sub-batch larger than the side's ``max_batch_size`` is a ConfigError."""
    knobs = dict(profile["search"]["best_knobs"]) if profile else {}
    sub_batch = int(cfg.sub_batch or knobs.get("sub_batch") or DEFAULT_SUB_BATCH)
    if sub_batch > serving.max_batch_size:
        raise ConfigError(f"sub_batch {sub_batch} is larger than the served max_batch_size {serving.max_batch_size};"
                          " give a smaller sub_batch in --config")
    return sub_batch, int(cfg.workers or knobs.get("workers") or DEFAULT_WORKERS)


def compare(source: fl.ModelSource, cfg: FleetBenchConfig | None = None, *, target: str = fl.DEFAULT_TARGET,
            home: str | Path | None = None, notes: Sequence[str] = (), baseline_onnx: str | Path | None = None,
            baseline_profile: str | Path | None = None, family: str | None = None) -> dict[str, Any]:
    """The interleaved rounds of the ``default`` (fp32 ``baseline_onnx``, default: the source's own file, with
    Triton's default config; with ``baseline_profile``: the source's file with that profile's generated config and
    client knobs) and the ``generated`` fleet (the source with its generated config) under the same query sizes;
    returns the result document (not written: see :func:`write_results`). Both fleets are down afterwards."""
    cfg = cfg or FleetBenchConfig()
    profile = read_profile(source.profile_path)
    knobs = dict(profile["search"]["best_knobs"]) if profile else {}
    generated = mr.serving_config_from_profile(source.profile_path) if profile else mr.ServingConfig()
    if baseline_profile is not None:
        if baseline_onnx is not None:
            raise ConfigError("--baseline-profile compares two configs of the same model: drop --baseline-onnx")
        earlier = read_profile(baseline_profile)  # a one-line ConfigError when it cannot be read
        serving = {"generated": generated, "default": mr.serving_config_from_profile(baseline_profile)}
        baseline = {"config": "profile", "profile": str(baseline_profile),
                    "best_knobs": dict(earlier["search"]["best_knobs"]), "load": earlier.get("load")}
    else:
        earlier = profile
        serving = {"generated": generated, "default": default_serving_config(generated)}
        baseline = {"config": "triton-default"}
    baseline_file = str(baseline_onnx or source.onnx_path)
    same_model = Path(baseline_file).resolve() == Path(source.onnx_path).resolve()
    clients = {"generated": client_knobs(cfg, profile, generated), "default": client_knobs(cfg, earlier,
                                                                                         serving["default"])}
    sub_batch, workers = clients["generated"]
    p95_target = float(cfg.p95_target_ms or (profile or {}).get("p95_target_ms") or DEFAULT_P95_MS)
    profile_lbt = float((profile or {}).get("latency_bounded_throughput_qps") or 0)
    start_qps = float(cfg.start_qps or (max(1.0, profile_lbt / 4) if profile_lbt else DEFAULT_START_QPS))
    ceiling = cfg.apparatus_ceiling_qps or calibrated_ceiling_qps(home)
    cfg.lbt_kwargs(start_qps, p95_target, ceiling_qps=ceiling)
    family = family or (profile or {}).get("model_family") or source.model.removeprefix(fl.MODEL_PREFIX)
    root = bench_root(home) / (cfg.name or f"{source.model}-{target}")
    homes = {label: root / label for label in CONFIGS}
    doc: dict[str, Any] = {
        "model": source.model, "version": source.version, "source": source.origin, "target": target,
        "family": family, "baseline_onnx": baseline_file, "baseline_is_the_same_model": same_model,
        "baseline": {**baseline, "sub_batch": clients["default"][0], "workers": clients["default"][1]},
        "nodes": cfg.nodes, "notes": list(notes), "measured_at": utc_now(), "loadavg_before": load_average(),
        "load": {"sizes": cfg.sizes, "sub_batch": sub_batch, "workers": workers, "seed": cfg.seed,
                 "point_duration_s": cfg.point_duration_s, "warmup_s": cfg.warmup_s, "p95_target_ms": p95_target,
                 "start_qps": start_qps, "max_qps": cfg.max_qps, "apparatus_ceiling_qps": ceiling,
                 "tolerance": cfg.tolerance, "max_steps": cfg.max_steps, "repeats": cfg.repeats,
                 "max_error_rate": cfg.max_error_rate, "min_achieved_ratio": cfg.min_achieved_ratio,
                 "load_fraction": cfg.load_fraction, "compare_duration_s": cfg.compare_duration_s,
                 "from_profile": sorted(k for k in ("sub_batch", "workers") if getattr(cfg, k) is None and k in knobs)},
        "profile": {"path": source.profile_path, "lbt_qps": profile_lbt or None, "best_knobs": knobs} if profile
        else None,
        "settings": asdict(cfg), "configs": {},
    }
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in CONFIGS}
    starts = {label: start_qps for label in CONFIGS}  # each side's next search starts from its previous LBT
    ramps = {label: 2.0 for label in CONFIGS}
    same_rate: dict[int, float] = {}
    try:
        for round_no, label in interleaved_order(cfg.rounds, RUN_ORDER):
            entry = run_round(source, cfg, label, serving[label], homes[label], target=target, notes=notes,
                              onnx_path=baseline_file if label == "default" else source.onnx_path)
            entry["round"] = round_no
            sub_batch, workers = clients[label]
            with on_apparatus_cpus(homes[label]) as apparatus:  # the client off the nodes' CPUs
                entry.update(search_lbt(entry["fleet_url"], source.model, source.spec_path, cfg, sub_batch=sub_batch,
                                        workers=workers, start_qps=starts[label], p95_target_ms=p95_target,
                                        ceiling_qps=ceiling, ramp_factor=ramps[label]))
                if entry["lbt_qps"] > 0:
                    starts[label], ramps[label] = RESTART_FRACTION * entry["lbt_qps"], cfg.round_ramp_factor
                if label == "default":  # the baseline's LBT of this round sets both sides' same-load rate
                    same_rate[round_no] = cfg.load_fraction * (entry["lbt_qps"] or start_qps / 2)
                entry["same_load"] = same_load_run(entry["fleet_url"], source.model, source.spec_path, cfg,
                                                   sub_batch=sub_batch, workers=workers, rate=same_rate[round_no],
                                                   p95_target_ms=p95_target)
            entry["apparatus"] = apparatus
            entry["loadavg_after"] = load_average()
            fl.down(home=homes[label])
            runs[label].append(entry)
    finally:
        for fleet_home in homes.values():  # also the fleet of a label that never got its turn (interrupted)
            with contextlib.suppress(Exception):
                fl.down(home=fleet_home)
    lbt = {}
    for label in CONFIGS:  # the median over the rounds; the figures at the LBT are those of the round nearest to it
        rounds = [e["lbt_qps"] for e in runs[label]]
        lbt[label] = statistics.median(rounds)
        nearest = min(runs[label], key=lambda e, m=lbt[label]: (abs(e["lbt_qps"] - m), e["round"]))
        doc["configs"][label] = {**nearest, "lbt_qps": lbt[label], "lbt_qps_rounds": rounds,
                                 "lbt_qps_round_shown": nearest["lbt_qps"],
                                 "other_rounds": [e for e in runs[label] if e is not nearest]}
    doc["ratio_generated_over_default"] = lbt["generated"] / lbt["default"] if lbt["default"] > 0 else None
    doc["rounds"] = round_summary(runs, cfg.confidence)
    doc["auc_ratio"] = auc_ratio(profile, same_model)
    # the issue-12 headline (fp32 with Triton's default config against the champion) has its own path name
    doc["bench_line"] = served_bench_line(doc, "served" if baseline["config"] == "triton-default"
                                          else "served-vs-profile")
    doc["loadavg_after"] = load_average()
    doc["duration_s"] = round(time.monotonic() - started, 1)
    return doc


def on_apparatus_cpus(fleet_home: Path) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """The block runs on the apparatus' CPUs of the fleet in ``fleet_home`` (``perf_fleet.on_the_apparatus``: its
    CPUs, and each node's requests across the block, go into the dict it yields)."""
    return on_the_apparatus(fl.Fleet(home=fleet_home))


def run_round(source: fl.ModelSource, cfg: FleetBenchConfig, label: str, intended: Any, fleet_home: Path, *,
              target: str, notes: Sequence[str], onnx_path: str) -> dict[str, Any]:
    """Bring ``label``'s fleet up with ``onnx_path`` served with ``intended`` on every node (checked as each node
    serves it); the round's entry, without its measurements. The caller brings the fleet down."""
    state = fl.up(source, cfg.fleet_config(target), home=fleet_home, notes=notes)
    handle = fl.Fleet(home=fleet_home)
    if label == "default":  # same fleet, every node re-staged with the baseline model and Triton's default config
        for node in handle.nodes:
            handle.stage_on_node(node, source.model, source.version, onnx_path, source.spec_path,
                                 serving_config=intended,
                                 expected_sha256=source.expected_sha256 if onnx_path == source.onnx_path else None,
                                 provenance={"fleet_source": source.origin,
                                             "fleet_bench": f"baseline {onnx_path} with Triton's default config"})
    served = {}
    for node in handle.nodes:
        served[node] = config_knobs(tr.model_config(handle.node(node)["url"], source.model))
        _check_served(label, node, served[node], intended)
    pbtxt = Path(handle.node(handle.nodes[0])["repo"]) / source.model / "config.pbtxt"
    return {"serving_config": intended.to_dict(), "served_onnx": onnx_path, "config_pbtxt": str(pbtxt),
            "config_pbtxt_knobs": config_knobs(mr.parse_config_pbtxt(pbtxt)), "served_knobs": served,
            "fleet_url": state["url"], "up_seconds": state.get("up_seconds"),
            "cpu_plan": (handle.state.get("placement") or {}).get("plan"),
            "weights": {n: v["weight"] for n, v in handle.state["nodes"].items()}, "loadavg_before": load_average()}


def round_summary(runs: Mapping[str, Sequence[Mapping[str, Any]]], confidence: float) -> dict[str, Any]:
    """Per round the ratios generated over default (LBT, p95 at the same load), and their medians with intervals."""
    pairs = list(zip(runs["default"], runs["generated"], strict=True))
    throughput = [ratio(g["lbt_qps"], d["lbt_qps"]) for d, g in pairs]
    latency = [ratio(g["same_load"]["p95_ms"], d["same_load"]["p95_ms"]) for d, g in pairs]
    return {"order": [list(x) for x in interleaved_order(len(pairs), RUN_ORDER)],
            "same_load_qps": [d["same_load"]["offered_qps"] for d, _ in pairs],
            "throughput_ratio_rounds": throughput, "latency_ratio_rounds": latency,
            "throughput_ratio": median_interval(throughput, confidence).to_dict(),
            "latency_ratio": median_interval(latency, confidence).to_dict(),
            "apparatus_share": {label: median_interval([e["same_load"].get("apparatus_share_median")
                                                        for e in runs[label]], confidence).to_dict()
                                for label in CONFIGS}}


def served_bench_line(doc: Mapping[str, Any], path: str = "served") -> str:
    """``bench: family=F path=served latency_ratio=... throughput_ratio=... auc_ratio=...`` (medians, intervals)."""
    rounds = doc["rounds"]
    figures: dict[str, float | None] = {"latency_ratio": rounds["latency_ratio"]["median"],
                                        "throughput_ratio": rounds["throughput_ratio"]["median"],
                                        "auc_ratio": doc["auc_ratio"]}
    for name in ("latency_ratio", "throughput_ratio"):
        figures[f"{name}_low"], figures[f"{name}_high"] = rounds[name]["low"], rounds[name]["high"]
    figures["rounds"] = len(rounds["throughput_ratio_rounds"])
    return format_bench_line(doc["family"], path, figures)


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.fleet_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--family", default=os.environ.get("FLEET_FAMILY", DEFAULT_FAMILY),
                        help="model family: registry champion recforge-<family>, else the newest nightly model")
    parser.add_argument("--target", default=fl.DEFAULT_TARGET, help="hardware target (champion, profile)")
    parser.add_argument("--config", default="{}", help="FleetBenchConfig fields as a JSON object")
    parser.add_argument("--onnx", help="benchmark this ONNX file (with --spec) instead of the champion")
    parser.add_argument("--spec", help="the model's spec.json")
    parser.add_argument("--profile", help="its profile JSON (the generated config comes from it)")
    parser.add_argument("--model", default="model", help="Triton model name for --onnx")
    parser.add_argument("--baseline-onnx", default=None,
                        help="the baseline's ONNX file (default: the newest nightly's fp32 model of --family; with "
                             "--onnx, that same file)")
    parser.add_argument("--baseline-profile", default=None,
                        help="the baseline serves the same model with the config generated from this profile (and its "
                             "client knobs) instead of Triton's default config")
    args = parser.parse_args(argv)

    def step() -> Any:
        cfg = FleetBenchConfig.from_dict(json_object(args.config))
        notes: list[str] = []
        baseline = args.baseline_onnx
        if args.onnx or args.spec:
            if not (args.onnx and args.spec):
                raise ConfigError("--onnx and --spec go together")
            source = fl.explicit_source(args.onnx, args.spec, profile_path=args.profile, model=args.model)
            family = None
        else:
            dest = bench_root() / (cfg.name or f"{fl.MODEL_PREFIX}{args.family}-{args.target}") / "source"
            source, notes = fl.default_source(args.family, args.target, dest=dest)
            family = args.family
            if baseline is None and args.baseline_profile is None:
                baseline = fl.nightly_source(args.family).onnx_path  # the trained fp32 model
        if baseline is not None and not Path(baseline).is_file():
            raise ConfigError(f"--baseline-onnx {baseline} is not a file")
        against = (f"the config generated from {args.baseline_profile}" if args.baseline_profile
                   else "Triton's default config")
        print(f"fleet benchmark of {source.origin} against {baseline or 'the same model'} with {against} on "
              f"{cfg.nodes} x {args.target} (1-min load average {load_average()[:1]})", file=sys.stderr, flush=True)
        doc = compare(source, cfg, target=args.target, notes=notes, baseline_onnx=baseline,
                      baseline_profile=args.baseline_profile, family=family)
        json_path, md_path = write_results(doc)
        print(render_table(doc))
        print(doc["bench_line"], flush=True)  # machine-readable (recforge.tools.bench.bench_line)
        return {"ratio_generated_over_default": doc["ratio_generated_over_default"],
                "lbt_qps": {label: doc["configs"][label]["lbt_qps"] for label in CONFIGS},
                "bench_line": doc["bench_line"], "duration_s": doc["duration_s"], "json": str(json_path),
                "markdown": str(md_path)}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
