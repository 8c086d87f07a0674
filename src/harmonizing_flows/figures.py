"""Figures that are better looked at than read, written as PNG files that any image viewer opens."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["site_montage"]


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
    path = Path(path)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
