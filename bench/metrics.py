"""Metrics of methods.md section 4. The formulas are pure functions of numbers or
tensors; `predict` is the one place that runs a model over images."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Top-1 predictions of `model` on float images x in [0, 1]."""
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def share(hits: torch.Tensor) -> float:
    """Exact share of True in a bool tensor (count / total, no float32 rounding)."""
    n = hits.numel()
    return int(hits.sum()) / n if n else float("nan")


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to labels (CA when the images are clean)."""
    return share(pred == labels)


def attack_success_rate(pred_triggered: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor) -> float:
    """ASR: share of triggered images whose true label is not their target that are
    predicted as the target. Images already of the target class are excluded."""
    keep = true_labels != targets
    return share(pred_triggered[keep] == targets[keep])


def robust_accuracy(pred_triggered: torch.Tensor, true_labels: torch.Tensor, targets: torch.Tensor) -> float:
    """RA: share of the same triggered images predicted as their true label."""
    keep = true_labels != targets
    return share(pred_triggered[keep] == true_labels[keep])


def ca_retention(ca_def: float, ca_bd: float) -> float:
    return ca_def / ca_bd if ca_bd > 0 else float("nan")


def asr_removal(asr_bd: float, asr_def: float) -> float:
    return (asr_bd - asr_def) / asr_bd if asr_bd > 0 else float("nan")


def der(ca_bd: float, ca_def: float, asr_bd: float, asr_def: float) -> float:
    """BackdoorBench's defense effectiveness rating with the correct sign: a clean
    accuracy drop is subtracted (BackdoorBench's own code adds it)."""
    return (max(0.0, asr_bd - asr_def) - max(0.0, ca_bd - ca_def) + 1) / 2
