"""Adaptive-Blend and Adaptive-Patch (Qi et al., "Revisiting the Assumption of Latent
Separability for Backdoor Defenses", ICLR 2023): attacks built to evade defenses that
assume poisoned and clean samples separate in the victim's latent space.

Two devices weaken that separation while training:
- **Conservatism.** Besides the payload samples (triggered, relabelled to the target),
  regularisation ("cover") samples carry the trigger with their own, correct label, so
  the trigger alone is not a sufficient cause of the target during training.
- **Trigger pieces.** A payload or cover sample carries only part of the trigger: a random
  half of the blend pattern's pieces (Adaptive-Blend), or one of k weak patches
  (Adaptive-Patch). At test time the full trigger (or several patches at full strength)
  is applied, which still reaches the target.

Defaults follow the authors' backdoor-toolbox for CIFAR-10 (poison_type adaptive_blend:
`-alpha 0.15 -test_alpha 0.2`, 16 pieces, half masked, cover rate = poison rate;
adaptive_patch: four patches at opacities 0.5/0.2/0.5/0.3 in training, two of them at
full opacity at test, cover rate twice the poison rate). Where this module departs from
that code it says so in `deviations` (and docs/methods.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attacks.badnets import patch_side
from attacks.base import Attack, AttackParams, PoisonedSet, poison_indices
from attacks.blended import file_pattern, noise_pattern
from attacks.images import save_png
from bench.core.inputs import PATTERN_MAX_BYTES, input_file
from bench.core.knobs import Count, Fraction, Index, Share
from bench.core.registry import ATTACKS
from bench.core.splits import subseed

# The family of defenses these attacks are built against (`bench list attacks` shows it).
LATENT_SEPARATION = "latent separation (spectral signatures, activation clustering, SCAn, their kin)"


# ---------------------------------------------------------------- pure trigger functions


def piece_mask(height: int, width: int, pieces: int, masked: int, rng: np.random.Generator) -> torch.Tensor:
    """(H, W) mask of ones with `masked` of the `pieces` grid cells (a sqrt(pieces) x
    sqrt(pieces) grid) set to zero, the cells drawn with `rng`."""
    side = math.isqrt(pieces)
    step_h, step_w = height // side, width // side
    mask = torch.ones(height, width)
    for i in rng.choice(pieces, size=masked, replace=False).tolist():
        row, col = divmod(int(i), side)
        mask[row * step_h : (row + 1) * step_h, col * step_w : (col + 1) * step_w] = 0
    return mask


def masked_blend(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pure: x + alpha * mask * (pattern - x); mask (H, W) or (N, 1, H, W) broadcast over channels."""
    pattern = pattern.to(x.dtype)
    return x + alpha * mask.to(x.dtype) * (pattern - x)


def cover_indices(n: int, rate: float, taken: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices of `round(rate * n)` regularisation samples, drawn with `seed` from the
    samples not already poisoned (the reference's cover set never overlaps the payload)."""
    free = np.setdiff1d(np.arange(n), taken.numpy())
    k = min(len(free), round(rate * n))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(free, size=k, replace=False))).long()


def split_in_order(idx: torch.Tensor, k: int) -> list[torch.Tensor]:
    """`idx` cut into k consecutive blocks of (nearly) equal size: block j holds the
    positions p with j * n / k <= p < (j + 1) * n / k, as the reference assigns triggers."""
    n = len(idx)
    pos = torch.arange(n, dtype=torch.float64)
    return [idx[(pos >= j * n / k) & (pos < (j + 1) * n / k)] for j in range(k)]


# ---------------------------------------------------------------- Adaptive-Blend


@dataclass(frozen=True)
class AdapBlendParams(AttackParams):
    alpha: Fraction = 0.15  # opacity of the pattern on payload and cover samples (training)
    test_alpha: Fraction = 0.2  # opacity of the full pattern at test time
    pieces: Count = 16  # the pattern is cut into a sqrt(pieces) x sqrt(pieces) grid
    mask_rate: Share = 0.5  # share of the pieces left out of each training sample
    cover_rate: Share | None = None  # None: the payload's rate (the reference's 1:1)
    # None: seeded uniform noise (the reference blends a Hello Kitty image); a file enters
    # the artifact id by its SHA-256 (bench.core.inputs).
    pattern_file: str | None = input_file(max_bytes=PATTERN_MAX_BYTES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if math.isqrt(self.pieces) ** 2 != self.pieces:
            raise ValueError(f"pieces must be a perfect square (4, 9, 16, ...), got {self.pieces}")


@ATTACKS.register(
    "adap-blend",
    "Adaptive-Blend: a blend pattern cut into pieces, half of them per sample, plus correctly labelled "
    "cover samples (Qi et al. 2023)",
    settings=("finetune", "supervised", "contrastive"),
)
class AdapBlend(Attack):
    Params = AdapBlendParams
    adaptive = LATENT_SEPARATION
    deviations = (
        "poison rate: the threat setting's (10% in finetune and supervised) where the reference uses 0.3% of "
        "CIFAR-10 trained from scratch for 200 epochs; cover rate equal to it, as in the reference",
        "default pattern: seeded uniform noise instead of the reference's Hello Kitty image "
        "(pattern_file takes an image)",
    )

    @classmethod
    def plain_counterpart(cls, params: AdapBlendParams) -> str | None:
        # blended's default pattern is the same seeded noise; an image file is not blended's
        return None if params.pattern_file else "blended"

    def __init__(self, params: AdapBlendParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        _, h, w = image_shape
        side = math.isqrt(params.pieces)
        if h % side or w % side:
            raise ValueError(f"adap-blend: a {h}x{w} image cannot be cut into {side}x{side} equal pieces")
        self.pattern = file_pattern(params.pattern_file, image_shape) if params.pattern_file else noise_pattern(image_shape, seed)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time trigger: the whole pattern at test_alpha."""
        return masked_blend(x, self.pattern, torch.ones(self.image_shape[1:]), self.params.test_alpha)

    def training_trigger(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Each image with its own random half of the pieces, at the training alpha."""
        _, h, w = self.image_shape
        masked = round(self.params.mask_rate * self.params.pieces)
        masks = torch.stack([piece_mask(h, w, self.params.pieces, masked, rng) for _ in range(len(x))])
        return masked_blend(x, self.pattern, masks[:, None], self.params.alpha)

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, default_rate: float, seed: int) -> PoisonedSet:
        rate = self.poison_rate(y, default_rate)
        payload = poison_indices(y, rate, self.params.target, seed, all_to_all=self.params.all_to_all)
        cover_rate = rate if self.params.cover_rate is None else self.params.cover_rate
        cover = cover_indices(len(y), cover_rate, payload, subseed(seed, "cover"))
        rng = np.random.default_rng(subseed(seed, "pieces"))
        x, y = x.clone(), y.clone()
        if len(payload):
            x[payload] = self.training_trigger(x[payload], rng)
            y[payload] = self.targets(y[payload], num_classes)
        if len(cover):
            x[cover] = self.training_trigger(x[cover], rng)  # the trigger, with the true label kept
        return PoisonedSet(x, y, payload, {"cover": cover})

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern, "test_alpha": torch.tensor(self.params.test_alpha)}

    def save_trigger(self, folder: Path) -> list[str]:
        save_png(self.pattern, folder / "trigger.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png"]


