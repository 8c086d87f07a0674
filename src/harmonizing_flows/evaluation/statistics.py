"""Paired statistics of two methods on the same test volumes: the mean Dice difference, its bootstrap confidence
interval and the Wilcoxon signed-rank test.

Each test volume is scored by both methods, so the question is about the per-volume differences. The bootstrap
resamples volumes within each stratum (one setting of one seed: the strata differ in source site, networks and
subjects) and keeps the strata's sizes, so the interval reflects the variation between volumes and not the mix of
strata. The Wilcoxon test (:func:`scipy.stats.wilcoxon`) asks whether the differences are symmetric about zero.

References:
    | Efron, Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993 (percentile intervals, ch. 13).
    | Wilcoxon. Individual comparisons by ranking methods. Biometrics Bulletin 1(6), 1945.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedComparison", "paired_comparison"]


@dataclass(frozen=True)
class PairedComparison:
    """Method ``a`` minus method ``b`` over paired test volumes."""

    a: str
    b: str
    n: int
    """Paired volumes."""
    mean: float
    """Mean of the per-volume differences ``a - b``."""
    ci95: tuple[float, float]
    """Percentile bootstrap 95 % interval of the mean, volumes resampled within strata."""
    p: float
    """Two-sided Wilcoxon signed-rank p-value (1.0 when every difference is zero)."""

    def to_json(self) -> dict[str, object]:
        return {"a": self.a, "b": self.b, "n": self.n, "mean": self.mean, "ci95": list(self.ci95), "p": self.p}


def paired_comparison(
    a: str,
    b: str,
    differences: Mapping[str, Sequence[float]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare ``a`` with ``b`` from their per-volume differences ``a - b``, grouped by stratum.

    Args:
        differences: Stratum name (e.g. ``"seed 0, setting A"``) -> the differences of its volumes. Volumes whose
            difference is not finite (a metric undefined for one method) are left out.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling, so that the interval is reproducible.

    Raises:
        ValueError: No finite difference at all.
    """
    from scipy.stats import wilcoxon

    strata = [np.asarray(v, dtype=float) for v in differences.values()]
    strata = [v[np.isfinite(v)] for v in strata]
    strata = [v for v in strata if v.size]
    if not strata:
        raise ValueError(f"no paired volumes to compare {a} with {b}")
    pooled = np.concatenate(strata)
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for values in strata:  # resample each stratum's volumes with replacement, keeping its size
        picks = rng.integers(0, values.size, size=(resamples, values.size))
        total += values[picks].sum(axis=1)
    means = total / pooled.size
    low, high = np.percentile(means, [2.5, 97.5])
    p = 1.0 if not np.any(pooled != 0) else float(wilcoxon(pooled, zero_method="wilcox").pvalue)
    return PairedComparison(a, b, int(pooled.size), float(pooled.mean()), (float(low), float(high)), p)
