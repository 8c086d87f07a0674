"""The report's tables from hand-made results, where every number is known."""

from __future__ import annotations

import numpy as np

from harmonizing_flows.evaluation.report import _FROM_VARIANT, TABLE1_METHODS, render_seeds
from harmonizing_flows.evaluation.results import Kept, SettingResult, TargetResult, VariantResult


def _results(dice: dict[str, float], variants: tuple[str, ...]) -> dict[str, SettingResult]:
    """Two settings with one target and two test subjects each; every method scores ``dice[method]`` +- 1, and
    the harmonizer's rows 10 points more for each variant after the first."""

    def scores(method: str, offset: float = 0.0) -> list[dict[str, float]]:
        return [{"dice": dice[method] + offset - 1.0}, {"dice": dice[method] + offset + 1.0}]

    target = TargetResult(
        ["s1", "s2"],
        {m: scores(m) for m in TABLE1_METHODS if m not in _FROM_VARIANT},
        {
            v: VariantResult(
                {key: scores(method, 10.0 * i) for method, key in _FROM_VARIANT.items()},
                [{"step": 0.0}],
                {"steps": Kept(0, "took all 0 steps")},
                3.0,
            )
            for i, v in enumerate(variants)
        },
    )
    return {letter: SettingResult("s", scores("ceiling"), ["s0"], {"t": target}) for letter in ("A", "B")}


def test_results_round_trip_through_their_json():
    setting = _results({m: 60.0 for m in ("ceiling", *TABLE1_METHODS)}, ("paper-faithful",))["A"]
    setting.seconds = 12.5
    again = SettingResult.from_json(setting.to_json())
    assert again.to_json() == setting.to_json()
    assert again.targets["t"].variants["paper-faithful"].kept["steps"] == Kept(0, "took all 0 steps")
    assert again.method_scores("TENT", "paper-faithful") == setting.targets["t"].scores["TENT"]


def test_render_seeds_gives_each_seed_and_the_spread_over_seeds():
    variants = ("paper-faithful", "brain-only")
    methods = ("ceiling", *TABLE1_METHODS)
    runs = {seed: _results({m: 60.0 + i + 2.0 * seed for i, m in enumerate(methods)}, variants) for seed in (0, 1, 2)}
    text = render_seeds(runs, variants)
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()}
    none = 60.0 + methods.index("none")
    assert lines[("paper-faithful", "none")].endswith(
        f"| {none:.1f} | {none + 2:.1f} | {none + 4:.1f} | {none + 2:.1f} ± {np.std([0, 2, 4], ddof=1):.1f} |"
    )
    entropy = 60.0 + methods.index("Harmonizing Flows (min entropy)")
    assert lines[("paper-faithful", "Harmonizing Flows (min entropy)")].endswith(f"| {entropy + 2:.1f} ± 2.0 |")
    assert lines[("brain-only", "Harmonizing Flows (min entropy)")].endswith(f"| {entropy + 12:.1f} ± 2.0 |")
    assert ("paper-faithful", "ceiling") in lines and ("paper-faithful", "TENT") in lines
    # other variants list only what the variant changes: the harmonizer's rows
    assert ("brain-only", "Harmonizing Flows (min entropy)") in lines and ("brain-only", "TENT") not in lines
    assert "| seed 0 | seed 1 | seed 2 |" in text
