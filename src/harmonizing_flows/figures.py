"""Figures that are better looked at than read, written as PNG files that any image viewer opens.

Every figure keeps the same conventions, so that one can be read without its caption:

* **Layout.** Matplotlib's constrained layout: titles, colorbars and legends never overlap a panel or get cut;
  long titles are wrapped to the figure's width; legends sit below the panels.
* **Units.** Every axis names its quantity and unit (intensity on the 0..255 scale, bits per dimension, steps).
* **Slices** are drawn on the fixed 0..255 grey scale, with an intensity bar and the orientation at their edges
  (coronal display order, :func:`~harmonizing_flows.data.volume.to_plane`: top superior, left the subject's left).
* **Intensity histograms** are densities (share of the brain's voxels per intensity level) on shared axes, smoothed
  with a Gaussian of :data:`SMOOTHING` levels so that histograms of quantized or matched images are curves, not
  combs. The top level 255, where a clipped site piles up, is left out of the curves, so that its spike cannot
  flatten the others: it is drawn as a marker at 255 at its own height (a density too), or, above the axis, as a
  marker on the top edge with its share written beside it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INTENSITY",
    "SMOOTHING",
    "adaptation_figure",
    "histogram_panels",
    "level_counts",
    "site_montage",
    "slice_table",
    "smoothed_density",
]

INTENSITY = "intensity (0..255)"
"""The label of every intensity axis and intensity bar."""
SMOOTHING = 3.0
"""Standard deviation, in intensity levels, of the Gaussian that smooths every intensity histogram."""
DENSITY = "density (share of brain voxels per level)"
_EDGES = {  # top, bottom, left, right of a slice in display order (data.volume.to_plane)
    "coronal": ("S", "I", "L", "R"),
    "axial": ("A", "P", "L", "R"),
    "sagittal": ("S", "I", "P", "A"),
}
_LETTERS = "#ffd54f"  # amber: readable on black background and on white matter alike


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _wrap(text: str, fig: Any, fontsize: float) -> str:
    """``text`` wrapped to the figure's width (about half a font size per character)."""
    width = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(text, width)) if text else text


def _title(fig: Any, text: str, fontsize: float = 11) -> None:
    if text:
        fig.suptitle(_wrap(text, fig, fontsize), fontsize=fontsize)


# --------------------------------------------------------------------------------------------- histograms


def level_counts(values: np.ndarray) -> np.ndarray:
    """How many of ``values`` (on 0..255, integers or not) round to each level 0..255."""
    levels = np.clip(np.rint(np.asarray(values, dtype=np.float64).ravel()), 0, 255).astype(np.int64)
    return np.bincount(levels, minlength=256)


def smoothed_density(counts: np.ndarray, sigma: float = SMOOTHING) -> tuple[np.ndarray, np.ndarray, float]:
    """Levels 1..254, their smoothed density, and the share of voxels at the top level 255.

    The density is the share of the voxels at levels 1..255 (level 0 is background) that each level holds (with
    the share at 255 they sum to one), smoothed with a Gaussian of ``sigma`` levels whose weights are renormalized
    at the ends of the range, so that the curve does not droop there.
    """
    counts = np.asarray(counts, dtype=np.float64)[:256]
    levels = np.arange(1, 255)
    total = counts[1:].sum()
    if total <= 0:
        return levels, np.zeros(len(levels)), 0.0
    inner = counts[1:255] / total
    if sigma > 0:
        radius = int(np.ceil(4 * sigma))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        inner = np.convolve(inner, kernel, "same") / np.convolve(np.ones_like(inner), kernel, "same")
    return levels, inner, float(counts[255] / total)


def _density_axes(
    ax: Any, histograms: Mapping[str, np.ndarray], styles: Mapping[str, Mapping[str, Any]], top: float
) -> None:
    """Each histogram's smoothed density on ``ax`` (y from 0 to ``top``), and its share at 255 as a marker."""
    capped = 0
    for name, counts in histograms.items():
        levels, density, at_top = smoothed_density(counts)
        if not density.any() and not at_top:
            continue
        style = styles[name]
        ax.plot(levels, density, label=name, **style)
        if at_top >= 1e-3:
            if at_top <= top:
                ax.plot([255], [at_top], marker="o", ms=4, color=style["color"], clip_on=False)
            else:  # a spike above the axis: a marker on the edge, its share beside it
                ax.plot([255], [top], marker="v", ms=6, color=style["color"], clip_on=False)
                ax.annotate(f"{at_top:.1%} at 255", (255, top), xytext=(-6, -4 - 9 * capped),
                            textcoords="offset points", ha="right", va="top", fontsize=6,
                            color=style["color"])  # fmt: skip
                capped += 1
    ax.set_xlim(0, 256)
    ax.set_ylim(0, top)
    ax.set_xlabel(INTENSITY)
    ax.grid(lw=0.3, alpha=0.5)


def _top(histograms: Sequence[np.ndarray]) -> float:
    """A y-range that holds every smoothed density curve (level 255 left out of them, so no clipped spike)."""
    peaks = [smoothed_density(h)[1].max(initial=0.0) for h in histograms]
    return 1.08 * max(max(peaks, default=0.0), 1e-3)


