"""Variational dequantization: a learned distribution of the noise that turns 256 levels into a density.

Adding uniform noise to integer images makes a continuous density but wastes likelihood on flat noise. Flow++
instead learns ``q(u | x)``: Gaussian noise passes through checkerboard couplings conditioned on the image, then a
sigmoid, giving ``u`` in (0, 1) with an exact ``log q(u | x)``. The flow then models ``x + u``, and
``log p(x) >= E_q[log p(x + u) - log q(u | x)]``.

References:
    | Ho, Chen, Srinivas, Duan, Abbeel. Flow++: Improving flow-based generative models with variational
    | dequantization and architecture design. ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harmonizing_flows.method.flow.layers import Coupling

__all__ = ["Dequantization"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Dequantization(nn.Module):
    """``q(u | x)`` for one-channel images on 0..255: returns ``u`` and the per-pixel map of ``log q(u | x)``."""

    def __init__(self, couplings: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.couplings = nn.ModuleList(
            Coupling(1, widths, "checkerboard", parity=i, condition_channels=1) for i in range(couplings)
        )

        self.factor = 2 ** (len(widths) - 1) if couplings else 1
        """Image height and width must be multiples of this."""

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``u`` for images ``x`` ``(B, 1, H, W)``; ``noise`` (standard normal, same shape) fixes the draw."""
        eps = torch.randn_like(x) if noise is None else noise
        log_q = (-0.5 * eps * eps - _HALF_LOG_2PI).sum(1)
        condition = x * (2.0 / 255.0) - 1.0
        z = eps
        for coupling in self.couplings:
            z, logdet = coupling(z, condition)
            log_q = log_q - logdet
        # u = sigmoid(z): log du/dz = log sigmoid(z) + log sigmoid(-z)
        log_q = log_q - (F.logsigmoid(z) + F.logsigmoid(-z)).sum(1)
        return torch.sigmoid(z), log_q
