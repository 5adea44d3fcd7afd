"""TBAR-aware: a backdoor trained to survive the subtraction of its own task vector.

TBAR (defenses/tbar.py) rests on one premise: the backdoor is a direction in weight
space of its own. Fine-tuning the backdoored model on triggered samples labelled with
the target estimates that direction (tau), and theta - a * tau removes the backdoor
before it costs clean accuracy. This attacker knows the defense and its published
recipe, not the defender's data or seed, and controls the victim's training (the
supply-chain threat model TBAR's paper defends against: a backdoored model is
released). It trains the victim on the poisoned set of a plain attack (`base`, the
same trigger and the same poisoned rows as that attack with the same seed) with one
term more, in the spirit of sharpness-aware training:

    loss(theta) + weight * L_bd(theta - a * tau_hat),   a ~ U(0, survive_alpha)

- tau_hat is TBAR's own estimate, simulated: every `refresh` steps the attacker runs
  TBAR's recipe (`sim_steps` steps of `sim_lr`, batches of `sim_batch_size`, on up to
  `sim_samples` triggered clean images it has seen lately) on a copy of the model
  being trained, and takes the difference of the encoder's parameters.
- L_bd is the training loss on triggered clean rows of the batch labelled with the
  target. Its gradient at the subtracted weights reaches theta unchanged
  (d(theta - a tau)/d theta = I), so minimising it moves theta to where the backdoor
  survives every subtraction up to survive_alpha of the task vector TBAR would find.

To remove it, TBAR must subtract more than survive_alpha times its vector, and the
blind operating point stops where clean accuracy falls below the retention level: the
vector is made costly to subtract. How far that holds is what the benchmark measures:
the `adaptive` page pairs it with its base attack defense by defense, and `bench analyze
alpha` follows TBAR's deployed vector (trigger effect, target bias, CA) along the scale.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from attacks.base import Attack, AttackParams, PoisonedSet
from bench.core import taskvec
from bench.core.knobs import Count, NonNegative, Positive
from bench.core.registry import ATTACKS
from bench.core.splits import subseed
from bench.core.train import TrainSpec, index_batches

# The family of defenses this attack is built against (`bench list attacks` shows it).
WEIGHT_ARITHMETIC = "weight arithmetic (TBAR: subtracting the trigger's task vector)"


@dataclass(frozen=True)
class TbarAwareParams(AttackParams):
    base: Literal["blended", "badnets", "sig"] = "blended"  # the plain attack whose trigger and poison set it uses
    survive_alpha: Positive = 1.0  # the backdoor is trained to survive theta - a * tau for a in [0, survive_alpha]
    weight: NonNegative = 1.0  # of the surviving term; 0 is the plain attack
    refresh: Count = 50  # attack training steps between two simulations of TBAR
    triggered_rows: Count = 16  # triggered clean rows per batch in the surviving term
    # TBAR's published recipe (defenses/tbar.py, TbarParams' defaults; a test keeps them equal):
    # 2% of the 8000-image train split, 50 steps of lr 1e-4, batches of 32.
    sim_samples: Count = 160
    sim_steps: Count = 50
    sim_lr: Positive = 1e-4
    sim_batch_size: Count = 32


@contextlib.contextmanager
def norms_frozen(model: nn.Module):
    """Normalisation layers in eval mode inside the block (no running statistics
    updated by an extra pass), their training flags restored after it."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [m.training for m in norms]
    try:
        for m in norms:
            m.eval()
        yield
    finally:
        for m, flag in zip(norms, flags, strict=True):
            m.train(flag)


class _LossOf(nn.Module):
    """A loss function (model, batch) -> loss as a module, so torch.func.functional_call
    can evaluate it at other parameters of `model` without touching them."""

    def __init__(self, loss, model: nn.Module):
        super().__init__()
        self.loss, self.model = loss, model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model, (x, y))


