"""Benchmark of ``hflow simulate``, run from the command line as a user would run it.

What is measured: for each voxel size, ``hflow simulate --out <tmp> --voxel-size V --overwrite --quiet`` (by default
the 4 built-in sites x 20 subjects each, plus the travelling subject of the montage) in a fresh process, under
``/usr/bin/time -v`` when available:

* wall time, from starting the process to its exit (so interpreter start-up, imports, loading fsaverage, the
  simulation, writing the NIfTI files, the montage and the manifest all count);
* peak memory: the "Maximum resident set size" of the process (or of its largest descendant); without GNU time,
  ``getrusage(RUSAGE_CHILDREN)``.

Targets (every repeat must meet them): 2 mm in under 60 s, 1 mm in under 300 s, and a peak resident set size under
4 GB (4e9 bytes) at every voxel size. Other voxel sizes get only the memory target.

The data go to a temporary folder that is deleted afterwards. The numbers, the command, the git commit, the machine
and the date are printed and written to ``benchmarks/results/simulate.json``. Exit status: 0 when every target is
met, 1 when one is missed, 2 when ``hflow`` fails.

    python benchmarks/bench_simulate.py                        # 2 mm and 1 mm, 1 repeat each
    python benchmarks/bench_simulate.py --voxel-size 2 --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    TimedRun,
    describe_machine,
    folder_bytes,
    git_state,
    hflow_command,
    machine_info,
    manifest_rows,
    run_timed,
    utc_now,
    verdict,
    write_json,
)

TIME_TARGETS_S = {2.0: 60.0, 1.0: 300.0}
PEAK_TARGET_BYTES = 4_000_000_000
BUILTIN_SITE_COUNT = 4


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--voxel-size",
        type=float,
        action="append",
        help="Voxel size in mm; repeat the option for several (default: 2 and 1).",
    )
    parser.add_argument("--subjects-per-site", type=int, default=20, help="Subjects per site (default: 20).")
    parser.add_argument("--sites", help="Comma-separated sites, passed to hflow (default: the 4 built-in sites).")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per voxel size (default: 1).")
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "simulate.json", help="JSON result (default: %(default)s)."
    )
    parser.add_argument("--tmp-parent", type=Path, help="Where to make the temporary output folder (default: system).")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="After the timed runs, run once more per voxel size in-process under cProfile (not timed), "
        "write DIR/simulate-<V>mm.prof and print the top functions.",
    )
    args = parser.parse_args(argv)
    args.voxel_size = args.voxel_size or [2.0, 1.0]
    if args.repeats < 1 or args.subjects_per_site < 1:
        parser.error("--repeats and --subjects-per-site must be at least 1")
    return args


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB ({n / 1e9:.2f} GB)"


def _one_run(base: list[str], voxel: float, args: argparse.Namespace, tmp: Path) -> tuple[TimedRun, dict[str, Any]]:
    out = tmp / f"sim-{voxel:g}mm"
    command = [*base, "simulate", "--out", str(out), "--voxel-size", f"{voxel:g}", "--overwrite", "--quiet"]
    command += ["--subjects-per-site", str(args.subjects_per_site)]
    if args.sites:
        command += ["--sites", args.sites]
    run = run_timed(command)
    if run.returncode != 0:
        return run, {}
    rows = manifest_rows(out)
    output = {"subjects": len(rows), "sites": len({r["site"] for r in rows}), "bytes": folder_bytes(out)}
    return run, output


def _profile(voxel: float, args: argparse.Namespace, folder: Path, tmp: Path) -> None:
    from harmonizing_flows.config import SimulationConfig
    from harmonizing_flows.simulate import simulate

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"simulate-{voxel:g}mm.prof"
    config = SimulationConfig(subjects_per_site=args.subjects_per_site, voxel_size=voxel)
    sites = [s.strip() for s in args.sites.split(",")] if args.sites else None
    profiler = cProfile.Profile()
    profiler.runcall(simulate, tmp / f"prof-{voxel:g}mm", config=config, sites=sites, progress=False, overwrite=True)
    profiler.dump_stats(target)
    print(f"\ncProfile of simulate() at {voxel:g} mm (untimed run), written to {target}:")
    stats = pstats.Stats(str(target)).strip_dirs()
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    machine, git, date = machine_info(), git_state(), utc_now()
    base = hflow_command()
    invocation = shlex.join([Path(sys.executable).name, *sys.argv])
    n_sites = len(args.sites.split(",")) if args.sites else BUILTIN_SITE_COUNT
    print(f"hflow simulate benchmark, {date}, commit {git['commit']}{' (src modified)' if git['src_modified'] else ''}")
    print(f"code: {git['code']}")
    print(f"machine: {describe_machine(machine)}; load average {machine['load_average_at_start']}")
    print(
        f"{n_sites} sites x {args.subjects_per_site} subjects, "
        f"voxel sizes {args.voxel_size} mm, {args.repeats} repeat(s)"
    )

    results: list[dict[str, Any]] = []
    failed_run = False
    with tempfile.TemporaryDirectory(prefix="hflow-bench-simulate-", dir=args.tmp_parent) as scratch:
        tmp = Path(scratch)
        for voxel in args.voxel_size:
            runs = []
            for repeat in range(args.repeats):
                run, output = _one_run(base, voxel, args, tmp)
                print(f"\n$ {shlex.join(run.command)}")
                if run.returncode != 0:
                    print(f"hflow failed with exit status {run.returncode}:\n{run.stderr[-4000:]}", file=sys.stderr)
                    failed_run = True
                    break
                print(
                    f"{voxel:g} mm, run {repeat + 1}/{args.repeats}: wall {run.wall_s:.1f} s, "
                    f"peak RSS {_mb(run.peak_rss_bytes)}, CPU user {run.user_s:.1f} s + sys {run.sys_s:.1f} s; "
                    f"wrote {output['subjects']} subjects at {output['sites']} sites, {output['bytes'] / 1e6:.0f} MB"
                )
                runs.append({**run.summary(), "output": output})
            if not runs:
                continue
            walls = [r["wall_s"] for r in runs]
            peak = max(r["peak_rss_bytes"] for r in runs)
            time_target = TIME_TARGETS_S.get(voxel)
            checks = {
                "peak_rss": {"target_bytes": PEAK_TARGET_BYTES, "worst_bytes": peak, "pass": peak < PEAK_TARGET_BYTES}
            }
            if time_target is not None:
                checks["wall"] = {"target_s": time_target, "worst_s": max(walls), "pass": max(walls) < time_target}
            results.append(
                {
                    "voxel_size_mm": voxel,
                    "sites": n_sites,
                    "subjects_per_site": args.subjects_per_site,
                    "wall_s": {"median": statistics.median(walls), "min": min(walls), "max": max(walls)},
                    "peak_rss_bytes": peak,
                    "checks": checks,
                    "runs": runs,
                }
            )
        if args.profile:
            for voxel in args.voxel_size:
                _profile(voxel, args, args.profile, tmp)

    print("\nvoxel  wall (median / worst)   target    peak RSS                 target    verdict")
    all_pass = not failed_run
    for r in results:
        wall, peak = r["checks"].get("wall"), r["checks"]["peak_rss"]
        wall_target = f"< {wall['target_s']:.0f} s" if wall else "none"
        verdicts = [f"time {verdict(wall['pass'])}"] if wall else []
        verdicts.append(f"memory {verdict(peak['pass'])}")
        all_pass &= all(c["pass"] for c in r["checks"].values())
        print(
            f"{r['voxel_size_mm']:g} mm   {r['wall_s']['median']:7.1f} / {r['wall_s']['max']:7.1f} s   {wall_target:8s}"
            f"  {_mb(r['peak_rss_bytes']):24s} < 4 GB    {', '.join(verdicts)}"
        )

    write_json(
        args.output,
        {
            "benchmark": "hflow simulate (CLI, fresh process per run)",
            "command": invocation,
            "commit": git["commit"],
            "src_modified": git["src_modified"],
            "code": git["code"],
            "date_utc": date,
            "machine": machine,
            "targets": {
                "wall_s": {f"{k:g}mm": v for k, v in TIME_TARGETS_S.items()},
                "peak_rss_bytes": PEAK_TARGET_BYTES,
            },
            "results": results,
            "all_pass": all_pass and not failed_run,
        },
    )
    print(f"\nwritten {args.output}")
    if failed_run:
        return 2
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
