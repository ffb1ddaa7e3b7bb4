"""Fixtures of the compression tests, built once for the whole folder: a tiny features folder, a briefly trained
DLRM model folder and the variants of its fp32 base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recforge.models import build_model
from recforge.pipeline.compression.config import CompressConfig
from recforge.pipeline.compression.variants import Variant, build_base_variants
from tests.pipeline.compression.compression_testutil import FAST, quick_train, save_model_dir, tiny_spec, write_split


@pytest.fixture(scope="package")
def features(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("features")
    spec = tiny_spec()
    for split, rows, seed in (("train", 2000, 1), ("val", 500, 2), ("test", 500, 3)):
        write_split(path / f"{split}.parquet", spec, rows, seed)
    (path / "spec.json").write_text(spec.to_json())
    return path


@pytest.fixture(scope="package")
def dlrm_dir(features, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    hyperparams = {"embedding_dim": 8, "bottom_mlp": [32, 8], "top_mlp": [32, 16, 1]}
    model = quick_train(build_model("dlrm", tiny_spec(), **hyperparams), features)
    return save_model_dir(model, tiny_spec(), "dlrm", hyperparams, tmp_path_factory.mktemp("models") / "dlrm")


@pytest.fixture(scope="package")
def fp32_variants(dlrm_dir, features, tmp_path_factory) -> dict[str, Variant]:
    cfg = CompressConfig.from_dict(FAST)
    variants = build_base_variants("fp32", dlrm_dir, features, tmp_path_factory.mktemp("out"), cfg)
    return {v.name: v for v in variants}
