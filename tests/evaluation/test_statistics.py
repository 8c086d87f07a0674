"""Paired statistics: the mean difference, its stratified bootstrap interval and the Wilcoxon test."""

from __future__ import annotations

import numpy as np
import pytest

from harmonizing_flows.evaluation.statistics import paired_comparison


def test_a_constant_difference_has_a_point_interval_and_a_small_p():
    result = paired_comparison("a", "b", {"A": [1.5] * 6, "B": [1.5] * 4}, resamples=500)
    assert (result.n, result.mean, result.ci95) == (10, 1.5, (1.5, 1.5))
    assert result.p == pytest.approx(2 / 2**10)  # all ten positive: the exact two-sided signed-rank p


def test_differences_symmetric_about_zero_are_not_significant():
    result = paired_comparison("a", "b", {"A": [-3.0, -1.0, 1.0, 3.0], "B": [-2.0, 2.0]}, resamples=2000)
    assert result.mean == 0.0 and result.ci95[0] < 0 < result.ci95[1]
    assert result.p == pytest.approx(1.0)
    assert paired_comparison("a", "b", {"A": [0.0, 0.0]}).p == 1.0


def test_the_interval_matches_the_spread_of_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 4.0, size=400)
    result = paired_comparison("a", "b", {"A": values}, resamples=4000, seed=3)
    half = 1.96 * values.std() / np.sqrt(values.size)  # the normal approximation
    assert result.ci95[0] == pytest.approx(values.mean() - half, abs=0.1)
    assert result.ci95[1] == pytest.approx(values.mean() + half, abs=0.1)
    assert paired_comparison("a", "b", {"A": values}, resamples=4000, seed=3) == result


def test_strata_keep_their_sizes_and_undefined_differences_are_left_out():
    # one stratum far above the other: resampling within strata never changes their mix, so the interval is
    # narrow; pooling them would mix 0s and 10s and widen it
    result = paired_comparison(
        "a", "b", {"A": [0.0, 0.1, -0.1] * 3, "B": [10.0, 10.1, 9.9, np.nan] * 3}, resamples=2000
    )
    assert result.n == 18 and result.mean == pytest.approx(5.0)
    assert result.ci95[1] - result.ci95[0] < 0.2
    with pytest.raises(ValueError, match="no paired volumes"):
        paired_comparison("a", "b", {"A": [np.nan]})
