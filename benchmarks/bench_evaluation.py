"""The evaluation benchmark over seeds (issues 4 and 19): each seed simulates its own subjects and fits its own
networks; one verdict, ``summary.json``, compares the tool's default method with every other method on paired test
volumes.

For each seed N, each in a fresh process under ``/usr/bin/time -v`` (wall time and peak memory), as a user would:

    hflow simulate --out WORK/seed-N/sim --voxel-size V --subjects-per-site S --split T --seed N --quiet
    hflow benchmark WORK/seed-N/sim/manifest.csv --out WORK/seed-N/report --variants V --settings X --profile P
        --seed N --overwrite --quiet

then ``summary.json``, ``summary.md`` and ``figures/summary.png`` over the seeds (:mod:`harmonizing_flows.evaluation.
summary`), each seed's ``tables.md``, ``results.json`` and figures under ``seed-N/``, the simulator's montage of
seed 0, and ``run.json`` (every command with its time and peak memory, the time per part of every setting, the
commit, the machine, the dates) into the output folder. The fitted networks stay in ``WORK``.

Resuming: run the same command again. A seed's simulation is reused once written; ``hflow benchmark`` reuses every
setting that finished with the same code, settings and data, so a run killed anywhere loses at most the setting
it was in, and its segmenters survive changes of the method's code. The benchmark runs one setting per call, and
each finished setting (a few hundred kB) is copied into ``--cells`` (in git, ``benchmarks/results/cells/``) and
back into a new ``WORK``: a run longer than one machine's life resumes on another one, from a checkout of the same
commit (the simulator writes the same bytes again, and data is keyed by its content). ``WORK/study.json`` records
the first run's settings; a later run with settings that change results is refused, naming the difference (use
another ``--work``). Seeds and settings may differ: a full run in the folder of a ``--quick`` run reuses its cells.

    python benchmarks/bench_evaluation.py --work /data/hflow-eval            # seeds 0,1,2, settings A-D
    python benchmarks/bench_evaluation.py --work /data/hflow-quick --quick   # seed 0, settings A and C
    python benchmarks/bench_evaluation.py --work /tmp/e --profile smoke --quick --subjects-per-site 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS, describe_machine, git_state, hflow_command, machine_info, run_timed, utc_now, write_json

# The default method's variant first (summary.json's default row), then the paper's method. Ablations (the Jacobian
# term, the likelihood-only flow) are left to `--variants`: each costs a setting minutes to an extra flow fit, and
# the full run needs all of a machine's three hours per four settings.
DEFAULT_VARIANTS = "curve,paper-faithful"
# The segmenter is the instrument: twice as wide as the fast profile's (which keeps `hflow demo` quick), it scores
# 86.8 Dice instead of 82.5 on its source's held-out volumes, for about twice the training time (calibrate_ceiling.py
# on calibration data, seed 100; results/ceiling/ceiling.json).
INSTRUMENT = ("segmenter.channels=[32, 64, 128, 256]",)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the data, the networks and the reports.")
    parser.add_argument("--profile", default="fast", help="Settings preset (default: fast).")
    parser.add_argument("--settings", default="A,B,C,D", help="Settings to run (default: A,B,C,D).")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="Method variants; the first is the default's.")
    parser.add_argument("--seeds", default="0,1,2", help="Seeds, each with its own subjects (default: 0,1,2).")
    parser.add_argument("--quick", action="store_true", help="Seed 0, settings A and C: a first look.")
    parser.add_argument("--subjects-per-site", type=int, default=16, help="Simulated subjects per site (16).")
    parser.add_argument("--split", default="0.5,0.125,0.375", help="Train,val,test shares (default: 8/2/6 of 16).")
    parser.add_argument("--min-test-volumes", type=int, default=6, help="Test volumes each target needs (6).")
    parser.add_argument("--output", type=Path, help="Report folder (default: benchmarks/results/benchmark-P[-quick]).")
    parser.add_argument("--cells", type=Path, help="Finished settings kept across machines (default: results/cells/P).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        help=f"A profile override for hflow benchmark (repeatable; default: {' '.join(INSTRUMENT)}).",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.settings = "0", "A,C"
    return args


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """What the run computes: a resumed run must ask for the same."""
    from harmonizing_flows.profiles import load_profile

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: give one or more different seeds, e.g. 0,1,2")
    return {
        "profile": args.profile,
        "voxel_size": load_profile(args.profile).slices.voxel_size,  # the simulation's: what the profile expects
        "settings": [x.strip() for x in args.settings.split(",") if x.strip()],
        "variants": [x.strip() for x in args.variants.split(",") if x.strip()],
        "seeds": seeds,
        "subjects_per_site": args.subjects_per_site,
        "split": [float(x) for x in args.split.split(",")],
        "overrides": list(INSTRUMENT if args.overrides is None else args.overrides),
    }


# What the results depend on. Seeds and settings only choose which cells of the study to compute: a --quick run
# and a full run can share a --work folder, the full run reusing the quick run's cells.
STUDY_KEYS = ("profile", "voxel_size", "variants", "subjects_per_site", "split", "overrides")


def check_plan(work: Path, plan: dict[str, Any], what: str = "--work") -> None:
    """Refuse to resume ``work`` (a work or a cells folder) with settings that change results
    (:data:`STUDY_KEYS`) other than its first run's; record them on a first run."""
    recorded = work / "study.json"
    plan = {key: plan[key] for key in STUDY_KEYS}
    if recorded.is_file():
        first = json.loads(recorded.read_text())
        changed = [f"{key}: {first.get(key)!r} then, {plan[key]!r} now" for key in plan if first.get(key) != plan[key]]
        if changed:
            raise SystemExit(
                f"{work} holds a run with other settings ({'; '.join(changed)}); rerun with the first run's "
                f"settings to resume it, or give another {what}"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json(recorded, plan)


def check_split(plan: dict[str, Any], min_test: int) -> None:
    """Refuse, before anything runs, a split that leaves a target fewer test volumes than asked for (or a site
    without training or validation subjects)."""
    from harmonizing_flows.data.datasets import split_counts

    train, val, test = split_counts(plan["subjects_per_site"], plan["split"])
    if test < min_test or train < 1 or val < 1:
        raise SystemExit(
            f"--subjects-per-site {plan['subjects_per_site']} with --split {plan['split']} gives {train} training, "
            f"{val} validation and {test} test subjects per site; the benchmark needs one training and one validation "
            f"subject at least and {min_test} test volumes per target (--min-test-volumes): give more subjects or "
            "another split"
        )


def _run(command: list[str]) -> dict[str, Any]:
    print("$ " + " ".join(command), flush=True)
    run = run_timed(command, echo=True)  # the benchmark's log lines as they come: it runs for hours
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])  # its standard output is already on the screen
        raise SystemExit(f"failed with exit status {run.returncode}: {' '.join(command)}")
    print(f"  {run.wall_s:.0f} s, peak {run.peak_rss_bytes / 2**30:.2f} GiB", flush=True)
    return run.summary()


