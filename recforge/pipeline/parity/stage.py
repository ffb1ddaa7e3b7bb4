"""The compress_and_validate stage: compressed variants of each trained candidate, gated on accuracy parity.

For one candidate (a model family trained by ``nightly_retrain``) and one *base* (fp32, prunedNN, student):
build the base and its precisions (``recforge.pipeline.compression``), score every variant on the test split,
gate it against the fp32 model (``recforge.pipeline.parity.gate``), and record it as an MLflow child run of the
candidate's training run: params (technique, ratio, bits), metrics (AUC, ΔAUC, logloss, size, parameters, MACs per
item), the ONNX artifact and the verdict. A rejected variant keeps its reasons (tag ``recforge.rejected_because``,
one line each, and ``verdict.json``) and goes no further. ``summarize_family`` then measures every variant's
latency side by side with the fp32 PyTorch eager model, writes that one measurement to each variant run
(``latency_ms_b256``), and logs the comparison table and an AUC-vs-size plot on the candidate's run: the run
metric, the table and the plots show the same number.

CLI::

    python -m recforge.pipeline.parity.stage --candidate-run RUN_ID [--base fp32] [--config JSON]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts import tags
from recforge.contracts.layout import Catalog
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError, DataError
from recforge.inference.onnx import onnx_latency_ms, onnx_predict
from recforge.models.families import BASELINE_FAMILY
from recforge.models.formats import ONNX, format_of_file_name
from recforge.pipeline.compression.config import FP32, PRECISION_TABLE, CompressConfig
from recforge.pipeline.compression.measure import latency_inputs, torch_latency_ms
from recforge.pipeline.compression.model_folder import MODEL_FILES, load_trained
from recforge.pipeline.compression.variants import build_base_variants, plan_bases
from recforge.pipeline.data.features import ensure_features, load_split
from recforge.pipeline.parity.gate import ParityConfig, validate_variant
from recforge.pipeline.parity.plot import plot_auc_vs_size, pyplot
from recforge.pipeline.training.tracking import LATENCY_B256, TEST_AUC, TEST_LOGLOSS, one_line
from recforge.pipeline.training.train import evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A trained model handed over by nightly_retrain (its asset event's extra)."""

    family: str
    run_id: str
    model_dir: str
    features_dir: str
    data_day: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def find_candidates(extras: list[dict], parent_run_id: str = "", families: list[str] | None = None
                    ) -> list[Candidate]:
    """The candidates to compress: from asset-event extras (newest per family), else from the nightly parent
    run ``parent_run_id``, else from the latest finished nightly run. Raises DataError when there is none."""
    by_family: dict[str, dict] = {}
    for extra in extras:
        if extra and extra.get("family"):
            by_family[extra["family"]] = extra  # events come oldest first: the newest wins
    if not by_family:
        by_family = {e["family"]: e for e in _candidates_of_nightly_run(parent_run_id)}
    chosen = [e for f, e in sorted(by_family.items()) if not families or f in families]
    if not chosen:
        raise DataError(f"no candidates to compress (families {families or 'all'}); run nightly_retrain first")
    return [resolve_candidate(e) for e in chosen]


