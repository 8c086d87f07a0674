"""Blind restoration: a small residual network, fitted on the source's slices alone, that undoes noise, blur and
smooth intensity fields of an image already on the source's intensity scale.

Histogram matching and the site curve move intensities only; sites also differ in noise and resolution, which no
intensity map can undo. Fitted blind (each training image degraded by a random amount, some left clean), the
network learns how much to restore from the image itself, so a clean site is left alone where a fixed filter
would blur it (``benchmarks/RESULTS.md``, issue 20). It needs no target data and no labels. With
``restoration.enabled`` it is fitted with the model (:func:`~harmonizing_flows.method.training.fit_restorer`) and
every harmonized image passes through it (:class:`Restored`); adaptation moves the harmonizer alone, on the
harmonizer's own output, as explored (``benchmarks/explore_curve.py --restoration``).

As in :mod:`~harmonizing_flows.method.augment`, the random degradation draws its parameters on the CPU from a
``torch.Generator`` (:func:`draw_degradation`) and a deterministic twin applies them (:func:`apply_degradation`).
Images are float tensors ``(B, 1, H, W)`` on 0..255 with a brain mask of the same shape.

References:
    | Zhang, Zuo, Chen, Meng, Zhang. Beyond a Gaussian denoiser: residual learning of deep CNN for image
    | denoising. IEEE Transactions on Image Processing 26(7):3142-3155, 2017 (a residual network, trained blind).
    | Gudbjartsson, Patz. The Rician distribution of noisy MRI data. Magnetic Resonance in Medicine
    | 34(6):910-914, 1995 (magnitude images: noise on both channels before the modulus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harmonizing_flows.config import RestorationConfig
from harmonizing_flows.method.augment import apply_bias, draw_bias

__all__ = [
    "BLUR_RADIUS",
    "DegradationParams",
    "Restored",
    "Restorer",
    "apply_degradation",
    "draw_degradation",
    "gaussian_blur",
    "restoration_error",
]

BLUR_RADIUS = 3
"""Half-width of the blur kernels in pixels: enough for the widths drawn (up to about 1.4 pixels)."""


class Restorer(nn.Module):
    """``x + 255 * net(x / 255)``, clipped to 0..255 and zero outside the mask; ``net`` is ``config.layers`` 3x3
    convolutions with ELUs between them, the last one zero at the start (the network starts as the identity)."""

    def __init__(self, config: RestorationConfig | None = None) -> None:
        super().__init__()
        config = config or RestorationConfig()
        layers: list[nn.Module] = [nn.Conv2d(1, config.channels, 3, padding=1), nn.ELU()]
        for _ in range(config.layers - 2):
            layers += [nn.Conv2d(config.channels, config.channels, 3, padding=1), nn.ELU()]
        layers.append(nn.Conv2d(config.channels, 1, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x + 255.0 * self.net(x / 255.0)).clamp(0.0, 255.0) * mask


class Restored(nn.Module):
    """A harmonizer followed by a restorer: ``R(h(x))``, with the harmonizer's interface (``prepare``, ``parts``,
    ``harmonize``), so that harmonizing code applies both families alike. The restorer is fitted on the source and
    stays fixed; adapting moves ``harmonizer`` alone.

    :meth:`parts` gives the harmonizer's interface: the harmonizer's gain ``alpha`` and the offset
    ``R(h(x)) - alpha * x``, so that a caller that carries the two to a finer grid (:mod:`harmonizing_flows.
    harmonize`) scales the finer grid's detail by ``alpha``, as without the restorer. The restorer sees ``h(x)``
    zero outside the brain, as in :meth:`harmonize`, so it takes the brain mask (by default the non-zero pixels:
    prepared slices are zero outside the brain).
    """

    def __init__(self, harmonizer: nn.Module, restorer: Restorer) -> None:
        super().__init__()
        self.harmonizer = harmonizer
        self.restorer = restorer

    @property
    def factor(self) -> int:
        return int(getattr(self.harmonizer, "factor", 1))  # the restorer is fully convolutional, at full size

    def prepare(self, sliced: Any) -> Any:
        return self.harmonizer.prepare(sliced)

    def parts(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (x > 0).to(x.dtype) if mask is None else mask
        alpha, beta = self.harmonizer.parts(x)
        gain = alpha.view(-1, 1, 1, 1)
        h = (gain * x + beta).clamp(0.0, 255.0) * mask
        return alpha, self.restorer(h, mask) - gain * x

    def harmonize(
        self, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``R(h(x))`` and the harmonizer's gain. Always clamped to 0..255 (``clamp`` is the interface's): the
        restorer was fitted on images of that range and clamps its own output."""
        y, alpha = self.harmonizer.harmonize(x, mask, clamp=True)
        return self.restorer(y, mask), alpha

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        return self.harmonize(x, mask, clamp=clamp)[0]


