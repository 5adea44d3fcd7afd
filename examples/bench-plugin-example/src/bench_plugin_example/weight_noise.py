"""The `weight-noise` defense: perturb every weight with Gaussian noise, as strong as the
validation split allows.

A defense is a class with
- `Params`: a dataclass of its knobs (required, even when empty); a suite sets them with
  `defense_params: {weight-noise: {...}}` and they enter the trial id;
- `run(ctx) -> DefenseOutput`: it gets the backdoored model (`ctx.model`, which it may
  change in place), the defender's clean pool (`ctx.clean_pool`), the validation split
  for tuning (`ctx.val`) and never any test data; it returns the defended model and a
  DataMeter saying what it consumed. `extra` lands in the record under "defense".
Tuning rule (stated here, as every defense states it): the largest `sigma` on the grid
whose validation clean accuracy stays at or above `kappa` times the unperturbed model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.knobs import Fraction, NonNegative
from bench.core.metrics import accuracy, predict
from bench.core.registry import DEFENSES
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput


@dataclass(frozen=True)
class WeightNoiseParams:
    sigmas: tuple[NonNegative, ...] = (0.05, 0.1, 0.2, 0.4)  # noise std, relative to each tensor's std
    kappa: Fraction = 0.9  # keep validation CA >= kappa x the unperturbed model's


def add_noise(model: torch.nn.Module, sigma: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                noise = torch.randn(p.shape, generator=gen) * (sigma * p.detach().float().std().item())
                p.add_(noise.to(p.device, p.dtype))


@DEFENSES.register(
    "weight-noise",
    "Gaussian noise on every weight, the strongest that keeps validation CA (example plugin)",
    settings=("finetune", "supervised", "contrastive"),
)
class WeightNoise(Defense):
    Params = WeightNoiseParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p: WeightNoiseParams = self.params
        meter = DataMeter()
        x_val = ctx.val.x

        def val_ca(model: torch.nn.Module) -> float:
            meter.val_clean += len(ctx.val)
            return accuracy(predict(ctx.classify(model), x_val), ctx.val.labels)

        reference = val_ca(ctx.model)
        original = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        chosen, tried = 0.0, []
        for sigma in sorted(p.sigmas):
            ctx.progress(f"weight-noise: sigma {sigma}")
            add_noise(ctx.model, sigma, ctx.seed)
            ca = val_ca(ctx.model)
            tried.append({"sigma": sigma, "val_ca": ca})
            ctx.model.load_state_dict(original)
            if ca >= p.kappa * reference:
                chosen = sigma
        if chosen:
            add_noise(ctx.model, chosen, ctx.seed)
        return DefenseOutput(model=ctx.model, meter=meter, extra={"sigma": chosen, "val_reference_ca": reference,
                                                                   "tried": tried})  # fmt: skip
