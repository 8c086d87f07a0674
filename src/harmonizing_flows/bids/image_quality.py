"""Label-free image quality measures of a raw scan, and the within-site outlier rule that turns them into a flag.

The flow's likelihood catches a scan whose contrast is wrong, but the harmonizer is trained to undo intensity
faults, so a scan with heavy noise or a severe bias field can look source-like *after* harmonization while its
anatomy is still degraded. Two measures of the raw scan catch those faults where they are plain to see:

* ``noise_ratio``: the noise standard deviation over the median brain intensity (the inverse of an SNR), by
  Immerkaer's estimator: the mean absolute response of a 3x3 mask that cancels a locally planar image, applied in
  each axial slice over the brain voxels whose in-plane neighbours are all brain. Tissue edges add to it equally in
  every scan of one protocol, which is why it is compared within a site, not against a fixed limit.
* ``bias_spread``: the spread (5th to 95th percentile over the brain) of the log of the local tissue level (the
  upper quartile of the brain intensities in each block of about 8 mm) smoothed at :data:`BIAS_SMOOTHING_MM`. A
  multiplicative field scales every tissue by its own value at each place, so its log shows up here; the
  anatomy's share is about the same in every scan of one protocol.

Scans of one site share a protocol, so a faulty scan is an outlier among its own site's scans. The rule is
Iglewicz and Hoaglin's modified z-score, ``0.6745 (x - median) / MAD`` over the site's scans, one-sided (only
more noise or more bias is a fault), flagged above :data:`SITE_Z_FLAG` (their recommended 3.5), and applied only
to sites with at least :data:`SITE_MIN_SCANS` scored scans. Both constants were fixed from the literature before
any scan was scored.

References:
    Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding 64(2), 1996.
    Iglewicz and Hoaglin, "How to detect and handle outliers", ASQC Basic References in Quality Control 16, 1993.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.affines import voxel_sizes
from scipy import ndimage

from harmonizing_flows.data.volume import Volume

__all__ = [
    "BIAS_SMOOTHING_MM",
    "MEASURES",
    "SITE_MIN_SCANS",
    "SITE_Z_FLAG",
    "ImageQuality",
    "bias_spread",
    "image_quality",
    "noise_ratio",
    "site_z_scores",
]

SITE_Z_FLAG = 3.5
"""A scan whose modified z-score among its site's scans exceeds this is flagged (Iglewicz and Hoaglin, 1993)."""

SITE_MIN_SCANS = 5
"""The fewest scored scans of a site for the within-site rule to apply (a median and MAD of fewer mean little)."""

BIAS_SMOOTHING_MM = 20.0
"""The Gaussian smoothing (standard deviation, mm) that keeps the bias field and drops the anatomy's detail."""

_BLOCK_MM = 8.0
"""The blocks the local tissue level is measured in (a smooth field needs no finer grid; it keeps smoothing cheap)."""

_LEVEL_PERCENTILE = 75.0
"""A block's tissue level: this percentile of its brain intensities (its brightest tissue, white matter in a T1w
scan, where it has some; taken within the block so that a field that darkens one side does not hide it)."""

_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])

MEASURES = ("noise_ratio", "bias_spread")
"""The measures, as named in the QC table; each gets a ``<name>_z`` column with its within-site z-score."""


@dataclass(frozen=True)
class ImageQuality:
    """The measures of one raw scan (both dimensionless; larger is worse)."""

    noise_ratio: float
    bias_spread: float


def image_quality(volume: Volume) -> ImageQuality:
    """The image quality measures of ``volume`` (its raw intensities inside its brain mask)."""
    return ImageQuality(noise_ratio(volume), bias_spread(volume))


def noise_ratio(volume: Volume) -> float:
    """Immerkaer's noise standard deviation in the brain over the median brain intensity (NaN if the brain has no
    interior voxel or no signal)."""
    image, mask = volume.image.astype(np.float64), volume.mask.astype(bool)
    kernel = _IMMERKAER[:, :, None]  # in-plane (the first two RAS axes), slice by slice
    response = ndimage.convolve(image, kernel, mode="nearest")
    interior = ndimage.binary_erosion(mask, structure=np.ones((3, 3, 1), dtype=bool))
    median = float(np.median(image[mask])) if mask.any() else math.nan
    if not interior.any() or not median > 0:
        return math.nan
    sigma = math.sqrt(math.pi / 2.0) * float(np.abs(response[interior]).mean()) / 6.0
    return sigma / median


def bias_spread(volume: Volume) -> float:
    """The 5th-95th percentile spread of the smoothed log local tissue level over the brain (NaN if too little of
    the brain is left on the coarse grid)."""
    spacing = voxel_sizes(volume.affine)
    factors = [max(1, round(_BLOCK_MM / s)) for s in spacing]
    image, mask = volume.image.astype(np.float64), volume.mask.astype(bool)
    blocks = _blocks(np.where(mask & (image > 0), image, np.nan), factors)
    inside = np.isfinite(blocks).mean(axis=-1) >= 0.5  # blocks at least half brain
    if inside.sum() < 10:
        return math.nan
    level = np.zeros(inside.shape)
    level[inside] = np.log(np.nanpercentile(blocks[inside], _LEVEL_PERCENTILE, axis=-1))
    sigma = [BIAS_SMOOTHING_MM / (s * f) for s, f in zip(spacing, factors, strict=True)]
    weight = ndimage.gaussian_filter(inside.astype(np.float64), sigma, mode="constant")
    field = ndimage.gaussian_filter(level, sigma, mode="constant")[inside] / weight[inside]  # normalized convolution
    low, high = np.percentile(field, [5, 95])
    return float(high - low)


def _blocks(array: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """``array`` cut into blocks of ``factors`` voxels, ``(a, b, c, voxels per block)`` (padded with NaN)."""
    pad = [(0, -n % f) for n, f in zip(array.shape, factors, strict=True)]
    padded = np.pad(array, pad, constant_values=np.nan)
    (a, b, c), (fa, fb, fc) = padded.shape, factors
    cut = padded.reshape(a // fa, fa, b // fb, fb, c // fc, fc).transpose(0, 2, 4, 1, 3, 5)
    return cut.reshape(a // fa, b // fb, c // fc, fa * fb * fc)


def site_z_scores(rows: Sequence[Mapping[str, object]], measure: str) -> list[float | None]:
    """The modified z-score of ``measure`` for each row among the rows of its ``site`` (None where the row lacks
    the measure or its site has fewer than :data:`SITE_MIN_SCANS` rows that have it)."""
    by_site: dict[object, list[int]] = {}
    for i, row in enumerate(rows):
        value = row.get(measure)
        if isinstance(value, int | float) and math.isfinite(value):
            by_site.setdefault(row.get("site"), []).append(i)
    scores: list[float | None] = [None] * len(rows)
    for members in by_site.values():
        if len(members) < SITE_MIN_SCANS:
            continue
        values = np.array([float(rows[i][measure]) for i in members])  # type: ignore[arg-type]
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        mean_ad = float(np.mean(np.abs(values - median)))
        for i, value in zip(members, values, strict=True):
            if mad > 0:
                scores[i] = 0.6745 * (value - median) / mad
            elif mean_ad > 0:  # over half the scans equal: the usual fallback to the mean absolute deviation
                scores[i] = (value - median) / (1.253314 * mean_ad)
            else:
                scores[i] = 0.0
    return scores
