"""Model families of RecForge, all on the shared input contract of ``recforge.contracts.features``.

``build_model(family, spec, **hyperparams)`` is the one way the pipeline creates a model; every model
has ``logits(sparse, genres, history, dense) -> [B]`` (for training with BCEWithLogits) and
``forward(...) = sigmoid(logits(...))`` (what gets exported and served). A multi-task model (MT-WnD) also has
``num_tasks`` and ``task_logits(...) -> [B, num_tasks]``; its ``logits`` are task 0's. The families themselves are
listed once, in :mod:`recforge.models.families`.

Importing this package does not import torch (DAG files read the family names through it); building a
model does.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from recforge.contracts.features import FeatureSpec
from recforge.models.families import FAMILIES, family

if TYPE_CHECKING:
    from torch import nn

# Named hyperparameter sets per family (only families that have some), picked with ``build_model(..., preset=name)``.
PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {f.name: f.presets for f in FAMILIES.values() if f.presets}


def default_hyperparams(family_name: str) -> dict[str, Any]:
    """The hyperparameters ``build_model(family, spec)`` uses when given none (for logging)."""
    signature = inspect.signature(family(family_name).model_class().__init__)
    return {
        name: param.default
        for name, param in signature.parameters.items()
        if name not in ("self", "spec") and param.default is not inspect.Parameter.empty
    }


def resolved_hyperparams(family_name: str, hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of a model built with ``build_model(family, spec, **hyperparams)`` (preset resolved)."""
    explicit = dict(hyperparams)
    preset = explicit.pop("preset", None)
    presets = family(family_name).presets
    return default_hyperparams(family_name) | (dict(presets.get(preset, {})) if preset else {}) | explicit


def build_model(family_name: str, spec: FeatureSpec, **hyperparams: Any) -> nn.Module:
    """A fresh, randomly initialised model of ``family`` for ``spec``.

    ``preset="name"`` (dlrm: "rmc1", "rmc2", "rmc3", "small") starts from a named hyperparameter set;
    explicitly passed hyperparameters override the preset's. Raises ValueError for an unknown family,
    preset or hyperparameter name, or invalid hyperparameter values.
    """
    registered = family(family_name)
    preset = hyperparams.pop("preset", None)
    if preset is not None:
        if preset not in registered.presets:
            raise ValueError(
                f"unknown preset {preset!r} for model family {family_name!r}; "
                f"choose one of {sorted(registered.presets) or 'none (this family has no presets)'}"
            )
        hyperparams = {**registered.presets[preset], **hyperparams}
    accepted = default_hyperparams(family_name)
    unknown = sorted(set(hyperparams) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {unknown} for model family {family_name!r}; accepted: {sorted(accepted)}"
        )
    return registered.model_class()(spec, **hyperparams)


__all__ = ["FAMILIES", "PRESETS", "build_model", "default_hyperparams", "resolved_hyperparams"]
