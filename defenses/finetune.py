"""Clean fine-tuning ("FT" / "SupFT"): the setting's own loss on clean data only.

Budget rule (methods.md: "same budget as cleanclip", 50x TBAR's samples): the
defense may use budget_x * round(tbar_fraction * |train|) unique clean samples,
capped by the defender's pool, and trains `epochs` passes over them. With the
micro defaults that is 50 x 160 = 8000 requested, 2000 available (the pool is
25% of train, disjoint from the attacker's data), so the effective multiple is
12.5x; the record states both. Nothing is tuned: there is no validation choice (the
defended model is the end of the run). The strength knob is the training length:
checkpoints along the one run (epochs of the defense's data) form its trade-off curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.core.knobs import Count, Fraction, NonNegative, Positive
from bench.core.registry import DEFENSES
from bench.core.train import TrainSpec, train
from defenses.base import Checkpoints, DataMeter, Defense, DefenseContext, DefenseOutput, TrainingSet, budgeted_pool


@dataclass(frozen=True)
class FinetuneParams:
    budget_x: Positive = 50.0
    tbar_fraction: Fraction = 0.02  # TBAR's data_fraction: the unit of the budget
    epochs: Positive = 5.0
    lr: Positive = 1e-4
    batch_size: Count = 64
    weight_decay: NonNegative = 0.0


@DEFENSES.register(
    "finetune",
    "fine-tune on clean data only, 50x TBAR's data budget",
    settings=("finetune", "supervised", "contrastive"),
)
class CleanFinetune(Defense):
    Params = FinetuneParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: FinetuneParams = self.params
        pool, extra = budgeted_pool(ctx, p.budget_x, p.tbar_fraction)
        n = len(pool)
        targets = ctx.setting.encode_labels(pool.labels, ctx.dataset, ctx.seed, ctx.model)
        data = TrainingSet(pool.x, targets, torch.arange(n), torch.zeros(n, dtype=torch.bool))
        steps = max(1, math.ceil(p.epochs * n / p.batch_size))
        meter = DataMeter()
        ctx.progress(f"finetune: {steps} steps on {n} clean samples")
        torch.manual_seed(ctx.seed)
        spec = TrainSpec(steps=steps, lr=p.lr, batch_size=p.batch_size, weight_decay=p.weight_decay)
        ckpt = Checkpoints(ctx.model, steps, n, p.batch_size)
        train(ctx.model, ctx.setting.loss, data.stream(p.batch_size, ctx.generator(), meter), spec, on_step=ckpt.on_step)
        return DefenseOutput(model=ctx.model, meter=meter, extra=extra, knob=ckpt.spec())