def carry_cell(source: Path, into: Path, letter: str) -> bool:
    """Copy a finished setting (``LETTER.npz`` then ``LETTER.json``, the file that marks it finished) from one
    ``settings`` folder to another, unless ``into`` holds the same; True when copied. Whether it is reused stays
    the benchmark's decision: it compares the cell's key with the code, settings and data of the run."""
    files = [source / f"{letter}.npz", source / f"{letter}.json"]
    if not all(f.is_file() for f in files):
        return False
    if all((into / f.name).is_file() and (into / f.name).read_bytes() == f.read_bytes() for f in files):
        return False
    into.mkdir(parents=True, exist_ok=True)
    (into / files[1].name).unlink(missing_ok=True)  # never an old JSON beside a new archive
    for f in files:
        tmp = into / f".{f.name}.partial"
        shutil.copyfile(f, tmp)
        tmp.replace(into / f.name)
    return True


def _load(report: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from harmonizing_flows.evaluation.results import SettingResult

    document = json.loads((report / "results.json").read_text())
    return {x: SettingResult.from_json(r) for x, r in document["results"].items()}, document["meta"]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    plan = _plan(args)
    check_split(plan, args.min_test_volumes)
    check_plan(args.work, plan)
    output = args.output or RESULTS / f"benchmark-{args.profile}{'-quick' if args.quick else ''}"
    cells = args.cells or RESULTS / "cells" / args.profile
    check_plan(cells, plan, "--cells")  # the kept cells of one study: an ablation keeps its own
    hflow = hflow_command()
    state, machine, started = git_state(), machine_info(), utc_now()
    print(f"commit {state['commit']}{' (with uncommitted changes)' if state['src_modified'] else ''}; "
          f"{describe_machine(machine)}")  # fmt: skip
    runs, reports = [], {}
    for seed in plan["seeds"]:
        sim, reports[seed] = args.work / f"seed-{seed}" / "sim", args.work / f"seed-{seed}" / "report"
        if not (sim / "manifest.csv").is_file():
            runs.append(_run([*hflow, "simulate", "--out", str(sim), "--voxel-size", f"{plan['voxel_size']:g}",
                              "--subjects-per-site",
                              str(plan["subjects_per_site"]), "--split", args.split, "--seed", str(seed),
                              "--overwrite", "--quiet"]))  # fmt: skip
        benchmark = [*hflow, "benchmark", str(sim / "manifest.csv"), "--out", str(reports[seed]), "--overwrite",
                     "--variants", args.variants, "--profile", args.profile, "--seed", str(seed),
                     *[a for o in plan["overrides"] for a in ("--set", o)], "--quiet"]  # fmt: skip
        kept, finished = cells / f"seed-{seed}", reports[seed] / "settings"
        for letter in plan["settings"]:  # one call per setting: each finished one is kept before the next starts
            if not (finished / f"{letter}.json").is_file():  # this machine's own finished cell comes first
                carry_cell(kept, finished, letter)
            runs.append(_run([*benchmark, "--settings", letter]))
            if carry_cell(finished, kept, letter):
                print(f"  kept {kept / letter}.json", flush=True)
        runs.append(_run([*benchmark, "--settings", ",".join(plan["settings"])]))  # the seed's report, all reused
    from harmonizing_flows.evaluation.report import write_summary
    from harmonizing_flows.evaluation.summary import summarize

    loaded = {seed: _load(report) for seed, report in reports.items()}
    results = {seed: r for seed, (r, _) in loaded.items()}
    sites = loaded[plan["seeds"][0]][1]["sites"]
    summary = summarize(results, sites, plan["variants"])
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_summary(results, summary, tmp)
    shutil.copy2(args.work / f"seed-{plan['seeds'][0]}" / "sim" / "montage.png", tmp / "figures" / "montage.png")
    for seed, report in reports.items():
        into = tmp / f"seed-{seed}"
        into.mkdir()
        for name in ("tables.md", "results.json"):
            shutil.copy2(report / name, into / name)
        shutil.copytree(report / "figures", into / "figures")
    timings = {f"seed {s}, setting {x}": {"seconds": r.seconds, **r.timings} for s, rs in results.items()
               for x, r in rs.items()}  # fmt: skip
    write_json(tmp / "run.json", {"plan": plan, "runs": runs, "timings": timings, "git": state, "machine": machine,
                                  "started": started, "finished": utc_now()})  # fmt: skip
    shutil.rmtree(output, ignore_errors=True)
    tmp.replace(output)
    if args.output is None and not args.quick and args.profile == "fast":  # the project's verdict (issue 19)
        for name in ("summary.json", "summary.md"):
            shutil.copy2(output / name, RESULTS / name)
    print((output / "summary.md").read_text())
    print(f"report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
