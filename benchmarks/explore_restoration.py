"""Exploration for issue 20 (not a benchmark): can a restoration network, trained on the source alone to undo
noise, blur and bias fields, add to histogram matching on the target sites?

``explore_gap.py`` found that smoothing the matched images gains 2-3 Dice on the noisy 1.5 T targets of setting A
and loses 4-5 on the clean 3 T one: a fixed filter cannot know a site's noise. A network trained blind (random
degradation strength, some samples left clean) could. Source-free: it is fitted at ``hflow fit`` time on the source
training slices, and the target needs nothing but its own images.

1. Fit a small residual CNN (its last layer starts at zero: it starts as the identity) on the source training
   slices: each batch degraded by Rician noise of a random level, an in-plane Gaussian blur of random width (one
   axis blurred more in some: thick slices), a smooth bias field, and 15 % left clean; the loss is the squared
   error to the clean slice over the brain.
2. Per target site, on its **non-test** volumes (train and validation splits; the benchmark never scores their
   labels): the setting's segmenter's Dice after histogram matching, and after histogram matching then the network.
   The source's own validation volumes too (the network must not hurt a clean source).

    python benchmarks/explore_restoration.py --setting-dir /work/bench20/seed-0 --source irspgr-3t
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _common import RESULTS, git_state, utc_now, write_json

CLEAN_SHARE = 0.15


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting-dir", type=Path, required=True, help="A seed folder of bench_evaluation.")
    parser.add_argument("--source", required=True, help="The setting's source site.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--max-noise", type=float, default=14.0, help="Largest noise SD, grey levels (0..255).")
    parser.add_argument("--max-blur", type=float, default=0.8, help="Largest in-plane Gaussian width, pixels.")
    parser.add_argument("--output", type=Path, default=RESULTS / "explore-restoration" / "restoration.json")
    return parser.parse_args(argv)


class Restorer(nn.Module):
    """Five 3x3 convolutions; the output is added to the input, and the last layer starts at zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ELU()]
        for _ in range(3):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ELU()]
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x + 255.0 * self.net(x / 255.0)).clamp(0.0, 255.0) * mask


def _gaussian(x: torch.Tensor, sigma_rows: torch.Tensor, sigma_cols: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (widths in pixels; 0 leaves the image as it is)."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)

    def kernels(sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.clamp_min(1e-3).view(-1, 1)
        k = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
        return k / k.sum(1, keepdim=True)

    b = x.shape[0]
    rows, cols = kernels(sigma_rows), kernels(sigma_cols)
    y = F.conv2d(x.transpose(0, 1), rows.view(b, 1, -1, 1), padding=(radius, 0), groups=b)
    y = F.conv2d(y, cols.view(b, 1, 1, -1), padding=(0, radius), groups=b)
    return y.transpose(0, 1)


def degrade(x: torch.Tensor, mask: torch.Tensor, g: torch.Generator, max_noise: float, max_blur: float) -> torch.Tensor:
    """A random mix of bias field, blur (anisotropic in some images) and Rician noise; some images left clean."""
    from harmonizing_flows.method.augment import apply_bias, draw_bias

    b = x.shape[0]
    clean = torch.rand(b, generator=g) < CLEAN_SHARE
    y = apply_bias(x, draw_bias(b, 0.3, g), mask)
    blur = max_blur * torch.rand(b, generator=g)
    thick = torch.rand(b, generator=g) < 0.3  # one axis blurred more: a thicker slice seen in-plane
    extra = torch.where(thick, 0.6 * torch.rand(b, generator=g), torch.zeros(b))
    y = _gaussian(y, blur + extra, blur) * mask
    sd = (max_noise * torch.rand(b, generator=g)).view(-1, 1, 1, 1)
    n1, n2 = torch.randn(y.shape, generator=g), torch.randn(y.shape, generator=g)
    y = torch.sqrt((y + sd * n1) ** 2 + (sd * n2) ** 2).clamp(0, 255) * mask
    y = torch.where(clean.view(-1, 1, 1, 1), x, y)
    return y.round()


def _fit(train, args: argparse.Namespace) -> tuple[Restorer, list[float]]:
    torch.manual_seed(0)
    net = Restorer(args.channels)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    rows = train.brain_rows()
    history = []
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(1000 + epoch)
        order = rows[torch.randperm(len(rows), generator=g)]
        total, count = 0.0, 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            x, m = train.batch(order[start : start + args.batch_size], "cpu")
            y = degrade(x, m, g, args.max_noise, args.max_blur)
            loss = ((net(y, m) - x) ** 2 * m).sum() / m.sum().clamp_min(1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss), count + 1
        if epoch == args.epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] *= 0.3
        history.append(total / max(count, 1))
        print(f"epoch {epoch + 1}: mse {history[-1]:.2f} (grey levels squared)", flush=True)
    return net.eval(), history


@torch.no_grad()
def _restored(net: Restorer, images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    m = torch.from_numpy(mask.astype(np.float32))[:, None]
    return net(x, m)[:, 0].round().numpy()


def main(argv: list[str] | None = None) -> int:
    from explore_gap import _dice
    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.data.slices import Slices
    from harmonizing_flows.evaluation.baselines import HistogramMatching
    from harmonizing_flows.evaluation.segmenter import load_segmenter
    from harmonizing_flows.profiles import load_profile

    args = _parse(argv)
    started = time.perf_counter()
    folder = args.setting_dir / "report" / "models" / args.source
    manifest = args.setting_dir / "sim" / "manifest.csv"
    segmenter = load_segmenter(folder / "segmenter").eval()
    config = load_profile("fast").slices  # the benchmark's
    source = read_site(manifest, config, site=args.source, splits=("train", "val"), labels=True).volumes
    train = [v for v in source if v.subject.split == "train"]
    hm = HistogramMatching().fit([v.images for v in train], [v.mask.astype(bool) for v in train])
    net, history = _fit(Slices.pool(train), args)
    results: dict[str, dict[str, float]] = {}
    sites = sorted({row.split(",")[1] for row in manifest.read_text().splitlines()[1:]})
    for site in sites:
        if site == args.source:
            volumes = [v for v in source if v.subject.split == "val"]
        else:
            volumes = read_site(manifest, config, site=site, splits=("train", "val"), labels=True).volumes
        rows: dict[str, list[float]] = {"histogram matching": [], "HM + restoration": []}
        for v in volumes:
            mask = v.mask.astype(bool)
            matched = hm.transform(v.images, mask)
            rows["histogram matching"].append(_dice(segmenter, matched, v))
            rows["HM + restoration"].append(_dice(segmenter, _restored(net, matched, mask), v))
        results[site] = {name: float(np.mean(x)) for name, x in rows.items()} | {"volumes": len(volumes)}
        print(site, {k: round(x, 1) for k, x in results[site].items()}, flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, {"plan": {k: str(v) for k, v in vars(args).items()}, "history": history,
                             "sites": results, "seconds": round(time.perf_counter() - started),
                             "git": git_state(), "date": utc_now()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
