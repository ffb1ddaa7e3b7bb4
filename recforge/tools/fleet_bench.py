"""Latency-bounded throughput of the local Triton fleet: the serving config generated from the profile against
Triton's default config, side by side under the same DeepRecSys load.

Two fleets run one after the other (``recforge.serving.fleet.up``, ``cfg.nodes`` tritonserver nodes behind HAProxy on
a free port), each in its own folder ``$RECFORGE_HOME/fleet-bench/<name>/{generated,default}`` so that a user's fleet in
``$RECFORGE_HOME/fleet`` is never touched:

* ``generated``: what ``make fleet-up`` serves, :func:`recforge.inference.model_repo.serving_config_from_profile` of the
  model's profile (dynamic batching with the profiled preferred sizes and queue delay, the profiled instances);
* ``default``: Triton's default serving, no ``dynamic_batching`` block at all and one instance (the same
  ``max_batch_size``, so that the client's sub-batches fit). The fleet starts like the other one (same weights) and
  every node is then re-staged with this config through its own port (``Fleet.stage_on_node``).

Each node's config is read back from Triton (``/v2/models/<m>/config``) and checked against the intended one before
any load runs. The client side is identical: the same query sizes (lognormal(5.1, 0.2) items per query), sub-batch
size and workers (the profile's ``best_knobs``), seed, durations and SLO; the LBT search is
:func:`recforge.pipeline.profiling.lbt.latency_bounded_throughput` over
:func:`recforge.inference.loadgen.run_open_loop` on a :class:`recforge.inference.triton.TritonHttpTarget` of the
balancer's URL. Both fleets are always brought down.

The results go to ``$RECFORGE_HOME/bench/fleet_configs.json`` (one entry per model and target, the latest run
replacing an older one) and ``fleet_configs.md`` (the table of every entry).

CLI::

    python -m recforge.tools.fleet_bench [--family dlrm] [--target cpu-triton] [--config JSON]
                                  [--onnx M.onnx --spec spec.json [--profile P.json] [--model NAME]]

``--config`` takes :class:`FleetBenchConfig` fields, e.g. ``'{"point_duration_s": 3, "max_steps": 8}'``.
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
from recforge.core.timing import utc_now
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.inference.loadgen import QuerySizes, run_open_loop
from recforge.inference.model_repo import ServingConfig
from recforge.inference.triton import TritonHttpTarget
from recforge.pipeline.profiling.lbt import LBTConfig, Measure, Measurement, latency_bounded_throughput
from recforge.serving import fleet as fl
from recforge.serving.fleet.config import DEFAULT_FAMILY

CONFIGS = ("generated", "default")  # in the order they run
DEFAULT_SUB_BATCH, DEFAULT_WORKERS, DEFAULT_P95_MS, DEFAULT_START_QPS = 64, 8, 25.0, 10.0
MIN_QUERIES_PER_POINT = 20  # a probed rate runs at least this many queries (longer than point_duration_s if need be)
START_RETRIES = 2  # an LBT of 0 at start_qps is searched again from a 4x lower rate, this often
RESULTS_NAME = "fleet_configs"


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Knob = Annotated[int, Field(ge=1, le=1024)]


@typed_config
class FleetBenchConfig:
    """Settings of the comparison (``--config`` JSON). None: taken from the model's profile."""

    nodes: int = 2  # checked as recforge.serving.fleet.FleetConfig checks it
    p95_target_ms: Positive | None = None  # None: the profile's p95 target (25 ms without a profile)
    start_qps: Positive | None = None  # None: a quarter of the profile's LBT (10 qps without a profile)
    max_qps: Positive = 20_000.0
    point_duration_s: Positive = 2.0  # per probed rate (longer at low rates: MIN_QUERIES_PER_POINT queries)
    # a load run at start_qps before each search (connections, model caches)
    warmup_s: Annotated[float, Field(ge=0, le=600)] = 1.0
    tolerance: float = 0.1  # this and the next four: checked by recforge.pipeline.profiling.lbt.LBTConfig
    max_steps: int = 12
    repeats: int = 1
    max_error_rate: float = 0.0
    min_achieved_ratio: float = 0.9
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes.parse: lognormal(5.1, 0.2) items per query
    sub_batch: Knob | None = None  # None: the profile's best_knobs.sub_batch (64 without)
    workers: Knob | None = None  # None: the profile's best_knobs.workers (8 without)
    seed: int = 0
    check_inter_ms: int = 500  # checked as recforge.serving.fleet.FleetConfig checks it
    # folder under $RECFORGE_HOME/fleet-bench (default: <model>-<target>)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    rounds: Annotated[int, Field(ge=1, le=10)] = 1  # each config's fleet is measured this often, in alternating
    # order; the LBT is their median

    def __post_init__(self) -> None:
        QuerySizes.parse(self.sizes)
        fl.FleetConfig(nodes=self.nodes, port=0, check_inter_ms=self.check_inter_ms)  # same checks as the fleet's
        self.lbt_kwargs(self.start_qps or DEFAULT_START_QPS, self.p95_target_ms or DEFAULT_P95_MS)  # bounds

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FleetBenchConfig:
        return config.config_from_dict(cls, dict(values or {}))

    def lbt_kwargs(self, start_qps: float, p95_target_ms: float) -> dict[str, Any]:
        """Keyword arguments of recforge.pipeline.profiling.search.latency_bounded_throughput (checked by LBTConfig)."""
        kwargs = {"p95_target_ms": float(p95_target_ms), "start_qps": float(start_qps),
                  "max_qps": max(float(self.max_qps), float(start_qps)), "tolerance": self.tolerance,
                  "max_steps": self.max_steps, "repeats": self.repeats, "max_error_rate": self.max_error_rate,
                  "min_achieved_ratio": self.min_achieved_ratio}
        LBTConfig(**kwargs)
        return kwargs


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


