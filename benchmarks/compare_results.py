"""Compare two ``hflow benchmark`` results.json files number by number: which rows are bit-identical, which differ
and by how much. The renovation's behaviour check (issue 18) runs it on a smoke-profile benchmark made before and
after a change:

    export OMP_NUM_THREADS=1
    hflow simulate --out data --subjects-per-site 5 --voxel-size 4 --seed 7 -q
    hflow benchmark data/manifest.csv --out OUT --profile smoke --seed 0 --device cpu -q
    python benchmarks/compare_results.py benchmarks/results/renovation/before.json OUT/results.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _numbers(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf of a JSON document with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, (*path, str(i)))
    else:
        yield path, value


def _row(path: tuple[str, ...]) -> str:
    """The table row a leaf belongs to, e.g. ``A/targets/spgr-15t/scores/Nyul (dice)`` or ``A/ceiling (hd95)``."""
    parts = list(path)
    for field in ("scores", "curve"):
        if field in parts:
            i = parts.index(field)
            return "/".join(parts[: i + (2 if field == "scores" else 1)]) + f" ({parts[-1]})"
    return "/".join(p for p in parts[:-1] if not p.isdigit()) + f" ({parts[-1]})"


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Row -> largest absolute difference between the two documents' numbers (0.0: bit-identical)."""
    old, new = dict(_numbers(before)), dict(_numbers(after))
    if set(old) != set(new):
        missing, extra = sorted(set(old) - set(new))[:3], sorted(set(new) - set(old))[:3]
        raise SystemExit(f"the documents differ in shape: only before {missing}..., only after {extra}...")
    rows: dict[str, float] = {}
    for path, a in old.items():
        b = new[path]
        if path[-1] == "seconds" or (len(path) > 1 and path[-2] == "seconds"):
            continue  # wall times
        row = _row(path)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            same = a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
            rows[row] = max(rows.get(row, 0.0), 0.0 if same else abs(a - b))
        elif a != b:
            rows[row] = max(rows.get(row, 0.0), math.inf)
        else:
            rows.setdefault(row, 0.0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before = json.loads(args.before.read_text())["results"]
    after = json.loads(args.after.read_text())["results"]
    rows = compare(before, after)
    same = [r for r, d in rows.items() if d == 0.0]
    differ = {r: d for r, d in rows.items() if d != 0.0}
    print(f"{len(same)} of {len(rows)} rows bit-identical")
    for row, diff in sorted(differ.items()):
        print(f"  differs: {row}: largest difference {diff:.3g}")


if __name__ == "__main__":
    main()
