"""Model families of RecForge, all on the shared input contract of ``recforge.contracts.features``.

``build_model(family, spec, **hyperparams)`` is the one way the pipeline creates a model; every model
has ``logits(sparse, genres, history, dense) -> [B]`` (for training with BCEWithLogits) and
``forward(...) = sigmoid(logits(...))`` (what gets exported and served).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from recforge.contracts.features import FeatureSpec
from recforge.models.din import DIN
from recforge.models.dlrm import DLRM
from recforge.models.dlrm import PRESETS as DLRM_PRESETS
from recforge.models.logreg import LogisticRegression
from recforge.models.ncf import NCF
from recforge.models.wide_deep import WideAndDeep

FAMILIES: dict[str, type[nn.Module]] = {
    "dlrm": DLRM,
    "wide_deep": WideAndDeep,
    "ncf": NCF,
    "din": DIN,
    "logreg": LogisticRegression,
}
# Named hyperparameter sets per family, picked with ``build_model(..., preset=name)``.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {"dlrm": DLRM_PRESETS}


def _family_class(family: str) -> type[nn.Module]:
    try:
        return FAMILIES[family]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}") from None


def default_hyperparams(family: str) -> dict[str, Any]:
    """The hyperparameters ``build_model(family, spec)`` uses when given none (for logging)."""
    signature = inspect.signature(_family_class(family).__init__)
    return {
        name: param.default
        for name, param in signature.parameters.items()
        if name not in ("self", "spec") and param.default is not inspect.Parameter.empty
    }


def build_model(family: str, spec: FeatureSpec, **hyperparams: Any) -> nn.Module:
    """A fresh, randomly initialised model of ``family`` for ``spec``.

    ``preset="name"`` (dlrm: "rmc1", "rmc2", "rmc3", "small") starts from a named hyperparameter set;
    explicitly passed hyperparameters override the preset's. Raises ValueError for an unknown family,
    preset or hyperparameter name, or invalid hyperparameter values.
    """
    model_class = _family_class(family)
    preset = hyperparams.pop("preset", None)
    if preset is not None:
        family_presets = PRESETS.get(family, {})
        if preset not in family_presets:
            raise ValueError(
                f"unknown preset {preset!r} for model family {family!r}; "
                f"choose one of {sorted(family_presets) or 'none (this family has no presets)'}"
            )
        hyperparams = {**family_presets[preset], **hyperparams}
    unknown = sorted(set(hyperparams) - set(default_hyperparams(family)))
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {unknown} for model family {family!r}; "
            f"accepted: {sorted(default_hyperparams(family))}"
        )
    return model_class(spec, **hyperparams)


__all__ = ["FAMILIES", "PRESETS", "FeatureSpec", "build_model", "default_hyperparams"]
