"""PAR: Perturb and Recover (Singh, Croce & Hein 2024, arXiv 2412.00727; reference code:
the public nmndeep/PerturbAndRecover repository, losses.py `CLIPLoss`, train.py, utils.py
`load_clip_model`). Clean fine-tuning of a possibly backdoored CLIP theta, starting from
the backdoored theta_0 (kept frozen), with

    L_PAR = CLIP(f(x'), g(t)) - lambda * ( T(d(f(x'), f_0(x'))) + T(d(g(t), g_0(t))) ),
    d(a, b) = mean over the batch of || a_i/|a_i| - b_i/|b_i| ||_2^2,
    T(d)    = d if d <= tau else 0   (no gradient once the batch has moved far enough),

f, g the image and text encoders being cleaned, f_0, g_0 the frozen backdoored ones,
CLIP(.) the symmetric InfoNCE at the model's current (detached) logit scale, lambda = 0.5
and tau = 2.15 (the code's hard-coded 0.5 and --loss-thresh). The perturbation term
pushes the embeddings away from the backdoored model's (d of unit vectors lies in
[0, 4]; 2.15 is a little past orthogonal) while the CLIP loss recovers clean
behaviour. Both terms see the same augmented image x': with probability 1/2 Gaussian
noise (std 0.2, the noise itself clipped to [0, 1] before it is added, as the
reference's AddGaussianNoise does, so it only brightens) then a clip to [0, 1]; and,
with probability 1/2, a random square of 0.5-1% of the image area erased to the
normalisation mean (the reference's RandomErasing, value 0, after Normalize). Clean
images themselves are not used by the loss.

Optimiser and schedule, as train.py's defaults: AdamW (betas 0.9/0.98, eps 1e-8),
weight decay 1e-4 except on tensors of rank < 2 and names containing "bias", "ln" or
"bn"; the learning rate goes linearly from lr_start 3e-5 to lr 3e-6 over the first
half of training (warmup_epochs 0.5 x epochs), then follows a cosine from 3e-6 to
lr_end 1e-9. Batch 1024 (256 per GPU on the default 4), 10 epochs. The authors' run
script (trigger.sh) uses 2 epochs at batch 2048 on 250k CC3M pairs.

Data: captions of labelled data come from the dataset's templates (one per sample,
drawn once); budget like cleanclip's: budget_x * |TBAR's set| unique clean samples
of the defender's pool. In the `finetune` setting the victim is an image encoder
behind a zero-shot head from the pre-trained text tower: that tower is used frozen (as
cleanclip does), so g = g_0 and the text term is identically 0. Nothing is tuned on
validation; the strength knob is the training length (checkpoints along the one run).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch import nn

from bench.core.knobs import Fraction, NonNegative, Positive, Share
from bench.core.registry import DEFENSES
from bench.core.train import TrainSpec, clip_contrastive_loss, index_batches, train
from bench.models.clip import clip_inputs, input_spec, tokenize
from defenses.base import Checkpoints, DataMeter, Defense, DefenseContext, DefenseOutput, budgeted_pool
from defenses.cleanclip import FROZEN_TEXT_TOWER, NORM_STATS_FROZEN, TEMPLATE_CAPTIONS, clip_for_finetuning


def thresholded(d: torch.Tensor, tau: float) -> torch.Tensor:
    """The reference's threshold_tensor(d, tau, 0): d where d <= tau, else 0 (and no gradient)."""
    return torch.where(d > tau, torch.zeros_like(d), d)


def embedding_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch mean of the squared L2 distance between L2-normalised rows."""
    return ((F.normalize(a, dim=-1) - F.normalize(b, dim=-1)) ** 2).sum(dim=1).mean()


def par_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    img_bd: torch.Tensor,
    txt_bd: torch.Tensor,
    logit_scale: torch.Tensor,
    tau: float = 2.15,
    weight: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CLIP(img, txt) - weight * (T(d(img, img_bd)) + T(d(txt, txt_bd))), the CLIP term at
    scale exp(logit_scale), used detached (the reference passes logit_scale.exp().item())."""
    clip = clip_contrastive_loss(img, txt, logit_scale.detach())
    d_img, d_txt = embedding_distance(img, img_bd), embedding_distance(txt, txt_bd)
    loss = clip - weight * (thresholded(d_img, tau) + thresholded(d_txt, tau))
    return loss, {"clip": float(clip.detach()), "d_img": float(d_img.detach()), "d_txt": float(d_txt.detach())}


def par_augment(x: torch.Tensor, gen: torch.Generator, fill: tuple[float, ...], p: ParParams) -> torch.Tensor:
    """The reference's training transform on [0, 1] images (N, C, H, W): half-rectified
    Gaussian noise with probability noise_p, then RandomErasing of a square of
    erase_min..erase_max of the area, filled with `fill` (the normalisation mean, so 0
    once normalised), with probability erase_p."""
    x = x.clone()
    n, _, h, w = x.shape
    noisy = torch.rand(n, generator=gen) < p.noise_p
    if noisy.any():
        noise = (torch.randn(x[noisy].shape, generator=gen) * p.noise_std).clamp(0, 1)
        x[noisy] = (x[noisy] + noise).clamp(0, 1)
    erase = torch.rand(n, generator=gen) < p.erase_p
    value = torch.tensor(fill, dtype=x.dtype).view(-1, 1, 1)
    for i in torch.nonzero(erase).flatten().tolist():
        area = h * w * (p.erase_min + (p.erase_max - p.erase_min) * float(torch.rand((), generator=gen)))
        side = round(math.sqrt(area))  # ratio (1, 1): a square
        if not (0 < side < h and side < w):
            continue
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        x[i, :, top : top + side, left : left + side] = value
    return x


