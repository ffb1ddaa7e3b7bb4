"""Triton's ``perf_analyzer`` pointed at the running fleet's balancer: one load point (a Poisson request rate by
default, or a concurrency), perf_analyzer's own output, then a parsed summary with how many requests each node
served (HAProxy's per-node counters before and after the run).

The fleet is the one ``make fleet-up`` started (``recforge.serving.fleet.Fleet``: its balancer URL, the model its
nodes serve, and the feature spec of what it serves, so the input rows hold ids below each embedding table's
cardinality; without the spec every input is zeros, which the summary says). The run itself is
:func:`recforge.inference.triton.perf_analyzer.run_perf_analyzer`.

CLI::

    python -m recforge.tools.perf_fleet [--rate 20 | --concurrency 4] [--batch 8] [--duration 15]
                                        [--distribution poisson|constant] [--percentile 95] [--model NAME]
                                        [--stability 25] [--max-trials 10] [--repeats 1] [--out DIR]

When the fleet was started with CPU placement (``FleetConfig.node_cpus``), perf_analyzer runs on the plan's
apparatus CPUs, off the balancer's and the nodes' (the summary's ``apparatus_cpus``). ``--repeats N`` runs the load
point N times and adds the median and min-max of throughput and p95 over the runs (``repeats``).

``--duration`` is the length of the three measurement windows perf_analyzer needs at least (each window is a third
of it); it measures more windows (up to ``--max-trials``) until three in a row agree within ``--stability`` percent.
Exit status 1 when perf_analyzer failed, printed an error or completed no request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from recforge.core import cpusets as cs
from recforge.core.cli import run_step
from recforge.core.errors import ConfigError, RecForgeError
from recforge.inference.loadgen import load_spec
from recforge.inference.triton.perf_analyzer import PerfOptions, PerfRun, run_perf_analyzer
from recforge.serving.fleet import Fleet

WINDOWS = 3  # perf_analyzer needs at least three windows for a stable measurement


def served_model(fleet: Fleet, model: str | None) -> str:
    """``model`` if some node serves it, else the one model the fleet's nodes serve."""
    served = sorted({name for node in fleet.state["nodes"].values() for name in node.get("models", {})})
    if model is not None:
        if model not in served:
            raise ConfigError(f"--model {model!r} is not served by the fleet; it serves {served}")
        return model
    if len(served) != 1:
        raise ConfigError(f"the fleet serves {served or 'no model'}; name one with --model")
    return served[0]


def fleet_spec(fleet: Fleet, model: str) -> tuple[Any, str]:
    """(the feature spec of what the fleet serves, where it came from), or (None, why not) when unknown."""
    source = fleet.state.get("source") or {}
    path = source.get("spec_path")
    if source.get("model") != model or not path:
        return None, f"no feature spec for {model} in the fleet's state: every input is zeros"
    if not Path(path).is_file():
        return None, f"the fleet's feature spec {path} is gone: every input is zeros"
    return load_spec(path), path


def node_requests(fleet: Fleet) -> dict[str, int]:
    """HAProxy's cumulative request count per node."""
    return {name: int(view.get("total_sessions") or 0) for name, view in fleet.balancer.servers().items()}


def apparatus_group(fleet: Fleet) -> cs.CpuGroup | None:
    """The CPU group perf_analyzer runs in: the fleet plan's apparatus CPUs (None: the fleet has no placement)."""
    cpus = (fleet.state.get("placement") or {}).get("apparatus_cpus")
    if not cpus:
        return None
    return cs.CpuGroup(f"perf-fleet-{os.getpid()}", cs.CpuPlacement(cpus=cs.parse_cpu_list(cpus)))


@contextlib.contextmanager
def on_the_apparatus(fleet: Fleet) -> Iterator[dict[str, Any]]:
    """Run the block on the fleet plan's apparatus CPUs (where it is without a plan). The dict it yields gets
    ``apparatus_cpus`` at once and, when the block ends without an error, ``requests_per_node``: each node's
    requests across the block (HAProxy's counters before and after)."""
    group = apparatus_group(fleet)
    figures: dict[str, Any] = {"apparatus_cpus": group.placement.cpu_list if group else None}
    before = node_requests(fleet)
    try:
        with cs.this_process_in(group) if group else contextlib.nullcontext():
            yield figures
    finally:
        if group is not None:
            group.remove()
    after = node_requests(fleet)
    figures["requests_per_node"] = {name: after.get(name, 0) - before.get(name, 0) for name in sorted(after)}


