"""Exploration for issue 20 (not a benchmark): does adapting a monotone curve on top of histogram matching, steered
by a fitted flow, move the source segmenter's Dice up or down? And is that flow adequate?

Takes a setting that ``hflow benchmark`` already fitted (its model and segmenter folders) and the target sites'
*non-test* volumes (train and validation splits, whose labels the benchmark never scores), so nothing here is
chosen on test volumes. Per target site:

1. each volume mapped onto the source's histogram (per-volume histogram matching through
   :func:`~harmonizing_flows.method.curve.matching_lut`, rounded to integer levels as the flow's source slices are);
2. one site-level :class:`~harmonizing_flows.method.curve.MonotoneCurve`, starting at the identity, adapted on the
   matched slices to lower the flow's brain bpd, with and without the change-of-variables term
   (``- mean log2 c'(x)``, which stops flattening from being rewarded); Dice and bpd recorded along the way.

Also the flow's adequacy (:mod:`harmonizing_flows.method.adequacy`) and, per target site, the AUROC of per-slice
bpd between source validation slices and the site's slices before and after matching.

    python benchmarks/explore_curve.py --setting-dir /work/bench19/seed-0 --source irspgr-3t

``--model`` takes another model fitted on the same source (a longer flow schedule, say: the flow-adequacy
ablation) in place of the setting's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, git_state, utc_now, write_json


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting-dir", type=Path, required=True, help="A seed folder of bench_evaluation.")
    parser.add_argument("--source", required=True, help="The setting's source site.")
    parser.add_argument("--model", type=Path, help="A model folder to use instead of the setting's.")
    parser.add_argument("--jacobian", default="0,1", help="Weights of the change-of-variables term to run.")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--residual", type=int, default=0,
                        help="Channels of a local residual network on top of the curve (0: none): three 3x3 "
                             "convolutions whose last starts at zero, adapted with the curve.")  # fmt: skip
    parser.add_argument("--residual-lr", type=float, default=1e-3)
    parser.add_argument("--restoration", action="store_true",
                        help="Also score each step with explore_restoration's network (fitted on the source "
                             "training slices first) applied after the curve: a fixed post-processing.")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "explore-curve" / "explore-curve.json")
    return parser.parse_args(argv)


def _matched(volume, lut: np.ndarray) -> np.ndarray:
    return (np.rint(lut[volume.images.astype(np.int64)]) * volume.mask).astype(np.uint8)


def _dice(segmenter, images: np.ndarray, volume) -> float:
    from harmonizing_flows.data.labels import NUM_CLASSES
    from harmonizing_flows.evaluation.metrics import dice
    from harmonizing_flows.evaluation.segmenter import predict

    pred = predict(segmenter, images, volume.mask)
    values = [dice(pred == c, volume.labels == c) for c in range(1, NUM_CLASSES)]
    return 100.0 * float(np.nanmean(values))


def _residual(channels: int) -> torch.nn.Module | None:
    """A small local network whose output starts at zero (so step 0 is still histogram matching)."""
    if not channels:
        return None
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.ELU(),
        torch.nn.Conv2d(channels, channels, 3, padding=1),
        torch.nn.ELU(),
        torch.nn.Conv2d(channels, 1, 3, padding=1),
    )
    torch.nn.init.zeros_(net[-1].weight)
    torch.nn.init.zeros_(net[-1].bias)
    return net


def _adapt_curve(
    flow, segmenter, pool, matched, volumes, jacobian: float, args: argparse.Namespace, restorer=None
) -> list[dict]:
    """Adapt one site-level curve on the matched slices ``pool``; the record of each evaluation."""
    from harmonizing_flows.method.curve import MonotoneCurve
    from harmonizing_flows.method.distributed import stable_seed

    torch.manual_seed(0)
    curve = MonotoneCurve(1)
    groups = [{"params": curve.parameters(), "lr": args.lr}]
    residual = _residual(args.residual)
    if residual is not None:
        groups.append({"params": residual.parameters(), "lr": args.residual_lr})
    optimizer = torch.optim.Adam(groups)
    monitor = pool.brain_rows()[:: max(1, len(pool) // 64)]
    mx, mm = pool.batch(monitor, "cpu")
    monitor_noise = torch.randn(mx.shape, generator=torch.Generator().manual_seed(1))
    record: list[dict] = []

    def harmonized(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = curve(x)
        if residual is not None:  # a local correction, in grey levels, of the curve's output
            y = y + 255.0 * residual(y / 255.0)
        return y.clamp(0.0, 255.0) * m  # the flow reads 0..255 only

    def evaluate(step: int) -> None:
        with torch.no_grad():
            bpd = float(flow.bpd(harmonized(mx, mm), mm, noise=monitor_noise, brain_only=True).mean())
            dice, restored = [], []
            for m, v in zip(matched, volumes, strict=True):
                x = torch.from_numpy(m).float()[:, None]
                mask = torch.from_numpy(v.mask).float()[:, None]
                y = harmonized(x, mask)
                dice.append(_dice(segmenter, y[:, 0].numpy(), v))
                if restorer is not None:
                    restored.append(_dice(segmenter, restorer(y.round(), mask)[:, 0].round().numpy(), v))
            knots = curve.knots()[0]
        record.append({"step": step, "bpd": bpd, "dice": float(np.mean(dice)),
                       "knots": [round(float(knots[k]), 2) for k in (0, 64, 128, 192, 255)]})  # fmt: skip
        if restored:
            record[-1]["dice_restored"] = float(np.mean(restored))
        print(f"  jacobian {jacobian:g} step {step}: bpd {bpd:.3f}, Dice {record[-1]['dice']:.1f}"
              + (f" (restored {record[-1]['dice_restored']:.1f})" if restored else "")
              + f", knots {record[-1]['knots']}", flush=True)  # fmt: skip

    evaluate(0)
    rows = pool.brain_rows()
    for step in range(1, args.steps + 1):
        g = torch.Generator().manual_seed(stable_seed(0, "explore", step))
        x, m = pool.batch(rows[torch.randperm(len(rows), generator=g)[: args.batch_size]], "cpu")
        noise = torch.randn(x.shape, generator=g)
        bpd = flow.bpd(harmonized(x, m), m, noise=noise, brain_only=True)
        log_slope = (curve.log_derivative(x) * m).sum((1, 2, 3)) / m.sum((1, 2, 3)) / math.log(2.0)
        loss = (bpd - jacobian * log_slope).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            evaluate(step)
    return record


def main(argv: list[str] | None = None) -> int:
    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.data.slices import Slices
    from harmonizing_flows.evaluation.segmenter import load_segmenter
    from harmonizing_flows.figures import level_counts
    from harmonizing_flows.method.adequacy import auroc, flow_adequacy, slice_bpd
    from harmonizing_flows.method.curve import matching_lut
    from harmonizing_flows.method.store import load_model

    args = _parse(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = args.setting_dir / "report" / "models" / args.source
    manifest = args.setting_dir / "sim" / "manifest.csv"
    model = load_model(args.model or folder / "model")
    segmenter = load_segmenter(folder / "segmenter").eval()
    flow = model.flow.eval().requires_grad_(False)
    config, device = model.profile.slices, torch.device("cpu")
    started = time.perf_counter()

    source = read_site(manifest, config, site=args.source, splits=("train", "val"))
    train = [v for v in source.volumes if v.subject.split == "train"]
    restorer = None
    if args.restoration:
        import explore_restoration

        plan = explore_restoration._parse(["--setting-dir", str(args.setting_dir), "--source", args.source])
        restorer, _ = explore_restoration._fit(Slices.pool(train), plan)
    val = Slices.pool([v for v in source.volumes if v.subject.split == "val"])
    source_counts = sum(level_counts(v.images[v.mask.astype(bool)]) for v in train)
    adequacy = flow_adequacy(flow, val, model.profile.augment, device, seed=0)
    source_bpd = slice_bpd(flow, val, device)
    print(f"flow adequacy: brain bpd {adequacy.brain_bpd:.3f}, AUROC augmented {adequacy.auroc_augmented:.3f}")
    results = {"adequacy": adequacy.to_json(), "sites": {}}

    sites = sorted({row.split(",")[1] for row in manifest.read_text().splitlines()[1:]} - {args.source})
    for site in sites:
        volumes = read_site(manifest, config, site=site, splits=("train", "val"), labels=True).volumes
        luts = [matching_lut(source_counts, level_counts(v.images[v.mask.astype(bool)])) for v in volumes]
        matched = [_matched(v, lut) for v, lut in zip(volumes, luts, strict=True)]
        raw_pool = Slices.pool(volumes)
        pool = Slices.pool([Slices(images=m, mask=v.mask) for m, v in zip(matched, volumes, strict=True)])
        entry = {
            "volumes": len(volumes),
            "auroc_raw": auroc(source_bpd, slice_bpd(flow, raw_pool, device)),
            "auroc_matched": auroc(source_bpd, slice_bpd(flow, pool, device)),
            "dice_none": float(np.mean([_dice(segmenter, v.images, v) for v in volumes])),
            "dice_hm": float(np.mean([_dice(segmenter, m, v) for m, v in zip(matched, volumes, strict=True)])),
            "runs": {},
        }
        print(f"{site}: Dice none {entry['dice_none']:.1f}, HM {entry['dice_hm']:.1f}; AUROC source vs site "
              f"raw {entry['auroc_raw']:.3f}, matched {entry['auroc_matched']:.3f}", flush=True)  # fmt: skip
        for jacobian in [float(w) for w in args.jacobian.split(",")]:
            entry["runs"][f"jacobian={jacobian:g}"] = _adapt_curve(flow, segmenter, pool, matched, volumes, jacobian,
                                                                   args, restorer)  # fmt: skip
        results["sites"][site] = entry
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plan = {k: str(v) for k, v in vars(args).items()}
    write_json(args.output, {"plan": plan, **results, "seconds": round(time.perf_counter() - started),
                             "git": git_state(), "date": utc_now()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
