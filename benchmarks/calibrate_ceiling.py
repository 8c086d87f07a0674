"""How strong a segmenter the benchmark needs (issue 19): the source segmenter's Dice on its own site's held-out
volumes for a few training budgets, with the time each takes.

It simulates a calibration dataset with a seed the benchmark never uses (100 by default), so choosing the
segmenter here reads none of the benchmark's test volumes. For each source site asked for, and each candidate
(``--set``-style overrides of the profile's segmenter settings), it trains on the site's training split and scores
the validation and test splits of that calibration data:

    python benchmarks/calibrate_ceiling.py --work /tmp/ceiling --sites irspgr-3t \
        --candidate "profile" --candidate "segmenter_training.epochs=80" \
        --candidate "segmenter.channels=[32, 64, 128, 256];segmenter_training.epochs=80"

Prints one line per site and candidate (Dice on validation and test, seconds) and writes them to
``WORK/ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--sites", default="irspgr-3t", help="Source sites to calibrate on (comma-separated).")
    parser.add_argument("--candidate", action="append", default=None,
                        help="Overrides separated by ';' ('profile': none). Repeatable.")  # fmt: skip
    parser.add_argument("--subjects-per-site", type=int, default=16)
    parser.add_argument("--split", default="0.5,0.125,0.375")
    parser.add_argument("--seed", type=int, default=100, help="The calibration data's seed (not a benchmark seed).")
    args = parser.parse_args(argv)

    import torch

    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.data.slices import Slices
    from harmonizing_flows.evaluation.protocol import _score
    from harmonizing_flows.evaluation.segmenter import fit_segmenter
    from harmonizing_flows.profiles import apply_overrides, load_profile

    base = load_profile(args.profile)
    sim = args.work / "sim"
    if not (sim / "manifest.csv").is_file():
        subprocess.run([sys.executable, "-m", "harmonizing_flows.cli", "simulate", "--out", str(sim), "--voxel-size",
                        f"{base.slices.voxel_size:g}", "--subjects-per-site", str(args.subjects_per_site), "--split",
                        args.split, "--seed", str(args.seed), "--quiet", "--overwrite"], check=True)  # fmt: skip
    results = []
    for site in [s.strip() for s in args.sites.split(",") if s.strip()]:
        data = read_site(sim / "manifest.csv", base.slices, site=site, labels=True)
        train = Slices.pool(data.split("train"), labels=True)
        for candidate in args.candidate or ["profile"]:
            overrides = [] if candidate == "profile" else [x.strip() for x in candidate.split(";") if x.strip()]
            profile = apply_overrides(base, overrides)
            started = time.perf_counter()
            segmenter = fit_segmenter(train, profile, device="cpu", progress=False).eval()
            seconds = time.perf_counter() - started
            row = {"site": site, "candidate": candidate, "seconds": round(seconds, 1), "train_slices": len(train)}
            for split in ("val", "test"):
                scores = [_score(segmenter, v.images, v, torch.device("cpu")) for v in data.split(split)]
                row[f"{split}_dice"] = float(np.mean([s["dice"] for s in scores]))
                row[f"{split}_volumes"] = len(scores)
            results.append(row)
            print(json.dumps(row), flush=True)
            (args.work / "ceiling.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
