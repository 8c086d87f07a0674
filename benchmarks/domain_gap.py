"""Diagnostic: how much Dice a segmenter trained on one site loses on the others, with no harmonization.

The calibration check of a simulated (or real) multi-site data set, before any harmonizer is fitted: per source
site, the segmenter's mean Dice on its own test subjects (the ceiling) and on each other site's test subjects
(none), and the loss between them. The paper's segmenter loses about 20 Dice points across its ABIDE sites; a data
set where it loses almost nothing cannot show what harmonization is worth. It also prints what the two
monotone-map baselines (histogram matching and Nyul standardization, fitted on the source's training subjects)
recover, which is all they can recover on sites that differ by one increasing grey-level map.

Costs one segmenter fit per source site (about 4.5 min with the fast profile on two CPU cores at 2 mm).

    python benchmarks/domain_gap.py DATA/manifest.csv [--sources mprage-3t,irspgr-3t] [--profile fast]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from harmonizing_flows.baselines import HistogramMatching, NyulStandardization
from harmonizing_flows.benchmark import _score, load_stacks, stacks_to_slices
from harmonizing_flows.datasets import load_subjects, split_subjects
from harmonizing_flows.profiles import load_profile
from harmonizing_flows.segment import fit_segmenter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Labelled multi-site data (manifest, site folders or BIDS).")
    parser.add_argument("--sources", default="", help="Comma-separated source sites (default: every site).")
    parser.add_argument("--profile", default="fast", help="Settings preset of the segmenter (default: fast).")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile)
    subjects = split_subjects(load_subjects(args.data))
    sites = sorted({s.site for s in subjects})
    stacks = {site: load_stacks([s for s in subjects if s.site == site], profile.slices) for site in sites}
    sources = [s for s in args.sources.split(",") if s] or sites
    print("| source | target | ceiling | none | loss | histogram matching | Nyul |")
    print("|---|---|---|---|---|---|---|")
    for source in sources:
        begun = time.perf_counter()
        train = [s for s in stacks[source] if s.split == "train"]
        segmenter = fit_segmenter(stacks_to_slices(train, labels=True), profile, progress=False).eval()

        def dice(images: list[np.ndarray], test: list, segmenter=segmenter) -> float:
            scores = [_score(segmenter, x, s, "cpu")["dice"] for x, s in zip(images, test, strict=True)]
            return float(np.mean(scores))

        own = [s for s in stacks[source] if s.split == "test"]
        ceiling = dice([s.images.astype(np.float32) for s in own], own)
        matching = HistogramMatching().fit([s.images for s in train], [s.mask for s in train])
        nyul = NyulStandardization().fit([s.images for s in train], [s.mask for s in train])
        for target in sites:
            if target == source:
                continue
            test = [s for s in stacks[target] if s.split == "test"]
            none = dice([s.images.astype(np.float32) for s in test], test)
            hm = dice([matching.transform(s.images, s.mask) for s in test], test)
            ny = dice([nyul.transform(s.images, s.mask) for s in test], test)
            print(f"| {source} | {target} | {ceiling:.1f} | {none:.1f} | {ceiling - none:.1f} | {hm:.1f} | {ny:.1f} |")
        print(f"<!-- {source}: {time.perf_counter() - begun:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
