"""Interval estimates and two-sample tests for A/B outcomes, comparison runs and the console.

Large-sample (normal) methods, which is what the counters in the store support: a proportion's
Wilson score interval; a mean's interval from its count, sum and sum of squares; the two-sided
p-value of a difference (pooled two-proportion z test; Welch's z for means); the sample size per
arm that would detect a difference of the size seen (alpha 0.05, power 0.8). Percentiles come from
histogram counts, interpolated linearly within a bucket. No scipy: ``math.erfc`` gives the normal
tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Z95", "Mean", "hist_percentile", "mean_ci", "needed_per_arm", "p_means", "p_proportions", "wilson"]

Z95 = 1.959964  # the two-sided 95% normal quantile
_Z_POWER = 0.841621  # power 0.8


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` may count ties as halves);
    (0, 1) when ``n`` is 0."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


class Mean:
    """A mean with its 95% interval: ``n`` samples, ``mean``, ``sd`` (sample), ``lo``/``hi``
    (None when fewer than 2 samples)."""

    __slots__ = ("hi", "lo", "mean", "n", "sd")

    def __init__(self, n: int, mean: float, sd: float | None) -> None:
        self.n, self.mean, self.sd = n, mean, sd
        half = Z95 * sd / math.sqrt(n) if sd is not None else None
        self.lo = mean - half if half is not None else None
        self.hi = mean + half if half is not None else None

    def as_dict(self, digits: int = 3) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, digits)
        return {"n": self.n, "mean": r(self.mean), "ci95": [r(self.lo), r(self.hi)] if self.lo is not None else None}


def mean_ci(n: float, total: float, total_sq: float | None) -> Mean | None:
    """The mean of ``n`` samples from their ``total`` and sum of squares (None without samples;
    no interval without ``total_sq`` or with fewer than 2 samples)."""
    if n <= 0:
        return None
    k = int(n)
    mean = total / n
    if total_sq is None or k < 2:
        return Mean(k, mean, None)
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    return Mean(k, mean, math.sqrt(var))


def _p_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def p_proportions(x1: float, n1: int, x2: float, n2: int) -> float | None:
    """The two-sided p-value of ``x1/n1`` vs ``x2/n2`` (pooled z test); None when undefined."""
    if n1 == 0 or n2 == 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return _p_two_sided((x1 / n1 - x2 / n2) / se)


def p_means(a: Mean, b: Mean) -> float | None:
    """The two-sided p-value of a difference of two means (Welch's statistic, normal tail)."""
    if a.sd is None or b.sd is None:
        return None
    se = math.sqrt(a.sd ** 2 / a.n + b.sd ** 2 / b.n)
    if se == 0:
        return 1.0 if a.mean == b.mean else 0.0
    return _p_two_sided((a.mean - b.mean) / se)


def needed_per_arm(diff: float, var1: float, var2: float) -> int | None:
    """Samples per arm to detect a difference of ``diff`` (two-sided alpha 0.05, power 0.8) given
    each arm's variance; None for no difference."""
    if diff == 0:
        return None
    return math.ceil((Z95 + _Z_POWER) ** 2 * (var1 + var2) / diff ** 2)


def hist_percentile(counts: Sequence[float], bounds: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) of a histogram: ``counts[i]`` samples at most
    ``bounds[i]`` (and above ``bounds[i-1]``), ``counts[-1]`` the overflow above the last bound
    (reported as that bound). Interpolated linearly within the bucket; None without samples."""
    total = sum(counts)
    if not total:
        return None
    want = total * p / 100
    seen = 0.0
    for i, c in enumerate(counts):
        if c and seen + c >= want:
            if i >= len(bounds):
                return float(bounds[-1])
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (want - seen) / c
        seen += c
    return float(bounds[-1])
