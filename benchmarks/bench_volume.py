"""Benchmark of volume I/O: ``slice_volume(load_volume(image, mask, labels), SliceConfig())`` on a 1 mm volume.

What is measured: the wall time of reading one 1 mm T1w image with its brain mask and label map (gzipped NIfTI),
checking them, reorienting them to RAS, and quantizing and cutting them into 224 x 224 coronal slices with the
labels mapped to classes, in this process. The first call is reported on its own as the cold run (it pays for
whatever the libraries set up on first use; the files themselves are likely in the OS page cache, which this script
does not drop); the following ``--repeats`` calls give the median and the minimum. The time of the load and slice
steps is also reported apart.

Target: median warm time under 0.5 s (the cold run is reported, and checked against the same target, for information).

The volume is made with the simulator (``hflow simulate --voxel-size 1 --sites mprage-3t --subjects-per-site 3``;
3 is the fewest subjects the simulator accepts) in a temporary folder that is deleted afterwards, and the first
subject is used; or pass ``--image`` (with ``--mask`` and ``--labels``) to time your own files. The numbers, the
command, the git commit, the machine and the date are printed and written to ``benchmarks/results/volume.json``.
When the target is missed, a cProfile of one call is printed. Exit status: 0 on PASS, 1 on FAIL, 2 on an error.

    python benchmarks/bench_volume.py
    python benchmarks/bench_volume.py --image t1.nii.gz --mask mask.nii.gz --labels aseg.nii.gz --repeats 20
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    describe_machine,
    git_state,
    hflow_command,
    machine_info,
    manifest_rows,
    run_timed,
    utc_now,
    verdict,
    write_json,
)
from harmonizing_flows.config import SliceConfig
from harmonizing_flows.data.volume import load_volume, slice_volume

TARGET_S = 0.5


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, help="Time this image instead of a simulated one.")
    parser.add_argument("--mask", type=Path, help="Its brain mask (with --image).")
    parser.add_argument("--labels", type=Path, help="Its label map (with --image).")
    parser.add_argument("--site", default="mprage-3t", help="Simulated site when no --image (default: %(default)s).")
    parser.add_argument("--voxel-size", type=float, default=1.0, help="Simulated voxel size in mm (default: 1).")
    parser.add_argument("--repeats", type=int, default=10, help="Warm runs after the cold one (default: 10).")
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "volume.json", help="JSON result (default: %(default)s)."
    )
    args = parser.parse_args(argv)
    if args.image is None and (args.mask or args.labels):
        parser.error("--mask and --labels go with --image")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _simulate(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path | None, Path | None, dict[str, Any]]:
    out = tmp / "sim"
    command = [*hflow_command(), "simulate", "--out", str(out), "--voxel-size", f"{args.voxel_size:g}"]
    command += ["--sites", args.site, "--subjects-per-site", "3", "--quiet"]
    print(f"generating the volume: $ {shlex.join(command)}")
    run = run_timed(command)
    if run.returncode != 0:
        raise RuntimeError(f"hflow failed with exit status {run.returncode}:\n{run.stderr[-4000:]}")
    print(f"  done in {run.wall_s:.1f} s")
    row = manifest_rows(out)[0]
    return out / row["image"], out / row["mask"], out / row["labels"], {**run.summary(), "subject": row["subject"]}


def _timed_call(image: Path, mask: Path | None, labels: Path | None) -> tuple[dict[str, float], Any]:
    start = time.perf_counter()
    volume = load_volume(image, mask, labels)
    loaded = time.perf_counter()
    sliced = slice_volume(volume, SliceConfig())
    end = time.perf_counter()
    return {"total_s": end - start, "load_s": loaded - start, "slice_s": end - loaded}, (volume, sliced)


def _profile(image: Path, mask: Path | None, labels: Path | None) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(lambda: slice_volume(load_volume(image, mask, labels), SliceConfig()))
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats(20)
    return text.getvalue()


def _measure(args: argparse.Namespace, image: Path, mask: Path | None, labels: Path | None) -> dict[str, Any]:
    cold, (volume, sliced) = _timed_call(image, mask, labels)
    warm = [_timed_call(image, mask, labels)[0] for _ in range(args.repeats)]
    totals = [w["total_s"] for w in warm]
    median = statistics.median(totals)
    return {
        "input": {
            "image": image.name,
            "mask": mask.name if mask else None,
            "labels": labels.name if labels else None,
            "bytes": sum(p.stat().st_size for p in (image, mask, labels) if p is not None),
            "shape_on_disk": list(volume.native_shape),
            "shape_ras": list(volume.image.shape),
            "slices": list(sliced.images.shape),
        },
        "cold": cold,
        "warm": {
            "repeats": args.repeats,
            "median_s": median,
            "min_s": min(totals),
            "max_s": max(totals),
            "median_load_s": statistics.median(w["load_s"] for w in warm),
            "median_slice_s": statistics.median(w["slice_s"] for w in warm),
            "all_s": totals,
        },
        "target_s": TARGET_S,
        "pass": median < TARGET_S,
        "cold_within_target": cold["total_s"] < TARGET_S,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    machine, git, date = machine_info(), git_state(), utc_now()
    invocation = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"volume I/O benchmark, {date}, commit {git['commit']}{' (src modified)' if git['src_modified'] else ''}")
    print(f"code: {git['code']}")
    print(f"machine: {describe_machine(machine)}; load average {machine['load_average_at_start']}")

    generated = None
    with tempfile.TemporaryDirectory(prefix="hflow-bench-volume-") as scratch:
        if args.image is None:
            try:
                image, mask, labels, generated = _simulate(args, Path(scratch))
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 2
        else:
            image, mask, labels = args.image, args.mask, args.labels
        result = _measure(args, image, mask, labels)
        profile = None if result["pass"] else _profile(image, mask, labels)

    inp, cold, warm = result["input"], result["cold"], result["warm"]
    print(f"\ninput: {inp['image']} (+ {inp['mask']}, {inp['labels']}), {inp['bytes'] / 1e6:.1f} MB on disk")
    print(f"  shape on disk {inp['shape_on_disk']}, RAS {inp['shape_ras']} -> slices {inp['slices']}")
    print(
        f"cold (first call): {cold['total_s']:.3f} s (load {cold['load_s']:.3f} s + slice {cold['slice_s']:.3f} s)"
        f"  [{'within' if result['cold_within_target'] else 'over'} {TARGET_S} s]"
    )
    print(
        f"warm, {warm['repeats']} calls: median {warm['median_s']:.3f} s, min {warm['min_s']:.3f} s, "
        f"max {warm['max_s']:.3f} s (median load {warm['median_load_s']:.3f} s + slice {warm['median_slice_s']:.3f} s)"
    )
    print(f"target: median < {TARGET_S} s -> {verdict(result['pass'])}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS of this process: {peak / 2**20:.0f} MiB")
    if profile:
        print(f"\ncProfile of one call:\n{profile}")

    write_json(
        args.output,
        {
            "benchmark": "slice_volume(load_volume(image, mask, labels), SliceConfig()), in-process",
            "command": invocation,
            "commit": git["commit"],
            "src_modified": git["src_modified"],
            "code": git["code"],
            "date_utc": date,
            "machine": machine,
            "generated_with": generated,
            **result,
            "peak_rss_bytes_of_benchmark_process": peak,
        },
    )
    print(f"\nwritten {args.output}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
