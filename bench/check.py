"""`bench leaderboard --check`: compare a committed leaderboard CSV with a fresh rerun at
the resolution its seeds justify.

Counts decided by code (seeds, consumed samples) must match exactly. Every accuracy-like
number must lie within the committed number's own 95% confidence interval over seeds
(never narrower than `floor`): a rerun on a machine whose floating point differs moves
a number about as much as another seed would, and an edit by hand larger than that
noise is caught. With the reproducibility mode on (bench/repro.py) a rerun on a
machine of the same kind is bitwise identical, and so is every number.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.tables import KEYS, LEVELS

EXACT = ["n_seeds", "n_took", "clean_samples", "triggered_samples"]
TOLERANT = [
    "ca", "asr", "ra", "ca_retention", "der", "control", "control_retention",
    *[f"{m}_r{lvl}" for lvl in LEVELS for m in ("asr", "ca", "ra")], "auc_90",
]  # fmt: skip


def allowance(row: pd.Series, col: str, floor: float) -> float:
    ci = row.get(f"{col}_ci")
    return max(floor, 0.0 if ci is None or (isinstance(ci, float) and math.isnan(ci)) else float(ci))


def compare(committed: pd.DataFrame, fresh: pd.DataFrame, floor: float) -> list[str]:
    """Differences between a committed leaderboard CSV and a fresh one, one readable line
    each (empty when they agree). Wall seconds are not compared: they measure the machine."""
    problems = []
    old = committed.set_index(KEYS)
    new = fresh.set_index(KEYS)
    for key in old.index.difference(new.index):
        problems.append(f"{'/'.join(map(str, key))}: in the committed table, not produced by the rerun")
    for key in new.index.difference(old.index):
        problems.append(f"{'/'.join(map(str, key))}: produced by the rerun, missing from the committed table")
    for key in old.index.intersection(new.index):
        a, b = old.loc[key], new.loc[key]
        name = "/".join(map(str, key))
        for col in EXACT + TOLERANT:
            if col not in a.index or col not in b.index:
                continue
            x, y = a[col], b[col]
            if pd.isna(x) and pd.isna(y):
                continue
            if pd.isna(x) != pd.isna(y):
                problems.append(f"{name} {col}: committed {x}, rerun {y}")
                continue
            limit = 0.0 if col in EXACT else allowance(a, col, floor)
            if abs(float(x) - float(y)) > limit + 1e-9:
                problems.append(
                    f"{name} {col}: committed {x}, rerun {y} (allowed: {'exact' if col in EXACT else f'{limit:.4f}'})"
                )
    return problems
