"""Exploration for issue 20 (not a benchmark): what separates histogram matching from the source segmenter's
ceiling on a setting's target sites? Contrast that no monotone map can fix, or noise and blur?

Takes a setting that ``bench_evaluation.py`` already fitted (its segmenter) and the target sites' *non-test*
volumes (train and validation splits, whose labels the benchmark never scores), so nothing here is chosen on test
volumes. Per target site, the source segmenter's mean Dice on:

* ``none``: the volumes as they are;
* ``histogram matching``: each volume's brain mapped onto the source training brains' histogram;
* ``HM + gaussian s``: histogram matching, then a Gaussian blur of ``s`` pixels inside the brain (noise removal);
* ``HM + median``: histogram matching, then a 3x3 median filter (in-plane);
* ``tissue-wise matching *``: each tissue class's intensities mapped onto the source's same class (reads the
  labels: an oracle bound on what any tissue-wise, not necessarily monotone, intensity map can reach);
* ``tissue-wise matching + gaussian *``: the oracle, then a blur;
* ``depth-zone matching k``: label-free and source-free: the brain cut into ``k`` zones of equal volume by depth
  (distance from the brain's surface, ranked), each zone's histogram matched onto the source's same zone, and the
  zones' maps blended linearly in depth between zone centres (no seams). Deep grey matter lies deep, cortex at
  the surface: a site whose contrast orders them differently needs two maps, which one whole-brain map is not.

    python benchmarks/explore_gap.py --setting-dir /work/bench20/seed-0 --source irspgr-3t
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, git_state, utc_now, write_json

SIGMAS = (0.5,)
ZONES = (2, 3, 4)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting-dir", type=Path, required=True, help="A seed folder of bench_evaluation.")
    parser.add_argument("--source", required=True, help="The setting's source site.")
    parser.add_argument("--output", type=Path, default=RESULTS / "explore-gap" / "explore-gap.json")
    return parser.parse_args(argv)


def _dice(segmenter, images: np.ndarray, volume) -> float:
    from harmonizing_flows.data.labels import NUM_CLASSES
    from harmonizing_flows.evaluation.metrics import dice
    from harmonizing_flows.evaluation.segmenter import predict

    pred = predict(segmenter, images, volume.mask)
    return 100.0 * float(np.nanmean([dice(pred == c, volume.labels == c) for c in range(1, NUM_CLASSES)]))


def _blur(images: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian blur normalised inside the brain (the background does not leak in)."""
    from scipy.ndimage import gaussian_filter

    m = mask.astype(np.float64)
    sig = (0, sigma, sigma)
    num = gaussian_filter(images.astype(np.float64) * m, sig)
    den = gaussian_filter(m, sig)
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0)


def _median(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import median_filter

    return np.where(mask, median_filter(images.astype(np.float64), size=(1, 3, 3)), 0.0)


def _class_quantiles(volumes) -> dict[int, np.ndarray]:
    """Per tissue class, the source training brains' intensities, sorted."""
    values: dict[int, list[np.ndarray]] = {}
    for v in volumes:
        inside = v.mask.astype(bool)
        for c in np.unique(v.labels[inside]):
            values.setdefault(int(c), []).append(v.images[inside & (v.labels == c)].astype(np.float64))
    return {c: np.sort(np.concatenate(x)) for c, x in values.items()}


def _tissue_matched(volume, source: dict[int, np.ndarray]) -> np.ndarray:
    """Each class's intensities mapped by rank onto the source's same class (oracle: reads labels)."""
    out = np.zeros(volume.images.shape, dtype=np.float64)
    inside = volume.mask.astype(bool)
    for c in np.unique(volume.labels[inside]):
        where = inside & (volume.labels == c)
        values = volume.images[where].astype(np.float64)
        ref = source.get(int(c))
        if ref is None:
            out[where] = values
            continue
        order = np.sort(values)
        q = (np.searchsorted(order, values, "left") + np.searchsorted(order, values, "right")) / (2.0 * len(values))
        out[where] = np.quantile(ref, q)
    return np.clip(np.rint(out), 0, 255)


def _depth_rank(mask: np.ndarray) -> np.ndarray:
    """Each brain voxel's depth (3D distance to the background) as its rank in the brain, 0 (surface) .. 1."""
    from scipy.ndimage import distance_transform_edt

    inside = mask.astype(bool)
    depth = distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1, 1:-1][inside]
    order = np.argsort(np.argsort(depth, kind="stable"), kind="stable")
    rank = np.zeros(mask.shape)
    rank[inside] = (order + 0.5) / len(order)
    return rank


