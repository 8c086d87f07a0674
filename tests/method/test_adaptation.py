"""Adaptation: it lowers the target bpd, stopping rules pick the right step, guards stop a collapse."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from harmonizing_flows.config import AdaptConfig
from harmonizing_flows.data.datasets import load_subjects
from harmonizing_flows.data.prepare import read_volumes
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import OutputExistsError
from harmonizing_flows.method.adaptation import (
    HM_START,
    PRETRAINED_START,
    adapt,
    adapt_harmonizer,
    decide,
    prediction_entropy,
)
from harmonizing_flows.method.store import load_model

# The rules' own tests run at learning rates that move intensities fast, so the intensity guard (tested on its own
# below, on curves shaped like a measured collapse) is off in them. They adapt the paper's harmonizer network (the
# curve harmonizer's own tests: test_curve_harmonizer.py).


def _paper(model):
    return replace(model.profile.adapt, harmonizer="paper", brain_only=False)


@pytest.fixture(scope="module")
def target(simulated, fitted):
    model = load_model(fitted)
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t"]
    return Slices.pool(read_volumes(subjects, model.profile.slices))


def test_adaptation_lowers_the_target_bpd(fitted, target):
    model = load_model(fitted)
    config = replace(_paper(model), intensity_guard=0.0, stop="steps", steps=30, eval_every=10, lr=3e-4)
    result = adapt_harmonizer(model, target, config, progress=False)
    bpd = [r["target_bpd"] for r in result.curve]
    assert [r["step"] for r in result.curve] == [0, 10, 20, 30]
    assert bpd[-1] < bpd[0]
    assert result.chosen_step == 30 and "took all 30 steps" in result.reason
    # The original model is untouched, its flow still trainable.
    fresh = load_model(fitted).harmonizer.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(model.harmonizer.state_dict().values(), fresh, strict=True))
    assert all(p.requires_grad for p in model.flow.parameters())


def test_source_bpd_rule_stops_where_the_target_reaches_the_source(fitted, target):
    model = load_model(fitted)
    start = adapt_harmonizer(
        model, target, replace(_paper(model), intensity_guard=0.0, stop="steps", steps=0), progress=False
    )
    first = start.curve[0]["target_bpd"]
    # Place the source bpd just below the start, so the rule must move and then stop.
    model.metadata["source_bpd"]["all_pixels"] = first - 1e-3
    config = replace(_paper(model), intensity_guard=0.0, stop="source-bpd", steps=60, eval_every=5, lr=3e-4)
    result = adapt_harmonizer(model, target, config, progress=False)
    kept = result.curve[-1]
    if "reached the source bpd" in result.reason:
        assert kept["target_bpd"] <= first - 1e-3 and result.chosen_step == kept["step"]
        assert all(r["target_bpd"] > first - 1e-3 for r in result.curve[:-1])
    else:  # never reached: the lowest bpd is kept
        assert result.chosen_step == min(result.curve, key=lambda r: r["target_bpd"])["step"]
    # Already at or below the source bpd: the pre-trained harmonizer is returned as it is.
    model.metadata["source_bpd"]["all_pixels"] = first + 1.0
    result = adapt_harmonizer(model, target, config, progress=False)
    assert result.chosen_step == 0 and len(result.curve) == 1
    assert result.reason.startswith(f"{PRETRAINED_START} already reaches")
    # The curve starts at histogram matching, and the reason names that start.
    curve_rule = decide([{"step": 0, "target_bpd": 1.0}], AdaptConfig(stop="source-bpd"), 2.0)
    assert curve_rule.index == 0 and curve_rule.reason.startswith(f"{HM_START} already reaches")


class _DarkLovingFlow(torch.nn.Module):
    """A stand-in flow whose "bpd" is the brain's mean squared intensity: adapting to it drives the harmonizer
    towards a black image, the collapse the guards exist for, on every run rather than on an unlucky one."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # adapt freezes the flow's parameters

    def bpd(self, y, mask, *, noise=None, brain_only=False):
        return ((y / 255.0) ** 2 * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)


