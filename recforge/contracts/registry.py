"""The model registry's contract: registered-model names, the per-target aliases and reading a champion.

A version registered by the registry stage (``recforge.pipeline.registry``) carries the SHA-256 of its ONNX file,
its variant, family, LBT, AUC and profile URI as tags; ``champion-<target>`` names the version serving a target
and ``previous-<target>`` the one before it. The fleet and rollout read champions through this module; only the
registry stage writes them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.contracts import tags as T
from recforge.core import config
from recforge.core.errors import ConfigError, DataError, first_line
from recforge.core.hashing import sha256_file as file_sha256

CHAMPION, PREVIOUS = "champion", "previous"
MODEL_PREFIX = "recforge-"  # registered model of a family = <prefix><family> (recforge-dlrm); the fleet serves these
ALIAS_PART = re.compile(r"^[A-Za-z0-9_-]+$")  # MLflow aliases: alphanumerics, "_" and "-"


def mlflow_client():
    """An MLflow client of the tracking server (``MLFLOW_TRACKING_URI``), set as mlflow's default too."""
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri())
    return mlflow.MlflowClient(config.tracking_uri())


def is_error(err: Exception, *codes: str) -> bool:
    return getattr(err, "error_code", None) in codes


def model_aliases(client, model: str) -> dict[str, str]:
    return dict(client.get_registered_model(model).aliases)


def tag_number(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def alias(kind: str, target: str) -> str:
    """``champion-<target>`` / ``previous-<target>``; ConfigError for a target name MLflow cannot alias."""
    if not ALIAS_PART.fullmatch(target):
        raise ConfigError(f"target name {target!r} cannot be part of an MLflow alias (letters, digits, '_', '-'); "
                          "rename the target in the profile config")
    return f"{kind}-{target}"


def champion(model: str, target: str, *, with_profile: bool = True) -> dict[str, Any]:
    """What the rollout stage serves for ``target``: the champion version's source URI (an MLflow Model folder
    holding the measured ONNX file and its signature, ``<variant run's artifact URI>/registered_model/<file stem>``;
    older versions: the ONNX file itself, ``runs:/<variant run>/onnx/<file>.onnx``), SHA-256, variant and profile
    (the document itself when ``with_profile``). ConfigError when the target has no champion.

    Fetch the file with :func:`download_champion` (it checks the SHA-256); ``models_uri`` names the version in
    the registry."""
    client = mlflow_client()
    name = alias(CHAMPION, target)
    try:
        version = client.get_model_version_by_alias(model, name)
    except Exception as err:  # noqa: BLE001 - MlflowException; imported lazily
        if is_error(err, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"{model} has no alias {name} ({first_line(err)}); run register_models first") from None
        raise
    tags = version.tags
    info = {"model": model, "version": version.version, "alias": name, "target": target,
            "models_uri": f"models:/{model}@{name}", "source": version.source, "run_id": version.run_id,
            "onnx_sha256": tags.get(T.ONNX_SHA256), "variant": tags.get(T.VARIANT),
            "family": tags.get(T.FAMILY), "lbt_qps": tag_number(tags, T.LBT_QPS),
            "auc": tag_number(tags, T.AUC), "profile_uri": tags.get(T.PROFILE_URI),
            "previous_version": model_aliases(client, model).get(alias(PREVIOUS, target)), "tags": dict(tags)}
    if with_profile and info["profile_uri"]:
        import mlflow

        info["profile"] = json.loads(mlflow.artifacts.load_text(info["profile_uri"]))
    return info


def download_version_onnx(source: str, dest: str | Path) -> Path:
    """The ONNX file of a version's ``source``, downloaded into ``dest``: the source itself when it is a file, else
    the one ``*.onnx`` file of the MLflow Model folder it names (the caller checks the SHA-256)."""
    import mlflow

    Path(dest).mkdir(parents=True, exist_ok=True)
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest)))
    if path.is_dir():
        files = sorted(path.glob("*.onnx"))
        if len(files) != 1:
            raise DataError(f"{source} is a folder with {len(files)} .onnx files, not one; re-register the variant")
        path = files[0]
    return path


def download_champion(model: str, target: str, dest: str | Path) -> tuple[Path, dict[str, Any]]:
    """(local ONNX file, :func:`champion` info) of ``champion-<target>``; DataError unless the file's SHA-256 is
    the one registered."""
    info = champion(model, target, with_profile=False)
    path = download_version_onnx(info["source"], dest)
    if not path.is_file() or file_sha256(path) != info["onnx_sha256"]:
        raise DataError(f"{model} v{info['version']} ({info['alias']}): {info['source']} downloaded to {path} does "
                        f"not have the registered SHA-256 {str(info['onnx_sha256'])[:12]}…; do not serve it, "
                        "re-register the variant")
    return path, info
