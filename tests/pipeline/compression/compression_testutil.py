"""Helpers of the recforge.pipeline.compression tests: a tiny feature spec, synthetic splits, model folders
(a module with a unique name, not a conftest, so that ``import`` cannot pick up another test folder's conftest)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from recforge.contracts.features import FeatureSpec, example_spec
from recforge.models.export import example_inputs
from recforge.pipeline.data.features import load_split

# Quantization tolerances on probabilities (max |onnx - torch fp32| over the test sample):
# * fp16: weights and activations rounded to 11 significant bits (relative error 2^-11 ~ 5e-4 per value), a few
#   layers deep, and the probability is sigmoid(logit), whose slope is <= 1/4: 2e-3 is a 4x margin.
# * int8: weights and activations are rounded to 1/255 of their range per tensor (dynamic: of each batch),
#   i.e. a relative error ~0.4% per layer that adds up over ~4 layers, on logits of magnitude ~1-3: a logit
#   error of ~0.1 at worst, 0.025 in probability; 0.05 leaves room for the worst row of the sample. (The trained
#   MovieLens models, with wider activation ranges, reach ~0.1 max / ~0.005 mean; the AUC parity rule is the
#   real check there.)
FP16_TOLERANCE = 2e-3
INT8_TOLERANCE = 0.05
FAST = {"latency_repeats": 3, "parity_rows": 256, "calibration_rows": 256, "threads": 1, "batch_size": 256,
        "finetune_epochs": 1, "distill_epochs": 2, "latency_batch": 64}


def tiny_spec() -> FeatureSpec:
    return dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8,
                               genre_slots=3, history_length=5)


def write_split(path: Path, spec: FeatureSpec, rows: int, seed: int) -> None:
    """A split file as recforge.pipeline.data.features writes it; the label depends on user, item and the dense
    features."""
    inputs = example_inputs(spec, rows, seed)
    rng = np.random.default_rng(0)  # the same "true" weights for every split
    user_w = rng.normal(size=spec.sparse_cardinalities[0])
    item_w = rng.normal(size=spec.sparse_cardinalities[1])
    dense_w = rng.normal(size=spec.num_dense)
    sparse, dense = inputs["sparse"].numpy(), inputs["dense"].numpy()
    logit = user_w[sparse[:, 0]] + item_w[sparse[:, 1]] + dense @ dense_w
    noise = np.random.default_rng(seed).logistic(size=rows)
    frame = pd.DataFrame(sparse, columns=list(spec.sparse_features))
    for k in range(spec.genre_slots):
        frame[f"genre_{k}"] = inputs["genres"][:, k].numpy()
    for k in range(spec.history_length):
        frame[f"hist_{k}"] = inputs["history"][:, k].numpy()
    for j, name in enumerate(spec.dense_features):
        frame[name] = dense[:, j].astype(np.float32)
    frame["label"] = (logit + noise > 0).astype(np.float32)
    frame.to_parquet(path)


def save_model_dir(model: nn.Module, spec: FeatureSpec, family: str, hyperparams: dict, path: Path) -> Path:
    """A model folder as recforge.pipeline.training.train writes it (without MLflow)."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "state_dict.pt")
    (path / "spec.json").write_text(spec.to_json())
    (path / "model.json").write_text(json.dumps({"family": family, "hyperparams": hyperparams, "run_id": "test"}))
    return path


def matrix_elements(path: str) -> dict[str, int]:
    """Number of values in the 2-D initializers (weight matrices, embedding tables) by dtype."""
    elements: dict[str, int] = {}
    for tensor in onnx.load(path).graph.initializer:
        if len(tensor.dims) == 2:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
            elements[dtype] = elements.get(dtype, 0) + int(np.prod(tensor.dims))
    return elements


def quick_train(model: nn.Module, features: Path, epochs: int = 3) -> nn.Module:
    train = load_split(features, "train")
    inputs = {k: torch.from_numpy(v) for k, v in train.inputs().items()}
    labels = torch.from_numpy(train.label)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for start in range(0, len(labels), 256):
            optimizer.zero_grad()
            batch = {k: v[start:start + 256] for k, v in inputs.items()}
            loss = nn.functional.binary_cross_entropy_with_logits(model.logits(**batch), labels[start:start + 256])
            loss.backward()
            optimizer.step()
    return model.eval()