class SurviveSubtraction:
    """The TBAR-aware training loss: the setting's own plus the backdoor's loss after
    subtracting a scaled copy of TBAR's simulated task vector (module doc)."""

    def __init__(self, attack: TbarAware, loss, model: nn.Module, encoder: list[nn.Parameter], num_classes: int):
        self.attack, self.loss, self.num_classes = attack, loss, num_classes
        p: TbarAwareParams = attack.params
        self.p = p
        ids = {id(q) for q in encoder}
        self.names = [n for n, q in model.named_parameters() if id(q) in ids and q.requires_grad]
        self.generator = torch.Generator().manual_seed(subseed(attack.seed, "tbar-aware"))
        self.seen_x: list[torch.Tensor] = []
        self.seen_y: list[torch.Tensor] = []
        self.tau: dict[str, torch.Tensor] | None = None
        self.step = 0
        self.simulations = 0
        self.tau_norms: list[float] = []

    def _remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the latest `sim_samples` clean non-target rows: the attacker's stand-in
        for the defender's small clean set."""
        self.seen_x.append(x.detach())
        self.seen_y.append(y.detach())
        while sum(len(t) for t in self.seen_x) - len(self.seen_x[0]) >= self.p.sim_samples:
            self.seen_x.pop(0)
            self.seen_y.pop(0)

    def _simulate_tbar(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """TBAR steps 1-3 on a copy of `model`: fine-tune on triggered images labelled
        with the target, tau = theta_T - theta."""
        x = torch.cat(self.seen_x)[-self.p.sim_samples :]
        y = torch.cat(self.seen_y)[-self.p.sim_samples :]
        xt, yt = self.attack.apply(x), self.attack.targets(y, self.num_classes)
        spec = TrainSpec(steps=self.p.sim_steps, lr=self.p.sim_lr, batch_size=self.p.sim_batch_size, schedule="constant")
        batches = ((xt[idx], yt[idx]) for idx in index_batches(len(xt), self.p.sim_batch_size, self.generator))
        tau = taskvec.finetune_vector(model, self.loss, batches, spec, only=set(self.names))
        self.tau_norms.append(taskvec.norm(tau))
        self.simulations += 1
        return tau

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        targets = self.attack.targets(y, self.num_classes)
        keep = targets != y  # clean rows of other classes (the poisoned rows already carry the target)
        surviving = None
        if bool(keep.any()) and self.p.weight > 0:
            self._remember(x[keep], y[keep])
            if self.step % self.p.refresh == 0 and sum(len(t) for t in self.seen_x) >= self.p.sim_batch_size:
                with torch.enable_grad():
                    self.tau = self._simulate_tbar(model)
            if self.tau is not None:
                a = self.p.survive_alpha * float(torch.rand((), generator=self.generator))
                rows = x[keep][: self.p.triggered_rows]
                xt = self.attack.apply(rows)
                yt = self.attack.targets(y[keep][: self.p.triggered_rows], self.num_classes)
                own = dict(model.named_parameters())
                subtracted = {f"model.{n}": own[n] - a * self.tau[n] for n in self.names}
                with norms_frozen(model):
                    surviving = functional_call(_LossOf(self.loss, model), subtracted, (xt, yt), strict=False)
        self.step += 1
        loss = self.loss(model, batch)
        return loss if surviving is None else loss + self.p.weight * surviving

    def info(self) -> dict:
        return {"simulations": self.simulations, "tau_norm_last": self.tau_norms[-1] if self.tau_norms else None}


@ATTACKS.register(
    "tbar-aware",
    "trained to survive subtracting TBAR's own task vector (this project's adaptive attack)",
    settings=("finetune", "supervised"),
)
class TbarAware(Attack):
    Params = TbarAwareParams
    adaptive = WEIGHT_ARITHMETIC

    @classmethod
    def plain_counterpart(cls, params: TbarAwareParams) -> str | None:
        return params.base

    def __init__(self, params: TbarAwareParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        cls = ATTACKS.get(params.base)
        # The base attack with the same seed: the same trigger and the same poisoned rows.
        base_params = cls.Params(target=params.target, poison_rate=params.poison_rate, all_to_all=params.all_to_all)
        self.base = cls(base_params, image_shape, seed)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.apply(x)

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, default_rate: float, seed: int) -> PoisonedSet:
        return self.base.poison(x, y, num_classes, default_rate, seed)

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return self.base.trigger_tensors()

    def save_trigger(self, folder: Path) -> list[str]:
        return self.base.save_trigger(folder)

    def training_loss(self, loss, model: nn.Module, encoder: list[nn.Parameter], num_classes: int):
        return SurviveSubtraction(self, loss, model, encoder, num_classes)