_CAPTION = (
    f"Curves: density per intensity level, smoothed (Gaussian, sigma {SMOOTHING:g} levels). Level 255 (clipped) is "
    "left out of the curves and drawn as a marker at its own height (▼ on the top edge, with its share, where it is "
    "above the axis)."
)


def histogram_panels(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    title: str = "",
    reference: str | None = None,
    caption: str = "",
    columns: int = 4,
) -> Path:
    """Intensity histograms side by side on shared axes, one panel per title, one curve per label.

    Args:
        panels: Panel title -> curve label -> counts of each level 0..255 (:func:`level_counts`).
        path: Output PNG.
        title: Figure title.
        reference: A label drawn black and thicker in every panel (the source site).
        caption: A line before the legend (the reading conventions are always added).
        columns: Panels per row.
    """
    plt = _pyplot()
    labels = list(dict.fromkeys(name for curves in panels.values() for name in curves))
    colours = plt.get_cmap("tab10")
    others = [name for name in labels if name != reference]
    styles = {name: {"color": colours(i % 10), "lw": 1.2} for i, name in enumerate(others)}
    if reference is not None:
        styles[reference] = {"color": "black", "lw": 1.8}
    top = _top([h for curves in panels.values() for h in curves.values()])
    n = len(panels)
    n_cols = min(n, columns)
    n_rows = -(-n // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols + 0.6, 2.7 * n_rows + 1.2), dpi=100,
                             squeeze=False, sharex=True, sharey=True, layout="constrained")  # fmt: skip
    spare = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            spare = spare or ax
            continue
        name, curves = list(panels.items())[i]
        _density_axes(ax, curves, styles, top)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7, labelbottom=True, labelleft=i % n_cols == 0)
        ax.xaxis.label.set_fontsize(8)
        if i % n_cols == 0:
            ax.set_ylabel(DENSITY, fontsize=8)
    handles = [plt.Line2D([], [], **styles[name]) for name in labels]
    text = " ".join(x for x in (caption, _CAPTION) if x)
    if spare is not None:  # the legend in the grid's first empty cell
        spare.legend(handles, labels, loc="center", fontsize=8, frameon=False, title_fontsize=7,
                     title="\n".join(textwrap.wrap(text, 52)))  # fmt: skip
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False,
                   title=_wrap(text, fig, 7), title_fontsize=7)  # fmt: skip
    _title(fig, title)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- slices


def _show_slice(ax: Any, image: np.ndarray, plane: str = "coronal", *, letters: bool = True) -> Any:
    """A slice on the 0..255 grey scale, without ticks, with the orientation letters at its edges."""
    shown = ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if letters and plane in _EDGES:
        top, bottom, left, right = _EDGES[plane]
        style = {"transform": ax.transAxes, "color": _LETTERS, "fontsize": 7, "fontweight": "bold"}
        ax.text(0.5, 0.985, top, ha="center", va="top", **style)
        ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)
        ax.text(0.015, 0.5, left, ha="left", va="center", **style)
        ax.text(0.985, 0.5, right, ha="right", va="center", **style)
    return shown


