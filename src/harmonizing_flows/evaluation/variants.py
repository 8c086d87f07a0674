"""What the benchmark compares: the method's variants (Table 2) and the stopping rules replayed on each
adaptation curve (Table 3)."""

from __future__ import annotations

from typing import Any

from harmonizing_flows.config import AdaptConfig

__all__ = ["ADAPT_ONLY", "DEFAULT_RULE", "DEFAULT_VARIANT", "GUARD", "RULES", "VARIANTS"]

_PAPER = (
    "harmonizer.positive_alpha=false",
    "adapt.brain_only=false",
    "negatives.collapse_modes=false",
    "negatives.fraction=0.2",
    "adapt.harmonizer=paper",
)
_CURVE = (*_PAPER, "adapt.harmonizer=curve", "adapt.curve_lr=0.02", "adapt.brain_only=true")
VARIANTS: dict[str, tuple[str, ...]] = {
    "paper-faithful": _PAPER,
    "brain-only": (*_PAPER, "adapt.brain_only=true"),
    "positive-alpha": (*_PAPER, "harmonizer.positive_alpha=true"),
    "collapse-negatives": (*_PAPER, "negatives.collapse_modes=true"),
    # beyond the paper (issue 20): the curve harmonizer, started at histogram matching, with and without the
    # change-of-variables term, as validated (benchmarks/explore_curve.py): Adam at 0.02 on the curve's knots
    # (not a network's weights), the likelihood over the brain
    "curve": (*_CURVE, "adapt.jacobian_weight=0"),
    "curve+jacobian": (*_CURVE, "adapt.jacobian_weight=1"),
    # the flow trained on the source's likelihood alone (no guiding negatives: adequate on held-out source
    # brains, where Eq. 4's negatives keep it near 8 bits), steering the curve with the change-of-variables term
    "curve+likelihood-flow": (*_CURVE, "negatives.fraction=0", "adapt.jacobian_weight=1"),
    # the curve, then a restoration network fitted on the source (noise, blur, bias) on every harmonized image
    "curve+restoration": (*_CURVE, "adapt.jacobian_weight=0", "restoration.enabled=true"),
}
"""The method's variants of Table 2: the paper-faithful one and the paper's with one guard that changes the
adaptation's path, each spelled out in full so that a profile's defaults cannot change
what a variant is. The alpha and intensity guards only stop a path early, so they are replayed on each
variant's curve, at the fixed values of :data:`RULES` (a profile's own ``adapt.alpha_guard`` and
``adapt.intensity_guard`` are not used here)."""

ADAPT_ONLY = ("paper-faithful", "brain-only", "curve", "curve+jacobian")
"""The variants that adapt the paper-faithful fitted model (they change adaptation only)."""

DEFAULT_VARIANT = "curve"
"""The variant of the tool's default method, and the one that ``hflow demo`` runs: the curve harmonizer, chosen
over the paper-faithful one on validation volumes (benchmarks/RESULTS.md, issue 20; no test volume was read)."""

GUARD = AdaptConfig().intensity_guard
"""The intensity guard's tolerance in the replayed rules: the default's (see ``AdaptConfig.intensity_guard``)."""

RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "entropy": ("minimum entropy", {"stop": "entropy"}),
    "entropy+guard": (f"minimum entropy + intensity guard {GUARD:g}", {"stop": "entropy", "intensity_guard": GUARD}),
    "source-bpd": ("source bpd", {"stop": "source-bpd"}),
    "source-bpd+guard": (f"source bpd + intensity guard {GUARD:g}", {"stop": "source-bpd", "intensity_guard": GUARD}),
    "alpha-guard": ("source bpd + alpha guard 0.5", {"stop": "source-bpd", "alpha_guard": 0.5}),
    "steps": ("fixed steps (all)", {"stop": "steps"}),
    "oracle": ("oracle (best Dice) *", {}),
}
"""Stopping rules of Table 3: name -> (label, the ``AdaptConfig`` fields it sets; every other guard is off).
The oracle keeps the best Dice on the test slices, reading labels: analysis only."""

DEFAULT_RULE = "entropy"
"""The stopping rule of the tool's default method where a segmenter is at hand, as in the benchmark (``hflow
adapt --segmenter`` takes it too): the step whose segmentation is most confident, chosen on validation volumes
over the fixed steps of ``hflow adapt`` without a segmenter (the row "fixed steps"; benchmarks/RESULTS.md). The
slice figures show its kept step."""
