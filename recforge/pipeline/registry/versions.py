"""Registering a version: the chosen variant of a (family, target) as a version of the registered model
``<prefix><family>`` (``recforge-dlrm``), with its identity and tags.

The version's source is an MLflow Model folder on the variant run (``<run artifact URI>/registered_model/<file
stem>``): the ONNX file the profile measured, byte for byte (its SHA-256 must equal the profile's ``onnx_sha256``,
else the registration is refused), and an ``MLmodel`` with the ``onnx`` flavor and the graph's signature, which the
registry's version page shows as its input/output schema. The version is tagged with the target,
variant, the figures a person compares (AUC, ΔAUC, size, LBT and whether it was capped, the SLO, the knobs), the
SHA-256, the source run and the data partition; the rest of the profile's provenance (device, measured at, code
version, search strategy, items/s, logloss) is a markdown table in the version's description. A version is
identified by (variant run id, target) (tag ``recforge.identity``): a rerun finds it instead of creating a
duplicate.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts import tags as T
from recforge.contracts.registry import CHAMPION, alias, is_error, mlflow_client
from recforge.core.cpusets import parse_cpu_list
from recforge.core.errors import DataError
from recforge.core.hashing import sha256_file
from recforge.models.formats import format_of_file_name
from recforge.pipeline.registry.description import model_description
from recforge.pipeline.registry.policy import (
    ProfiledVariant,
    RegisterConfig,
    legacy_apparatus,
    model_name,
    tag_value,
)

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
    """The tags of a new version: what, for which target, how good (what a person compares), from what."""
    doc = choice.profile
    accuracy, target = doc["accuracy"], doc["target"]
    tags = {
        T.IDENTITY: identity(choice.run_id, choice.target),
        T.FAMILY: choice.family, T.VARIANT: choice.variant,
        T.TARGET: choice.target, T.TARGET_KIND: target["kind"],
        T.PARITY: choice.parity, T.AUC: accuracy["auc"], T.DELTA_AUC: accuracy["delta_auc"],
        T.SIZE_BYTES: choice.size_bytes,
        T.LBT_QPS: choice.lbt_qps, T.LBT_CAPPED: bool(doc.get("lbt_capped", False)),
        T.P95_TARGET_MS: doc["p95_target_ms"], T.BEST_KNOBS: doc["search"]["best_knobs"],
        T.PROFILE_APPARATUS: apparatus_text(target),
        T.PROFILE_HOST: doc["host"], T.PROFILE_URI: f"runs:/{choice.run_id}/{choice.artifact}",
        T.ONNX_SHA256: doc["onnx_sha256"], T.SOURCE_RUN_ID: choice.run_id, T.REGISTERED_BY_DAG_RUN: dag_run_id,
        T.MODEL_FORMAT: format_of_file_name(onnx_artifact),
        **T.partition_tags({k: v for k, v in partition.items() if k in PARTITION_TAGS}),
    }
    return {k: tag_value(v) for k, v in tags.items() if v is not None}


def apparatus_text(target: Mapping[str, Any]) -> str:
    """The profile's apparatus as the registry compares it: the placement and, isolated, each side's CPU count
    ("isolated: server 1 CPU(s), load generator 1 CPU(s)"); for a profile from before it was recorded, what its
    target kind had then (:func:`policy.legacy_apparatus`)."""
    doc = target.get("apparatus")
    if doc is None:
        return legacy_apparatus(target["kind"])
    if doc["placement"] != "isolated":
        return doc["placement"]
    server, client = (len(parse_cpu_list(doc[key])) for key in ("server_cpus", "client_cpus"))
    return f"isolated: server {server} CPU(s), load generator {client} CPU(s)"


PARTITION_TAGS = ("data_day", "data_fingerprint", "git_commit", "candidate_run_id")  # the rest: description


def lbt_text(lbt_qps: float, capped: bool) -> str:
    """"2,000 qps", or "≥ 2,000 qps (capped)" when the profile's probe limit was reached with the SLO still met."""
    return f"≥ {lbt_qps:,.0f} qps (capped)" if capped else f"{lbt_qps:,.0f} qps"


