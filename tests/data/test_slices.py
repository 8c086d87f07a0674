"""The one slice container: batches for the networks, pooling the brain slices of volumes, a volume's spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import brain_phantom, write_volume
from harmonizing_flows.config import SliceConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.data.volume import load_volume, slice_volume
from harmonizing_flows.errors import InputError


def _slices(n: int = 6, labels: bool = False) -> Slices:
    images = np.arange(n * 4 * 4, dtype=np.uint8).reshape(n, 4, 4)
    mask = np.zeros((n, 4, 4), bool)
    mask[1:-1, 1:3, 1:3] = True  # the first and last slices hold no brain
    return Slices(images=images, mask=mask, labels=(images % 3).astype(np.uint8) if labels else None)


def test_a_batch_is_float_with_a_channel_on_the_device():
    data = _slices(labels=True)
    x, m = data.batch(torch.tensor([2, 4]), "cpu")
    assert x.shape == m.shape == (2, 1, 4, 4) and x.dtype == m.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(data.images[[2, 4]]).float())
    assert torch.equal(data.batch_labels(np.array([1]), "cpu"), torch.from_numpy(data.labels[[1]]).long())
    with pytest.raises(ValueError, match="without labels"):
        _slices().batch_labels([0], "cpu")


def test_a_spread_takes_evenly_spaced_slices_with_their_masks_and_labels():
    data = _slices(9, labels=True)
    spread = data.spread(3)
    assert np.array_equal(spread.images, data.images[[0, 4, 8]])
    assert np.array_equal(spread.mask, data.mask[[0, 4, 8]]) and np.array_equal(spread.labels, data.labels[[0, 4, 8]])
    assert data.spread(9) is data and data.spread(20) is data


def test_pooling_keeps_the_brain_slices_of_each_volume_in_order():
    a, b = _slices(4, labels=True), _slices(5, labels=True)
    pooled = Slices.pool([a, b], labels=True)
    assert len(pooled) == 2 + 3
    assert np.array_equal(pooled.images, np.concatenate([a.images[1:3], b.images[1:4]]))
    assert np.array_equal(pooled.labels, np.concatenate([a.labels[1:3], b.labels[1:4]]))
    assert Slices.pool([a]).labels is None
    with pytest.raises(InputError, match="no volumes"):
        Slices.pool([])
    empty = Slices(images=a.images, mask=np.zeros_like(a.mask))
    with pytest.raises(InputError, match="no slice with brain"):
        Slices.pool([empty])
    with pytest.raises(ValueError, match="read without them"):
        Slices.pool([_slices()], labels=True)


def test_a_sliced_volume_is_slices_that_know_their_spacing_and_file(tmp_path):
    image, mask, _ = brain_phantom((20, 24, 28))
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    path = write_volume(tmp_path / "s.nii.gz", image, affine)
    config = SliceConfig(axis="coronal", image_size=(32, 32), resample=False)
    sliced = slice_volume(load_volume(path, write_volume(tmp_path / "s_mask.nii.gz", mask, affine)), config)
    assert isinstance(sliced, Slices) and sliced.path == path
    # coronal: slices along A (2 mm), rows along S (3 mm), columns along R (1 mm)
    assert sliced.spacing == (2.0, 3.0, 1.0)
    assert sliced.subject is None
    assert sliced != slice_volume(load_volume(path), config)  # equal only as the same object: arrays inside
