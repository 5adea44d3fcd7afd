"""Labelled datasets as in-memory tensors, and the on-disk cache they are built into."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bench.core.fs import cache_dir as cache_dir  # re-exported: the data modules cache with it
from bench.core.fs import file_lock
from bench.core.registry import DATASETS

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Images as uint8 (N, 3, H, W) to keep memory small; `.x` gives float [0, 1]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("Split.images must be uint8 of shape (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise ValueError("Split.images and Split.labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def x(self) -> torch.Tensor:
        return self.images.float().div_(255.0)

    def subset(self, idx: torch.Tensor | np.ndarray) -> Split:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.images[idx], self.labels[idx])


@dataclass
class LabeledDataset:
    name: str
    classnames: list[str]
    templates: list[str]
    train: Split
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, name)


def cached_arrays(key: dict, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Build arrays once per content key and keep them as an .npz in the cache."""

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "data" / f"{key.get('name', 'data')}-{digest}.npz"
    with file_lock(path.with_suffix(".lock")):  # concurrent trials build it once
        if path.exists():
            try:
                with np.load(path) as f:
                    return {k: f[k] for k in f.files}
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn file from an interrupted build: rebuild
        arrays = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return arrays


_LOADED: dict[str, LabeledDataset] = {}


def load_dataset(name: str) -> LabeledDataset:
    """Load a registered dataset by name (memoised per process)."""
    if name not in _LOADED:
        _LOADED[name] = DATASETS.get(name)()
    return _LOADED[name]
