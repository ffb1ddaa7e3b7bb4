"""The profile_variants stage: serving profiles of the validated variants per hardware target, logged in MLflow.

After ``compress_and_validate`` every family has a dozen or more variants that pass the parity gate. Profiling
all of them on every target takes far too long on a small box, so :func:`plan_profiles` picks, per family, the
passing variants on the accuracy/latency Pareto front (test AUC up, ORT latency at batch 256 down, as measured
side by side in the family's ``compression/summary.json``), fastest first, at most ``max_variants_per_family``
of them, plus always the fp32 reference. :func:`profile_one` profiles one variant on the configured targets
(``recforge.pipeline.profiling.targets.profile_all``: latency-bounded throughput under DeepRecSys traffic, hill-climbed knobs) and
logs on the variant's MLflow run:

* ``profile/<target>.json`` (the profile document, ``recforge/contracts/profile_schema.json``; registration reads it),
* metrics ``lbt_qps.<target>``, ``p95_ms_at_lbt.<target>``, ``items_per_s.<target>``,
* tags ``recforge.profiled_targets`` and ``recforge.profile_skipped`` (each skipped target with its reason,
  also as ``profile/skipped.json``),
* plots ``profile/<target>_p95_vs_load.png`` and ``profile/<target>_latency_vs_batch.png``;

the same JSON is written to ``$RECFORGE_WORK_DIR/<day>/profiles/<family>/<variant>.<target>.json``.
:func:`summarize_profiles` logs ``profile/summary.json``, ``profile/summary.md`` and ``profile/pareto.png`` on each
family's candidate (training) run and returns the ``PROFILES`` asset extra. Reruns overwrite the same artifacts
and tags of the same runs: no run is ever created here.

CLI::

    python -m recforge.pipeline.profiling.stage run [--parent-run ID | --candidate-run ID] [--families dlrm,din] [--config JSON]
    python -m recforge.pipeline.profiling.stage report [--parent-run ID]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.pipeline.parity.stage import candidate_of_run
from recforge.pipeline.profiling.targets import ProfileConfig, default_targets, probe_targets, profile_all
from recforge.pipeline.training.train import BASELINE_FAMILY

log = logging.getLogger(__name__)

REFERENCE_VARIANT = "fp32"
DEFAULT_TARGETS = ("cpu-onnxruntime", "cpu-triton", "gpu", "hybrid")  # "hybrid": DeepRecSched CPU+GPU split
# The stage's profiling budget on top of recforge.pipeline.profiling.targets.ProfileConfig's defaults: about 15 s per (variant, target)
# on 2 cores, so that four families x (Pareto variants + fp32) x (onnxruntime + Triton) stay within ~10 min
# (1 s points and 4 knob settings took 11.6 min for the 13 variants of 1998-04-22 on a busy box).
# threads=1: with 2 workers on 2 cores a second intra-op thread only oversubscribes (measured: LBT 125 vs 350 qps
# at sub-batch 16). Sub-batches from 32: 16 was never the best on onnxruntime and gave Triton LBT 0 (too many
# HTTP requests per query), where a hill climb cannot start. start_qps 50: Triton's LBT here is ~100-200 qps.
STAGE_PROFILE_DEFAULTS: dict[str, Any] = {
    "point_duration_s": 0.75, "start_qps": 50.0, "max_steps": 7, "tolerance": 0.2, "threads": [1],
    "min_sub_batch": 32, "max_evaluations": 3, "latency_repeats": 10,
}


@dataclass(frozen=True)
class ProfileStageConfig:
    """What the stage profiles (``profile_variants`` DAG params; :meth:`from_dict` rejects unknown keys).

    ``targets`` are target kinds or names of ``recforge.pipeline.profiling.targets.default_targets()`` ("gpu" = any gpu-* kind); an
    unknown or unavailable one is reported and skipped. ``profile`` overrides ``ProfileConfig`` fields on top of
    :data:`STAGE_PROFILE_DEFAULTS`. Variants of a ``gpu_only_precisions`` precision are only selected when a GPU
    target is available, and only profiled on GPU targets.
    """

    targets: tuple[str, ...] = DEFAULT_TARGETS
    max_variants_per_family: int = 3  # from the Pareto front, fastest first; the fp32 reference comes on top
    include_reference: bool = True
    gpu_only_precisions: tuple[str, ...] = ("fp16",)
    profile: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets or any(not isinstance(t, str) or not t for t in self.targets):
            raise ConfigError(f"ProfileStageConfig.targets must be a non-empty list of target names, got "
                              f"{list(self.targets)}")
        if not isinstance(self.max_variants_per_family, int) or isinstance(self.max_variants_per_family, bool) \
                or not 0 <= self.max_variants_per_family <= 100:
            raise ConfigError("ProfileStageConfig.max_variants_per_family must be an integer in [0, 100], got "
                              f"{self.max_variants_per_family!r}")
        if self.max_variants_per_family == 0 and not self.include_reference:
            raise ConfigError("ProfileStageConfig: max_variants_per_family 0 without include_reference selects "
                              "nothing; raise max_variants_per_family")
        if not isinstance(self.profile, Mapping):
            raise ConfigError(f"ProfileStageConfig.profile must be an object of ProfileConfig fields, got "
                              f"{self.profile!r}")
        self.profile_config()  # validates the overrides

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ProfileStageConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets),
                "gpu_only_precisions": list(self.gpu_only_precisions), "profile": dict(self.profile)}

    def profile_config(self):

        return ProfileConfig.from_dict({**STAGE_PROFILE_DEFAULTS, **dict(self.profile)})


# --------------------------------------------------------------------------------------------------------------
# Selection


def precision_of(variant: str) -> str:
    """"pruned50+int8_static" -> "int8_static"; a base without a suffix is fp32."""
    return variant.split("+", 1)[1] if "+" in variant else REFERENCE_VARIANT


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(rows: Sequence[Mapping[str, Any]], cost: str, gain: str) -> list[Mapping[str, Any]]:
    """The rows no other row dominates (``cost`` no higher and ``gain`` no lower, one of them strictly), sorted by
    ``cost`` ascending (for equal cost and gain, the first row is kept). Rows missing either value are left out."""
    usable = [r for r in rows if _finite(r.get(cost)) and _finite(r.get(gain))]
    ordered = sorted(enumerate(usable), key=lambda ir: (ir[1][cost], -ir[1][gain], ir[0]))
    front, best_gain = [], -math.inf
    for _, row in ordered:
        if row[gain] > best_gain:  # strictly better than everything cheaper (or as cheap)
            front.append(row)
            best_gain = row[gain]
    return front


def select_variants(rows: Sequence[Mapping[str, Any]], cfg: ProfileStageConfig, *, gpu_available: bool = False
                    ) -> list[tuple[dict, str]]:
    """[(row, why)] of the passing variants to profile: the AUC / ``latency_ms_b256`` Pareto front, fastest first,
    at most ``max_variants_per_family``, then the fp32 reference when it is not among them. Rows are
    {"name", "passed", "auc", "latency_ms_b256", ...}; a passing variant without a latency is never on the front."""
    passed = [dict(r) for r in rows if r.get("passed", True)]
    eligible = [r for r in passed
                if gpu_available or precision_of(r["name"]) not in cfg.gpu_only_precisions]
    front = pareto_front(eligible, "latency_ms_b256", "auc")
    chosen = [(r, f"Pareto front #{i + 1} of {len(front)} (AUC vs ORT ms at batch 256)")
              for i, r in enumerate(front[: cfg.max_variants_per_family])]
    if cfg.include_reference and all(r["name"] != REFERENCE_VARIANT for r, _ in chosen):
        reference = next((r for r in passed if r["name"] == REFERENCE_VARIANT), None)
        if reference is not None:
            chosen.append((reference, "fp32 reference"))
    return chosen


# --------------------------------------------------------------------------------------------------------------
# Targets


def resolve_targets(names: Sequence[str], threads: int = 1) -> tuple[list, dict[str, str]]:
    """(targets of ``recforge.pipeline.profiling.targets.default_targets()`` matching ``names``, {name: why} for unknown names). A name
    matches a target's kind or name; "gpu" matches every gpu-* kind."""

    known = default_targets(threads=threads)
    chosen, unknown = [], {}
    for name in names:
        matches = [t for t in known if name in (t.kind, t.name) or (name == "gpu" and t.kind.startswith("gpu-"))]
        if not matches:
            unknown[name] = (f"unknown target {name!r} (this build has "
                             f"{', '.join(f'{t.kind} ({t.name})' for t in known)}): skipped")
        chosen += [t for t in matches if t not in chosen]
    return chosen, unknown


