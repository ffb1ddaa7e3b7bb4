"""The register stage: the best profiled variant per (model family, hardware target) in the MLflow model registry.

After ``profile_variants`` every validated variant of a family carries one profile document per hardware target
(artifact ``profile/<target>.json`` on its MLflow run, ``recforge/contracts/profile_schema.json``). Per (family, target):

1. :func:`select_best` picks the parity-passing variant with the highest latency-bounded throughput (LBT); ties go
   to the higher test AUC, then to the smaller model.
2. :func:`register_version` makes it a version of the registered model ``<prefix><family>`` (``recforge-dlrm``).
   The version's source is the ONNX file the profile measured (``runs:/<variant run>/onnx/<file>.onnx``): its
   SHA-256 must equal the profile's ``onnx_sha256``, else the registration is refused. The version is tagged with
   the target, variant, parity metrics, a profile summary, the SHA-256, the source runs and the data partition.
   A version is identified by (variant run id, target) (tag ``recforge.identity``): a rerun finds it instead of
   creating a duplicate.
3. :func:`promote_if_better` moves the alias ``champion-<target>`` to the new version only when there is no
   champion yet, or when its LBT beats the champion's by ``margin`` (relative) and its AUC is at most
   ``max_auc_drop`` below the champion's. The champion it replaces gets ``previous-<target>`` (for rollback).
   The comparison (the "blessing": decision, reason, both LBTs and AUCs, hosts) is tagged on the new version.

The incumbent's LBT is the one tagged on its version when it was registered: nothing is re-measured, so two
profiles from different nights compare only roughly (the hosts are recorded beside them), and two test AUCs of
different nights are measured on different test days.

Every alias move (promotion, demotion to ``previous-<target>``, :func:`rollback_alias`) is appended to the alias
history: the registered-model tag ``recforge.alias_history`` (JSON list, the newest entries) and the local file
``$RECFORGE_HOME/registry/alias_history.jsonl``. :func:`champion` gives the rollout stage what it serves.
:func:`propose_rollout` ends the nightly chain: it proposes (tag ``recforge.rollout_proposal`` on the version and
``$RECFORGE_HOME/registry/proposals/``) the command a release manager runs; it touches no fleet.

CLI::

    python -m recforge.pipeline.registry.stage [--family F | --candidate-run RUN_ID | --parent-run RUN_ID] [--config JSON]
    python -m recforge.pipeline.registry.stage show [--family F] [--target T] [--history N] [--json]
    python -m recforge.pipeline.registry.stage rollback --family F --target T [--reason TEXT]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts.profile import validate_profile
from recforge.contracts.registry import (
    CHAMPION,
    PREVIOUS,
    alias,
    is_error,
    mlflow_client,
    model_aliases,
    tag_number,
)
from recforge.core import config
from recforge.core.cli import json_object, run_step
from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError, DataError, RecForgeError
from recforge.core.hashing import sha256_file as file_sha256
from recforge.pipeline.training.train import BASELINE_FAMILY

log = logging.getLogger(__name__)

HISTORY_TAG = "recforge.alias_history"
HISTORY_TAG_ENTRIES = 200  # the newest entries kept in the registered-model tag; the JSONL file keeps all
PROFILE_DIR = "profile"
NOT_PROFILES = {"skipped.json", "summary.json"}  # other JSON files profile_variants writes under profile/
# blessing decisions that leave the new version as champion
CHAMPION_DECISIONS = ("first_champion", "promoted")


@dataclass(frozen=True)
class RegisterConfig:
    """How versions are named and promoted (``register_models`` DAG params; unknown keys are refused)."""

    model_prefix: str = "recforge-"  # registered model = <prefix><family>
    margin: float = 0.05  # relative LBT gain over the champion needed to move champion-<target>
    max_auc_drop: float = 0.001  # the new version's test AUC may be at most this much below the champion's
    families: tuple[str, ...] = ()  # empty: every profiled family
    auto_rollout_staging: bool = False  # True: hand each promotion to the staging-rollout hook (not wired yet)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", self.model_prefix):
            raise ConfigError(f"RegisterConfig.model_prefix {self.model_prefix!r} may hold only letters, digits, "
                              "'_', '.' and '-'")
        if not 0 <= self.margin < 10:
            raise ConfigError(f"RegisterConfig.margin must be a relative gain in [0, 10), got {self.margin!r} "
                              "(0.05 = 5% more LBT than the champion)")
        if not 0 <= self.max_auc_drop <= 1:
            raise ConfigError(f"RegisterConfig.max_auc_drop must be in [0, 1], got {self.max_auc_drop!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RegisterConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_name(family: str, cfg: RegisterConfig | None = None) -> str:
    return f"{(cfg or RegisterConfig()).model_prefix}{family}"


# --------------------------------------------------------------------------------------------------------------
# Selection


@dataclass(frozen=True)
class ProfiledVariant:
    """One profile document of a variant, with the facts of its variant run that selection needs."""

    profile: Mapping[str, Any]
    parity: str = "passed"  # the variant run's recforge.parity tag
    size_bytes: float | None = None  # the variant run's size_bytes metric (weights)
    artifact: str = ""  # where the profile lies on the variant run, e.g. profile/cpu.json

    @property
    def family(self) -> str:
        return self.profile["model_family"]

    @property
    def variant(self) -> str:
        return self.profile["variant"]

    @property
    def run_id(self) -> str:
        return self.profile["variant_run_id"]

    @property
    def target(self) -> str:
        return self.profile["target"]["name"]

    @property
    def lbt_qps(self) -> float:
        return float(self.profile["latency_bounded_throughput_qps"])

    @property
    def auc(self) -> float:
        return float(self.profile["accuracy"]["auc"])

    def eligible(self) -> tuple[bool, str]:
        """(True, "") when this variant may be registered for its target, else (False, why)."""
        if self.parity != "passed":
            return False, f"parity {self.parity or 'unknown'}: only variants that passed the parity gate register"
        if self.lbt_qps <= 0:
            return False, "met the latency SLO at no offered rate (LBT 0)"
        return True, ""

    def sort_key(self) -> tuple:
        """Best first: highest LBT, then highest AUC, then smallest, then name (for a stable order)."""
        size = self.size_bytes if self.size_bytes is not None and math.isfinite(self.size_bytes) else math.inf
        return (-self.lbt_qps, -self.auc, size, self.variant)


def select_best(variants: Sequence[ProfiledVariant]) -> dict[tuple[str, str], ProfiledVariant]:
    """{(family, target): the variant to register}: among eligible variants (parity passed, LBT > 0), the highest
    latency-bounded throughput; ties go to the higher AUC, then to the smaller model."""
    best: dict[tuple[str, str], ProfiledVariant] = {}
    for v in variants:
        if not v.eligible()[0]:
            continue
        key = (v.family, v.target)
        if key not in best or v.sort_key() < best[key].sort_key():
            best[key] = v
    return dict(sorted(best.items()))


# --------------------------------------------------------------------------------------------------------------
# MLflow plumbing


def _now() -> str:
    # the time of an alias move (an audit record of when it happened, not a data partition)
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _experiment_id(client) -> str:
    experiment = client.get_experiment_by_name(config.experiment_name())
    if experiment is None:
        raise DataError(f"MLflow experiment {config.experiment_name()!r} not found at {config.tracking_uri()}; "
                        "run nightly_retrain first")
    return experiment.experiment_id


def load_profiled_variants(candidate_run_id: str) -> tuple[list[ProfiledVariant], list[str]]:
    """The profile documents on the variant runs of one training run: (variants, problems).

    Each ``profile/<target>.json`` of the targets the latest profiling of the run measured (tag
    ``recforge.profiled_targets``) is validated against the profile schema and must name its own run; an invalid
    one raises ConfigError naming the artifact. Variant runs without profiles are listed in ``problems``.
    """

    client = mlflow_client()
    candidate = client.get_run(candidate_run_id)
    if candidate.data.tags.get("recforge.stage") != "train":
        raise ConfigError(f"MLflow run {candidate_run_id} is not a training run of nightly_retrain; pass the "
                          "family's training run (the parent of its variant runs)")
    family = candidate.data.tags.get("recforge.family", "")
    runs = client.search_runs([candidate.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{candidate_run_id}' and "
                              "tags.`recforge.stage` = 'compress'", max_results=5000)
    variants, problems, unprofiled = [], [], []
    for run in sorted(runs, key=lambda r: r.data.tags.get("recforge.variant", "")):
        run_id, tags = run.info.run_id, run.data.tags
        files = [a.path for a in client.list_artifacts(run_id, PROFILE_DIR)
                 if a.path.endswith(".json") and Path(a.path).name not in NOT_PROFILES]
        # MLflow cannot delete an artifact: a target profiled on an earlier night and skipped or failed on the
        # latest one still has its file. The latest profiling's tag says which files are current.
        current = tags.get("recforge.profiled_targets")
        if current is not None:
            files = [f for f in files if Path(f).stem in set(current.split(",")) - {"none"}]
        if not files:
            unprofiled.append(tags.get("recforge.variant", run_id))
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
            variants.append(ProfiledVariant(profile=doc, parity=tags.get("recforge.parity", ""),
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
                 "git_commit": run.data.tags.get("mlflow.source.git.commit", "")}
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if parent_id:
        parent = client.get_run(parent_id).data.tags
        partition |= {"nightly_run_id": parent_id, "logical_date": parent.get("recforge.logical_date", ""),
                      "nightly_airflow_run_id": parent.get("recforge.airflow_run_id", "")}
        partition["data_fingerprint"] = partition["data_fingerprint"] or parent.get("recforge.data_fingerprint", "")
        partition["git_commit"] = partition["git_commit"] or parent.get("mlflow.source.git.commit", "")
    return partition


def _onnx_artifact(client, choice: ProfiledVariant, dest: str) -> tuple[str, str]:
    """(artifact path, sha256) of the ONNX file on the variant run that the profile measured.

    Raises DataError when the run has no ONNX file or none has the profile's SHA-256."""
    files = [a.path for a in client.list_artifacts(choice.run_id, "onnx") if a.path.endswith(".onnx")]
    where = f"{choice.family}/{choice.variant} (run {choice.run_id})"
    if not files:
        raise DataError(f"{where} has no onnx/*.onnx artifact; re-run compress_and_validate for it")
    wanted = choice.profile["onnx_sha256"]
    found = {}
    for path in files:
        found[path] = file_sha256(client.download_artifacts(choice.run_id, path, dest))
        if found[path] == wanted:
            return path, wanted
    seen = ", ".join(f"{p} has {s[:12]}…" for p, s in found.items())
    raise DataError(f"refusing to register {where} for target {choice.target}: its profile ({choice.artifact}) "
                    f"measured an ONNX file with SHA-256 {wanted[:12]}…, but {seen}; re-profile the variant "
                    "(profile_variants) so the registered file is the one measured")