def par_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The reference's AdamW groups: no decay on rank < 2 tensors or names with bias/ln/bn."""
    decay, no_decay = [], []
    for name, q in model.named_parameters():
        skip = q.ndim < 2 or "bias" in name or "ln" in name or "bn" in name
        (no_decay if skip else decay).append(q)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


ShareBelowOne = Annotated[float, Ge(0), Lt(1)]  # [0, 1): the warmup's share of steps, Adam's betas


@dataclass(frozen=True)
class ParParams:
    budget_x: Positive = 50.0
    tbar_fraction: Fraction = 0.02
    epochs: Positive = 10.0
    batch_size: Annotated[int, Ge(2)] = 1024
    lr: Positive = 3e-6  # reached at the end of the warmup; then cosine to lr_end
    lr_start: NonNegative = 3e-5
    lr_end: NonNegative = 1e-9
    warmup_fraction: ShareBelowOne = 0.5  # of all steps (--warmup-epochs 0.5, multiplied by the epochs)
    weight_decay: NonNegative = 1e-4
    beta1: ShareBelowOne = 0.9
    beta2: ShareBelowOne = 0.98
    tau: Positive = 2.15
    weight: NonNegative = 0.5
    noise_p: Share = 0.5
    noise_std: NonNegative = 0.2
    erase_p: Share = 0.5
    erase_min: Share = 0.005
    erase_max: Share = 0.01

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_fraction < 1 or self.tau <= 0 or self.batch_size < 2:
            raise ValueError("need 0 <= warmup_fraction < 1, tau > 0 and batch_size >= 2")


PAR_REFERENCE = {
    "epochs": 10.0, "batch_size": 1024, "lr": 3e-6, "lr_start": 3e-5, "lr_end": 1e-9, "warmup_fraction": 0.5,
    "weight_decay": 1e-4, "beta1": 0.9, "beta2": 0.98, "tau": 2.15, "weight": 0.5, "noise_p": 0.5,
    "noise_std": 0.2, "erase_p": 0.5, "erase_min": 0.005, "erase_max": 0.01,
}  # fmt: skip


@DEFENSES.register(
    "par",
    "Perturb and Recover: CLIP loss minus a capped push away from the backdoored embeddings (Singh et al. 2024)",
    settings=("finetune", "contrastive"),
)
class Par(Defense):
    data_used = "clean image-caption pairs"
    knows = "nothing"
    Params = ParParams
    reference = PAR_REFERENCE
    deviations = (
        TEMPLATE_CAPTIONS,
        "data: budget_x x TBAR's set of the defender's clean pool (the reference: 250k CC3M or synthetic pairs)",
        "augmentations at the dataset's resolution, before the resize to the tower's input (the reference erases "
        "after resizing to 224 px)",
        NORM_STATS_FROZEN,
    )

    def deviations_in(self, setting: str) -> list[str]:
        out = super().deviations_in(setting)
        if setting == "finetune":
            out.append(f"{FROZEN_TEXT_TOWER}; the text perturbation term is therefore 0")
        return out

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: ParParams = self.params
        victim = ctx.model
        clip = clip_for_finetuning(ctx)
        backdoored = copy.deepcopy(clip).eval()  # theta_0, frozen
        for q in backdoored.parameters():
            q.requires_grad_(False)
        pool, extra = budgeted_pool(ctx, p.budget_x, p.tbar_fraction)
        n = len(pool)
        ds = ctx.dataset
        rng = np.random.default_rng(ctx.seed)
        captions = [ds.templates[rng.integers(len(ds.templates))].format(ds.classnames[int(y)]) for y in pool.labels]
        tokens = tokenize(captions, clip.context_length)
        fill = input_spec(clip)[0]
        torch.manual_seed(ctx.seed)
        meter = DataMeter()
        gen, aug_gen = ctx.generator(), ctx.generator(offset=1)
        text_frozen = ctx.setting.name == "finetune"
        log: list[dict] = []

        def batches():
            for idx in index_batches(n, p.batch_size, gen):
                meter.clean.update(idx.tolist())
                meter.samples_seen += len(idx)
                meter.steps += 1
                yield par_augment(pool.images[idx].float() / 255, aug_gen, fill, p), tokens[idx]

        def loss_fn(model, batch):
            x, t = batch
            img = model.encode_image(clip_inputs(model, x))
            txt = model.encode_text(t)
            with torch.no_grad():
                img_bd = backdoored.encode_image(clip_inputs(backdoored, x))
                txt_bd = txt.detach() if text_frozen else backdoored.encode_text(t)
            loss, parts = par_loss(img, txt, img_bd, txt_bd, model.logit_scale, p.tau, p.weight)
            if len(log) < 3 or meter.steps % max(1, steps // 10) == 0:
                log.append({"step": meter.steps, **{k: round(v, 4) for k, v in parts.items()}})
            return loss

        steps = max(1, math.ceil(p.epochs * n / p.batch_size))
        spec = TrainSpec(
            steps=steps,
            lr=p.lr,
            batch_size=p.batch_size,
            weight_decay=p.weight_decay,
            warmup_steps=int(p.warmup_fraction * steps),
            warmup_start_lr=p.lr_start,
            final_lr=p.lr_end,
            betas=(p.beta1, p.beta2),
        )
        ctx.progress(f"par: {steps} steps on {n} clean pairs")
        ckpt = Checkpoints(victim, steps, n, p.batch_size)
        train(clip, loss_fn, batches(), spec, params=par_decay_groups(clip, p.weight_decay), on_step=ckpt.on_step)
        return DefenseOutput(victim, meter, extra={**extra, "loss_log": log}, knob=ckpt.spec())
