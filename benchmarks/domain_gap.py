"""Diagnostic: how much Dice a segmenter trained on one site loses on the others, with no harmonization.

The calibration check of a simulated (or real) multi-site data set, before any harmonizer is fitted: per source
site, the segmenter's mean Dice on its own test subjects (the ceiling) and on each other site's test subjects
(none), and the loss between them. The paper's segmenter loses about 20 Dice points across its ABIDE sites; a data
set where it loses almost nothing cannot show what harmonization is worth. It also prints what the two
monotone-map baselines (histogram matching and Nyul standardization, fitted on the source's training subjects)
recover, which is all they can recover on sites that differ by one increasing grey-level map.

Costs one segmenter fit per source site (about 4.5 min with the fast profile on two CPU cores at 2 mm).

    python benchmarks/domain_gap.py DATA/manifest.csv [--sources mprage-3t,irspgr-3t] [--profile fast] [--set ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from harmonizing_flows.data.prepare import read_sites
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.data.volume import SlicedVolume
from harmonizing_flows.evaluation.baselines import HistogramMatching, NyulStandardization
from harmonizing_flows.evaluation.protocol import _score
from harmonizing_flows.evaluation.segmenter import fit_segmenter
from harmonizing_flows.profiles import load_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Labelled multi-site data (manifest, site folders or BIDS).")
    parser.add_argument("--sources", default="", help="Comma-separated source sites (default: every site).")
    parser.add_argument("--profile", default="fast", help="Settings preset of the segmenter (default: fast).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="Override a setting, e.g. --set 'segmenter.channels=[32, 64, 128, 256]' (repeatable).",
    )
    args = parser.parse_args(argv)

    profile = load_profile(args.profile, overrides=args.overrides)
    by_name = {site.name: site for site in read_sites(args.data, profile.slices, labels=True)}
    sites = list(by_name)
    sources = [s for s in args.sources.split(",") if s] or sites
    if unknown := [s for s in sources if s not in by_name]:
        parser.error(f"no site {', '.join(unknown)} in {args.data} (sites: {', '.join(sites)})")
    print("| source | target | ceiling | none | loss | histogram matching | Nyul |")
    print("|---|---|---|---|---|---|---|")
    for source in sources:
        begun = time.perf_counter()
        train = by_name[source].split("train")
        segmenter = fit_segmenter(Slices.pool(train, labels=True), profile, progress=False).eval()

        def dice(images: list[np.ndarray], test: list[SlicedVolume], segmenter=segmenter) -> float:
            scores = [_score(segmenter, x, s, "cpu")["dice"] for x, s in zip(images, test, strict=True)]
            return float(np.mean(scores))

        own = by_name[source].split("test")
        ceiling = dice([s.images.astype(np.float32) for s in own], own)
        matching = HistogramMatching().fit([s.images for s in train], [s.mask for s in train])
        nyul = NyulStandardization().fit([s.images for s in train], [s.mask for s in train])
        for target in sites:
            if target == source:
                continue
            test = by_name[target].split("test")
            none = dice([s.images.astype(np.float32) for s in test], test)
            hm = dice([matching.transform(s.images, s.mask) for s in test], test)
            ny = dice([nyul.transform(s.images, s.mask) for s in test], test)
            print(f"| {source} | {target} | {ceiling:.1f} | {none:.1f} | {ceiling - none:.1f} | {hm:.1f} | {ny:.1f} |")
        print(f"<!-- {source}: {time.perf_counter() - begun:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
