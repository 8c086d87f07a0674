"""Validation runs for the method's choices (issue 20): ``hflow benchmark`` scored on the target sites' *non-test*
volumes, so that a default, a variant or a stopping rule is chosen without reading a test volume.

For each setting X of one seed of ``bench_evaluation.py`` (its simulation under ``WORK/seed-N/sim``):

1. a manifest in which the setting's source keeps its splits and every target site's training and validation
   subjects are scored as its test split (its own test subjects are left out: adaptation never sees them);
2. ``hflow benchmark`` on it, for setting X only, with the variants asked for and the full run's profile and
   overrides (``WORK/study.json``: the same instrument segmenter). The networks that the seed's run fitted are
   copied beside it and reused where their keys still match (the segmenters: the source's files and their own
   code; the shared model: also the method's code, so only from a run of the same code).

The source's own test volumes still give the ceiling row, which decides nothing. Each setting's tables, results
and the commands go to ``--output`` (default ``benchmarks/results/validation/seed-N/``), with a summary of the rows
the choices read: per variant and stopping rule, the mean Dice over the setting's target volumes, beside histogram
matching's.

    python benchmarks/bench_validation.py --work /work/bench21 --settings A,B --variants curve,curve+restoration
    python benchmarks/bench_validation.py --work W --settings B --set flow_training.keep=last --tag flow-last
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS, git_state, hflow_command, run_timed, utc_now, write_json
from bench_evaluation import INSTRUMENT


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="The --work folder of bench_evaluation.py.")
    parser.add_argument("--seed", type=int, default=0, help="Which seed's simulation (default 0).")
    parser.add_argument("--settings", default="A,B,C,D", help="Settings to run (default: A,B,C,D).")
    parser.add_argument("--variants", default="curve,curve+restoration", help="Method variants to compare.")
    parser.add_argument("--output", type=Path, help="Where the reports go (default: results/validation/seed-N).")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="A setting on top of the study's (repeatable), e.g. flow_training.keep=last.",
    )
    parser.add_argument("--tag", default="", help="Suffix of each setting's folders, e.g. flow-last: A-flow-last.")
    return parser.parse_args(argv)


def validation_manifest(manifest: Path, source: str, out: Path) -> Path:
    """``manifest`` with absolute paths, the ``source`` site's splits kept, and every other site's training and
    validation subjects as its test split (its test subjects left out)."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not any(r["site"] == source for r in rows):
        raise SystemExit(f"{manifest}: no subject of site {source}")
    kept = []
    for row in rows:
        if row["site"] != source:
            if row["split"] == "test":
                continue
            row = {**row, "split": "test"}
        for column in ("image", "mask", "labels"):
            if row.get(column):
                row[column] = str((manifest.parent / row[column]).resolve())
        kept.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return out


def _rows(results: dict[str, Any], letter: str, variants: list[str]) -> dict[str, float]:
    """Mean Dice over the setting's target volumes: the baselines, and each variant under each stopping rule."""
    setting = results["results"][letter]

    def mean(scores: list[dict[str, float]]) -> float:
        return round(sum(s["dice"] for s in scores) / len(scores), 2)

    targets = setting["targets"].values()
    rows = {}
    for method in ("none", "histogram matching", "Nyul", "ComBat", "TENT", "BigAug"):
        scores = [s for t in targets for s in t["scores"].get(method, [])]
        if scores:
            rows[method] = mean(scores)
    for variant in variants:
        names = {name for t in targets for name in t["variants"][variant]["scores"]}
        for name in sorted(names):
            rows[f"{variant}: {name}"] = mean([s for t in targets for s in t["variants"][variant]["scores"][name]])
        steps = [t["variants"][variant]["kept"]["steps"]["step"] for t in targets]
        rows[f"{variant}: kept steps (fixed rule)"] = steps
        rows[f"{variant}: curve Dice by step"] = dice_by_step(results, letter, variant)
    return rows


def dice_by_step(results: dict[str, Any], letter: str, variant: str) -> dict[int, float]:
    """Each evaluated step's Dice on the adaptation curve's slices, averaged over the setting's targets: what a
    fixed number of steps would give (the curve's slices, not whole volumes: for choosing, not reporting)."""
    curves = [t["variants"][variant]["curve"] for t in results["results"][letter]["targets"].values()]
    steps = sorted(set.intersection(*({p["step"] for p in c if "dice" in p} for c in curves)))
    return {s: round(sum(p["dice"] for c in curves for p in c if p["step"] == s) / len(curves), 2) for s in steps}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    seed_dir = args.work / f"seed-{args.seed}"
    manifest = seed_dir / "sim" / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} is missing: run bench_evaluation.py --work {args.work} first")
    with manifest.open(newline="") as handle:
        sites = sorted({r["site"] for r in csv.DictReader(handle)})
    letters = {chr(ord("A") + i): site for i, site in enumerate(sites)}
    output = args.output or RESULTS / "validation" / f"seed-{args.seed}"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    study = json.loads((args.work / "study.json").read_text()) if (args.work / "study.json").is_file() else {}
    profile, overrides = study.get("profile", "fast"), [*study.get("overrides", INSTRUMENT), *args.overrides]
    suffix = f"-{args.tag}" if args.tag else ""
    hflow, state = hflow_command(), git_state()
    earlier = output / f"summary{suffix}.json"  # settings run before (by another call) stay in the summary
    summary: dict[str, Any] = json.loads(earlier.read_text())["settings"] if earlier.is_file() else {}
    for letter in [x.strip() for x in args.settings.split(",") if x.strip()]:
        source = letters[letter]
        work = seed_dir / f"validation-{letter}{suffix}"
        data = validation_manifest(manifest, source, work / "manifest.csv")
        fitted = seed_dir / "report" / "models" / source
        for name in ("segmenter", "segmenter-bigaug", "model"):  # the full run's, reused when their keys match
            into = work / "report" / "models" / source / name
            if (fitted / name / "model.json").is_file() and not into.exists():
                shutil.copytree(fitted / name, into)
        command = [*hflow, "benchmark", str(data), "--out", str(work / "report"), "--overwrite", "--settings", letter,
                   "--variants", ",".join(variants), "--profile", profile, "--seed", str(args.seed),
                   *[a for o in overrides for a in ("--set", o)], "--quiet"]  # fmt: skip
        print("$ " + " ".join(command), flush=True)
        run = run_timed(command, echo=True)
        if run.returncode != 0:
            sys.stderr.write(run.stderr[-4000:])
            raise SystemExit(f"failed with exit status {run.returncode}: {' '.join(command)}")
        results = json.loads((work / "report" / "results.json").read_text())
        summary[letter] = {"source": source, "dice": _rows(results, letter, variants), "run": run.summary()}
        into = output / f"{letter}{suffix}"
        into.mkdir(parents=True, exist_ok=True)
        for name in ("tables.md", "results.json"):
            shutil.copy2(work / "report" / name, into / name)
        record = {"settings": summary, "variants": variants, "overrides": overrides, "seed": args.seed, "git": state,
                  "date": utc_now(), "command": " ".join(sys.argv)}  # fmt: skip
        write_json(earlier, record)
        print(json.dumps(summary[letter]["dice"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
