"""Experiment: does a longer pre-training keep the harmonizer closer to the identity on its own source?

Refits only the harmonizer of the fast profile with another schedule, on one source site's training split, and
scores a benchmark's frozen segmenter on that site's test volumes passed through it (compare
``diagnose_harmonizer.py``, which does the same for the benchmark's own harmonizer).

    python benchmarks/harmonizer_schedule.py BENCHMARK_OUT/models DATA/manifest.csv SITE --epochs 60 --halve-every 20
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from harmonizing_flows.data.prepare import read_site
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.evaluation.protocol import _score
from harmonizing_flows.evaluation.segmenter import load_segmenter
from harmonizing_flows.harmonize import harmonize_slices
from harmonizing_flows.method.distributed import Context
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.training import fit_harmonizer
from harmonizing_flows.profiles import load_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="A benchmark's models/ folder (for the frozen segmenter).")
    parser.add_argument("data", type=Path, help="The labelled data the benchmark ran on.")
    parser.add_argument("site", help="The source site.")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--halve-every", type=int, required=True)
    parser.add_argument("--lr", type=float, help="Default: the fast profile's.")
    parser.add_argument("--batch-size", type=int, help="Default: the fast profile's.")
    args = parser.parse_args(argv)
    profile = load_profile("fast")
    training = replace(profile.harmonizer_training, epochs=args.epochs, halve_every=args.halve_every,
                       lr=profile.harmonizer_training.lr if args.lr is None else args.lr,
                       batch_size=profile.harmonizer_training.batch_size if args.batch_size is None
                       else args.batch_size)  # fmt: skip
    profile = replace(profile, harmonizer_training=training)
    # split as the benchmark splits (keeping the splits the data gives); labels only for scoring the test split
    site = read_site(args.data, profile.slices, site=args.site, splits=["train", "test"], labels=True)
    train = Slices.pool(site.split("train"))
    test = site.split("test")
    segmenter = load_segmenter(args.models / args.site / "segmenter")
    torch.manual_seed(profile.seed)
    harmonizer = Harmonizer(profile.harmonizer)
    started = time.perf_counter()
    history = fit_harmonizer(harmonizer, train, profile, Context(), progress=False)
    harmonizer.eval()
    device = torch.device("cpu")
    dice = np.mean([_score(segmenter, harmonize_slices(harmonizer, v, device=device), v, device)["dice"] for v in test])
    print(f"{args.site}: {args.epochs} epochs (halved every {args.halve_every}, lr {training.lr:g}, "
          f"batch {training.batch_size}) in "
          f"{time.perf_counter() - started:.0f} s; final MSE {history[-1]['mse']:.4f}; "
          f"source test Dice through it {dice:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
