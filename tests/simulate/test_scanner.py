"""Image formation: the receive-coil profile, fixed per site, and the per-scan bias field on top of it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import brain_phantom
from harmonizing_flows.config import SimulationConfig
from harmonizing_flows.simulate.scanner import acquire, coil_profile
from harmonizing_flows.simulate.sites import BUILTIN_SITES, Site

SHAPE = (40, 48, 44)


def _inside(shape: tuple[int, int, int]) -> torch.Tensor:
    x, y, z = torch.meshgrid(*[torch.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    return x * x + y * y + z * z <= 1.0


def test_coil_profile_spans_its_range_and_rises_towards_the_edge():
    site = Site(name="array", coil_bias=0.57)
    field = coil_profile(site, SHAPE, seed=0)
    inside = _inside(SHAPE)
    values = field[inside]
    assert float(values.mean()) == pytest.approx(0.0, abs=1e-5)
    ratio = math.exp(float(values.max() - values.min()))
    assert ratio == pytest.approx((1 + 0.57 / 2) / (1 - 0.57 / 2), rel=1e-4)  # centre-to-edge 1.8
    x, y, z = torch.meshgrid(*[torch.linspace(-1.0, 1.0, n) for n in SHAPE], indexing="ij")
    radius = torch.sqrt(x * x + y * y + z * z)
    core, rim = field[radius < 0.3].mean(), field[(radius > 0.8) & inside].mean()
    assert rim > core + 0.1  # an array sees the brain's surface better than its centre


def test_coil_profile_is_the_sites_own_and_reproducible():
    a = Site(name="site-a", coil_bias=0.3)
    same = coil_profile(a, SHAPE, seed=3)
    assert torch.equal(same, coil_profile(a, SHAPE, seed=3))
    other_site = coil_profile(dataclasses.replace(a, name="site-b"), SHAPE, seed=3)
    other_seed = coil_profile(a, SHAPE, seed=4)
    for other in (other_site, other_seed):
        assert not torch.allclose(same, other, atol=1e-3)
    assert torch.count_nonzero(coil_profile(dataclasses.replace(a, coil_bias=0.0), SHAPE, seed=3)) == 0


def _scan(site: Site, subject: int) -> np.ndarray:
    _, mask, labels = brain_phantom(SHAPE)
    config = SimulationConfig(voxel_size=4.0, texture=0.0, seed=5)
    image, _ = acquire(labels.astype(np.int32), mask.astype(bool), site, config, np.random.default_rng(subject))
    return image.astype(float)


def test_every_scan_of_a_site_shares_its_coil_profile():
    # Without per-scan bias, noise or texture, a scan with the coil divided by the same scan without it is the
    # coil's profile (up to the export's global scale), and it is the same profile for every subject.
    plain = dataclasses.replace(BUILTIN_SITES["mprage-3t"], snr=1e6, bias_range=0.0, coil_bias=0.0)
    array = dataclasses.replace(plain, coil_bias=0.6)
    profile = coil_profile(array, SHAPE, seed=5).numpy()
    estimates, kept = [], np.ones(SHAPE, dtype=bool)
    for subject in (0, 1):
        with_coil, without = _scan(array, subject), _scan(plain, subject)
        bright = (without > 60) & (with_coil > 60) & (with_coil < 250)  # away from quantization and clipping
        log_ratio = np.log(np.where(bright, with_coil, 1.0) / np.where(bright, without, 1.0))
        assert np.ptp(profile[bright]) > 0.3
        assert np.corrcoef(log_ratio[bright], profile[bright])[0, 1] > 0.95
        estimates.append(log_ratio)
        kept &= bright
    assert np.corrcoef(estimates[0][kept], estimates[1][kept])[0, 1] > 0.95
