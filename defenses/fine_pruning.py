"""Fine-pruning (Liu et al. 2018), on clean data only.

1. Rank the units of the last block (CNN: last stage's output channels, averaged
   over positions; ViT: the last block's MLP hidden units at the tokens the tower
   pools, i.e. the class token under open_clip's default token pooling) by mean
   activation on the defender's clean data.
2. Mask the least active `step_fraction` (1%) more at a time, measuring clean
   validation accuracy after each step, until it falls below
   (1 - max_drop) * CA(backdoored) (max_drop 10%, relative); keep the last mask
   before that point. This is the tuning rule, and it reads validation CA only.
3. Fine-tune the pruned model on clean data (`data_fraction` 5% of train) with the
   setting's loss, the mask kept in place.

Trade-off curve (methods.md section 5): the knob is the pruned share of units; the
model at each value is pruned and then fine-tuned exactly like the chosen one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge, Lt

from bench.core.knobs import Count, Fraction, Positive
from bench.core.metrics import accuracy, predict
from bench.core.registry import DEFENSES
from bench.core.tradeoff import IDENTITY, KnobSpec
from bench.core.train import TrainSpec, train
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput, TrainingSet
from defenses.units import UnitMask, token_pool, unit_activations, unit_layer


@dataclass(frozen=True)
class FinePruningParams:
    step_fraction: Fraction = 0.01
    max_drop: Annotated[float, Ge(0), Lt(1)] = 0.10
    data_fraction: Fraction = 0.05
    epochs: Positive = 10.0
    lr: Positive = 1e-4
    batch_size: Count = 64
    curve_points: Count = 5  # pruning ratios on the trade-off curve, each fine-tuned (plus the chosen one)

    def __post_init__(self) -> None:
        if not 0 < self.step_fraction <= 1 or not 0 <= self.max_drop < 1:
            raise ValueError("need 0 < step_fraction <= 1 and 0 <= max_drop < 1")


def prune_until(ca_of_mask, order: torch.Tensor, step: int, threshold: float) -> tuple[int, list[dict]]:
    """Mask `order[:k]` for k = step, 2*step, ... while CA stays >= threshold.
    Returns the last feasible k (0 if even the first step is too much) and the curve."""
    curve: list[dict] = []
    best = 0
    for k in range(step, len(order) + 1, step):
        ca = ca_of_mask(k)
        curve.append({"pruned": k, "ca": ca})
        if ca < threshold:
            break
        best = k
    return best, curve


@DEFENSES.register(
    "fine-pruning",
    "prune the least active last-block units on clean data, then fine-tune (Liu et al. 2018)",
    settings=("finetune", "supervised", "contrastive"),
)
class FinePruning(Defense):
    Params = FinePruningParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: FinePruningParams = self.params
        model = ctx.model
        clean, idx = ctx.clean_subset(p.data_fraction)
        layer = unit_layer(model)
        clf = ctx.classify(model)
        ctx.progress("fine-pruning: ranking units")
        acts = unit_activations(clf, layer, clean.x, tokens=token_pool(model))
        order = torch.argsort(acts)  # least active first
        mask = UnitMask(layer, len(acts))
        x_val = ctx.val.x

        def prune(k: int) -> None:
            mask.mask = torch.ones(len(acts))
            mask.mask[order[:k]] = 0

        def ca_with(k: int) -> float:
            prune(k)
            return accuracy(predict(ctx.classify(model), x_val), ctx.val.labels)

        ca_bd = ca_with(0)
        step = max(1, round(p.step_fraction * len(acts)))
        best, curve = prune_until(ca_with, order, step, (1 - p.max_drop) * ca_bd)
        meter = DataMeter(val_clean=len(x_val))
        targets = ctx.setting.encode_labels(clean.labels, ctx.dataset, ctx.seed, model)
        data = TrainingSet(clean.x, targets, idx, torch.zeros(len(idx), dtype=torch.bool))
        steps = max(1, math.ceil(p.epochs * len(data) / p.batch_size))
        spec = TrainSpec(steps=steps, lr=p.lr, batch_size=p.batch_size)
        backdoored = {k: v.detach().clone() for k, v in model.state_dict().items()}

        # The strength knob is the pruned share of units: each value is pruned, then
        # fine-tuned with the same data, steps and seed (so points differ only in the
        # mask). The defense's own rule picks `best`; the others span 0 to twice that.
        counts = sorted({best, *(round(q * min(len(acts), max(2 * best, step))) for q in _spread(p.curve_points))})
        states: dict[float, tuple[dict, torch.Tensor]] = {}
        for k in counts:
            ctx.progress(f"fine-pruning: {k}/{len(acts)} units pruned; fine-tuning")
            model.load_state_dict(backdoored)
            prune(k)
            torch.manual_seed(ctx.seed)
            # the defense's cost is that of its own choice; the other points are the curve's
            m = meter if k == best else DataMeter()
            train(model, ctx.setting.loss, data.stream(p.batch_size, ctx.generator(), m), spec)
            states[k / len(acts)] = ({n: v.detach().clone() for n, v in model.state_dict().items()}, mask.mask.clone())

        def at(fraction) -> None:
            if fraction == IDENTITY:
                model.load_state_dict(backdoored)
                mask.mask = torch.ones(len(acts))
                return
            state, m = states[fraction]
            model.load_state_dict(state)
            mask.mask = m.clone()

        chosen = best / len(acts)
        at(chosen)
        # The mask stays installed: the defended model is the pruned, fine-tuned one.
        return DefenseOutput(
            model=model,
            meter=meter,
            extra={
                "units": len(acts),
                "pruned": best,
                "pruned_fraction": chosen,
                "val_ca_backdoored": ca_bd,
                "prune_curve": curve,
            },
            knob=KnobSpec("pruned_fraction", sorted(states), at, chosen=chosen),
        )


def _spread(n: int) -> list[float]:
    """n evenly spaced fractions in [0, 1]."""
    return [i / (n - 1) for i in range(n)] if n > 1 else [1.0]
