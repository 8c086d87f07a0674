"""Blind restoration: the network starts as the identity, the degradation's draws and its deterministic twin, and a
short fit that learns to restore."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from harmonizing_flows.config import RestorationConfig
from harmonizing_flows.errors import ConfigError
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.restoration import (
    Restored,
    Restorer,
    apply_degradation,
    draw_degradation,
    gaussian_blur,
)
from harmonizing_flows.profiles import PROFILES


def _images(n: int = 6, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-constant 'brains' (three tissue levels in stripes) inside a square mask."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.tensor([60.0, 130.0, 200.0])
    stripes = (torch.arange(size) // 4) % 3
    x = levels[stripes].view(1, 1, 1, size).expand(n, 1, size, size).clone()
    x = x + torch.randint(-5, 6, (n, 1, 1, 1), generator=g).float()  # each image its own brightness
    mask = torch.zeros_like(x)
    mask[..., 3:-3, 3:-3] = 1.0
    return x * mask, mask


def test_the_network_starts_as_the_identity():
    x, mask = _images()
    restorer = Restorer(RestorationConfig(channels=4, layers=3))
    assert torch.equal(restorer(x, mask), x)


def test_clean_draws_come_back_unchanged_and_the_twin_is_deterministic():
    x, mask = _images()
    config = RestorationConfig()
    params = draw_degradation(len(x), x.shape[-2:], config, torch.Generator().manual_seed(1))
    again = draw_degradation(len(x), x.shape[-2:], config, torch.Generator().manual_seed(1))
    y = apply_degradation(x, mask, params)
    assert torch.equal(y, apply_degradation(x, mask, again))
    assert torch.equal(y, y.round()) and y.min() >= 0 and y.max() <= 255
    assert torch.equal(y * (1 - mask), torch.zeros_like(y))  # the background stays zero
    everything_clean = replace(params, clean=torch.ones(len(x), dtype=torch.bool))
    assert torch.equal(apply_degradation(x, mask, everything_clean), x)
    nothing_clean = replace(params, clean=torch.zeros(len(x), dtype=torch.bool))
    assert not torch.equal(apply_degradation(x, mask, nothing_clean), x)


def test_rician_noise_has_its_level_and_its_bias():
    # a bright flat image: the noise's spread is its sd; on a dark one the modulus lifts the mean (Rician bias)
    size, sd = 64, 10.0
    mask = torch.ones(2, 1, size, size)
    x = torch.tensor([200.0, 0.0]).view(2, 1, 1, 1).expand(2, 1, size, size).clone()
    params = draw_degradation(2, (size, size), RestorationConfig(), torch.Generator().manual_seed(2))
    params = replace(params, clean=torch.zeros(2, dtype=torch.bool), bias=torch.zeros_like(params.bias),
                     blur_rows=torch.zeros(2), blur_cols=torch.zeros(2), noise_sd=torch.full((2,), sd))  # fmt: skip
    y = apply_degradation(x, mask, params)
    assert float(y[0].std()) == pytest.approx(sd, rel=0.1) and float(y[0].mean()) == pytest.approx(200.0, abs=1.0)
    assert float(y[1].mean()) == pytest.approx(sd * (torch.pi / 2) ** 0.5, rel=0.1)  # Rayleigh mean


def test_the_blur_is_per_image_and_along_the_asked_axes():
    impulse = torch.zeros(3, 1, 15, 15)
    impulse[:, 0, 7, 7] = 1.0
    out = gaussian_blur(impulse, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(out[0], impulse[0], atol=1e-6)  # width 0: unchanged
    assert float(out[1].sum()) == pytest.approx(1.0, abs=1e-5)  # a blur keeps the total
    assert torch.allclose(out[1, 0], out[1, 0].T, atol=1e-6)  # the same width on both axes: symmetric
    assert out[2, 0, 7, 6] == pytest.approx(0.0, abs=1e-6) and out[2, 0, 6, 7] > 0.1  # rows only


def test_a_short_fit_restores_better_than_the_identity():
    torch.manual_seed(0)
    config = RestorationConfig(channels=8, layers=4, max_blur=0.0, max_thick=0.0, bias_field=0.0, clean_share=0.0)
    restorer = Restorer(config)
    optimizer = torch.optim.Adam(restorer.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(3)

    def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, mask = _images(8, 24, seed)
        return x, mask, apply_degradation(x, mask, draw_degradation(8, (24, 24), config, generator))

    for step in range(150):
        x, mask, y = batch(step)
        loss = ((restorer(y, mask) - x) ** 2 * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, mask, y = batch(1000)
    with torch.no_grad():
        restored = float(((restorer(y, mask) - x) ** 2 * mask).sum() / mask.sum())
    degraded = float(((y - x) ** 2 * mask).sum() / mask.sum())
    assert restored < 0.7 * degraded


def test_bad_restoration_settings_are_refused():
    with pytest.raises(ConfigError, match="layers"):
        RestorationConfig(layers=1)
    with pytest.raises(ConfigError, match="clean_share"):
        RestorationConfig(clean_share=1.5)
    with pytest.raises(ConfigError, match="negative"):
        RestorationConfig(max_noise=-1.0)


def _changing_restorer(seed: int = 0) -> Restorer:
    """A restorer that changes images: its last layer drawn, not zero."""
    torch.manual_seed(seed)
    restorer = Restorer(RestorationConfig(channels=4, layers=3))
    torch.nn.init.normal_(restorer.net[-1].weight, std=0.05)
    return restorer.eval()


def _harmonizers() -> dict[str, torch.nn.Module]:
    curve = CurveHarmonizer(np.bincount(np.arange(40, 220), minlength=256))
    with torch.no_grad():
        curve.curve.offset += 7.0  # not the identity: the restorer must see the curve's output
    torch.manual_seed(1)
    return {"curve": curve, "paper": Harmonizer(PROFILES["smoke"].harmonizer).eval()}


@pytest.mark.parametrize("family", ["curve", "paper"])
def test_a_restored_harmonizer_gives_its_output_through_the_fields_interface(family):
    # harmonize.py carries parts() back to a volume's grid: the fields must give what the module outputs
    harmonizer = _harmonizers()[family]
    restored = Restored(harmonizer, _changing_restorer())
    x, mask = _images(4, 24)
    with torch.no_grad():
        output = restored(x, mask)
        alpha, beta = restored.parts(x, mask)
        through_fields = Harmonizer.apply(alpha.view(-1, 1, 1, 1), beta, x, mask)
        torch.testing.assert_close(restored.parts(x)[1] * mask, beta * mask)  # the mask is x's brain by default
        harmonized = harmonizer(x, mask)
    torch.testing.assert_close(through_fields, output, atol=1e-3, rtol=0)
    assert (output - harmonized).abs().max() > 0.5  # the restorer acted
    assert output[mask == 0].abs().max() == 0  # background stays zero
    assert restored.factor == getattr(harmonizer, "factor", 1)


def test_a_restorer_at_its_start_changes_nothing():
    harmonizer = _harmonizers()["curve"]
    x, mask = _images(4, 24)
    with torch.no_grad():
        torch.testing.assert_close(Restored(harmonizer, Restorer())(x, mask), harmonizer(x, mask))