# ---------------------------------------------------------------- Adaptive-Patch

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def corner_position(height: int, width: int, side: int, corner: str) -> tuple[int, int]:
    top = 0 if corner.startswith("top") else height - side
    left = 0 if corner.endswith("left") else width - side
    return top, left


def patch_marks(image_shape: tuple[int, int, int], side: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k seeded random-colour patches, one per corner (then around again): (k, C, H, W)
    marks and their (k, H, W) masks."""
    c, h, w = image_shape
    rng = np.random.default_rng(seed)
    marks, masks = torch.zeros(k, c, h, w), torch.zeros(k, h, w)
    for j in range(k):
        top, left = corner_position(h, w, side, CORNERS[j % len(CORNERS)])
        patch = torch.from_numpy(rng.random((c, side, side)).astype(np.float32))
        marks[j, :, top : top + side, left : left + side] = patch
        masks[j, top : top + side, left : left + side] = 1
    return marks, masks


@dataclass(frozen=True)
class AdapPatchParams(AttackParams):
    side: Count | None = None  # None: max(3, round(3H/32)), BadNets' patch side
    train_alphas: tuple[Fraction, ...] = (0.5, 0.2, 0.5, 0.3)  # one patch per entry, each on its share of samples
    test_patches: tuple[Index, ...] = (0, 2)  # which patches make the test-time trigger
    test_alpha: Fraction = 1.0
    cover_rate: Share | None = None  # None: twice the payload's rate (the reference's 0.003 / 0.006)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.train_alphas:
            raise ValueError("train_alphas must name at least one patch")
        if not self.test_patches or max(self.test_patches) >= len(self.train_alphas):
            raise ValueError(f"test_patches must be indices of train_alphas (0..{len(self.train_alphas) - 1})")


@ATTACKS.register(
    "adap-patch",
    "Adaptive-Patch: k weak patches, one per training sample, plus correctly labelled cover samples; "
    "several at full strength at test (Qi et al. 2023)",
    settings=("finetune", "supervised", "contrastive"),
)
class AdapPatch(Attack):
    Params = AdapPatchParams
    adaptive = LATENT_SEPARATION
    deviations = (
        "poison rate: the threat setting's (10% in finetune and supervised) where the reference uses 0.3% of "
        "CIFAR-10 trained from scratch; cover rate twice it, as in the reference",
        "patches: seeded random-colour squares in the four corners instead of the reference's image marks "
        "(phoenix, firefox, badnet_patch4, trojan_square); the test trigger is two of the training patches "
        "at full opacity where the reference moves one of them (phoenix_corner2)",
    )

    def __init__(self, params: AdapPatchParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        self.side = params.side or patch_side(image_shape[1])
        self.marks, self.masks = patch_marks(image_shape, self.side, len(params.train_alphas), seed)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time trigger: the chosen patches, one after another, at test_alpha."""
        for j in self.params.test_patches:
            x = masked_blend(x, self.marks[j], self.masks[j], self.params.test_alpha)
        return x

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, default_rate: float, seed: int) -> PoisonedSet:
        rate = self.poison_rate(y, default_rate)
        payload = poison_indices(y, rate, self.params.target, seed, all_to_all=self.params.all_to_all)
        cover_rate = 2 * rate if self.params.cover_rate is None else self.params.cover_rate
        cover = cover_indices(len(y), cover_rate, payload, subseed(seed, "cover"))
        x, y = x.clone(), y.clone()
        k = len(self.params.train_alphas)
        for idx in (payload, cover):
            for j, block in enumerate(split_in_order(idx, k)):
                if len(block):
                    x[block] = masked_blend(x[block], self.marks[j], self.masks[j], self.params.train_alphas[j])
        if len(payload):
            y[payload] = self.targets(y[payload], num_classes)
        return PoisonedSet(x, y, payload, {"cover": cover})

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"marks": self.marks, "masks": self.masks}

    def save_trigger(self, folder: Path) -> list[str]:
        save_png(self.apply(torch.full((1, *self.image_shape), 0.5))[0], folder / "trigger.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png"]