def restoration_error(
    restorer: Restorer, degraded: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The squared error of the restored images against the clean ones, summed over the brain (the training loss,
    before division by the batch's brain pixels)."""
    return ((restorer(degraded, mask) - clean) ** 2 * mask).sum()


def gaussian_blur(x: torch.Tensor, sigma_rows: torch.Tensor, sigma_cols: torch.Tensor) -> torch.Tensor:
    """Each image blurred by its own separable Gaussian (widths in pixels per image; 0 leaves it unchanged)."""
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=x.device, dtype=x.dtype)

    def kernels(sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(device=x.device, dtype=x.dtype).clamp_min(1e-3).view(-1, 1)
        k = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
        return k / k.sum(1, keepdim=True)

    b = x.shape[0]
    # the batch as channels of one image, so that one grouped convolution blurs each image with its own kernel
    y = F.conv2d(x.transpose(0, 1), kernels(sigma_rows).view(b, 1, -1, 1), padding=(BLUR_RADIUS, 0), groups=b)
    y = F.conv2d(y, kernels(sigma_cols).view(b, 1, 1, -1), padding=(0, BLUR_RADIUS), groups=b)
    return y.transpose(0, 1)


@dataclass(frozen=True)
class DegradationParams:
    """Per image: left clean or not, its bias field, blur widths, noise level and the two noise channels."""

    clean: torch.Tensor
    bias: torch.Tensor
    """Coarse log bias fields ``(B, 1, 4, 4)`` (see :func:`~harmonizing_flows.method.augment.draw_bias`)."""
    blur_rows: torch.Tensor
    blur_cols: torch.Tensor
    noise_sd: torch.Tensor
    noise: torch.Tensor
    """Standard normal draws ``(2, B, 1, H, W)``: the real and imaginary channels before the modulus."""

    def select(self, rows: slice | torch.Tensor) -> DegradationParams:
        """The parameters of some images only (a process's share of a batch)."""
        return DegradationParams(self.clean[rows], self.bias[rows], self.blur_rows[rows], self.blur_cols[rows],
                                 self.noise_sd[rows], self.noise[:, rows])  # fmt: skip


def draw_degradation(
    n: int, size: tuple[int, int], config: RestorationConfig, generator: torch.Generator | None = None
) -> DegradationParams:
    """Draw the degradation of ``n`` images of ``size`` (on the CPU, so that a seed draws the same anywhere)."""
    clean = torch.rand(n, generator=generator) < config.clean_share
    bias = draw_bias(n, config.bias_field, generator)
    blur = config.max_blur * torch.rand(n, generator=generator)
    thick = torch.rand(n, generator=generator) < config.thick_share
    extra = torch.where(thick, config.max_thick * torch.rand(n, generator=generator), torch.zeros(n))
    noise_sd = config.max_noise * torch.rand(n, generator=generator)
    noise = torch.randn(2, n, 1, *size, generator=generator)
    return DegradationParams(clean, bias, blur + extra, blur, noise_sd, noise)


def apply_degradation(x: torch.Tensor, mask: torch.Tensor, params: DegradationParams) -> torch.Tensor:
    """Bias field, then blur, then Rician noise (the modulus of the image plus complex Gaussian noise), rounded
    to integer levels as the source slices are; images drawn clean come back unchanged."""
    y = apply_bias(x, params.bias, mask)
    y = gaussian_blur(y, params.blur_rows, params.blur_cols) * mask
    sd = params.noise_sd.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    real, imaginary = params.noise.to(device=x.device, dtype=x.dtype)
    y = torch.sqrt((y + sd * real) ** 2 + (sd * imaginary) ** 2).clamp(0.0, 255.0) * mask
    return torch.where(params.clean.to(x.device).view(-1, 1, 1, 1), x, y.round())
