"""What every defense gets (a `DefenseContext`) and returns (a `DefenseOutput`).

A defense sees the backdoored model, the defender's own clean pool (disjoint from
the attacker's train set), the validation split for tuning, and, only if it
declares `uses_attack_knowledge`, the attack's trigger and target. It never sees
the poisoned train set or any test data: the engine evaluates on test afterwards.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.splits import subseed
from bench.core.tradeoff import KnobSpec
from bench.data.base import LabeledDataset, Split
from bench.protocol.settings import Setting
from bench.protocol.victim import Victim


@dataclass(frozen=True)
class KnownAttack:
    """The attacker's trigger and target mapping, given to known-trigger defenses."""

    apply: Callable[[torch.Tensor], torch.Tensor]
    targets: Callable[[torch.Tensor], torch.Tensor]  # true labels -> attacker's labels


@dataclass
class DataMeter:
    """Counts what a defense consumed: unique clean and triggered samples (by pool
    index), samples seen with repetition, and optimiser steps."""

    clean: set[int] = field(default_factory=set)
    triggered: set[int] = field(default_factory=set)
    samples_seen: int = 0
    steps: int = 0
    # Validation images a defense evaluated to tune itself (not trained on).
    val_clean: int = 0
    val_triggered: int = 0

    def as_cost(self) -> dict[str, int]:
        return {
            "clean_samples": len(self.clean),
            "triggered_samples": len(self.triggered),
            "samples_seen": self.samples_seen,
            "steps": self.steps,
            "val_clean_samples": self.val_clean,
            "val_triggered_samples": self.val_triggered,
        }


