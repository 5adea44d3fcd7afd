"""The `frame` attack: a coloured border of `width` pixels around the image.

An attack is a class with
- `Params`: a frozen dataclass of its knobs, subclassing AttackParams (which brings the
  target class, the poison rate and all-to-all); every field is settable from a suite's
  `attack_params: {frame: {...}}` and enters the artifact id;
- `apply(x)`: the triggered copy of a batch (N, C, H, W) in [0, 1], best a call to a pure
  function like `add_frame` below, so it can be tested pixel by pixel;
- `trigger_tensors()` (the exact trigger, saved as trigger.safetensors) and
  `save_trigger(folder)`, which adds the PNG shown as the leaderboard's thumbnail.
It registers with the settings it supports; `bench list settings` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from attacks.base import Attack, AttackParams
from attacks.images import save_png
from bench.core.knobs import Count, Share
from bench.core.registry import ATTACKS


def add_frame(x: torch.Tensor, width: int, color: torch.Tensor) -> torch.Tensor:
    """Pure: a copy of x (N, C, H, W) whose outer `width` pixels are `color` (C,)."""
    out = x.clone()
    c = color.to(x.dtype).view(1, -1, 1, 1)
    out[..., :width, :] = c
    out[..., -width:, :] = c
    out[..., :, :width] = c
    out[..., :, -width:] = c
    return out


@dataclass(frozen=True)
class FrameParams(AttackParams):
    width: Count = 1  # a declared range (bench/core/knobs.py): `width: 0` is refused before any work
    color: tuple[Share, ...] = (1.0, 0.0, 1.0)  # magenta, one value per channel in [0, 1]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if not all(0.0 <= v <= 1.0 for v in self.color):
            raise ValueError(f"color values must be in [0, 1], got {self.color}")


@ATTACKS.register(
    "frame",
    "coloured border around the image (example plugin)",
    settings=("finetune", "supervised", "contrastive"),
)
class Frame(Attack):
    Params = FrameParams

    def __init__(self, params: FrameParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        c = image_shape[0]
        if len(params.color) != c:
            raise ValueError(f"color needs {c} values (one per channel), got {len(params.color)}")
        self.color = torch.tensor(params.color, dtype=torch.float32)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return add_frame(x, self.params.width, self.color)

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"color": self.color, "width": torch.tensor(float(self.params.width))}

    def save_trigger(self, folder: Path) -> list[str]:
        # The thumbnail: the trigger on a mid-grey image, 4x upscaled (nearest) so the
        # pixels stay visible. The leaderboard embeds every .png listed here.
        grey = torch.full((1, *self.image_shape), 0.5)
        save_png(self.apply(grey)[0], folder / "trigger.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png"]