def _intensity_bar(fig: Any, shown: Any, axes: Any, **kwargs: Any) -> None:
    bar = fig.colorbar(shown, ax=axes, ticks=[0, 64, 128, 192, 255], **kwargs)
    bar.set_label(INTENSITY, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def slice_table(
    rows: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    title: str = "",
    first: tuple[str, np.ndarray] | None = None,
    plane: str = "coronal",
) -> Path:
    """A table of slices: one row per label, one column per method (titles on the first row of slices).

    Args:
        rows: Row label -> column title -> 2D slice on 0..255 in display order; a missing cell stays empty.
        path: Output PNG.
        title: Figure title.
        first: ``(title, slice)`` shown alone above the table's first column (the source site's slice).
        plane: The slices' plane, for the orientation letters.
    """
    plt = _pyplot()
    columns = list(dict.fromkeys(c for cells in rows.values() for c in cells))
    n_rows = len(rows) + (first is not None)
    fig, axes = plt.subplots(n_rows, len(columns), figsize=(2.0 * len(columns) + 1.2, 2.05 * n_rows + 0.7), dpi=100,
                             squeeze=False, layout="constrained")  # fmt: skip
    shown = None
    if first is not None:
        shown = _show_slice(axes[0, 0], first[1], plane)
        axes[0, 0].set_title(first[0], fontsize=8)
        for ax in axes[0, 1:]:
            ax.axis("off")
    for r, (label, cells) in enumerate(rows.items(), start=int(first is not None)):
        for c, column in enumerate(columns):
            ax = axes[r, c]
            if column not in cells:
                ax.axis("off")
                continue
            shown = _show_slice(ax, cells[column], plane)
            if r == int(first is not None):
                ax.set_title(column, fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    if shown is not None and first is not None and len(columns) >= 3:  # across the empty cells beside ``first``
        cax = axes[0, 1].inset_axes((0.15, 0.45, min(3.0, len(columns) - 1.4), 0.09))
        cax.set_in_layout(False)  # drawn over empty cells: the layout need not make room for it
        _intensity_bar(fig, shown, None, orientation="horizontal", cax=cax)
    elif shown is not None:
        _intensity_bar(fig, shown, axes, shrink=min(0.6, 2.5 / n_rows), aspect=15)
    _title(fig, title, 10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- the simulator


def site_montage(
    slices: Mapping[str, np.ndarray],
    histograms: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    title: str = "",
    captions: Mapping[str, str] | None = None,
) -> Path:
    """One slice per site side by side, and below them the sites' intensity histograms.

    Args:
        slices: Site name -> 2D uint8 coronal slice on 0..255 (display order: top row superior).
        histograms: Site name -> counts of each level 0..255 inside the brain (level 0 is left out of the plot).
        path: Output PNG.
        title: Figure title.
        captions: Site name -> a short line under its slice.
    """
    plt = _pyplot()
    names = list(slices)
    n = len(names)
    fig = plt.figure(figsize=(max(2.6 * n + 1.0, 7.0), 7.4), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 2.4])
    top_row = grid[0].subgridspec(1, n)
    colours = plt.get_cmap("tab10")
    styles = {name: {"color": colours(i % 10), "lw": 1.4} for i, name in enumerate(names)}
    axes = []
    for i, name in enumerate(names):
        ax = fig.add_subplot(top_row[0, i])
        shown = _show_slice(ax, slices[name], "coronal")
        ax.set_title(name, fontsize=10, color=styles[name]["color"])
        if captions and name in captions:
            ax.set_xlabel(captions[name], fontsize=7)
        axes.append(ax)
    _intensity_bar(fig, shown, axes, shrink=0.8, aspect=20)
    ax = fig.add_subplot(grid[1])
    _density_axes(ax, {name: histograms[name] for name in names}, styles, _top([histograms[x] for x in names]))
    ax.set_xlabel(f"{INTENSITY}, inside the brain mask")
    ax.set_ylabel(DENSITY, fontsize=8)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(n, 6), fontsize=8,
               frameon=False, title=_wrap(_CAPTION, fig, 7), title_fontsize=7)  # fmt: skip
    _title(fig, title, 11)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- adaptation


def adaptation_figure(
    curve: Sequence[Mapping[str, float]],
    panels: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    kept_step: int,
    source_bpd: float | None = None,
    title: str = "",
    plane: str = "coronal",
) -> Path:
    """The adaptation at a glance: target bpd and alpha against the step, and one target slice as it was, after
    the pre-trained harmonizer, and after the kept step.

    Args:
        curve: The adaptation curve (``step``, ``target_bpd``, ``alpha``, optionally ``entropy``).
        panels: Caption -> 2D slice on 0..255 (display order).
        kept_step: The step the stopping rule kept (marked on the curves).
        source_bpd: The source validation bpd the ``source-bpd`` rule aims for (a dashed line).
        title: Figure title (wrapped to the figure's width).
        plane: The slices' plane, for the orientation letters.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    n = len(panels)
    fig = plt.figure(figsize=(max(2.9 * n + 1.0, 9.0), 7.2), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[2, 2.6])
    top, bottom = grid[0].subgridspec(1, 2), grid[1].subgridspec(1, max(n, 1))
    steps = [r["step"] for r in curve]
    ax = fig.add_subplot(top[0, 0])
    ax.plot(steps, [r["target_bpd"] for r in curve], marker=".", color="tab:blue", label="target bpd")
    if source_bpd is not None and np.isfinite(source_bpd):
        ax.axhline(source_bpd, color="tab:gray", ls="--", lw=1, label="source validation bpd")
    ax.axvline(kept_step, color="tab:green", lw=1, label=f"kept step ({kept_step})")
    ax.set_xlabel("adaptation step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("bits per dimension (bpd)")
    ax.set_title("likelihood of the target under the flow", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    ax = fig.add_subplot(top[0, 1])
    handles = ax.plot(steps, [r["alpha"] for r in curve], marker=".", color="tab:orange", label="alpha")
    ax.set_ylabel("alpha (mean gain of h, unitless)")
    if all("entropy" in r for r in curve):
        twin = ax.twinx()
        handles += twin.plot(steps, [r["entropy"] for r in curve], marker=".", color="tab:purple", label="entropy")
        twin.set_ylabel("segmenter entropy (nats)")
    handles.append(ax.axvline(kept_step, color="tab:green", lw=1, label=f"kept step ({kept_step})"))
    ax.set_xlabel("adaptation step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("the harmonizer h(x) = alpha x + beta", fontsize=9)
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    shown, axes = None, []
    for i, (caption, image) in enumerate(panels.items()):
        axes.append(fig.add_subplot(bottom[0, i]))
        shown = _show_slice(axes[-1], image, plane)
        axes[-1].set_title(caption, fontsize=9)
    if shown is not None:
        _intensity_bar(fig, shown, axes, shrink=0.85, aspect=20)
    _title(fig, title, 11)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG without the library's version in its metadata (same inputs, same bytes)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
