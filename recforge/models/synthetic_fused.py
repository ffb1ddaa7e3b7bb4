"""The synthetic models with fused embedding bags, and their TorchScript files (the format that carries them).

:func:`fused_model` copies a synthetic model -- an RMC (``recforge.models.synthetic.SyntheticDLRM``), MT-WnD or DIEN
(``recforge.models.mt_wnd``, ``recforge.models.dien``) -- with its ``pooling`` replaced by :class:`FusedPooling`
(``recforge.models.embedding_bags.FusedEmbeddingBags``: fp32, int8 or int4 rows) and its Linear layers in fp32 or
dynamic INT8 (``torch.ao`` quantized Linear: int8 weights per tensor, activations quantized per batch, FBGEMM
GEMMs). Same inputs (``dense``, ``indices``, ``lengths``) and output (``probability``) as the ONNX export.

The fused kernels are PyTorch operators (``quantized::embedding_bag_*``) that ONNX has no op for, so these models
are saved as TorchScript (:func:`save_torchscript`): a ``model.pt`` that Triton's PyTorch (LibTorch) backend loads
in production and that the python backend (or the bench) loads here with ``torch.jit.load``. The file carries
``recforge.json`` (format, precisions, spec, torch version) beside the code. :func:`load_torchscript` refuses, with
a ConfigError naming the table, a file whose tables hold fewer rows than the ids its spec (or the caller's) declares;
:class:`TorchScriptSession` runs it on numpy feeds, checks every id of its first call against its own table, and
turns an id refused in TorchScript into a one-line DataError. The choice of format: ``docs/serving.md``.
"""

import copy
import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recforge.core.errors import ConfigError, DataError, first_line
from recforge.models.arches import JaggedSumPooling
from recforge.models.dien import SyntheticDIEN
from recforge.models.embedding_bags import FusedEmbeddingBags, check_declared_rows, check_precision
from recforge.models.formats import TORCHSCRIPT as FORMAT
from recforge.models.formats import TORCHSCRIPT_METADATA_FILE as METADATA_FILE
from recforge.models.mt_wnd import SyntheticMtWnd
from recforge.models.synthetic import INPUT_NAMES, DienSpec, JaggedTables, MtWndSpec, RmcSpec, SyntheticDLRM

SyntheticModel = SyntheticDLRM | SyntheticMtWnd | SyntheticDIEN

MLP_PRECISIONS = ("fp32", "int8")
# name -> (table precision, MLP precision); "fp32" is the ONNX model's arithmetic with fused bags
FUSED_VARIANTS: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "fp32"),
    "int8_mlp": ("fp32", "int8"),
    "int8_tables": ("int8", "fp32"),
    "int4_tables": ("int4", "fp32"),
    "int8_tables+int8_mlp": ("int8", "int8"),
    "int4_tables+int8_mlp": ("int4", "int8"),
}


def variant_precisions(variant: str) -> tuple[str, str]:
    """(table precision, MLP precision) of a fused variant name."""
    if variant not in FUSED_VARIANTS:
        raise ConfigError(f"unknown fused variant {variant!r}; choose one of {sorted(FUSED_VARIANTS)}")
    return FUSED_VARIANTS[variant]


def synthetic_model(spec: JaggedTables, seed: int = 0) -> SyntheticModel:
    """The random-weight model of ``spec``'s kind (RmcSpec -> SyntheticDLRM, MtWndSpec, DienSpec)."""
    for kind, model_class in ((RmcSpec, SyntheticDLRM), (MtWndSpec, SyntheticMtWnd), (DienSpec, SyntheticDIEN)):
        if isinstance(spec, kind):
            return model_class(spec, seed=seed)
    raise ConfigError(f"no synthetic model for a {type(spec).__name__}")


def table_names(spec: JaggedTables) -> list[str]:
    return [f"{spec.name}.table{t}" for t in range(spec.num_tables)]