def describe_knobs(knobs: Mapping[str, Any]) -> str:
    """One line of :func:`config_knobs`, for the table."""
    if knobs["dynamic_batching"]:
        preferred = ", ".join(map(str, knobs["preferred_batch_size"])) or "none"
        batching = f"dynamic_batching (preferred [{preferred}], delay {knobs['max_queue_delay_us']} us)"
    else:
        batching = "no dynamic_batching"
    return (f"max_batch_size {knobs['max_batch_size']}, {batching}, {knobs['instances']} instance(s), "
            f"{knobs['intra_op_threads']} intra-op thread(s)")


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
               start_qps: float, p95_target_ms: float) -> dict[str, Any]:
    """The LBT of the fleet at ``url`` (through the balancer): a warm-up run at ``start_qps``, then
    latency_bounded_throughput, searched again from a 4x lower rate when even the start breaks the SLO."""
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
                                             **cfg.lbt_kwargs(start_qps / 4**attempt, p95_target_ms))
            searches.append(lbt)
            if lbt.lbt_qps > 0:
                break
    finally:
        target.close()
    at = lbt.at_lbt
    load_at = loads.get(lbt.lbt_qps, {}) if at is not None else {}
    return {
        "lbt_qps": lbt.lbt_qps, "capped": lbt.capped, "converged": lbt.converged, "note": lbt.note,
        "start_qps": lbt.config.start_qps, "searches": len(searches),
        "p50_ms_at_lbt": at.p50_ms if at else None, "p95_ms_at_lbt": at.p95_ms if at else None,
        "p99_ms_at_lbt": at.p99_ms if at else None, "achieved_qps_at_lbt": at.achieved_qps if at else None,
        # items/s sustained at the LBT: achieved queries/s x items per issued query (the load generator's own
        # items_per_s divides by a window that includes the drain, which short windows make too low)
        "items_per_s_at_lbt": at.achieved_qps * load_at["mean_items"] if at and load_at.get("mean_items") else None,
        "mean_items_at_lbt": load_at.get("mean_items"), "loadgen_at_lbt": load_at or None,
        "curve": [point for s in searches for point in s.curve()],
    }


# --------------------------------------------------------------------------------------------------------------
# The comparison




def bench_root(home: str | Path | None = None) -> Path:
    return Path(home if home is not None else config.recforge_home()) / "fleet-bench"


