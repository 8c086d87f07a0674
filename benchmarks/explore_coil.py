"""Exploration for issue 20 (not a benchmark): how much of what histogram matching leaves is the receive-coil
profile, a smooth multiplicative field that is a property of the site?

Takes a seed folder of ``bench_evaluation.py`` (its simulation and one setting's fitted segmenter) and
re-simulates the target sites with the same subjects and every per-scan draw unchanged, but with the coil profile
swapped: the source site's profile instead of the target's own, or none. Each target volume is then matched onto
the source's histogram and segmented by the setting's frozen segmenter. Only the targets' *non-test* volumes
(train and validation splits) are scored, so nothing here is chosen on test volumes.

If the Dice after histogram matching rises when the target carries the source's coil profile, a harmonizer with a
site-level smooth multiplicative field (in the volume's coordinates) has that much to gain, provided the flow can
see the field; if it does not, the field is not where the remaining gap lies.

    python benchmarks/explore_coil.py --setting-dir /work/bench20/seed-0 --source irspgr-3t --work /work/coil
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, git_state, utc_now, write_json


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting-dir", type=Path, required=True, help="A seed folder of bench_evaluation.")
    parser.add_argument("--source", required=True, help="The setting's source site.")
    parser.add_argument("--profile", default="fast", help="The benchmark's profile (its slice settings).")
    parser.add_argument("--work", type=Path, required=True, help="Folder for the re-simulated sites.")
    parser.add_argument("--output", type=Path, default=RESULTS / "explore-coil" / "explore-coil.json")
    return parser.parse_args(argv)


def _resimulate(setting_dir: Path, out: Path, sites: list[str], coil) -> Path:
    """The setting's simulation of ``sites`` again, with ``coil(site, shape, seed)`` as every site's coil field."""
    from harmonizing_flows.config import SimulationConfig
    from harmonizing_flows.simulate import scanner, simulate

    recorded = json.loads((setting_dir / "sim" / "simulation.json").read_text())["config"]
    config = SimulationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    original = scanner.coil_profile
    scanner.coil_profile = coil
    try:
        simulate(out, sites=sites, config=config, overwrite=True, progress=False)
    finally:
        scanner.coil_profile = original
    return out / "manifest.csv"


def _dice(segmenter, images: np.ndarray, volume) -> float:
    from harmonizing_flows.data.labels import NUM_CLASSES
    from harmonizing_flows.evaluation.metrics import dice
    from harmonizing_flows.evaluation.segmenter import predict

    pred = predict(segmenter, images, volume.mask)
    values = [dice(pred == c, volume.labels == c) for c in range(1, NUM_CLASSES)]
    return 100.0 * float(np.nanmean(values))


def main(argv: list[str] | None = None) -> int:
    import torch

    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.evaluation.segmenter import load_segmenter
    from harmonizing_flows.figures import level_counts
    from harmonizing_flows.method.curve import matching_lut
    from harmonizing_flows.profiles import load_profile
    from harmonizing_flows.simulate import BUILTIN_SITES
    from harmonizing_flows.simulate.scanner import coil_profile

    args = _parse(argv)
    started = time.perf_counter()
    folder = args.setting_dir / "report" / "models" / args.source
    manifest = args.setting_dir / "sim" / "manifest.csv"
    config = load_profile(args.profile).slices
    segmenter = load_segmenter(folder / "segmenter").eval()
    source = BUILTIN_SITES[args.source]
    train = read_site(manifest, config, site=args.source, splits=("train",)).volumes
    source_counts = sum(level_counts(v.images[v.mask.astype(bool)]) for v in train)
    targets = sorted({row.split(",")[1] for row in manifest.read_text().splitlines()[1:]} - {args.source})

    def source_coil(site, shape, seed):
        return coil_profile(source, shape, seed)

    def no_coil(site, shape, seed):
        return torch.zeros(shape)

    manifests = {
        "own coil": manifest,
        "source's coil": _resimulate(args.setting_dir, args.work / "source-coil", targets, source_coil),
        "no coil": _resimulate(args.setting_dir, args.work / "no-coil", targets, no_coil),
    }
    results: dict[str, dict] = {}
    for site in targets:
        results[site] = {}
        for name, path in manifests.items():
            volumes = read_site(path, config, site=site, splits=("train", "val"), labels=True).volumes
            none, matched = [], []
            for v in volumes:
                lut = matching_lut(source_counts, level_counts(v.images[v.mask.astype(bool)]))
                images = (np.rint(lut[v.images.astype(np.int64)]) * v.mask).astype(np.uint8)
                none.append(_dice(segmenter, v.images, v))
                matched.append(_dice(segmenter, images, v))
            results[site][name] = {"volumes": [str(v.subject.subject) for v in volumes],
                                   "dice_none": none, "dice_hm": matched}  # fmt: skip
            print(f"{site}, {name}: {len(volumes)} volumes, Dice none {np.mean(none):.1f}, "
                  f"histogram matching {np.mean(matched):.1f}", flush=True)  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plan = {k: str(v) for k, v in vars(args).items()}
    write_json(args.output, {"plan": plan, "sites": results, "seconds": round(time.perf_counter() - started),
                             "git": git_state(), "date": utc_now()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
