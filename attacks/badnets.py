"""BadNets (Gu et al. 2017): a square patch replaces pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from attacks.base import Attack, AttackParams
from attacks.images import save_png
from bench.core.knobs import Count
from bench.core.registry import ATTACKS


def patch_side(height: int) -> int:
    """methods.md: s = max(3, round(3H/32))."""
    return max(3, round(3 * height / 32))


def patch_location(height: int, width: int, side: int, location: str, seed: int) -> tuple[int, int]:
    """(top, left) of the patch; `random` is one fixed location drawn with the seed."""
    if location == "bottom-right":
        return height - side, width - side
    if location == "center":
        return (height - side) // 2, (width - side) // 2
    if location == "random":
        rng = np.random.default_rng(seed)
        return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    raise ValueError(f"location {location!r} is not allowed; allowed: bottom-right, center, random")


def patch_pattern(channels: int, side: int, pattern: str) -> torch.Tensor:
    if pattern == "white":
        return torch.ones(channels, side, side)
    if pattern == "checkerboard":
        ii, jj = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        return ((ii + jj) % 2 == 0).float().expand(channels, side, side).clone()
    raise ValueError(f"pattern {pattern!r} is not allowed; allowed: white, checkerboard")


def apply_patch(x: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Pure: a copy of x (N, C, H, W) with the patch pasted at (top, left)."""
    out = x.clone()
    side_h, side_w = patch.shape[-2:]
    out[..., top : top + side_h, left : left + side_w] = patch.to(x.dtype)
    return out


@dataclass(frozen=True)
class BadNetsParams(AttackParams):
    location: Literal["bottom-right", "center", "random"] = "bottom-right"
    pattern: Literal["white", "checkerboard"] = "white"
    side: Count | None = None  # None: max(3, round(3H/32))


@ATTACKS.register(
    "badnets", "square patch replaces pixels (Gu et al. 2017)", settings=("finetune", "supervised", "contrastive")
)
class BadNets(Attack):
    Params = BadNetsParams

    def __init__(self, params: BadNetsParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        c, h, w = image_shape
        self.side = params.side or patch_side(h)
        self.top, self.left = patch_location(h, w, self.side, params.location, seed)
        self.patch = patch_pattern(c, self.side, params.pattern)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return apply_patch(x, self.patch, self.top, self.left)

    def mask(self) -> torch.Tensor:
        """(H, W) with 1 where the trigger replaces pixels."""
        _, h, w = self.image_shape
        m = torch.zeros(h, w)
        m[self.top : self.top + self.side, self.left : self.left + self.side] = 1
        return m

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"patch": self.patch, "mask": self.mask()}

    def save_trigger(self, folder: Path) -> list[str]:
        save_png(self.patch, folder / "trigger.png", scale=8)
        save_png(self.mask(), folder / "trigger_mask.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png", "trigger_mask.png"]
