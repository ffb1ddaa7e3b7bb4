"""The nightly run a benchmark measures: the latest day with trained models (``recforge.contracts.layout.Catalog``),
each family's compress summary and its built variants, and the short list of variants worth profiling."""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from recforge.contracts.layout import Catalog
from recforge.core import config
from recforge.core.errors import DataError
from recforge.models.families import FAMILY_NAMES
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.mlflow_log import tracking_server_reachable

log = logging.getLogger(__name__)

NO_NIGHTLY = "no nightly run with compression results yet: run `make run && make compress` first"


@dataclass
class FamilyRun:
    """One family's trained model of the nightly run, its compress summary and its variants' files."""

    family: str
    model_dir: Path
    features_dir: Path
    run_id: str
    summary: dict
    variants: dict[str, dict]  # variant name -> its variants.json entry (onnx_path, precision, base, macs, ...)



def latest_nightly_day(catalog: Catalog, day: str = "") -> str:
    """Nightly ``day`` (default: the latest day that has a trained model of any family) under ``catalog``."""
    root = catalog.root
    days = sorted(p.name for p in root.glob("????-??-??")
                  if any((catalog.model_dir(p.name, family) / "model.json").is_file() for family in FAMILY_NAMES)) \
        if root.exists() else []
    if day:
        days = [d for d in days if d == day]
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


def find_family_runs(cfg: BenchConfig, catalog: Catalog | None = None) -> tuple[str, list[FamilyRun]]:
    """(logical date, one FamilyRun per configured family). DataError with a one-line fix when any is missing."""
    catalog = catalog or Catalog.default()
    day = latest_nightly_day(catalog, cfg.date)
    runs = []
    for family in cfg.families:
        model_dir = catalog.model_dir(day, family)
        card_path = model_dir / "model.json"
        if not card_path.is_file():
            raise DataError(f"{family}: no trained model in {model_dir}; {NO_NIGHTLY}")
        card = json.loads(card_path.read_text())
        summary = compress_summary(card["run_id"], family)
        variants_dir = catalog.variants_dir(day, family)
        variants = variant_catalog(variants_dir)
        if not variants:
            raise DataError(f"{family}: no variant files under {variants_dir}; {NO_NIGHTLY}")
        runs.append(FamilyRun(family, model_dir, catalog.features_dir(day), card["run_id"], summary, variants))
    return day, runs


def shortlist(run: FamilyRun, k: int) -> list[dict]:
    """The ``k`` fastest parity-passing variants of the summary (ORT latency at batch 256) with files here."""
    rows = [v for v in run.summary.get("variants", [])
            if v.get("passed") and v["variant"] in run.variants and v.get("variant_run_id")]
    rows.sort(key=lambda v: (v.get("latency_ms_b256") is None, v.get("latency_ms_b256") or 0.0))
    if not rows:
        raise DataError(f"{run.family}: no parity-passing variant with its ONNX file on this machine; "
                        "run `make compress` first")
    return rows[:k]

