"""A model file as the serving side sees it: its format (read from the file itself), its TorchScript metadata, and
the hardware targets that can serve that format.

:func:`read_model_file` tells an ONNX file from a TorchScript one without importing torch or onnx: a TorchScript
``model.pt`` is a zip archive (it starts with a zip header) carrying ``recforge.json`` (written by
``recforge.models.synthetic_fused``); anything else is taken for ONNX (onnxruntime says so when it is not). A
format the caller declares (e.g. the registry's ``recforge.model_format`` tag) must be the one the file has.

:data:`TARGET_FORMATS` is what each target serves: TorchScript only on ``cpu-triton`` (Triton's PyTorch backend in
production, a python-backend ``model.py`` running ``torch.jit.load`` here); the onnxruntime targets run ONNX graphs
only, and the fused models' FBGEMM kernels and dynamic INT8 Linears have only been built and checked on the CPU,
so ``gpu-triton`` serves ONNX only. :func:`check_servable` refuses the rest with one line naming the model.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recforge.contracts.targets import (
    CPU_ONNXRUNTIME,
    CPU_TRITON,
    GPU_ONNXRUNTIME,
    GPU_TRITON,
    HYBRID_ONNXRUNTIME,
    check_target,
)
from recforge.core.errors import ConfigError
from recforge.models.formats import MODEL_FORMATS, ONNX, TORCHSCRIPT, TORCHSCRIPT_METADATA_FILE, check_model_format

TARGET_FORMATS: dict[str, tuple[str, ...]] = {
    CPU_ONNXRUNTIME: (ONNX,),
    CPU_TRITON: (ONNX, TORCHSCRIPT),
    GPU_ONNXRUNTIME: (ONNX,),
    GPU_TRITON: (ONNX,),
    HYBRID_ONNXRUNTIME: (ONNX,),
}
FILE_NAMES = {ONNX: "model.onnx", TORCHSCRIPT: "model.pt"}  # the name in a repository's version folder
ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header: how torch.jit.save's archive starts


@dataclass(frozen=True)
class ModelFile:
    """A model file and its format; ``metadata`` is a TorchScript file's ``recforge.json`` (empty for ONNX)."""

    path: Path
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def served_name(self) -> str:
        return FILE_NAMES[self.format]


def torchscript_metadata(path: Path) -> dict[str, Any] | None:
    """The ``recforge.json`` inside a TorchScript zip (``<archive>/extra/recforge.json``); None when ``path`` does
    not start as a zip archive does (an ONNX protobuf never does). ConfigError when it is a zip without readable
    RecForge metadata."""
    with open(path, "rb") as fh:
        if fh.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA_FILE}")]
            if not names:
                raise ConfigError(f"{path}: a zip archive without {TORCHSCRIPT_METADATA_FILE}: not a TorchScript model "
                                  "written by recforge.models.synthetic_fused.save_torchscript")
            metadata = json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ConfigError(f"{path}: its {TORCHSCRIPT_METADATA_FILE} cannot be read ({err})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != TORCHSCRIPT:
        raise ConfigError(f"{path}: {TORCHSCRIPT_METADATA_FILE} does not say format {TORCHSCRIPT!r}")
    if not isinstance(metadata.get("spec"), dict):
        raise ConfigError(f"{path}: {TORCHSCRIPT_METADATA_FILE} has no spec (tables and inputs of the model)")
    return metadata


def read_model_file(path: str | Path, declared_format: str | None = None) -> ModelFile:
    """The file at ``path`` with its format (and TorchScript metadata). ``declared_format`` (what the registry or
    the caller says it is) must match what the file is: a ConfigError naming both otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} is not a file")
    metadata = torchscript_metadata(path)
    found = TORCHSCRIPT if metadata is not None else ONNX
    if declared_format is not None and check_model_format(declared_format, "declared model format") != found:
        raise ConfigError(f"{path} is declared {declared_format!r} but the file is {found!r}")
    return ModelFile(path, found, metadata or {})


def check_servable(model_name: str, model_format: str, target: str) -> None:
    """A one-line ConfigError when ``target`` cannot serve a model of ``model_format``."""
    check_target(target)
    check_model_format(model_format)
    if model_format not in TARGET_FORMATS[target]:
        able = sorted(t for t, formats in TARGET_FORMATS.items() if model_format in formats)
        raise ConfigError(f"model {model_name!r}: format {model_format!r} cannot be served on target {target!r} "
                          f"(it serves {list(TARGET_FORMATS[target])}; {model_format} is served on {able})")


__all__ = ["FILE_NAMES", "MODEL_FORMATS", "ModelFile", "TARGET_FORMATS", "check_servable", "read_model_file",
           "torchscript_metadata"]
