"""The formats a RecForge model file is written in, named once (torch-free: the registry, the model-repository
generator and the DAG files read them without importing torch).

* ``onnx``: the ``torch.onnx`` export of ``recforge.models.export`` (the MovieLens families and their compressed
  variants, the synthetic models' Gather + CumSum graph), run by onnxruntime;
* ``torchscript``: ``torch.jit.script`` of the models with fused FBGEMM embedding bags
  (``recforge.models.synthetic_fused``), a ``model.pt`` zip that carries :data:`TORCHSCRIPT_METADATA_FILE`
  (format, precisions, spec, torch version) beside its code.

Why TorchScript carries the fused bags: ``docs/serving.md``.
"""

from __future__ import annotations

from pathlib import PurePath

from recforge.core.errors import ConfigError

ONNX = "onnx"
TORCHSCRIPT = "torchscript"
MODEL_FORMATS: tuple[str, ...] = (ONNX, TORCHSCRIPT)
FILE_SUFFIXES: dict[str, str] = {".onnx": ONNX, ".pt": TORCHSCRIPT}
TORCHSCRIPT_METADATA_FILE = "recforge.json"  # inside model.pt (torch.jit.save's _extra_files)


def check_model_format(name: str, what: str = "model format") -> str:
    """``name`` when it is a known format; a ConfigError listing the known ones otherwise."""
    if name not in MODEL_FORMATS:
        raise ConfigError(f"{what} {name!r} is not one of {MODEL_FORMATS}")
    return name


def format_of_file_name(name: str | PurePath) -> str:
    """The format a model file's name says (``.onnx`` / ``.pt``); ConfigError naming the file otherwise."""
    suffix = PurePath(str(name)).suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ConfigError(f"{name}: a model file must end with one of {sorted(FILE_SUFFIXES)} to say its format")
    return FILE_SUFFIXES[suffix]


__all__ = ["FILE_SUFFIXES", "MODEL_FORMATS", "ONNX", "TORCHSCRIPT", "TORCHSCRIPT_METADATA_FILE",
           "check_model_format", "format_of_file_name"]