def gpu_target_available(names: Sequence[str], threads: int = 1) -> bool:

    targets, _ = resolve_targets(names, threads)
    available, _ = probe_targets([t for t in targets if t.kind.startswith("gpu-")])
    return bool(available)


# --------------------------------------------------------------------------------------------------------------
# Planning: which (family, variant) to profile


def _client():
    import mlflow

    return mlflow.MlflowClient(config.tracking_uri())


def _experiment_id(client) -> str:
    experiment = client.get_experiment_by_name(config.experiment_name())
    if experiment is None:
        raise DataError(f"MLflow experiment {config.experiment_name()!r} not found at {config.tracking_uri()}; "
                        "run nightly_retrain and compress_and_validate first")
    return experiment.experiment_id


def latest_nightly_run_id(client) -> str:
    runs = client.search_runs([_experiment_id(client)], "tags.`recforge.kind` = 'nightly' and "
                              "attributes.status = 'FINISHED'", order_by=["start_time DESC"], max_results=1)
    if not runs:
        raise DataError("no finished nightly_retrain run in MLflow; run nightly_retrain first")
    return runs[0].info.run_id


def validated_from_mlflow(parent_run_id: str = "", candidate_run_id: str = "") -> dict[str, dict]:
    """The validated variants as compress_and_validate's asset extra has them ({family: {candidate_run_id,
    passed: [...]}}), read from MLflow: the passing variant runs of one candidate (training) run, or of every
    candidate of the nightly run ``parent_run_id`` (default: the latest finished one)."""

    client = _client()
    experiment_id = _experiment_id(client)
    if candidate_run_id:
        candidates = [client.get_run(candidate_run_id)]
        if candidates[0].data.tags.get("recforge.stage") != "train":
            raise ConfigError(f"MLflow run {candidate_run_id} is not a training run of nightly_retrain")
    else:
        parent = parent_run_id or latest_nightly_run_id(client)
        candidates = [r for r in client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`recforge.stage` = 'train'")
            if r.data.tags.get("recforge.family") != BASELINE_FAMILY]
    out = {}
    for cand in candidates:
        runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{cand.info.run_id}' and "
                                  "tags.`recforge.parity` = 'passed'", order_by=["start_time DESC"])
        passed, seen = [], set()
        for run in runs:  # newest first: one run per variant name
            name = run.data.tags.get("recforge.variant")
            if not name or name in seen:
                continue
            seen.add(name)
            passed.append({"name": name, "onnx_path": "", "variant_run_id": run.info.run_id,
                           "auc": run.data.metrics.get("auc"), "size_bytes": run.data.metrics.get("size_bytes")})
        if passed:
            out[cand.data.tags["recforge.family"]] = {"candidate_run_id": cand.info.run_id, "passed": passed}
    if not out:
        where = f"candidate run {candidate_run_id}" if candidate_run_id else "the nightly run's candidates"
        raise DataError(f"no validated variants of {where} in MLflow; run compress_and_validate first")
    return out


