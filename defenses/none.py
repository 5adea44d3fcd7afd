"""The backdoored model as it is: the row every table starts from."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.registry import DEFENSES
from defenses.base import DataMeter, Defense, DefenseContext, DefenseOutput


@dataclass(frozen=True)
class NoDefenseParams:
    pass


@DEFENSES.register(
    "none", "no defense: the backdoored model as it is", settings=("finetune", "supervised", "contrastive")
)
class NoDefense(Defense):
    data_used = "none"
    knows = "nothing"
    Params = NoDefenseParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        return DefenseOutput(model=ctx.model, meter=DataMeter())
