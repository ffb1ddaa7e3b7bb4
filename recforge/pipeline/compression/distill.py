"""Knowledge distillation: training a model against a teacher's softened outputs, and the student's shape.

A *student* is a narrower model of the same family (smaller embeddings, thinner MLPs: the widths named in the
family registry, ``recforge.models.families``) trained from the trained model with
``alpha * BCE(label) + (1 - alpha) * T² * BCE(teacher at T)``. A pruned model is fine-tuned the same way, with
its unpruned original as the teacher.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.models import resolved_hyperparams
from recforge.models.families import FAMILIES
from recforge.pipeline.compression.config import CompressConfig, CompressionError
from recforge.pipeline.training.train import evaluate, predict

if TYPE_CHECKING:
    import torch
    from torch import nn

    from recforge.pipeline.data.features import Split

log = logging.getLogger(__name__)


def _train_tensors(split: Split, max_rows: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    import torch

    rows = len(split) if max_rows <= 0 else min(max_rows, len(split))
    return ({k: torch.from_numpy(np.ascontiguousarray(v[-rows:])) for k, v in split.inputs().items()},
            torch.from_numpy(np.ascontiguousarray(split.label[-rows:])))


def _teacher_logits(teacher: nn.Module, inputs: Mapping[str, torch.Tensor], batch_size: int = 8192) -> torch.Tensor:
    import torch

    teacher.eval()
    rows = len(next(iter(inputs.values())))
    with torch.no_grad():
        return torch.cat([teacher.logits(**{k: v[s:s + batch_size] for k, v in inputs.items()})
                          for s in range(0, rows, batch_size)])


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: Split,
    val: Split,
    cfg: CompressConfig,
    *,
    epochs: int,
    lr: float,
    evaluate_initial: bool = False,
    train_embeddings: bool = True,
    label: str = "student",
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``student`` (in place) on ``alpha * BCE(label) + (1 - alpha) * T² * BCE(sigmoid(teacher_logit / T))``
    with the student's logit also divided by T in the second term; early-stopped on validation AUC.

    Returns (student with its best weights, history). With ``evaluate_initial`` the untrained weights compete
    too (epoch 0), so a fine-tune never makes a pruned model worse on validation. Without
    ``train_embeddings`` the embedding tables stay frozen (a pruned model's tables were not changed by pruning;
    further training only overfits them to the training ids).
    """
    import torch
    import torch.nn.functional as functional
    from torch import nn

    inputs, labels = _train_tensors(train, cfg.max_train_rows)
    rows = len(labels)
    temperature, alpha = cfg.distill_temperature, cfg.distill_alpha
    soft_targets = torch.sigmoid(_teacher_logits(teacher, inputs) / temperature)
    embedding_ids = {id(p) for m in student.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    trainable = [p for p in student.parameters() if train_embeddings or id(p) not in embedding_ids]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"auc": -1.0, "epoch": -1, "state": None}
    if evaluate_initial:
        auc = evaluate(val.label, predict(student, val))["auc"]
        history.append({"epoch": 0, "val_auc": auc})
        best = {"auc": auc, "epoch": 0, "state": copy.deepcopy(student.state_dict())}
        log.info("%s epoch 0 (before fine-tuning): val_auc %.4f", label, auc)
    for epoch in range(1, epochs + 1):
        student.train()
        order = torch.randperm(rows, generator=generator)
        total = 0.0
        for start in range(0, rows, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            logits = student.logits(**{k: v[idx] for k, v in inputs.items()})
            hard = functional.binary_cross_entropy_with_logits(logits, labels[idx])
            soft = functional.binary_cross_entropy_with_logits(logits / temperature, soft_targets[idx])
            loss = alpha * hard + (1.0 - alpha) * temperature**2 * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        auc = evaluate(val.label, predict(student, val))["auc"]
        history.append({"epoch": epoch, "train_loss": total / rows, "val_auc": auc})
        log.info("%s epoch %d/%d: train_loss %.4f val_auc %.4f", label, epoch, epochs, total / rows, auc)
        if auc > best["auc"]:
            best = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(student.state_dict())}
        elif epoch - best["epoch"] >= cfg.patience:
            break
    if best["state"] is not None:
        student.load_state_dict(best["state"])
    student.eval()
    return student, history


def student_hyperparams(family: str, teacher_hyperparams: Mapping[str, Any], cfg: CompressConfig) -> dict[str, Any]:
    """The student's hyperparameters: the teacher's embedding dims and MLP widths shrunk by the config."""
    registered = FAMILIES.get(family)
    if registered is None or not registered.compressible:
        raise CompressionError(f"model family {family!r} has no embedding dimension or hidden layer to shrink")
    hp = resolved_hyperparams(family, teacher_hyperparams)

    def narrow(width: int) -> int:
        return max(1, round(int(width) * cfg.student_width_factor))

    for key in registered.embedding_hyperparams:
        hp[key] = cfg.student_embedding_dim or narrow(hp[key])
    # once per hyperparameter: MLPs that share one (MT-WnD's task heads share task_mlp) are shrunk once, not twice
    for name in dict.fromkeys(widths.hyperparam for widths in registered.mlp_widths.values()):
        hp[name] = [narrow(size) for size in hp[name]]
    if registered.tie_widths:  # widths fixed by what consumes them (e.g. DLRM's logit)
        registered.tie_widths(hp)
    return hp
