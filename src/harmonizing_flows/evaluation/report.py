"""The benchmark's tables (Markdown and JSON) and figures, from its typed results
(:mod:`~harmonizing_flows.evaluation.results`). Everything is written to a temporary folder first and moved into
place at the end, so a failure never leaves half a report beside an older, complete one.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonizing_flows.evaluation.baselines import REQUIREMENTS
from harmonizing_flows.evaluation.results import START, Scores, SettingResult
from harmonizing_flows.evaluation.variants import DEFAULT_RULE, RULES

__all__ = ["TABLE1_METHODS", "render_seeds", "render_tables", "table_rows", "write_report"]

TABLE1_METHODS = (
    "none",
    "histogram matching",
    "Nyul",
    "WhiteStripe",
    "ComBat",
    "TENT",
    "BigAug",
    "pre-trained harmonizer",
    "Harmonizing Flows (source bpd)",
    "Harmonizing Flows (min entropy)",
    "Harmonizing Flows (source bpd + guard)",
    "Harmonizing Flows (min entropy + guard)",
    "Harmonizing Flows (fixed steps)",
    "Harmonizing Flows (oracle)",
)
_FROM_VARIANT = {
    "pre-trained harmonizer": "pre-trained harmonizer",
    "Harmonizing Flows (source bpd)": "adapted (source-bpd)",
    "Harmonizing Flows (min entropy)": "adapted (entropy)",
    "Harmonizing Flows (source bpd + guard)": "adapted (source-bpd+guard)",
    "Harmonizing Flows (min entropy + guard)": "adapted (entropy+guard)",
    "Harmonizing Flows (fixed steps)": "adapted (steps)",
    "Harmonizing Flows (oracle)": "adapted (oracle)",
}
_UNITS = {
    "dice": "Dice (%)",
    "hd95": "HD95 (mm)",
    "mhd": "modified Hausdorff distance (mm)",
    "assd": "ASSD (mm)",
    "neighbour_difference": "3D consistency: mean absolute difference of neighbouring slices (grey levels)",
}


def _stats(values: Sequence[Scores], metric: str) -> tuple[float, float]:
    v = np.array([x.get(metric, np.nan) for x in values], float)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def table_rows(
    results: Mapping[str, SettingResult], methods: Sequence[str], metric: str, variant: str
) -> dict[str, dict[str, tuple[float, float]]]:
    """Method -> setting letter (and ``"average"``) -> (mean, std) over test subjects."""
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for method in methods:
        row = {}
        for letter, setting in results.items():
            row[letter] = _stats(setting.method_scores(_FROM_VARIANT.get(method, method), variant), metric)
        means = [m for m, _ in row.values()]
        stds = [s for _, s in row.values()]
        row["average"] = (float(np.mean(means)), float(np.mean(stds)))
        rows[method] = row
    return rows


def _scored(results: Mapping[str, SettingResult], methods: Sequence[str], variant: str) -> tuple[str, ...]:
    """The ``methods`` that every setting scored (a run without the paper's harmonizer lacks its row)."""
    return tuple(m for m in methods if all(s.scored(_FROM_VARIANT.get(m, m), variant) for s in results.values()))


def _cell(value: tuple[float, float], digits: int) -> str:
    mean, std = value
    return "n/a" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _gap(rows, method: str) -> str:
    # From the averages over settings: a per-setting share explodes where none is already near the ceiling.
    none, top, value = rows["none"]["average"][0], rows["ceiling"]["average"][0], rows[method]["average"][0]
    return f"{100 * (value - none) / (top - none):+.0f} %" if top - none > 1e-9 else "n/a"


def _requirements(method: str) -> str:
    key = "Harmonizing Flows" if method.startswith("Harmonizing Flows") else method
    if key not in REQUIREMENTS:
        return "| | | "
    return "| " + " | ".join("✓" if x else "✗" for x in REQUIREMENTS[key]) + " "


def _table1(results, letters, variant: str, sites: Mapping[str, str]) -> list[str]:
    lines = []
    for metric, digits in (("dice", 1), ("hd95", 2), ("mhd", 2), ("assd", 2), ("neighbour_difference", 2)):
        rows = table_rows(results, _scored(results, ("ceiling", *TABLE1_METHODS), variant), metric, variant)
        head = "| method | SF | TA | UD | " + " | ".join(f"{x} ({sites[x]})" for x in letters) + " | average |"
        if metric == "dice":
            head += " gap closed |"
        lines += [f"**{_UNITS[metric]}**", "", head, "|" + "---|" * (head.count("|") - 1)]
        for method, row in rows.items():
            name = "ceiling: segmenter on its source test split" if method == "ceiling" else method
            if method == "Harmonizing Flows (oracle)":
                name += " *"
            cells = " | ".join(_cell(row[x], digits) for x in (*letters, "average"))
            line = f"| {name} {_requirements(method)}| {cells} |"
            if metric == "dice":
                line += " — |" if method in ("ceiling", "none") else f" {_gap(rows, method)} |"
            lines.append(line)
        lines.append("")
    return lines


def _table2(results, letters, variants: Sequence[str]) -> list[str]:
    head = "| variant | stage | " + " | ".join(letters) + " | average |"
    lines = ["**Dice (%)**", "", head, "|" + "---|" * (head.count("|") - 1)]
    for variant in variants:
        targets = [t.variants[variant] for s in results.values() for t in s.targets.values()]
        if all(START in t.scores for t in targets):
            started_as = {t.started_as for t in targets}
            middle = (f"start (step 0): {' / '.join(sorted(started_as))}", START)
        else:  # results from before the start was scored: the paper's pre-trained harmonizer, whatever the start
            middle = ("pre-trained harmonizer", "pre-trained harmonizer")
        for stage, method in (
            ("none", "none"),
            middle,
            ("adapted (source bpd)", "Harmonizing Flows (source bpd)"),
            ("adapted (min entropy)", "Harmonizing Flows (min entropy)"),
            ("adapted (source bpd + guard)", "Harmonizing Flows (source bpd + guard)"),
            ("adapted (min entropy + guard)", "Harmonizing Flows (min entropy + guard)"),
            ("adapted (fixed steps)", "Harmonizing Flows (fixed steps)"),
        ):
            row = table_rows(results, (method,), "dice", variant)[method]
            cells = " | ".join(_cell(row[x], 1) for x in (*letters, "average"))
            lines.append(f"| {variant} | {stage} | {cells} |")
    return [*lines, ""]


def _table3(results, letters, variants: Sequence[str]) -> list[str]:
    head = "| variant | stopping rule | " + " | ".join(letters) + " | average | mean kept step |"
    lines = ["**Dice (%)**", "", head, "|" + "---|" * (head.count("|") - 1)]
    for variant in variants:
        for rule, (name, _) in RULES.items():
            key = f"adapted ({rule})"
            row = table_rows(results, (key,), "dice", variant)[key]
            kept = [t.variants[variant].kept[rule].step for s in results.values() for t in s.targets.values()]
            cells = " | ".join(_cell(row[x], 1) for x in (*letters, "average"))
            lines.append(f"| {variant} | {name} | {cells} | {np.mean(kept):.0f} |")
    return [*lines, ""]


def _table4(results, letters, variants: Sequence[str]) -> list[str]:
    """The flow each variant adapted with: adequacy on the source, and how well it tells each target from it."""
    head = "| setting | variant | source brain bpd | AUROC vs augmented | AUROC vs each target, before adaptation |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for letter in letters:
        for variant in variants:
            flows = {name: t.variants[variant].flow for name, t in results[letter].targets.items()}
            if not any(flows.values()):  # results from before the flow was measured
                continue
            first = next(iter(flows.values()))
            targets = ", ".join(f"{name} {f.get('auroc_target', math.nan):.2f}" for name, f in flows.items())
            lines.append(f"| {letter} | {variant} | {first.get('brain_bpd', math.nan):.2f} | "
                         f"{first.get('auroc_augmented', math.nan):.2f} | {targets} |")  # fmt: skip
    return [*lines, ""] if len(lines) > 2 else []


def render_seeds(runs: Mapping[int, Mapping[str, SettingResult]], variants: Sequence[str]) -> str:
    """Average Dice over settings of each method, per seed and as mean ± sample std over the seeds, as Markdown.

    ``runs`` maps a seed to the ``results`` of a benchmark run with that seed (all on the same data and
    settings). Seeds change the networks' initial weights and the augmentations, so the spread over seeds says
    how much of a difference between methods a single run can show.
    """
    seeds = list(runs)
    head = "| variant | method | " + " | ".join(f"seed {x}" for x in seeds) + " | mean ± std over seeds |"
    title = "**Dice (%), average over settings** (rows marked * read the test labels)"
    lines = [title, "", head, "|" + "---|" * (head.count("|") - 1)]
    for i, variant in enumerate(variants):
        methods = ("ceiling", *TABLE1_METHODS) if i == 0 else tuple(_FROM_VARIANT)
        methods = tuple(m for m in methods if all(_scored(runs[x], (m,), variant) for x in seeds))
        rows = {x: table_rows(runs[x], methods, "dice", variant) for x in seeds}
        for method in methods:
            values = [rows[x][method]["average"][0] for x in seeds]
            name = f"{method} *" if method == "Harmonizing Flows (oracle)" else method
            cells = " | ".join("n/a" if not np.isfinite(v) else f"{v:.1f}" for v in values)
            spread = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"))
            lines.append(f"| {variant} | {name} | {cells} | {_cell(spread, 1)} |")
    return "\n".join([*lines, ""])


def _figures(
    results: Mapping[str, SettingResult], folder: Path, variants: Sequence[str], plane: str = "coronal"
) -> list[Path]:
    """Per setting: ``slices_X.png`` (one test slice per target site, before and after each method),
    ``histograms_X.png`` (brain intensity densities of one test volume per site, per method, on shared axes) and
    ``curves_X.png`` (each variant's adaptation curves). Conventions: :mod:`harmonizing_flows.figures`."""
    from matplotlib.ticker import MaxNLocator

    from harmonizing_flows.figures import _pyplot, _save, _title, histogram_panels, slice_table

    order = ("none", "histogram matching", "Nyul", "WhiteStripe", "ComBat", "pre-trained harmonizer",
             "Harmonizing Flows")  # fmt: skip
    rule = RULES[DEFAULT_RULE][0]
    written = []
    for letter, setting in results.items():
        examples = setting.examples
        methods = [m for m in order if m in next(iter(examples.values()))]
        rows = {site: {m: images[m] for m in methods} for site, images in examples.items()}
        written.append(slice_table(
            rows, folder / f"slices_{letter}.png", first=(f"source {setting.source}", setting.source_example),
            title=f"Setting {letter}: one test slice per target site (rows), before and after each method (columns; "
            f"Harmonizing Flows: {rule})", plane=plane,
        ))  # fmt: skip

        panels = {
            m: {setting.source: setting.source_levels, **{site: counts[m] for site, counts in setting.levels.items()}}
            for m in methods
        }
        written.append(histogram_panels(
            panels, folder / f"histograms_{letter}.png", reference=setting.source,
            title=f"Setting {letter}: brain intensities of one test volume per site, before and after each method",
            caption=f"Black: the source site {setting.source}.",
        ))  # fmt: skip

        plt = _pyplot()
        targets = setting.targets
        fig, axes = plt.subplots(2, len(targets), figsize=(3.5 * len(targets) + 0.8, 6.2), dpi=100, squeeze=False,
                                 sharex=True, layout="constrained")  # fmt: skip
        for c, (site, target) in enumerate(targets.items()):
            for i, variant in enumerate(variants):
                result = target.variants[variant]
                steps = [r["step"] for r in result.curve]
                colour = f"C{i % 10}"
                axes[0, c].plot(steps, [r["target_bpd"] for r in result.curve], lw=1.2, color=colour, label=variant)
                axes[0, c].axhline(result.source_bpd, color=colour, ls=":", lw=1)
                axes[1, c].plot(steps, [r["dice"] for r in result.curve], lw=1.2, color=colour)
                axes[1, c].axvline(result.kept[DEFAULT_RULE].step, color=colour, ls="--", lw=0.8)
            axes[0, c].set_title(f"{setting.source} -> {site}", fontsize=9)
            axes[1, c].set_xlabel("adaptation step", fontsize=8)
            for ax in axes[:, c]:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.grid(lw=0.3, alpha=0.5)
                ax.tick_params(labelsize=7)
        axes[0, 0].set_ylabel("target bpd (bits per dimension)", fontsize=8)
        axes[1, 0].set_ylabel("Dice (%), every k-th test slice", fontsize=8)
        handles = [plt.Line2D([], [], color=f"C{i % 10}", lw=1.2) for i in range(len(variants))]
        handles += [plt.Line2D([], [], color="grey", ls=":"), plt.Line2D([], [], color="grey", ls="--")]
        names = [*variants, "source validation bpd (what source-bpd aims for)", f"kept step ({rule})"]
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
        _title(fig, f"Setting {letter}: adaptation curves, source {setting.source}", 10)
        written.append(_save(fig, folder / f"curves_{letter}.png"))
    return written


def _provenance(meta: Mapping[str, Any]) -> list[str]:
    machine = meta.get("machine")
    if not machine:
        return []
    gpu = f", {machine['cuda']}" if machine.get("cuda") else ", no GPU"
    threads = f" ({machine['torch_threads']} torch threads)" if machine.get("torch_threads") else ""
    return [
        f"Finished {meta.get('finished', '?')} on {machine['platform']}, {machine['cpus']} CPUs{threads}{gpu}; Python "
        f"{machine['python']}, torch {machine['torch']}, harmonizing-flows {machine['harmonizing_flows']}."
    ]


def _resumed(meta: Mapping[str, Any]) -> str:
    resumed = meta.get("resumed") or []
    return f" (setting {', '.join(resumed)} reused from an earlier run)" if resumed else ""


def render_tables(results: Mapping[str, SettingResult], meta: Mapping[str, Any]) -> str:
    """Tables 1-3 as Markdown, from the results (the numbers of ``results.json`` are enough)."""
    letters = list(results)
    variants = list(meta["variants"])
    sites = meta["sites"]
    lines = [
        "# Benchmark: Harmonizing Flows and baselines on held-out test volumes",
        "",
        f"Command: `{meta['command']}`  ",
        f"Data: `{meta['data']}`; settings {', '.join(f'{x} = source {sites[x]}' for x in letters)}; "
        f"profile `{meta['profile']['name']}`; device {meta['device']}; "
        f"wall time {meta['seconds']:.0f} s{_resumed(meta)}.  ",
        *_provenance(meta),
        "",
        "Mean ± standard deviation over the test volumes of every target site of a setting; the average column is "
        "the mean of the settings' means and of their standard deviations. SF: source-free, TA: task-agnostic, "
        "UD: handles unseen domains without refitting. Rows marked * read the test labels (analysis only). Gap "
        "closed: the share of the Dice gap between no harmonization and the ceiling that a method closes, from "
        "the averages over settings.",
        "",
        f"## Table 1: methods (Harmonizing Flows: variant `{variants[0]}`)",
        "",
        *_table1(results, letters, variants[0], sites),
        "## Table 2: none -> start (step 0) -> adapted, for each variant",
        "",
        *_table2(results, letters, variants),
        "## Table 3: stopping rules",
        "",
        *_table3(results, letters, variants),
    ]
    flows = _table4(results, letters, variants)
    if flows:
        lines += ["## Table 4: the flow (adequacy limits: brain bpd below 7, AUROC above 0.75; 0.5 is chance)", "",
                  *flows]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(results: Mapping[str, SettingResult], meta: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Write ``tables.md``, ``results.json`` and ``figures/`` into ``out`` (replacing an earlier report)."""
    variants = list(meta["variants"])
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (tmp / "figures").mkdir()
        (tmp / "tables.md").write_text(render_tables(results, meta), encoding="utf-8")
        document = {"meta": dict(meta), "results": {letter: r.to_json() for letter, r in results.items()}}
        (tmp / "results.json").write_text(json.dumps(document, indent=1, default=float) + "\n", encoding="utf-8")
        _figures(results, tmp / "figures", variants, meta["profile"]["slices"]["axis"])
        written = {}
        for item in sorted(tmp.iterdir()):
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
            written[item.name] = target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


# --------------------------------------------------------------------------------------------- over seeds

SUMMARY_ROWS = tuple(m for m in TABLE1_METHODS if not m.startswith("Harmonizing Flows"))
"""The rows of the headline table and figure before the method's own."""


def render_summary(summary: Mapping[str, Any]) -> str:
    """The headline table of ``summary.json`` as Markdown: Dice per setting and over seeds, and the default method
    against each other row on paired volumes."""
    letters = list(summary["settings"])
    default = summary["default_method"]
    paired = {p["b"]: p for p in summary["paired"]}
    head = "| method | " + " | ".join(f"{x} ({summary['settings'][x]})" for x in letters)
    head += " | mean over seeds | spread | default minus it (95 % CI) | Wilcoxon p | neighbour difference |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def row(name: str, values: Mapping[str, Any], label: str) -> str:
        dice = values["dice"]
        spread = "n/a" if dice["spread"] is None else f"{dice['spread']:.1f}"
        cells = " | ".join(f"{dice['per_setting'][x]:.1f}" for x in letters)
        versus = ""
        if name in paired:
            p = paired[name]
            versus = f"{p['mean']:+.2f} ({p['ci95'][0]:+.2f} to {p['ci95'][1]:+.2f}) | {p['p']:.2g}"
        else:
            versus = "— | —"
        flicker = values.get("neighbour_difference", {}).get("mean", float("nan"))
        flicker_cell = "n/a" if not np.isfinite(flicker) else f"{flicker:.2f}"
        return f"| {label} | {cells} | {dice['mean']:.1f} | {spread} | {versus} | {flicker_cell} |"

    lines.append(row("ceiling", summary["ceiling"], "ceiling: segmenter on its source test volumes"))
    for name, values in summary["methods"].items():
        label = f"**{name}** (default)" if name == default else name
        lines.append(row(name, values, label + (" *" if "oracle" in name else "")))
    seeds = ", ".join(str(s) for s in summary["seeds"])
    notes = (
        f"Dice (%). Seeds {seeds}; at least {summary['test_volumes_per_target']} test volumes per target site. "
        "Per setting: mean over seeds of the mean over target test volumes. Spread: sample standard deviation "
        "of the seeds' means over settings. The last columns pair every test volume: the default method's Dice "
        "minus the row's, its mean with a bootstrap 95 % interval (volumes resampled within each setting and "
        "seed) and the Wilcoxon signed-rank p. Rows marked * read the test labels. Neighbour difference: the 3D "
        "consistency of the images the segmenter saw, the mean absolute difference (grey levels) of neighbouring "
        "slices over the brain (the ceiling's: the source's own); a method that flickers between slices exceeds "
        "the level its contrast explains."
    )
    return "\n".join([notes, "", *lines, ""])


def summary_figure(runs: Mapping[int, Mapping[str, SettingResult]], summary: Mapping[str, Any], path: Path) -> Path:
    """Per setting, each headline method's Dice on every test volume (small points, one colour per seed), the
    seeds' means (large points) and the ceiling (a line)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from harmonizing_flows.evaluation.summary import methods
    from harmonizing_flows.figures import _save

    default = summary["default_method"]
    variant = summary["methods"][default]["variant"]
    rows = methods([variant])
    oracle = default.rsplit(",", 1)[0] + ", oracle)"
    letters = list(summary["settings"])
    shown = [name for name in (*SUMMARY_ROWS, default, *([oracle] if oracle in rows else []))
             if name in summary["methods"]
             and all(run[x].scored(*rows[name][1:]) for run in runs.values() for x in letters)]  # fmt: skip
    fig, axes = plt.subplots(1, len(letters), figsize=(4.2 * len(letters), 4.6), dpi=100, squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    rng = np.random.default_rng(0)  # jitter only
    for c, letter in enumerate(letters):
        ax = axes[0, c]
        for k, seed in enumerate(runs):
            setting = runs[seed][letter]
            for i, name in enumerate(shown):
                _, key, source = rows[name]
                dice = [v["dice"] for v in setting.method_scores(key, source)]
                ax.scatter(i + rng.uniform(-0.25, 0.25, len(dice)), dice, s=6, alpha=0.35, color=colours(k % 10),
                           linewidths=0)  # fmt: skip
                ax.scatter(i, np.nanmean(dice), s=40, color=colours(k % 10), edgecolors="black", linewidths=0.5,
                           label=f"seed {seed}" if i == 0 else None)  # fmt: skip
        ax.axhline(summary["ceiling"]["dice"]["per_setting"][letter], color="black", ls="--", lw=1, label="ceiling")
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([_short(n, default) for n in shown], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"setting {letter}: source {summary['settings'][letter]}", fontsize=9)
        ax.grid(axis="y", lw=0.3)
    axes[0, 0].set_ylabel("Dice (%) per target test volume")
    axes[0, 0].set_ylim(top=max(summary["ceiling"]["dice"]["per_setting"].values()) + 3)  # the ceiling in view
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Dice of every test volume (small points) and each seed's mean (large points)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


def _short(name: str, default: str) -> str:
    if name == default:
        return "HF default"
    if name.startswith("Harmonizing Flows") and name.endswith("oracle)"):
        return "HF oracle *"
    return name


def write_summary(
    runs: Mapping[int, Mapping[str, SettingResult]], summary: Mapping[str, Any], out: Path
) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.md`` and ``figures/summary.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    written = {"summary.json": out / "summary.json", "summary.md": out / "summary.md"}
    for name, text in (
        ("summary.json", json.dumps(summary, indent=1) + "\n"),
        ("summary.md", "# The benchmark over seeds\n\n" + render_summary(summary)),
    ):
        tmp = out / f".{name}.partial"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    written["summary.png"] = summary_figure(runs, summary, out / "figures" / "summary.png")
    return written
