"""Resampling a volume to a profile's voxel size, and a field computed on that grid back to the input's.

A profile's networks see slices of a fixed size meant for one voxel size (``SliceConfig.voxel_size``: the paper's
1 mm, the fast CPU profile's 2 mm). Data at another resolution is resampled to it before slicing, the way
FreeSurfer conforms every input to one grid: :func:`conformed_grid` gives the isotropic grid that covers the same
field of view, centred on it, and :func:`resample_array` carries an array from one grid to another through their
affines. Shrinking smooths first with a Gaussian (the anti-aliasing of ``skimage.transform.resize``), so that
fine texture does not alias into the coarse image. scipy's ``affine_transform`` does the interpolation; nothing
here is per voxel in Python.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["RESAMPLE_TOLERANCE", "conformed_grid", "needs_resampling", "resample_array", "voxel_sizes"]

RESAMPLE_TOLERANCE = 0.1
"""Voxel sizes within this share of a profile's voxel size are sliced as they are: 0.94 mm or 1.05 mm data is
close enough to the paper profile's 1 mm that interpolation would cost more detail than the scale mismatch."""


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """The length in mm of each array axis's step (oblique affines included)."""
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(0))


def needs_resampling(affine: np.ndarray, voxel_size: float) -> bool:
    """Whether any axis's voxel size differs from ``voxel_size`` by more than :data:`RESAMPLE_TOLERANCE`."""
    return bool(np.any(np.abs(voxel_sizes(affine) - voxel_size) > RESAMPLE_TOLERANCE * voxel_size))


def conformed_grid(
    affine: np.ndarray, shape: tuple[int, int, int], voxel_size: float
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The affine and shape of ``voxel_size`` mm voxels along the same axes, covering the same field of view.

    The new grid is centred on the old one (the centre voxel's world position is kept), so nothing shifts by
    half a voxel; each axis has ``round(extent / voxel_size)`` voxels, at least one.
    """
    affine = np.asarray(affine, dtype=float)
    step = voxel_size / voxel_sizes(affine)  # new voxel steps in old index units
    old = np.asarray(shape, dtype=float)
    new = np.maximum(np.rint(old / step), 1)
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(step)
    to_old[:3, 3] = (old - 1) / 2 - step * (new - 1) / 2
    return affine @ to_old, tuple(int(n) for n in new)  # type: ignore[return-value]


def resample_array(
    array: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    *,
    order: int = 1,
) -> np.ndarray:
    """``array`` on the grid ``affine``, sampled at the voxels of ``target_affine`` / ``target_shape``.

    ``order`` 1 interpolates linearly, smoothing first along axes where the target is coarser (sigma
    ``(step - 1) / 2`` source voxels); ``order`` 0 takes the nearest voxel (label maps, no smoothing). Outside the
    source grid the nearest edge value is used.
    """
    to_source = np.linalg.inv(np.asarray(affine, dtype=float)) @ np.asarray(target_affine, dtype=float)
    values = np.asarray(array)
    if order > 0:
        values = values.astype(np.float32, copy=False)
        step = voxel_sizes(to_source)  # target voxel steps in source voxels (to_source's columns)
        sigma = np.maximum((step - 1) / 2, 0)
        if np.any(sigma > 0):
            values = ndimage.gaussian_filter(values, sigma, mode="nearest")
    matrix = to_source[:3, :3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9):  # axes kept (always, from conformed_grid)
        matrix = np.diag(matrix)  # scipy's separable path: several times faster than the general one
    return ndimage.affine_transform(
        values, matrix, to_source[:3, 3], output_shape=tuple(target_shape), order=order, mode="nearest"
    )
