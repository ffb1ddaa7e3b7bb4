"""Students and knowledge distillation (recforge.pipeline.compression.distill)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recforge.models import build_model, resolved_hyperparams
from recforge.pipeline.compression.config import CompressConfig, CompressionError
from recforge.pipeline.compression.distill import distill, student_hyperparams
from recforge.pipeline.compression.measure import count_parameters
from recforge.pipeline.data.features import load_split
from recforge.pipeline.training.train import predict
from tests.pipeline.compression.compression_testutil import (
    tiny_spec,
)


def test_student_is_smaller(dlrm_dir):
    cfg = CompressConfig()
    hyperparams = student_hyperparams("dlrm", {"embedding_dim": 8, "bottom_mlp": [32, 8],
                                                        "top_mlp": [32, 16, 1]}, cfg)
    assert hyperparams == {"embedding_dim": 4, "bottom_mlp": [16, 4], "top_mlp": [16, 8, 1], "interaction": "dot"}
    for family in ("dlrm", "din", "wide_deep", "ncf"):
        teacher = build_model(family, tiny_spec())
        student = build_model(family, tiny_spec(), **student_hyperparams(family, {}, cfg))
        assert count_parameters(student) < 0.6 * count_parameters(teacher)
    with pytest.raises(CompressionError):
        student_hyperparams("logreg", {}, cfg)


def test_mlps_sharing_one_hyperparameter_are_narrowed_once():
    """MT-WnD's task heads both read task_mlp: the student's heads are half as wide, not a quarter."""
    hyperparams = student_hyperparams("mt_wnd", {"task_mlp": [32, 16]}, CompressConfig(student_width_factor=0.5))
    assert hyperparams["task_mlp"] == [16, 8]


def test_student_is_trained_against_the_teacher(features):
    """With alpha = 0 the student learns the teacher's outputs, even a teacher unrelated to the labels."""
    spec = tiny_spec()
    torch.manual_seed(1)
    teacher = build_model("ncf", spec, gmf_dim=8, mlp_embedding_dim=8, mlp_layers=(16, 8)).eval()
    with torch.no_grad():  # a confident teacher that knows nothing about the labels
        teacher.fusion.weight.mul_(20.0)
    student = build_model("ncf", spec, **student_hyperparams("ncf", resolved_hyperparams(
        "ncf", {"gmf_dim": 8, "mlp_embedding_dim": 8, "mlp_layers": (16, 8)}), CompressConfig()))
    train, val = load_split(features, "train"), load_split(features, "val")

    def gap() -> float:
        return float(np.mean(np.abs(predict(student, val) - predict(teacher, val))))

    before = gap()
    cfg = CompressConfig(distill_alpha=0.0, distill_temperature=1.0, batch_size=128, patience=10)
    distill(student, teacher, train, val, cfg, epochs=5, lr=1e-2)
    assert gap() < 0.5 * before