def merge_extras(extras: Sequence[Mapping[str, Any] | None]) -> dict[str, dict]:
    """{family: entry} of VALIDATED_VARIANTS event extras (oldest first: the newest event of a family wins)."""
    merged: dict[str, dict] = {}
    for extra in extras:
        for family, entry in ((extra or {}).get("families") or {}).items():
            merged[family] = dict(entry)
    return merged


def _compression_summary(client, candidate_run_id: str) -> dict | None:
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(candidate_run_id, "compression/summary.json", tmp)
            return json.loads(Path(path).read_text())
    except Exception as err:  # noqa: BLE001 - a missing summary only costs the side-by-side latencies
        log.warning("candidate run %s: no compression/summary.json (%s); using the variant runs' metrics",
                    candidate_run_id, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def variant_rows(client, entry: Mapping[str, Any]) -> list[dict]:
    """The passing variants of one family with the numbers selection needs (auc, delta_auc, latency_ms_b256,
    size_bytes): from the candidate's compression summary, else from each variant run's metrics."""
    summary = _compression_summary(client, entry["candidate_run_id"]) or {"variants": []}
    by_run = {v.get("variant_run_id"): v for v in summary["variants"] if v.get("variant_run_id")}
    rows = []
    for p in entry.get("passed") or []:
        row = {"name": p["name"], "variant_run_id": p["variant_run_id"], "onnx_path": p.get("onnx_path") or "",
               "passed": True, "auc": p.get("auc"), "size_bytes": p.get("size_bytes")}
        known = by_run.get(p["variant_run_id"], {})
        for key in ("auc", "delta_auc", "latency_ms_b256", "size_bytes"):
            if _finite(known.get(key)):
                row[key] = known[key]
        if not all(_finite(row.get(k)) for k in ("auc", "delta_auc", "latency_ms_b256")):
            metrics = client.get_run(p["variant_run_id"]).data.metrics
            for key in ("auc", "delta_auc", "latency_ms_b256", "size_bytes"):
                if not _finite(row.get(key)) and _finite(metrics.get(key)):
                    row[key] = metrics[key]
        rows.append(row)
    return rows


def plan_profiles(extras: Sequence[Mapping[str, Any] | None] = (), *, parent_run_id: str = "",
                  candidate_run_id: str = "", families: Sequence[str] | None = None,
                  cfg: ProfileStageConfig | None = None) -> list[dict]:
    """One job per (family, variant) to profile: from the VALIDATED_VARIANTS event ``extras`` when there are some,
    else from MLflow (:func:`validated_from_mlflow`). Raises DataError when there is nothing to profile."""
    cfg = cfg or ProfileStageConfig()
    validated = merge_extras(extras) if not (parent_run_id or candidate_run_id) else {}
    if not validated:
        validated = validated_from_mlflow(parent_run_id, candidate_run_id)
    chosen_families = sorted(f for f in validated if not families or f in families)
    if not chosen_families:
        raise DataError(f"no validated variants of families {list(families or [])} (validated: "
                        f"{sorted(validated)}); run compress_and_validate for them first")
    client = _client()
    gpu = gpu_target_available(cfg.targets, cfg.profile_config().threads[0])
    jobs = []
    for family in chosen_families:
        entry = validated[family]
        candidate = client.get_run(entry["candidate_run_id"])
        day = candidate.data.params.get("data_day") or candidate.data.tags.get("recforge.logical_date") or "unknown"
        rows = variant_rows(client, entry)
        for row, why in select_variants(rows, cfg, gpu_available=gpu):
            jobs.append({
                "family": family, "candidate_run_id": entry["candidate_run_id"], "data_day": day,
                "variant": row["name"], "variant_run_id": row["variant_run_id"], "onnx_path": row["onnx_path"],
                "auc": row.get("auc"), "delta_auc": row.get("delta_auc"), "latency_ms_b256": row.get("latency_ms_b256"),
                "size_bytes": row.get("size_bytes"), "selected_because": why,
            })
        log.info("plan %s: %d of %d passing variants: %s", family, sum(j["family"] == family for j in jobs),
                 len(rows), ", ".join(j["variant"] for j in jobs if j["family"] == family))
    if not jobs:
        raise DataError(f"no variant of {chosen_families} can be profiled on {list(cfg.targets)} here")
    return jobs


# --------------------------------------------------------------------------------------------------------------
# Profiling one variant


def profile_dir(day: str, family: str) -> Path:
    return config.work_dir() / day / "profiles" / family


def _onnx_path(client, job: Mapping[str, Any]) -> Path:
    """The variant's ONNX file: the validated local file, else the ``onnx/`` artifact of its run (a worker
    without the compression's disk, or a manual trigger)."""
    local = Path(job.get("onnx_path") or "")
    if job.get("onnx_path") and local.is_file():
        return local
    dest = profile_dir(job["data_day"], job["family"]) / "onnx" / job["variant"]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        folder = Path(client.download_artifacts(job["variant_run_id"], "onnx", str(dest)))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{job['family']}/{job['variant']}: no ONNX file at {local or '(none)'} and none in MLflow "
                        f"run {job['variant_run_id']} ({str(err).splitlines()[0]}); re-run compress_and_validate"
                        ) from None
    files = sorted(folder.glob("*.onnx"))
    if len(files) != 1:
        raise DataError(f"{job['family']}/{job['variant']}: expected one .onnx under the onnx/ artifact of run "
                        f"{job['variant_run_id']}, found {[f.name for f in files]}; re-run compress_and_validate")
    return files[0]


