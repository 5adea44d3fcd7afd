"""CleanCLIP (Bansal et al. 2023): fine-tune CLIP on clean image-caption pairs with

    loss = 1.0 * CLIP loss + 1.0 * in-modal loss,
    in-modal = mean(image vs AutoAugment(image), text vs EDA(text)) contrastive losses,

AdamW (weight decay 0.1, none on norms, biases and logit_scale), linear warmup then
cosine, logit_scale clamped to ln(100). Captions of labelled data come from the
dataset's templates. Budget: like `finetune`, budget_x * |TBAR's set| unique clean
samples (capped by the defender's pool), `epochs` passes.

In the `finetune` setting the victim is an image encoder behind a head made from the
pre-trained text tower; that text tower is used, frozen (so the head stays valid),
and only the image encoder is updated. In `contrastive` both towers are trained.
Nothing is tuned on validation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from bench import runtime
from bench.models.clip import clip_inputs, tokenize
from bench.registry import DEFENSES
from bench.settings import pretrained_clip
from bench.train import TrainSpec, clip_contrastive_loss, index_batches, train
from defenses.base import Checkpoints, DataMeter, Defense, DefenseContext, DefenseOutput, budgeted_pool
from defenses.eda import eda


def cleanclip_loss(
    img: torch.Tensor,
    img_aug: torch.Tensor,
    txt: torch.Tensor,
    txt_aug: torch.Tensor,
    logit_scale: torch.Tensor,
    clip_weight: float = 1.0,
    inmodal_weight: float = 1.0,
) -> torch.Tensor:
    """CLIP loss(img, txt) + mean(InfoNCE(img, img_aug), InfoNCE(txt, txt_aug)), weighted."""
    inmodal = (clip_contrastive_loss(img, img_aug, logit_scale) + clip_contrastive_loss(txt, txt_aug, logit_scale)) / 2
    return clip_weight * clip_contrastive_loss(img, txt, logit_scale) + inmodal_weight * inmodal


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on norms, biases, logit_scale (any tensor of ndim < 2)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class CleanClipParams:
    budget_x: float = 50.0
    tbar_fraction: float = 0.02
    epochs: float = 5.0
    lr: float = 1e-4  # the finetune defense's lr: the two differ only in their loss and augmentations
    batch_size: int = 64
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    clip_weight: float = 1.0
    inmodal_weight: float = 1.0
    eda_alpha: float = 0.1


@DEFENSES.register(
    "cleanclip",
    "CLIP + in-modal loss on clean pairs with AutoAugment/EDA (Bansal et al. 2023)",
    settings=("finetune", "contrastive"),
)
class CleanClip(Defense):
    Params = CleanClipParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: CleanClipParams = self.params
        victim = ctx.model
        if ctx.setting.name == "contrastive":
            clip = victim
        else:  # the victim's image encoder inside the pre-trained CLIP, text tower frozen
            clip = copy.deepcopy(pretrained_clip(ctx.model_name, ctx.model_params))
            clip = clip.to(runtime.model_device(victim))  # the text tower joins the victim's device
            clip.visual = victim.visual
            for q in clip.parameters():
                q.requires_grad_(False)
            for q in clip.visual.parameters():
                q.requires_grad_(True)
        pool, extra = budgeted_pool(ctx, p.budget_x, p.tbar_fraction)
        n = len(pool)
        ds = ctx.dataset
        rng = np.random.default_rng(ctx.seed)
        captions = [ds.templates[rng.integers(len(ds.templates))].format(ds.classnames[int(y)]) for y in pool.labels]
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
                caps = [captions[i] for i in idx.tolist()]
                yield (
                    imgs.float() / 255,
                    aug,
                    tokenize(caps, clip.context_length),
                    tokenize([eda(c, rng, p.eda_alpha) for c in caps], clip.context_length),
                )

        def loss_fn(model, batch):
            x, x_aug, t, t_aug = batch
            model.logit_scale.data.clamp_(0, math.log(100))
            img = model.encode_image(clip_inputs(model, torch.cat([x, x_aug])))
            txt = model.encode_text(torch.cat([t, t_aug]))
            k = len(x)
            return cleanclip_loss(
                img[:k], img[k:], txt[:k], txt[k:], model.logit_scale, p.clip_weight, p.inmodal_weight
            )

        steps = max(1, math.ceil(p.epochs * n / p.batch_size))
        spec = TrainSpec(
            steps=steps,
            lr=p.lr,
            batch_size=p.batch_size,
            weight_decay=p.weight_decay,
            warmup_steps=round(p.warmup_fraction * steps),
        )
        ctx.progress(f"cleanclip: {steps} steps on {n} clean pairs")
        ckpt = Checkpoints(victim, steps, n, p.batch_size)
        train(clip, loss_fn, batches(), spec, params=decay_groups(clip, p.weight_decay), on_step=ckpt.on_step)
        return DefenseOutput(victim, meter, extra=extra, knob=ckpt.spec())
