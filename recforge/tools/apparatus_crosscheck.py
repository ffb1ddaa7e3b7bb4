"""Cross-check of the two load tools on one pinned Triton node: Triton's ``perf_analyzer`` (C++) and RecForge's load
generator (Python, ``recforge.inference.loadgen`` + ``TritonHttpTarget``) at the same fixed request size and the
same Poisson request rate, both from the apparatus CPU set, the node alone on its own (issue 12).

The node is one ``tritonserver`` (``recforge.inference.triton.TritonServer`` in a ``recforge.core.cpusets`` group)
serving the model with the serving config its profile generates, without its queue bound (a request rejected at once
measures neither tool); the two tools run one after the other (perf_analyzer
first: it needs its stable windows) against the node's own port. Reported per tool: achieved requests/s and the
client-side p50/p95/p99 in ms, and the load generator's over perf_analyzer's ratio of each::

    python -m recforge.tools.apparatus_crosscheck [--onnx M.onnx --spec spec.json [--profile P.json]]
                                                  [--config '{"rate": 200, "batch": 16}']

Without ``--onnx``, the fleet's source model (``$RECFORGE_HOME/fleet/source``, written by ``make fleet-up``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recforge.core import config
from recforge.core import cpusets as cs
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, typed_config
from recforge.core.errors import ConfigError
from recforge.core.ports import free_ports
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.inference.loadgen import QuerySizes, load_spec, run_open_loop
from recforge.inference.triton.perf_analyzer import PerfOptions, run_perf_analyzer
from recforge.serving import fleet as fl

MODEL = "crosscheck"


@typed_config
class CrosscheckConfig:
    """The common load point (``--config`` JSON)."""

    rate: Annotated[float, Field(gt=0, le=100_000)] = 100.0  # requests/s, Poisson, for both tools
    batch: Annotated[int, Field(ge=1, le=1024)] = 16  # rows per request
    threads: Annotated[int, Field(ge=1, le=256)] = 8  # perf_analyzer's --max-threads and the load generator's workers
    duration_s: Annotated[float, Field(ge=2, le=600)] = 15.0  # load generator run; perf_analyzer: 3+ windows of 5 s
    apparatus_cpus: str = ""  # "": the host's first CPU
    node_cpus: str = ""  # "": the next one
    node_quota_cores: Annotated[float, Field(gt=0, le=256)] | None = None
    # perf_analyzer's: 3 windows of average latency within this % of each other (10, its default, is rarely met on
    # a 2-core host with CPU steal)
    stability_percentage: Annotated[float, Field(gt=0, le=1000)] = 25.0
    seed: Annotated[int, Field(ge=0)] = 0


def ratios(loadgen: Mapping[str, float | None], perf: Mapping[str, float | None]) -> dict[str, float | None]:
    """The load generator's figure over perf_analyzer's, per figure both have (None where perf_analyzer's is 0)."""
    def usable(value: float | None) -> bool:
        return value is not None and not math.isnan(value)

    return {key: (round(loadgen[key] / perf[key], 3) if perf[key] else None)
            for key in loadgen if key in perf and usable(loadgen[key]) and usable(perf[key])}


def crosscheck(cfg: CrosscheckConfig, onnx_path: str | Path, spec_path: str | Path,
               profile_path: str | Path | None = None) -> dict[str, Any]:
    spec = load_spec(spec_path)
    plan = cs.plan_cpus(cs.host_cpus(), cs.CpuPlanConfig(nodes=1, balancer_cpus=0,
                                                         node_quota_cores=cfg.node_quota_cores))
    apparatus = (cs.CpuPlacement(cpus=cs.parse_cpu_list(cfg.apparatus_cpus)) if cfg.apparatus_cpus
                 else plan.placements[cs.APPARATUS])
    node = (cs.CpuPlacement(cpus=cs.parse_cpu_list(cfg.node_cpus), quota_cores=cfg.node_quota_cores)
            if cfg.node_cpus else plan.placements["node0"])
    if set(apparatus.cpus) & set(node.cpus):
        raise ConfigError("apparatus_cpus and node_cpus overlap: the tools would be measured with the node")
    serving = mr.serving_config_from_profile(profile_path) if profile_path else mr.ServingConfig()  # no queue bound
    if cfg.batch > serving.max_batch_size:
        raise ConfigError(f"batch {cfg.batch} exceeds the served max_batch_size {serving.max_batch_size}")
    tag = f"crosscheck-{os.getpid()}"
    groups = {"apparatus": cs.CpuGroup(f"{tag}-client", apparatus).create(),
              "node": cs.CpuGroup(f"{tag}-node", node)}
    affinity = os.sched_getaffinity(0)
    home_cgroups = (cs.process_placement(os.getpid()) or {}).get("cgroups") or {}
    with tempfile.TemporaryDirectory(prefix="recforge-crosscheck-") as folder:
        mr.write_model_repository(Path(folder) / "repo", model_name=MODEL, onnx_path=onnx_path, spec=spec,
                                  serving_config=serving)
        http, grpc, metrics = free_ports(3)
        server = tr.TritonServer(Path(folder) / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics,
                                 log_path=Path(folder) / "tritonserver.log", load_models=[MODEL],
                                 placement=groups["node"])
        try:
            with server:
                groups["apparatus"].add(os.getpid())  # perf_analyzer, our child, starts inside too
                perf = run_perf_analyzer(server.url, PerfOptions(
                    model=MODEL, request_rate=cfg.rate, batch_size=cfg.batch, max_threads=cfg.threads,
                    stability_percentage=cfg.stability_percentage, seed=cfg.seed), spec=spec).result
                target = tr.TritonHttpTarget(server.url, MODEL, spec, max_batch=cfg.batch, pool=cfg.threads)
                try:
                    run_open_loop(target, cfg.rate, duration_s=2.0, sizes=QuerySizes.fixed(cfg.batch),
                                  sub_batch=cfg.batch, workers=cfg.threads, seed=cfg.seed)  # warm-up
                    load = run_open_loop(target, cfg.rate, duration_s=cfg.duration_s, sizes=QuerySizes.fixed(cfg.batch),
                                         sub_batch=cfg.batch, workers=cfg.threads, seed=cfg.seed)
                finally:
                    target.close()
        finally:
            cs.restore_cgroups(os.getpid(), home_cgroups)  # back where this process was
            for group in groups.values():
                group.remove()
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, affinity)
    perf_figures = {"requests_per_s": (perf.throughput_infer_per_s or 0) / cfg.batch,
                    **{k: (perf.latency_us[k] / 1000 if k in perf.latency_us else None) for k in ("p50", "p95", "p99")}}
    load_figures = {"requests_per_s": load.achieved_qps, "p50": load.p50_ms, "p95": load.p95_ms, "p99": load.p99_ms}
    return {"config": asdict(cfg), "model": str(onnx_path), "max_batch_size": serving.max_batch_size,
            "placement": {side: g.to_state() for side, g in groups.items()},
            "perf_analyzer": {**perf_figures, "ok": perf.ok, "errors": list(perf.errors)},
            "loadgen": {**load_figures, "errors": load.errors},
            "loadgen_over_perf_analyzer": ratios(load_figures, perf_figures)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.apparatus_crosscheck",
                                     description=__doc__.split("\n")[0])
    source = fl.fleet_dir() / "source"
    parser.add_argument("--config", default="{}", help="CrosscheckConfig fields as a JSON object")
    parser.add_argument("--onnx", default=str(source / "onnx" / "model.onnx"))
    parser.add_argument("--spec", default=str(source / "spec.json"))
    parser.add_argument("--profile", default=None, help=f"serving config from it (default {source / 'profile.json'})")
    parser.add_argument("--out", default=None, help="JSON (default $RECFORGE_HOME/bench/apparatus_crosscheck.json)")
    args = parser.parse_args(argv)

    def step() -> Any:
        cfg = config.config_from_dict(CrosscheckConfig, json_object(args.config))
        if not Path(args.onnx).is_file():
            raise ConfigError(f"{args.onnx} is not a file: give --onnx and --spec, or run `make fleet-up` once")
        profile = args.profile or ((source / "profile.json") if (source / "profile.json").is_file() else None)
        print(f"cross-check on {args.onnx}: {cfg.rate:g} requests/s of {cfg.batch} rows", file=sys.stderr,
              flush=True)
        doc = crosscheck(cfg, args.onnx, args.spec, profile)
        out = Path(args.out) if args.out else config.recforge_home() / "bench" / "apparatus_crosscheck.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str))
        return doc

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