def test_alpha_guard_stops_a_collapse_and_keeps_an_earlier_step(fitted, target):
    model = load_model(fitted)
    model.flow = _DarkLovingFlow()
    config = replace(
        _paper(model), intensity_guard=0.0, stop="steps", steps=100, eval_every=2, lr=1e-2, alpha_guard=0.5
    )
    result = adapt_harmonizer(model, target, config, progress=False)
    assert result.guard is not None and "alpha guard" in result.reason
    alphas = [r["alpha"] for r in result.curve]
    assert alphas[-1] < 0.5 * alphas[0] and all(a >= 0.5 * alphas[0] for a in alphas[:-1])
    assert result.curve[-1]["step"] < 100  # stopped there, not at the end
    assert result.chosen_step < result.curve[-1]["step"]  # and kept a step before the fall


def test_entropy_rule_keeps_the_lowest_entropy_step(fitted, target):
    model = load_model(fitted)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def segmenter(x):
        return conv(x / 255.0) * 4

    config = replace(_paper(model), intensity_guard=0.0, stop="entropy", steps=20, eval_every=5, lr=3e-4, patience=100)
    result = adapt_harmonizer(model, target, config, segmenter=segmenter, progress=False)
    assert all("entropy" in r for r in result.curve)
    assert result.chosen_step == min(result.curve, key=lambda r: r["entropy"])["step"]
    with pytest.raises(ValueError, match="needs a segmenter"):
        adapt_harmonizer(model, target, config, progress=False)
    x = torch.zeros(1, 1, 8, 8)
    assert prediction_entropy(lambda v: torch.zeros(1, 4, 8, 8), x, torch.ones_like(x)) == pytest.approx(
        torch.log(torch.tensor(4.0)).item()
    )


def test_adapt_writes_an_adapted_model_with_its_curve(fitted, simulated, tmp_path):
    out = tmp_path / "adapted"
    folder, result = adapt(fitted, simulated.manifest, out, site="spgr-15t", progress=False)
    model = load_model(folder)
    assert model.metadata["adaptation"]["target_site"] == "spgr-15t"
    assert model.metadata["adaptation"]["kept_step"] == result.chosen_step
    curve = json.loads((folder / "adaptation.json").read_text())["curve"]
    assert (folder / "adaptation.png").read_bytes().startswith(b"\x89PNG")
    # the default: the curve harmonizer, started at histogram matching, all its steps taken
    assert set(result.preview) == {"histogram matching", f"adapted (step {result.chosen_step})"}
    assert result.chosen_step == model.profile.adapt.steps and result.summary["started_as"] == HM_START
    assert curve[0]["step"] == 0 and {"target_bpd", "alpha", "seconds"} <= set(curve[0])
    with pytest.raises(OutputExistsError):
        adapt(fitted, simulated.manifest, out, site="spgr-15t", progress=False)


@pytest.mark.parametrize("rule", ["source-bpd", "entropy"])
def test_a_rule_replayed_on_the_whole_curve_keeps_the_step_a_live_run_keeps(fitted, target, rule):
    def segmenter(images):  # any fixed segmenter will do: entropy just has to vary along the curve
        return torch.cat([images / 255.0, 1.0 - images / 255.0, 0.5 * torch.ones_like(images)], 1) * 4.0

    model = load_model(fitted)
    base = replace(_paper(model), intensity_guard=0.0, steps=40, eval_every=5, lr=3e-4, patience=2)
    whole = adapt_harmonizer(model, target, replace(base, stop="steps"), segmenter=segmenter, progress=False)
    live = adapt_harmonizer(model, target, replace(base, stop=rule), segmenter=segmenter, progress=False)
    replayed = decide(whole.curve, replace(base, stop=rule), whole.summary["source_bpd"], final=True)
    assert whole.curve[replayed.index]["step"] == live.chosen_step
    assert replayed.reason == live.reason
    # the live run stopped where the rule said so, and its curve is the whole run's up to there
    assert [r["step"] for r in live.curve] == [r["step"] for r in whole.curve][: len(live.curve)]


def _record(step: int, bpd: float, entropy: float, mean: float, std: float, alpha: float = 0.9) -> dict[str, float]:
    return {"step": step, "target_bpd": bpd, "entropy": entropy, "brain_mean": mean, "brain_std": std, "alpha": alpha}


