"""SIG (Barni et al. 2019), clean-label: a horizontal sinusoid added to the image.

x' = clip(x + delta * sin(2 pi j f / W)), j the column index, broadcast over rows
and channels. Only target-class train samples are poisoned (default 80% of that
class) and none is relabelled; at test time the signal goes on non-target images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from attacks.base import Attack, AttackParams
from attacks.images import save_png
from bench.core.knobs import Fraction, NonNegative, Positive
from bench.core.registry import ATTACKS


def sig_signal(width: int, delta: float, f: float) -> torch.Tensor:
    """The (W,) column profile delta * sin(2 pi j f / W)."""
    j = torch.arange(width, dtype=torch.float64)
    return (delta * torch.sin(2 * math.pi * j * f / width)).float()


def add_signal(x: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """Pure: clip(x + profile) with the profile broadcast over batch, channels and rows."""
    return (x + profile.to(x.dtype)).clamp(0, 1)


@dataclass(frozen=True)
class SigParams(AttackParams):
    delta: NonNegative = 40 / 255
    f: Positive = 6.0
    class_fraction: Fraction = 0.8  # share of the target class poisoned when poison_rate is None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.class_fraction <= 1:
            raise ValueError(f"class_fraction must be in (0, 1], got {self.class_fraction}")


@ATTACKS.register(
    "sig",
    "clean-label sinusoidal signal on target-class images (Barni et al. 2019)",
    settings=("finetune", "supervised", "contrastive"),
)
class Sig(Attack):
    Params = SigParams
    clean_label = True

    def __init__(self, params: SigParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        self.profile = sig_signal(image_shape[2], params.delta, params.f)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return add_signal(x, self.profile)

    def poison_rate(self, labels: torch.Tensor, default_rate: float) -> float:
        if self.params.poison_rate is not None:
            return self.params.poison_rate
        n_target = int((labels == self.params.target).sum())
        return self.params.class_fraction * n_target / max(1, len(labels))

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"profile": self.profile}

    def save_trigger(self, folder: Path) -> list[str]:
        _, h, w = self.image_shape
        img = (0.5 + self.profile).clamp(0, 1).expand(3, h, w)
        save_png(img, folder / "trigger.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png"]
