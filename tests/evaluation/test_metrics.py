"""Metrics in mm: cross-checked against MONAI's independent implementation, and the empty-region conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from harmonizing_flows.evaluation.metrics import (
    dice,
    neighbour_difference,
    score_volume,
    subject_means,
    surface_distances,
)

monai_metrics = pytest.importorskip("monai.metrics")


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return d2 < radius**2


def _monai(pred: np.ndarray, ref: np.ndarray, spacing, classes: int):
    def onehot(a):
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), classes).movedim(-1, 0)[None]

    p, r = onehot(pred), onehot(ref)
    hd95 = monai_metrics.HausdorffDistanceMetric(include_background=False, percentile=95)(p, r, spacing=spacing)
    assd = monai_metrics.SurfaceDistanceMetric(include_background=False, symmetric=True)(p, r, spacing=spacing)
    dsc = monai_metrics.DiceMetric(include_background=False)(p, r)
    return dsc.numpy()[0], hd95.numpy()[0], assd.numpy()[0]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.2, 0.9, 2.0), (3.0, 1.0, 1.0)])
def test_distances_and_dice_match_monai(spacing):
    rng = np.random.default_rng(1)
    shape = (28, 34, 30)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[_ball(shape, (14, 17, 15), 9, spacing)] = 1
    pred[_ball(shape, (13, 18, 14), 8, spacing)] = 1
    ref[3:8, 4:10, 5:9] = 2
    pred[4:8, 5:11, 5:10] = 2
    pred[ndimage.binary_dilation(rng.random(shape) > 0.997) & (pred == 0)] = 3  # scattered false positives
    ref[20:24, 25:30, 20:26] = 3
    ours = score_volume(pred, ref, spacing, classes=(1, 2, 3))
    dsc, hd95, assd = _monai(pred, ref, spacing, 4)
    np.testing.assert_allclose(ours["dice"], dsc, rtol=1e-5)
    np.testing.assert_allclose(ours["hd95"], hd95, rtol=1e-5)
    np.testing.assert_allclose(ours["assd"], assd, rtol=1e-5)


def test_modified_hausdorff_is_the_larger_mean_directed_distance():
    # two flat plates 3 voxels apart along an axis of 2 mm: every surface voxel of one is 6 mm from the other's
    # nearest face, except where the plates overlap in extent
    shape = (12, 10, 10)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[2, 2:8, 2:8] = True
    b[5, 2:8, 2:8] = True
    d_ab, d_ba = surface_distances(a, b, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(d_ab, 6.0)
    np.testing.assert_allclose(d_ba, 6.0)
    scores = score_volume(a.astype(np.uint8), b.astype(np.uint8), (2.0, 1.0, 1.0), classes=(1,))
    assert scores["mhd"][0] == pytest.approx(6.0)
    assert scores["hd95"][0] == pytest.approx(6.0)
    assert scores["dice"][0] == 0.0
    # a small region inside a large one: the directed means differ, and the MHD is the larger
    big = _ball((30, 30, 30), (15, 15, 15), 10)
    small = _ball((30, 30, 30), (15, 15, 15), 4)
    d_sb, d_bs = surface_distances(small, big, (1.0, 1.0, 1.0))
    mhd = score_volume(small.astype(np.uint8), big.astype(np.uint8), (1, 1, 1), classes=(1,))["mhd"][0]
    assert mhd == pytest.approx(max(d_sb.mean(), d_bs.mean()))
    assert d_sb.mean() != pytest.approx(d_bs.mean())


def test_cropping_gives_the_same_distances_as_the_whole_volume():
    shape = (40, 40, 40)
    a = _ball(shape, (12, 20, 20), 6)
    b = _ball(shape, (16, 22, 19), 7)
    cropped = surface_distances(a, b, (1.0, 1.5, 0.8))
    # the same computation without cropping
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    whole = (
        ndimage.distance_transform_edt(~sb, sampling=(1.0, 1.5, 0.8))[sa],
        ndimage.distance_transform_edt(~sa, sampling=(1.0, 1.5, 0.8))[sb],
    )
    np.testing.assert_allclose(np.sort(cropped[0]), np.sort(whole[0]))
    np.testing.assert_allclose(np.sort(cropped[1]), np.sort(whole[1]))


def test_identical_regions_score_perfectly():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[_ball(ref.shape, (10, 10, 10), 6)] = 5
    scores = score_volume(ref, ref, (1.0, 1.0, 1.0), classes=(5,))
    assert scores["dice"][0] == 1.0
    assert scores["hd95"][0] == 0.0 and scores["mhd"][0] == 0.0 and scores["assd"][0] == 0.0


def test_empty_prediction_or_reference_is_penalised_and_both_empty_is_skipped():
    shape = (10, 12, 14)
    spacing = (2.0, 1.0, 1.0)
    ref = np.zeros(shape, np.uint8)
    ref[2:5, 3:6, 3:6] = 1
    pred = np.zeros(shape, np.uint8)
    pred[5:8, 3:6, 3:6] = 2
    scores = score_volume(pred, ref, spacing, classes=(1, 2, 3))
    diagonal = np.sqrt(20**2 + 12**2 + 14**2)
    # class 1: reference only; class 2: prediction only -> Dice 0, distances the field of view's diagonal
    for i in (0, 1):
        assert scores["dice"][i] == 0.0
        for name in ("hd95", "mhd", "assd"):
            assert scores[name][i] == pytest.approx(diagonal)
    # class 3 is in neither: NaN, and left out of the subject's mean
    assert all(np.isnan(scores[name][2]) for name in scores)
    means = subject_means(scores)
    assert means["dice"] == 0.0
    assert means["hd95"] == pytest.approx(diagonal)
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


def test_bad_shapes_and_spacing_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        score_volume(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        score_volume(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        score_volume(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 0, 1))


def test_neighbour_difference_sees_flicker_that_one_map_per_volume_does_not_add():
    rng = np.random.default_rng(0)
    images = rng.uniform(50, 150, (1, 12, 12)).repeat(6, axis=0).astype(np.float32)  # anatomy constant along slices
    mask = np.ones_like(images, bool)
    assert neighbour_difference(images, mask) == 0.0
    assert neighbour_difference(2.0 * images + 10, mask) == 0.0  # one intensity map for the volume: no flicker
    gains = np.array([1.0, 1.1, 1.0, 1.1, 1.0, 1.1], np.float32)[:, None, None]
    flicker = neighbour_difference(images * gains, mask)
    assert flicker == pytest.approx(0.1 * images[0].mean(), rel=1e-5)
    # only pixels in the brain of both neighbours count
    shifted = images.copy()
    shifted[:, 0, 0] = [0, 255, 0, 255, 0, 255]
    partial = mask.copy()
    partial[1::2, 0, 0] = False
    assert neighbour_difference(shifted, partial) == 0.0
    assert np.isnan(neighbour_difference(images, np.zeros_like(mask)))