def _ensure_registered_model(client, name: str, family: str) -> None:
    try:
        client.create_registered_model(
            name, tags={"recforge.family": family, "recforge.kind": "serving-model"},
            description=f"RecForge {family}: per hardware target, the parity-passing compressed variant with the "
                        "highest latency-bounded throughput. Aliases champion-<target> (served) and "
                        "previous-<target> (rollback); alias history in the tag recforge.alias_history.")
    except Exception as err:  # noqa: BLE001 - MlflowException; imported lazily
        if not is_error(err, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def identity(run_id: str, target: str) -> str:
    """What makes a version unique: one variant run measured on one target."""
    return f"{run_id}:{target}"


def find_version(client, name: str, run_id: str, target: str):
    """The version of ``name`` registered for (variant run, target), or None."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`recforge.identity` = '{identity(run_id, target)}'", max_results=10)
    return min(found, key=lambda v: int(v.version)) if found else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def version_tags(choice: ProfiledVariant, onnx_artifact: str, partition: Mapping[str, str],
                 dag_run_id: str) -> dict[str, str]:
    """The tags of a new version: what, for which target, how good, from what."""
    doc = choice.profile
    accuracy, target = doc["accuracy"], doc["target"]
    tags = {
        "recforge.identity": identity(choice.run_id, choice.target),
        "recforge.family": choice.family, "recforge.variant": choice.variant,
        "recforge.target": choice.target, "recforge.target_kind": target["kind"],
        "recforge.target_device": target["device"],
        "recforge.parity": choice.parity, "recforge.auc": accuracy["auc"], "recforge.delta_auc": accuracy["delta_auc"],
        "recforge.logloss": accuracy.get("logloss"), "recforge.size_bytes": choice.size_bytes,
        "recforge.lbt_qps": choice.lbt_qps, "recforge.lbt_capped": bool(doc.get("lbt_capped", False)),
        "recforge.items_per_s": doc["items_per_s"], "recforge.p95_target_ms": doc["p95_target_ms"],
        "recforge.best_knobs": doc["search"]["best_knobs"], "recforge.search_strategy": doc["search"]["strategy"],
        "recforge.profile_host": doc["host"], "recforge.profile_measured_at": doc["measured_at"],
        "recforge.profile_code_version": doc["code_version"],
        "recforge.profile_uri": f"runs:/{choice.run_id}/{choice.artifact}",
        "recforge.onnx_sha256": doc["onnx_sha256"], "recforge.onnx_artifact": onnx_artifact,
        "recforge.source_run_id": choice.run_id, "recforge.registered_by_dag_run": dag_run_id,
        **{f"recforge.{k}": v for k, v in partition.items()},
    }
    return {k: _fmt(v) for k, v in tags.items() if v is not None}


@dataclass(frozen=True)
class RegisteredVersion:
    model: str
    version: str
    target: str
    variant: str
    created: bool  # False: the (variant run, target) was registered before (a rerun)


def register_version(choice: ProfiledVariant, partition: Mapping[str, str], *, cfg: RegisterConfig | None = None,
                     dag_run_id: str = "") -> RegisteredVersion:
    """The registry version of ``choice`` (created unless (variant run, target) is registered already).

    Its source is the ONNX artifact of the variant run whose SHA-256 is the profile's ``onnx_sha256``; DataError
    when there is none (nothing is created then)."""
    cfg = cfg or RegisterConfig()
    client = mlflow_client()
    name = model_name(choice.family, cfg)
    alias(CHAMPION, choice.target)  # refuse a target that cannot be aliased before registering anything
    _ensure_registered_model(client, name, choice.family)
    existing = find_version(client, name, choice.run_id, choice.target)
    if existing is not None:
        if existing.tags.get("recforge.onnx_sha256") != choice.profile["onnx_sha256"]:
            log.warning("%s v%s (%s on %s) was registered from a profile of another ONNX file; its tags are kept",
                        name, existing.version, choice.variant, choice.target)
        return RegisteredVersion(name, existing.version, choice.target, choice.variant, created=False)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_artifact, _sha = _onnx_artifact(client, choice, tmp)
    tags = version_tags(choice, onnx_artifact, partition, dag_run_id)
    version = client.create_model_version(
        name, source=f"runs:/{choice.run_id}/{onnx_artifact}", run_id=choice.run_id, tags=tags,
        await_creation_for=0,  # a run artifact is READY at once; MLflow's default poll only sleeps
        description=f"{choice.family}/{choice.variant} for target {choice.target}: "
                    f"LBT {choice.lbt_qps:.0f} qps at p95 <= {choice.profile['p95_target_ms']} ms, "
                    f"AUC {choice.auc:.4f}")
    log.info("registered %s v%s: %s for %s (LBT %.0f qps, AUC %.4f)", name, version.version, choice.variant,
             choice.target, choice.lbt_qps, choice.auc)
    return RegisteredVersion(name, version.version, choice.target, choice.variant, created=True)


# --------------------------------------------------------------------------------------------------------------
# Aliases and their history


def history_path() -> Path:
    return config.recforge_home() / "registry" / "alias_history.jsonl"


def alias_history(model: str, target: str | None = None) -> list[dict[str, Any]]:
    """The alias moves of ``model`` (oldest first) from its registry tag, optionally of one target's aliases."""
    tags = mlflow_client().get_registered_model(model).tags
    entries = json.loads(tags.get(HISTORY_TAG) or "[]")
    if target is None:
        return entries
    names = {alias(CHAMPION, target), alias(PREVIOUS, target)}
    return [e for e in entries if e["alias"] in names]


def _move_alias(client, model: str, name: str, to_version: str | None, *, reason: str, dag_run_id: str,
                action: str) -> dict[str, Any] | None:
    """Point alias ``name`` at ``to_version`` (None: remove it) and record the move; None when nothing moved."""
    from_version = model_aliases(client, model).get(name)
    if from_version == to_version:
        return None
    if to_version is None:
        client.delete_registered_model_alias(model, name)
    else:
        client.set_registered_model_alias(model, name, to_version)
    entry = {"time": _now(), "model": model, "alias": name, "from_version": from_version, "to_version": to_version,
             "action": action, "reason": reason, "dag_run_id": dag_run_id}
    entries = json.loads(client.get_registered_model(model).tags.get(HISTORY_TAG) or "[]")
    entries.append(entry)
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(entries[-HISTORY_TAG_ENTRIES:]))
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    log.info("%s: alias %s %s -> %s (%s)", model, name, from_version or "(none)", to_version or "(none)", reason)
    return entry