def perf_fleet(options: PerfOptions, *, home: str | Path | None = None, out: str | Path | None = None,
               echo: bool = True) -> tuple[PerfRun, dict[str, Any]]:
    """Run perf_analyzer through the fleet's balancer, on the fleet's apparatus CPUs when it has a CPU plan; (the
    run, its summary). With ``echo``, perf_analyzer's own output is printed to stderr as soon as it finishes."""
    fleet = Fleet(home)
    spec, spec_origin = fleet_spec(fleet, options.model)
    with on_the_apparatus(fleet) as figures:
        run = run_perf_analyzer(fleet.url, options, spec=spec, workdir=out)
    if echo:
        print("$ " + " ".join(run.command), file=sys.stderr)
        print(run.stdout.rstrip(), file=sys.stderr, flush=True)
    summary = {
        "url": fleet.url, "model": options.model, **run.result.to_dict(),
        "requests_per_node": figures["requests_per_node"],
        "input_data": {"spec": spec_origin, "inputs": run.input_sources},
        "apparatus_cpus": figures["apparatus_cpus"],
    }
    return run, summary


def repeat_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median and min-max of throughput and p95 latency over repeated runs of one load point."""
    out: dict[str, Any] = {"runs": len(summaries)}
    figures = {"throughput_infer_per_s": [s.get("throughput_infer_per_s") for s in summaries],
               "p95_us": [(s.get("latency_us") or {}).get("p95") for s in summaries]}
    for name, values in figures.items():
        known = [v for v in values if v is not None]
        out[name] = ({"median": statistics.median(known), "min": min(known), "max": max(known), "each": values}
                     if known else None)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.perf_fleet", description=__doc__.split("\n")[0])
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="requests per second (open loop; default 20)")
    load.add_argument("--concurrency", type=int, help="requests in flight (closed loop) instead of --rate")
    parser.add_argument("--batch", type=int, default=8, help="rows per request (perf_analyzer -b)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of the 3 measurement windows")
    parser.add_argument("--distribution", choices=("poisson", "constant"), default="poisson")
    parser.add_argument("--percentile", type=int, help="stabilise on this latency percentile (else the average)")
    parser.add_argument("--stability", type=float, default=25.0,
                        help="percent within which 3 windows must agree (perf_analyzer's default, 10, rarely holds "
                        "for Poisson arrivals at a few dozen requests per window on a shared machine)")
    parser.add_argument("--max-trials", type=int, default=10, help="windows before giving up on stability")
    parser.add_argument("--model", help="the served model (default: the one the fleet serves)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the load point (median and min-max)")
    parser.add_argument("--out", help="keep perf_analyzer's input data and CSV in this folder")
    args = parser.parse_args(argv)

    def step() -> Any:
        if args.duration <= 0:
            raise ConfigError(f"--duration must be > 0 seconds, got {args.duration:g}")
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        rate = args.rate if args.rate is not None or args.concurrency is not None else 20.0
        model = served_model(Fleet(), args.model)
        options = PerfOptions(model=model, request_rate=rate, concurrency=args.concurrency,
                              distribution=args.distribution, batch_size=args.batch,
                              measurement_interval_ms=max(100, round(args.duration * 1000 / WINDOWS)),
                              stability_percentage=args.stability, max_trials=args.max_trials,
                              percentile=args.percentile)
        summaries = []
        for _ in range(args.repeats):
            run, summary = perf_fleet(options, out=args.out)
            if not run.result.ok:
                print(json.dumps(summary, indent=2))
                raise RecForgeError(f"perf_analyzer through {summary['url']} failed (exit {run.result.returncode}): "
                                    f"{'; '.join(run.result.errors) or 'no request completed'}")
            summaries.append(summary)
        if args.repeats == 1:
            return summaries[0]
        return {**summaries[-1], "repeats": repeat_summary(summaries)}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