def _spec_path(client, job: Mapping[str, Any]) -> Path:
    """The family's feature spec: the candidate's features folder, its model folder, else its MLflow run."""

    candidate = client.get_run(job["candidate_run_id"])
    model_dir = Path(candidate_of_run(candidate)["model_dir"])
    for path in (model_dir.parent.parent / "features" / "spec.json", model_dir / "spec.json"):
        if path.is_file():
            return path
    dest = config.work_dir() / "candidates" / job["candidate_run_id"]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(job["candidate_run_id"], "model_files/spec.json", str(dest)))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{job['family']}: no feature spec under {model_dir} nor in MLflow run "
                        f"{job['candidate_run_id']} ({str(err).splitlines()[0]}); re-run nightly_retrain") from None


def p95_at_lbt(doc: Mapping[str, Any]) -> float | None:
    """The p95 (ms) of the curve point at the LBT rate (None when the LBT is 0)."""
    lbt = doc["latency_bounded_throughput_qps"]
    return next((row["p95_ms"] for row in doc["curve"] if row["offered_qps"] == lbt and row.get("meets_slo", True)),
                None) if lbt > 0 else None


def knobs_text(knobs: Mapping[str, Any]) -> str:
    """"instances=1, preferred_batch=[1,2,…,1024], sub_batch=256": sorted, long lists shortened."""

    def value(v: Any) -> str:
        if isinstance(v, list | tuple):
            return "[" + (",".join(map(str, v)) if len(v) <= 4 else f"{v[0]},{v[1]},…,{v[-1]}") + "]"
        return str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in sorted(knobs.items()))


