"""The figures: written, every axis labelled with its unit, titles and legends inside the figure and apart, slices
with an intensity bar and orientation letters, histograms as smoothed densities on shared axes that a clipped site's
spike at 255 does not flatten."""

from __future__ import annotations

import numpy as np
import pytest

from harmonizing_flows import figures
from harmonizing_flows.figures import (
    INTENSITY,
    adaptation_figure,
    histogram_panels,
    level_counts,
    site_montage,
    slice_table,
    smoothed_density,
)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved during the test, checked for overlaps and cuts before it is written."""
    saved = []
    original = figures._save

    def save(fig, path):
        _check_layout(fig)
        saved.append(fig)
        return original(fig, path)

    monkeypatch.setattr(figures, "_save", save)
    return saved


def _check_layout(fig) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox.padded(1)
    texts = (
        [ax.title for ax in fig.axes if ax.get_title()]
        + [ax.xaxis.label for ax in fig.axes]
        + [ax.yaxis.label for ax in fig.axes]
    )
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    for artist in [*texts, *legends, *([fig._suptitle] if fig._suptitle else [])]:
        if artist.get_visible() and (not hasattr(artist, "get_text") or artist.get_text()):
            extent = artist.get_window_extent(renderer)
            assert box.contains(extent.x0, extent.y0) and box.contains(extent.x1, extent.y1), f"cut: {artist}"
    if fig._suptitle:
        title = fig._suptitle.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_title():
                assert not title.overlaps(ax.title.get_window_extent(renderer)), "the title covers a panel title"


def _axes(fig) -> list:
    """The figure's axes and their insets (a colorbar drawn over empty cells)."""
    return [x for ax in fig.axes for x in (ax, *ax.child_axes)]


def _images(ax) -> list:
    return ax.get_images()


def _letters(ax) -> set[str]:
    return {t.get_text() for t in ax.texts}


def _site_counts(rng, centre: float, clipped: float = 0.0, n: int = 20_000) -> np.ndarray:
    values = np.clip(rng.normal(centre, 25, n), 1, 254)
    values[: int(clipped * n)] = 255
    return level_counts(values)


def test_smoothed_density_turns_combs_into_curves_and_keeps_the_top_level_apart():
    comb = np.zeros(256)
    comb[2:200:3] = 100  # a histogram-matched image: every third level empty
    comb[255] = 5000
    levels, density, at_top = smoothed_density(comb)
    assert levels[0] == 1 and levels[-1] == 254 and len(density) == 254
    inner = density[20:180]
    assert inner.min() > 0.8 * inner.max()  # no comb left
    assert at_top == pytest.approx(5000 / comb[1:].sum())
    assert density.sum() + at_top == pytest.approx(1.0, abs=0.01)  # shares (smoothing renormalized at the ends)
    assert smoothed_density(np.zeros(256))[2] == 0.0
    assert level_counts(np.array([0.2, 0.6, 254.7, 300.0])).tolist()[:2] == [1, 1]
    assert level_counts(np.array([254.7, 300.0]))[255] == 2


def test_the_montage_is_labelled_and_a_clipped_site_does_not_flatten_the_others(tmp_path, drawn):
    rng = np.random.default_rng(0)
    histograms = {"a": _site_counts(rng, 90), "b": _site_counts(rng, 150), "clipped": _site_counts(rng, 200, 0.4)}
    slices = {name: rng.integers(0, 256, (24, 20)).astype(np.uint8) for name in histograms}
    path = site_montage(slices, histograms, tmp_path / "m.png", title="t " * 80, captions={"a": "3 T mprage"})
    assert path.read_bytes().startswith(b"\x89PNG")
    fig = drawn[-1]
    shown = [ax for ax in fig.axes if _images(ax)]
    assert len(shown) == 3 and all(_letters(ax) >= {"S", "I", "L", "R"} for ax in shown)
    bar = [ax for ax in fig.axes if ax.get_ylabel() == INTENSITY]
    assert len(bar) == 1  # the intensity bar
    hist = next(ax for ax in fig.axes if ax.get_lines())
    assert INTENSITY in hist.get_xlabel() and "density" in hist.get_ylabel()
    peaks = [smoothed_density(h)[1].max() for h in histograms.values()]
    top = hist.get_ylim()[1]
    assert max(peaks) <= top < 1.2 * max(peaks)  # the range holds the curves, not the 40 % spike
    assert any("40.0% at 255" in t.get_text() for t in hist.texts)
    assert "\n" in fig._suptitle.get_text()  # wrapped, not cut


