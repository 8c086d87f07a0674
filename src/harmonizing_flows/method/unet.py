"""The concat-ELU U-Net shared by the harmonizer and the flow's coupling conditioners.

Both networks in the paper are small U-Nets whose blocks are concat-ELU followed by a 3x3 convolution: the
harmonizer with two such blocks per level, the conditioners with one block and a per-pixel layer norm over
channels. One module with those two switches serves both. Down-sampling is 2x2 average pooling, up-sampling is
bilinear, and skips are concatenated; the input size must be divisible by ``2 ** (levels - 1)``.

References:
    | Ronneberger, Fischer, Brox. U-Net: Convolutional networks for biomedical image segmentation. MICCAI 2015.
    | Shang, Sohn, Almeida, Lee. Understanding and improving convolutional neural networks via concatenated
    | rectified linear units. ICML 2016 (concatenated activations).
    | Ho, Chen, Srinivas, Duan, Abbeel. Flow++. ICML 2019 (concat-ELU convolutions with layer norm in couplings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelNorm", "ConcatELUBlock", "UNet", "concat_elu"]


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """``cat(ELU(x), ELU(-x))`` along channels: keeps both signs of the input, doubles the channels."""
    return F.elu(torch.cat([x, -x], dim=1))


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel, with a learned per-channel scale and shift.

    On channels-last tensors the channels of a pixel are contiguous, and the permuted view is fed to the fused
    ``layer_norm`` kernel; otherwise the statistics are taken across the channel dimension.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
            nhwc = x.permute(0, 2, 3, 1)
            return F.layer_norm(nhwc, (x.shape[1],), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)
        var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConcatELUBlock(nn.Module):
    """concat-ELU -> 3x3 convolution [-> channel norm]."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * in_channels, out_channels, 3, padding=1)
        self.norm = ChannelNorm(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(concat_elu(x)))


class UNet(nn.Module):
    """A U-Net of concat-ELU blocks.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (a 1x1 convolution after a last concat-ELU).
        widths: Channels at each level, from full resolution down to the bottleneck.
        blocks: Blocks per level on each side.
        norm: Per-pixel channel layer norm after each convolution.
        zero_output: Start the output convolution at zero (a coupling then starts as the identity).

    ``forward`` returns ``(output, bottleneck)``: the bottleneck features serve the harmonizer's global alpha.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int],
        *,
        blocks: int = 1,
        norm: bool = False,
        zero_output: bool = False,
    ) -> None:
        super().__init__()
        if not widths or blocks < 1:
            raise ValueError("a U-Net needs at least one level and one block per level")
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        previous = in_channels
        for width in self.widths:
            self.down.append(
                nn.Sequential(*[ConcatELUBlock(previous if i == 0 else width, width, norm) for i in range(blocks)])
            )
            previous = width
        self.up = nn.ModuleList()
        for level in range(len(self.widths) - 2, -1, -1):
            width = self.widths[level]
            first = self.widths[level + 1] + width
            blocks_up = [ConcatELUBlock(first if i == 0 else width, width, norm) for i in range(blocks)]
            self.up.append(nn.Sequential(*blocks_up))
        self.head = nn.Conv2d(2 * self.widths[0], out_channels, 1)
        if zero_output:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def factor(self) -> int:
        """Total down-sampling: input sizes must be divisible by it."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, level in enumerate(self.down):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = level(x)
            skips.append(x)
        bottleneck = x
        for level, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        return self.head(concat_elu(x)), bottleneck
