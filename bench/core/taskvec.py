"""Task vectors (Ilharco et al. 2023): differences of parameter dicts, scaled and added.

A task vector is a dict name -> tensor over the floating-point parameters that a
fine-tune changed. Every function here is pure: inputs are never modified (`finetune_vector` trains a copy).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping

import torch
from torch import nn

from bench.core.train import TrainSpec, train

TaskVector = dict[str, torch.Tensor]


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the model's floating-point parameters that require grad."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point()}


def finetune_vector(
    model: nn.Module, loss, batches, spec: TrainSpec, only: Collection[str] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
) -> TaskVector:
    """tau = theta_T - theta: fine-tune a copy of `model` with `loss` on `batches` by
    `spec`; `model` is left as it was. `only`: the parameter names to fine-tune (the
    copy's other parameters are frozen; default: those that require grad). `base`: the
    model's trainable parameters, when the caller already holds them."""
    tuned = copy.deepcopy(model)
    if only is not None:
        for n, q in tuned.named_parameters():
            q.requires_grad_(n in only)
    before = base if base is not None else trainable_params(tuned)
    train(tuned, loss, batches, spec)
    return difference(trainable_params(tuned), before)


def _check_keys(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if a.keys() != b.keys():
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        raise ValueError(f"task vectors cover different parameters (only left: {only_a}, only right: {only_b})")


def difference(finetuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> TaskVector:
    """tau = theta_finetuned - theta_base."""
    _check_keys(finetuned, base)
    return {k: finetuned[k] - base[k] for k in base}


def scale(tv: Mapping[str, torch.Tensor], coef: float) -> TaskVector:
    return {k: coef * v for k, v in tv.items()}


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> TaskVector:
    _check_keys(a, b)
    return {k: a[k] + b[k] for k in a}


def apply(
    base: Mapping[str, torch.Tensor], tv: Mapping[str, torch.Tensor], coef: float = 1.0
) -> dict[str, torch.Tensor]:
    """theta = theta_base + coef * tau (TBAR uses coef = -alpha)."""
    _check_keys(base, tv)
    return {k: base[k] + coef * tv[k] for k in base}


def norm(tv: Mapping[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in tv.values())))


def cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    _check_keys(a, b)
    dot = sum((a[k].double() * b[k].double()).sum() for k in a)
    return float(dot / (norm(a) * norm(b) + 1e-30))


@torch.no_grad()
def load_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy `params` into the model's parameters of the same names (in place)."""
    named = dict(model.named_parameters())
    missing = sorted(set(params) - set(named))
    if missing:
        raise KeyError(f"model has no parameters named {missing[:3]}")
    for k, v in params.items():
        named[k].copy_(v)