@dataclass(frozen=True)
class Blessing:
    """The recorded comparison of a new version against the champion of its target."""

    decision: str  # first_champion | promoted | kept_incumbent | already_champion
    reason: str
    version: str
    compared_with: str = ""  # the incumbent's version ("" when there was none)
    new_lbt_qps: float | None = None
    incumbent_lbt_qps: float | None = None
    lbt_gain: float | None = None  # new / incumbent - 1
    new_auc: float | None = None
    incumbent_auc: float | None = None
    margin: float = 0.0
    max_auc_drop: float = 0.0
    new_host: str = ""
    incumbent_host: str = ""
    dag_run_id: str = ""
    rerun: bool = False  # True: decided by an earlier attempt of this registration, read back from the tags

    @property
    def champion(self) -> bool:
        return self.decision in CHAMPION_DECISIONS

    def tags(self) -> dict[str, str]:
        fields = dataclasses.asdict(self)
        fields.pop("rerun")
        return {f"recforge.blessing.{k}": _fmt(v) for k, v in fields.items() if v not in (None, "")}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Blessing | None:
        prefix = "recforge.blessing."
        values = {k[len(prefix):]: v for k, v in tags.items() if k.startswith(prefix)}
        if "decision" not in values:
            return None
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = values.get(f.name)
            if raw is None or f.name == "rerun":
                continue
            kwargs[f.name] = float(raw) if f.type in ("float | None", "float") and raw else raw
        return cls(**kwargs, rerun=True)


