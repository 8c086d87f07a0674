"""One verdict over seeds: every method's Dice and HD95 per seed and per setting, and the default method against
every other method on paired test volumes (``summary.json``).

A seed is a whole benchmark run with its own simulated subjects and its own network initialisations. A method's
value in one seed is the mean over settings of the setting's mean over its target test volumes (as the paper's
tables average); its ``mean`` is the mean of those over seeds and ``spread`` their sample standard deviation.
``per_setting`` is the mean over seeds of each setting's mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harmonizing_flows.evaluation.results import Scores, SettingResult
from harmonizing_flows.evaluation.statistics import paired_comparison
from harmonizing_flows.evaluation.variants import DEFAULT_RULE, DEFAULT_VARIANT, RULES

__all__ = ["BASELINES", "DEFAULT_METHOD", "method_name", "methods", "summarize"]

BASELINES = ("none", "histogram matching", "Nyul", "WhiteStripe", "ComBat", "TENT", "BigAug")
"""The rows that do not depend on a variant of the method, as ``summary.json`` names them."""


def method_name(variant: str, rule: str) -> str:
    """The row of a Harmonizing Flows variant kept by a stopping rule, e.g.
    ``Harmonizing Flows (paper-faithful, entropy+guard)``."""
    return f"Harmonizing Flows ({variant}, {rule})"


DEFAULT_METHOD = method_name(DEFAULT_VARIANT, DEFAULT_RULE)
"""What the tool does by default: the default variant, kept by the default stopping rule."""

METRICS = ("dice", "hd95", "neighbour_difference")
"""The metrics of every row (``neighbour_difference``: the 3D consistency of the images the segmenter saw)."""

Run = Mapping[str, SettingResult]
"""One seed's results: setting letter -> its results."""


def methods(variants: Sequence[str]) -> dict[str, tuple[str | None, str, str]]:
    """Row name -> (variant or None, the method key in a target's results, the variant to read it from)."""
    rows: dict[str, tuple[str | None, str, str]] = {m: (None, m, variants[0]) for m in BASELINES}
    rows["pre-trained harmonizer"] = (None, "pre-trained harmonizer", variants[0])
    for variant in variants:
        for rule in RULES:
            rows[method_name(variant, rule)] = (variant, f"adapted ({rule})", variant)
    return rows


def _volumes(run: Run, letter: str, key: str, variant: str) -> list[Scores]:
    return run[letter].method_scores(key, variant)


def _mean(values: Sequence[float]) -> float:
    """The mean over the finite values (NaN when none is: a metric that results of older code lack)."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def _metric(runs: Mapping[int, Run], key: str, variant: str, metric: str) -> dict[str, Any]:
    seeds = list(runs)
    letters = list(next(iter(runs.values())))
    table = np.array(
        [[_mean([v.get(metric, np.nan) for v in _volumes(runs[s], x, key, variant)]) for x in letters] for s in seeds]
    )  # seeds x settings
    per_seed = table.mean(axis=1)
    return {
        "mean": float(per_seed.mean()),
        "spread": float(per_seed.std(ddof=1)) if len(seeds) > 1 else None,
        "per_seed": [float(v) for v in per_seed],
        "per_setting": {x: float(table[:, i].mean()) for i, x in enumerate(letters)},
    }


def _differences(runs: Mapping[int, Run], a: tuple[str, str], b: tuple[str, str]) -> dict[str, list[float]]:
    """Per-volume Dice differences ``a - b`` by stratum (one setting of one seed)."""
    out = {}
    for seed, run in runs.items():
        for letter in run:
            first, second = _volumes(run, letter, *a), _volumes(run, letter, *b)
            out[f"seed {seed}, setting {letter}"] = [x["dice"] - y["dice"] for x, y in zip(first, second, strict=True)]
    return out


def summarize(
    runs: Mapping[int, Run],
    sites: Mapping[str, str],
    variants: Sequence[str],
    *,
    default_method: str = DEFAULT_METHOD,
    resamples: int = 10_000,
) -> dict[str, Any]:
    """``summary.json`` of benchmark runs over seeds (see the module docstring).

    Args:
        runs: Seed -> that seed's results (the same settings in every seed).
        sites: Setting letter -> its source site.
        variants: The variants that were run; the first gives the variant-free rows' networks.
        default_method: The row every other row is compared with.
    """
    letters = [list(run) for run in runs.values()]
    if any(x != letters[0] for x in letters):
        raise ValueError(f"every seed must hold the same settings, not {letters}")
    rows = {name: row for name, row in methods(variants).items()
            if all(s.scored(row[1], row[2]) for run in runs.values() for s in run.values())}  # fmt: skip
    if default_method not in rows:
        raise ValueError(f"default method {default_method!r} is not among the rows run ({', '.join(rows)})")
    counts = [len(t.test_subjects) for run in runs.values() for s in run.values() for t in s.targets.values()]
    summary: dict[str, Any] = {
        "seeds": list(runs),
        "test_volumes_per_target": min(counts),
        "settings": {x: sites[x] for x in letters[0]},
        "ceiling": {m: _metric(runs, "ceiling", variants[0], m) for m in METRICS},
        "default_method": default_method,
        "methods": {
            name: {"variant": variant, **{m: _metric(runs, key, source, m) for m in METRICS}}
            for name, (variant, key, source) in rows.items()
        },
    }
    default = rows[default_method][1:]
    summary["paired"] = [
        paired_comparison(
            default_method, name, _differences(runs, default, (key, source)), resamples=resamples
        ).to_json()
        for name, (_, key, source) in rows.items()
        if name != default_method
    ]
    return summary
