"""Trigger inversion: reverse-engineer a (mask, pattern) trigger from the model and
clean data alone, with x' = (1 - m) x + m p, m = sigmoid(mask logits) of shape
(H, W) and p = sigmoid(pattern logits) of shape (C, H, W).

- neural-cleanse (Wang et al. 2019), for classifiers: for every class c, the
  smallest mask that sends clean images to c (cross-entropy to c + lambda * |m|_1,
  with Neural Cleanse's adaptive lambda: raised while the inverted trigger reaches
  the success threshold, lowered while it does not). The target is the class whose
  mask L1 norm is a low outlier: MAD anomaly index > 2 (consistency constant 1.4826).
- decree (Feng et al. 2023), for encoders: one mask/pattern that makes the
  embeddings of triggered clean images mutually similar (maximise their mean
  pairwise cosine) with an L1 penalty on m; the target is the class the zero-shot
  head assigns most often to triggered images.

Neither reads anything about the attack; both are used by tbar's inverted mode
and registered on their own as detectors (the model is returned unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Le
from torch import nn

from bench.core import runtime
from bench.core.knobs import Count, Fraction, Index, NonNegative, Positive, Share
from bench.core.metrics import predict
from bench.core.train import frozen


@dataclass
class InvertedTrigger:
    mask: torch.Tensor  # (H, W) in [0, 1]
    pattern: torch.Tensor  # (C, H, W) in [0, 1]
    target: int
    info: dict

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask) * x + self.mask * self.pattern


def mad_anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """Per-class anomaly index |l - median| / (1.4826 * MAD) of mask norms."""
    med = torch.quantile(norms, 0.5)  # the true median (torch.median takes the lower middle)
    mad = 1.4826 * torch.quantile((norms - med).abs(), 0.5)
    return (norms - med).abs() / mad.clamp_min(1e-12)


@dataclass(frozen=True)
class InversionParams:
    steps: Count = 150  # optimiser steps per candidate (neural-cleanse: per class)
    lr: Positive = 0.1
    batch_size: Count = 64
    init_cost: NonNegative = 1e-3
    success_threshold: Share = 0.99  # neural-cleanse's attack-success target for lambda
    cost_multiplier: Positive = 1.5
    patience: Index = 5
    data_fraction: Fraction = 0.02  # share of train the defender spends on inversion
    anomaly_threshold: NonNegative = 2.0


def neural_cleanse_class(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: int,
    p: InversionParams,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The smallest mask/pattern sending x to `target`; returns (mask, pattern, success rate)."""
    _, c, h, w = x.shape
    dev = runtime.model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    # The trigger is optimised on the model's device; it is returned on the CPU, with the data.
    mask_logit = torch.full((h, w), -2.0, device=dev).requires_grad_(True)  # start small: sigmoid(-2) = 0.12
    pattern_logit = torch.zeros(c, h, w, device=dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=p.lr, betas=(0.5, 0.9))
    cost, up, down = p.init_cost, 0, 0
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    y = torch.full((p.batch_size,), target, device=dev)
    for _ in range(p.steps):
        idx = torch.randint(len(x), (p.batch_size,), generator=gen)
        mask, pattern = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
        logits = model((1 - mask) * runtime.to_device(x[idx], dev) + mask * pattern)
        l1 = mask.sum()
        loss = F.cross_entropy(logits, y) + cost * l1
        success = float((logits.argmax(1) == target).float().mean())
        l1_now = float(l1.detach())
        # keep the smallest mask that reached the threshold, from this same forward pass
        if success >= p.success_threshold and (best is None or l1_now < best[2]):
            best = (mask.detach().clone(), pattern.detach().clone(), l1_now)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # Neural Cleanse's cost schedule: grow lambda while the trigger works, shrink it while it fails.
        up, down = (up + 1, 0) if success >= p.success_threshold else (0, down + 1)
        if up >= p.patience:
            cost, up = cost * p.cost_multiplier, 0
        elif down >= p.patience:
            cost, down = cost / p.cost_multiplier**1.5, 0
    if best is None:  # never reached the threshold: the final mask stands, flagged by its success rate
        best = (torch.sigmoid(mask_logit).detach(), torch.sigmoid(pattern_logit).detach(), float("nan"))
    mask, pattern = best[0].cpu(), best[1].cpu()
    with torch.no_grad():
        rate = float((predict(model, (1 - mask) * x + mask * pattern) == target).float().mean())
    return mask, pattern, rate


