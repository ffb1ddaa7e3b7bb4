"""The profile_variants stage (the DAG's logic): plan which variants to profile, profile each one on the
configured targets, summarize per family. Reruns overwrite the same artifacts and tags of the same runs: no run
is ever created here.

:func:`plan_profiles` picks, per family, the passing variants on the accuracy/latency Pareto front
(``selection``), at most ``max_variants_per_family``, plus always the fp32 reference. :func:`profile_family`
races a family's variants (the predicted fastest gets the knob search; each later one is measured at the knobs
of the best so far, challenged at its LBT first). :func:`profile_one` profiles one variant on the configured targets
(``profile_variant.profile_all``: latency-bounded throughput under DeepRecSys traffic, searched knobs) and logs
on the variant's MLflow run:

* ``profile/<target>.json`` (the profile document, ``recforge/contracts/profile_schema.json``; registration
  reads it),
* metrics ``lbt_qps.<target>``, ``p95_ms_at_lbt.<target>``, ``items_per_s.<target>``,
* tags ``recforge.profiled_targets`` and ``recforge.profile_skipped`` (each skipped target with its reason,
  also as ``profile/skipped.json``), and ``recforge.traffic_run_id`` (the served traffic whose query sizes the
  load replayed, ``served_traffic``; "none": the configured sizes),
* plots ``profile/<target>_p95_vs_load.png`` and ``profile/<target>_latency_vs_batch.png``;

the same JSON is written to ``$RECFORGE_WORK_DIR/<day>/profiles/<family>/<variant>.<target>.json``.
:func:`summarize_profiles` logs ``profile/summary.json``, ``profile/summary.md`` and ``profile/pareto.png`` on each
family's candidate (training) run; ``summary.profiles_asset_extra`` gives the ``PROFILES`` asset extra.
The CLI is ``python -m recforge.pipeline.profiling.cli``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.contracts import tags
from recforge.contracts.layout import Catalog
from recforge.contracts.targets import TARGETS, device_of
from recforge.core.errors import DataError, RecForgeError, first_line
from recforge.pipeline.parity.stage import candidate_of_run
from recforge.pipeline.profiling.plots import close_figure, plot_latency_vs_batch, plot_p95_vs_load, plot_pareto
from recforge.pipeline.profiling.profile_variant import Rival, profile_all
from recforge.pipeline.profiling.runs import passing_variants, tracking_client, validated_from_mlflow, variant_rows
from recforge.pipeline.profiling.selection import is_finite, precision_of, select_variants
from recforge.pipeline.profiling.served_traffic import choose_traffic, traffic_sizes
from recforge.pipeline.profiling.stage_config import ProfileStageConfig
from recforge.pipeline.profiling.summary import (
    family_summary,
    format_summary,
    knobs_text,
    p95_at_lbt,
    profile_row,
    profiles_asset_extra,
)
from recforge.pipeline.profiling.targets.base import HardwareTarget, close_parts
from recforge.pipeline.profiling.targets.factory import probe_targets, resolve_targets

log = logging.getLogger(__name__)


def is_gpu_target(target: HardwareTarget) -> bool:
    """Whether ``target`` runs on a GPU alone (a CPU+GPU split does not count)."""
    return target.kind in TARGETS and device_of(target.kind) == "gpu"


def gpu_target_available(names: Sequence[str], threads: int = 1) -> bool:
    """Whether one of the GPU targets named in ``names`` is available here."""
    targets, _ = resolve_targets(names, threads)
    available, _ = probe_targets([t for t in targets if is_gpu_target(t)])
    return bool(available)


def merge_extras(extras: Sequence[Mapping[str, Any] | None]) -> dict[str, dict]:
    """{family: entry} of VALIDATED_VARIANTS event extras (oldest first: the newest event of a family wins)."""
    merged: dict[str, dict] = {}
    for extra in extras:
        for family, entry in ((extra or {}).get("families") or {}).items():
            merged[family] = dict(entry)
    return merged


def plan_profiles(extras: Sequence[Mapping[str, Any] | None] = (), *, parent_run_id: str = "",
                  candidate_run_id: str = "", families: Sequence[str] | None = None,
                  cfg: ProfileStageConfig | None = None) -> list[dict]:
    """One job per (family, variant) to profile: from the VALIDATED_VARIANTS event ``extras`` when there are some,
    else from MLflow (:func:`validated_from_mlflow`). Each job carries ``traffic``: the served traffic its load
    replays (``served_traffic.choose_traffic``; None: the configured sizes). Raises DataError when there is nothing
    to profile."""
    cfg = cfg or ProfileStageConfig()
    validated = merge_extras(extras) if not (parent_run_id or candidate_run_id) else {}
    if not validated:
        validated = validated_from_mlflow(parent_run_id, candidate_run_id)
    chosen_families = sorted(f for f in validated if not families or f in families)
    if not chosen_families:
        raise DataError(f"no validated variants of families {list(families or [])} (validated: "
                        f"{sorted(validated)}); run compress_and_validate for them first")
    client = tracking_client()
    traffic = choose_traffic(client, cfg)
    log.info("plan: %s", traffic.reason)
    gpu = gpu_target_available(cfg.targets, cfg.profile_config().threads[0])
    jobs = []
    for family in chosen_families:
        entry = validated[family]
        candidate = client.get_run(entry["candidate_run_id"])
        day = candidate.data.params.get("data_day") or candidate.data.tags.get(tags.LOGICAL_DATE) or "unknown"
        rows = variant_rows(client, entry)
        for row, why in select_variants(rows, cfg, gpu_available=gpu):
            jobs.append({
                "family": family, "candidate_run_id": entry["candidate_run_id"], "data_day": day,
                "variant": row["name"], "variant_run_id": row["variant_run_id"], "onnx_path": row["onnx_path"],
                "auc": row.get("auc"), "delta_auc": row.get("delta_auc"), "latency_ms_b256": row.get("latency_ms_b256"),
                "size_bytes": row.get("size_bytes"), "selected_because": why, "traffic": traffic.entry,
            })
        log.info("plan %s: %d of %d passing variants: %s", family, sum(j["family"] == family for j in jobs),
                 len(rows), ", ".join(j["variant"] for j in jobs if j["family"] == family))
    if not jobs:
        raise DataError(f"no variant of {chosen_families} can be profiled on {list(cfg.targets)} here")
    return jobs


def _onnx_path(client, job: Mapping[str, Any]) -> Path:
    """The variant's ONNX file: the validated local file, else the ``onnx/`` artifact of its run (a worker
    without the compression's disk, or a manual trigger)."""
    local = Path(job.get("onnx_path") or "")
    if job.get("onnx_path") and local.is_file():
        return local
    dest = Catalog.default().profiles_dir(job["data_day"], job["family"]) / "onnx" / job["variant"]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        folder = Path(client.download_artifacts(job["variant_run_id"], "onnx", str(dest)))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{job['family']}/{job['variant']}: no ONNX file at {local or '(none)'} and none in MLflow "
                        f"run {job['variant_run_id']} ({first_line(err)}); re-run compress_and_validate"
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
    for path in (Catalog.features_of(model_dir) / "spec.json", model_dir / "spec.json"):
        if path.is_file():
            return path
    dest = Catalog.default().candidate_dir(job["candidate_run_id"])
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(job["candidate_run_id"], "model_files/spec.json", str(dest)))
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{job['family']}: no feature spec under {model_dir} nor in MLflow run "
                        f"{job['candidate_run_id']} ({first_line(err)}); re-run nightly_retrain") from None


