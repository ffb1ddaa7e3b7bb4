"""Model folders: load a trained one (written by training or by compression), write a compressed base as one.

A model folder holds ``state_dict.pt``, ``spec.json``, ``model.json`` (the model card: family, hyperparams...)
and ``model.onnx``; ``build_model(card["family"], spec, **card["hyperparams"])`` rebuilds the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.contracts.features import FeatureSpec
from recforge.core.errors import DataError
from recforge.models import build_model
from recforge.models.export import export_onnx

if TYPE_CHECKING:
    from torch import nn

MODEL_FILES = ("state_dict.pt", "spec.json", "model.json", "model.onnx")  # what a complete model folder holds


def load_trained(model_dir: Path) -> tuple[nn.Module, FeatureSpec, dict[str, Any]]:
    """(model in eval mode, spec, model card) of a model folder written by training (or by this module)."""
    import torch

    model_dir = Path(model_dir)
    missing = [n for n in ("state_dict.pt", "spec.json", "model.json") if not (model_dir / n).exists()]
    if missing:
        raise DataError(f"{model_dir} is not a model folder: {', '.join(missing)} missing; train the model first")
    card = json.loads((model_dir / "model.json").read_text())
    spec = FeatureSpec.from_json((model_dir / "spec.json").read_text())
    model = build_model(card["family"], spec, **card.get("hyperparams", {}))
    model.load_state_dict(torch.load(model_dir / "state_dict.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, spec, card


def write_model_folder(model: nn.Module, spec: FeatureSpec, base_dir: Path, card: Mapping[str, Any],
                       hyperparams: Mapping[str, Any], base: str, params: Mapping[str, Any]) -> Path:
    """Write the base ``model`` (built from the trained model of model card ``card``) as a model folder
    (rebuildable with build_model) and export it to ONNX; returns the ONNX path."""
    import torch

    rebuilt = build_model(card["family"], spec, **hyperparams)
    rebuilt.load_state_dict(model.state_dict())  # strict: proves the hyperparams describe the architecture
    torch.save(model.state_dict(), base_dir / "state_dict.pt")
    (base_dir / "spec.json").write_text(spec.to_json())
    model_card = {"family": card["family"], "hyperparams": hyperparams, "compressed_from": card.get("run_id"),
                  "base": base, "teacher_test_auc": card.get("test_auc"),
                  "compression": {k: v for k, v in params.items() if not k.endswith("history")}}
    (base_dir / "model.json").write_text(json.dumps(model_card, indent=2, default=json_default))
    return export_onnx(model, spec, base_dir / "model.onnx")


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` of model cards and variants: numpy scalars, paths, tuples and sets."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
