"""The harmonizer: identity at start, alpha and beta, sizes, and pre-training that learns."""

from __future__ import annotations

import pytest
import torch

from harmonizing_flows.config import HarmonizerConfig
from harmonizing_flows.method.augment import HarmonizerAugmentation
from harmonizing_flows.method.harmonizer import Harmonizer, pretraining_error

SMALL = HarmonizerConfig(widths=(4, 8, 8), blocks=1)


def _batch(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mask = ((yy**2 + xx**2) < 0.7).float().expand(n, 1, size, size)
    x = (120 + 80 * torch.sin(3 * xx + torch.rand(n, 1, 1, 1, generator=g) * 6) * torch.cos(2 * yy)) * mask
    return x.round().clamp(0, 255), mask


@pytest.mark.parametrize("positive", [False, True])
def test_starts_as_the_identity(positive):
    h = Harmonizer(HarmonizerConfig(positive_alpha=positive))
    assert sum(p.numel() for p in h.parameters()) > 800_000  # the paper's 0.82 M parameters
    x, mask = _batch(2, 32)
    torch.testing.assert_close(h(x, mask), x)
    torch.testing.assert_close(h.alpha(x), torch.ones(2))


def test_positive_alpha_stays_positive_and_paper_alpha_can_go_negative():
    x, _ = _batch(4)
    for positive in (False, True):
        h = Harmonizer(HarmonizerConfig(widths=(4, 8, 8), blocks=1, positive_alpha=positive))
        with torch.no_grad():
            h.alpha_head.bias.fill_(-3.0)
        alpha = h.alpha(x)
        assert torch.all(alpha > 0) if positive else torch.all(alpha < 0)


def test_any_size_divisible_by_the_factor_and_masked_clamped_output():
    h = Harmonizer(SMALL)
    assert h.factor == 4
    with torch.no_grad():
        h.alpha_head.bias.fill_(3.0)
    x, mask = _batch(2, 20)
    y = h(x, mask)
    assert y.shape == x.shape and y.max() <= 255 and torch.all(y[mask == 0] == 0)
    assert y.max() == 255  # alpha 3 saturates, and the clamp holds it


def test_pretraining_lowers_the_error_on_held_out_augmented_slices():
    torch.manual_seed(0)
    h = Harmonizer(SMALL)
    augment = HarmonizerAugmentation()
    x, mask = _batch(16, 16, seed=1)
    held_x, held_mask = _batch(8, 16, seed=2)
    held_aug = augment(held_x, held_mask, torch.Generator().manual_seed(0))
    before = pretraining_error(h, held_aug, held_x, held_mask) / held_mask.sum()
    optimizer = torch.optim.Adam(h.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        loss = pretraining_error(h, augment(x, mask, g), x, mask) / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = pretraining_error(h, held_aug, held_x, held_mask) / held_mask.sum()
    assert after < 0.7 * before, (before.item(), after.item())
