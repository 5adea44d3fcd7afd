"""Training-time augmentations of [0, 1] image batches: pure functions of the batch
and a torch.Generator, so a seeded run is the same on every machine.

`crop_flip` is the CIFAR recipe that BackdoorBench applies after poisoning
(RandomCrop(32, padding=4) with zero padding, then RandomHorizontalFlip): a trigger
in the poisoned image moves with the crop and the flip, as it does there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Each image of x (N, C, H, W) zero-padded by `padding`, cropped back to H x W at a
    uniform random offset, and mirrored left-right with probability 1/2."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (left[:, None] + torch.arange(w)[None])[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


AUGMENTATIONS = {"none": None, "crop-flip": crop_flip}
