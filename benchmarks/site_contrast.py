"""Diagnostic: do the sites of a labelled data set differ by a monotone intensity map, or by more?

For each site it prints the mean intensity of each of the 14 foreground classes (over all its subjects, on the
0..255 export scale), and for each pair of sites the class pairs whose order of brightness flips from one site to
the other. Without flips, one increasing grey-level map carries a site's class means onto another's: the case
that histogram matching and Nyul standardization are built for, and where they cannot be beaten by much. Real
T1-weighted protocols do flip some pairs (deep grey nuclei against white matter, say, between an MPRAGE and a
spoiled gradient echo), so a simulator whose sites never flip is easier for those baselines than real sites are.

Flips between classes whose means lie within ``--tolerance`` grey levels of each other at either site are not
counted: that close, noise and partial volume already mix them.

    python benchmarks/site_contrast.py DATA/manifest.csv [--subjects 3] [--tolerance 2]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from harmonizing_flows.data.datasets import load_subjects
from harmonizing_flows.data.labels import CLASS_NAMES, to_classes
from harmonizing_flows.data.volume import load_volume

FOREGROUND = range(1, len(CLASS_NAMES))


def class_means(data: Path, subjects_per_site: int) -> dict[str, np.ndarray]:
    """Mean intensity of each foreground class per site, averaged over its first ``subjects_per_site`` subjects."""
    per_site: dict[str, list[np.ndarray]] = {}
    for subject in load_subjects(data):
        if subject.labels is None:
            raise SystemExit(f"{subject.image}: no label map; this diagnostic needs labelled data")
        done = per_site.setdefault(subject.site, [])
        if len(done) >= subjects_per_site:
            continue
        volume = load_volume(subject.image, subject.mask, subject.labels)
        classes = to_classes(volume.labels, path=subject.labels)
        sums = np.bincount(classes.ravel(), weights=volume.image.ravel(), minlength=len(CLASS_NAMES))
        counts = np.bincount(classes.ravel(), minlength=len(CLASS_NAMES))
        with np.errstate(invalid="ignore", divide="ignore"):
            done.append((sums / counts)[1:])
    return {site: np.nanmean(np.stack(means), axis=0) for site, means in sorted(per_site.items())}


def flips(a: np.ndarray, b: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """Class pairs (0-based foreground indices) brighter-darker at one site and darker-brighter at the other."""
    found = []
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if min(abs(da), abs(db)) > tolerance and da * db < 0:
            found.append((i, j))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Labelled multi-site data (manifest, site folders or BIDS).")
    parser.add_argument("--subjects", type=int, default=3, help="Subjects read per site.")
    parser.add_argument("--tolerance", type=float, default=2.0, help="Grey levels below which a flip is not counted.")
    args = parser.parse_args(argv)
    means = class_means(args.data, args.subjects)
    sites = list(means)
    names = [CLASS_NAMES[k] for k in FOREGROUND]
    print("| class | " + " | ".join(sites) + " |")
    print("|---|" + "---|" * len(sites))
    for k, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{means[s][k]:.1f}" for s in sites) + " |")
    print()
    pairs = list(itertools.combinations(range(len(names)), 2))
    for a, b in itertools.combinations(sites, 2):
        found = flips(means[a], means[b], args.tolerance)
        shown = ", ".join(f"{names[i]}/{names[j]}" for i, j in found) or "none"
        print(f"{a} vs {b}: {len(found)} of {len(pairs)} class pairs flip order ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
