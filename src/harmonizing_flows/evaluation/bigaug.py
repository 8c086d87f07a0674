"""BigAug: the source segmenter trained under deep stacked augmentation, the baseline that needs no harmonization.

Zhang et al. stack nine random transforms, each applied with probability one half, on every training image:
image quality (blur, sharpening, noise), appearance (brightness, contrast, intensity perturbation) and space
(rotation, scaling, elastic deformation); a segmenter trained so generalizes to unseen scanners without seeing
them. This module adds a smooth bias field, as a receive coil makes, to the appearance group. Everything runs on a
batch of slices on its device, with parameters drawn on the CPU from the training step's generator (so a seed
gives the same augmentations on any device, as :mod:`harmonizing_flows.method.augment` does). Images are on
0..255, zero outside the brain; the labels and the brain mask move with the spatial transforms.

References:
    | Zhang, Roth, Wang, Xu, Xu, Mollura, Chen, et al. Generalizing deep learning for medical image
    | segmentation to unseen domains via deep stacked transformation. IEEE TMI 39(7):2531-2540, 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harmonizing_flows.method.augment import apply_bias, draw_bias

__all__ = ["PROBABILITY", "stacked_augmentation"]

PROBABILITY = 0.5
"""Each transform's probability, as in the paper."""


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own ``sigma`` (pixels), separably."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x)[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K)
    b = x.shape[0]
    rows = F.conv2d(x.transpose(0, 1), kernel[:, None, :, None], padding=(radius, 0), groups=b)
    return F.conv2d(rows, kernel[:, None, None, :], padding=(0, radius), groups=b).transpose(0, 1)


def _spatial(
    x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotation (+-20 degrees), scaling (0.8-1.2) and an elastic deformation (a smooth displacement of up to
    about 4 % of the image), each on its own share of the batch; images bilinear, labels and mask nearest."""
    n = x.shape[0]
    rotate, scale, elastic = (torch.rand(n, generator=g) < PROBABILITY for _ in range(3))
    angle = torch.where(rotate, _uniform(n, -20.0, 20.0, g), torch.zeros(n)) * math.pi / 180
    zoom = torch.where(scale, _uniform(n, 0.8, 1.2, g), torch.ones(n))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zoom, -torch.sin(angle) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zoom, torch.cos(angle) / zoom
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    coarse = torch.randn(n, 2, 5, 5, generator=g) * 0.04 * elastic.view(-1, 1, 1, 1)
    grid = grid + F.interpolate(coarse.to(x), size=x.shape[-2:], mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    both = torch.cat([labels[:, None].to(x.dtype), mask], 1)
    nearest = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    new_mask = nearest[:, 1:2]
    return moved * new_mask, nearest[:, 0].round().to(labels.dtype), new_mask


def stacked_augmentation(
    x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BigAug's stacked transforms on a batch: images ``(B, 1, H, W)`` on 0..255, labels ``(B, H, W)`` and brain
    masks ``(B, 1, H, W)``. Returns all three, augmented; images clipped to 0..255 and zero outside the mask."""
    n = x.shape[0]

    def chosen() -> torch.Tensor:
        return (torch.rand(n, generator=g) < PROBABILITY).view(-1, 1, 1, 1).to(x.device)

    # quality: blur, sharpen, noise
    blur = _uniform(n, 0.25, 1.5, g)
    x = torch.where(chosen(), _blur(x, blur), x)
    amount = _uniform(n, 0.0, 1.0, g).view(-1, 1, 1, 1).to(x)
    x = torch.where(chosen(), x + amount * (x - _blur(x, torch.full((n,), 1.0))), x)
    noise = torch.randn(x.shape, generator=g).to(x) * _uniform(n, 0.0, 0.1 * 255, g).view(-1, 1, 1, 1).to(x)
    x = torch.where(chosen(), x + noise, x)
    x = x.clamp(0, 255) * mask
    # appearance: brightness, contrast (gamma), intensity perturbation (scale and shift), bias field
    x = torch.where(chosen(), x + _uniform(n, -0.1, 0.1, g).view(-1, 1, 1, 1).to(x) * 255, x).clamp(0, 255)
    gamma = torch.exp(_uniform(n, math.log(0.5), math.log(2.0), g)).view(-1, 1, 1, 1).to(x)
    x = torch.where(chosen(), 255.0 * (x / 255.0) ** gamma, x)
    factor, shift = _uniform(n, 0.9, 1.1, g).view(-1, 1, 1, 1).to(x), _uniform(n, -10, 10, g).view(-1, 1, 1, 1)
    x = torch.where(chosen(), x * factor + shift.to(x), x).clamp(0, 255) * mask
    x = torch.where(chosen(), apply_bias(x, draw_bias(n, 0.6, g), mask), x)
    # space: rotation, scaling, elastic deformation
    return _spatial(x, labels, mask, g)