def neural_cleanse(
    model, x: torch.Tensor, num_classes: int, p: InversionParams, gen: torch.Generator, progress=lambda m: None
) -> InvertedTrigger:
    model.eval()
    results = []
    with frozen(model.parameters()):
        for c in range(num_classes):
            progress(f"neural-cleanse: class {c + 1}/{num_classes}")
            results.append(neural_cleanse_class(model, x, c, p, gen))
    norms = torch.tensor([float(m.sum()) for m, _, _ in results])
    reached = [rate >= p.success_threshold * 0.9 for _, _, rate in results]
    index = mad_anomaly_index(norms)
    target = int(torch.argmin(norms))
    mask, pattern, rate = results[target]
    detected = bool(norms[target] < torch.quantile(norms, 0.5) and index[target] > p.anomaly_threshold)
    info = {
        "method": "neural-cleanse",
        "mask_l1": norms.tolist(),
        "anomaly_index": float(index[target]),
        "detected": detected,
        "inverted_success": rate,
        "classes_reached": reached,
    }
    return InvertedTrigger(mask, pattern, target, info)


@dataclass(frozen=True)
class DecreeParams:
    """DECREE's settings (reference: the public GiantSeaweed/DECREE repository, main.py and
    run_decree.py); `steps` is this harness's budget of optimiser steps."""

    steps: Count = 300
    lr: Positive = 0.5  # run_decree.py; main.py drops it to 0.1, then 0.05, after `lr_epochs`
    batch_size: Count = 32
    init_cost: NonNegative = 1e-3  # lambda, the weight of the mask's L1 norm
    cost_multiplier: Positive = 5.0  # adaptor_lambda
    patience: Index = 5
    sim_threshold: Annotated[float, Ge(-1), Le(1)] = 0.99  # --thres: mean pairwise cosine of a successful trigger
    lambda_min: NonNegative | None = None  # None: 1e-5 for images of side <= 96 (CIFAR/STL encoders), else 1e-7 (CLIP)
    mask_init: Literal["rand", "small"] = "rand"  # rand: mask and pattern uniform in (0, 1), as the reference
    data_fraction: Fraction = 0.02  # share of train the defender spends on inversion


def _tanh01(w: torch.Tensor) -> torch.Tensor:
    """DECREE's bounded parametrisation: tanh(w) / (2 - eps) + 0.5, in (0, 1)."""
    return (torch.tanh(w) / (2 - EPS) + 0.5).clamp(0, 1)


def _atanh01(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v - 0.5) * (2 - EPS))


EPS = 1e-7