def test_the_adaptation_figure_is_labelled_and_its_long_title_fits(tmp_path, drawn):
    curve = [{"step": s, "target_bpd": 3.4 - 0.01 * s, "alpha": 1 - 0.001 * s, "entropy": 0.5 - 0.002 * s}
             for s in range(0, 60, 10)]  # fmt: skip
    panels = {name: np.full((16, 16), 100, np.uint8) for name in ("target", "pre-trained harmonizer", "adapted")}
    title = "mprage-3t -> spgr-15t: the target bpd never reached the source bpd 3.329 in 100 steps; kept the step " * 2
    adaptation_figure(curve, panels, tmp_path / "a.png", kept_step=30, source_bpd=3.3, title=title)
    fig = drawn[-1]
    assert fig._suptitle.get_text().replace("\n", " ") == title.strip()
    plots = [ax for ax in fig.axes if ax.get_lines()]
    assert len(plots) == 3  # bpd, alpha and entropy (on its own axis)
    for ax in plots:
        assert ax.get_ylabel() and "(" in ax.get_ylabel()  # a unit
    assert all(ax.get_xlabel() == "adaptation step" for ax in plots if ax.get_xlabel())
    assert all(_letters(ax) >= {"S", "I", "L", "R"} for ax in fig.axes if _images(ax))
    assert any(ax.get_ylabel() == INTENSITY for ax in fig.axes)


def test_histogram_panels_share_their_axes(tmp_path, drawn):
    rng = np.random.default_rng(1)
    panels = {
        m: {"source": _site_counts(rng, 100), "x": _site_counts(rng, 140, 0.5 if m == "none" else 0.0)}
        for m in ("none", "one", "two", "three", "four")
    }
    histogram_panels(panels, tmp_path / "h.png", reference="source", title="h", caption="Black: the source.")
    fig = drawn[-1]
    shown = [ax for ax in fig.axes if ax.get_lines()]
    assert len(shown) == 5 and len({ax.get_ylim() for ax in shown}) == 1 and len({ax.get_xlim() for ax in shown}) == 1
    assert all(INTENSITY in ax.get_xlabel() for ax in shown) and "density" in shown[0].get_ylabel()
    assert shown[0].get_ylim()[1] < 0.1  # the 50 % spike stays a marker
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend())  # in the empty cell of the 2 x 4 grid
    assert [t.get_text() for t in legend.get_texts()] == ["source", "x"]


def test_slice_table_puts_the_intensity_bar_and_letters_on_every_slice(tmp_path, drawn):
    cell = np.zeros((16, 16), np.uint8)
    rows = {site: {m: cell for m in ("none", "matched", "adapted")} for site in ("b", "c")}
    slice_table(rows, tmp_path / "s.png", first=("source a", cell), title="slices")
    fig = drawn[-1]
    shown = [ax for ax in fig.axes if _images(ax)]
    assert len(shown) == 7 and all(_letters(ax) >= {"S", "I", "L", "R"} for ax in shown)
    assert any(ax.get_xlabel() == INTENSITY for ax in _axes(fig))  # the horizontal bar
    assert {ax.get_ylabel() for ax in shown} >= {"b", "c"}


def test_the_benchmark_figures_are_written_and_labelled(tmp_path, drawn):
    from harmonizing_flows.evaluation.report import _figures
    from harmonizing_flows.evaluation.results import Kept, SettingResult, TargetResult, VariantResult
    from harmonizing_flows.evaluation.variants import DEFAULT_RULE

    rng = np.random.default_rng(2)
    mask = np.zeros((4, 24, 24), bool)
    mask[:, 4:20, 4:20] = True
    source = (rng.integers(20, 200, mask.shape) * mask).astype(np.uint8)
    clipped = (np.where(rng.random(mask.shape) < 0.4, 255, rng.integers(1, 255, mask.shape)) * mask).astype(float)
    examples = {
        site: {m: image for m in ("none", "histogram matching", "Harmonizing Flows")}
        for site, image in (("b", source.astype(float) * 0.8), ("clipped", clipped))
    }
    curve = [{"step": s, "target_bpd": 3.0 - 0.01 * s, "dice": 60 + s / 10} for s in range(0, 40, 10)]
    variant = VariantResult({}, curve, {DEFAULT_RULE: Kept(20, "x")}, 2.8)
    targets = {site: TargetResult([], {}, {"default": variant}) for site in examples}
    setting = SettingResult("a", [], [], targets)
    setting.keep_examples(source, mask, examples)
    assert setting.source_example.shape == (24, 24) and setting.source_levels.sum() == mask.sum()
    written = _figures({"A": setting}, tmp_path, ["default"])
    assert sorted(p.name for p in written) == ["curves_A.png", "histograms_A.png", "slices_A.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    slices, histograms, curves = drawn
    assert all(_letters(ax) >= {"S", "I", "L", "R"} for ax in slices.axes if _images(ax))
    assert any(ax.get_xlabel() == INTENSITY for ax in _axes(slices))
    lines = [ax for ax in histograms.axes if ax.get_lines()]
    assert len(lines) == 3 and len({ax.get_ylim() for ax in lines}) == 1 and lines[0].get_ylim()[1] < 0.1
    plots = [ax for ax in curves.axes if ax.get_lines()]
    assert {ax.get_ylabel() for ax in plots} >= {"target bpd (bits per dimension)", "Dice (%), every k-th test slice"}
    assert {ax.get_xlabel() for ax in plots} >= {"adaptation step"}
    assert curves.legends and "default" in [t.get_text() for t in curves.legends[0].get_texts()]
