"""What there is to register, read from MLflow: the profiled training runs of a nightly run, the profile documents
of their variant runs, and the data partition a version was built from.

After ``profile_variants`` every validated variant of a family carries one profile document per hardware target
(artifact ``profile/<target>.json`` on its MLflow run, ``recforge/contracts/profile_schema.json``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.contracts import tags as T
from recforge.contracts.profile import validate_profile
from recforge.contracts.registry import mlflow_client
from recforge.core.errors import ConfigError, DataError
from recforge.models.families import BASELINE_FAMILY
from recforge.pipeline.profiling.runs import experiment_id
from recforge.pipeline.registry.policy import ProfiledVariant

PROFILE_DIR = "profile"
PROFILE_SUMMARY = f"{PROFILE_DIR}/summary.json"  # logged by profile_variants on a family's training run
NOT_PROFILES = {"skipped.json", "summary.json"}  # other JSON files profile_variants writes under profile/


def find_profiled_candidates(extras: Sequence[Mapping[str, Any] | None] = (), *, parent_run_id: str = "",
                             candidate_run_id: str = "", families: Sequence[str] = ()) -> list[dict[str, str]]:
    """[{family, candidate_run_id}] to register: the ``candidate_run_id`` given, else the families of the PROFILES
    event ``extras`` (the newest event per family wins), else the profiled training runs (``profile/summary.json``)
    of the nightly run ``parent_run_id`` (default: the latest finished one). DataError when there is none."""
    by_family: dict[str, str] = {}
    if candidate_run_id:
        run = mlflow_client().get_run(candidate_run_id)
        by_family[run.data.tags.get(T.FAMILY, "")] = candidate_run_id
    else:
        for extra in extras:
            for family, entry in ((extra or {}).get("families") or {}).items():
                if entry.get("candidate_run_id"):
                    by_family[family] = entry["candidate_run_id"]
    if not by_family:
        client = mlflow_client()
        experiment = experiment_id(client)
        if not parent_run_id:
            latest = client.search_runs([experiment], f"tags.`{T.KIND}` = 'nightly' and "
                                        "attributes.status = 'FINISHED'", order_by=["start_time DESC"], max_results=1)
            if not latest:
                raise DataError("no finished nightly_retrain run in MLflow; run nightly_retrain first")
            parent_run_id = latest[0].info.run_id
        for run in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                      f"tags.`{T.STAGE}` = 'train'"):
            profiled = any(a.path == PROFILE_SUMMARY for a in client.list_artifacts(run.info.run_id, PROFILE_DIR))
            if run.data.tags.get(T.FAMILY) != BASELINE_FAMILY and profiled:
                by_family[run.data.tags[T.FAMILY]] = run.info.run_id
    chosen = [{"family": f, "candidate_run_id": r} for f, r in sorted(by_family.items())
              if not families or f in families]
    if not chosen:
        raise DataError(f"no profiled family to register (families {list(families) or 'all'}, found "
                        f"{sorted(by_family) or 'none'}); run profile_variants first")
    return chosen


def load_profiled_variants(candidate_run_id: str) -> tuple[list[ProfiledVariant], list[str]]:
    """The profile documents on the variant runs of one training run: (variants, problems).

    Each ``profile/<target>.json`` of the targets the latest profiling of the run measured (tag
    ``recforge.profiled_targets``) is validated against the profile schema and must name its own run; an invalid
    one raises ConfigError naming the artifact. Variant runs without profiles are listed in ``problems``.
    """
    client = mlflow_client()
    candidate = client.get_run(candidate_run_id)
    if candidate.data.tags.get(T.STAGE) != "train":
        raise ConfigError(f"MLflow run {candidate_run_id} is not a training run of nightly_retrain; pass the "
                          "family's training run (the parent of its variant runs)")
    family = candidate.data.tags.get(T.FAMILY, "")
    runs = client.search_runs([candidate.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{candidate_run_id}' and "
                              f"tags.`{T.STAGE}` = 'compress'", max_results=5000)
    variants, problems, unprofiled = [], [], []
    for run in sorted(runs, key=lambda r: r.data.tags.get(T.VARIANT, "")):
        run_id, tags = run.info.run_id, run.data.tags
        files = [a.path for a in client.list_artifacts(run_id, PROFILE_DIR)
                 if a.path.endswith(".json") and Path(a.path).name not in NOT_PROFILES]
        # MLflow cannot delete an artifact: a target profiled on an earlier night and skipped or failed on the
        # latest one still has its file. The latest profiling's tag says which files are current.
        current = tags.get(T.PROFILED_TARGETS)
        if current is not None:
            files = [f for f in files if Path(f).stem in set(current.split(",")) - {"none"}]
        if not files:
            unprofiled.append(tags.get(T.VARIANT, run_id))
            continue
        for path in files:
            with tempfile.TemporaryDirectory() as tmp:
                doc = json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
            where = f"{path} of variant run {run_id}"
            try:
                validate_profile(doc)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}; re-run profile_variants for it") from None
            if doc["variant_run_id"] != run_id or doc["model_family"] != family:
                raise ConfigError(f"{where} describes {doc['model_family']}/{doc['variant']} of run "
                                  f"{doc['variant_run_id']}, not this run ({family}); re-run profile_variants")
            variants.append(ProfiledVariant(profile=doc, parity=tags.get(T.PARITY, ""),
                                            size_bytes=run.data.metrics.get("size_bytes"), artifact=path))
    if unprofiled:
        names = ", ".join(unprofiled[:6]) + (f" and {len(unprofiled) - 6} more" if len(unprofiled) > 6 else "")
        problems.append(f"{len(unprofiled)} variant(s) of {family} have no profile: {names}")
    return variants, problems


def data_partition(candidate_run_id: str) -> dict[str, str]:
    """What a version was trained on and built from: the training run's data day and fingerprint, the nightly
    parent run's logical date, Airflow run and git commit."""
    client = mlflow_client()
    run = client.get_run(candidate_run_id)
    partition = {"candidate_run_id": candidate_run_id, "data_day": run.data.params.get("data_day", ""),
                 "data_fingerprint": run.data.params.get("data_fingerprint", ""),
                 "git_commit": run.data.tags.get(T.GIT_COMMIT, "")}
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if parent_id:
        parent = client.get_run(parent_id).data.tags
        partition |= {"nightly_run_id": parent_id, "logical_date": parent.get(T.LOGICAL_DATE, ""),
                      "nightly_airflow_run_id": parent.get(T.AIRFLOW_RUN_ID, "")}
        partition["data_fingerprint"] = partition["data_fingerprint"] or parent.get(T.DATA_FINGERPRINT, "")
        partition["git_commit"] = partition["git_commit"] or parent.get(T.GIT_COMMIT, "")
    return partition
