"""ANP: Adversarial Neuron Pruning (Wu & Wang 2021), on clean data only.

Follows the authors' code (the public csdongxian/ANP_backdoor repository:
models/anp_batchnorm.py, optimize_mask_cifar.py, prune_neuron_cifar.py) and
BackdoorBench's port (defense/anp.py, which adds LayerNorm for ViTs).

Neurons: every affine unit of every BatchNorm and LayerNorm of the image encoder (the
whole network of a classifier; a CLIP's image tower). Neuron k of a norm layer with
weight w_k and bias b_k gets a mask m_k (init 1) and, while perturbed, two separate
multiplicative noises: its output x_hat * w_k + b_k becomes

    x_hat * w_k * (m_k + d_k) + b_k * (1 + e_k)    (perturbed)
    x_hat * w_k * m_k + b_k                        (natural; the bias is never masked)

Per iteration, on a clean batch (drawn with replacement, crop-flip augmented as the
reference's training transform does), with the model in train mode (batch statistics):

1. d, e ~ U(-eps, eps); `steps` signed-gradient ascent steps of size eps / steps on the
   cross-entropy of the perturbed model (not clamped afterwards: d can reach 2 eps);
2. m takes one SGD step (lr 0.2, momentum 0.9) on
   trade_off * CE(natural) + (1 - trade_off) * CE(perturbed), then is clipped to [0, 1].

BatchNorm running statistics move during those train-mode passes; the reference then
prunes a fresh copy of the checkpoint, so the pruned model keeps the original
statistics. Here they are saved before and restored after, to the same effect.

Pruning: every neuron whose mask is <= threshold has its norm weight set to 0 (its
bias stays), as prune_neuron_cifar.py does. The masks are learned once; the
threshold is the strength knob (0, 0.05, ..., 0.95, bisected by the engine; the
reference's sweep stops at 0.90, a deviation docs/methods.md lists), and its published
value 0.2 is the defense's own choice. Nothing is tuned on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.core import runtime
from bench.core.augment import AUGMENTATIONS
from bench.core.knobs import Count, Fraction, Index, NonNegative, Positive, Share
from bench.core.registry import DEFENSES
from bench.core.tradeoff import IDENTITY, KnobSpec
from bench.core.train import frozen
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput


@dataclass(frozen=True)
class AnpParams:
    eps: NonNegative = 0.4  # anp_eps
    steps: Count = 1  # anp_steps: signed ascent steps on the noise per iteration
    trade_off: Share = 0.2  # anp_alpha: weight of the natural loss
    iterations: Index = 2000  # nb_iter
    lr: Positive = 0.2  # the mask optimiser's (SGD, momentum 0.9)
    batch_size: Count = 128
    threshold: Share = 0.2  # prune masks <= threshold
    data_fraction: Fraction = 0.01  # ANP: 1% of the training set
    augment: Literal["none", "crop-flip"] = "crop-flip"  # the reference's transform_train
    # "train": masks learned with batch statistics, as the reference; "eval": with the
    # model's running statistics (for victims whose BN statistics were frozen in training)
    norm_mode: Literal["train", "eval"] = "train"

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.steps < 1 or not 0 <= self.trade_off <= 1:
            raise ValueError("need iterations >= 0, steps >= 1 and 0 <= trade_off <= 1")


ANP_REFERENCE = {
    "eps": 0.4, "steps": 1, "trade_off": 0.2, "iterations": 2000, "lr": 0.2, "batch_size": 128,
    "threshold": 0.2, "data_fraction": 0.01, "augment": "crop-flip", "norm_mode": "train",
}  # fmt: skip

THRESHOLDS = [round(0.05 * i, 2) for i in range(20)]  # 0 to 0.95 (prune_neuron_cifar.py's np.arange stops at 0.90)


def norm_layers(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm and LayerNorm with affine parameters, in module order."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
    return [(n, m) for n, m in encoder.named_modules() if isinstance(m, kinds) and m.weight is not None]


def _affine_view(m: nn.Module, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A per-neuron tensor shaped to broadcast over the layer's output: BatchNorm
    neurons are channels (dim 1), LayerNorm neurons the trailing normalised dims."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return t.view(1, -1, *([1] * (out.ndim - 2)))
    return t


class NormNeurons:
    """Masks and noises on every neuron of the given norm layers, applied by forward
    hooks that rewrite each layer's output x_hat * w + b as
    x_hat * w * cw + b * cb (cw, cb per neuron); the weights are never edited."""

    def __init__(self, layers: list[tuple[str, nn.Module]], device: torch.device):
        self.layers = layers
        self.masks = [torch.ones_like(m.weight, device=device, requires_grad=True) for _, m in layers]
        self.noise_w = [torch.zeros_like(m.weight, device=device, requires_grad=True) for _, m in layers]
        self.noise_b = [torch.zeros_like(m.weight, device=device, requires_grad=True) for _, m in layers]
        self.perturbed = False
        self.handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, inputs, out):
            w = self.masks[i] + self.noise_w[i] if self.perturbed else self.masks[i]
            bias = module.bias
            if bias is None:
                return out * _affine_view(module, w, out)
            b = _affine_view(module, bias, out)
            cb = _affine_view(module, 1 + self.noise_b[i], out) if self.perturbed else 1.0
            return (out - b) * _affine_view(module, w, out) + b * cb

        return hook

    def reset_noise(self, eps: float, gen: torch.Generator) -> None:
        with torch.no_grad():
            for t in (*self.noise_w, *self.noise_b):
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1).mul_(eps))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def flat_masks(self) -> torch.Tensor:
        return torch.cat([m.detach().flatten().cpu() for m in self.masks])


def learn_masks(
    classify: nn.Module,
    encoder: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    p: AnpParams,
    gen: torch.Generator,
    meter: DataMeter,
    pool_index: torch.Tensor | None = None,
) -> tuple[list[tuple[str, nn.Module]], list[torch.Tensor], dict]:
    """ANP's min-max optimisation over the masks of every norm neuron of `encoder`
    (a part of `classify`). Returns the layers, their learned masks (CPU, in [0, 1])
    and a short log. The model's weights and buffers are left as they were."""
    layers = norm_layers(encoder)
    if not layers:
        raise ValueError(f"anp: {type(encoder).__name__} has no BatchNorm/LayerNorm with affine parameters")
    device = runtime.model_device(classify)
    buffers = {k: v.detach().clone() for k, v in classify.named_buffers()}
    was_training = classify.training
    nn_ = NormNeurons(layers, device)
    opt = torch.optim.SGD(nn_.masks, lr=p.lr, momentum=0.9)
    augment = AUGMENTATIONS[p.augment]
    pool_index = torch.arange(len(x)) if pool_index is None else pool_index
    log: dict = {"natural": [], "robust": []}
    try:
        classify.train(p.norm_mode == "train")
        with frozen(classify.parameters()):
            for it in range(p.iterations):
                idx = torch.randint(len(x), (p.batch_size,), generator=gen)
                meter.clean.update(pool_index[idx].tolist())
                meter.samples_seen += len(idx)
                meter.steps += 1
                xb = x[idx] if augment is None else augment(x[idx], gen)
                xb, yb = runtime.to_device((xb, y[idx]), device)
                # 1. the adversarial neuron perturbation: random start, signed ascent steps
                if p.eps > 0:
                    nn_.reset_noise(p.eps, gen)
                    nn_.perturbed = True
                    for _ in range(p.steps):
                        loss = F.cross_entropy(classify(xb), yb)
                        grads = torch.autograd.grad(loss, [*nn_.noise_w, *nn_.noise_b])
                        with torch.no_grad():
                            for t, g in zip([*nn_.noise_w, *nn_.noise_b], grads, strict=True):
                                t.add_(g.sign(), alpha=p.eps / p.steps)
                # 2. the masks: natural and robust loss
                robust = torch.zeros((), device=device)
                if p.eps > 0:
                    nn_.perturbed = True
                    robust = F.cross_entropy(classify(xb), yb)
                nn_.perturbed = False
                natural = F.cross_entropy(classify(xb), yb)
                loss = p.trade_off * natural + (1 - p.trade_off) * robust
                opt.zero_grad()
                loss.backward()
                opt.step()
                for t in (*nn_.noise_w, *nn_.noise_b):
                    t.grad = None  # the noise is redrawn next iteration
                with torch.no_grad():
                    for m in nn_.masks:
                        m.clamp_(0, 1)
                if it % max(1, p.iterations // 10) == 0 or it == p.iterations - 1:
                    log["natural"].append(round(float(natural.detach()), 4))
                    log["robust"].append(round(float(robust.detach()), 4))
    finally:
        nn_.remove()
        with torch.no_grad():  # train-mode passes moved the BN statistics: put them back
            for k, v in classify.named_buffers():
                v.copy_(buffers[k])
        classify.train(was_training)
    return layers, [m.detach().cpu().clone() for m in nn_.masks], log


def mask_summary(masks: list[torch.Tensor], layers: list[tuple[str, nn.Module]]) -> dict:
    flat = torch.cat([m.flatten() for m in masks])
    qs = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    return {
        "neurons": int(flat.numel()),
        "layers": len(layers),
        "mask_quantiles": dict(zip([str(q) for q in qs], torch.quantile(flat, torch.tensor(qs)).tolist(), strict=True)),
        "below": {str(t): int((flat <= t).sum()) for t in (0.0, 0.05, 0.1, 0.2, 0.5, 0.9)},
        "layer_min": {name: round(float(m.min()), 4) for (name, _), m in zip(layers, masks, strict=True)},
    }


@DEFENSES.register(
    "anp",
    "prune norm neurons whose masks collapse under adversarial neuron perturbation (Wu & Wang 2021)",
    settings=("finetune", "supervised", "contrastive"),
)
class Anp(Defense):
    Params = AnpParams
    reference = ANP_REFERENCE

    def deviations_in(self, setting: str) -> list[str]:
        out = super().deviations_in(setting)
        if setting in ("finetune", "contrastive"):
            out.append(
                "CLIP settings: masks cover the image tower's norm layers and the loss is cross-entropy through the "
                "victim's zero-shot head (the reference prunes supervised classifiers)"
            )
        return out

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: AnpParams = self.params
        model = ctx.model
        clean, idx = ctx.clean_subset(p.data_fraction)
        clf = ctx.classify(model)
        encoder = getattr(model, "visual", model)
        meter = DataMeter()
        ctx.progress(f"anp: learning norm-neuron masks ({p.iterations} iterations)")
        layers, masks, log = learn_masks(clf, encoder, clean.x, clean.labels, p, ctx.generator(), meter, idx)
        original = [m.weight.detach().clone() for _, m in layers]

        def at(threshold) -> None:
            """Zero the norm weight of every neuron whose mask is <= threshold
            (IDENTITY: restore every weight)."""
            with torch.no_grad():
                for (_, m), w, mask in zip(layers, original, masks, strict=True):
                    m.weight.copy_(w)
                    if threshold != IDENTITY:
                        m.weight[mask.to(w.device) <= float(threshold)] = 0

        at(p.threshold)
        summary = mask_summary(masks, layers)
        pruned = sum(int((mask <= p.threshold).sum()) for mask in masks)
        return DefenseOutput(
            model=model,
            meter=meter,
            extra={**summary, "pruned": pruned, "pruned_fraction": pruned / summary["neurons"], "loss_log": log},
            # masks learned once; the threshold is the knob. No threshold is the identity
            # (masks clipped to exactly 0 are pruned at threshold 0), so IDENTITY restores.
            knob=KnobSpec("threshold", THRESHOLDS, at, chosen=p.threshold, identity=None, continuous=True),
        )