def profile_row(doc: Mapping[str, Any], path: Path | str) -> dict[str, Any]:
    """The one-line result of a profile document (for summaries, the asset extra and XCom)."""
    name = doc["target"]["name"]
    return {"target": name, "kind": doc["target"]["kind"], "path": str(path),
            "artifact_uri": f"runs:/{doc['variant_run_id']}/profile/{name}.json",
            "lbt_qps": doc["latency_bounded_throughput_qps"], "lbt_capped": bool(doc.get("lbt_capped", False)),
            "items_per_s": doc["items_per_s"], "p95_ms_at_lbt": p95_at_lbt(doc), "p95_target_ms": doc["p95_target_ms"],
            "best_knobs": doc["search"]["best_knobs"]}


def profile_one(job: Mapping[str, Any], cfg: ProfileStageConfig | Mapping[str, Any] | None = None) -> dict:
    """Profile one planned variant on the configured targets and log everything on its variant run.

    Unknown, unavailable or failing targets are reported with their reason (tag ``recforge.profile_skipped``)
    and the others still run. Returns the job with ``profiles`` (one :func:`profile_row` per target) and
    ``skipped`` ({target: reason})."""

    if not isinstance(cfg, ProfileStageConfig):
        cfg = ProfileStageConfig.from_dict(cfg)
    pcfg = cfg.profile_config()
    client = _client()
    targets, skipped = resolve_targets(cfg.targets, pcfg.threads[0])
    if precision_of(job["variant"]) in cfg.gpu_only_precisions:
        for target in [t for t in targets if not t.kind.startswith("gpu-")]:
            skipped[target.name] = f"{precision_of(job['variant'])} variants are profiled on GPU targets only"
            targets.remove(target)
    onnx_path, spec_path = _onnx_path(client, job), _spec_path(client, job)
    accuracy = {k: float(job[k]) for k in ("auc", "delta_auc") if _finite(job.get(k))}
    profiles, failed = profile_all(onnx_path, spec_path, targets, family=job["family"], variant=job["variant"],
                                   variant_run_id=job["variant_run_id"], accuracy=accuracy, cfg=pcfg) \
        if targets else ([], {})
    skipped.update(failed)
    out_dir = profile_dir(job["data_day"], job["family"])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for doc in profiles:
        path = out_dir / f"{job['variant']}.{doc['target']['name']}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        rows.append(profile_row(doc, path))
    log_variant_profiles(client, job["variant_run_id"], profiles, skipped)
    for row in rows:
        knobs = knobs_text(row["best_knobs"])
        p95 = "—" if row["p95_ms_at_lbt"] is None else f"{row['p95_ms_at_lbt']:.1f} ms"
        log.info("profiled %s/%s on %s: LBT %.0f qps%s, %.0f items/s, p95 %s at LBT (%s)", job["family"],
                 job["variant"], row["target"], row["lbt_qps"], " (capped)" if row["lbt_capped"] else "",
                 row["items_per_s"], p95, knobs)
    for name, reason in skipped.items():
        log.info("skipped %s/%s on %s: %s", job["family"], job["variant"], name, reason)
    return {**dict(job), "onnx_path": str(onnx_path), "profiles": rows, "skipped": skipped}


