"""Blended (Chen et al. 2017): x' = (1 - a) x + a P with a fixed pattern image P."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attacks.base import Attack, AttackParams
from attacks.images import save_png
from bench.core.inputs import PATTERN_MAX_BYTES, input_file, open_regular
from bench.core.knobs import Fraction
from bench.core.registry import ATTACKS


def noise_pattern(image_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Seeded uniform noise in [0, 1] of the input size (the default pattern)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random(image_shape, dtype=np.float64).astype(np.float32))


def file_pattern(path: str, image_shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = image_shape
    try:
        # Only a regular file of bounded size, opened without blocking (a FIFO would hang).
        with open_regular(path, "attack_params.blended.pattern_file", PATTERN_MAX_BYTES) as f:
            img = Image.open(f).convert("RGB" if c == 3 else "L").resize((w, h), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as e:
        raise ValueError(f"blended.pattern_file {path!r} cannot be read as an image ({e})") from None
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]).contiguous()


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pure: (1 - alpha) x + alpha P, broadcast over the batch."""
    return (1 - alpha) * x + alpha * pattern.to(x.dtype)


@dataclass(frozen=True)
class BlendedParams(AttackParams):
    alpha: Fraction = 0.2
    # None: seeded uniform noise. A file enters the artifact id by its SHA-256 (bench.core.inputs).
    pattern_file: str | None = input_file(max_bytes=PATTERN_MAX_BYTES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")


@ATTACKS.register(
    "blended",
    "blend a fixed noise/image pattern into the input (Chen et al. 2017)",
    settings=("finetune", "supervised", "contrastive"),
)
class Blended(Attack):
    Params = BlendedParams

    def __init__(self, params: BlendedParams, image_shape: tuple[int, int, int], seed: int):
        super().__init__(params, image_shape, seed)
        if params.pattern_file:
            self.pattern = file_pattern(params.pattern_file, image_shape)
        else:
            self.pattern = noise_pattern(image_shape, seed)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return blend(x, self.pattern, self.params.alpha)

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern, "alpha": torch.tensor(self.params.alpha)}

    def save_trigger(self, folder: Path) -> list[str]:
        save_png(self.pattern, folder / "trigger.png", scale=4)
        return [*super().save_trigger(folder), "trigger.png"]
