"""Structured pruning (torch-pruning, L2 magnitude) of the hidden units of every MLP of a model.

Only *hidden* Linear layers are pruned: the last layer of every MLP (the logit, or a width the interaction/concat
layout dictates, e.g. DLRM's bottom MLP output = embedding dim) keeps its width, so the inputs, the output and
the embedding tables are untouched and the pruned model is again ``build_model(family, spec, **hyperparams)``
(:func:`architecture_hyperparams` reads those hyperparameters back).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from recforge.models.arches import MLP
from recforge.models.export import example_inputs
from recforge.models.families import FAMILIES
from recforge.pipeline.compression.config import CompressionError

if TYPE_CHECKING:
    from torch import nn

    from recforge.contracts.features import FeatureSpec


def _mlps(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if isinstance(module, MLP)}


def _linears(mlp: nn.Module) -> list[nn.Linear]:
    from torch import nn

    return [layer for layer in mlp.layers if isinstance(layer, nn.Linear)]


def prunable_layers(model: nn.Module) -> list[nn.Linear]:
    """The hidden Linear layers of every MLP: all but each MLP's last layer, whose width is dictated by what
    consumes it (the logit, DLRM's dot interaction, NCF's fusion layer...)."""
    return [layer for mlp in _mlps(model).values() for layer in _linears(mlp)[:-1]]


def architecture_hyperparams(family: str, model: nn.Module, hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hyperparams`` with the MLP widths read from ``model`` (e.g. after pruning), so that
    ``build_model(family, spec, **result)`` rebuilds the same architecture."""
    result = dict(hyperparams)
    mlps = _mlps(model)
    registered = FAMILIES.get(family)
    for module_name, widths in (registered.mlp_widths if registered else {}).items():
        sizes = [layer.out_features for layer in _linears(mlps[module_name])]
        result[widths.hyperparam] = sizes[:-1] if widths.class_adds_output else sizes
    return result


def prune_model(model: nn.Module, spec: FeatureSpec, ratio: float) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the units of every hidden MLP layer removed (L2 magnitude).

    Raises CompressionError if the model has no hidden layer to prune (e.g. logistic regression).
    """
    import torch
    import torch_pruning as tp
    from torch import nn

    pruned = copy.deepcopy(model).eval()
    targets = prunable_layers(pruned)
    if not targets:
        raise CompressionError(f"{type(model).__name__} has no hidden MLP layer to prune")
    target_ids = {id(layer) for layer in targets}
    ignored = [m for m in pruned.modules() if isinstance(m, nn.Linear) and id(m) not in target_ids]
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        example_inputs(spec, 8),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    with torch.no_grad():
        pruner.step()
    return pruned
