"""The DeepRecSys load generator pointed at the running fleet's balancer (``make fleet-load``): Poisson queries of a
chosen size mix for a while, then a summary with how many requests each node served.

Where ``make fleet-perf`` (Triton's ``perf_analyzer``) sends fixed-size requests, this sends what a recommendation
front end sends: queries of many items, their sizes drawn from ``--sizes`` (the load generator's syntax: DeepRecSys'
``lognormal`` by default, ``lognormal:MU,SIGMA``, ``normal:MEAN,STD``, ``fixed:N`` or a file of sizes), each split into
sub-batches of at most ``--sub-batch`` items (one HTTP request each). It is how a traffic mix is put through the fleet
by hand, e.g. to record it with ``make fleet-traffic`` for the next night's profiling (docs/profiling.md, "Feedback").

The fleet is the one ``make fleet-up`` started (``recforge.serving.fleet.Fleet``): its balancer URL, the model its
nodes serve and that model's feature spec (needed: the inputs must hold ids below each table's cardinality). With a
CPU plan the load runs on the plan's apparatus CPUs, off the nodes'.

CLI::

    python -m recforge.tools.fleet_load --rate 40 --duration 60 [--sizes lognormal:4.2,0.4] [--sub-batch 256]
                                        [--workers 8] [--seed 0] [--model NAME]

prints the load generator's summary (recforge.inference.loadgen.results.LoadResult) with ``requests_per_node``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.inference.loadgen import QuerySizes, run_open_loop
from recforge.inference.loadgen.cli import add_query_arguments
from recforge.inference.loadgen.settings import check_run_settings
from recforge.inference.triton import TritonHttpTarget
from recforge.serving.fleet import Fleet
from recforge.tools.perf_fleet import fleet_spec, on_the_apparatus, served_model


def fleet_load(rate_qps: float, duration_s: float, *, sizes: str = "lognormal", sub_batch: int = 256,
               workers: int = 8, seed: int = 0, model: str | None = None,
               home: str | Path | None = None) -> dict[str, Any]:
    """One open-loop run of Poisson queries through the fleet's balancer; the load summary and the requests each
    node answered (HAProxy's counters before and after)."""
    check_run_settings(rate_qps, duration_s, sub_batch=sub_batch, workers=workers, seed=seed)
    query_sizes = QuerySizes.parse(sizes)
    fleet = Fleet(home)
    model = served_model(fleet, model)
    spec, origin = fleet_spec(fleet, model)
    if spec is None:
        raise ConfigError(f"{origin}; the load generator needs the served model's feature spec")
    with on_the_apparatus(fleet) as figures:
        target = TritonHttpTarget(fleet.url, model, spec, max_batch=sub_batch, seed=seed, pool=workers)
        try:
            result = run_open_loop(target, rate_qps, duration_s=duration_s, sizes=query_sizes, sub_batch=sub_batch,
                                   workers=workers, seed=seed)
        finally:
            target.close()
    return {"url": fleet.url, "model": model, "sizes": sizes, **result.to_dict(), **figures}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.fleet_load", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="queries per second (Poisson, open loop)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals")
    add_query_arguments(parser, sub_batch=256, workers=8)
    parser.add_argument("--model", help="the served model (default: the one the fleet serves)")
    args = parser.parse_args(argv)
    return run_step(lambda: fleet_load(args.rate, args.duration, sizes=args.sizes, sub_batch=args.sub_batch,
                                       workers=args.workers, seed=args.seed, model=args.model))


if __name__ == "__main__":
    raise SystemExit(main())
