"""CleanCLIP (Bansal et al. 2023; reference code: the public nishadsinghi/CleanCLIP
repository, src/train.py `get_loss`, src/main.py, utils/augment_text.py): fine-tune CLIP
on clean image-caption pairs with

    loss = clip_weight * CLIP(img, txt) + inmodal_weight * in-modal,
    in-modal = (CE(s * img @ img_aug^T, I) + CE(s * txt @ txt_aug^T, I)) / 2,

CLIP(.) the symmetric InfoNCE and the in-modal terms one-directional, as in the
reference (each image is the query over the batch's augmented images, each caption
over the augmented captions); s = exp(logit_scale), embeddings L2-normalised. Images
are augmented with AutoAugment (ImageNet policy, drawn afresh each time an image is
used); each caption gets ONE EDA variant, drawn once before training (the reference
precomputes `augmented_caption` per row).

Optimiser, as in the reference: AdamW (betas 0.9/0.999), weight decay 0.1 on every
parameter whose name contains none of "bn", "ln", "bias", "logit_scale" (the
reference's name rule; it decays embeddings such as class/positional embeddings, and
on open_clip's ResNet tower the BatchNorm inside `downsample`, named downsample.1),
linear warmup for `warmup_steps` steps then cosine to 0; logit_scale clamped to
[0, ln 100] after every step. Published recipe, the defaults here: lr 1e-5, batch 64,
10 epochs, 50 warmup steps.

Data: captions of labelled data come from the dataset's templates (one template per
sample, drawn once); budget like `finetune`: budget_x * |TBAR's set| unique clean
samples (capped by the defender's pool), `epochs` passes.

In the `finetune` setting the victim is an image encoder behind a head made from the
pre-trained text tower; that text tower is used, frozen (so the head stays valid),
and only the image encoder is updated. In `contrastive` both towers are trained.
Nothing is tuned on validation; the strength knob is the training length
(checkpoints along the one run).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from bench.core import runtime
from bench.core.knobs import Count, Fraction, Index, NonNegative, Positive, Share
from bench.core.registry import DEFENSES
from bench.core.train import TrainSpec, clip_contrastive_loss, index_batches, train
from bench.models.clip import clip_inputs, tokenize
from defenses.base import Checkpoints, DataMeter, Defense, DefenseContext, DefenseOutput, budgeted_pool
from defenses.eda import eda


def infonce(queries: torch.Tensor, keys: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """One-directional InfoNCE: row i of `queries` should pick row i of `keys`
    (cross-entropy over exp(logit_scale) * cosine similarities)."""
    logits = logit_scale.exp() * F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def cleanclip_loss(
    img: torch.Tensor,
    img_aug: torch.Tensor,
    txt: torch.Tensor,
    txt_aug: torch.Tensor,
    logit_scale: torch.Tensor,
    clip_weight: float = 1.0,
    inmodal_weight: float = 1.0,
) -> torch.Tensor:
    """clip_weight * CLIP(img, txt) + inmodal_weight * (InfoNCE(img -> img_aug) + InfoNCE(txt -> txt_aug)) / 2."""
    inmodal = (infonce(img, img_aug, logit_scale) + infonce(txt, txt_aug, logit_scale)) / 2
    return clip_weight * clip_contrastive_loss(img, txt, logit_scale) + inmodal_weight * inmodal


NO_DECAY_KEYS = ("bn", "ln", "bias", "logit_scale")  # the reference's rule (src/main.py)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups by parameter name, as CleanCLIP's code builds them: no decay on any
    parameter whose name contains "bn", "ln", "bias" or "logit_scale"."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if any(k in name for k in NO_DECAY_KEYS) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class CleanClipParams:
    budget_x: Positive = 50.0
    tbar_fraction: Fraction = 0.02
    epochs: Positive = 10.0
    lr: Positive = 1e-5
    batch_size: Count = 64
    weight_decay: NonNegative = 0.1
    warmup_steps: Index = 50
    clip_weight: NonNegative = 1.0
    inmodal_weight: NonNegative = 1.0
    eda_alpha: Share = 0.1


# The published recipe (README "CleanCLIP Finetuning", src/parser.py, utils/eda.py).
CLEANCLIP_REFERENCE = {
    "epochs": 10.0, "lr": 1e-5, "batch_size": 64, "weight_decay": 0.1, "warmup_steps": 50,
    "clip_weight": 1.0, "inmodal_weight": 1.0, "eda_alpha": 0.1,
}  # fmt: skip

# Shared with par, which fine-tunes the same way in the `finetune` setting.
FROZEN_TEXT_TOWER = (
    "finetune setting: only the image encoder is trained, behind the victim's zero-shot head; the pre-trained "
    "text tower is used frozen (the reference fine-tunes both towers of a whole CLIP)"
)
NORM_STATS_FROZEN = (
    "BatchNorm running statistics are kept fixed while fine-tuning (open_clip ResNet towers only; the reference "
    "trains in train mode)"
)
TEMPLATE_CAPTIONS = (
    "captions of labelled data are the dataset's zero-shot templates filled with the class name, one per sample "
    "(the reference fine-tunes on web image-caption pairs)"
)


@DEFENSES.register(
    "cleanclip",
    "CLIP + in-modal loss on clean pairs with AutoAugment/EDA (Bansal et al. 2023)",
    settings=("finetune", "contrastive"),
)
class CleanClip(Defense):
    data_used = "clean image-caption pairs"
    knows = "nothing"
    Params = CleanClipParams
    reference = CLEANCLIP_REFERENCE
    deviations = (
        TEMPLATE_CAPTIONS,
        "EDA synonyms come from a small built-in table (WordNet is not available offline)",
        "data: budget_x x TBAR's set of the defender's clean pool (the reference uses 100k CC3M pairs)",
        NORM_STATS_FROZEN,
    )

    def deviations_in(self, setting: str) -> list[str]:
        out = super().deviations_in(setting)
        return [*out, FROZEN_TEXT_TOWER] if setting == "finetune" else out

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: CleanClipParams = self.params
        victim = ctx.model
        clip = clip_for_finetuning(ctx)
        pool, extra = budgeted_pool(ctx, p.budget_x, p.tbar_fraction)
        n = len(pool)
        ds = ctx.dataset
        rng = np.random.default_rng(ctx.seed)
        captions = [ds.templates[rng.integers(len(ds.templates))].format(ds.classnames[int(y)]) for y in pool.labels]
        # one EDA variant per caption, drawn once (the reference precomputes them)
        augmented = [eda(c, rng, p.eda_alpha) for c in captions]
        tokens = tokenize(captions, clip.context_length)
        tokens_aug = tokenize(augmented, clip.context_length)
        augment = AutoAugment(AutoAugmentPolicy.IMAGENET)
        torch.manual_seed(ctx.seed)
        meter = DataMeter()
        gen = ctx.generator()

        def batches():
            for idx in index_batches(n, p.batch_size, gen):
                meter.clean.update(idx.tolist())
                meter.samples_seen += len(idx)
                meter.steps += 1
                imgs = pool.images[idx]
                aug = torch.stack([augment(im) for im in imgs]).float() / 255
                yield imgs.float() / 255, aug, tokens[idx], tokens_aug[idx]

        def loss_fn(model, batch):
            x, x_aug, t, t_aug = batch
            img = model.encode_image(clip_inputs(model, torch.cat([x, x_aug])))
            txt = model.encode_text(torch.cat([t, t_aug]))
            k = len(x)
            return cleanclip_loss(
                img[:k], img[k:], txt[:k], txt[k:], model.logit_scale, p.clip_weight, p.inmodal_weight
            )

        steps = max(1, math.ceil(p.epochs * n / p.batch_size))
        spec = TrainSpec(
            steps=steps, lr=p.lr, batch_size=p.batch_size, weight_decay=p.weight_decay, warmup_steps=p.warmup_steps
        )
        ctx.progress(f"cleanclip: {steps} steps on {n} clean pairs")
        ckpt = Checkpoints(victim, steps, n, p.batch_size)

        def on_step(step: int, loss: float) -> None:
            with torch.no_grad():  # the reference clamps after every optimiser step
                clip.logit_scale.clamp_(0, math.log(100))
            ckpt.on_step(step, loss)

        train(clip, loss_fn, batches(), spec, params=decay_groups(clip, p.weight_decay), on_step=on_step)
        return DefenseOutput(victim, meter, extra=extra, knob=ckpt.spec())


def clip_for_finetuning(ctx: DefenseContext) -> nn.Module:
    """The CLIP a caption-level defense trains: the victim itself in `contrastive`; in
    `finetune`, the pre-trained CLIP with the victim's image encoder in place of its
    own (shared, so training it edits the victim) and everything else frozen."""
    victim = ctx.model
    if ctx.setting.name == "contrastive":
        return victim
    clip = copy.deepcopy(ctx.victim.pretrained())
    clip = clip.to(runtime.model_device(victim))  # the text tower joins the victim's device
    clip.visual = victim.visual
    for q in clip.parameters():
        q.requires_grad_(False)
    for q in clip.visual.parameters():
        q.requires_grad_(True)
    return clip
