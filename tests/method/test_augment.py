"""Augmentations: curves, the contrast pipeline, the harmonizer's mix, flow negatives and collapse modes."""

from __future__ import annotations

import math

import pytest
import torch

from harmonizing_flows.config import AugmentConfig, NegativeConfig
from harmonizing_flows.method.augment import (
    COLLAPSE_MODES,
    ContrastParams,
    FlowNegatives,
    HarmonizerAugmentation,
    MixParams,
    adjust_contrast,
    apply_bias,
    apply_curve,
    collapse,
    dissimilarity,
    draw_bias,
    draw_contrast,
    random_curves,
)


def _images(n: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g).float()
    mask = torch.zeros_like(x)
    mask[..., 3:-3, 2:-2] = 1
    return x * mask, mask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_curves_are_monotonic_with_fixed_ends_and_bounded_midpoints():
    lut = random_curves(64, margin=0.2, generator=_gen()).double()
    assert lut.shape == (64, 257)
    assert torch.all(lut[:, 0] == 0) and torch.all(lut[:, -1] == 255)
    assert torch.all(lut.diff(dim=1) > 0)
    # The first midpoint (128) lies in the central 60 % of 0..255; so does every later one between its neighbours.
    assert torch.all((lut[:, 128] >= 0.2 * 255 - 1e-3) & (lut[:, 128] <= 0.8 * 255 + 1e-3))
    left, mid, right = lut[:, 64], lut[:, 96], lut[:, 128]
    t = (mid - left) / (right - left)
    assert torch.all((t >= 0.2 - 1e-4) & (t <= 0.8 + 1e-4))
    assert t.std() > 0.1  # drawn, not fixed
    torch.testing.assert_close(random_curves(4, generator=_gen(5)), random_curves(4, generator=_gen(5)))


def test_apply_curve_looks_up_integers_and_interpolates_between():
    x, mask = _images(2)
    lut = random_curves(2, generator=_gen(1))
    y = apply_curve(x, lut, mask)
    i = x.long()
    expected = torch.stack([lut[b][i[b]] for b in range(2)]) * mask
    torch.testing.assert_close(y, expected)
    half = apply_curve(torch.full((2, 1, 1, 1), 10.5), lut, torch.ones(2, 1, 1, 1))
    torch.testing.assert_close(half.flatten(), (lut[:, 10] + lut[:, 11]) / 2)
    assert torch.all(y[mask == 0] == 0)


def test_adjust_contrast_identity_and_known_values():
    x, mask = _images(3)
    identity = ContrastParams(torch.zeros(3), torch.ones(3), torch.ones(3))
    torch.testing.assert_close(adjust_contrast(x, identity, mask), x)
    params = ContrastParams(
        torch.tensor([10.0, -300.0, 0.0]), torch.tensor([2.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 0.5])
    )
    y = adjust_contrast(x, params, mask)
    torch.testing.assert_close(y[0], ((x[0] + 10) * mask[0]).clamp(0, 255).mul(2).clamp(0, 255))
    assert torch.all(y[1] == 0)  # shifted below zero, clipped
    torch.testing.assert_close(y[2], 255 * (x[2] / 255).sqrt())
    assert torch.all(y[mask.expand_as(y) == 0] == 0)


def test_draw_contrast_respects_probability_and_ranges():
    config = AugmentConfig(step_probability=0.75)
    p = draw_contrast(4000, config, _gen())
    applied = (p.shift != 0).float().mean()
    assert 0.72 < applied < 0.78
    drawn = p.factor[p.factor != 1]
    assert drawn.min() >= 0.5 and drawn.max() <= 2.0
    none = draw_contrast(100, AugmentConfig(step_probability=0.0), _gen())
    assert torch.all(none.shift == 0) and torch.all(none.factor == 1) and torch.all(none.gamma == 1)


def test_harmonizer_mix_shares_and_each_mode():
    augment = HarmonizerAugmentation(AugmentConfig())
    params = augment.draw(5000, _gen())
    shares = torch.bincount(params.mode, minlength=3).float() / 5000
    torch.testing.assert_close(shares, torch.tensor([0.4, 0.4, 0.2]), atol=0.03, rtol=0)
    x, mask = _images(3)
    p = augment.draw(3, _gen(2))
    p = MixParams(torch.tensor([0, 1, 2]), p.curves, p.contrast)
    y = augment.apply(x, mask, p)
    torch.testing.assert_close(y[0], apply_curve(x[:1], p.curves[:1], mask[:1])[0])
    piped = adjust_contrast(x, p.contrast, mask)
    torch.testing.assert_close(y[1], piped[1])
    torch.testing.assert_close(y[2], apply_curve(piped[2:], p.curves[2:], mask[2:])[0])
    # Drawing and applying in one call is the same as drawing then applying with the same generator.
    torch.testing.assert_close(augment(x, mask, _gen(9)), augment.apply(x, mask, augment.draw(3, _gen(9))))


