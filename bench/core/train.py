"""One training loop for every setting's loss.

Attacks, defenses and pre-training all call `train`: they differ only in the
loss function and the batch stream they pass in. The loop counts optimiser steps
and the samples it consumed, so budgets in result records are measured by the
code that spends them, not written by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.core import runtime

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass(frozen=True)
class TrainSpec:
    steps: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # or "constant"
    optimizer: str = "adamw"  # or "sgd" (with momentum; BackdoorBench's from-scratch regime)
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's (torch's defaults)
    adam_eps: float = 1e-8
    # Warmup from `warmup_start_lr` (linearly, reaching `lr` at the last warmup step) instead
    # of from lr / warmup_steps; and a cosine that ends at `final_lr` instead of 0.
    warmup_start_lr: float | None = None
    final_lr: float = 0.0
    # Fine-tunes of a trained model keep BatchNorm statistics fixed, so the
    # function is determined by the parameters alone and task vectors are exact.
    freeze_norm_stats: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


@dataclass
class TrainStats:
    steps: int = 0
    samples: int = 0
    wall_s: float = 0.0
    final_loss: float = float("nan")


def lr_at(step: int, spec: TrainSpec) -> float:
    if spec.warmup_steps and step < spec.warmup_steps:
        if spec.warmup_start_lr is not None:  # np.linspace(start, lr, warmup_steps)[step]
            frac = step / (spec.warmup_steps - 1) if spec.warmup_steps > 1 else 1.0
            return spec.warmup_start_lr + (spec.lr - spec.warmup_start_lr) * frac
        return spec.lr * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return spec.lr
    done = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.final_lr + (spec.lr - spec.final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def index_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs of indices into a set of n samples."""
    if n <= 0:
        raise ValueError("cannot draw batches from an empty set")
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            yield perm[i : i + batch_size]


@contextmanager
def frozen(params: Iterable[nn.Parameter]):
    """Within the block, gradients flow to nothing in `params` (e.g. while optimising
    a trigger or a mask against a fixed model); their flags are restored after."""
    saved = [(p, p.requires_grad) for p in params]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def set_norm_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def batch_size_of(batch: Batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(first)


def train(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    spec: TrainSpec,
    params: Iterable[nn.Parameter] | Iterable[dict] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainStats:
    """Run `spec.steps` AdamW steps of `loss_fn` over `batches` on `params`
    (default: every parameter that requires grad). `params` may also be AdamW
    parameter groups (dicts), e.g. to exempt norms and biases from weight decay."""
    items = list(params if params is not None else model.parameters())
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
    else:
        groups = [{"params": [p for p in items if p.requires_grad]}]
    stats = TrainStats()
    if spec.steps == 0:
        return stats
    if spec.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay, betas=spec.betas, eps=spec.adam_eps)
    model.train()
    if spec.freeze_norm_stats:
        set_norm_eval(model)
    start = time.perf_counter()
    device = runtime.model_device(model)
    it = iter(batches)
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        batch = runtime.to_device(next(it), device)  # data lives on the CPU; see bench/core/runtime.py
        with runtime.autocast(device):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step}: loss is {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats.steps += 1
        stats.samples += batch_size_of(batch)
        stats.final_loss = float(loss.detach())
        if on_step is not None:
            on_step(step, stats.final_loss)
    model.eval()
    stats.wall_s = time.perf_counter() - start
    return stats


# ---------------------------------------------------------------- losses


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def clip_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs (the CLIP loss)."""
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