def _zone_counts(volumes, zones: int) -> np.ndarray:
    """The source training brains' histograms per depth zone, ``(zones, 256)``."""
    counts = np.zeros((zones, 256))
    for v in volumes:
        inside = v.mask.astype(bool)
        zone = np.minimum((_depth_rank(v.mask)[inside] * zones).astype(int), zones - 1)
        for z in range(zones):
            counts[z] += np.bincount(v.images[inside][zone == z].astype(int), minlength=256)
    return counts


def _zone_matched(volume, source: np.ndarray) -> np.ndarray:
    from harmonizing_flows.method.curve import matching_lut

    zones = len(source)
    inside = volume.mask.astype(bool)
    rank = _depth_rank(volume.mask)[inside]
    zone = np.minimum((rank * zones).astype(int), zones - 1)
    values = volume.images[inside].astype(int)
    luts = [matching_lut(source[z], np.bincount(values[zone == z], minlength=256)) for z in range(zones)]
    # blend the zone maps linearly in depth between zone centres (clamped beyond the outer centres)
    position = np.clip(rank * zones - 0.5, 0, zones - 1)
    low = np.minimum(position.astype(int), zones - 1)
    high = np.minimum(low + 1, zones - 1)
    t = position - low
    mapped = np.stack([lut[values] for lut in luts])  # zones x voxels
    blended = (1 - t) * mapped[low, np.arange(len(values))] + t * mapped[high, np.arange(len(values))]
    out = np.zeros(volume.images.shape)
    out[inside] = blended
    return np.clip(np.rint(out), 0, 255)


def main(argv: list[str] | None = None) -> int:
    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.evaluation.baselines import HistogramMatching
    from harmonizing_flows.evaluation.segmenter import load_segmenter
    from harmonizing_flows.profiles import load_profile

    args = _parse(argv)
    folder = args.setting_dir / "report" / "models" / args.source
    manifest = args.setting_dir / "sim" / "manifest.csv"
    segmenter = load_segmenter(folder / "segmenter").eval()
    started = time.perf_counter()
    config = load_profile("fast").slices  # the benchmark's
    source = read_site(manifest, config, site=args.source, splits=("train",), labels=True).volumes
    hm = HistogramMatching().fit([v.images for v in source], [v.mask.astype(bool) for v in source])
    classes = _class_quantiles(source)
    zone_counts = {k: _zone_counts(source, k) for k in ZONES}
    sites = sorted({row.split(",")[1] for row in manifest.read_text().splitlines()[1:]} - {args.source})
    results: dict[str, dict[str, float]] = {}
    for site in sites:
        volumes = read_site(manifest, config, site=site, splits=("train", "val"), labels=True).volumes
        rows: dict[str, list[float]] = {}

        def add(name: str, images: np.ndarray, volume, rows: dict[str, list[float]] = rows) -> None:
            rows.setdefault(name, []).append(_dice(segmenter, images, volume))

        for v in volumes:
            mask = v.mask.astype(bool)
            matched = hm.transform(v.images, mask)
            add("none", v.images, v)
            add("histogram matching", matched, v)
            for sigma in SIGMAS:
                add(f"HM + gaussian {sigma:g}", _blur(matched, mask, sigma), v)
            add("HM + median", _median(matched, mask), v)
            tissue = _tissue_matched(v, classes)
            add("tissue-wise matching *", tissue, v)
            add("tissue-wise matching + gaussian 0.5 *", _blur(tissue, mask, 0.5), v)
            for k in ZONES:
                add(f"depth-zone matching {k}", _zone_matched(v, zone_counts[k]), v)
        results[site] = {name: float(np.mean(x)) for name, x in rows.items()} | {"volumes": len(volumes)}
        print(site, {k: round(x, 1) for k, x in results[site].items()}, flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, {"plan": {k: str(v) for k, v in vars(args).items()}, "sites": results,
                             "seconds": round(time.perf_counter() - started), "git": git_state(),
                             "date": utc_now()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