def log_variant_profiles(client, run_id: str, profiles: Sequence[Mapping[str, Any]],
                         skipped: Mapping[str, str]) -> None:
    """Artifacts, metrics, tags and plots of a variant's profiles on its MLflow run (same paths on a rerun)."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics, names = [], []
    for doc in profiles:
        name = doc["target"]["name"]
        names.append(name)
        client.log_dict(run_id, doc, f"profile/{name}.json")
        values = {f"lbt_qps.{name}": doc["latency_bounded_throughput_qps"], f"items_per_s.{name}": doc["items_per_s"],
                  f"p95_ms_at_lbt.{name}": p95_at_lbt(doc)}
        metrics += [Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)]
        for artifact, figure in ((f"profile/{name}_p95_vs_load.png", plot_p95_vs_load(doc)),
                                 (f"profile/{name}_latency_vs_batch.png", plot_latency_vs_batch(doc))):
            client.log_figure(run_id, figure, artifact)
            _close(figure)
    skipped_text = "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
    tags = [RunTag("recforge.profiled_targets", ",".join(names) or "none"),
            RunTag("recforge.profile_skipped", skipped_text[:4900])]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, dict(sorted(skipped.items())), "profile/skipped.json")


# --------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _close(figure) -> None:
    _pyplot().close(figure)


def _title(doc: Mapping[str, Any]) -> str:
    return f"{doc['model_family']}/{doc['variant']} on {doc['target']['name']} ({doc['target']['kind']})"


def plot_p95_vs_load(doc: Mapping[str, Any]):
    """p95 (and p50) latency against offered load at the best knobs; the SLO line and the LBT marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curve = [r for r in doc["curve"] if r["p95_ms"] is not None]
    xs = [r["offered_qps"] for r in curve]
    ax.plot(xs, [r["p95_ms"] for r in curve], color="tab:blue", lw=1, label="p95")
    ax.plot(xs, [r["p50_ms"] for r in curve], color="tab:blue", lw=0.8, ls=":", label="p50")
    for row in curve:
        ax.scatter(row["offered_qps"], row["p95_ms"], color="tab:green" if row.get("meets_slo") else "tab:red",
                   zorder=3, s=18)
    ax.axhline(doc["p95_target_ms"], color="grey", ls="--", lw=0.9, label=f"SLO p95 {doc['p95_target_ms']:g} ms")
    lbt = doc["latency_bounded_throughput_qps"]
    if lbt > 0:
        ax.axvline(lbt, color="tab:green", lw=0.9, label=f"LBT {lbt:.0f} qps" + (" (capped)" if doc.get(
            "lbt_capped") else ""))
    ax.set_yscale("log")
    ax.set_xlabel("offered load (queries/s, Poisson)")
    ax.set_ylabel("latency per query (ms, log)")
    ax.set_title(f"{_title(doc)}\n{knobs_text(doc['search']['best_knobs'])}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency_vs_batch(doc: Mapping[str, Any]):
    """Single-request latency against batch size (no queueing), with the cost per item."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = doc["latency_vs_batch"]
    batches = [r["batch"] for r in rows]
    ax.plot(batches, [r["ms"] for r in rows], marker="o", color="tab:blue", label="ms per request")
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("items per request (batch)")
    ax.set_ylabel("latency per request (ms)", color="tab:blue")
    per_item = ax.twinx()
    per_item.plot(batches, [1000 * r["ms"] / r["batch"] for r in rows], marker="s", color="tab:orange", lw=0.8)
    per_item.set_yscale("log")
    per_item.yaxis.set_major_formatter(ScalarFormatter())
    per_item.set_ylabel("µs per item (log)", color="tab:orange")
    ax.set_title(f"{_title(doc)}: one request, threads={doc['target']['threads']}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_pareto(summary: Mapping[str, Any]):
    """Accuracy against latency (left: every passing variant, ORT ms at batch 256) and against throughput (right:
    the profiled variants' LBT per target); the Pareto fronts highlighted."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    variants = summary.get("variants") or []
    front = set(summary.get("latency_front") or [])
    profiled = {r["variant"] for r in summary["profiles"]}
    for v in variants:
        if not (_finite(v.get("latency_ms_b256")) and _finite(v.get("auc"))):
            continue
        on_front = v["name"] in front
        left.scatter(v["latency_ms_b256"], v["auc"], s=40 if on_front else 18, zorder=3,
                     color="tab:orange" if on_front else "lightgrey",
                     edgecolors="black" if v["name"] in profiled else "none")
        left.annotate(v["name"], (v["latency_ms_b256"], v["auc"]), fontsize=6, xytext=(3, 3),
                      textcoords="offset points")
    front_rows = sorted((v for v in variants if v["name"] in front), key=lambda v: v["latency_ms_b256"])
    if front_rows:
        left.step([v["latency_ms_b256"] for v in front_rows], [v["auc"] for v in front_rows], where="post",
                  color="tab:orange", lw=1, label="Pareto front")
        left.legend(loc="best", fontsize=8)
    left.set_xlabel("ORT latency at batch 256 (ms; compress_and_validate)")
    left.set_ylabel("test AUC")
    left.set_title("accuracy vs latency (black edge = profiled)", fontsize=9)
    markers = "osD^v<>"
    for i, target in enumerate(sorted({r["target"] for r in summary["profiles"]})):
        rows = [r for r in summary["profiles"] if r["target"] == target and _finite(r.get("auc"))]
        on_front = {r["variant"] for r in summary.get("throughput_front", {}).get(target, [])}
        color = f"C{i}"
        for r in rows:
            right.scatter(r["lbt_qps"], r["auc"], marker=markers[i % len(markers)], color=color, zorder=3,
                          s=45 if r["variant"] in on_front else 18, alpha=1.0 if r["variant"] in on_front else 0.5)
            right.annotate(r["variant"], (r["lbt_qps"], r["auc"]), fontsize=6, xytext=(3, 3),
                           textcoords="offset points")
        pts = sorted((r for r in rows if r["variant"] in on_front), key=lambda r: -r["lbt_qps"])
        if pts:
            right.step([r["lbt_qps"] for r in pts], [r["auc"] for r in pts], where="post", color=color, lw=1,
                       label=f"{target} front")
    right.set_xlabel("latency-bounded throughput (queries/s at p95 SLO)")
    right.set_ylabel("test AUC")
    right.set_title("accuracy vs throughput per target (big = Pareto front)", fontsize=9)
    if summary["profiles"]:
        right.legend(loc="best", fontsize=8)
    fig.suptitle(f"{summary['family']}: accuracy / serving-cost Pareto front", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------
# Summaries


def family_summary(family: str, results: Sequence[Mapping[str, Any]],
                   variants: Sequence[Mapping[str, Any]] = ()) -> dict:
    """The summary of one family's profiled variants: one row per (variant, target), the skipped ones, the
    AUC/latency front over every passing variant (``variants``, from the compression summary) and the AUC/LBT
    front per target."""
    profiles, skipped = [], {}
    for r in results:
        for p in r.get("profiles") or []:
            profiles.append({"variant": r["variant"], "variant_run_id": r["variant_run_id"], **p,
                             "auc": r.get("auc"), "delta_auc": r.get("delta_auc"),
                             "latency_ms_b256": r.get("latency_ms_b256"),
                             "selected_because": r.get("selected_because")})
        if r.get("skipped"):
            skipped[r["variant"]] = dict(r["skipped"])
    throughput_front = {}
    for target in sorted({p["target"] for p in profiles}):
        rows = [{**p, "neg_lbt": -p["lbt_qps"]} for p in profiles if p["target"] == target]
        throughput_front[target] = [{"variant": p["variant"], "lbt_qps": p["lbt_qps"], "auc": p["auc"]}
                                    for p in pareto_front(rows, "neg_lbt", "auc")]
    for p in profiles:
        p["on_front"] = p["variant"] in {f["variant"] for f in throughput_front.get(p["target"], [])}
    variant_table = [dict(v) for v in variants] or [
        {"name": r["variant"], "auc": r.get("auc"), "latency_ms_b256": r.get("latency_ms_b256")} for r in results]
    return {
        "family": family,
        "candidate_run_id": results[0]["candidate_run_id"] if results else None,
        "data_day": results[0].get("data_day") if results else None,
        "profiles": sorted(profiles, key=lambda p: (p["target"], -p["lbt_qps"], p["variant"])),
        "skipped": skipped,
        "throughput_front": throughput_front,
        "latency_front": [v["name"] for v in pareto_front(variant_table, "latency_ms_b256", "auc")],
        "variants": variant_table,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """summary.md: one row per (variant, target), best LBT first per target."""

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    slo = {p["p95_target_ms"] for p in summary["profiles"]}
    lines = [f"### {summary['family']}: serving profiles (p95 SLO {', '.join(f'{s:g}' for s in sorted(slo)) or '—'} "
             "ms, DeepRecSys Poisson queries)", "",
             "| variant | target | LBT qps | items/s | p95 at LBT (ms) | best knobs | AUC | ΔAUC | front |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in summary["profiles"]:
        knobs = knobs_text(p["best_knobs"])
        lbt = fmt(p["lbt_qps"], ",.0f") + ("+" if p.get("lbt_capped") else "")
        lines.append(f"| {p['variant']} | {p['target']} | {lbt} | {fmt(p['items_per_s'], ',.0f')} | "
                     f"{fmt(p['p95_ms_at_lbt'], '.1f')} | {knobs} | {fmt(p['auc'], '.4f')} | "
                     f"{fmt(p['delta_auc'], '+.4f')} | {'★' if p['on_front'] else ''} |")
    if summary["skipped"]:
        lines += ["", "Skipped:"]
        by_reason: dict[str, list[str]] = {}
        for variant, targets in summary["skipped"].items():
            for target, reason in targets.items():
                by_reason.setdefault(f"{target}: {reason}", []).append(variant)
        lines += [f"- {reason} ({', '.join(sorted(vs))})" for reason, vs in sorted(by_reason.items())]
    lines += ["", "LBT: highest Poisson query rate meeting the p95 SLO with no errors (`+`: still met at the probe "
              "cap; 0: not even the first rate probed met it). ★: on the AUC/LBT Pareto front of its target."]
    return "\n".join(lines) + "\n"


def _passing_variants(client, candidate_run_id: str) -> list[dict]:
    summary = _compression_summary(client, candidate_run_id) or {"variants": []}
    return [{"name": v["variant"], "auc": v.get("auc"), "latency_ms_b256": v.get("latency_ms_b256"),
             "size_bytes": v.get("size_bytes")} for v in summary["variants"] if v.get("passed")]


def summarize_profiles(results: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per family: the summary logged on its candidate run (``profile/summary.json``, ``profile/summary.md``,
    ``profile/pareto.png``). Returns {family: summary}; raises RecForgeError when no target profiled anything."""
    if not any(r.get("profiles") for r in results):
        reasons = sorted({f"{t}: {why}" for r in results for t, why in (r.get("skipped") or {}).items()})
        raise RecForgeError(f"no variant was profiled on any target ({'; '.join(reasons) or 'nothing planned'}); "
                            "check the targets param and the profile logs")
    client = _client()
    summaries = {}
    for family in sorted({r["family"] for r in results}):
        family_results = [r for r in results if r["family"] == family]
        candidate_run_id = family_results[0]["candidate_run_id"]
        summary = family_summary(family, family_results, _passing_variants(client, candidate_run_id))
        client.log_dict(candidate_run_id, summary, "profile/summary.json")
        client.log_text(candidate_run_id, format_summary(summary), "profile/summary.md")
        figure = plot_pareto(summary)
        client.log_figure(candidate_run_id, figure, "profile/pareto.png")
        _close(figure)
        client.log_metric(candidate_run_id, "variants_profiled", len({p["variant"] for p in summary["profiles"]}))
        summaries[family] = summary
        log.info("summary %s: %d profiles, %d variants skipped somewhere", family, len(summary["profiles"]),
                 len(summary["skipped"]))
    return summaries


def profiles_asset_extra(summaries: Mapping[str, Mapping[str, Any]]) -> dict:
    """The PROFILES asset event extra (dags/recforge_assets.py): {"families": {family: {"candidate_run_id",
    "profiles": [{variant, variant_run_id, target, kind, path, artifact_uri, lbt_qps, ...}]}}}."""
    keys = ("variant", "variant_run_id", "target", "kind", "path", "artifact_uri", "lbt_qps", "lbt_capped",
            "items_per_s", "p95_ms_at_lbt", "p95_target_ms", "best_knobs", "auc", "delta_auc", "on_front")
    return {"families": {family: {"candidate_run_id": s["candidate_run_id"],
                                  "profiles": [{k: p.get(k) for k in keys} for p in s["profiles"]]}
                         for family, s in summaries.items()}}


def report(parent_run_id: str = "") -> str:
    """The profile/summary.md of every candidate of the nightly run (default: the latest finished one)."""
    import tempfile


    client = _client()
    parent = parent_run_id or latest_nightly_run_id(client)
    candidates = client.search_runs([_experiment_id(client)], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                    "tags.`recforge.stage` = 'train'")
    parts = []
    for cand in sorted(candidates, key=lambda r: r.data.tags.get("recforge.family", "")):
        if cand.data.tags.get("recforge.family") == BASELINE_FAMILY:
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:
                parts.append(Path(client.download_artifacts(cand.info.run_id, "profile/summary.md", tmp)).read_text())
        except Exception:  # noqa: BLE001 - a family without profiles
            parts.append(f"### {cand.data.tags.get('recforge.family')}: not profiled (run {cand.info.run_id})\n")
    if not parts:
        raise DataError(f"nightly run {parent} has no candidates; run nightly_retrain first")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# CLI


def run_stage(*, parent_run_id: str = "", candidate_run_id: str = "", families: Sequence[str] | None = None,
              stage_config: Mapping[str, Any] | None = None) -> dict:
    """plan -> profile each job -> summarize, in this process (what the DAG does, without Airflow)."""
    cfg = ProfileStageConfig.from_dict(stage_config)
    jobs = plan_profiles(parent_run_id=parent_run_id, candidate_run_id=candidate_run_id, families=families, cfg=cfg)
    results = [profile_one(job, cfg) for job in jobs]
    return profiles_asset_extra(summarize_profiles(results))


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.profiling.stage", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="profile the validated variants of a nightly run (default: the latest)")
    run.add_argument("--parent-run", default="", help="MLflow run id of a nightly parent run")
    run.add_argument("--candidate-run", default="", help="MLflow run id of one family's training run")
    run.add_argument("--families", default="", help="comma-separated families (default: all)")
    run.add_argument("--config", default=None,
                     help='ProfileStageConfig as JSON, e.g. {"targets": ["cpu-onnxruntime"], "profile": {...}}')
    rep = sub.add_parser("report", help="print the profile summary tables of a nightly run (default: the latest)")
    rep.add_argument("--parent-run", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "report":
        return run_step(lambda: report(args.parent_run))
    return run_step(lambda: run_stage(
        parent_run_id=args.parent_run, candidate_run_id=args.candidate_run,
        families=[f for f in args.families.split(",") if f], stage_config=json_object(args.config)))


if __name__ == "__main__":
    sys.exit(main())
