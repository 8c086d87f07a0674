"""The one slice container: 2D slices on the model's 0..255 scale, as every network takes them.

A volume cut by :func:`~harmonizing_flows.data.volume.slice_volume` is a
:class:`~harmonizing_flows.data.volume.SlicedVolume`, which is :class:`Slices` plus the grid to go back to the
volume. Training, adaptation and the segmenter take the brain-containing slices of several volumes pooled into one
:class:`Slices` (:meth:`Slices.pool`). Arrays stay NumPy on the CPU (uint8: a site of 12 subjects at 224x224 is
about 100 MB); :meth:`Slices.batch` hands rows to a network as float tensors on its device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harmonizing_flows.errors import InputError

__all__ = ["Slices"]


@dataclass(frozen=True, kw_only=True, eq=False)  # arrays: equal means the same object
class Slices:
    """Slices ``(N, H, W)``: uint8 images on 0..255 (zero outside the brain), bool brain masks, and uint8 class
    labels (see :mod:`harmonizing_flows.data.labels`) or None."""

    images: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def brain_rows(self) -> np.ndarray:
        """Indices of the slices that hold brain."""
        return np.flatnonzero(self.mask.reshape(len(self.mask), -1).any(1))

    def brain_counts(self) -> np.ndarray:
        """Brain pixels per intensity level 0..255, int64 ``(256,)``."""
        return np.bincount(self.images[self.mask.astype(bool)].ravel(), minlength=256).astype(np.int64)

    def batch(self, index: torch.Tensor | np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images on 0..255 and float masks ``(B, 1, H, W)`` of the rows ``index``, on ``device``."""
        rows = np.asarray(index)
        x = torch.from_numpy(self.images[rows])[:, None]
        m = torch.from_numpy(self.mask[rows])[:, None]
        return x.to(device).float(), m.to(device).float()

    def spread(self, count: int) -> Slices:
        """At most ``count`` slices spaced evenly through these (all of them when there are no more)."""
        if len(self) <= count:
            return self
        rows = np.linspace(0, len(self) - 1, count).round().astype(np.int64)
        labels = None if self.labels is None else self.labels[rows]
        return Slices(images=self.images[rows], mask=self.mask[rows], labels=labels)

    def batch_labels(self, index: torch.Tensor | np.ndarray, device: torch.device | str) -> torch.Tensor:
        """Class labels ``(B, H, W)`` (int64) of the rows ``index``, on ``device``."""
        if self.labels is None:
            raise ValueError("these slices were read without labels")
        return torch.from_numpy(self.labels[np.asarray(index)]).to(device).long()

    @staticmethod
    def pool(volumes: Sequence[Slices], *, labels: bool = False) -> Slices:
        """The brain-containing slices of several volumes, in order, as one :class:`Slices`.

        Raises:
            InputError: No volumes, or not one slice with brain among them.
        """
        if not volumes:
            raise InputError(None, "no volumes to take slices from")
        rows = [v.brain_rows() for v in volumes]
        if sum(len(r) for r in rows) == 0:
            raise InputError(getattr(volumes[0], "path", None), "no slice with brain in these volumes")
        if labels and any(v.labels is None for v in volumes):
            raise ValueError("labels were asked for, but a volume was read without them")
        return Slices(
            images=np.concatenate([v.images[r] for v, r in zip(volumes, rows, strict=True)]),
            mask=np.concatenate([v.mask[r] for v, r in zip(volumes, rows, strict=True)]),
            labels=np.concatenate([v.labels[r] for v, r in zip(volumes, rows, strict=True)]) if labels else None,  # type: ignore[index]
        )