class FusedPooling(FusedEmbeddingBags):
    """``recforge.models.arches.JaggedSumPooling``'s contract ([N] ids + [B, T] lengths -> [B, T, D]) through one
    fused bag kernel: what replaces a synthetic model's ``pooling``."""

    def forward(self, indices: torch.Tensor, lengths: torch.Tensor,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(indices, lengths, per_sample_weights).reshape(
            lengths.shape[0], self.num_tables, self.embedding_dim)


def fused_model(source: SyntheticModel, table_precision: str = "fp32", mlp_precision: str = "fp32") -> nn.Module:
    """A copy of the synthetic model ``source`` (RMC, MT-WnD or DIEN: every one pools its jagged ids through its
    ``pooling`` module) whose ``pooling`` is a :class:`FusedPooling` of ``table_precision`` rows, and whose
    Linear layers are dynamic INT8 when ``mlp_precision`` is "int8". Same inputs and output; the source's table is
    not copied (an fp32 table is shared)."""
    check_precision(table_precision)
    if mlp_precision not in MLP_PRECISIONS:
        raise ConfigError(f"MLP precision must be one of {MLP_PRECISIONS}, got {mlp_precision!r}")
    if not isinstance(getattr(source, "pooling", None), JaggedSumPooling):
        raise ConfigError(f"{type(source).__name__} has no jagged 'pooling' module to fuse")
    spec = source.spec
    pooling = FusedPooling(source.pooling.table.weight, [spec.rows_per_table] * spec.num_tables,
                           precision=table_precision, table_names=table_names(spec))
    model = copy.deepcopy(source, memo={id(source.pooling): pooling})  # everything but the table, copied
    if mlp_precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch 2.13 announces quantized tensors' removal; they still run
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.requires_grad_(False)
    model.metadata = {"format": FORMAT, "model": type(source).__name__, "table_precision": table_precision,
                      "mlp_precision": mlp_precision, "spec": spec.to_dict(), "torch": torch.__version__,
                      "table_bytes": pooling.stored_bytes()}
    return model.eval()


def fused_variant(source: SyntheticModel, variant: str) -> nn.Module:
    return fused_model(source, *variant_precisions(variant))


def save_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """``torch.jit.script`` the model and save it at ``path`` with its metadata (``recforge.json``) inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit.script deprecated; it is still what Triton's LibTorch backend loads
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        scripted = torch.jit.script(model.eval())
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: json.dumps(model.metadata)})
    return path


def load_torchscript(path: str | os.PathLike, declared: JaggedTables | None = None) -> tuple[Any, dict]:
    """(scripted module, its metadata). ConfigError when the file is not a RecForge TorchScript model, or when one of
    its tables has fewer rows than the ids of its own spec -- or of ``declared``, the spec the caller serves it
    for -- can address (named: the table)."""
    path = Path(path)
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a loadable TorchScript model ({first_line(err)})") from None
    try:
        metadata = json.loads(extra[METADATA_FILE])
    except json.JSONDecodeError:
        metadata = {}
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path}: no {METADATA_FILE} of format {FORMAT!r} inside: not written by save_torchscript")
    rows = (module.pooling.row_offsets[1:] - module.pooling.row_offsets[:-1]).tolist()
    names = list(module.pooling.table_names)
    own = JaggedTables(**{f.name: metadata["spec"][f.name] for f in dataclasses.fields(JaggedTables)})
    for spec in (own, declared) if declared is not None else (own,):
        check_declared_rows(names, rows, [spec.rows_per_table] * spec.num_tables, f"{path} (spec {spec.name!r})")
    return module, metadata


class TorchScriptSession:
    """A loaded fused model run on numpy feeds (``dense``, ``indices``, ``lengths``) -> probability [B] (numpy),
    under ``torch.no_grad``. The first call checks every id against its own table (O(N), once); every call checks
    the ids against the fused table (the model does). A refused id is a DataError naming the table."""

    def __init__(self, path: str | os.PathLike, declared: JaggedTables | None = None):
        self.path = Path(path)
        self.module, self.metadata = load_torchscript(self.path, declared)
        self.checked_first_call = False

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in INPUT_NAMES]
        with torch.no_grad():
            if not self.checked_first_call:
                problem = self.module.pooling.id_problem(tensors[1], tensors[2], True)
                if problem:
                    raise DataError(f"{self.path.name}: {problem}")
                self.checked_first_call = True
            try:
                return self.module(*tensors).numpy()
            except torch.jit.Error as err:
                message = str(err)
                if "ValueError: " not in message:
                    raise
                raise DataError(f"{self.path.name}: {message.rsplit('ValueError: ', 1)[1].strip()}") from None


__all__ = [
    "FORMAT", "FUSED_VARIANTS", "METADATA_FILE", "MLP_PRECISIONS", "FusedPooling", "SyntheticModel",
    "TorchScriptSession", "fused_model", "fused_variant", "load_torchscript", "save_torchscript", "synthetic_model",
    "table_names", "variant_precisions",
]
