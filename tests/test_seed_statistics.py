"""Means, standard deviations, t intervals and Welch intervals, checked against scipy.stats."""

from __future__ import annotations

import pytest
from scipy import stats

from commands.seed_statistics import Interval, t_interval, welch_interval


def test_t_interval_matches_scipy():
    values = [0.9931, 0.9942, 0.9938, 0.9935]
    interval = t_interval(values)
    expected = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert interval.n == 4
    assert interval.mean == pytest.approx(sum(values) / 4, abs=1e-15)
    assert interval.sd == pytest.approx(stats.tstd(values), rel=1e-12)
    assert (interval.low, interval.high) == pytest.approx(expected, rel=1e-12)


def test_one_run_has_no_interval():
    assert t_interval([0.9939]) == Interval(1, 0.9939, None, None, None)
    difference = welch_interval([0.9939], [0.9911, 0.9905])
    assert difference.difference == pytest.approx(0.9939 - 0.9908)
    assert (difference.low, difference.high, difference.excludes_zero) == (None, None, None)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([0.9939, 0.9944, 0.9936, 0.9941], [0.9921, 0.9925, 0.9918]),  # Excludes zero.
        ([0.9939, 0.9954, 0.9926], [0.9947, 0.9942, 0.9950, 0.9931, 0.9945]),  # Includes it.
    ],
)
def test_welch_interval_matches_scipy(first, second):
    result = welch_interval(first, second)
    expected = stats.ttest_ind(first, second, equal_var=False)
    interval = expected.confidence_interval(0.95)
    assert result.difference == pytest.approx(sum(first) / len(first) - sum(second) / len(second))
    assert result.dof == pytest.approx(expected.df, rel=1e-12)
    assert (result.low, result.high) == pytest.approx((interval.low, interval.high), rel=1e-12)
    assert result.excludes_zero == (expected.pvalue < 0.05)
