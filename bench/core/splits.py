"""Seeds and the defender/attacker split: the random choices every trial shares."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def subseed(seed: int, purpose: str) -> int:
    """Independent, stable seeds for each random choice of a trial: the one derivation, a
    hash of (seed, purpose), so two purposes never share a stream. Three purposes are older
    than it and keep the integer formulas they were written with (KEPT): a changed
    derivation changes numbers without changing any artifact or trial id, so every
    committed page would silently stop matching its records."""
    if purpose in KEPT:
        return KEPT[purpose](seed)
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF


KEPT = {
    "defense-data": lambda seed: seed * 1000 + 17,  # a defense's own draws (+ offset per draw)
    "wanet-noise": lambda seed: seed + 1,  # WaNet's noise-mode rows, from the poison seed
    "tbar-mix-clean": lambda seed: seed + 1,  # tbar-mix's clean half, labelled by the setting
}


def defender_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(defender pool indices, attacker indices) of a train split of size n, drawn
    once per seed. The pool order is shuffled, so any prefix is a random subset."""
    perm = torch.from_numpy(np.random.default_rng(subseed(seed, "defender-split")).permutation(n))
    k = round(fraction * n)
    return perm[:k], perm[k:]
