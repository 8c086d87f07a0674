"""Smooth random fields and Gaussian blurring of 3D tensors, shared by the anatomy and the scanner models."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["gaussian_blur", "smooth_field"]


def gaussian_blur(volume: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of a 3D tensor; ``sigmas`` in voxels per axis (0 leaves an axis alone)."""
    out = volume[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.05:
            continue
        radius = max(math.ceil(3.0 * sigma), 1)
        x = torch.arange(-radius, radius + 1, dtype=volume.dtype)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        padding = [0, 0, 0]
        padding[axis] = radius
        out = F.conv3d(out, kernel.reshape(shape), padding=tuple(padding))
    return out[0, 0]


def smooth_field(coarse: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """Cubic-spline upsampling of ``(C, a, b, c)`` control values to ``(C, *shape)``.

    The spline runs to a quarter of the output resolution (cheap), trilinear interpolation does the rest.
    """
    mid = tuple(max(min(s, (s + 3) // 4), c) for s, c in zip(shape, coarse.shape[1:], strict=True))
    # control points span the whole grid (align_corners semantics)
    coords = np.meshgrid(
        *[np.linspace(0.0, c - 1.0, m) for m, c in zip(mid, coarse.shape[1:], strict=True)], indexing="ij"
    )
    mid_field = np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])
    t = torch.from_numpy(mid_field.astype(np.float32))[None]
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=True)[0]