def judge(new_tags: Mapping[str, str], incumbent_version: str | None, incumbent_tags: Mapping[str, str] | None,
          cfg: RegisterConfig, *, version: str, dag_run_id: str = "") -> Blessing:
    """Whether a new version (its tags) should replace the incumbent champion (its tags), and why."""
    new_lbt, new_auc = tag_number(new_tags, "recforge.lbt_qps"), tag_number(new_tags, "recforge.auc")
    common = {"version": version, "new_lbt_qps": new_lbt, "new_auc": new_auc, "margin": cfg.margin,
              "max_auc_drop": cfg.max_auc_drop, "new_host": new_tags.get("recforge.profile_host", ""),
              "dag_run_id": dag_run_id}
    if incumbent_version is None:
        return Blessing("first_champion", "no champion for this target yet", **common)
    incumbent_tags = incumbent_tags or {}
    inc_lbt, inc_auc = tag_number(incumbent_tags, "recforge.lbt_qps"), tag_number(incumbent_tags, "recforge.auc")
    common |= {"compared_with": incumbent_version, "incumbent_lbt_qps": inc_lbt, "incumbent_auc": inc_auc,
               "incumbent_host": incumbent_tags.get("recforge.profile_host", "")}
    if new_lbt is None or new_auc is None:
        return Blessing("kept_incumbent", "the new version has no recforge.lbt_qps/recforge.auc tags", **common)
    if inc_lbt is None or inc_auc is None or inc_lbt <= 0:
        return Blessing("kept_incumbent", f"incumbent v{incumbent_version} has no usable recforge.lbt_qps/"
                        "recforge.auc tags to compare with; compare by hand and move the alias with MLflow",
                        **common)
    slo = tag_number(new_tags, "recforge.p95_target_ms"), tag_number(incumbent_tags, "recforge.p95_target_ms")
    if None not in slo and slo[0] != slo[1]:
        return Blessing("kept_incumbent", f"profiled under another SLO (p95 <= {slo[0]} ms) than incumbent "
                        f"v{incumbent_version} (p95 <= {slo[1]} ms): LBTs do not compare; compare by hand", **common)
    gain = new_lbt / inc_lbt - 1
    common["lbt_gain"] = gain
    hosts = common["new_host"], common["incumbent_host"]
    caveat = "" if hosts[0] == hosts[1] else f" (profiled on different hosts {hosts[1]} -> {hosts[0]}: rough)"
    lbt_text = f"LBT {new_lbt:.1f} qps is {gain:+.1%} vs v{incumbent_version}'s {inc_lbt:.1f} qps{caveat}"
    if gain < cfg.margin:
        return Blessing("kept_incumbent", f"{lbt_text}, below the required {cfg.margin:+.1%} margin", **common)
    if new_auc < inc_auc - cfg.max_auc_drop:
        return Blessing("kept_incumbent", f"{lbt_text}, but AUC {new_auc:.4f} is {new_auc - inc_auc:+.4f} vs "
                        f"{inc_auc:.4f}, more than the allowed drop of {cfg.max_auc_drop}", **common)
    return Blessing("promoted", f"{lbt_text} (margin {cfg.margin:+.1%}), AUC {new_auc:.4f} vs {inc_auc:.4f} "
                    f"(allowed drop {cfg.max_auc_drop})", **common)


