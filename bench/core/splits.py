"""Seeds and the defender/attacker split: the random choices every trial shares."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def subseed(seed: int, purpose: str) -> int:
    """Independent, stable seeds for each random choice of a trial."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def defender_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(defender pool indices, attacker indices) of a train split of size n, drawn
    once per seed. The pool order is shuffled, so any prefix is a random subset."""
    perm = torch.from_numpy(np.random.default_rng(subseed(seed, "defender-split")).permutation(n))
    k = round(fraction * n)
    return perm[:k], perm[k:]
