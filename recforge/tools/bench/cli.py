"""``python -m recforge.tools.bench`` (``make bench``): run the benchmark and print its table.

::

    python -m recforge.tools.bench [--config '{"point_duration_s": 0.5, "synthetic": []}']   # BENCH_CONF in make bench
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from recforge.core.cli import json_object, run_step
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.run import run_bench


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.bench",
                                     description="RecForge's served variants against a plain PyTorch baseline, "
                                                 "side by side on this machine.")
    parser.add_argument("--config", default="{}", help="BenchConfig overrides as a JSON object (BENCH_CONF)")
    parser.add_argument("--out", default=None, help="output folder (default $RECFORGE_HOME/bench)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnxruntime", "mlflow", "urllib3", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def step() -> str:
        cfg = BenchConfig.from_dict(json_object(args.config, "BENCH_CONF"))
        doc = run_bench(cfg, Path(args.out) if args.out else None)
        # the machine-readable lines last, one per family and path (recforge.tools.bench.bench_line)
        return "\n".join([doc["markdown"], f"written: {', '.join(doc['written'][2:])}", f"MLflow: {doc['mlflow']}",
                          *doc.get("bench_lines", [])])

    return run_step(step)

