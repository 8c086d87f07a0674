"""A straightforward implementation of the paper-size flow, the yardstick for ``bench_method.py``.

Written the way the architecture reads in the paper and the authors' code, with nothing done for speed: NCHW
float32, eager, a per-pixel ``nn.LayerNorm`` through two permutes, the checkerboard mask rebuilt at each call,
``torch.cat``/``chunk``/``flip`` where the text suggests them. Vectorized throughout: a yardstick, not a
strawman. Same layers, same widths and the same number of parameters as ``harmonizing_flows.method.flow.Flow`` with the
paper profile, so the two differ only in how they compute. Not part of the package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * cin, cout, 3, padding=1)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([F.elu(x), F.elu(-x)], 1))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _UNet(nn.Module):
    def __init__(self, cin: int, cout: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        prev = cin
        for w in widths:
            self.down.append(_Block(prev, w))
            prev = w
        self.up = nn.ModuleList(_Block(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 2, -1, -1))
        self.head = nn.Conv2d(2 * widths[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear"), skip], 1))
        return self.head(torch.cat([F.elu(x), F.elu(-x)], 1))


def _checkerboard(h: int, w: int, parity: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j + parity) % 2 == 0).float()[None, None]


class _Coupling(nn.Module):
    def __init__(self, c: int, widths: tuple[int, ...], kind: str, parity: int, cond: int = 0) -> None:
        super().__init__()
        self.kind, self.parity, self.c = kind, parity, c
        n_in = c if kind == "checkerboard" else c // 2
        n_out = c if kind == "checkerboard" else c - c // 2
        self.net = _UNet(n_in + cond, 2 * n_out, widths)
        self.f = nn.Parameter(torch.zeros(1, n_out, 1, 1))

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "checkerboard":
            b = _checkerboard(z.shape[2], z.shape[3], self.parity).to(z.device)
            inp = z * b if cond is None else torch.cat([z * b, cond], 1)
            s, t = self.net(inp).chunk(2, 1)
            s = torch.tanh(s / self.f.exp()) * self.f.exp() * (1 - b)
            t = t * (1 - b)
            return z * torch.exp(s) + t, s.sum(dim=(1, 2, 3))
        if self.parity:
            z = z.flip(1)
        za, zb = z[:, : self.c // 2], z[:, self.c // 2 :]
        s, t = self.net(za).chunk(2, 1)
        s = torch.tanh(s / self.f.exp()) * self.f.exp()
        y = torch.cat([za, zb * torch.exp(s) + t], 1)
        if self.parity:
            y = y.flip(1)
        return y, s.sum(dim=(1, 2, 3))


class ReferenceFlow(nn.Module):
    """Dequantization (4 checkerboard couplings), logit, 4 checkerboard, squeeze, 4 channel, squeeze, 4 channel."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64), couplings: int = 4) -> None:
        super().__init__()
        self.deq = nn.ModuleList(_Coupling(1, widths, "checkerboard", i % 2, cond=1) for i in range(couplings))
        self.s0 = nn.ModuleList(_Coupling(1, widths, "checkerboard", i % 2) for i in range(couplings))
        self.s1 = nn.ModuleList(_Coupling(4, widths, "channel", i % 2) for i in range(couplings))
        self.s2 = nn.ModuleList(_Coupling(16, widths, "channel", i % 2) for i in range(couplings))

    def bpd(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.randn_like(x)
        log_q = (-0.5 * eps**2 - 0.5 * math.log(2 * math.pi)).sum(dim=(1, 2, 3))
        z = eps
        cond = x / 127.5 - 1
        for c in self.deq:
            z, ld = c(z, cond)
            log_q = log_q - ld
        log_q = log_q - (F.logsigmoid(z) + F.logsigmoid(-z)).sum(dim=(1, 2, 3))
        u = torch.sigmoid(z)
        a = 1e-5
        y = a + (1 - 2 * a) * (x + u) / 256
        z = torch.log(y) - torch.log(1 - y)
        total = (math.log((1 - 2 * a) / 256) - torch.log(y) - torch.log(1 - y)).sum(dim=(1, 2, 3)) - log_q
        for c in self.s0:
            z, ld = c(z)
            total = total + ld
        z = F.pixel_unshuffle(z, 2)
        for c in self.s1:
            z, ld = c(z)
            total = total + ld
        z = F.pixel_unshuffle(z, 2)
        for c in self.s2:
            z, ld = c(z)
            total = total + ld
        total = total + (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(dim=(1, 2, 3))
        return -total / (math.log(2) * x[0].numel())
