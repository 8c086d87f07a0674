"""Calibration of the BIDS app's image quality measures (issue 21) on data the QC benchmark never scores.

``bench_bids.py`` tests the QC flag on seed 21. This script simulates the same design on another seed (a source
and a target site of N scans each, and the target's scans with heavy noise, a severe bias field or a T2w contrast)
and measures each raw scan (:mod:`harmonizing_flows.bids.image_quality`), without fitting anything: the artefact
scans join the target site, as in the benchmark, and each measure's within-site modified z-score is reported per
group. Measure definitions are chosen here; the flag's limit (3.5) is the literature's and is not tuned.

    python benchmarks/calibrate_qc.py --work /tmp/qc-calibration          # seed 7, 10 scans per site, 1 mm

Writes ``benchmarks/results/bids/calibration.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import RESULTS, git_state, hflow_command, run_timed, utc_now, write_json
from bench_bids import ARTEFACTS, SOURCE, TARGET, _sites_file


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the simulated data.")
    parser.add_argument("--voxel-size", type=float, default=1.0)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--artefact-subjects", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7, help="Any seed but the benchmark's (21).")
    parser.add_argument("--output", type=Path, default=RESULTS / "bids" / "calibration.json")
    return parser.parse_args(argv)


def _simulate(args: argparse.Namespace) -> tuple[Path, Path]:
    hflow = hflow_command()
    raw, extra = args.work / "raw", args.work / "artefacts"
    common = ["--voxel-size", f"{args.voxel_size:g}", "--layout", "bids", "--seed", str(args.seed), "--quiet"]
    if not (raw / "participants.tsv").is_file():
        done = run_timed([*hflow, "simulate", "--out", str(raw), "--sites", f"{SOURCE},{TARGET}",
                          "--subjects-per-site", str(args.subjects), "--overwrite", *common])  # fmt: skip
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
    if not (extra / "participants.tsv").is_file():
        sites = ",".join(f"{TARGET}-{k}" for k in ARTEFACTS)
        done = run_timed([*hflow, "simulate", "--out", str(extra), "--sites", sites, "--sites-file",
                          str(_sites_file(args.work / "artefacts.toml")), "--subjects-per-site",
                          str(args.artefact_subjects), "--overwrite", *common])  # fmt: skip
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
    return raw, extra


def main(argv: list[str] | None = None) -> int:
    from harmonizing_flows.bids.image_quality import MEASURES, SITE_Z_FLAG, image_quality, site_z_scores
    from harmonizing_flows.bids.layout import read_scans
    from harmonizing_flows.data.volume import load_volume

    args = _parse(argv)
    raw, extra = _simulate(args)
    rows = []
    for folder, artefacts in ((raw, False), (extra, True)):
        for scan in read_scans(folder, "site"):
            volume = load_volume(scan.subject.image, scan.subject.mask)
            quality = image_quality(volume)
            site = scan.site
            group = f"artefact: {site.removeprefix(TARGET + '-')}" if artefacts else f"clean {site}"
            rows.append({"scan": scan.relative.name, "group": group, "site": TARGET if artefacts else site,
                         **{m: getattr(quality, m) for m in MEASURES}})  # fmt: skip
            print(f"{scan.relative.name}: {group}: " + ", ".join(f"{m} {getattr(quality, m):.4f}" for m in MEASURES))
    for measure in MEASURES:
        for row, z in zip(rows, site_z_scores(rows, measure), strict=True):
            row[f"{measure}_z"] = z
    groups: dict[str, dict] = {}
    for row in rows:
        entry = groups.setdefault(row["group"], {"scans": 0, "flagged": 0, **{m: [] for m in MEASURES},
                                                 **{f"{m}_z": [] for m in MEASURES}})  # fmt: skip
        entry["scans"] += 1
        entry["flagged"] += any((row[f"{m}_z"] or 0) > SITE_Z_FLAG for m in MEASURES)
        for m in MEASURES:
            entry[m].append(round(row[m], 5))
            entry[f"{m}_z"].append(None if row[f"{m}_z"] is None else round(row[f"{m}_z"], 2))
    for group, entry in sorted(groups.items()):
        zs = "; ".join(f"{m}_z {min(entry[f'{m}_z'] or [0]):.1f}..{max(entry[f'{m}_z'] or [0]):.1f}"
                       for m in MEASURES if all(z is not None for z in entry[f"{m}_z"]))  # fmt: skip
        print(f"{group}: {entry['flagged']} of {entry['scans']} flagged; {zs}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plan = vars(args) | {"work": str(args.work), "output": str(args.output)}
    write_json(args.output, {"plan": plan, "site_z_flag": SITE_Z_FLAG, "groups": groups, "git": git_state(),
                             "date": utc_now()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
