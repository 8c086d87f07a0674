"""Figures that are better looked at than read, written as PNG files that any image viewer opens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["adaptation_figure", "site_montage"]


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
        slices: Site name -> 2D uint8 slice on 0..255 (display order: top row up).
        histograms: Site name -> counts of each level 0..255 inside the brain (level 0 is left out of the plot).
        path: Output PNG.
        title: Figure title.
        captions: Site name -> a short line under its slice.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(slices)
    n = len(names)
    fig = plt.figure(figsize=(3.2 * n, 6.4), dpi=110)
    grid = fig.add_gridspec(2, n, height_ratios=[3, 2], hspace=0.35, wspace=0.08)
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(slices[name], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=11, color=colours(i % 10))
        if captions and name in captions:
            ax.set_xlabel(captions[name], fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    levels = np.arange(1, 256)
    for i, name in enumerate(names):
        counts = np.asarray(histograms[name], dtype=float)[1:256]
        total = counts.sum()
        if total > 0:
            ax.plot(levels, counts / total, color=colours(i % 10), label=name, lw=1.4)
    ax.set_xlim(0, 255)
    ax.set_xlabel("intensity (0..255), inside the brain mask")
    ax.set_ylabel("fraction of voxels")
    ax.legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def adaptation_figure(
    curve: Sequence[Mapping[str, float]],
    panels: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    kept_step: int,
    source_bpd: float | None = None,
    title: str = "",
) -> Path:
    """The adaptation at a glance: target bpd and alpha against the step, and one target slice as it was, after
    the pre-trained harmonizer, and after the kept step.

    Args:
        curve: The adaptation curve (``step``, ``target_bpd``, ``alpha``, optionally ``entropy``).
        panels: Caption -> 2D slice on 0..255 (display order).
        kept_step: The step the stopping rule kept (marked on the curves).
        source_bpd: The source validation bpd the ``source-bpd`` rule aims for (a dashed line).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(panels)
    fig = plt.figure(figsize=(max(3.0 * n, 9.0), 6.4), dpi=110)
    grid = fig.add_gridspec(2, max(n, 2), height_ratios=[2, 3], hspace=0.35, wspace=0.1)
    steps = [r["step"] for r in curve]
    ax = fig.add_subplot(grid[0, : max(n, 2) // 2])
    ax.plot(steps, [r["target_bpd"] for r in curve], marker=".", color="tab:blue", label="target bpd")
    if source_bpd is not None and np.isfinite(source_bpd):
        ax.axhline(source_bpd, color="tab:gray", ls="--", lw=1, label="source bpd")
    ax.axvline(kept_step, color="tab:green", lw=1, label="kept step")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per dimension")
    ax.legend(fontsize=7, frameon=False)
    ax = fig.add_subplot(grid[0, max(n, 2) // 2 :])
    ax.plot(steps, [r["alpha"] for r in curve], marker=".", color="tab:orange", label="alpha")
    if all("entropy" in r for r in curve):
        ax.plot(steps, [r["entropy"] for r in curve], marker=".", color="tab:purple", label="entropy")
    ax.axvline(kept_step, color="tab:green", lw=1)
    ax.set_xlabel("step")
    ax.legend(fontsize=7, frameon=False)
    for i, (caption, image) in enumerate(panels.items()):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG without the library's version in its metadata (same inputs, same bytes)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
