"""BigAug's stacked augmentation: images stay on 0..255 in the brain, labels and mask move with the image."""

from __future__ import annotations

import torch

from harmonizing_flows.evaluation.bigaug import _spatial, stacked_augmentation


def _batch(n: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    labels = torch.where(r < 6, 3, torch.where(r < 10, 2, torch.where(r < 13, 1, 0))).repeat(n, 1, 1)
    top = labels[:, : size // 2]
    labels[:, : size // 2] = torch.where(top == 2, 4, top)  # not symmetric, so that a rotation shows
    mask = (labels > 0).float()[:, None]
    images = (labels.float() * 50 + 10)[:, None] * mask
    return images, labels, mask


def test_outputs_stay_in_range_inside_the_brain_and_are_reproducible():
    x, y, m = _batch()
    out, labels, mask = stacked_augmentation(x, y, m, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and labels.shape == y.shape and mask.shape == m.shape
    assert out.min() >= 0 and out.max() <= 255 and not out[mask == 0].any()
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 4}
    again = stacked_augmentation(x, y, m, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((out, labels, mask), again, strict=True))
    other = stacked_augmentation(x, y, m, torch.Generator().manual_seed(1))[0]
    assert not torch.equal(out, other)


def test_spatial_transforms_move_labels_mask_and_image_together():
    x, y, m = _batch()
    moved, labels, mask = _spatial(x, y, m, torch.Generator().manual_seed(3))
    assert not torch.equal(labels, y)  # something moved
    inside = mask[:, 0] > 0
    # the image encodes its labels (50 per class + 10): after the move they still agree almost everywhere
    decoded = ((moved[:, 0] - 10) / 50).round()
    agree = (decoded[inside] == labels[inside].float()).float().mean()
    assert agree > 0.9, agree
    assert torch.equal(inside, labels > 0)  # the brain mask and the labels' brain are one region
