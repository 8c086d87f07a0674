"""The raw scans' image quality measures and the within-site modified z-score."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from nibabel import orientations

from harmonizing_flows.bids.image_quality import bias_spread, image_quality, noise_ratio, site_z_scores
from harmonizing_flows.data.volume import Volume

SHAPE = (64, 64, 48)


def _volume(image: np.ndarray, voxel_mm: float = 1.0) -> Volume:
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    grid = np.indices(SHAPE).astype(np.float64)
    centre = (np.array(SHAPE, dtype=np.float64)[:, None, None, None] - 1) / 2
    mask = (((grid - centre) / (np.array(SHAPE)[:, None, None, None] * 0.42)) ** 2).sum(0) <= 1.0  # an ellipsoid
    return Volume(image=np.where(mask, image, 0).astype(np.float32), mask=mask, labels=None, affine=affine,
                  path=Path("scan.nii.gz"), native_shape=SHAPE, native_affine=affine, header=None,
                  to_ras=orientations.io_orientation(affine))  # fmt: skip


def _plane() -> np.ndarray:
    i, j, k = np.indices(SHAPE)
    return 100.0 + 0.2 * i - 0.1 * j + 0.3 * k  # a planar image: Immerkaer's mask cancels it


def test_the_noise_ratio_recovers_the_noise_over_the_median_and_ignores_a_planar_image():
    rng = np.random.default_rng(0)
    clean = _volume(_plane())
    assert noise_ratio(clean) == pytest.approx(0.0, abs=1e-6)  # float32 rounding only
    noisy = _volume(_plane() + rng.normal(0.0, 5.0, SHAPE))
    median = float(np.median(noisy.image[noisy.mask]))
    assert noise_ratio(noisy) == pytest.approx(5.0 / median, rel=0.05)
    scaled = _volume((_plane() + rng.normal(0.0, 5.0, SHAPE)) * 7.0)  # a vendor's scaling changes nothing
    assert noise_ratio(scaled) == pytest.approx(noise_ratio(noisy), rel=0.05)


def test_the_bias_spread_grows_with_a_multiplicative_field_and_not_with_scaling():
    i = np.indices(SHAPE)[0].astype(np.float64)
    flat = _volume(np.full(SHAPE, 100.0))
    assert bias_spread(flat) == pytest.approx(0.0, abs=1e-6)
    fields = [bias_spread(_volume(100.0 * np.exp(g * (i - 32) / 32))) for g in (0.2, 0.5, 1.0)]
    assert fields[0] < fields[1] < fields[2]
    # the log of the field is linear in its strength, and so is the spread of its smoothed version
    assert fields[2] == pytest.approx(5 * fields[0], rel=1e-3) and fields[2] > 0.2  # (percentiles interpolate)
    scaled = bias_spread(_volume(3.0 * 100.0 * np.exp(0.5 * (i - 32) / 32)))
    assert scaled == pytest.approx(fields[1], rel=1e-6)
    # on a coarser grid, the same field in millimetres gives about the same spread
    coarse = bias_spread(_volume(100.0 * np.exp(0.5 * (i - 32) / 32), voxel_mm=2.0))
    assert coarse > fields[0]


def test_image_quality_bundles_both_and_an_empty_brain_gives_nan():
    volume = _volume(_plane())
    quality = image_quality(volume)
    assert (quality.noise_ratio, quality.bias_spread) == (noise_ratio(volume), bias_spread(volume))
    empty = Volume(**{**volume.__dict__, "mask": np.zeros(SHAPE, dtype=bool)})
    assert math.isnan(noise_ratio(empty)) and math.isnan(bias_spread(empty))


def test_site_z_scores_are_modified_z_scores_within_each_site():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 100.0]
    rows = [{"site": "a", "m": v} for v in values] + [{"site": "b", "m": 1.0}, {"site": "a", "m": None}]
    z = site_z_scores(rows, "m")
    median = float(np.median(values))
    mad = float(np.median(np.abs(np.array(values) - median)))
    assert z[:6] == pytest.approx([0.6745 * (v - median) / mad for v in values])
    assert z[6] is None and z[7] is None  # a site of one scan; a row without the measure
    same = [{"site": "a", "m": 1.0}] * 4 + [{"site": "a", "m": 3.0}]
    assert site_z_scores(same, "m")[-1] == pytest.approx(2.0 / (1.253314 * 0.4))  # MAD 0: the mean-deviation rule
