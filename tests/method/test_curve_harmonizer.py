"""The curve harmonizer: histogram matching per volume, a site curve on top, its change-of-variables term, and
adaptation with that term."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonizing_flows.data.datasets import load_subjects
from harmonizing_flows.data.prepare import read_volumes
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import InputError
from harmonizing_flows.evaluation.baselines import HistogramMatching
from harmonizing_flows.method.adaptation import adapt_harmonizer
from harmonizing_flows.method.curve_harmonizer import MIN_BRAIN_PIXELS, CurveHarmonizer
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.store import load_model


@dataclass(frozen=True)
class _Named(Slices):
    path: Path = Path("sub-01_T1w.nii.gz")


def _volume(seed: int, scale: float = 1.0) -> _Named:
    rng = np.random.default_rng(seed)
    mask = np.zeros((4, 32, 32), dtype=bool)
    mask[:, 4:28, 6:26] = True
    images = np.where(mask, np.clip(rng.gamma(5.0, 18.0 * scale, mask.shape), 1, 255), 0).round().astype(np.uint8)
    return _Named(images=images, mask=mask, labels=(mask * 3).astype(np.uint8))


def test_prepare_is_histogram_matching_rounded_and_keeps_mask_and_labels():
    source, target = _volume(0), _volume(1, scale=0.6)
    harmonizer = CurveHarmonizer(source.brain_counts())
    matched = harmonizer.prepare(target)
    reference = HistogramMatching().fit([source.images], [source.mask]).transform(target.images, target.mask)
    assert matched.images.dtype == np.uint8 and np.array_equal(matched.mask, target.mask)
    assert np.array_equal(matched.labels, target.labels) and matched.path == target.path
    assert np.abs(matched.images.astype(float) - reference).max() <= 0.5 + 1e-6
    assert not matched.images[~target.mask].any()


def test_step_zero_is_histogram_matching():
    source, target = _volume(0), _volume(1, scale=0.6)
    harmonizer = CurveHarmonizer(source.brain_counts())
    matched = harmonizer.prepare(target)
    x, m = matched.batch(np.arange(len(matched)), "cpu")
    with torch.no_grad():
        y, alpha = harmonizer.harmonize(x, m)
    assert torch.allclose(y, x, atol=0.3) and torch.equal(alpha, torch.ones(len(matched)))


def test_histograms_that_cannot_be_matched_are_refused_naming_the_file():
    harmonizer = CurveHarmonizer(_volume(0).brain_counts())
    tiny = _volume(1)
    mask = np.zeros_like(tiny.mask)
    mask[0, :10, :10] = True  # 100 pixels
    with pytest.raises(InputError, match=f"sub-01_T1w.nii.gz.*100 brain pixels.*{MIN_BRAIN_PIXELS}"):
        harmonizer.prepare(replace(tiny, mask=mask))
    constant = replace(tiny, images=np.where(tiny.mask, 90, 0).astype(np.uint8))
    with pytest.raises(InputError, match="one intensity"):
        harmonizer.prepare(constant)
    with pytest.raises(ValueError, match="256 levels"):
        CurveHarmonizer(np.zeros(256))


def test_the_log_jacobians_match_autograd():
    torch.manual_seed(0)
    harmonizer = CurveHarmonizer(_volume(0).brain_counts())
    with torch.no_grad():
        harmonizer.curve.raw_steps.normal_(0.0, 1.0)
    x = (torch.rand(2, 1, 8, 8) * 250.0 + 2.0).requires_grad_()
    m = (torch.rand(2, 1, 8, 8) > 0.3).float()
    (grad,) = torch.autograd.grad(harmonizer.curve(x).sum(), x)
    expected = (grad.log2() * m).sum((1, 2, 3))
    assert torch.allclose(harmonizer.log_jacobian(x, m), expected, atol=1e-3)
    # the paper's harmonizer: log2 |alpha| per brain pixel
    paper = Harmonizer().eval()
    x, m = torch.rand(2, 1, 32, 32) * 255.0, (torch.rand(2, 1, 32, 32) > 0.3).float()  # its U-Net needs 16n x 16n
    with torch.no_grad():
        alpha = paper.alpha(x)
        assert torch.allclose(paper.log_jacobian(x, m), alpha.abs().log2() * m.sum((1, 2, 3)))


@pytest.fixture(scope="module")
def matched_target(simulated, fitted):
    model = load_model(fitted)
    harmonizer = CurveHarmonizer(json.loads((fitted / "model.json").read_text())["source_histogram"])
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t"]
    return harmonizer, Slices.pool([harmonizer.prepare(v) for v in read_volumes(subjects, model.profile.slices)])


def test_adaptation_moves_the_site_curve_and_the_jacobian_term_steepens_it(fitted, matched_target, monkeypatch):
    harmonizer, target = matched_target
    model = load_model(fitted)
    model.harmonizer = harmonizer
    config = replace(model.profile.adapt, intensity_guard=0.0, stop="steps", steps=10, eval_every=5, curve_lr=0.05)
    result = adapt_harmonizer(model, target, config, progress=False)
    assert isinstance(result.harmonizer, CurveHarmonizer) and [r["step"] for r in result.curve] == [0, 5, 10]
    assert result.curve[0]["alpha"] == 1.0
    assert not torch.equal(result.harmonizer.curve.raw_steps, harmonizer.curve.raw_steps)  # it moved; the original not
    # With the flow's term silenced, only the change-of-variables term drives: it steepens the curve, and without
    # it nothing moves.
    monkeypatch.setattr(type(model.flow), "bpd", lambda self, y, m, **_: (y * 0.0).sum((1, 2, 3)))
    slopes = {}
    for weight in (0.0, 1.0):
        adapted = adapt_harmonizer(model, target, replace(config, jacobian_weight=weight), progress=False)
        knots = adapted.harmonizer.curve.knots().detach()[0]
        slopes[weight] = float((knots[1:] - knots[:-1]).log().mean())
    assert slopes[0.0] == pytest.approx(0.0, abs=1e-3) and slopes[1.0] > 0.05


def test_a_curve_harmonizer_adapts_saves_and_harmonizes_from_the_command_line(fitted, simulated, tmp_path):
    import nibabel as nib
    from typer.testing import CliRunner

    from harmonizing_flows.cli import app

    adapted = tmp_path / "adapted"
    runner = CliRunner()
    done = runner.invoke(app, ["adapt", str(fitted), str(simulated.manifest), "--site", "spgr-15t", "--out",
                               str(adapted), "--steps", "4", "--set", "adapt.jacobian_weight=1",
                               "--set", "adapt.curve_lr=0.05", "--set", "adapt.eval_every=2"])  # fmt: skip
    assert done.exit_code == 0, done.output
    meta = json.loads((adapted / "model.json").read_text())
    # the curve is the default family and its rule fixed steps, whatever the profile's other settings
    assert meta["harmonizer"] == "curve" and meta["adaptation"]["settings"]["jacobian_weight"] == 1.0
    assert meta["adaptation"]["stop"] == "steps" and meta["adaptation"]["kept_step"] == 4
    assert meta["adaptation"]["summary"]["started_as"] == "histogram matching onto the source histogram"
    # the summary and the progress lines show the brain mean: a curve has no alpha
    assert "brain mean" in done.output and "brain_mean" in done.output and "alpha" not in done.output
    model = load_model(adapted)
    assert isinstance(model.harmonizer, CurveHarmonizer)
    # harmonizing applies one monotone intensity map per volume on the input's own grid
    subject = next(s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t")
    out = tmp_path / "harmonized.nii.gz"
    done = runner.invoke(app, ["harmonize", str(adapted), str(subject.image), "--out", str(out), "--mask",
                               str(subject.mask), "--dtype", "float32", "--quiet"])  # fmt: skip
    assert done.exit_code == 0, done.output
    original, harmonized = nib.load(subject.image), nib.load(out)
    assert np.allclose(harmonized.affine, original.affine) and harmonized.shape == original.shape
    brain = np.asarray(nib.load(subject.mask).dataobj) > 0
    x, y = np.asarray(original.dataobj, dtype=np.float64)[brain], np.asarray(harmonized.dataobj)[brain]
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(y[order]) >= -1e-4)  # monotone in the input's intensity
    assert not np.asarray(harmonized.dataobj)[~brain].any() and y.max() <= 255.0 and y.max() > 0
    # a run that keeps step 0 says so, and why
    done = runner.invoke(app, ["adapt", str(fitted), str(simulated.manifest), "--site", "spgr-15t", "--out",
                               str(tmp_path / "unchanged"), "--steps", "0", "--quiet"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "took all 0 steps" in done.output
    assert "kept step 0: the adapted model harmonizes as its start did (histogram matching onto the source" in (
        " ".join(done.output.split())
    )


def test_a_model_without_a_source_histogram_cannot_start_a_curve(fitted):
    from harmonizing_flows.config import AdaptConfig
    from harmonizing_flows.errors import ConfigError
    from harmonizing_flows.method.adaptation import starting_harmonizer

    model = load_model(fitted)
    assert starting_harmonizer(model, AdaptConfig(harmonizer="paper")) is model.harmonizer  # the fitted network
    assert isinstance(starting_harmonizer(model, AdaptConfig()), CurveHarmonizer)  # the default family
    del model.metadata["source_histogram"]
    with pytest.raises(ConfigError, match="no source histogram"):
        starting_harmonizer(model, AdaptConfig(harmonizer="curve"))
    with pytest.raises(ConfigError, match="paper or curve"):
        AdaptConfig(harmonizer="spline")


def test_each_family_stops_on_its_own_source_reference(fitted, simulated):
    from harmonizing_flows.errors import ConfigError

    model = load_model(fitted)
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t"]
    volumes = read_volumes(subjects, model.profile.slices)
    start = CurveHarmonizer(model.metadata["source_histogram"])
    curve_target = Slices.pool([start.prepare(v) for v in volumes])
    config = replace(model.profile.adapt, stop="source-bpd", steps=0, intensity_guard=0.0)
    # the curve compares with the source matched onto its own histogram, the network with the source through it
    model.metadata["source_bpd_curve"] = {"all_pixels": 1.25, "brain_only": 1.25}
    model.metadata["source_bpd"] = {"all_pixels": 2.5, "brain_only": 2.5}
    assert adapt_harmonizer(model, curve_target, config, progress=False).summary["source_bpd"] == 1.25
    paper = replace(config, harmonizer="paper")
    assert adapt_harmonizer(model, Slices.pool(volumes), paper, progress=False).summary["source_bpd"] == 2.5
    del model.metadata["source_bpd_curve"]
    with pytest.raises(ConfigError, match="no source bpd for the curve harmonizer"):
        adapt_harmonizer(model, curve_target, config, progress=False)
    # a model fitted for the curve alone has no network to adapt
    model.metadata["pretrained_harmonizer"] = False
    with pytest.raises(ConfigError, match="not pre-trained"):
        adapt_harmonizer(model, Slices.pool(volumes), paper, progress=False)
