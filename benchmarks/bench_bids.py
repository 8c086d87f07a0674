"""The BIDS app on simulated data (issue 21): its speed on a new site, and whether its QC flag catches what it should.

1. ``hflow simulate --layout bids``: a source site and a target site of N participants each at 1 mm (the
   speed target's resolution), and scans of the target site with a strong artefact, simulated as sites of their
   own (:data:`ARTEFACTS`: heavy noise, a severe bias field, a T2-weighted spin echo given as T1w).
2. ``hflow bids RAW OUT group --source-site SOURCE`` (timed).
3. ``hflow bids RAW OUT participant --participant-label <the target's>``: adapting once to the new site and
   harmonizing its N scans, timed (the target: 5 minutes for 10 scans at 1 mm, fast profile, 2 cores); then the
   same call again, which must reuse the adapted model (timed too).
4. The artefact scans join the dataset as new scans *of the target site* (participants.tsv says so) and are
   harmonized by its adapted model; then the source site's scans.
5. The QC flag's rates: the share of clean scans (target, source validation, source training) and of each
   artefact's scans that are flagged. The flag's limit was fixed before this ran (bids.qc.Z_FLAG).

Writes ``benchmarks/results/bids/bids.json`` (every command's time and peak memory, the rates, the commit), the QC
table, and, when Chromium is installed, a screenshot of the group report (``docs/images/bids-report.png``).

    python benchmarks/bench_bids.py --work /tmp/bids-bench                 # 10 participants per site, 1 mm
    python benchmarks/bench_bids.py --work /tmp/b --profile smoke --voxel-size 4 --subjects 6   # a quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS,
    describe_machine,
    git_state,
    hflow_command,
    machine_info,
    run_timed,
    utc_now,
    write_json,
)

SOURCE, TARGET = "mprage-3t", "spgr-15t"
ARTEFACTS = {  # the target site's protocol with one strong fault each (site-file keys; see simulate.sites)
    "noise": {"snr": 4.0},  # five times the target's noise
    "bias": {"bias_range": 1.2, "coil_bias": 0.8},  # a field that more than halves the signal across the brain
    "t2w": {"sequence": "spin_echo", "tr_ms": 4000.0, "te_ms": 100.0, "flip_deg": 90.0},  # a T2w scan
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the data and the derivatives.")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--voxel-size", type=float, default=1.0, help="Simulated voxel size in mm (1).")
    parser.add_argument("--subjects", type=int, default=10, help="Participants per clean site (10).")
    parser.add_argument("--artefact-subjects", type=int, default=4, help="Scans per artefact (4).")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--output", type=Path, default=RESULTS / "bids", help="Where the results go.")
    return parser.parse_args(argv)


def _sites_file(path: Path) -> Path:
    from harmonizing_flows.simulate import BUILTIN_SITES

    target = BUILTIN_SITES[TARGET].to_dict()
    lines = []
    for name, changes in ARTEFACTS.items():
        site = {k: v for k, v in target.items() if k not in ("name", "tissues", "structures")}
        site.update(changes, description=f"{TARGET} with a fault: {name}")
        lines.append(f"[sites.{TARGET}-{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in site.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(command: list[str], runs: list[dict[str, Any]], name: str) -> float:
    print("$ " + " ".join(command), flush=True)
    done = run_timed(command, echo=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    runs.append({"step": name, **done.summary()})
    print(f"  {name}: {done.wall_s:.0f} s, peak {done.peak_rss_bytes / 2**30:.2f} GiB", flush=True)
    return done.wall_s


def _join(raw: Path, extra: Path) -> list[str]:
    """Copy the artefact scans into ``raw`` as scans of the target site; their participant labels."""
    labels = []
    with (extra / "participants.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with (raw / "participants.tsv").open("a", newline="") as f:
        for row in rows:
            shutil.copytree(extra / row["participant_id"], raw / row["participant_id"])
            f.write(f"{row['participant_id']}\t{TARGET}\tn/a\n")  # the site the user says it came from
            labels.append(row["participant_id"].removeprefix("sub-"))
    return labels


def _rates(table: Path, out: Path) -> dict[str, Any]:
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    model = json.loads((out / "models" / "source" / "model.json").read_text())
    validation = set(model["source_subjects"]["val"])
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        name = row["participant_id"]
        kind = next((k for k in ARTEFACTS if name.endswith(tuple(f"{k}{i:03d}" for i in range(1000)))), None)
        if kind is not None:
            group = f"artefact: {kind}"
        elif row["site"] == row["source_site"]:
            group = "clean source (validation)" if name in validation else "clean source (training)"
        else:
            group = "clean target"
        groups.setdefault(group, []).append(row)
    rates = {}
    for group, members in sorted(groups.items()):
        flagged = sum(r["flagged"] == "true" for r in members)
        rates[group] = {"scans": len(members), "flagged": flagged, "rate": flagged / len(members),
                        "z_after": [float(r["z_after"]) for r in members]}  # fmt: skip
    return rates


def _screenshot(report: Path, png: Path) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    png.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={report.parent / '.chromium'}", "--window-size=1200,1500"]  # fmt: skip
    done = subprocess.run([chromium, *flags, f"--screenshot={png}", report.as_uri()], capture_output=True, timeout=300)
    shutil.rmtree(report.parent / ".chromium", ignore_errors=True)
    return done.returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    hflow, runs = hflow_command(), []
    state, machine, started = git_state(), machine_info(), utc_now()
    print(f"commit {state['commit']}; {describe_machine(machine)}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    raw, extra, out = args.work / "raw", args.work / "artefacts", args.work / "derivatives"
    for folder in (raw, extra, out):
        shutil.rmtree(folder, ignore_errors=True)
    common = ["--voxel-size", f"{args.voxel_size:g}", "--layout", "bids", "--seed", str(args.seed), "--quiet"]
    _run([*hflow, "simulate", "--out", str(raw), "--sites", f"{SOURCE},{TARGET}", "--subjects-per-site",
          str(args.subjects), *common], runs, "simulate")  # fmt: skip
    sites = ",".join(f"{TARGET}-{k}" for k in ARTEFACTS)
    _run([*hflow, "simulate", "--out", str(extra), "--sites", sites, "--sites-file",
          str(_sites_file(args.work / "artefacts.toml")), "--subjects-per-site", str(args.artefact_subjects),
          *common], runs, "simulate artefacts")  # fmt: skip
    bids = [*hflow, "bids", str(raw), str(out)]
    _run([*bids, "group", "--source-site", SOURCE, "--profile", args.profile, "--quiet"], runs, "group")
    with (raw / "participants.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    target = ",".join(r["participant_id"].removeprefix("sub-") for r in rows if r["site"] == TARGET)
    source = ",".join(r["participant_id"].removeprefix("sub-") for r in rows if r["site"] == SOURCE)
    first = _run([*bids, "participant", "--participant-label", target, "--quiet"], runs, "participant: new site")
    again = _run([*bids, "participant", "--participant-label", target, "--quiet"], runs, "participant: again")
    labels = _join(raw, extra)
    _run([*bids, "participant", "--participant-label", ",".join(labels), "--quiet"], runs, "participant: artefacts")
    _run([*bids, "participant", "--participant-label", source, "--quiet"], runs, "participant: source site")
    rates = _rates(out / "group_T1w_qc.tsv", out)
    args.output.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "group_T1w_qc.tsv", args.output / "group_T1w_qc.tsv")
    shot = _screenshot(out / "report.html", REPO / "docs" / "images" / "bids-report.png")
    write_json(args.output / "bids.json", {
        "plan": vars(args) | {"work": str(args.work), "output": str(args.output), "artefacts": ARTEFACTS},
        "new_site_seconds": first, "second_call_seconds": again, "rates": rates, "runs": runs,
        "screenshot": shot, "git": state, "machine": machine, "started": started, "finished": utc_now(),
    })  # fmt: skip
    print(f"participant on a new site of {args.subjects} scans: {first:.0f} s (again: {again:.0f} s)")
    for group, rate in rates.items():
        print(f"  {group}: {rate['flagged']} of {rate['scans']} flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
