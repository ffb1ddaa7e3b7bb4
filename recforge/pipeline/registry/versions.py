"""Registering a version: the chosen variant of a (family, target) as a version of the registered model
``<prefix><family>`` (``recforge-dlrm``), with its identity and tags.

The version's source is the ONNX file the profile measured (``runs:/<variant run>/onnx/<file>.onnx``): its SHA-256
must equal the profile's ``onnx_sha256``, else the registration is refused. The version is tagged with the target,
variant, parity metrics, a profile summary, the SHA-256, the source runs and the data partition. A version is
identified by (variant run id, target) (tag ``recforge.identity``): a rerun finds it instead of creating a
duplicate.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from recforge.contracts import tags as T
from recforge.contracts.registry import CHAMPION, alias, is_error, mlflow_client
from recforge.core.errors import DataError
from recforge.core.hashing import sha256_file
from recforge.pipeline.registry.policy import ProfiledVariant, RegisterConfig, model_name, tag_value

log = logging.getLogger(__name__)


def identity(run_id: str, target: str) -> str:
    """What makes a version unique: one variant run measured on one target."""
    return f"{run_id}:{target}"


def find_version(client, name: str, run_id: str, target: str):
    """The version of ``name`` registered for (variant run, target), or None."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{T.IDENTITY}` = '{identity(run_id, target)}'", max_results=10)
    return min(found, key=lambda v: int(v.version)) if found else None


def version_tags(choice: ProfiledVariant, onnx_artifact: str, partition: Mapping[str, str],
                 dag_run_id: str) -> dict[str, str]:
    """The tags of a new version: what, for which target, how good, from what."""
    doc = choice.profile
    accuracy, target = doc["accuracy"], doc["target"]
    tags = {
        T.IDENTITY: identity(choice.run_id, choice.target),
        T.FAMILY: choice.family, T.VARIANT: choice.variant,
        T.TARGET: choice.target, T.TARGET_KIND: target["kind"], T.TARGET_DEVICE: target["device"],
        T.PARITY: choice.parity, T.AUC: accuracy["auc"], T.DELTA_AUC: accuracy["delta_auc"],
        T.LOGLOSS: accuracy.get("logloss"), T.SIZE_BYTES: choice.size_bytes,
        T.LBT_QPS: choice.lbt_qps, T.LBT_CAPPED: bool(doc.get("lbt_capped", False)),
        T.ITEMS_PER_S: doc["items_per_s"], T.P95_TARGET_MS: doc["p95_target_ms"],
        T.BEST_KNOBS: doc["search"]["best_knobs"], T.SEARCH_STRATEGY: doc["search"]["strategy"],
        T.PROFILE_HOST: doc["host"], T.PROFILE_MEASURED_AT: doc["measured_at"],
        T.PROFILE_CODE_VERSION: doc["code_version"],
        T.PROFILE_URI: f"runs:/{choice.run_id}/{choice.artifact}",
        T.ONNX_SHA256: doc["onnx_sha256"], T.ONNX_ARTIFACT: onnx_artifact,
        T.SOURCE_RUN_ID: choice.run_id, T.REGISTERED_BY_DAG_RUN: dag_run_id,
        **T.partition_tags(partition),
    }
    return {k: tag_value(v) for k, v in tags.items() if v is not None}


def measured_onnx_artifact(client, choice: ProfiledVariant, dest: str) -> tuple[str, str]:
    """(artifact path, sha256) of the ONNX file on the variant run that the profile measured.

    Raises DataError when the run has no ONNX file or none has the profile's SHA-256."""
    files = [a.path for a in client.list_artifacts(choice.run_id, "onnx") if a.path.endswith(".onnx")]
    where = f"{choice.family}/{choice.variant} (run {choice.run_id})"
    if not files:
        raise DataError(f"{where} has no onnx/*.onnx artifact; re-run compress_and_validate for it")
    wanted = choice.profile["onnx_sha256"]
    found = {}
    for path in files:
        found[path] = sha256_file(client.download_artifacts(choice.run_id, path, dest))
        if found[path] == wanted:
            return path, wanted
    seen = ", ".join(f"{p} has {s[:12]}…" for p, s in found.items())
    raise DataError(f"refusing to register {where} for target {choice.target}: its profile ({choice.artifact}) "
                    f"measured an ONNX file with SHA-256 {wanted[:12]}…, but {seen}; re-profile the variant "
                    "(profile_variants) so the registered file is the one measured")


def ensure_registered_model(client, name: str, family: str) -> None:
    """Create the registered model ``name`` of ``family`` unless it exists."""
    try:
        client.create_registered_model(
            name, tags={T.FAMILY: family, T.KIND: "serving-model"},
            description=f"RecForge {family}: per hardware target, the parity-passing compressed variant with the "
                        "highest latency-bounded throughput. Aliases champion-<target> (served) and "
                        f"previous-<target> (rollback); alias history in the tag {T.ALIAS_HISTORY}.")
    except Exception as err:  # noqa: BLE001 - MlflowException; imported lazily
        if not is_error(err, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


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
    ensure_registered_model(client, name, choice.family)
    existing = find_version(client, name, choice.run_id, choice.target)
    if existing is not None:
        if existing.tags.get(T.ONNX_SHA256) != choice.profile["onnx_sha256"]:
            log.warning("%s v%s (%s on %s) was registered from a profile of another ONNX file; its tags are kept",
                        name, existing.version, choice.variant, choice.target)
        return RegisteredVersion(name, existing.version, choice.target, choice.variant, created=False)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_artifact, _sha = measured_onnx_artifact(client, choice, tmp)
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
