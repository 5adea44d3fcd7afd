"""The reference: the same training on the same data with nothing poisoned."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import Attack, AttackParams
from bench.core.knobs import Share
from bench.core.registry import ATTACKS


@dataclass(frozen=True)
class NoAttackParams(AttackParams):
    poison_rate: Share | None = 0.0


@ATTACKS.register(
    "none",
    "clean training on the same data: the clean-accuracy reference",
    settings=("finetune", "supervised", "contrastive"),
)
class NoAttack(Attack):
    Params = NoAttackParams
    has_trigger = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()
