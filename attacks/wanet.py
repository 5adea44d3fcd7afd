"""WaNet (Nguyen & Tran 2021): an imperceptible smooth warp.

Control grid: uniform in [-1, 1], shape (2, k, k), divided by its mean absolute
value, bicubically upsampled (align_corners) to H x W. The warp field is
grid = clamp(identity + s * noise / H * grid_rescale, -1, 1) and the triggered
image is grid_sample(x, grid, align_corners=True). Noise mode: a further
cross_ratio * p of the train set is warped with grid + uniform(-1, 1) / H per
sample and keeps its true label, so the network must learn the exact warp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge

from attacks.base import Attack, AttackParams, PoisonedSet
from attacks.images import save_png
from bench.core.knobs import NonNegative
from bench.core.registry import ATTACKS
from bench.core.splits import subseed


def control_grid(k: int, seed: int) -> torch.Tensor:
    """(2, k, k) uniform in [-1, 1], normalised by its mean absolute value."""
    rng = np.random.default_rng(seed)
    ins = torch.from_numpy(rng.uniform(-1.0, 1.0, (2, k, k))).float()
    return ins / ins.abs().mean()


def identity_grid(h: int, w: int) -> torch.Tensor:
    """(H, W, 2) sampling grid of the identity in grid_sample's (x, y) order."""
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy), dim=-1)


def warp_field(noise: torch.Tensor, h: int, w: int, s: float, grid_rescale: float) -> torch.Tensor:
    """(H, W, 2) warp: clamp(identity + s * upsample(noise) / H * grid_rescale, -1, 1)."""
    up = F.interpolate(noise[None], size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
    return torch.clamp(identity_grid(h, w) + s * up / h * grid_rescale, -1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Pure: grid_sample each image of x (N, C, H, W) with grid (H, W, 2) or (N, H, W, 2)."""
    g = grid.expand(len(x), *grid.shape[-3:]) if grid.ndim == 3 else grid
    out = F.grid_sample(x, g.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.clamp(0, 1)


@dataclass(frozen=True)
class WanetParams(AttackParams):
    k: Annotated[int, Ge(2)] = 4
    s: NonNegative = 0.5
    grid_rescale: NonNegative = 1.0
    cross_ratio: NonNegative = 2.0
    # WaNet's reference training (Nguyen & Tran's train.py, BackdoorBench's wanet.py)
    # poisons every batch afresh: the first p * batch samples of each shuffled batch get
    # the warp and the target label, the next cross_ratio * p * batch a freshly drawn
    # noise warp. False: one static draw of the train set (methods.md's wording).
    dynamic: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")


@ATTACKS.register(
    "wanet",
    "smooth image warp, with noise-mode training (Nguyen & Tran 2021)",
    settings=("finetune", "supervised", "contrastive"),
)
class Wanet(Attack):
    Params = WanetParams

    def __init__(self, params: WanetParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        _, h, w = image_shape
        self.noise = control_grid(params.k, seed)
        self.grid = warp_field(self.noise, h, w, params.s, params.grid_rescale)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return warp(x, self.grid)

    def poison(self, x, y, num_classes, default_rate, seed) -> PoisonedSet:
        out = super().poison(x, y, num_classes, default_rate, seed)
        # Noise mode: cross_ratio * p of the set, drawn from the untouched rows, gets a
        # randomly perturbed warp and keeps its label.
        rate = self.poison_rate(y, default_rate)
        free = np.setdiff1d(np.arange(len(y)), out.poisoned.numpy())
        n = min(len(free), round(self.params.cross_ratio * rate * len(y)))
        rng = np.random.default_rng(subseed(seed, "wanet-noise"))
        cross = torch.from_numpy(np.sort(rng.choice(free, size=n, replace=False))).long()
        if n:
            _, h, w = self.image_shape
            jitter = torch.from_numpy(rng.uniform(-1, 1, (n, h, w, 2))).float() / h
            grids = torch.clamp(self.grid[None] + jitter, -1, 1)
            out.x[cross] = warp(out.x[cross], grids)
        out.other["noise_mode"] = cross
        return out

    def batch_poisoner(self, num_classes: int, default_rate: float):
        if not self.params.dynamic:
            return None
        _, h, _ = self.image_shape

        def poison_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
            rate = self.params.poison_rate if self.params.poison_rate is not None else default_rate
            n_bd = int(len(x) * rate)
            n_cross = min(len(x) - n_bd, int(n_bd * self.params.cross_ratio))
            x, y = x.clone(), y.clone()
            if n_bd:
                x[:n_bd] = self.apply(x[:n_bd])
                y[:n_bd] = self.targets(y[:n_bd], num_classes)
            if n_cross:
                jitter = (torch.rand(n_cross, *self.grid.shape, generator=generator) * 2 - 1) / h
                x[n_bd : n_bd + n_cross] = warp(x[n_bd : n_bd + n_cross], torch.clamp(self.grid[None] + jitter, -1, 1))
            return x, y

        return poison_batch

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"noise": self.noise, "grid": self.grid}

    def save_trigger(self, folder: Path) -> list[str]:
        # A picture of the displacement field (x and y shifts as red and green).
        disp = self.grid - identity_grid(*self.grid.shape[:2])
        scale = disp.abs().max().clamp_min(1e-12)
        rgb = torch.stack(
            [disp[..., 0] / scale / 2 + 0.5, disp[..., 1] / scale / 2 + 0.5, torch.full(disp.shape[:2], 0.5)]
        )
        save_png(rgb, folder / "trigger.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png"]
