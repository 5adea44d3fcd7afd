"""What every attack shares: target mapping, the poison-index draw, and the
interface the engine calls. Triggers themselves are pure functions in each
attack's module."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.core.knobs import Index, Share


@dataclass(frozen=True)
class AttackParams:
    target: Index = 0
    poison_rate: Share | None = None  # None: the threat setting's default (methods.md section 2)
    all_to_all: bool = False  # y -> (y + 1) mod K instead of every sample -> target

    def __post_init__(self) -> None:
        if self.target < 0:
            raise ValueError(f"target must be >= 0, got {self.target}")
        if self.poison_rate is not None and not 0.0 <= self.poison_rate <= 1.0:
            raise ValueError(f"poison_rate must be in [0, 1], got {self.poison_rate}")


def target_labels(labels: torch.Tensor, target: int, num_classes: int, all_to_all: bool) -> torch.Tensor:
    """The label each triggered sample should be given."""
    if all_to_all:
        return (labels + 1) % num_classes
    return torch.full_like(labels, target)


def poison_indices(
    labels: torch.Tensor, rate: float, target: int, seed: int, clean_label: bool = False, all_to_all: bool = False
) -> torch.Tensor:
    """Indices of the train samples to poison, drawn with the attack seed.

    rate is a fraction of the whole train set. Dirty-label attacks draw from samples
    whose label is not the target (for all-to-all, from every sample); clean-label
    attacks draw only from the target class, and never more than it holds.
    """
    labels_np = labels.numpy()
    if clean_label:
        pool = np.flatnonzero(labels_np == target)
    elif all_to_all:
        pool = np.arange(len(labels_np))
    else:
        pool = np.flatnonzero(labels_np != target)
    n = min(len(pool), round(rate * len(labels_np)))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(pool, size=n, replace=False))).long()


@dataclass
class PoisonedSet:
    """A train set after poisoning: images, labels, which rows carry the trigger,
    and any rows an attack changed in other ways (WaNet's noise-mode samples)."""

    x: torch.Tensor
    y: torch.Tensor
    poisoned: torch.Tensor
    other: dict[str, torch.Tensor] = field(default_factory=dict)


class Attack(abc.ABC):
    """Base class. Subclasses set `Params`, and implement `apply` as a call to a pure
    trigger function. Instances are built from (params, image shape, seed) so the
    trigger is a deterministic function of the config."""

    Params: type[AttackParams] = AttackParams
    clean_label: bool = False
    has_trigger: bool = True
    # An adaptive attack is built to evade a family of defenses, named here (`bench list
    # attacks` shows it); `--attacks all` leaves adaptive attacks out, `--attacks adaptive`
    # selects them.
    adaptive: str | None = None
    # Where this attack departs from its reference, one sentence each; the engine
    # writes them into every record (record["deviations"]["attack"]).
    deviations: tuple[str, ...] = ()

    def deviations_in(self, setting: str) -> list[str]:
        return list(self.deviations)

    def __init__(self, params: AttackParams, image_shape: tuple[int, int, int], seed: int):
        self.params = params
        self.image_shape = image_shape
        self.seed = seed

    # Attacks whose trigger is optimised against the victim (BadCLIP) set this; the
    # engine then calls `fit` before poisoning, and reloads the fitted trigger later.
    needs_fitting: bool = False

    @abc.abstractmethod
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Triggered copy of a batch (N, C, H, W) in [0, 1]."""

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return target_labels(labels, self.params.target, num_classes, self.params.all_to_all)

    def batch_poisoner(self, num_classes: int, default_rate: float):
        """None, or a function (x, y, generator) -> (x, y) that poisons each training batch
        afresh: for attacks whose reference training does so (WaNet). The engine then
        trains on the clean attacker set through it instead of calling `poison`."""
        return None

    @classmethod
    def plain_counterpart(cls, params: AttackParams) -> str | None:
        """An adaptive attack's plain version: the attack with the same trigger (with the
        same seed, the same pattern), which the leaderboard pairs it with, defense by
        defense. None for a fixed attack, or where no plain attack shares the trigger."""
        return None

    def training_loss(self, loss, model, encoder: list, num_classes: int):
        """The loss the victim is trained with on the poisoned set: the setting's own
        `loss` (model, batch) -> tensor, unless the attack controls the victim's training,
        not only its data (the supply-chain threat model); such an attack returns its own
        loss, with an `info()` for the record. `encoder` holds the parameters a
        weight-space defense edits (TBAR's)."""
        return loss

    def poison_rate(self, labels: torch.Tensor, default_rate: float) -> float:
        """The fraction of the train set to poison (the setting's default unless set)."""
        return self.params.poison_rate if self.params.poison_rate is not None else default_rate

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, default_rate: float, seed: int) -> PoisonedSet:
        """Trigger a seeded draw of the train set; dirty-label attacks also relabel it."""
        rate = self.poison_rate(y, default_rate)
        idx = poison_indices(y, rate, self.params.target, seed, self.clean_label, self.params.all_to_all)
        x, y = x.clone(), y.clone()
        if self.has_trigger and len(idx):
            x[idx] = self.apply(x[idx])
            if not self.clean_label:
                y[idx] = self.targets(y[idx], num_classes)
        return PoisonedSet(x, y, idx)

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        """The exact trigger state (float tensors), saved beside the artifact."""
        return {}

    def save_trigger(self, folder: Path) -> list[str]:
        """Save the trigger: exact tensors as safetensors (PNG previews are 8-bit and
        only for people; subclasses add them). Returns the file names."""
        tensors = self.trigger_tensors()
        if not tensors:
            return []
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "trigger.safetensors")
        return ["trigger.safetensors"]
