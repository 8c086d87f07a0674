"""The flow that learns the source site's slices: dequantization, logit, three scales of couplings, normal prior.

Architecture (paper section 4.1): variational dequantization with checkerboard couplings, ``v = (x + u) / 256``
through a logit, checkerboard couplings at full resolution, squeeze (1 -> 4 channels), channel couplings,
squeeze (4 -> 16), channel couplings, standard normal prior. No split, ActNorm or 1x1 convolution, as in the
authors' model. The flow is written here rather than taken from a library (zuko, nflows, normflows) because
none offers image couplings with U-Net conditioners, variational dequantization and per-location log-determinants
that can be weighted by a brain mask.

:meth:`Flow.log_prob` is the dequantization lower bound of ``log p(x)`` for the discrete image, in nats;
every image it scores is first rounded to the 256 levels the source slices have (with a straight-through
gradient, so a harmonizer's float output is scored as the integer image it stands for and still learns): one
quantization convention for the source, the negatives, the harmonized targets and every reference bpd.
:meth:`Flow.bpd` divides by ``log 2`` times the number of pixels (``bpd = -log p(x) / (D log 2)``). With
``brain_only`` each term is weighted by the share of brain in the pixels it covers and ``D`` counts brain pixels.

References:
    | Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.
    | Ho, Chen, Srinivas, Duan, Abbeel. Flow++. ICML 2019.
    | Beizaee, Desrosiers, Lodygensky, Dolz. Harmonizing Flows. IPMI 2023, sections 3.1 and 4.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harmonizing_flows.config import FlowConfig
from harmonizing_flows.errors import ConfigError
from harmonizing_flows.method.flow.dequantization import Dequantization
from harmonizing_flows.method.flow.layers import Coupling, Squeeze

__all__ = ["Flow"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LEVELS = 256.0


class Flow(nn.Module):
    """The guided normalizing flow of Harmonizing Flows (see the module docstring)."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FlowConfig()
        n0, n1, n2 = config.couplings
        self.dequantization = Dequantization(config.dequantization_couplings, config.dequantization_widths)
        self.scales = nn.ModuleList(
            [
                nn.ModuleList(Coupling(1, config.widths, "checkerboard", parity=i) for i in range(n0)),
                nn.ModuleList(Coupling(4, config.widths, "channel", parity=i) for i in range(n1)),
                nn.ModuleList(Coupling(16, config.widths, "channel", parity=i) for i in range(n2)),
            ]
        )
        self.squeeze = Squeeze()

        self.factor = max(4 * 2 ** (len(config.widths) - 1), self.dequantization.factor)
        """Image height and width must be multiples of this."""

    def check_size(self, x: torch.Tensor) -> None:
        """Refuse images whose height or width the flow's squeezes and conditioners cannot divide."""
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ConfigError(f"image size {h}x{w}: the flow needs height and width multiples of {self.factor}")

    def _preprocess(self, x: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Round (straight through), dequantize and take the logit: ``z`` and the per-pixel map of
        ``log |dz/dx| - log q(u | x)``."""
        x = x + (x.round() - x).detach()
        u, log_q = self.dequantization(x, noise)
        a = self.config.logit_alpha
        y = a + (1 - 2 * a) * (x + u) / _LEVELS
        z = torch.log(y) - torch.log1p(-y)
        logdet = (math.log((1 - 2 * a) / _LEVELS) - torch.log(y) - torch.log1p(-y)).sum(1)
        return z, logdet - log_q

    def _brain_only(self, mask: torch.Tensor | None, brain_only: bool | None) -> bool:
        return mask is not None and (self.config.brain_only if brain_only is None else brain_only)

    def log_prob(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        noise: torch.Tensor | None = None,
        brain_only: bool | None = None,
    ) -> torch.Tensor:
        """Lower bound of ``log p(x)`` in nats per image ``(B,)``; only the brain's pixels when ``mask`` is given
        and ``brain_only`` (by default the config's) is set."""
        self.check_size(x)
        weight = mask.to(x.dtype) if self._brain_only(mask, brain_only) else None  # type: ignore[union-attr]
        z, total_map = self._preprocess(x, noise)
        total = self._weighted(total_map, weight, 1)
        for level, couplings in enumerate(self.scales):
            if level > 0:
                z, _ = self.squeeze(z)
            for coupling in couplings:
                z, logdet = coupling(z)
                total = total + self._weighted(logdet, weight, 2**level)
        prior = (-0.5 * z * z - _HALF_LOG_2PI).sum(1)
        return total + self._weighted(prior, weight, 2 ** (len(self.scales) - 1))

    @staticmethod
    def _weighted(values: torch.Tensor, weight: torch.Tensor | None, stride: int) -> torch.Tensor:
        if weight is None:
            return values.sum((1, 2))
        w = F.avg_pool2d(weight, stride)[:, 0] if stride > 1 else weight[:, 0]
        return (values * w).sum((1, 2))

    def bpd(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        noise: torch.Tensor | None = None,
        brain_only: bool | None = None,
    ) -> torch.Tensor:
        """Bits per dimension per image ``(B,)`` (per brain pixel with ``brain_only`` and a mask)."""
        if self._brain_only(mask, brain_only):
            assert mask is not None
            pixels = mask.to(x.dtype).sum((1, 2, 3)).clamp_min(1.0)
        else:
            pixels = torch.full((x.shape[0],), float(x.shape[-2] * x.shape[-1]), device=x.device, dtype=x.dtype)
        return -self.log_prob(x, mask, noise=noise, brain_only=brain_only) / (math.log(2.0) * pixels)

    def transform(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The main flow from logit space to the prior: ``z`` and the summed log |det J| per image."""
        total = v.new_zeros(v.shape[0])
        z = v
        for level, couplings in enumerate(self.scales):
            if level > 0:
                z, _ = self.squeeze(z)
            for coupling in couplings:
                z, logdet = coupling(z)
                total = total + logdet.sum((1, 2))
        return z, total

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`: prior sample ``(B, 16, H/4, W/4)`` -> logit-space image ``(B, 1, H, W)``."""
        for level in range(len(self.scales) - 1, -1, -1):
            for coupling in reversed(self.scales[level]):
                z = coupling.inverse(z)
            if level > 0:
                z = self.squeeze.inverse(z)
        return z