def promote_if_better(model: str, version: str, target: str, *, cfg: RegisterConfig | None = None,
                      dag_run_id: str = "") -> Blessing:
    """Judge ``version`` against ``champion-<target>``; when it wins, the champion becomes ``previous-<target>``
    and ``version`` the champion. The blessing is tagged on the version either way.

    Rerunning it for the version that is already champion changes nothing and returns the recorded blessing."""
    cfg = cfg or RegisterConfig()
    client = mlflow_client()
    champion_alias, previous_alias = alias(CHAMPION, target), alias(PREVIOUS, target)
    new = client.get_model_version(model, version)
    if new.tags.get("recforge.target") != target:
        raise ConfigError(f"{model} v{version} is registered for target {new.tags.get('recforge.target')!r}, "
                          f"not {target!r}")
    incumbent_version = model_aliases(client, model).get(champion_alias)
    if incumbent_version == version:  # a rerun after the promotion, or an alias set by hand
        recorded = Blessing.from_tags(new.tags)
        if recorded is not None and recorded.champion:
            return recorded
        return Blessing("already_champion", f"v{version} is {champion_alias} already", version=version,
                        dag_run_id=dag_run_id, rerun=True)
    incumbent_tags = client.get_model_version(model, incumbent_version).tags if incumbent_version else None
    if rolled_back := new.tags.get("recforge.rolled_back"):
        # a retried DAG run must not undo a rollback; a person can still move the alias by hand
        blessing = Blessing("kept_incumbent", f"v{version} was rolled back ({rolled_back}); it is not promoted "
                            "again automatically", version=version, compared_with=incumbent_version or "",
                            margin=cfg.margin, max_auc_drop=cfg.max_auc_drop, dag_run_id=dag_run_id)
    else:
        blessing = judge(new.tags, incumbent_version, incumbent_tags, cfg, version=version, dag_run_id=dag_run_id)
    for key, value in blessing.tags().items():
        client.set_model_version_tag(model, version, key, value)
    if blessing.champion:
        why = f"v{version} ({new.tags.get('recforge.variant')}) became {champion_alias}"
        if incumbent_version:
            _move_alias(client, model, previous_alias, incumbent_version, reason=why, dag_run_id=dag_run_id,
                        action="demote")
        _move_alias(client, model, champion_alias, version, reason=f"{blessing.decision}: {blessing.reason}",
                    dag_run_id=dag_run_id, action="promote")
    else:
        log.info("%s v%s stays a candidate for %s: %s", model, version, target, blessing.reason)
    return blessing


