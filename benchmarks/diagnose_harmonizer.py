"""Diagnostic: does the pre-trained harmonizer keep the source site's own images as they are?

A harmonizer pre-trained to undo intensity augmentations of the source should be close to the identity on
un-augmented source images. For each source site of a benchmark's ``models/`` folder, this scores the frozen
segmenter on the source's test volumes as they are and after the pre-trained harmonizer, and prints the mean
absolute change of the brain's intensities (0..255). A large Dice drop means that the harmonizer destroys
detail on its own domain, before any adaptation.

    python benchmarks/diagnose_harmonizer.py BENCHMARK_OUT/models DATA/manifest.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from harmonizing_flows.data.prepare import read_site
from harmonizing_flows.evaluation.protocol import _score
from harmonizing_flows.evaluation.segmenter import load_segmenter
from harmonizing_flows.harmonize import harmonize_slices
from harmonizing_flows.method.store import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="A benchmark's models/ folder (one subfolder per source site).")
    parser.add_argument("data", type=Path, help="The labelled data the benchmark ran on.")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    for folder in sorted(p for p in args.models.iterdir() if p.is_dir()):
        model, segmenter = load_model(folder / "model"), load_segmenter(folder / "segmenter")
        # the site's test volumes, split as the benchmark splits them (keeping the splits the data gives)
        test = read_site(args.data, model.profile.slices, site=folder.name, splits=["test"], labels=True).volumes
        harmonizer = model.harmonizer.eval()
        harmonized = [harmonize_slices(harmonizer, v, device=device) for v in test]
        raw = np.mean([_score(segmenter, s.images, s, device)["dice"] for s in test])
        through = np.mean([_score(segmenter, h, s, device)["dice"] for h, s in zip(harmonized, test, strict=True)])
        pairs = list(zip(harmonized, test, strict=True))
        change = np.mean([np.abs(h.astype(float) - s.images)[s.mask > 0].mean() for h, s in pairs])
        print(f"source {folder.name}: Dice {raw:.1f} as is, {through:.1f} through the pre-trained harmonizer; "
              f"mean |h(x) - x| over the brain {change:.1f} of 255", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
