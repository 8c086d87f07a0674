"""Invertible layers of the flow: affine couplings (checkerboard and channel masks) and the squeeze.

Every layer maps ``z -> (y, logdet)`` where ``logdet`` is a per-location map ``(B, H, W)`` at the layer's
resolution (its log |det J| summed over channels), so that the model can weight locations, for instance by the
brain mask, before summing. ``inverse`` undoes ``forward`` exactly up to float rounding.

References:
    | Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017 (affine couplings, checkerboard
    | and channel masks, squeeze).
    | Ho, Chen, Srinivas, Duan, Abbeel. Flow++. ICML 2019 (scale stabilised by tanh with a learned range).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harmonizing_flows.method.unet import UNet

__all__ = ["Coupling", "Squeeze", "checkerboard"]


@functools.lru_cache(maxsize=64)
def checkerboard(height: int, width: int, parity: int, device: torch.device | None = None) -> torch.Tensor:
    """A ``(1, 1, H, W)`` float mask, 1 where ``(i + j + parity)`` is even (cached: every coupling asks at every
    step; callers must not modify it)."""
    with torch.inference_mode(False):  # a mask first made under inference mode would be refused by autograd later
        i = torch.arange(height, device=device).view(-1, 1)
        j = torch.arange(width, device=device).view(1, -1)
        return ((i + j + parity) % 2 == 0).float().view(1, 1, height, width)


class Coupling(nn.Module):
    """Affine coupling ``y_B = z_B * exp(s(z_A)) + t(z_A)``, ``y_A = z_A`` (paper Eq. 3).

    The scale is bounded as ``tanh(s / e^f) * e^f`` with a learned per-channel ``f``; the conditioner is a
    concat-ELU U-Net whose last layer starts at zero, so every coupling starts as the identity.

    Args:
        channels: Channels of ``z``.
        widths: The conditioner's channels per level.
        mask: ``"checkerboard"`` (A: pixels where the checkerboard is 1) or ``"channel"`` (A: half the channels).
        parity: Which half is A; alternate it between successive couplings.
        condition_channels: Extra channels the conditioner sees (the image, for the dequantization).
    """

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        mask: Literal["checkerboard", "channel"],
        parity: int = 0,
        condition_channels: int = 0,
    ) -> None:
        super().__init__()
        if mask == "channel" and channels < 2:
            raise ValueError("a channel coupling needs at least two channels")
        self.mask, self.parity, self.channels = mask, parity % 2, channels
        if mask == "checkerboard":
            n_in, self.n_out = channels, channels
        else:
            n_a = channels // 2 if self.parity == 0 else channels - channels // 2
            n_in, self.n_out = n_a, channels - n_a
        self.conditioner = UNet(n_in + condition_channels, 2 * self.n_out, widths, norm=True, zero_output=True)
        self.log_range = nn.Parameter(torch.zeros(1, self.n_out, 1, 1))

    @property
    def factor(self) -> int:
        return self.conditioner.factor

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_a = self.channels - self.n_out
        if self.parity == 0:
            return z[:, :n_a], z[:, n_a:]
        return z[:, self.n_out :], z[:, : self.n_out]

    def _join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b] if self.parity == 0 else [b, a], dim=1)

    def _scale_shift(self, a: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = a if condition is None else torch.cat([a, condition], dim=1)
        raw_s, t = self.conditioner(inputs)[0].chunk(2, dim=1)
        bound = self.log_range.exp()
        return torch.tanh(raw_s / bound) * bound, t

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask == "checkerboard":
            b = checkerboard(z.shape[-2], z.shape[-1], self.parity, z.device).to(z.dtype)
            s, t = self._scale_shift(z * b, condition)
            s, t = s * (1 - b), t * (1 - b)
            return z * torch.exp(s) + t, s.sum(1)
        a, b_part = self._split(z)
        s, t = self._scale_shift(a, condition)
        return self._join(a, b_part * torch.exp(s) + t), s.sum(1)

    def inverse(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if self.mask == "checkerboard":
            b = checkerboard(y.shape[-2], y.shape[-1], self.parity, y.device).to(y.dtype)
            s, t = self._scale_shift(y * b, condition)
            s, t = s * (1 - b), t * (1 - b)
            return (y - t) * torch.exp(-s)
        a, b_part = self._split(y)
        s, t = self._scale_shift(a, condition)
        return self._join(a, (b_part - t) * torch.exp(-s))


class Squeeze(nn.Module):
    """2x2 space-to-channel reshaping (C, H, W) -> (4C, H/2, W/2); volume-preserving, log-determinant zero."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.pixel_unshuffle(z, 2)
        return y, z.new_zeros(y.shape[0], y.shape[2], y.shape[3])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, 2)
