"""Calibration of the apparatus: the load generator's own ceiling against a null target, each on its own CPU set,
next to the rates the profiles and benches drive (issue 12: the ceiling must be at least 5x each of them).

The load generator is what profiling and the benches use against a Triton node or the fleet's balancer:
:func:`recforge.inference.loadgen.run_open_loop` driving a :class:`recforge.inference.triton.TritonHttpTarget`. It
runs in this process, moved into the apparatus CPU set (a cgroup of ``recforge.core.cpusets``, or the affinity mask
where cgroups cannot be written). The null target is an HAProxy frontend in its own CPU set that answers every
inference request at once with 200 and a KServe v2-shaped JSON body (``http-request return`` after buffering the
whole request body, so connections stay alive): every cycle measured is the client's. The requests are the
profiles' (the served model's spec, so the same bytes per item; the example spec without one), the queries
DeepRecSys' mix (lognormal(5.1, 0.2) items) cut into the profile's sub-batches and sent by the profile's workers.

The ceiling is the throughput of a saturating open-loop run (every query released at once: the client, not the
schedule, sets the pace). A second one measures fixed-size requests (the fault bench's 16 rows, one per query).
Printed: both ceilings, the CPU each side used, and the table of used rates with their ratio; the JSON goes to
``$RECFORGE_HOME/bench/apparatus.json`` and the last line is machine-readable::

    python -m recforge.tools.apparatus [--config '{"queries": 3000}'] [--profile P.json --spec spec.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.features import FeatureSpec, example_spec
from recforge.contracts.profile import read_profile
from recforge.core import config
from recforge.core import cpusets as cs
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError
from recforge.core.hw import cpu_model
from recforge.core.ports import free_ports
from recforge.inference.loadgen import MAX_RATE_QPS, QuerySizes, load_spec, run_open_loop
from recforge.inference.triton import TritonHttpTarget, encode_request
from recforge.models.export import example_inputs
from recforge.serving import fleet as fl
from recforge.serving import loadbalancer as lb
from recforge.tools.fault_bench import FaultBenchConfig
from recforge.tools.fleet_bench import DEFAULT_SUB_BATCH, DEFAULT_WORKERS, FleetBenchConfig

NULL_MODEL = "null"
NULL_BODY = ('{"model_name":"null","model_version":"1","outputs":[{"name":"probability","datatype":"FP32",'
             '"shape":[1,1],"data":[0.5]}]}')
WARMUP_QUERIES = 200
Knob = Annotated[int, Field(ge=1, le=1024)]


@typed_config
class ApparatusConfig:
    """Settings of the calibration (``--config`` JSON)."""

    apparatus_cpus: str = ""  # the load generator's CPU list ("": the host's first CPU)
    target_cpus: str = ""  # the null target's ("": the next CPU, shared with nothing else)
    queries: Annotated[int, Field(ge=50, le=200_000)] = 3000  # per saturating run
    sub_batch: Knob | None = None  # None: the profile's best_knobs.sub_batch (64 without a profile)
    workers: Knob | None = None  # None: the profile's best_knobs.workers (8 without)
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes.parse
    fixed_items: Knob = FaultBenchConfig().items  # rows of the fixed-size requests (the fault bench's)
    min_ratio: Annotated[float, Field(gt=0, le=1000)] = 5.0  # ceiling / used rate needed
    seed: Annotated[int, Field(ge=0)] = 0

    def __post_init__(self) -> None:
        QuerySizes.parse(self.sizes)
        for name in ("apparatus_cpus", "target_cpus"):
            if getattr(self, name):
                cs.parse_cpu_list(getattr(self, name))


def placements(cfg: ApparatusConfig, host: Sequence[int]) -> tuple[cs.CpuPlacement, cs.CpuPlacement]:
    """(apparatus, null target) CPU sets: the given lists, else the planner's first two disjoint sets."""
    plan = cs.plan_cpus(host, cs.CpuPlanConfig(nodes=1, balancer_cpus=0, apparatus_cpus=1))
    apparatus = (cs.CpuPlacement(cpus=cs.parse_cpu_list(cfg.apparatus_cpus)) if cfg.apparatus_cpus
                 else plan.placements[cs.APPARATUS])
    target = cs.CpuPlacement(cpus=cs.parse_cpu_list(cfg.target_cpus)) if cfg.target_cpus else plan.placements["node0"]
    overlap = set(apparatus.cpus) & set(target.cpus)
    if overlap:
        raise ConfigError(f"apparatus_cpus and target_cpus share CPUs {cs.format_cpu_list(overlap)}: the null "
                          "target would be measured with the client")
    return apparatus, target


def requests_per_query(items: np.ndarray, sub_batch: int) -> np.ndarray:
    """HTTP requests each query takes: its items cut into sub-batches of at most ``sub_batch``."""
    return np.ceil(np.asarray(items, dtype=float) / sub_batch)


