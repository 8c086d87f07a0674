"""Resampling: the conformed grid keeps the field of view, interpolation is exact on linear fields, labels stay
labels, and shrinking does not alias."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.affines import apply_affine

from harmonizing_flows.data.resample import conformed_grid, needs_resampling, resample_array, voxel_sizes


def _oblique(zooms=(1.0, 1.2, 0.9)) -> np.ndarray:
    """LIA axes, anisotropic voxels and a 10 degree rotation about S."""
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    axes = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)  # L, I, A
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag(zooms)
    affine[:3, 3] = [30.0, -12.0, 8.0]
    return affine


@pytest.mark.parametrize("shape", [(20, 31, 17), (21, 30, 16)])
def test_conformed_grid_is_isotropic_and_keeps_the_centre_and_extent(shape):
    affine = _oblique()
    new_affine, new_shape = conformed_grid(affine, shape, 2.0)
    np.testing.assert_allclose(voxel_sizes(new_affine), 2.0)
    centre = apply_affine(affine, (np.asarray(shape) - 1) / 2)
    np.testing.assert_allclose(apply_affine(new_affine, (np.asarray(new_shape) - 1) / 2), centre, atol=1e-9)
    extent, new_extent = np.asarray(shape) * voxel_sizes(affine), np.asarray(new_shape) * 2.0
    assert np.all(np.abs(new_extent - extent) <= 1.0)  # within half a new voxel at each end
    # the axes keep their directions
    np.testing.assert_allclose(new_affine[:3, :3] / 2.0, affine[:3, :3] / voxel_sizes(affine), atol=1e-12)


def test_linear_interpolation_reproduces_a_linear_field_in_world_coordinates():
    shape, affine = (24, 20, 28), _oblique()
    world = apply_affine(affine, np.stack(np.indices(shape), -1))
    gradient = np.array([0.7, -0.3, 1.1])
    field = (world @ gradient + 50.0).astype(np.float32)
    for voxel in (2.0, 0.5):  # shrinking (smoothed first) and enlarging
        new_affine, new_shape = conformed_grid(affine, shape, voxel)
        out = resample_array(field, affine, new_affine, new_shape)
        want = apply_affine(new_affine, np.stack(np.indices(new_shape), -1)) @ gradient + 50.0
        inner = tuple(slice(3, n - 3) for n in new_shape)  # away from the edges, where values are held
        np.testing.assert_allclose(out[inner], want[inner], atol=1e-3)


def test_nearest_resampling_keeps_label_values():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 2, 4, 41, 17], dtype=np.int32), size=(16, 18, 14))
    affine = np.diag([0.7, 0.7, 1.3, 1.0])
    new_affine, new_shape = conformed_grid(affine, labels.shape, 1.0)
    out = resample_array(labels, affine, new_affine, new_shape, order=0)
    assert out.dtype == labels.dtype and set(np.unique(out)) <= {0, 2, 4, 41, 17}
    # back onto the original grid, a coarse label map is the original wherever the label is locally constant
    same = resample_array(labels, affine, affine, labels.shape, order=0)
    assert np.array_equal(same, labels)


def test_shrinking_does_not_alias_a_fine_pattern():
    # a one-voxel checkerboard; 33 voxels put the 2 mm centres on voxel centres, where plain sampling would
    # alias it to all zeros or all ones (0.5 from the mean); the smoothing leaves about 0.09
    board = (np.indices((33, 33, 33)).sum(0) % 2).astype(np.float32)
    new_affine, new_shape = conformed_grid(np.eye(4), board.shape, 2.0)
    np.testing.assert_allclose(new_affine[:3, 3], 1.0)
    out = resample_array(board, np.eye(4), new_affine, new_shape)
    assert np.abs(out[2:-2, 2:-2, 2:-2] - 0.5).max() < 0.15


def test_only_voxel_sizes_beyond_ten_percent_are_resampled():
    assert not needs_resampling(np.diag([1.0, 1.0, 1.0, 1]), 1.0)
    assert not needs_resampling(np.diag([0.94, 1.05, 1.0, 1]), 1.0)
    assert needs_resampling(np.diag([1.0, 1.2, 1.0, 1]), 1.0)
    assert needs_resampling(np.diag([1.0, 1.0, 1.0, 1]), 2.0)
    assert needs_resampling(_oblique((2.0, 2.0, 1.0)), 2.0)
