"""Helpers shared by the benchmark scripts: where the code and machine stand, and timed runs of ``hflow``.

Not a benchmark itself. The scripts in this folder import it as ``_common`` (Python puts the script's folder first
on ``sys.path``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
GNU_TIME = "/usr/bin/time"


# --------------------------------------------------------------------------------------------- provenance


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def code_folder() -> Path | None:
    """The folder of the ``harmonizing_flows`` package that ``import`` finds (and ``hflow`` runs), not imported."""
    spec = importlib.util.find_spec("harmonizing_flows")
    return Path(spec.origin).resolve().parent if spec and spec.origin else None


def git_state() -> dict[str, Any]:
    """Where the measured code is, the short commit of its checkout's HEAD, and whether its ``src/`` or
    ``pyproject.toml`` differ from that commit (uncommitted changes would be measured too)."""
    folder = code_folder()

    def git(*args: str) -> str:
        if folder is None:
            return ""
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    top = git("rev-parse", "--show-toplevel")
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("-C", top, "status", "--porcelain", "--", "src", "pyproject.toml") if top else ""
    return {"commit": commit, "src_modified": bool(changed), "code": str(folder)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python and the versions of the libraries the measured code leans on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_bytes": _ram_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "nibabel": _version("nibabel"),
        "harmonizing_flows": _version("harmonizing-flows"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def describe_machine(machine: dict[str, Any]) -> str:
    ram = f"{machine['ram_bytes'] / 2**30:.1f} GiB RAM" if machine.get("ram_bytes") else "RAM unknown"
    return (
        f"{machine['cpu']}, {machine['usable_cores']} of {machine['logical_cores']} cores usable, {ram}; "
        f"Python {machine['python']}, torch {machine['torch']}, numpy {machine['numpy']}, nibabel {machine['nibabel']}"
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- running hflow


def hflow_command() -> list[str]:
    """The ``hflow`` entry point of the running interpreter's environment (or ``python -m`` if not installed)."""
    beside = Path(sys.executable).parent / "hflow"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("hflow")
    if found:
        return [found]
    return [sys.executable, "-m", "harmonizing_flows.cli"]


@dataclass
class TimedRun:
    """One timed child process.

    Attributes:
        command: What was run (without the ``/usr/bin/time`` wrapper).
        wall_s: Wall time measured around the child, start of the process to its exit.
        peak_rss_bytes: Maximum resident set size of the child, or of its largest descendant (what
            ``getrusage``'s ``ru_maxrss`` means; not a sum over processes).
        user_s, sys_s: CPU time of the child and its descendants.
        rss_source: ``"/usr/bin/time -v"`` or ``"getrusage(RUSAGE_CHILDREN)"``; the latter is the largest over every
            child this process has waited for so far, so only an upper bound for runs after the first.
        returncode, stdout, stderr: As from :func:`subprocess.run`.
    """

    command: list[str]
    wall_s: float
    peak_rss_bytes: int
    user_s: float
    sys_s: float
    rss_source: str
    returncode: int
    stdout: str
    stderr: str

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["command"] = shlex.join(self.command)
        del out["stdout"], out["stderr"]
        return out


def _parse_gnu_time(text: str) -> dict[str, float]:
    fields = {
        "Maximum resident set size (kbytes)": "maxrss_kb",
        "User time (seconds)": "user_s",
        "System time (seconds)": "sys_s",
    }
    found: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in fields and re.fullmatch(r"[0-9.]+", value):
            found[fields[key]] = float(value)
    return found


def run_timed(command: list[str], *, use_gnu_time: bool = True, echo: bool = False) -> TimedRun:
    """Run ``command`` to completion, timing it and recording its peak memory (see :class:`TimedRun`).

    With ``echo`` its standard output is also printed line by line as it comes, for runs of hours.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrap = use_gnu_time and os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="hflow-bench-time-") as scratch:
        report = Path(scratch) / "time.txt"
        full = [GNU_TIME, "-v", "-o", str(report), *command] if wrap else command
        start = time.perf_counter()
        if echo:
            done = _run_echoing(full, Path(scratch) / "stderr.txt")
        else:
            done = subprocess.run(full, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        gnu = _parse_gnu_time(report.read_text()) if wrap and report.is_file() else {}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "maxrss_kb" in gnu:
        peak, user, system, source = int(gnu["maxrss_kb"]) * 1024, gnu["user_s"], gnu["sys_s"], "/usr/bin/time -v"
    else:  # ru_maxrss is in kilobytes on Linux (bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        peak, source = after.ru_maxrss * scale, "getrusage(RUSAGE_CHILDREN)"
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return TimedRun(command, wall, peak, user, system, source, done.returncode, done.stdout, done.stderr)


def _run_echoing(command: list[str], stderr_file: Path) -> subprocess.CompletedProcess[str]:
    # stderr goes to a file: a full pipe nobody reads would stall the child
    with stderr_file.open("w+", encoding="utf-8") as err:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            assert proc.stdout is not None
            lines: list[str] = []
            for line in proc.stdout:
                print(line, end="", flush=True)
                lines.append(line)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, "".join(lines), err.read())


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of a simulation's ``manifest.csv``."""
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