@dataclass
class TrainingSet:
    """Tensors a defense trains on, each row tagged with its pool index and whether
    it carries a trigger, so that `stream` can meter consumption."""

    x: torch.Tensor
    y: torch.Tensor
    pool_index: torch.Tensor
    triggered: torch.Tensor  # bool

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def concat(*sets: TrainingSet) -> TrainingSet:
        return TrainingSet(*(torch.cat([getattr(s, f) for s in sets]) for f in ("x", "y", "pool_index", "triggered")))

    def stream(
        self, batch_size: int, generator: torch.Generator, meter: DataMeter
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from bench.core.train import index_batches

        for idx in index_batches(len(self), batch_size, generator):
            trig = self.triggered[idx]
            meter.triggered.update(self.pool_index[idx][trig].tolist())
            meter.clean.update(self.pool_index[idx][~trig].tolist())
            meter.samples_seen += len(idx)
            meter.steps += 1
            yield self.x[idx], self.y[idx]


@dataclass
class DefenseContext:
    model: nn.Module  # the backdoored victim; the defense may modify it in place
    setting: Setting
    dataset: LabeledDataset
    clean_pool: Split  # the defender's own clean labelled data
    val: Split  # for tuning, by the rule the defense's docstring states
    seed: int
    train_size: int  # size of the full train split, the unit of data fractions
    known: KnownAttack | None = None
    progress: Callable[[str], None] = lambda msg: None
    # The model as a classifier of this dataset's images (identity unless the victim
    # is a whole CLIP, whose zero-shot head comes from its own text tower).
    classify: Callable[[nn.Module], nn.Module] = lambda model: model
    out_dir: Path | None = None  # where a defense may save pictures (inverted masks)
    # The victim (model, setting, dataset; never the attack), for defenses that need the
    # pre-trained model the victim started from (`victim.pretrained()`).
    victim: Victim | None = None

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(subseed(self.seed, "defense-data") + offset)

    def clean_subset(self, fraction: float) -> tuple[Split, torch.Tensor]:
        """The first round(fraction * train_size) samples of the (already shuffled)
        clean pool, and their pool indices. Nested: a smaller fraction is a prefix."""
        n = round(fraction * self.train_size)
        if n > len(self.clean_pool):
            raise ValueError(
                f"a defense asked for {n} clean samples ({fraction:.0%} of train) but the defender's pool holds "
                f"{len(self.clean_pool)}; raise defender_fraction or lower the defense's data fraction"
            )
        idx = torch.arange(n)
        return self.clean_pool.subset(idx), idx


def budgeted_pool(ctx: DefenseContext, budget_x: float, tbar_fraction: float) -> tuple[Split, dict]:
    """The clean data of a fine-tuning defense: budget_x times TBAR's set size
    (round(tbar_fraction * |train|)) unique samples, capped by the defender's pool.
    Returns the subset and what to record about the budget."""
    unit = round(tbar_fraction * ctx.train_size)
    requested = math.ceil(budget_x * unit)
    n = min(requested, len(ctx.clean_pool))
    info = {"budget_requested": requested, "budget_used": n, "budget_x_effective": n / unit if unit else None}
    return ctx.clean_pool.subset(torch.arange(n)), info


@dataclass
class DefenseOutput:
    """The defended model (at the defense's own chosen knob value), what it consumed,
    its strength knob (None for a defense without one), and its own validation curve
    (the points it measured to choose, with its own trigger in known or inverted mode)."""

    model: nn.Module
    meter: DataMeter
    curve: list[dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    knob: KnobSpec | None = None
    # True when `curve` was measured with the attack's own trigger on ctx.val, so the
    # engine may reuse its CA/ASR instead of measuring the same points again.
    curve_uses_attack_trigger: bool = False


class Checkpoints:
    """Snapshots of a model along one training run, as a strength knob measured in
    epochs of the defense's data: the trade-off curve of a fine-tuning defense without
    retraining per point (methods.md section 5). Snapshots are CPU copies of the state
    dict; `at(epochs)` loads one back into the model."""

    def __init__(self, model: nn.Module, total_steps: int, n_samples: int, batch_size: int, points: int = 10):
        self.model = model
        self.per_step = batch_size / max(1, n_samples)  # epochs per optimiser step
        every = max(1, math.ceil(total_steps / points))
        self.steps = sorted({*range(every, total_steps, every), total_steps})
        self.saved: dict[float, dict[str, torch.Tensor]] = {0.0: self._state()}

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def knob_of(self, step: int) -> float:
        return round(step * self.per_step, 6)

    def on_step(self, step: int, loss: float) -> None:
        """train()'s callback: `step` is 0-based, so step + 1 steps are done."""
        if step + 1 in self.steps:
            self.saved[self.knob_of(step + 1)] = self._state()

    def at(self, epochs: float) -> None:
        self.model.load_state_dict(self.saved[epochs])

    def spec(self, chosen: float | None = None) -> KnobSpec:
        values = sorted(self.saved)
        return KnobSpec("epochs", values, self.at, chosen=values[-1] if chosen is None else chosen, identity=0.0)


class Defense(abc.ABC):
    Params: type
    uses_attack_knowledge: bool = False
    # A detector names the target (or flags the model) and returns it unchanged: the pages
    # give it a table of its own and never rank it with the defenses that remove.
    detector: bool = False
    # The threat model, as every leaderboard page states it: the data the defense spends
    # (clean, triggered, none) and what it knows of the attack (trigger, target, nothing).
    data_used: str = "clean"
    knows: str = "nothing"
    # Where this implementation departs from its reference (paper and authors' code),
    # one sentence each; written into every record (record["deviations"]) so tables
    # can footnote them. docs/methods.md lists them all in one table.
    deviations: tuple[str, ...] = ()
    # Published values of parameters (name -> value): a run whose params differ (a
    # suite scaled to a tiny model, say) records each difference as a deviation.
    reference: dict[str, Any] = {}  # noqa: RUF012  (read-only class data)

    def __init__(self, params: Any):
        self.params = params

    def deviations_in(self, setting: str) -> list[str]:
        """This run's deviations from the reference: the class's own, plus every
        parameter set away from its published value."""
        out = list(self.deviations)
        for name, ref in self.reference.items():
            value = getattr(self.params, name, ref)
            if value != ref:
                out.append(f"{name} = {value!r} (reference: {ref!r})")
        return out

    @abc.abstractmethod
    def run(self, ctx: DefenseContext) -> DefenseOutput:
        """Return the defended model; tune only on ctx.val."""
