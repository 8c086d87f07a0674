"""Monotone intensity curves on the 0..255 scale: histogram matching as a curve, and a learnable monotone curve.

The paper's harmonizer has one gain per slice and cannot express the per-volume, nonlinear, monotone intensity map
that separates two scanners' T1w contrasts; histogram matching fits exactly that map from two histograms. This
module gives both as piecewise-linear curves through the 256 integer levels, so that a harmonizer can start at
histogram matching (step 0 equals it on the integer images the slices hold) and adaptation can move the curve
while it stays monotone.

A :class:`MonotoneCurve` keeps its knot values as an offset plus positive increments (a minimum step plus a
softplus), so every parameter value is a strictly increasing map; its log-derivative is exact and cheap, which is
what a change-of-variables term in the adaptation objective needs (flattening the contrast is then penalised, not
rewarded). Written here rather than taken from a library: zuko's monotone transforms are rational-quadratic
splines of unbounded inputs with no histogram start, and a harmonizer needs neither.

References:
    | Nyul, Udupa, Zhang. New variants of a method of MRI scale standardization. IEEE TMI 19(2), 2000.
    | Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017 (the change of variables).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["LEVELS", "MIN_STEP", "MonotoneCurve", "matching_lut", "mid_rank_quantiles"]

LEVELS = 256
"""The integer levels of the slices; a curve has a knot at each."""

MIN_STEP = 1e-3
"""The smallest increment between neighbouring knots (levels): keeps a curve strictly increasing, so its
log-derivative is finite, while histogram matching's flat runs change by at most 0.26 levels over the range."""


def mid_rank_quantiles(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The occupied levels of a histogram and the mid-rank quantile of each (the share of values below it plus
    half its own share): the convention that maps a histogram onto itself unchanged.

    Raises:
        ValueError: An empty histogram.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if not total > 0:
        raise ValueError("an empty histogram has no quantiles")
    cdf = np.cumsum(counts) / total
    occupied = counts > 0
    return (cdf - counts / (2.0 * total))[occupied], np.flatnonzero(occupied).astype(np.float64)


def matching_lut(source_counts: np.ndarray, target_counts: np.ndarray) -> np.ndarray:
    """Histogram matching as a look-up table: the source level at each target level's mid-rank quantile,
    ``(256,)`` float64, non-decreasing. Levels the target does not occupy take the quantile between their
    neighbours' (the share of target values below them).

    Raises:
        ValueError: Either histogram is empty or not of 256 levels.
    """
    source_counts, target_counts = np.asarray(source_counts), np.asarray(target_counts)
    if source_counts.shape != (LEVELS,) or target_counts.shape != (LEVELS,):
        raise ValueError(f"histograms of {LEVELS} levels expected, got {source_counts.shape} and {target_counts.shape}")
    quantiles, values = mid_rank_quantiles(source_counts)
    total = float(target_counts.sum())
    if not total > 0:
        raise ValueError("an empty histogram has no quantiles")
    below = np.concatenate([[0.0], np.cumsum(target_counts)[:-1]]) / total
    return np.interp(below + target_counts / (2.0 * total), quantiles, values)


class MonotoneCurve(nn.Module):
    """A batch of strictly increasing piecewise-linear maps of 0..255, one per row, with a knot at each level.

    Args:
        curves: How many curves (one per volume, or one per site).
        lut: Knot values to start from, ``(256,)`` or ``(curves, 256)``; non-decreasing (increments below
            :data:`MIN_STEP` are raised to it). The identity by default.

    Example:
        >>> curve = MonotoneCurve(1, lut=matching_lut(source_counts, target_counts))
        >>> y = curve(x, rows)          # x (B, 1, H, W) on 0..255, rows (B,) the curve of each image
        >>> log_slope = curve.log_derivative(x, rows)
    """

    def __init__(self, curves: int = 1, lut: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        if lut is None:
            lut = torch.arange(LEVELS, dtype=torch.float64)
        knots = torch.as_tensor(lut, dtype=torch.float64).expand(curves, LEVELS)
        steps = (knots[:, 1:] - knots[:, :-1]).clamp_min(MIN_STEP) - MIN_STEP
        # softplus^-1(s) = s + log(-expm1(-s)), stable for large s; tiny steps sit at the softplus floor
        raw = torch.where(steps > 1e-6, steps + torch.log(-torch.expm1(-steps.clamp_min(1e-6))), math.log(1e-6))
        self.offset = nn.Parameter(knots[:, :1].clone().float())
        self.raw_steps = nn.Parameter(raw.float())

    def knots(self) -> torch.Tensor:
        """The knot values ``(curves, 256)``: the image of each level."""
        steps = nn.functional.softplus(self.raw_steps) + MIN_STEP
        return torch.cat([self.offset, self.offset + steps.cumsum(1)], dim=1)

    def _segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position = x.clamp(0.0, LEVELS - 1.0)
        left = position.floor().clamp_max(LEVELS - 2)
        return left.long(), position - left

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Each image ``x[i]`` through curve ``rows[i]`` (curve 0 for all when ``rows`` is None); inputs outside
        0..255 are clamped to it."""
        knots = self._rows(rows, x.shape[0])
        left, fraction = self._segment(x)
        flat_left = left.flatten(1)
        low = torch.gather(knots, 1, flat_left).view_as(x)
        high = torch.gather(knots, 1, flat_left + 1).view_as(x)
        return low + fraction * (high - low)

    def log_derivative(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``log dy/dx`` at each pixel: the log slope of the segment ``x`` lies on (the one to its right at a
        knot)."""
        knots = self._rows(rows, x.shape[0])
        slopes = (knots[:, 1:] - knots[:, :-1]).log()
        left, _ = self._segment(x)
        return torch.gather(slopes, 1, left.flatten(1)).view_as(x)

    def _rows(self, rows: torch.Tensor | None, batch: int) -> torch.Tensor:
        knots = self.knots()
        if rows is None:
            return knots[:1].expand(batch, LEVELS)
        return knots[rows.to(knots.device).long()]
