"""Uncertainty over seeds: means with t-distribution confidence intervals, paired
comparisons of defenses, and Holm's correction for comparing many pairs at once.

Pure functions of numbers (scipy's t distribution does the quantiles), so every figure
on a leaderboard can be recomputed by hand from the records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

CONFIDENCE = 0.95


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with the half-width of its confidence interval (NaN for n < 2)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def mean_ci(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and the half-width of its two-sided `confidence` interval, Student t with
    n - 1 degrees of freedom (the sample standard deviation, ddof = 1)."""
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0)
    mean = sum(xs) / n
    if n < 2:
        return Estimate(mean, float("nan"), 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Estimate(mean, float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class Paired:
    """A paired comparison: mean difference a - b over matched units, its confidence
    interval and the two-sided p-value of a paired t-test (NaN for fewer than 2 pairs)."""

    diff: Estimate
    p: float


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Paired:
    if len(a) != len(b):
        raise ValueError("paired comparison needs two sequences of the same length")
    d = [x - y for x, y in zip(a, b, strict=True)]
    est = mean_ci(d, confidence)
    if est.n < 2:
        return Paired(est, float("nan"))
    sd = est.half / float(_st.t.ppf(0.5 + confidence / 2, est.n - 1)) * math.sqrt(est.n)
    if sd == 0:
        return Paired(est, 1.0 if est.mean == 0 else 0.0)
    t = est.mean / (sd / math.sqrt(est.n))
    return Paired(est, float(2 * _st.t.sf(abs(t), est.n - 1)))


@dataclass(frozen=True)
class Slope:
    """An ordinary least-squares slope of y on x with the half-width of its confidence
    interval (Student t, n - 2 degrees of freedom) and the two-sided p-value of slope = 0
    (NaN for fewer than 3 points or one distinct x)."""

    slope: float
    half: float
    p: float
    n: int


def slope(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> Slope:
    pts = [(float(a), float(b)) for a, b in zip(x, y, strict=True) if _clean([a]) and _clean([b])]
    n = len(pts)
    if n < 3 or len({a for a, _ in pts}) < 2:
        return Slope(float("nan"), float("nan"), float("nan"), n)
    fit = _st.linregress([a for a, _ in pts], [b for _, b in pts])
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 2)) * float(fit.stderr)
    p = float(fit.pvalue) if fit.stderr > 0 else (1.0 if fit.slope == 0 else 0.0)
    return Slope(float(fit.slope), half, p, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