def used_rates(profile: Mapping[str, Any] | None, fault_bench: FaultBenchConfig,
               fleet_bench: FleetBenchConfig) -> list[dict[str, Any]]:
    """The rates the apparatus is used for: queries/s of the DeepRecSys mix (``mix``) or requests/s of fixed-size
    requests (``fixed``), each with where it comes from."""
    rates: list[dict[str, Any]] = []
    if profile:
        what = f"{profile.get('model_family')}/{profile.get('variant')} on {(profile.get('target') or {}).get('name')}"
        lbt = profile.get("latency_bounded_throughput_qps")
        if lbt:
            rates.append({"use": f"profile LBT of one node ({what})", "kind": "mix", "rate": float(lbt)})
            rates.append({"use": f"bench-fleet: {fleet_bench.nodes} nodes at the profile LBT", "kind": "mix",
                          "rate": float(lbt) * fleet_bench.nodes})
        cap = ((profile.get("search") or {}).get("lbt_search") or {}).get("max_qps")
        if cap:
            rates.append({"use": "profiling's LBT search ceiling (max_qps)", "kind": "mix", "rate": float(cap)})
    rates.append({"use": f"bench-faults valid traffic ({fault_bench.items}-row requests)", "kind": "fixed",
                  "rate": float(fault_bench.rate_qps)})
    return rates


def rate_table(rates: list[dict[str, Any]], ceilings: Mapping[str, float], min_ratio: float) -> list[dict[str, Any]]:
    """Each used rate with the ceiling of its kind, their ratio and whether it reaches ``min_ratio``."""
    rows = []
    for rate in rates:
        ceiling = ceilings[rate["kind"]]
        ratio = ceiling / rate["rate"] if rate["rate"] > 0 else math.inf
        rows.append({**rate, "ceiling": ceiling, "ratio": round(ratio, 2), "enough": ratio >= min_ratio})
    return rows


def null_target_config(path: Path, port: int, socket_path: Path, max_body: int) -> Path:
    """An HAProxy config whose one frontend answers every request with 200 and :data:`NULL_BODY` once the whole
    request body is in (its buffer holds the largest body, so nothing is left unread and keep-alive holds)."""
    bufsize = 1 << max(16, math.ceil(math.log2(max_body + 65536)))
    path.write_text(f"""global
    nbthread 1
    maxconn 1024
    tune.bufsize {bufsize}
    stats socket {socket_path} mode 600 level admin

defaults
    mode http
    timeout client 60s
    timeout connect 5s
    timeout server 60s
    timeout http-request 60s
    option http-buffer-request

frontend {NULL_MODEL}
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json string '{NULL_BODY}'
""")
    return path


def saturate(target: TritonHttpTarget, sizes: QuerySizes, *, sub_batch: int, workers: int, queries: int,
             seed: int, groups: Mapping[str, cs.CpuGroup]) -> dict[str, Any]:
    """One run with every query released at once; the client's throughput and each side's CPU seconds."""
    before = {side: group.usage_s() for side, group in groups.items()}
    result = run_open_loop(target, MAX_RATE_QPS, n_queries=queries, sizes=sizes, sub_batch=sub_batch,
                           workers=workers, seed=seed, drain_timeout_s=600.0)
    if result.errors:
        raise ConfigError(f"the null target failed {result.errors} of {result.queries} queries: {result.first_error}")
    requests = float(requests_per_query(result.items, sub_batch).sum())
    cpu = {}
    for side, group in groups.items():
        used = group.usage_s()
        cpu[side] = None if used is None or before[side] is None else round(used - before[side], 3)
    return {"sizes": result.sizes, "sub_batch": sub_batch, "workers": workers, "queries": result.queries,
            "seconds": round(result.duration_s, 3), "queries_per_s": round(result.achieved_qps, 1),
            "requests_per_s": round(requests / result.duration_s, 1), "items_per_s": round(result.items_per_s),
            "mean_items": round(result.mean_items, 1), "cpu_seconds": cpu,
            "cpu_utilisation": {side: (None if s is None else round(s / result.duration_s, 2)) for side, s in
                                cpu.items()}}