def _candidates_of_nightly_run(parent_run_id: str) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    experiment = client.get_experiment_by_name(config.experiment_name())
    if experiment is None:
        raise DataError(f"MLflow experiment {config.experiment_name()!r} not found; run nightly_retrain first")
    if not parent_run_id:
        latest = client.search_runs([experiment.experiment_id], f"tags.`{tags.KIND}` = 'nightly' and "
                                    "attributes.status = 'FINISHED'", order_by=["start_time DESC"], max_results=1)
        if not latest:
            raise DataError("no finished nightly_retrain run in MLflow; run nightly_retrain first")
        parent_run_id = latest[0].info.run_id
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{tags.STAGE}` = 'train'")
    return [candidate_of_run(r) for r in children if r.data.tags.get(tags.FAMILY) != BASELINE_FAMILY]


def candidate_of_run(run) -> dict:
    """The asset-event extra of a training run: where its model folder is on this machine."""
    family, day = run.data.tags[tags.FAMILY], run.data.params["data_day"]
    return {"family": family, "run_id": run.info.run_id, "data_day": day,
            "model_dir": str(Catalog.default().model_dir(day, family))}


def resolve_candidate(extra: dict[str, Any]) -> Candidate:
    """Check a candidate's files (fetching them from its MLflow run when they are not on this machine).

    Raises DataError naming what is missing or corrupt: the DAG run stops with it.
    """
    family, run_id = extra.get("family"), extra.get("run_id")
    if not family or not run_id:
        raise DataError(f"candidate event without family/run_id: {extra!r}; re-run nightly_retrain")
    catalog = Catalog.default()
    model_dir = Path(extra.get("model_dir") or catalog.candidate_dir(run_id) / family)
    if not _is_model_of(model_dir, run_id):  # not on this machine, or overwritten by a later run
        model_dir = _download_candidate(catalog, run_id, family)
    features_dir = Catalog.features_of(model_dir)
    if not features_dir.exists() and extra.get("data_day"):  # a downloaded model: this worker's features of the day,
        features_dir = catalog.features_dir(extra["data_day"])  # built from the data root when it has none
        with contextlib.suppress(DataError):  # no such partition: the missing features are reported below
            ensure_features(config.data_root(), dt.date.fromisoformat(extra["data_day"]), features_dir)
    missing = [n for n in MODEL_FILES if not (model_dir / n).exists()]
    if missing or not (features_dir / "test.parquet").exists():
        raise DataError(
            f"candidate {family} (MLflow run {run_id}): {', '.join(missing) or 'features'} missing under "
            f"{model_dir.parent.parent}; re-run nightly_retrain for {extra.get('data_day', 'its date')}")
    card = json.loads((model_dir / "model.json").read_text())
    if card.get("family") != family or card.get("run_id") != run_id:
        raise DataError(f"candidate {family}: {model_dir}/model.json belongs to {card.get('family')} run "
                        f"{card.get('run_id')}, not to run {run_id}")
    try:
        import onnx

        onnx.checker.check_model(str(model_dir / "model.onnx"))
    except Exception as err:  # noqa: BLE001 - any unreadable model is the same error for a person
        raise DataError(f"candidate {family} (MLflow run {run_id}): model.onnx is corrupt: {err}") from None
    return Candidate(family, run_id, str(model_dir), str(features_dir), card.get("data_day", ""))


def _is_model_of(model_dir: Path, run_id: str) -> bool:
    try:
        return json.loads((model_dir / "model.json").read_text()).get("run_id") == run_id and all(
            (model_dir / name).exists() for name in MODEL_FILES)
    except (OSError, ValueError):
        return False


def _download_candidate(catalog: Catalog, run_id: str, family: str) -> Path:
    """Fetch a candidate's model folder and features from MLflow (a worker without the training's disk)."""
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri())
    root = catalog.candidate_dir(run_id)
    try:
        client.download_artifacts(run_id, "model_files", str(root))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"candidate {family}: cannot fetch model files of MLflow run {run_id}: {err}") from None
    target = root / family
    (root / "model_files").rename(target)
    return target


def reference_predictions(candidate: Candidate):
    """The fp32 model's test-split probabilities: the reference every variant is gated against."""
    return onnx_predict(Path(candidate.model_dir) / "model.onnx", load_split(Path(candidate.features_dir), "test"))


def compress_and_validate(candidate: Candidate, base: str, compress_config: dict | None = None,
                          parity_config: dict | None = None, out_dir: Path | None = None) -> list[dict]:
    """Build ``base``'s variants of ``candidate``, gate and track each. Returns one summary row per variant."""
    import mlflow

    ccfg = CompressConfig.from_dict(compress_config)
    pcfg = ParityConfig.from_dict(parity_config)
    out_dir = Path(out_dir or Catalog.variants_of(candidate.model_dir, candidate.family))
    variants = build_base_variants(base, Path(candidate.model_dir), Path(candidate.features_dir), out_dir, ccfg)
    test = load_split(Path(candidate.features_dir), "test")
    reference = reference_predictions(candidate)
    reference_auc = evaluate(test.label, reference)["auc"]
    gx_root = config.gx_root()
    mlflow.set_tracking_uri(config.tracking_uri())
    experiment_id = mlflow.MlflowClient().get_run(candidate.run_id).info.experiment_id
    rows = []
    for variant in variants:
        metrics: dict[str, float] = {}
        if variant.error:
            passed, reasons = False, [f"build failed: {variant.error}"]
        else:
            verdict = validate_variant(variant.name, onnx_predict(variant.onnx_path, test), reference, test,
                                       gx_root=gx_root, config=pcfg, tables=variant.params.get("tables", ()))
            passed, reasons, metrics = verdict.passed, verdict.reasons, verdict.metrics
        row = {**variant.to_dict(), "passed": passed, "reasons": reasons, "reference_auc": reference_auc,
               "auc": metrics.get("auc"), "delta_auc": metrics.get("delta_auc"),
               "logloss": metrics.get("logloss"), "candidate_run_id": candidate.run_id}
        row["variant_run_id"] = _log_variant(experiment_id, candidate, row, metrics, pcfg)
        log.info("%s/%s: %s%s", candidate.family, variant.name, "PASS" if passed else "REJECT",
                 "" if passed else f" ({'; '.join(reasons)})")
        rows.append(row)
    return rows


def _log_variant(experiment_id: str, candidate: Candidate, row: dict, metrics: dict, pcfg: ParityConfig) -> str:
    """One MLflow child run of the candidate's run per variant; idempotent per (candidate, variant)."""
    import mlflow

    client = mlflow.MlflowClient()
    existing = client.search_runs(
        [experiment_id], filter_string=(f"tags.`mlflow.parentRunId` = '{candidate.run_id}' and "
                                        f"tags.`{tags.VARIANT}` = '{row['name']}'"), max_results=1)
    run_id = existing[0].info.run_id if existing else None
    run_tags = {tags.STAGE: "compress", tags.FAMILY: candidate.family, tags.VARIANT: row["name"],
                tags.PARITY: "passed" if row["passed"] else "rejected", tags.RUN_NOTE: variant_note(candidate, row),
                tags.MODEL_FORMAT: format_of_file_name(row["onnx_path"]) if row.get("onnx_path") else ONNX}
    if not row["passed"]:
        run_tags[tags.REJECTED_BECAUSE] = rejection_tag(row["reasons"])
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=f"{candidate.family}/{row['name']}",
                          parent_run_id=None if run_id else candidate.run_id, tags=run_tags):
        if not run_id:
            params = {"technique": row["technique"], "base": row["base"], "precision": row["precision"],
                      "bits": PRECISION_TABLE[row["precision"]].bits}
            params |= {f"p.{k}": v for k, v in (row.get("params") or {}).items()
                       if isinstance(v, int | float | str | bool) and k != "history"}
            mlflow.log_params(params)
        # latency_ms_b256 is written by summarize_family: the side-by-side timing its table and plots show
        numbers = {"size_bytes": row.get("size_bytes"), "file_bytes": row.get("file_bytes"),
                   "parameters": row.get("parameters"), "macs_per_item": row.get("macs_per_item"),
                   "onnx_max_abs_diff": row.get("onnx_max_abs_diff"), "passed": float(row["passed"])}
        # test_auc/test_logloss: the keys of the family runs; "auc" kept (tests/e2e and older readers use it)
        renamed = {TEST_AUC: metrics.get("auc"), TEST_LOGLOSS: metrics.get("logloss")}
        mlflow.log_metrics({k: float(v) for k, v in (numbers | metrics | renamed).items()
                            if k != "logloss" and v is not None and v == v})  # v == v drops NaN
        mlflow.log_dict({"passed": row["passed"], "reasons": row["reasons"], "variant": row,
                         "thresholds": dataclasses.asdict(pcfg)}, "verdict.json")
        if row.get("onnx_path"):
            mlflow.log_artifact(row["onnx_path"], "onnx")
        return mlflow.active_run().info.run_id


def rejection_tag(reasons: list[str]) -> str:
    """The ``recforge.rejected_because`` tag: one line per reason, each shortened at a word boundary."""
    return "\n".join(one_line(r, 240) for r in reasons) or "rejected"


def variant_note(candidate: Candidate, row: dict) -> str:
    """The description of a variant run (markdown)."""
    verdict = ("passes accuracy parity with fp32: it goes on to profiling" if row["passed"] else
               "**rejected**: " + "; ".join(one_line(r, 240) for r in row["reasons"]))
    auc = f"test AUC {row['auc']:.4f} (fp32 {row['reference_auc']:.4f}); " if row.get("auc") is not None else ""
    return (f"Variant **{row['name']}** of {candidate.family} ({row['technique']}, {row['precision']}): {auc}"
            f"{verdict}. `{LATENCY_B256}` is the side-by-side timing of `compression/summary.md` on the parent run.")


def variant_file(candidate: Candidate, row: dict) -> str:
    """A built variant's model file: where its task wrote it, else the copy logged on its MLflow run (the task ran
    on another worker)."""
    if Path(row["onnx_path"]).is_file() or not row.get("variant_run_id"):
        return row["onnx_path"]
    import mlflow

    dest = Catalog.default().candidate_dir(candidate.run_id) / "variants" / row["name"]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return mlflow.MlflowClient(config.tracking_uri()).download_artifacts(
            row["variant_run_id"], f"onnx/{Path(row['onnx_path']).name}", str(dest))
    except Exception as err:  # noqa: BLE001 - any failed fetch is the same error for a person
        raise DataError(f"variant {candidate.family}/{row['name']}: {row['onnx_path']} is not on this worker and "
                        f"cannot be fetched from MLflow run {row['variant_run_id']}: {err}") from None


def summarize_family(candidate: Candidate, rows: list[dict], compress_config: dict | None = None) -> dict:
    """Latency of every built variant side by side with fp32 PyTorch eager; table + plot on the candidate run."""
    import mlflow

    ccfg = CompressConfig.from_dict(compress_config)
    model, _, _ = load_trained(Path(candidate.model_dir))
    batch = latency_inputs(load_split(Path(candidate.features_dir), "test"), ccfg.latency_batch)
    eager_ms = torch_latency_ms(model, batch, ccfg.threads, ccfg.latency_repeats)
    fp32 = next((r for r in rows if r["name"] == FP32 and not r.get("error")), None)
    table = []
    for row in sorted(rows, key=lambda r: (r["base"] != FP32, r["base"], r["precision"] != FP32, r["precision"])):
        ms = (onnx_latency_ms(variant_file(candidate, row), batch, ccfg.threads, ccfg.latency_repeats)
              if row.get("onnx_path") else None)
        table.append({
            "variant": row["name"], "technique": row["technique"], "passed": row["passed"],
            "size_bytes": row.get("size_bytes"),
            "size_reduction": (fp32["size_bytes"] / row["size_bytes"]) if fp32 and row.get("size_bytes") else None,
            "auc": row.get("auc"), "delta_auc": row.get("delta_auc"), "latency_ms_b256": ms,
            "latency_vs_eager": (ms / eager_ms) if ms else None, "reasons": row["reasons"],
            "variant_run_id": row.get("variant_run_id"),
        })
    summary = {"family": candidate.family, "candidate_run_id": candidate.run_id,
               "eager_fp32_latency_ms_b256": eager_ms, "batch": ccfg.latency_batch, "threads": ccfg.threads,
               "variants": table, "passed": [t["variant"] for t in table if t["passed"]]}
    client = mlflow.MlflowClient(config.tracking_uri())
    for t in table:  # the one latency measurement: on each variant run, in the table and in the plots
        if t["variant_run_id"] and t["latency_ms_b256"] is not None:
            client.log_metric(t["variant_run_id"], LATENCY_B256, t["latency_ms_b256"])
    client.log_dict(candidate.run_id, summary, "compression/summary.json")
    client.log_text(candidate.run_id, format_table(summary), "compression/summary.md")
    client.log_table(candidate.run_id, {key: [t[key] for t in table] for key in (
        "variant", "passed", "size_bytes", "auc", "delta_auc", "latency_ms_b256", "variant_run_id")},
        "tables/compression_variants.json")  # outside compression/: that folder's files are a fixed set
    figure = plot_auc_vs_size(summary)
    client.log_figure(candidate.run_id, figure, "compression/auc_vs_size.png")
    pyplot().close(figure)
    client.log_metric(candidate.run_id, "variants_passed", len(summary["passed"]))
    client.log_metric(candidate.run_id, "eager_latency_ms_b256", eager_ms)
    return summary


def format_table(summary: dict) -> str:
    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    lines = [f"### {summary['family']}: variants vs fp32 (PyTorch eager fp32 at batch {summary['batch']}: "
             f"{summary['eager_fp32_latency_ms_b256']:.3f} ms, {summary['threads']} threads)", "",
             "| variant | size | × smaller | test AUC | ΔAUC | ORT ms | vs eager | parity |",
             "|---|---|---|---|---|---|---|---|"]
    for t in summary["variants"]:
        verdict = "pass" if t["passed"] else "reject: " + one_line("; ".join(t["reasons"]), 240)
        lines.append(f"| {t['variant']} | {fmt(t['size_bytes'], ',')} | {fmt(t['size_reduction'], '.1f')} | "
                     f"{fmt(t['auc'], '.4f')} | {fmt(t['delta_auc'], '+.4f')} | {fmt(t['latency_ms_b256'], '.3f')} | "
                     f"{fmt(t['latency_vs_eager'], '.2f')} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.parity.stage",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--candidate-run", required=True, help="MLflow run id of a trained candidate")
    parser.add_argument("--base", action="append", help="base(s) to build (default: all of the family)")
    parser.add_argument("--config", default="{}", help='{"compress": {...}, "parity": {...}} overrides as JSON')
    args = parser.parse_args(argv)

    def step():
        import mlflow

        overrides = json_object(args.config)
        run = mlflow.MlflowClient(config.tracking_uri()).get_run(args.candidate_run)
        if run.data.tags.get(tags.STAGE) != "train":
            raise ConfigError(f"MLflow run {args.candidate_run} is not a training run of nightly_retrain")
        candidate = resolve_candidate(candidate_of_run(run))
        family = candidate.family
        bases = args.base or plan_bases(CompressConfig.from_dict(overrides.get("compress")), family)
        rows = [r for b in bases for r in compress_and_validate(candidate, b, overrides.get("compress"),
                                                                  overrides.get("parity"))]
        summary = summarize_family(candidate, rows, overrides.get("compress"))
        print(format_table(summary))
        return {"passed": summary["passed"]}

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
