"""``python -m recforge.inference.loadgen``: one open-loop run of an ONNX model, printed as JSON.

::

    python -m recforge.inference.loadgen --onnx MODEL.onnx --spec SPEC.json --rate 200 --duration 10 \\
        [--sizes lognormal|normal|FILE] [--sub-batch 64] [--workers 2] [--threads 1] [--seed 0]

prints the :class:`~recforge.inference.loadgen.results.LoadResult` as JSON; a bad setting prints one
``error: ...`` line (exit 1).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.inference.loadgen.engine import run_open_loop
from recforge.inference.loadgen.queries import QuerySizes
from recforge.inference.loadgen.settings import DEFAULT_DRAIN_TIMEOUT_S, check_run_settings
from recforge.inference.loadgen.targets import OnnxTarget

_CLI_NAMES = {"rate_qps": "--rate", "duration_s": "--duration", "n_queries": "--queries", "sub_batch": "--sub-batch",
              "workers": "--workers", "threads": "--threads", "seed": "--seed", "max_queue": "--max-queue",
              "drain_timeout_s": "--drain-timeout", "onnx_path": "--onnx"}


def _cli_error(err: ConfigError) -> ConfigError:
    """The same error, naming the CLI flag instead of the Python parameter it starts with."""
    text = str(err)
    for name, flag in _CLI_NAMES.items():
        if text.startswith(name + " "):
            return ConfigError(flag + text[len(name):])
    return err


def add_query_arguments(parser: argparse.ArgumentParser, *, sub_batch: int, workers: int) -> None:
    """``--sizes``, ``--sub-batch``, ``--workers`` and ``--seed``: the query mix and the client of a load run, for
    every command that runs the load generator (this one, ``recforge.tools.fleet_load``)."""
    parser.add_argument("--sizes", default="lognormal",
                        help="items per query: lognormal[:MU,SIGMA] (default 5.1,0.2), normal[:MEAN,STD], "
                             "fixed:N, or a file of one integer per line")
    parser.add_argument("--sub-batch", type=int, default=sub_batch, help="max items per sub-batch, one request or "
                        f"run each (1..1024, default {sub_batch})")
    parser.add_argument("--workers", type=int, default=workers, help=f"client threads running sub-batches "
                        f"(default {workers})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals, sizes and inputs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.inference.loadgen",
                                     description="Open-loop DeepRecSys load generator: Poisson queries of many "
                                                 "items each on an ONNX model.")
    parser.add_argument("--onnx", required=True, help="ONNX model of the named-tensor contract")
    parser.add_argument("--spec", required=True, help="the model's spec.json (shapes and vocabularies)")
    parser.add_argument("--rate", type=float, required=True, help="offered load, queries/s (Poisson)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, help="seconds of arrivals (default 10)")
    length.add_argument("--queries", type=int, help="number of queries instead of a duration")
    add_query_arguments(parser, sub_batch=64, workers=2)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per run")
    parser.add_argument("--max-queue", type=int, help="drop queries arriving while this many wait (default: none)")
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S,
                        help="seconds in-flight work may take after the last arrival")
    args = parser.parse_args(argv)

    def step() -> dict[str, Any]:
        duration = args.duration if args.duration is not None or args.queries is not None else 10.0
        try:
            check_run_settings(args.rate, duration, args.queries, args.sub_batch, args.workers, args.seed,
                               args.max_queue, args.drain_timeout)
            sizes = QuerySizes.parse(args.sizes)
            target = OnnxTarget(args.onnx, args.spec, threads=args.threads, max_batch=args.sub_batch, seed=args.seed)
            result = run_open_loop(target, args.rate, duration_s=duration, n_queries=args.queries, sizes=sizes,
                                   sub_batch=args.sub_batch, workers=args.workers, seed=args.seed,
                                   max_queue=args.max_queue, drain_timeout_s=args.drain_timeout)
        except ConfigError as err:
            raise _cli_error(err) from None
        return result.to_dict()

    return run_step(step)