def calibrate(cfg: ApparatusConfig, *, profile_path: str | Path | None = None,
              spec: FeatureSpec | str | Path | None = None) -> dict[str, Any]:
    """Measure the ceilings and compare them with the used rates; returns the result document."""
    profile = read_profile(profile_path)
    knobs = ((profile or {}).get("search") or {}).get("best_knobs") or {}
    sub_batch = cfg.sub_batch or int(knobs.get("sub_batch") or DEFAULT_SUB_BATCH)
    workers = cfg.workers or int(knobs.get("workers") or DEFAULT_WORKERS)
    spec = load_spec(spec) if spec is not None else example_spec()
    apparatus, target = placements(cfg, cs.host_cpus())
    tag = f"apparatus-{os.getpid()}"
    groups = {"apparatus": cs.CpuGroup(f"{tag}-client", apparatus).create(),
              "null_target": cs.CpuGroup(f"{tag}-target", target).create()}
    max_batch = max(sub_batch, cfg.fixed_items)
    body, _ = encode_request({k: v.numpy() for k, v in example_inputs(spec, max_batch, 0).items()}, ["probability"])
    with tempfile.TemporaryDirectory(prefix="recforge-apparatus-") as folder:
        port = free_ports(1)[0]
        proxy = lb.HAProxy(null_target_config(Path(folder) / "null.cfg", port, Path(folder) / "admin.sock",
                                              len(body)), Path(folder) / "admin.sock", Path(folder) / "haproxy.log",
                           port, placement=groups["null_target"])
        try:
            proxy.start()
            with cs.this_process_in(groups["apparatus"]):
                client = TritonHttpTarget(f"http://127.0.0.1:{port}", NULL_MODEL, spec, max_batch=max_batch,
                                          pool=max(workers, 8))
                try:
                    run = {"sub_batch": sub_batch, "workers": workers, "seed": cfg.seed, "groups": groups}
                    saturate(client, QuerySizes.parse(cfg.sizes), queries=WARMUP_QUERIES, **run)
                    mix = saturate(client, QuerySizes.parse(cfg.sizes), queries=cfg.queries, **run)
                    run.update(sub_batch=cfg.fixed_items)
                    fixed = saturate(client, QuerySizes.fixed(cfg.fixed_items), queries=cfg.queries, **run)
                finally:
                    client.close()
            frontend = next(r for r in proxy.stats() if r.get("svname") == "FRONTEND")
        finally:
            proxy.stop()
            for group in groups.values():
                group.remove()
    rates = used_rates(profile, FaultBenchConfig(), FleetBenchConfig())
    table = rate_table(rates, {"mix": mix["queries_per_s"], "fixed": fixed["requests_per_s"]}, cfg.min_ratio)
    return {"measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "host": cpu_model(),
            "host_cpus": cs.format_cpu_list(cs.host_cpus()), "config": asdict(cfg),
            "profile": str(profile_path) if profile_path else None, "request_body_bytes_max": len(body),
            "placement": {side: group.to_state() for side, group in groups.items()},
            "mix": mix, "fixed": fixed, "rates": table, "min_ratio": cfg.min_ratio,
            "enough": all(row["enough"] for row in table),
            "null_target_connections": int(frontend.get("conn_tot") or 0),
            "null_target_requests": int(frontend.get("req_tot") or 0)}


def render(doc: Mapping[str, Any]) -> str:
    place = doc["placement"]
    lines = [f"apparatus (load generator) on CPUs {place['apparatus']['cpus']} ({place['apparatus']['mechanism']}), "
             f"null target (HAProxy http-request return) on CPUs {place['null_target']['cpus']}; "
             f"{doc['null_target_requests']} requests over {doc['null_target_connections']} connections"]
    for name in ("mix", "fixed"):
        run = doc[name]
        lines.append(f"ceiling {name:5s} {run['sizes']}, sub-batch {run['sub_batch']}, {run['workers']} workers: "
                     f"{run['queries_per_s']:,.0f} queries/s, {run['requests_per_s']:,.0f} requests/s, "
                     f"{run['items_per_s']:,.0f} items/s; CPU use {run['cpu_utilisation']}")
    lines.append(f"{'used for':62s} {'rate':>9s} {'ceiling':>9s} {'ratio':>7s}  >= {doc['min_ratio']:g}x")
    for row in doc["rates"]:
        unit = "q/s" if row["kind"] == "mix" else "req/s"
        lines.append(f"{row['use'][:62]:62s} {row['rate']:9,.0f} {row['ceiling']:9,.0f} {row['ratio']:6.1f}x  "
                     f"{'yes' if row['enough'] else 'NO'} ({unit})")
    worst = min((row["ratio"] for row in doc["rates"]), default=math.inf)
    lines.append(f"apparatus: ceiling_qps={doc['mix']['queries_per_s']:g} ceiling_rps={doc['mix']['requests_per_s']:g} "
                 f"fixed_rps={doc['fixed']['requests_per_s']:g} min_ratio={worst:g} enough={doc['enough']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.apparatus", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="{}", help="ApparatusConfig fields as a JSON object")
    source = fl.fleet_dir() / "source"
    parser.add_argument("--profile", default=None,
                        help=f"the profile whose knobs and rates are used (default: {source / 'profile.json'} if any)")
    parser.add_argument("--spec", default=None, help=f"the model's spec.json (default: {source / 'spec.json'} if any)")
    parser.add_argument("--out", default=None, help="result JSON (default $RECFORGE_HOME/bench/apparatus.json)")
    args = parser.parse_args(argv)

    def step() -> Any:
        cfg = config.config_from_dict(ApparatusConfig, json_object(args.config))
        profile = args.profile or ((source / "profile.json") if (source / "profile.json").is_file() else None)
        spec = args.spec or ((source / "spec.json") if (source / "spec.json").is_file() else None)
        print(f"calibrating the apparatus (profile {profile or 'none'}, spec {spec or 'example'})", file=sys.stderr,
              flush=True)
        doc = calibrate(cfg, profile_path=profile, spec=spec)
        out = Path(args.out) if args.out else config.recforge_home() / "bench" / "apparatus.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str))
        print(render(doc))
        return None

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
