"""Monotone curves: histogram matching as a look-up table, and the learnable curve's values and log-derivative."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonizing_flows.evaluation.baselines import HistogramMatching
from harmonizing_flows.figures import level_counts
from harmonizing_flows.method.curve import LEVELS, MIN_STEP, MonotoneCurve, matching_lut, mid_rank_quantiles


def _brains(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    source = np.clip(rng.normal(120, 30, (6, 40, 40)), 1, 255).round()
    target = np.clip(rng.gamma(4.0, 15.0, (6, 40, 40)), 1, 255).round()
    masks = np.zeros((6, 40, 40), dtype=bool)
    masks[:, 5:35, 8:30] = True
    return source * masks, masks, target * masks, masks


def test_the_matching_lut_is_histogram_matching_on_integer_images():
    source, source_mask, target, target_mask = _brains(0)
    reference = HistogramMatching().fit([source], [source_mask]).transform(target, target_mask)
    lut = matching_lut(level_counts(source[source_mask]), level_counts(target[target_mask]))
    assert lut.shape == (LEVELS,) and np.all(np.diff(lut) >= 0)
    mapped = np.where(target_mask, lut[target.astype(int)], 0.0)
    assert np.allclose(mapped, reference, atol=1e-4)
    # a histogram matched onto itself is unchanged where it has values
    counts = level_counts(source[source_mask])
    identity = matching_lut(counts, counts)
    assert np.allclose(identity[counts > 0], np.flatnonzero(counts > 0), atol=1e-9)


def test_mid_rank_quantiles_and_bad_histograms():
    quantiles, values = mid_rank_quantiles(np.array([0, 2, 0, 2]))
    assert quantiles.tolist() == [0.25, 0.75] and values.tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="empty"):
        mid_rank_quantiles(np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        matching_lut(np.ones(LEVELS), np.zeros(LEVELS))
    with pytest.raises(ValueError, match="256 levels"):
        matching_lut(np.ones(10), np.ones(LEVELS))


def test_a_curve_starts_at_its_lut_and_stays_strictly_increasing():
    assert torch.allclose(MonotoneCurve().knots()[0], torch.arange(LEVELS, dtype=torch.float32), atol=1e-3)
    source, source_mask, target, target_mask = _brains(1)
    lut = matching_lut(level_counts(source[source_mask]), level_counts(target[target_mask]))
    curve = MonotoneCurve(2, lut=lut)
    knots = curve.knots().detach().double().numpy()
    # flat runs of the lut rise by the minimum step, so a knot is off by at most that step times the levels
    assert np.abs(knots - lut).max() <= MIN_STEP * LEVELS + 1e-3
    with torch.no_grad():
        curve.raw_steps.uniform_(-30.0, 5.0)  # any parameters: still increasing
    assert bool((curve.knots()[:, 1:] > curve.knots()[:, :-1]).all())


def test_the_curve_interpolates_between_knots_and_picks_each_images_curve():
    luts = torch.stack([torch.arange(LEVELS) * 0.5 + 10.0, (torch.arange(LEVELS) / 255.0) ** 2 * 255.0])
    curve = MonotoneCurve(2, lut=luts.double())
    x = torch.tensor([0.0, 3.0, 3.25, 254.5, 255.0, 300.0, -4.0]).view(1, 1, 1, 7).expand(2, 1, 1, 7)
    y = curve(x, torch.tensor([0, 1])).detach()
    knots = curve.knots().detach()
    expected0 = torch.tensor([10.0, 11.5, 11.625, 137.25, 137.5, 137.5, 10.0])
    assert torch.allclose(y[0].flatten(), expected0, atol=1e-3)
    lerp = knots[1, 3] + 0.25 * (knots[1, 4] - knots[1, 3])
    assert torch.allclose(y[1].flatten()[2], lerp)
    assert torch.equal(curve(x[:1]), curve(x[:1], torch.tensor([0])))  # no rows: curve 0


def test_the_log_derivative_matches_autograd():
    torch.manual_seed(0)
    curve = MonotoneCurve(3)
    with torch.no_grad():
        curve.raw_steps.normal_(0.0, 2.0)
    x = (torch.rand(3, 1, 8, 8, dtype=torch.float32) * 254.0 + 0.5).requires_grad_()
    rows = torch.tensor([2, 0, 1])
    y = curve(x, rows)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(curve.log_derivative(x, rows), grad.log(), atol=1e-4)
    # and the gradient reaches the parameters through both
    (curve(x, rows).sum() + curve.log_derivative(x, rows).sum()).backward()
    assert curve.raw_steps.grad is not None and curve.raw_steps.grad.abs().sum() > 0
