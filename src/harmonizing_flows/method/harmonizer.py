"""The harmonizer: a shallow U-Net that maps a target site's slice towards the source site's look.

Its output is ``h(x) = alpha * x + beta``: a global gain ``alpha`` per image, read from the bottleneck by global
average pooling and a linear layer, and a full-size bias map ``beta`` from the last layer. It is pre-trained on
source slices to undo contrast augmentations (:func:`pretraining_error`, paper Eq. 5), then adapted at test time
(:mod:`harmonizing_flows.method.adaptation`). Images are on the 0..255 scale; the network sees them divided by 255.

References:
    | Beizaee, Desrosiers, Lodygensky, Dolz. Harmonizing Flows: Unsupervised MR harmonization based on
    | normalizing flows. IPMI 2023, section 3.2.
"""

from __future__ import annotations

import torch
from torch import nn

from harmonizing_flows.config import HarmonizerConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.method.unet import UNet

__all__ = ["Harmonizer", "pretraining_error"]


class Harmonizer(nn.Module):
    """``h(x) = alpha * x + beta``, with alpha per image and beta per pixel.

    It starts as the identity (alpha 1, beta 0), which is also what pre-training should keep for source images.
    """

    def __init__(self, config: HarmonizerConfig | None = None) -> None:
        super().__init__()
        self.config = config or HarmonizerConfig()
        self.unet = UNet(1, 1, self.config.widths, blocks=self.config.blocks, zero_output=True)
        self.alpha_head = nn.Linear(self.config.widths[-1], 1)
        nn.init.zeros_(self.alpha_head.weight)
        # exp(0) = 1 for the positive variant; bias 1 for the paper's linear alpha
        nn.init.constant_(self.alpha_head.bias, 0.0 if self.config.positive_alpha else 1.0)

    @staticmethod
    def prepare(sliced: Slices) -> Slices:
        """A volume's slices as this harmonizer takes them: as they are (the curve harmonizer matches each
        volume's histogram first; callers prepare every volume before pooling or harmonizing it)."""
        return sliced

    @property
    def factor(self) -> int:
        """Image height and width must be multiples of this."""
        return self.unet.factor

    def parts(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha`` ``(B,)`` and ``beta`` ``(B, 1, H, W)`` (0..255 scale) for images ``x`` ``(B, 1, H, W)``.
        ``mask`` is the interface's (:class:`~harmonizing_flows.method.restoration.Restored` needs it); the network
        sees the whole slice."""
        beta, bottleneck = self.unet(x * (1.0 / 255.0))
        a = self.alpha_head(bottleneck.mean(dim=(2, 3)))[:, 0]
        alpha = torch.exp(a) if self.config.positive_alpha else a
        return alpha, beta * 255.0

    @staticmethod
    def apply(
        alpha: torch.Tensor, beta: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True
    ) -> torch.Tensor:
        """``h(x) = alpha * x + beta`` (clamped to 0..255 unless ``clamp`` is false), zero outside ``mask``.

        ``alpha`` broadcasts against ``x``: one gain per image ``(B, 1, 1, 1)``, or a map that the harmonizer's
        gains were carried onto (:mod:`harmonizing_flows.harmonize` does, on a volume's own grid).
        """
        y = alpha * x + beta
        if clamp:
            y = y.clamp(0.0, 255.0)
        return y * mask

    def harmonize(
        self, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Harmonized images and their ``alpha`` from one pass of the network."""
        alpha, beta = self.parts(x)
        return self.apply(alpha.view(-1, 1, 1, 1), beta, x, mask, clamp=clamp), alpha

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Harmonized images, zero outside the mask, clamped to 0..255 unless ``clamp`` is false."""
        return self.harmonize(x, mask, clamp=clamp)[0]

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)[0]

    def log_jacobian(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per image, ``log2 |alpha|`` summed over its brain pixels: the change-of-variables term of
        ``alpha * x + beta`` in bits, with the offset map's own dependence on ``x`` left out."""
        return torch.log2(self.alpha(x).abs().clamp_min(1e-6)) * mask.sum((1, 2, 3))


def pretraining_error(
    harmonizer: nn.Module, augmented: torch.Tensor, original: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Paper Eq. 5 before its mean: the squared error between ``h(aug(x))`` and ``x`` on the 0..1 scale, summed over
    the brain's pixels (no clamp, so every pixel has a gradient).

    The caller divides by the number of brain pixels; training divides by the whole batch's, so that a batch sharded
    over processes gives the gradients of the whole batch.
    """
    y = harmonizer(augmented, mask, clamp=False)
    return (((y - original) / 255.0) ** 2 * mask).sum()
