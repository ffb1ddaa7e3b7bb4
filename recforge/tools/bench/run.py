"""The whole benchmark: every configured family, then the synthetic models; written, and logged to MLflow."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recforge.core import config
from recforge.tools.bench.champions import registry_champions
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.family import bench_family
from recforge.tools.bench.mlflow_log import log_to_mlflow
from recforge.tools.bench.nightly import find_family_runs
from recforge.tools.bench.report import format_markdown, write_outputs
from recforge.tools.bench.synthetic import bench_synthetic
from recforge.tools.hw_limits import measure

log = logging.getLogger(__name__)


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
    doc["champions"] = registry_champions([f["family"] for f in families]) if cfg.mlflow else {}
    doc["wall_s"] = time.perf_counter() - started
    doc["bench_lines"] = [f["bench_line"] for f in families if f.get("bench_line")]
    doc["markdown"] = format_markdown(doc)
    out_dir = Path(out_dir or config.recforge_home() / "bench")
    doc["written"] = write_outputs(doc, out_dir)
    doc["mlflow"] = log_to_mlflow(doc) if cfg.mlflow else "disabled (config mlflow=false)"
    return doc

