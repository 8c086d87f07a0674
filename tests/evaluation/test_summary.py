"""summary.json over seeds: its shape and names, means and spreads, paired comparisons; its table and figure."""

from __future__ import annotations

import json

import pytest

from harmonizing_flows.evaluation.report import render_summary, write_summary
from harmonizing_flows.evaluation.results import Kept, SettingResult, TargetResult, VariantResult
from harmonizing_flows.evaluation.summary import BASELINES, DEFAULT_METHOD, method_name, summarize
from harmonizing_flows.evaluation.variants import DEFAULT_RULE, RULES


def _setting(base: dict[str, float], seed: int, letter_offset: float, variants: tuple[str, ...]) -> SettingResult:
    """One setting with one target of three test volumes: a method scores base + seed + setting offset, then -1,
    0 and +1 on the volumes (so paired differences are constant); HD95 is 100 minus Dice, the neighbour difference
    a tenth of it."""

    def scores(value: float) -> list[dict[str, float]]:
        v = value + seed + letter_offset
        return [{"dice": v + d, "hd95": 100.0 - v - d, "neighbour_difference": (v + d) / 10} for d in (-1.0, 0.0, 1.0)]

    adapted = {f"adapted ({rule})": scores(base[rule]) for rule in RULES}
    target = TargetResult(
        ["t1", "t2", "t3"],
        {m: scores(base[m]) for m in BASELINES},
        {
            v: VariantResult(
                {"pre-trained harmonizer": scores(base["pre-trained harmonizer"]), **adapted},
                [{"step": 0.0}],
                {rule: Kept(0, "") for rule in RULES},
                3.0,
            )
            for v in variants
        },
    )
    return SettingResult("src", scores(base["ceiling"]), ["s1", "s2", "s3"], {"site-2": target})


BASE = {name: 50.0 + i for i, name in enumerate(("ceiling", *BASELINES, "pre-trained harmonizer", *RULES))}
BASE["ceiling"] = 90.0


DEFAULT_RUN = ("curve", "paper-faithful")


def _runs(variants=DEFAULT_RUN):
    return {seed: {x: _setting(BASE, seed, 2.0 * i, variants) for i, x in enumerate("AC")} for seed in (0, 1, 2)}


def test_the_summary_has_the_agreed_shape_and_names():
    summary = summarize(_runs(), {"A": "site-a", "C": "site-c"}, list(DEFAULT_RUN), resamples=200)
    assert set(summary) == {"seeds", "test_volumes_per_target", "settings", "ceiling", "default_method", "methods",
                            "paired"}  # fmt: skip
    assert summary["seeds"] == [0, 1, 2] and summary["test_volumes_per_target"] == 3
    assert summary["settings"] == {"A": "site-a", "C": "site-c"}
    assert summary["default_method"] == DEFAULT_METHOD == "Harmonizing Flows (curve, entropy)"
    names = set(summary["methods"])
    assert {"none", "histogram matching", "Nyul", "WhiteStripe", "ComBat", "TENT", "BigAug"} <= names
    assert "pre-trained harmonizer" in names
    assert {method_name(v, rule) for rule in RULES for v in DEFAULT_RUN} <= names
    assert summary["methods"]["Nyul"]["variant"] is None
    assert summary["methods"][DEFAULT_METHOD]["variant"] == "curve"
    assert set(summary["methods"]["Nyul"]) == {"variant", "dice", "hd95", "neighbour_difference"}
    assert len(summary["paired"]) == len(names) - 1
    assert all(p["a"] == DEFAULT_METHOD and p["b"] != DEFAULT_METHOD for p in summary["paired"])
    json.dumps(summary)  # plain JSON


def test_means_spreads_and_paired_differences_are_right():
    summary = summarize(_runs(), {"A": "a", "C": "c"}, list(DEFAULT_RUN), resamples=200)
    nyul = summary["methods"]["Nyul"]["dice"]
    # seed s: (base + s) in A and (base + s + 2) in C, so base + s + 1 over settings
    assert nyul["per_seed"] == pytest.approx([BASE["Nyul"] + 1, BASE["Nyul"] + 2, BASE["Nyul"] + 3])
    assert nyul["mean"] == pytest.approx(BASE["Nyul"] + 2) and nyul["spread"] == pytest.approx(1.0)
    assert nyul["per_setting"] == pytest.approx({"A": BASE["Nyul"] + 1, "C": BASE["Nyul"] + 3})
    hd95 = summary["methods"]["Nyul"]["hd95"]["mean"]
    assert hd95 == pytest.approx(100.0 - BASE["Nyul"] - 2)
    assert summary["methods"]["Nyul"]["neighbour_difference"]["mean"] == pytest.approx((BASE["Nyul"] + 2) / 10)
    assert summary["ceiling"]["dice"]["mean"] == pytest.approx(92.0)
    paired = {p["b"]: p for p in summary["paired"]}
    gap = BASE[DEFAULT_RULE] - BASE["Nyul"]  # the default: the curve under the default rule
    assert paired["Nyul"]["mean"] == pytest.approx(gap) and paired["Nyul"]["ci95"] == pytest.approx([gap, gap])
    assert paired["Nyul"]["n"] == 3 * 2 * 3 and paired["Nyul"]["p"] < 0.001


def test_the_table_and_figure_are_written(tmp_path):
    runs = _runs(("curve", "brain-only"))
    summary = summarize(runs, {"A": "a", "C": "c"}, ["curve", "brain-only"], resamples=200)
    assert method_name("brain-only", "oracle") in summary["methods"]
    text = render_summary(summary)
    assert f"| **{DEFAULT_METHOD}** (default) |" in text and "| Nyul | 54.0 | 56.0 | 55.0 | 1.0 |" in text
    assert "neighbour difference |" in text.splitlines()[2] and "| 5.50 |" in text  # Nyul's: 55 / 10
    written = write_summary(runs, summary, tmp_path)
    assert json.loads(written["summary.json"].read_text()) == summary
    assert written["summary.png"].stat().st_size > 10_000


def test_seeds_with_other_settings_are_refused():
    runs = _runs()
    runs[2] = {"A": runs[2]["A"]}
    with pytest.raises(ValueError, match="same settings"):
        summarize(runs, {"A": "a", "C": "c"}, list(DEFAULT_RUN))


def test_a_row_that_no_run_scored_is_left_out_of_the_summary_its_table_and_figure(tmp_path):
    # a run of curve variants alone never pre-trains the paper's network: no "pre-trained harmonizer" scores
    runs = _runs(("curve+jacobian", "curve"))
    for run in runs.values():
        for setting in run.values():
            for target in setting.targets.values():
                del target.variants["curve"].scores["pre-trained harmonizer"]
    # the first variant still has the row: the figure reads the default's variant, which has not
    summary = summarize(runs, {"A": "a", "C": "c"}, ["curve+jacobian", "curve"], resamples=200)
    assert "pre-trained harmonizer" in summary["methods"]
    written = write_summary(runs, summary, tmp_path)  # the figure skips the row it cannot read
    assert written["summary.png"].stat().st_size > 10_000
    for run in runs.values():
        for setting in run.values():
            for target in setting.targets.values():
                del target.variants["curve+jacobian"].scores["pre-trained harmonizer"]
    summary = summarize(runs, {"A": "a", "C": "c"}, ["curve+jacobian", "curve"], resamples=200)
    assert "pre-trained harmonizer" not in summary["methods"]
    assert all(p["b"] != "pre-trained harmonizer" for p in summary["paired"])
    assert "pre-trained harmonizer" not in render_summary(summary)
    assert write_summary(runs, summary, tmp_path / "again")["summary.png"].is_file()
