"""Saving trigger tensors as PNG images (shared by every attack's save_trigger)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_png(t: torch.Tensor, path: Path, scale: int = 1) -> None:
    """A (C, H, W) or (H, W) tensor in [0, 1] as a PNG, nearest-upscaled by `scale`."""
    t = t.detach().cpu().float().clamp(0, 1)
    arr = (t.numpy() * 255).round().astype(np.uint8)
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