def version_description(choice: ProfiledVariant, onnx_artifact: str, partition: Mapping[str, str]) -> str:
    """The version's description (markdown): its headline figures, then the provenance not kept as tags."""
    doc = choice.profile
    accuracy, target = doc["accuracy"], doc["target"]
    lbt = lbt_text(choice.lbt_qps, bool(doc.get("lbt_capped", False)))
    provenance = {
        "target kind / device": f"{target['kind']} / {target['device']}",
        "items/s at the LBT": f"{doc['items_per_s']:,.0f}",
        "test logloss": "—" if accuracy.get("logloss") is None else f"{accuracy['logloss']:.4f}",
        "search": doc["search"]["strategy"], "profile measured at": doc["measured_at"],
        "profile code version": doc["code_version"], "ONNX artifact": f"`{onnx_artifact}`",
        **{key.replace("_", " "): f"`{value}`" for key, value in partition.items() if key not in PARTITION_TAGS},
    }
    rows = "\n".join(f"| {key} | {value} |" for key, value in provenance.items())
    return (f"**{choice.family}/{choice.variant}** for target `{choice.target}`: LBT {lbt} at p95 ≤ "
            f"{doc['p95_target_ms']:g} ms, test AUC {choice.auc:.4f} (ΔAUC {accuracy['delta_auc']:+.4f} vs fp32)."
            f"\n\n| provenance | |\n|---|---|\n{rows}\n")


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
        client.create_registered_model(name, tags={T.FAMILY: family, T.KIND: "serving-model"},
                                       description=model_description(family, {}, []))
    except Exception as err:  # noqa: BLE001 - MlflowException; imported lazily
        if not is_error(err, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def onnx_signature(onnx_path: Path):
    """The MLflow ModelSignature of an ONNX file: its graph's named input and output tensors (dtype, shape; -1 for
    a symbolic dimension such as the batch)."""
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), shape, value.name)

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return ModelSignature(Schema([spec(v) for v in graph.input if v.name not in initializers]),
                          Schema([spec(v) for v in graph.output]))


MODEL_FOLDER = "registered_model"  # a variant run's MLflow Models: <MODEL_FOLDER>/<ONNX file stem>/


def log_onnx_model(client, run_id: str, onnx_file: Path, signature) -> str:
    """Log ``onnx_file`` unchanged (same bytes, same name) with an ``MLmodel`` (``onnx`` flavor, ``signature``) as
    an MLflow Model folder on run ``run_id``; returns its artifact path. Rerun: the same files again."""
    import onnx
    from mlflow.models import Model

    folder = f"{MODEL_FOLDER}/{onnx_file.stem}"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / onnx_file.stem
        model_dir.mkdir()
        shutil.copyfile(onnx_file, model_dir / onnx_file.name)  # a copy, not onnx.save: the measured bytes
        model = Model(run_id=run_id, artifact_path=folder, signature=signature)
        model.add_flavor("onnx", onnx_version=onnx.__version__, data=onnx_file.name,
                         providers=["CPUExecutionProvider"], code=None)
        model.model_size_bytes = onnx_file.stat().st_size
        model.save(str(model_dir / "MLmodel"))
        client.log_artifacts(run_id, str(model_dir), folder)
    return folder


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

    Its source is an MLflow Model folder (:func:`log_onnx_model`) holding the ONNX artifact of the variant run
    whose SHA-256 is the profile's ``onnx_sha256``; DataError when there is none (nothing is created then)."""
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
        # where download_artifacts put it (the folder layout under tmp differs between artifact stores)
        onnx_file = next(Path(tmp).rglob(Path(onnx_artifact).name))
        model_folder = log_onnx_model(client, choice.run_id, onnx_file, onnx_signature(onnx_file))
    tags = version_tags(choice, onnx_artifact, partition, dag_run_id)
    # the run's artifact URI, not runs:/: the server resolves a runs:/ source of a proxied artifact store only
    # with an http tracking URI of its own, so the UI's schema request (MLmodel of the version) failed
    source = f"{client.get_run(choice.run_id).info.artifact_uri.rstrip('/')}/{model_folder}"
    version = client.create_model_version(
        name, source=source, run_id=choice.run_id, tags=tags,
        await_creation_for=0,  # a run artifact is READY at once; MLflow's default poll only sleeps
        description=version_description(choice, onnx_artifact, partition))
    log.info("registered %s v%s: %s for %s (LBT %s, AUC %.4f)", name, version.version, choice.variant,
             choice.target, lbt_text(choice.lbt_qps, bool(choice.profile.get("lbt_capped"))), choice.auc)
    return RegisteredVersion(name, version.version, choice.target, choice.variant, created=True)
