"""The fast-profile evaluation benchmark (issue 4): simulate the sites, run ``hflow benchmark``, keep the report.

What it runs, each in a fresh process under ``/usr/bin/time -v`` (wall time and peak memory), as a user would:

    hflow simulate --out WORK/sim --voxel-size 2 --subjects-per-site 10 --quiet
    hflow benchmark WORK/sim/manifest.csv --out WORK/report --variants V --settings S --profile P --seed N --quiet

and then copies the report's ``tables.md``, ``results.json`` and ``figures/`` (never the fitted networks) to
``benchmarks/results/benchmark-<profile>/`` with ``run.json``: both commands, their wall times and peak memory, the
git commit, the machine and the dates. ``WORK`` is kept: run again with the same ``--work`` and the benchmark
reuses what it computed with the same code: the networks it fitted (same profile, same training files), and every
setting that finished with the same settings and data, so an interrupted run resumes at the setting it was in
(each setting's own time is in ``results.json``). Changing the variants re-evaluates every setting but refits only
the new variants' networks. On two CPU cores the fast profile over settings A-D took 69 minutes for the default
variant alone (``--variants paper-faithful``) and, with all four variants and 200 adaptation steps (now 100),
about five hours on a slow day.

    python benchmarks/bench_evaluation.py --work /data/hflow-eval                     # A-D, all variants
    python benchmarks/bench_evaluation.py --work /data/hflow-eval --seeds 0,1,2       # three times as long
    python benchmarks/bench_evaluation.py --work /tmp/e --profile smoke --settings A  # a quick check

With several seeds, each seed's report goes to ``seed-N/`` (its work folder is ``WORK/report-seedN``; seed 0
keeps ``WORK/report``) and ``seeds.md`` gives each method's average Dice per seed and its spread over seeds:
a seed changes the networks' initial weights and every random draw, and one run cannot say which differences
between methods outlast that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS, describe_machine, git_state, hflow_command, machine_info, run_timed, utc_now, write_json

ALL_VARIANTS = "paper-faithful,positive-alpha,brain-only,collapse-negatives"  # Table 1 shows the first: the default


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the data, the networks and the report.")
    parser.add_argument("--profile", default="fast", help="Settings preset (default: fast).")
    parser.add_argument("--settings", default="A,B,C,D", help="Settings to run (default: A,B,C,D).")
    parser.add_argument("--variants", default=ALL_VARIANTS, help="Method variants (default: all four).")
    parser.add_argument("--seeds", default="0", help="Seeds to run, e.g. 0,1,2 (default: 0).")
    parser.add_argument("--subjects-per-site", type=int, default=10, help="Simulated subjects per site (10).")
    parser.add_argument("--output", type=Path, help="Where the report goes (default: benchmarks/results/benchmark-P).")
    return parser.parse_args(argv)


def _run(command: list[str]) -> dict[str, Any]:
    print("$ " + " ".join(command), flush=True)
    run = run_timed(command, echo=True)  # the benchmark's log lines as they come: it runs for hours
    if run.returncode != 0:
        sys.stderr.write(run.stderr[-4000:])  # its standard output is already on the screen
        raise SystemExit(f"failed with exit status {run.returncode}: {' '.join(command)}")
    print(f"  {run.wall_s:.0f} s, peak {run.peak_rss_bytes / 2**30:.2f} GiB", flush=True)
    return run.summary()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    output = args.output or RESULTS / f"benchmark-{args.profile}"
    hflow = hflow_command()
    state, machine, started = git_state(), machine_info(), utc_now()
    print(f"commit {state['commit']}{' (with uncommitted changes)' if state['src_modified'] else ''}; "
          f"{describe_machine(machine)}")  # fmt: skip
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {args.seeds!r}: give one or more different seeds, e.g. 0,1,2")
    sim = args.work / "sim"
    runs = []
    if not (sim / "manifest.csv").is_file():
        runs.append(_run([*hflow, "simulate", "--out", str(sim), "--voxel-size", "2",
                          "--subjects-per-site", str(args.subjects_per_site), "--quiet"]))  # fmt: skip
    reports = {}
    for seed in seeds:
        reports[seed] = args.work / ("report" if seed == 0 else f"report-seed{seed}")
        runs.append(_run([*hflow, "benchmark", str(sim / "manifest.csv"), "--out", str(reports[seed]),
                          "--overwrite", "--variants", args.variants, "--settings", args.settings, "--profile",
                          args.profile, "--seed", str(seed), "--quiet"]))  # fmt: skip
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for seed, report in reports.items():
        into = tmp if len(seeds) == 1 else tmp / f"seed-{seed}"
        into.mkdir(exist_ok=True)
        for name in ("tables.md", "results.json"):
            shutil.copy2(report / name, into / name)
        shutil.copytree(report / "figures", into / "figures")
    if len(seeds) > 1:
        from harmonizing_flows.evaluation.report import render_seeds
        from harmonizing_flows.evaluation.results import SettingResult

        results = {
            seed: {
                letter: SettingResult.from_json(setting)
                for letter, setting in json.loads((r / "results.json").read_text())["results"].items()
            }
            for seed, r in reports.items()
        }
        variants = [x.strip() for x in args.variants.split(",") if x.strip()]
        (tmp / "seeds.md").write_text(f"# The benchmark over seeds {args.seeds}\n\n" + render_seeds(results, variants))
    write_json(tmp / "run.json", {"runs": runs, "git": state, "machine": machine, "started": started,
                                  "finished": utc_now()})  # fmt: skip
    shutil.rmtree(output, ignore_errors=True)
    tmp.replace(output)
    print(f"report: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