def mean_pairwise_cosine(emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the distinct pairs of a batch (the reference's
    compute_self_cos_sim: the off-diagonal mean)."""
    e = F.normalize(emb, dim=-1)
    sim = e @ e.T
    n = len(e)
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def decree(
    encode: Callable[[torch.Tensor], torch.Tensor],
    classify: Callable[[torch.Tensor], torch.Tensor],
    params_of_model,
    x: torch.Tensor,
    p: DecreeParams,
    gen: torch.Generator,
) -> InvertedTrigger:
    """DECREE (Feng et al. 2023), as its main.py runs it: a mask m (H x W, shared by the
    channels) and a pattern p (C x H x W), both tanh-parametrised in (0, 1) and
    initialised uniformly at random; x' = clip((1 - m) x + m p); loss =
    -mean pairwise cosine of encode(x') + lambda * |m|_1 (summed over H x W x C). lambda
    starts at 1e-3; after more than `patience` consecutive steps with the cosine above
    `sim_threshold` it is multiplied by 5, after more than `patience` below it divided by
    5 (while >= lambda_min), and reset to 1e-3 when it has fallen under lambda_min yet the
    trigger keeps succeeding (more than 2 x patience steps). The smallest mask that
    succeeded is kept. Adam (betas 0.5, 0.9), batches of the defender's clean images in
    shuffled epochs, lr dropped to 0.1 and 0.05 after the reference's epoch marks.
    The target is the class the zero-shot head assigns most often to triggered images."""
    from bench.core.train import index_batches

    _, c, h, w = x.shape
    params_of_model = list(params_of_model)
    dev = params_of_model[0].device if params_of_model else torch.device("cpu")
    if p.mask_init == "rand":
        mask0, pattern0 = torch.rand(h, w, generator=gen), torch.rand(c, h, w, generator=gen)
    else:  # "small": a faint uniform mask and a grey pattern
        mask0, pattern0 = torch.full((h, w), 0.12), torch.full((c, h, w), 0.5)
    mask_w = _atanh01(mask0).to(dev).requires_grad_(True)
    pattern_w = _atanh01(pattern0).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_w, pattern_w], lr=p.lr, betas=(0.5, 0.9))
    small = max(h, w) <= 96
    lambda_min = p.lambda_min if p.lambda_min is not None else (1e-5 if small else 1e-7)
    lr_epochs = (30, 50) if small else (200, 500)
    cost, up, down, reset = p.init_cost, 0, 0, 0
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    batches = index_batches(len(x), p.batch_size, gen)
    with frozen(params_of_model):
        for step in range(p.steps):
            epoch = step * p.batch_size / len(x)
            for group in opt.param_groups:
                group["lr"] = p.lr if epoch < lr_epochs[0] else (0.1 if epoch < lr_epochs[1] else 0.05)
            idx = next(batches)
            mask, pattern = _tanh01(mask_w), _tanh01(pattern_w)
            triggered = ((1 - mask) * runtime.to_device(x[idx], dev) + mask * pattern).clamp(0, 1)
            cos = mean_pairwise_cosine(encode(triggered))
            l1 = c * mask.sum()
            loss = -cos + cost * l1
            opt.zero_grad()
            loss.backward()
            opt.step()
            succeeded = float(cos.detach()) > p.sim_threshold
            if succeeded and (best is None or float(l1.detach()) < best[2]):
                best = (mask.detach().clone(), pattern.detach().clone(), float(l1.detach()))
            # the reference's lambda schedule
            if cost < lambda_min and succeeded:
                reset += 1
                if reset > 2 * p.patience:
                    cost, up, down = p.init_cost, 0, 0
            else:
                reset = 0
            up, down = (up + 1, 0) if succeeded else (0, down + 1)
            if up > p.patience:
                cost, up = (cost * p.cost_multiplier if cost < 1e5 else cost), 0
            elif down > p.patience:
                cost, down = (cost / p.cost_multiplier if cost >= lambda_min else cost), 0
    reached = best is not None
    if best is None:  # never succeeded: the final mask stands, flagged in the info
        best = (_tanh01(mask_w).detach(), _tanh01(pattern_w).detach(), float("nan"))
    mask, pattern = best[0].cpu(), best[1].cpu()
    with torch.no_grad():
        triggered = ((1 - mask) * x + mask * pattern).clamp(0, 1)
        emb = torch.cat([encode(runtime.to_device(triggered[i : i + 256], dev)).cpu() for i in range(0, len(x), 256)])
        pairwise = float(mean_pairwise_cosine(emb))
        votes = torch.bincount(predict(classify, triggered))
    target = int(votes.argmax())
    info = {
        "method": "decree",
        "mask_l1_share": float(mask.mean()),
        "mean_pairwise_cosine": pairwise,
        "reached_threshold": reached,
        "final_lambda": cost,
        "target_vote_share": float(votes.max() / votes.sum()),
    }
    return InvertedTrigger(mask, pattern, target, info)