def test_bias_fields_span_their_amplitude_and_multiply_smoothly():
    fields = draw_bias(200, 0.6, _gen())
    spans = (fields.flatten(1).amax(1) - fields.flatten(1).amin(1)).double()
    assert float(spans.max()) <= math.log(1.3 / 0.7) + 1e-5 and float(spans.min()) >= 0
    assert float(spans.max()) > 0.8 * math.log(1.3 / 0.7)  # amplitudes are drawn up to the largest
    x = torch.full((2, 1, 32, 32), 100.0)
    mask = torch.ones_like(x)
    one = torch.zeros(2, 1, 4, 4)
    one[1, 0, :, 2:] = math.log(1.2)  # brighter on the right half of the control grid
    y = apply_bias(x, one, mask)
    torch.testing.assert_close(y[0], x[0])  # a zero log field is the identity
    assert torch.allclose(y[1, 0, :, -1], torch.tensor(120.0)) and torch.allclose(y[1, 0, :, 0], torch.tensor(100.0))
    steps = y[1, 0, 0].diff()
    assert (steps >= -1e-4).all() and steps.max() < 5  # monotone and gradual across: no overshoot, no jump
    torch.testing.assert_close(apply_bias(x, one, mask * 0), torch.zeros_like(x))


def test_bias_field_is_off_by_default_and_the_paper_draws_are_unchanged():
    plain = HarmonizerAugmentation(AugmentConfig()).draw(6, _gen(4))
    assert plain.bias is None
    biased_aug = HarmonizerAugmentation(AugmentConfig(bias_field=0.5))
    biased = biased_aug.draw(6, _gen(4))
    torch.testing.assert_close(plain.mode, biased.mode)
    torch.testing.assert_close(plain.curves, biased.curves)
    torch.testing.assert_close(plain.contrast.gamma, biased.contrast.gamma)
    x, mask = _images(6)
    expected = HarmonizerAugmentation.apply(apply_bias(x, biased.bias, mask), mask, plain)
    torch.testing.assert_close(biased_aug.apply(x, mask, biased), expected)  # the field comes first
    assert biased.select(slice(2, 4)).bias.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="bias_field"):
        AugmentConfig(bias_field=2.5)


def test_dissimilarity_is_computed_in_float_not_wrapping_uint8():
    mask = torch.ones(1, 1, 2, 2)
    x = torch.full((1, 1, 2, 2), 10.0)
    y = torch.full((1, 1, 2, 2), 5.0)
    assert dissimilarity(x, y, mask).item() == pytest.approx(5.0)  # uint8 arithmetic would give 251
    y2 = torch.tensor([[[[10.0, 10.0], [30.0, 30.0]]]])
    # d = 0, 0, 20, 20: mean |d| 10, std 10
    assert dissimilarity(x, y2, mask).item() == pytest.approx(30.0)


def test_collapse_modes_at_full_strength():
    x, mask = _images(4)
    y = collapse(x, mask, torch.arange(4), torch.ones(4))
    assert COLLAPSE_MODES == ("darkened", "blurred", "constant", "inverted")
    assert torch.all(y[0] == 0)
    assert y[1][mask[1] > 0].std() < 0.5 * x[1][mask[1] > 0].std()
    inside = mask[2] > 0
    assert torch.allclose(y[2][inside], x[2][inside].mean().expand(int(inside.sum())))
    torch.testing.assert_close(y[3], (255 - x[3]) * mask[3])


def test_flow_negatives_are_dissimilar_and_reproducible():
    x, mask = _images(64)
    negatives = FlowNegatives(NegativeConfig(fraction=0.5))
    neg, origin = negatives(x, mask, _gen(3))
    assert 0 < len(neg) <= 64 and len(neg) == len(origin)
    assert torch.all(dissimilarity(x[origin], neg, mask[origin]) > 20)
    neg2, origin2 = negatives(x, mask, _gen(3))
    assert torch.equal(neg, neg2) and torch.equal(origin, origin2)
    strict = FlowNegatives(NegativeConfig(fraction=1.0, min_dissimilarity=1e9))
    assert len(strict(x, mask, _gen())[0]) == 0
    with_collapse = FlowNegatives(NegativeConfig(fraction=0.5, collapse_modes=True))
    neg3, origin3 = with_collapse(x, mask, _gen(3))
    assert len(neg3) > len(neg) and len(origin3) == len(neg3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmentations_run_on_the_images_device():
    x, mask = _images(4)
    augment = HarmonizerAugmentation()
    params = augment.draw(4, _gen())
    cpu = augment.apply(x, mask, params)
    gpu = augment.apply(x.cuda(), mask.cuda(), params)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-5)