# Shaped like the demo's measured collapse: the bpd and the entropy plunge as the brain goes dark, alpha still high.
COLLAPSE = [
    _record(0, 3.45, 0.30, 135.0, 40.0),
    _record(10, 3.40, 0.28, 137.0, 41.0),
    _record(20, 3.36, 0.26, 131.0, 40.0),
    _record(30, 3.30, 0.27, 112.0, 36.0),  # darkened by 17 %
    _record(40, 1.50, 0.01, 10.0, 3.0),
    _record(50, 0.90, 0.008, 0.0, 0.0),
]


@pytest.mark.parametrize("rule", ["entropy", "source-bpd", "steps"])
def test_without_a_guard_every_rule_keeps_a_collapsed_step(rule):
    decision = decide(COLLAPSE, AdaptConfig(stop=rule, intensity_guard=0.0), source_bpd=3.0, final=True)
    assert decision.index in (4, 5) and decision.guard is None


@pytest.mark.parametrize("rule", ["entropy", "source-bpd", "steps"])
def test_the_intensity_guard_stops_at_the_darkening_and_keeps_the_best_step_before(rule):
    decision = decide(COLLAPSE, AdaptConfig(stop=rule, intensity_guard=0.1), source_bpd=3.0, final=True)
    assert decision.stop and decision.guard is not None and "intensity guard" in decision.reason
    assert "step 30" in decision.guard
    assert decision.index == 2  # each rule's best before step 30; for "steps", the last


def test_the_intensity_guard_sees_a_flattened_brain_at_the_same_mean():
    flat = [_record(0, 3.4, 0.3, 120.0, 40.0), _record(10, 3.3, 0.2, 121.0, 39.0), _record(20, 3.1, 0.1, 119.0, 20.0)]
    decision = decide(flat, AdaptConfig(stop="source-bpd", intensity_guard=0.1), source_bpd=2.0, final=True)
    assert decision.index == 1 and "spread fell" in (decision.guard or "")
    # a mild drift within the tolerance is harmonization, not a collapse
    mild = [*flat[:2], _record(20, 3.1, 0.1, 112.0, 38.0)]
    assert decide(mild, AdaptConfig(stop="source-bpd", intensity_guard=0.1), source_bpd=2.0, final=True).index == 2


def test_the_alpha_guard_stops_when_alpha_falls():
    falling = [_record(0, 3.4, 0.3, 120.0, 40.0, alpha=0.9), _record(10, 3.3, 0.2, 120.0, 40.0, alpha=0.8),
               _record(20, 3.2, 0.1, 120.0, 40.0, alpha=0.3)]  # fmt: skip
    decision = decide(falling, AdaptConfig(stop="steps", alpha_guard=0.5), source_bpd=2.0, final=True)
    assert decision.index == 1 and "alpha guard" in (decision.guard or "")


def test_the_intensity_guard_is_on_by_default():
    from harmonizing_flows.profiles import PROFILES

    assert all(p.adapt.intensity_guard == AdaptConfig().intensity_guard > 0 for p in PROFILES.values())


# Shaped like the coil-bias demo's spgr-15t target (commit 47a20ac): the entropy is lowest at step 60, rises, then
# falls again while the brain darkens, and at step 150 (mean down 48 %) it is lower than at step 60.
GRADUAL_COLLAPSE = [
    _record(0, 3.45, 0.194, 122.0, 54.0), _record(30, 3.40, 0.173, 130.0, 58.0),
    _record(60, 3.38, 0.161, 127.0, 60.0), _record(100, 3.30, 0.172, 117.0, 66.0),
    _record(130, 3.20, 0.179, 93.0, 70.0), _record(140, 3.00, 0.162, 82.0, 71.0),
    _record(150, 2.50, 0.121, 63.0, 60.0), _record(160, 1.70, 0.013, 4.0, 9.0),
]  # fmt: skip


def test_the_default_intensity_guard_catches_a_gradual_collapse_that_half_would_not():
    default = decide(GRADUAL_COLLAPSE, AdaptConfig(stop="entropy"), source_bpd=2.0, final=True)
    assert GRADUAL_COLLAPSE[default.index]["step"] == 60 and "intensity guard" in (default.guard or "")
    loose = decide(GRADUAL_COLLAPSE, AdaptConfig(stop="entropy", intensity_guard=0.5), source_bpd=2.0, final=True)
    assert GRADUAL_COLLAPSE[loose.index]["step"] == 150  # what the old default kept: a brain half gone dark
