"""Exploration for issue 20 (not a benchmark): can a restoration network, trained on the source alone to undo
noise, blur and bias fields, add to histogram matching on the target sites?

``explore_gap.py`` found that smoothing the matched images gains 2-3 Dice on the noisy 1.5 T targets of setting A
and loses 4-5 on the clean 3 T one: a fixed filter cannot know a site's noise. A network trained blind (random
degradation strength, some samples left clean) could. Source-free: it is fitted at ``hflow fit`` time on the source
training slices, and the target needs nothing but its own images.

1. Fit :class:`~harmonizing_flows.method.restoration.Restorer` (its last layer starts at zero: it starts as the
   identity) on the source training slices: each batch degraded by Rician noise of a random level, an in-plane
   Gaussian blur of random width (one axis blurred more in some: thick slices), a smooth bias field, and 15 % left
   clean (:func:`~harmonizing_flows.method.restoration.draw_degradation`); the loss is the squared error to the
   clean slice over the brain.
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

from _common import RESULTS, git_state, utc_now, write_json
from harmonizing_flows.config import RestorationConfig
from harmonizing_flows.method.restoration import Restorer, apply_degradation, draw_degradation


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


def _fit(train, args: argparse.Namespace) -> tuple[Restorer, list[float]]:
    torch.manual_seed(0)
    config = RestorationConfig(channels=args.channels, max_noise=args.max_noise, max_blur=args.max_blur)
    net = Restorer(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    rows = train.brain_rows()
    history = []
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(1000 + epoch)
        order = rows[torch.randperm(len(rows), generator=g)]
        total, count = 0.0, 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            x, m = train.batch(order[start : start + args.batch_size], "cpu")
            y = apply_degradation(x, m, draw_degradation(len(x), tuple(x.shape[-2:]), config, g))
            loss = ((net(y, m) - x) ** 2 * m).sum() / m.sum().clamp_min(1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
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