def compare(source: fl.ModelSource, cfg: FleetBenchConfig | None = None, *, target: str = fl.DEFAULT_TARGET,
            home: str | Path | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Run the ``generated`` then the ``default`` fleet of ``source`` and search each one's LBT under the same load;
    returns the result document (not written: see :func:`write_results`). Both fleets are down afterwards."""
    cfg = cfg or FleetBenchConfig()
    profile = read_profile(source.profile_path)
    knobs = dict(profile["search"]["best_knobs"]) if profile else {}
    generated = mr.serving_config_from_profile(source.profile_path) if profile else mr.ServingConfig()
    serving = {"generated": generated, "default": default_serving_config(generated)}
    sub_batch = int(cfg.sub_batch or knobs.get("sub_batch") or DEFAULT_SUB_BATCH)
    if sub_batch > generated.max_batch_size:
        raise ConfigError(f"sub_batch {sub_batch} is larger than the served max_batch_size {generated.max_batch_size};"
                          " give a smaller sub_batch in --config")
    workers = int(cfg.workers or knobs.get("workers") or DEFAULT_WORKERS)
    p95_target = float(cfg.p95_target_ms or (profile or {}).get("p95_target_ms") or DEFAULT_P95_MS)
    profile_lbt = float((profile or {}).get("latency_bounded_throughput_qps") or 0)
    start_qps = float(cfg.start_qps or (max(1.0, profile_lbt / 4) if profile_lbt else DEFAULT_START_QPS))
    cfg.lbt_kwargs(start_qps, p95_target)
    root = bench_root(home) / (cfg.name or f"{source.model}-{target}")
    homes = {label: root / label for label in CONFIGS}
    doc: dict[str, Any] = {
        "model": source.model, "version": source.version, "source": source.origin, "target": target,
        "nodes": cfg.nodes, "notes": list(notes), "measured_at": utc_now(), "loadavg_before": load_average(),
        "load": {"sizes": cfg.sizes, "sub_batch": sub_batch, "workers": workers, "seed": cfg.seed,
                 "point_duration_s": cfg.point_duration_s, "warmup_s": cfg.warmup_s, "p95_target_ms": p95_target,
                 "start_qps": start_qps, "max_qps": cfg.max_qps, "tolerance": cfg.tolerance,
                 "max_steps": cfg.max_steps, "repeats": cfg.repeats, "max_error_rate": cfg.max_error_rate,
                 "min_achieved_ratio": cfg.min_achieved_ratio,
                 "from_profile": sorted(k for k in ("sub_batch", "workers") if getattr(cfg, k) is None and k in knobs)},
        "profile": {"path": source.profile_path, "lbt_qps": profile_lbt or None, "best_knobs": knobs} if profile
        else None,
        "settings": asdict(cfg), "configs": {},
    }
    started = time.monotonic()
    # rounds > 1 alternate the order (generated, default, default, generated, ...): a slow drift of the machine's
    # load then weighs on both configs alike
    order = [(r, label) for r in range(cfg.rounds) for label in (CONFIGS if r % 2 == 0 else CONFIGS[::-1])]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in CONFIGS}
    try:
        for round_no, label in order:
            intended = serving[label]
            fleet_home = homes[label]
            try:
                state = fl.up(source, fl.FleetConfig(nodes=cfg.nodes, port=0, target=target,
                                                     check_inter_ms=cfg.check_inter_ms), home=fleet_home, notes=notes)
                handle = fl.Fleet(home=fleet_home)
                if label == "default":  # same fleet, every node re-staged with Triton's default config
                    for node in handle.nodes:
                        handle.stage_on_node(node, source.model, source.version, source.onnx_path, source.spec_path,
                                             serving_config=intended, expected_sha256=source.expected_sha256,
                                             provenance={"fleet_source": source.origin,
                                                         "fleet_bench": "Triton default config (baseline)"})
                served = {}
                for node in handle.nodes:
                    info = handle.node(node)
                    served[node] = config_knobs(tr.model_config(info["url"], source.model))
                    _check_served(label, node, served[node], intended)
                pbtxt = Path(handle.node(handle.nodes[0])["repo"]) / source.model / "config.pbtxt"
                entry = {"round": round_no, "serving_config": intended.to_dict(), "config_pbtxt": str(pbtxt),
                         "config_pbtxt_knobs": config_knobs(mr.parse_config_pbtxt(pbtxt)), "served_knobs": served,
                         "fleet_url": state["url"], "up_seconds": state.get("up_seconds"),
                         "weights": {n: v["weight"] for n, v in handle.state["nodes"].items()},
                         "loadavg_before": load_average()}
                entry.update(search_lbt(state["url"], source.model, source.spec_path, cfg, sub_batch=sub_batch,
                                        workers=workers, start_qps=start_qps, p95_target_ms=p95_target))
                entry["loadavg_after"] = load_average()
                runs[label].append(entry)
            finally:
                fl.down(home=fleet_home)
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
    doc["loadavg_after"] = load_average()
    doc["duration_s"] = round(time.monotonic() - started, 1)
    return doc


# --------------------------------------------------------------------------------------------------------------
# Results


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def render_table(doc: Mapping[str, Any]) -> str:
    """The markdown table of one comparison, with the load it ran under and the ratio."""
    load = doc["load"]
    lines = [f"### {doc['model']} v{doc['version']} on {doc['nodes']} x {doc['target']} "
             f"(measured {doc['measured_at']})", "", f"source: {doc['source']}", "",
             f"load: Poisson queries, {load['sizes']} items per query, sub-batch {load['sub_batch']}, "
             f"{load['workers']} client workers, seed {load['seed']}, {load['point_duration_s']:g} s per rate, "
             f"p95 target {load['p95_target_ms']:g} ms, search from {load['start_qps']:g} qps "
             f"(tolerance {load['tolerance']:g}); 1-min load average before/after: "
             f"{(doc.get('loadavg_before') or ['?'])[0]} / {(doc.get('loadavg_after') or ['?'])[0]}", "",
             "| config | LBT qps | items/s at LBT | p95 ms at LBT | p50 ms at LBT | rates probed | config.pbtxt |",
             "|---|---:|---:|---:|---:|---:|---|"]
    rounds = max(len(e.get("lbt_qps_rounds") or [0]) for e in doc["configs"].values())
    for label in CONFIGS:
        entry = doc["configs"].get(label)
        if entry is None:
            continue
        lbt = _fmt(entry["lbt_qps"]) + (" (capped)" if entry["capped"] else "") + \
            ("" if entry["converged"] else " (not converged)")
        if rounds > 1:
            lbt += f" (median of {', '.join(_fmt(x) for x in entry['lbt_qps_rounds'])})"
        lines.append(f"| {label} | {lbt} | {_fmt(entry['items_per_s_at_lbt'], 0)} | "
                     f"{_fmt(entry['p95_ms_at_lbt'])} | {_fmt(entry['p50_ms_at_lbt'])} | {len(entry['curve'])} | "
                     f"{describe_knobs(entry['config_pbtxt_knobs'])} |")
    ratio = doc.get("ratio_generated_over_default")
    if rounds > 1:
        lines += ["", f"{rounds} rounds in alternating order; LBT = median of the rounds, the other columns are the "
                  "round nearest to it"]
    lines += ["", f"LBT generated / default: {_fmt(ratio, 2) + 'x' if ratio is not None else '– (default LBT is 0)'}"]
    return "\n".join(lines) + "\n"


def write_results(doc: Mapping[str, Any], home: str | Path | None = None) -> tuple[Path, Path]:
    """Merge ``doc`` into ``$RECFORGE_HOME/bench/fleet_configs.json`` (keyed ``<model>@<target>``) and rewrite
    ``fleet_configs.md`` from every entry; returns both paths."""
    out = Path(home if home is not None else config.recforge_home()) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{RESULTS_NAME}.json", out / f"{RESULTS_NAME}.md"
    runs: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        runs = dict(json.loads(json_path.read_text()).get("runs") or {})
    runs[f"{doc['model']}@{doc['target']}"] = doc
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=2, default=str) + "\n")
    os.replace(tmp, json_path)
    text = ["# Triton fleet: generated serving config vs Triton's default config", "",
            "Latency-bounded throughput (highest Poisson query rate whose p95 meets the target) through the balancer "
            "(`make bench-fleet`, recforge/tools/fleet_bench.py). The client load is identical for both configs.", ""]
    for key in sorted(runs, key=lambda k: runs[k].get("measured_at", ""), reverse=True):
        text.append(render_table(runs[key]))
    md_path.write_text("\n".join(text))
    return json_path, md_path


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
    args = parser.parse_args(argv)

    def step() -> Any:
        cfg = FleetBenchConfig.from_dict(json_object(args.config))
        notes: list[str] = []
        if args.onnx or args.spec:
            if not (args.onnx and args.spec):
                raise ConfigError("--onnx and --spec go together")
            source = fl.explicit_source(args.onnx, args.spec, profile_path=args.profile, model=args.model)
        else:
            dest = bench_root() / (cfg.name or f"{fl.MODEL_PREFIX}{args.family}-{args.target}") / "source"
            source, notes = fl.default_source(args.family, args.target, dest=dest)
        print(f"fleet benchmark of {source.origin} on {cfg.nodes} x {args.target} (1-min load average "
              f"{load_average()[:1]})", file=sys.stderr, flush=True)
        doc = compare(source, cfg, target=args.target, notes=notes)
        json_path, md_path = write_results(doc)
        print(render_table(doc))
        return {"ratio_generated_over_default": doc["ratio_generated_over_default"],
                "lbt_qps": {label: doc["configs"][label]["lbt_qps"] for label in CONFIGS},
                "duration_s": doc["duration_s"], "json": str(json_path), "markdown": str(md_path)}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
