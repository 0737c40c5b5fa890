"""Means, sample standard deviations, Student's t intervals and Welch intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean, sample standard deviation and confidence interval of one group's values."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Difference:
    """Difference of two groups' means with its Welch interval (None when it has none)."""

    difference: float
    low: float | None
    high: float | None
    dof: float | None

    @property
    def excludes_zero(self) -> bool | None:
        return None if self.low is None else (self.low > 0 or self.high < 0)


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval:
    """Student's t interval of the mean with n-1 degrees of freedom; none for a single value."""
    n = len(values)
    if n == 0:
        raise ValueError("a group needs at least one run")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(1, mean, None, None, None)
    sd = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def welch_interval(
    first: list[float], second: list[float], confidence: float = CONFIDENCE
) -> Difference:
    """Mean of `first` minus mean of `second`, with the Welch-Satterthwaite t interval."""
    a, b = t_interval(first, confidence), t_interval(second, confidence)
    difference = a.mean - b.mean
    if a.sd is None or b.sd is None:
        return Difference(difference, None, None, None)
    share_a, share_b = a.sd**2 / a.n, b.sd**2 / b.n
    if share_a + share_b == 0:
        # Both groups have no spread at all: the t statistic and its dof are undefined.
        return Difference(difference, None, None, None)
    dof = (share_a + share_b) ** 2 / (share_a**2 / (a.n - 1) + share_b**2 / (b.n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * math.sqrt(share_a + share_b)
    return Difference(difference, difference - half, difference + half, dof)


def binomial_margin(accuracy: float, size: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the normal-approximation interval of one accuracy measured on `size` items."""
    return float(stats.norm.ppf((1 + confidence) / 2)) * math.sqrt(accuracy * (1 - accuracy) / size)
