"""Trigger-inversion detectors and TBAR's inverted mode, which knows nothing of the attack."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from attacks.images import save_png
from bench.core.knobs import Count, Positive
from bench.core.registry import DEFENSES
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput, KnownAttack
from defenses.inversion import DecreeParams, InversionParams, InvertedTrigger, decree, neural_cleanse
from defenses.tbar import Tbar, TbarParams


def invert(ctx: DefenseContext, method: str, p: InversionParams | DecreeParams, meter: DataMeter) -> InvertedTrigger:
    """Reverse-engineer a trigger on the defender's clean data (never the attack's)."""
    clean, idx = ctx.clean_subset(p.data_fraction)
    meter.clean.update(idx.tolist())
    runs = ctx.dataset.num_classes if method == "neural-cleanse" else 1
    meter.steps += p.steps * runs
    meter.samples_seen += p.steps * runs * p.batch_size
    gen = ctx.generator(offset=7)
    x = clean.x
    if method == "neural-cleanse":
        return neural_cleanse(ctx.classify(ctx.model), x, ctx.dataset.num_classes, p, gen, ctx.progress)
    clf = ctx.classify(ctx.model)
    if not hasattr(clf, "features"):
        raise ValueError("decree needs an encoder (a CLIP setting); use neural-cleanse for classifiers")
    ctx.progress("decree: inverting the trigger")
    return decree(clf.features, clf, list(ctx.model.parameters()), x, p, gen)


def save_inverted(ctx: DefenseContext, inv: InvertedTrigger) -> list[str]:
    if ctx.out_dir is None:
        return []
    save_png(inv.mask, ctx.out_dir / "inverted_mask.png", scale=4)
    save_png(inv.pattern * inv.mask, ctx.out_dir / "inverted_trigger.png", scale=4)
    return ["inverted_mask.png", "inverted_trigger.png"]


class Detector(Defense):
    """Runs an inversion and reports it; the model is returned unchanged."""

    method: str
    detector = True

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        meter = DataMeter()
        inv = invert(ctx, self.method, self.params, meter)
        files = save_inverted(ctx, inv)
        return DefenseOutput(ctx.model, meter, extra={"target_est": inv.target, "inversion": inv.info, "files": files})


@DEFENSES.register(
    "neural-cleanse",
    "detector: per-class minimal trigger, MAD outlier = target (Wang et al. 2019)",
    settings=("supervised", "finetune"),
)
class NeuralCleanse(Detector):
    Params = InversionParams
    method = "neural-cleanse"


@DEFENSES.register(
    "decree",
    "detector: trigger that collapses encoder embeddings (Feng et al. 2023)",
    settings=("finetune", "contrastive"),
)
class Decree(Detector):
    Params = DecreeParams
    method = "decree"
    deviations = (
        "a fixed budget of optimiser steps (default 300) instead of up to 1000 epochs with early stopping",
        "the target class is the zero-shot head's most frequent prediction on triggered images (DECREE detects; it "
        "names no target)",
    )


@dataclass(frozen=True)
class TbarInvertedParams(TbarParams):
    inverter: Literal["auto", "decree", "neural-cleanse"] = "auto"  # auto: decree for CLIP, neural-cleanse otherwise
    inversion_steps: Count = 300
    inversion_lr: Positive | None = None  # None: the inverter's own (neural-cleanse 0.1, decree 0.5)


@DEFENSES.register(
    "tbar-inverted",
    "tbar with no knowledge of the attack: trigger and target from trigger inversion",
    settings=("finetune", "supervised", "contrastive"),
)
class TbarInverted(Tbar):
    data_used = "clean, triggered with its own inverted trigger"
    knows = "nothing"
    Params = TbarInvertedParams
    uses_attack_knowledge = False  # the engine gives it no trigger and no target

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: TbarInvertedParams = self.params
        method = (
            p.inverter if p.inverter != "auto" else ("decree" if ctx.setting.model_kind == "clip" else "neural-cleanse")
        )
        meter = DataMeter()
        cls = DecreeParams if method == "decree" else InversionParams
        lr = {"lr": p.inversion_lr} if p.inversion_lr is not None else {}
        inv_params = cls(steps=p.inversion_steps, data_fraction=p.data_fraction, **lr)
        inv = invert(ctx, method, inv_params, meter)
        target = inv.target
        known = KnownAttack(apply=inv.apply, targets=lambda y: torch.full_like(y, target))
        out = super().run(dataclasses.replace(ctx, known=known))
        out.meter.clean |= meter.clean  # inversion used clean samples of the same pool
        out.meter.steps += meter.steps
        out.extra.update({"target_est": target, "inversion": inv.info, "files": save_inverted(ctx, inv)})
        return out
