"""Baselines: each moves a shifted target towards the source, and TENT adapts only normalisation parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonizing_flows.config import EvaluationConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.evaluation.baselines import (
    REQUIREMENTS,
    HistogramMatching,
    NyulStandardization,
    WhiteStripe,
    _norm_layers,
    combat,
    tent,
)


def _brains(n: int, seed: int, gain: float = 1.0, gamma: float = 1.0) -> tuple[list, list]:
    """Spheres of two tissues (about 80 and 160 on 0..255) with texture, then a site's intensity map."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    grid = np.indices((12, 24, 24)).astype(float)
    for _ in range(n):
        centre = np.array([6, 12, 12]) + rng.normal(0, 0.3, 3)
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
        mask = r < 9
        tissue = np.where(r < 5, 160.0, 80.0) + rng.normal(0, 6, r.shape)
        image = 255.0 * (np.clip(tissue, 1, 255) / 255.0) ** gamma * gain
        images.append(np.clip(image, 0, 255) * mask)
        masks.append(mask)
    return images, masks


def _tissue_means(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    grid = np.indices(image.shape).astype(float)
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, (6, 12, 12), strict=True)))
    return float(image[mask & (r < 4)].mean()), float(image[mask & (r > 6)].mean())


@pytest.mark.parametrize("method", [HistogramMatching, NyulStandardization])
def test_histogram_methods_bring_a_remapped_target_back_to_the_source(method):
    source, source_masks = _brains(6, seed=0)
    target, target_masks = _brains(2, seed=1, gain=0.6, gamma=1.6)
    fitted = method().fit(source, source_masks)
    want = np.mean([_tissue_means(i, m) for i, m in zip(source, source_masks, strict=True)], 0)
    before = np.array(_tissue_means(target[0], target_masks[0]))
    after = np.array(_tissue_means(fitted.transform(target[0], target_masks[0]), target_masks[0]))
    assert np.abs(after - want).max() < 0.25 * np.abs(before - want).max()
    out = fitted.transform(target[0], target_masks[0])
    assert out.min() >= 0 and out.max() <= 255 and not out[~target_masks[0]].any()


def test_whitestripe_brings_a_rescaled_targets_white_matter_back_to_the_sources():
    source, source_masks = _brains(4, seed=0)
    target, target_masks = _brains(2, seed=1, gain=0.6)
    fitted = WhiteStripe().fit(source, source_masks)
    want = np.mean([_tissue_means(i, m)[0] for i, m in zip(source, source_masks, strict=True)])
    out = fitted.transform(target[0], target_masks[0])
    before, after = _tissue_means(target[0], target_masks[0])[0], _tissue_means(out, target_masks[0])[0]
    assert abs(after - want) < 0.1 * abs(before - want)  # the white matter (160) is where it was
    assert out.min() >= 0 and out.max() <= 255 and not out[~target_masks[0]].any()


def test_histogram_matching_leaves_the_source_unchanged():
    # a brain matched onto its own histogram: each level's mid-rank quantile must land back on that level
    source, masks = _brains(1, seed=4)
    image = np.rint(source[0])
    out = HistogramMatching().fit([image], masks).transform(image, masks[0])
    assert np.abs(out - image)[masks[0]].max() < 1e-6


def test_combat_moves_the_target_to_the_reference_site_and_leaves_shapes_alone():
    source, source_masks = _brains(8, seed=2)
    target, target_masks = _brains(6, seed=3, gain=0.7)
    out = combat(source, source_masks, target, target_masks, EvaluationConfig(combat_min_share=0.5))
    assert len(out) == len(target) and all(o.shape == t.shape for o, t in zip(out, target, strict=True))
    want = np.mean([_tissue_means(i, m) for i, m in zip(source, source_masks, strict=True)], 0)
    before = np.mean([_tissue_means(i, m) for i, m in zip(target, target_masks, strict=True)], 0)
    after = np.mean([_tissue_means(o, m) for o, m in zip(out, target_masks, strict=True)], 0)
    assert np.abs(after - want).max() < 0.2 * np.abs(before - want).max()
    assert all(not o[~m].any() for o, m in zip(out, target_masks, strict=True))


def _tent(n: int, steps: int) -> tuple[torch.nn.Module, torch.Tensor, torch.nn.Module]:
    """A smoke-profile segmenter, ``n`` random target slices, and the segmenter TENT adapted to them."""
    from harmonizing_flows.evaluation.segmenter import Segmenter
    from harmonizing_flows.profiles import load_profile

    torch.manual_seed(0)
    segmenter = Segmenter(load_profile("smoke")).eval()
    images = torch.randint(0, 255, (n, 1, 16, 16), dtype=torch.uint8)
    target = Slices(images=images[:, 0].numpy(), mask=np.ones((n, 16, 16), bool))
    return (
        segmenter,
        images,
        tent(segmenter, target, EvaluationConfig(tent_steps=steps, tent_batch_size=8, tent_lr=1e-2)),
    )


def test_tent_changes_only_batch_norm_and_lowers_entropy():
    segmenter, images, adapted = _tent(24, 30)
    changed = {
        name for name, p in adapted.named_parameters() if not torch.equal(p, dict(segmenter.named_parameters())[name])
    }
    norms = {
        f"{n}.{p}"
        for n, m in adapted.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    assert changed and changed <= norms

    def entropy(model):
        with torch.no_grad():
            log_p = torch.log_softmax(model(images[:8].float()), 1)
            return float(-(log_p.exp() * log_p).sum(1).mean())

    assert entropy(adapted) < entropy(segmenter.train())


def test_tent_predicts_with_the_sites_statistics_whatever_the_batch():
    _, images, adapted = _tent(48, 5)
    assert not adapted.training
    x = images.float()
    with torch.no_grad():
        together = adapted(x[:8])
        alone = adapted(x[7:8])
    torch.testing.assert_close(alone, together[7:8], rtol=1e-4, atol=1e-4)
    # the first normalisation's statistics are those of all the target's slices, not of one batch
    first = _norm_layers(adapted)[0]
    seen = []
    handle = first.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        adapted(x)
    handle.remove()
    features = seen[0].transpose(0, 1).flatten(1)
    torch.testing.assert_close(first.running_mean, features.mean(1), rtol=1e-4, atol=1e-4 * float(features.std()))


def test_requirements_follow_the_papers_columns():
    assert REQUIREMENTS["Harmonizing Flows"] == (True, True, True)
    assert REQUIREMENTS["ComBat"][0] is False  # needs source images at test time
    assert REQUIREMENTS["TENT"][1] is False  # tied to the segmenter
