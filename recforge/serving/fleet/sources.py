"""What a fleet serves (:class:`ModelSource`): an explicit model file (ONNX + feature spec, or TorchScript), a
registry champion, or the newest nightly's trained model, and the default choice between the last two
(``make fleet-up``)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts.layout import Catalog
from recforge.contracts.registry import MODEL_PREFIX, download_champion, mlflow_client
from recforge.core import config
from recforge.core.errors import ConfigError
from recforge.inference.model_file import read_model_file
from recforge.models.formats import TORCHSCRIPT
from recforge.serving.fleet.config import DEFAULT_FAMILY, DEFAULT_TARGET
from recforge.serving.fleet.state import fleet_dir


@dataclass(frozen=True)
class ModelSource:
    """One model version to serve: the Triton model name, version, model file (``onnx_path``: an ONNX file, or a
    TorchScript ``model.pt`` with fused embedding bags), spec (an ONNX model's feature spec; a TorchScript model's
    RmcSpec JSON, or None for the one inside the file) and (optional) profile, the SHA-256 the file must have
    (None: whatever it has), and a line saying where it came from."""

    model: str
    version: int
    onnx_path: str
    spec_path: str | None
    profile_path: str | None = None
    expected_sha256: str | None = None
    origin: str = "explicit"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def repository_spec(self) -> Any:
        """The spec recforge.inference.model_repo.write_model_repository takes for this file: the feature spec file
        of an ONNX model; the RmcSpec dict of a TorchScript one (None: the file's own)."""
        if read_model_file(self.onnx_path).format != TORCHSCRIPT:
            return self.spec_path
        return json.loads(Path(self.spec_path).read_text()) if self.spec_path else None


def explicit_source(onnx_path: str | Path, spec_path: str | Path | None, *, profile_path: str | Path | None = None,
                    model: str = "model", version: int = 1, expected_sha256: str | None = None) -> ModelSource:
    """Serve this model file (ONNX, or TorchScript) with this spec (optional for TorchScript, which carries its
    own) and profile (serving knobs and weights come from it)."""
    for what, path in (("model-file", onnx_path), ("spec", spec_path), ("profile", profile_path)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"--{what} {path} is not a file")
    if spec_path is None and read_model_file(onnx_path).format != TORCHSCRIPT:
        raise ConfigError(f"{onnx_path} is an ONNX model: give its feature spec (--spec)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"version must be an integer >= 1, got {version!r}")
    return ModelSource(model, version, str(onnx_path), str(spec_path) if spec_path is not None else None,
                       str(profile_path) if profile_path else None, expected_sha256, f"explicit {onnx_path}")


def registry_source(model: str, target: str, dest: str | Path) -> ModelSource:
    """The ``champion-<target>`` version of registered ``model`` (recforge.pipeline.registry.stage): its ONNX file
    (SHA-256 checked against the registry), its profile, and the feature spec of its training run, downloaded into
    ``dest``."""
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri())
    dest = Path(dest)
    onnx_path, info = download_champion(model, target, dest / "onnx")
    profile_path = None
    if info.get("profile_uri"):
        profile_path = dest / "profile.json"
        profile_path.write_text(mlflow.artifacts.load_text(info["profile_uri"]))
    parent = mlflow_client().get_run(info["run_id"]).data.tags.get("mlflow.parentRunId")
    if not parent:
        raise ConfigError(f"variant run {info['run_id']} of {model} v{info['version']} has no parent training run; "
                          "cannot find its feature spec")
    spec = mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="model_files/spec.json",
                                               dst_path=str(dest))
    return ModelSource(model, int(info["version"]), str(onnx_path), str(spec),
                       str(profile_path) if profile_path else None, info["onnx_sha256"],
                       f"registry {model}@{info['alias']} v{info['version']} ({info.get('family')}/"
                       f"{info.get('variant')}, variant run {info['run_id']})")


def nightly_source(family: str = DEFAULT_FAMILY, date: str | None = None) -> ModelSource:
    """The trained (fp32) model of ``family`` from the newest nightly run in the work folder (or of ``date``),
    served as ``recforge-<family>`` version 1."""
    catalog = Catalog.default()
    days = [day.name for day in catalog.trained_days(family) if date is None or day.name == date]
    if not days:
        raise ConfigError(f"no trained {family} model under {catalog.root}{' for ' + date if date else ''}; run "
                          "`make nightly` (or `make run`) first, or serve an explicit model (--model-file/--spec)")
    model_dir = catalog.model_dir(days[0], family)
    meta = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((model_dir / "model.json").read_text())
    run = f", training run {meta['run_id']}" if meta.get("run_id") else ""
    return ModelSource(MODEL_PREFIX + family, 1, str(model_dir / "model.onnx"), str(model_dir / "spec.json"), None,
                       None, f"nightly {days[0]} {family}/fp32{run}")


def registry_reachable(timeout_s: float = 2.0) -> bool:
    import requests

    uri = config.tracking_uri()
    if not uri.startswith("http"):
        return True  # a file/database store: no server to ask
    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).ok
    except requests.RequestException:
        return False


def default_source(family: str = DEFAULT_FAMILY, target: str = DEFAULT_TARGET, *, dest: str | Path | None = None,
                   ) -> tuple[ModelSource, list[str]]:
    """(source, notes): the registry champion ``recforge-<family>@champion-<target>`` when the registry answers and
    has one, else the newest nightly's trained model of ``family``."""
    notes = []
    if registry_reachable():
        try:
            return registry_source(MODEL_PREFIX + family, target, dest or fleet_dir() / "source"), notes
        except ConfigError as err:
            notes.append(f"no registry champion ({err}); serving the newest nightly model")
    else:
        notes.append(f"MLflow at {config.tracking_uri()} does not answer; serving the newest nightly model")
    return nightly_source(family), notes

