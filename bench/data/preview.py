"""Sample images of a dataset as one PNG grid (for the README and the leaderboard page)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.data.base import load_dataset

BUILT_IN = ("scenes", "shapes", "colors", "digits")


def sample_grid_png(dataset: str, rows: int = 4, cols: int = 8, scale: int = 3, split: str = "test") -> bytes | None:
    """The first rows x cols images of `split`, upscaled `scale`x with nearest neighbours.
    None for datasets that are not built in (they may need files this machine lacks)."""
    if dataset not in BUILT_IN:
        return None
    data = load_dataset(dataset).split(split)
    n = min(rows * cols, len(data))
    imgs = data.images[:n].numpy()  # (n, 3, H, W) uint8
    _, _c, h, w = imgs.shape
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, q * (w + 2) + 1 : q * (w + 2) + 1 + w] = imgs[i].transpose(1, 2, 0)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