def rollback_alias(model: str, target: str, *, reason: str = "rollback", dag_run_id: str = "") -> dict[str, Any]:
    """champion-<target> back to previous-<target>. ``previous-<target>`` then points at the champion before the
    restored one (from the alias history), or is removed: repeated rollbacks walk back one champion at a time.

    Returns {model, target, from_version, to_version, previous_version}. ConfigError when there is no previous."""
    client = mlflow_client()
    champion_alias, previous_alias = alias(CHAMPION, target), alias(PREVIOUS, target)
    aliases = model_aliases(client, model)
    restored = aliases.get(previous_alias)
    if restored is None:
        raise ConfigError(f"{model} has no alias {previous_alias}: nothing to roll back to (champion is "
                          f"v{aliases.get(champion_alias, '-')}); move {champion_alias} by hand in MLflow if needed")
    bad = aliases.get(champion_alias)
    # the champion that the restored version replaced, the last time it became champion
    before = next((e["from_version"] for e in reversed(alias_history(model, target))
                   if e["alias"] == champion_alias and e["to_version"] == restored and e["action"] == "promote"),
                  None)
    before = None if before in (restored, bad) else before
    _move_alias(client, model, champion_alias, restored, reason=f"rollback of v{bad}: {reason}",
                dag_run_id=dag_run_id, action="rollback")
    _move_alias(client, model, previous_alias, before, reason=f"rollback of v{bad}: {reason}",
                dag_run_id=dag_run_id, action="rollback")
    if bad:
        client.set_model_version_tag(model, bad, "recforge.rolled_back", f"{_now()} {reason}")
    return {"model": model, "target": target, "from_version": bad, "to_version": restored, "previous_version": before}


# --------------------------------------------------------------------------------------------------------------
# One family, many families, the proposal


def register_family(candidate_run_id: str, *, cfg: RegisterConfig | Mapping[str, Any] | None = None,
                    dag_run_id: str = "") -> dict[str, Any]:
    """Select, register and judge the best variant per target of one trained family (its training run).

    Returns {family, model, candidate_run_id, targets: {target: {version, created, variant, lbt_qps, auc,
    decision, reason, champion, previous}}, skipped: [why]}. DataError when no variant is eligible anywhere."""
    if not isinstance(cfg, RegisterConfig):
        cfg = RegisterConfig.from_dict(cfg)
    variants, problems = load_profiled_variants(candidate_run_id)
    skipped = problems + [f"{v.family}/{v.variant} on {v.target}: {v.eligible()[1]}"
                          for v in variants if not v.eligible()[0]]
    chosen = select_best(variants)
    if not chosen:
        raise DataError(f"training run {candidate_run_id}: no parity-passing variant with a profile and LBT > 0 "
                        f"({'; '.join(skipped) or 'no variant runs'}); run profile_variants first")
    partition = data_partition(candidate_run_id)
    family = next(iter(chosen))[0]
    result: dict[str, Any] = {"family": family, "model": model_name(family, cfg),
                              "candidate_run_id": candidate_run_id, "targets": {}, "skipped": skipped}
    for (_family, target), choice in chosen.items():
        registered = register_version(choice, partition, cfg=cfg, dag_run_id=dag_run_id)
        blessing = promote_if_better(registered.model, registered.version, target, cfg=cfg, dag_run_id=dag_run_id)
        aliases = model_aliases(mlflow_client(), registered.model)
        result["targets"][target] = {
            "version": registered.version, "created": registered.created, "variant": choice.variant,
            "variant_run_id": choice.run_id, "lbt_qps": choice.lbt_qps, "auc": choice.auc,
            "decision": blessing.decision, "reason": blessing.reason, "compared_with": blessing.compared_with,
            "champion": aliases.get(alias(CHAMPION, target)), "previous": aliases.get(alias(PREVIOUS, target))}
    return result


def find_profiled_candidates(extras: Sequence[Mapping[str, Any] | None] = (), *, parent_run_id: str = "",
                             candidate_run_id: str = "", families: Sequence[str] = ()) -> list[dict[str, str]]:
    """[{family, candidate_run_id}] to register: the ``candidate_run_id`` given, else the families of the PROFILES
    event ``extras`` (the newest event per family wins), else the profiled training runs (``profile/summary.json``)
    of the nightly run ``parent_run_id`` (default: the latest finished one). DataError when there is none."""
    by_family: dict[str, str] = {}
    if candidate_run_id:
        run = mlflow_client().get_run(candidate_run_id)
        by_family[run.data.tags.get("recforge.family", "")] = candidate_run_id
    else:
        for extra in extras:
            for family, entry in ((extra or {}).get("families") or {}).items():
                if entry.get("candidate_run_id"):
                    by_family[family] = entry["candidate_run_id"]
    if not by_family:

        client = mlflow_client()
        experiment_id = _experiment_id(client)
        if not parent_run_id:
            latest = client.search_runs([experiment_id], "tags.`recforge.kind` = 'nightly' and "
                                        "attributes.status = 'FINISHED'", order_by=["start_time DESC"], max_results=1)
            if not latest:
                raise DataError("no finished nightly_retrain run in MLflow; run nightly_retrain first")
            parent_run_id = latest[0].info.run_id
        for run in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                      "tags.`recforge.stage` = 'train'"):
            profiled = any(a.path == f"{PROFILE_DIR}/summary.json"  # logged by profile_variants per family
                           for a in client.list_artifacts(run.info.run_id, PROFILE_DIR))
            if run.data.tags.get("recforge.family") != BASELINE_FAMILY and profiled:
                by_family[run.data.tags["recforge.family"]] = run.info.run_id
    chosen = [{"family": f, "candidate_run_id": r} for f, r in sorted(by_family.items())
              if not families or f in families]
    if not chosen:
        raise DataError(f"no profiled family to register (families {list(families) or 'all'}, found "
                        f"{sorted(by_family) or 'none'}); run profile_variants first")
    return chosen


