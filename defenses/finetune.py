"""Clean fine-tuning ("FT" / "SupFT"): the setting's own loss on clean data only.

Budget rule (methods.md: "same budget as cleanclip", i.e. 50x TBAR's samples):
the number of samples seen is budget_x * round(tbar_fraction * |train|), drawn
with repetition from the defender's whole clean pool. Nothing is tuned: the
schedule is fixed, so there is no validation choice to state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.registry import DEFENSES
from bench.train import TrainSpec, train
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput, TrainingSet


@dataclass(frozen=True)
class FinetuneParams:
    budget_x: float = 50.0
    tbar_fraction: float = 0.02
    lr: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 0.0


@DEFENSES.register(
    "finetune", "fine-tune on clean data only, 50x TBAR's sample budget", settings=("finetune", "supervised")
)
class CleanFinetune(Defense):
    Params = FinetuneParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: FinetuneParams = self.params
        pool = ctx.clean_pool
        data = TrainingSet(pool.x, pool.labels, torch.arange(len(pool)), torch.zeros(len(pool), dtype=torch.bool))
        samples = p.budget_x * round(p.tbar_fraction * ctx.train_size)
        steps = max(1, math.ceil(samples / p.batch_size))
        meter = DataMeter()
        ctx.progress(f"finetune: {steps} steps on {len(pool)} clean samples")
        torch.manual_seed(ctx.seed)
        spec = TrainSpec(steps=steps, lr=p.lr, batch_size=p.batch_size, weight_decay=p.weight_decay)
        train(ctx.model, ctx.setting.loss, data.stream(p.batch_size, ctx.generator(), meter), spec)
        return DefenseOutput(model=ctx.model, meter=meter)
