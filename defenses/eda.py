"""EDA (Wei & Zou 2019) caption augmentation, as CleanCLIP uses it: one of synonym
replacement, random insertion, random swap or random deletion, each at rate 0.1.

WordNet is not available offline, so synonyms come from a small table covering
the words of the built-in captions and templates; words without an entry are
left alone by replacement and insertion (as EDA does for words WordNet lacks).
"""

from __future__ import annotations

import numpy as np

SYNONYMS: dict[str, list[str]] = {
    "photo": ["picture", "image", "snapshot"],
    "drawing": ["sketch", "illustration", "picture"],
    "shape": ["form", "figure"],
    "object": ["thing", "item"],
    "something": ["an object", "a thing"],
    "background": ["backdrop", "setting"],
    "handwritten": ["hand-drawn", "written"],
    "digit": ["numeral", "number"],
    "number": ["numeral", "digit"],
    "plain": ["simple", "flat"],
    "noisy": ["grainy", "speckled"],
    "striped": ["lined", "banded"],
    "checkered": ["chequered", "checked"],
    "gradient": ["shaded", "graded"],
    "circle": ["disc", "round shape"],
    "square": ["box", "quadrilateral"],
    "triangle": ["trigon"],
    "cross": ["plus sign"],
    "ring": ["hoop", "annulus"],
    "crescent": ["sickle", "half moon"],
    "heart": ["love heart"],
    "diamond": ["rhombus", "lozenge"],
    "arrow": ["pointer"],
    "star": ["pentagram"],
}


def _replace(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    out = list(words)
    candidates = [i for i, w in enumerate(out) if w in SYNONYMS]
    for i in rng.permutation(candidates)[:n]:
        out[i] = SYNONYMS[out[i]][rng.integers(len(SYNONYMS[out[i]]))]
    return out


def _insert(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    out = list(words)
    candidates = [w for w in words if w in SYNONYMS]
    for _ in range(n if candidates else 0):
        w = candidates[rng.integers(len(candidates))]
        out.insert(int(rng.integers(len(out) + 1)), SYNONYMS[w][rng.integers(len(SYNONYMS[w]))])
    return out


def _swap(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    out = list(words)
    for _ in range(n if len(out) > 1 else 0):
        i, j = rng.choice(len(out), 2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def _delete(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [words[rng.integers(len(words))]]


def eda(sentence: str, rng: np.random.Generator, alpha: float = 0.1) -> str:
    """One augmented version of `sentence` (lower-cased, punctuation kept at the end)."""
    text = sentence.strip()
    end = text[-1] if text and text[-1] in ".!?" else ""
    words = text.rstrip(".!?").lower().split()
    n = max(1, int(alpha * len(words)))  # the reference's count: max(1, int(alpha * words))
    op = int(rng.integers(4))
    if op == 0:
        words = _replace(words, n, rng)
    elif op == 1:
        words = _insert(words, n, rng)
    elif op == 2:
        words = _swap(words, n, rng)
    else:
        words = _delete(words, alpha, rng)
    return " ".join(words) + end