def register_all(candidates: Sequence[Mapping[str, str]], *, cfg: RegisterConfig | Mapping[str, Any] | None = None,
                 dag_run_id: str = "") -> list[dict[str, Any]]:
    """:func:`register_family` for each {family, candidate_run_id}; a family that fails is reported on one line
    (``error``) and the others go on. RecForgeError when every family failed."""
    results = []
    for c in candidates:
        try:
            results.append(register_family(c["candidate_run_id"], cfg=cfg, dag_run_id=dag_run_id))
        except RecForgeError as err:
            log.error("register %s: %s", c["family"], err)
            results.append({"family": c["family"], "candidate_run_id": c["candidate_run_id"], "error": str(err)})
    if results and all("error" in r for r in results):
        raise RecForgeError("no family registered: " + "; ".join(f"{r['family']}: {r['error']}" for r in results))
    return results


def trigger_staging_rollout(proposal: Mapping[str, Any]) -> dict[str, Any]:
    """HOOK (auto_rollout_staging): where the nightly chain would hand a promotion to the rollout DAG for a
    *staging* fleet. Not wired yet: it triggers nothing and says so; wire it to the rollout DAG when it exists."""
    return {"triggered": False, "fleet": "staging",
            "note": f"would trigger a staging rollout of {proposal['model']} v{proposal['version']} on "
                    f"{proposal['target']}; the staging hook is not wired to the rollout DAG yet"}


def rollout_command(model: str, target: str, version: str) -> str:
    return f"make rollout MODEL={model} TARGET={target} VERSION={version}"


def propose_rollout(results: Sequence[Mapping[str, Any]], *, cfg: RegisterConfig | Mapping[str, Any] | None = None,
                    dag_run_id: str = "") -> dict[str, Any]:
    """The end of the nightly chain: for every version that became champion, the command a release manager runs
    (tag ``recforge.rollout_proposal`` on the version, and ``$RECFORGE_HOME/registry/proposals/<run>.md``).
    Touches no fleet; with ``auto_rollout_staging`` it also calls :func:`trigger_staging_rollout` (a stub)."""
    if not isinstance(cfg, RegisterConfig):
        cfg = RegisterConfig.from_dict(cfg)
    client = mlflow_client() if results else None
    proposals, unchanged = [], []
    for r in results:
        for target, t in sorted((r.get("targets") or {}).items()):
            if t["decision"] not in CHAMPION_DECISIONS:
                unchanged.append(f"{r['model']} {target}: v{t['version']} not promoted ({t['reason']})")
                continue
            proposal = {"model": r["model"], "target": target, "version": t["version"], "variant": t["variant"],
                        "decision": t["decision"], "reason": t["reason"],
                        "command": rollout_command(r["model"], target, t["version"])}
            client.set_model_version_tag(r["model"], t["version"], "recforge.rollout_proposal", proposal["command"])
            if cfg.auto_rollout_staging:
                proposal["staging"] = trigger_staging_rollout(proposal)
                client.set_model_version_tag(r["model"], t["version"], "recforge.staging_rollout",
                                             proposal["staging"]["note"])
            proposals.append(proposal)
    errors = [f"{r['family']}: {r['error']}" for r in results if "error" in r]
    lines = [f"# Rollout proposals of register_models run {dag_run_id or '(cli)'}", ""]
    lines += [f"- `{p['command']}`  # {p['variant']}: {p['reason']}" for p in proposals] or ["- none"]
    lines += ["", "Not promoted:", *[f"- {u}" for u in unchanged]] if unchanged else []
    lines += ["", "Failed:", *[f"- {e}" for e in errors]] if errors else []
    lines += ["", "Nothing was rolled out: run a command above to start the canary rollout."]
    file_name = re.sub(r"[^A-Za-z0-9_.-]", "_", dag_run_id or "cli") + ".md"
    path = config.recforge_home() / "registry" / "proposals" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    for p in proposals:
        log.info("proposed: %s", p["command"])
    return {"proposals": proposals, "not_promoted": unchanged, "failed": errors, "path": str(path)}


