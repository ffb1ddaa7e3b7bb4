"""The model-family registry: every family's name, class, role and compression metadata, defined once.

Torch-free on purpose: DAG files and configs read the family names without importing torch; the model class
is imported only when a model is built (:meth:`Family.model_class`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# DeepRecSys (Gupta et al. 2020) Table I, the MLP part of the production-class models: dense-FC is the
# bottom MLP, predict-FC the top MLP. The paper's table counts, table sizes and lookups per table are NOT
# here: the tables come from the dataset's FeatureSpec, and scaling them up to production size is the
# job of the later synthetic profiling (recforge.models.synthetic).
DLRM_RMC1: dict[str, Any] = {"embedding_dim": 32, "bottom_mlp": (256, 128, 32), "top_mlp": (256, 64, 1)}
DLRM_RMC2: dict[str, Any] = {"embedding_dim": 64, "bottom_mlp": (256, 128, 64), "top_mlp": (512, 128, 1)}
DLRM_RMC3: dict[str, Any] = {"embedding_dim": 32, "bottom_mlp": (2560, 512, 32), "top_mlp": (512, 128, 1)}
# Sized for MovieLens-100K on 2 CPU cores: seconds per epoch (DLRM's defaults).
DLRM_SMALL: dict[str, Any] = {"embedding_dim": 16, "bottom_mlp": (64, 16), "top_mlp": (64, 32, 1)}


@dataclass(frozen=True)
class MlpWidths:
    """Which hyperparameter an MLP of a family is built from.

    ``class_adds_output``: the family's class appends the MLP's output layer itself, so the hyperparameter
    lists only the hidden sizes (e.g. Wide&Deep's ``deep_mlp``; the logit layer is added).
    """

    hyperparam: str
    class_adds_output: bool = False


@dataclass(frozen=True)
class Family:
    """One model family: how to build it and what compression may do to it."""

    name: str
    model_class_path: str  # "<module>:<class>", imported on first use
    baseline: bool = False  # the reference every deep family is compared with (not compressed, no candidate)
    # prunable MLPs: module name in the model (``model.named_modules()``) -> the hyperparameter it is built from
    mlp_widths: Mapping[str, MlpWidths] = field(default_factory=dict)
    # embedding-dimension hyperparameters a distilled student shrinks (with the MLP widths above)
    embedding_hyperparams: tuple[str, ...] = ()
    # named hyperparameter sets, picked with ``build_model(..., preset=name)``
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # sets, in resolved hyperparameters, the widths that what consumes them dictates (after a student shrank them)
    tie_widths: Callable[[dict[str, Any]], None] | None = None
    # trained by a nightly whose params name no families (FAMILY_NAMES); False: only when a conf names it
    nightly_default: bool = True

    @property
    def compressible(self) -> bool:
        """Whether the family has hidden MLP layers to prune and widths a student can shrink."""
        return bool(self.mlp_widths)

    def model_class(self) -> type:
        """The family's ``nn.Module`` class (imports torch)."""
        module, _, name = self.model_class_path.partition(":")
        return getattr(importlib.import_module(module), name)


def _dlrm_tie_widths(hyperparams: dict[str, Any]) -> None:
    hyperparams["top_mlp"][-1] = 1  # the logit
    if hyperparams.get("interaction", "dot") == "dot":  # the dense vector is dotted with the embeddings
        hyperparams["bottom_mlp"][-1] = hyperparams["embedding_dim"]


_REGISTERED = (
    Family(
        "dlrm", "recforge.models.dlrm:DLRM",
        mlp_widths={"dense_arch": MlpWidths("bottom_mlp"), "over_arch": MlpWidths("top_mlp")},
        embedding_hyperparams=("embedding_dim",),
        presets={"rmc1": DLRM_RMC1, "rmc2": DLRM_RMC2, "rmc3": DLRM_RMC3, "small": DLRM_SMALL},
        tie_widths=_dlrm_tie_widths,
    ),
    Family(
        "wide_deep", "recforge.models.wide_deep:WideAndDeep",
        mlp_widths={"deep_mlp": MlpWidths("deep_mlp", class_adds_output=True)},
        embedding_hyperparams=("embedding_dim",),
    ),
    Family(
        "ncf", "recforge.models.ncf:NCF",
        mlp_widths={"mlp": MlpWidths("mlp_layers")},
        embedding_hyperparams=("gmf_dim", "mlp_embedding_dim"),
    ),
    Family(
        "din", "recforge.models.din:DIN",
        mlp_widths={"attention.score_mlp": MlpWidths("attention_mlp", class_adds_output=True),
                    "mlp": MlpWidths("mlp", class_adds_output=True)},
        embedding_hyperparams=("embedding_dim",),
    ),
    Family("logreg", "recforge.models.logreg:LogisticRegression", baseline=True),
    # DeepRecSys' other two families: slower to train than the five above (DIEN's two GRUs run over every history
    # slot), so a nightly trains them only when its params name them (docs/training.md).
    Family(
        "mt_wnd", "recforge.models.mt_wnd:MultiTaskWideAndDeep",
        mlp_widths={"shared_mlp": MlpWidths("shared_mlp"),
                    "task_heads.heads.0": MlpWidths("task_mlp", class_adds_output=True),
                    "task_heads.heads.1": MlpWidths("task_mlp", class_adds_output=True)},
        embedding_hyperparams=("embedding_dim",),
        nightly_default=False,
    ),
    Family(
        "dien", "recforge.models.dien:DIEN",
        mlp_widths={"mlp": MlpWidths("mlp", class_adds_output=True)},
        embedding_hyperparams=("embedding_dim",),
        nightly_default=False,
    ),
)

FAMILIES: Mapping[str, Family] = MappingProxyType({f.name: f for f in _REGISTERED})  # every registered family
# what a nightly trains unless its params name the families: dlrm, wide_deep, ncf, din, logreg
FAMILY_NAMES: tuple[str, ...] = tuple(f.name for f in _REGISTERED if f.nightly_default)
# the candidates of such a nightly (compressed, profiled, benchmarked): the deep ones
DEEP_FAMILIES: tuple[str, ...] = tuple(f.name for f in _REGISTERED if f.nightly_default and not f.baseline)
# registered, trained when a nightly's params (or `python -m recforge.pipeline.training.train`) name them
OPT_IN_FAMILIES: tuple[str, ...] = tuple(f.name for f in _REGISTERED if not f.nightly_default)  # mt_wnd, dien
(BASELINE_FAMILY,) = (f.name for f in _REGISTERED if f.baseline)  # logreg


def family(name: str) -> Family:
    """The registered family ``name``; ValueError naming the valid ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}") from None