def family_jobs(jobs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The planned jobs grouped per family, as :func:`profile_family` takes them: [{family, variants: [job, ...]}]
    (one mapped DAG task per family)."""
    families: dict[str, list[dict]] = {}
    for job in jobs:
        families.setdefault(job["family"], []).append(dict(job))
    return [{"family": family, "variants": variants} for family, variants in families.items()]


def race_order(jobs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The variants fastest first by the compression stage's latency at batch 256 (unmeasured ones last): the likely
    winner sets the bar early, so the others are raced against it (:func:`profile_family`)."""
    def latency(job: Mapping[str, Any]) -> float:
        value = job.get("latency_ms_b256")
        return float(value) if is_finite(value) else float("inf")

    return sorted((dict(job) for job in jobs), key=latency)


def profile_family(family_job: Mapping[str, Any], cfg: ProfileStageConfig | Mapping[str, Any] | None = None
                   ) -> list[dict]:
    """Profile one family's planned variants as a race (:func:`profile_one` for each, in :func:`race_order`).

    The first (predicted fastest) variant gets the knob search on each target; every later one is measured at the
    knobs of the family's best profile so far on that target, challenged first at that profile's LBT
    (``profile_variant.rival_screen``: one load run says whether its LBT lies above or below, the search goes that
    way), and takes the lead when it serves more. So the knob search is paid once per family and target, and every
    variant still gets its LBT and curve. Returns the results in profiling order."""
    if not isinstance(cfg, ProfileStageConfig):
        cfg = ProfileStageConfig.from_dict(cfg)
    rivals: dict[str, Rival] = {}
    results = []
    resolved = resolve_targets(cfg.targets, cfg.profile_config().threads[0])
    try:  # the targets (a Triton server) serve the whole family, one variant after the other
        for job in race_order(family_job["variants"]):
            result = profile_one(job, cfg, rivals, resolved)
            for row in result["profiles"]:
                best = rivals.get(row["target"])
                if best is None or row["lbt_qps"] > best.lbt_qps:
                    rivals[row["target"]] = Rival(job["variant"], dict(row["best_knobs"]), float(row["lbt_qps"]))
            results.append(result)
    finally:
        close_parts(*resolved[0])
    return results


def profile_one(job: Mapping[str, Any], cfg: ProfileStageConfig | Mapping[str, Any] | None = None,
                rivals: Mapping[str, Rival] | None = None,
                resolved: tuple[Sequence[HardwareTarget], Mapping[str, str]] | None = None) -> dict:
    """Profile one planned variant on the configured targets (raced against ``rivals``, {target name: the
    family's best so far}, see :func:`profile_family`) and log everything on its variant run. ``resolved``:
    the (targets, {unknown target: why}) of ``resolve_targets`` to profile on and leave open for the caller to
    close (a family's variants share one Triton server); default: resolved here, closed after the variant.

    Unknown, unavailable or failing targets are reported with their reason (tag ``tags.PROFILE_SKIPPED``)
    and the others still run. Returns the job with ``profiles`` (one :func:`profile_row` per target) and
    ``skipped`` ({target: reason})."""
    if not isinstance(cfg, ProfileStageConfig):
        cfg = ProfileStageConfig.from_dict(cfg)
    client = tracking_client()
    traffic = job.get("traffic")
    out_dir = Catalog.default().profiles_dir(job["data_day"], job["family"])
    pcfg = cfg.profile_config(traffic_sizes(client, traffic, out_dir) if traffic else None)
    targets, skipped = resolve_targets(cfg.targets, pcfg.threads[0]) if resolved is None else \
        (list(resolved[0]), dict(resolved[1]))
    if precision_of(job["variant"]) in cfg.gpu_only_precisions:
        for target in [t for t in targets if not is_gpu_target(t)]:
            skipped[target.name] = f"{precision_of(job['variant'])} variants are profiled on GPU targets only"
            targets.remove(target)
    onnx_path, spec_path = _onnx_path(client, job), _spec_path(client, job)
    accuracy = {k: float(job[k]) for k in ("auc", "delta_auc") if is_finite(job.get(k))}
    profiles, failed = profile_all(onnx_path, spec_path, targets, family=job["family"], variant=job["variant"],
                                   variant_run_id=job["variant_run_id"], accuracy=accuracy, cfg=pcfg,
                                   rivals=rivals, close_targets=resolved is None, traffic=traffic) \
        if targets else ([], {})
    skipped.update(failed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for doc in profiles:
        path = out_dir / f"{job['variant']}.{doc['target']['name']}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        rows.append(profile_row(doc, path))
    log_variant_profiles(client, job["variant_run_id"], profiles, skipped, traffic)
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
                         skipped: Mapping[str, str], traffic: Mapping[str, Any] | None = None) -> None:
    """Artifacts, metrics, tags and plots of a variant's profiles on its MLflow run (same paths on a rerun);
    ``traffic``: the served traffic the profiles' load replayed (tag ``tags.TRAFFIC_RUN_ID``, "none" without)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics, names = [], []
    for doc in profiles:
        name = doc["target"]["name"]
        names.append(name)
        client.log_dict(run_id, doc, f"profile/{name}.json")
        values = {f"lbt_qps.{name}": doc["latency_bounded_throughput_qps"], f"items_per_s.{name}": doc["items_per_s"],
                  f"p95_ms_at_lbt.{name}": p95_at_lbt(doc)}
        metrics += [Metric(k, float(v), now, 0) for k, v in values.items() if is_finite(v)]
        for artifact, figure in ((f"profile/{name}_p95_vs_load.png", plot_p95_vs_load(doc)),
                                 (f"profile/{name}_latency_vs_batch.png", plot_latency_vs_batch(doc))):
            client.log_figure(run_id, figure, artifact)
            close_figure(figure)
    skipped_text = "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
    run_tags = [RunTag(tags.PROFILED_TARGETS, ",".join(names) or "none"),
                RunTag(tags.PROFILE_SKIPPED, skipped_text[:4900]),
                RunTag(tags.TRAFFIC_RUN_ID, (traffic or {}).get("run_id") or "none")]
    client.log_batch(run_id, metrics=metrics, tags=run_tags)
    client.log_dict(run_id, dict(sorted(skipped.items())), "profile/skipped.json")


def summarize_profiles(results: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """Per family: the summary logged on its candidate run (``profile/summary.json``, ``profile/summary.md``,
    ``profile/pareto.png``). Returns {family: summary}; raises RecForgeError when no target profiled anything."""
    if not any(r.get("profiles") for r in results):
        reasons = sorted({f"{t}: {why}" for r in results for t, why in (r.get("skipped") or {}).items()})
        raise RecForgeError(f"no variant was profiled on any target ({'; '.join(reasons) or 'nothing planned'}); "
                            "check the targets param and the profile logs")
    client = tracking_client()
    summaries = {}
    for family in sorted({r["family"] for r in results}):
        family_results = [r for r in results if r["family"] == family]
        candidate_run_id = family_results[0]["candidate_run_id"]
        summary = family_summary(family, family_results, passing_variants(client, candidate_run_id))
        client.log_dict(candidate_run_id, summary, "profile/summary.json")
        client.log_text(candidate_run_id, format_summary(summary), "profile/summary.md")
        figure = plot_pareto(summary)
        client.log_figure(candidate_run_id, figure, "profile/pareto.png")
        close_figure(figure)
        client.log_metric(candidate_run_id, "variants_profiled", len({p["variant"] for p in summary["profiles"]}))
        summaries[family] = summary
        log.info("summary %s: %d profiles, %d variants skipped somewhere", family, len(summary["profiles"]),
                 len(summary["skipped"]))
    return summaries


def run_stage(*, parent_run_id: str = "", candidate_run_id: str = "", families: Sequence[str] | None = None,
              stage_config: Mapping[str, Any] | None = None) -> dict:
    """plan -> profile each family (a race of its variants) -> summarize, in this process (what the DAG does,
    without Airflow)."""
    cfg = ProfileStageConfig.from_dict(stage_config)
    jobs = plan_profiles(parent_run_id=parent_run_id, candidate_run_id=candidate_run_id, families=families, cfg=cfg)
    results = [result for family in family_jobs(jobs) for result in profile_family(family, cfg)]
    return profiles_asset_extra(summarize_profiles(results))