# --------------------------------------------------------------------------------------------------------------
# CLI


def show(*, families: Sequence[str] = (), target: str = "", history: int = 10,
         cfg: RegisterConfig | None = None) -> dict[str, Any]:
    """{model: {targets: {target: {champion, previous, variant, lbt_qps, auc}}, history: [last entries]}}."""
    cfg = cfg or RegisterConfig()
    client = mlflow_client()
    models = client.search_registered_models(f"name LIKE '{cfg.model_prefix}%'", max_results=1000)
    out: dict[str, Any] = {}
    for m in sorted(models, key=lambda m: m.name):
        family = m.tags.get("recforge.family", "")
        if families and family not in families:
            continue
        targets: dict[str, dict] = {}
        for name, version in sorted(m.aliases.items()):
            kind, _, tgt = name.partition("-")
            if kind not in (CHAMPION, PREVIOUS) or (target and tgt != target):
                continue
            tags = client.get_model_version(m.name, version).tags
            targets.setdefault(tgt, {})[kind] = {"version": version, "variant": tags.get("recforge.variant"),
                                                 "lbt_qps": tag_number(tags, "recforge.lbt_qps"),
                                                 "auc": tag_number(tags, "recforge.auc"),
                                                 "data_day": tags.get("recforge.data_day")}
        entries = json.loads(m.tags.get(HISTORY_TAG) or "[]")
        if target:
            entries = [e for e in entries if e["alias"].endswith(f"-{target}")]
        out[m.name] = {"targets": targets, "history": entries[-history:] if history else []}
    return out


def format_show(state: Mapping[str, Any]) -> str:
    if not state:
        return "no registered RecForge models"
    lines = []
    for model, s in state.items():
        lines.append(f"{model}")
        for tgt, t in sorted(s["targets"].items()):
            for kind in (CHAMPION, PREVIOUS):
                if kind in t:
                    v = t[kind]
                    lbt = "-" if v["lbt_qps"] is None else f"{v['lbt_qps']:.0f} qps"
                    auc = "-" if v["auc"] is None else f"{v['auc']:.4f}"
                    lines.append(f"  {kind}-{tgt}: v{v['version']} {v['variant']} (LBT {lbt}, AUC {auc}, "
                                 f"data {v['data_day']})")
        for e in s["history"]:
            lines.append(f"    {e['time']} {e['alias']}: v{e['from_version'] or '-'} -> v{e['to_version'] or '-'} "
                         f"[{e['action']}, {e['dag_run_id'] or 'cli'}] {e['reason']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["register", *argv]
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.registry.stage", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register the best profiled variants (the default command)")
    reg.add_argument("--family", action="append", help="family to register (repeatable; default: all profiled)")
    reg.add_argument("--candidate-run", default="", help="MLflow run id of one family's training run")
    reg.add_argument("--parent-run", default="", help="nightly parent run (default: the latest finished one)")
    reg.add_argument("--config", default="{}", help="RegisterConfig fields as JSON, e.g. '{\"margin\": 0.1}'")
    reg.add_argument("--dag-run-id", default="cli", help="recorded in tags and the alias history")
    reg.add_argument("--no-propose", action="store_true", help="do not write the rollout proposal")
    sh = sub.add_parser("show", help="print champions, previous versions and the alias history")
    sh.add_argument("--family", action="append", default=[])
    sh.add_argument("--target", default="")
    sh.add_argument("--history", type=int, default=10, help="last N alias moves per model (0: none)")
    sh.add_argument("--prefix", default=RegisterConfig.model_prefix, help="registered model name prefix")
    sh.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="champion-<target> back to previous-<target>")
    rb.add_argument("--family", default="")
    rb.add_argument("--model", default="", help="registered model name (default: <prefix><family>)")
    rb.add_argument("--target", required=True)
    rb.add_argument("--reason", default="manual rollback")
    args = parser.parse_args(argv)

    def step():
        if args.command == "show":
            state = show(families=args.family, target=args.target, history=args.history,
                         cfg=RegisterConfig(model_prefix=args.prefix))
            return state if args.json else format_show(state)
        if args.command == "rollback":
            if not (args.model or args.family):
                raise ConfigError("rollback needs --model or --family")
            return rollback_alias(args.model or model_name(args.family), args.target, reason=args.reason,
                                  dag_run_id="cli")
        overrides = json_object(args.config)
        if args.family:
            overrides["families"] = args.family
        cfg = RegisterConfig.from_dict(overrides)
        candidates = find_profiled_candidates(parent_run_id=args.parent_run, candidate_run_id=args.candidate_run,
                                              families=cfg.families)
        results = register_all(candidates, cfg=cfg, dag_run_id=args.dag_run_id)
        out: dict[str, Any] = {"results": results}
        if not args.no_propose:
            out["proposal"] = propose_rollout(results, cfg=cfg, dag_run_id=args.dag_run_id)
        return out

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
