"""The benchmark's results as types: what one setting measured, target by target and variant by variant.

:mod:`~harmonizing_flows.evaluation.protocol` fills them, :mod:`~harmonizing_flows.evaluation.report` reads them.
Each converts to the plain JSON of ``results.json`` and back (:meth:`SettingResult.to_json`,
:meth:`SettingResult.from_json`); the example images for the figures are kept beside it, not in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["IMAGE_KEYS", "START", "Kept", "Scores", "SettingResult", "TargetResult", "VariantResult"]

Scores = dict[str, float]
"""One test volume's metrics: ``dice`` (%), ``hd95``, ``mhd``, ``assd`` (mm), each the mean over its classes, and
``neighbour_difference`` (grey levels; :func:`~harmonizing_flows.evaluation.metrics.neighbour_difference`) where
the volume was scored after this change (older results lack it)."""

START = "start (step 0)"
"""A variant's scores at step 0 of its adaptation: the harmonizer it starts from, before the flow moves it."""

IMAGE_KEYS = ("examples", "levels", "source_example", "source_levels")
"""The fields of a setting that hold images for the figures, not numbers (left out of results.json)."""


@dataclass
class Kept:
    """The step a stopping rule keeps on an adaptation curve, and why."""

    step: int
    reason: str


@dataclass
class VariantResult:
    """One variant of the method adapted to one target site.

    Attributes:
        scores: ``"pre-trained harmonizer"``, ``"start (step 0)"`` (the harmonizer adaptation starts from; older
            results lack it) and ``"adapted (RULE)"`` for each rule -> each test volume's scores.
        curve: The adaptation's evaluations (step, target bpd, alpha, entropy, Dice of the curve slices, ...).
        kept: Rule -> the step it keeps.
        source_bpd: The source bpd the ``source-bpd`` rule aims for.
        started_as: What step 0 is (the pre-trained harmonizer, or histogram matching for the curve); empty in
            older results.
        flow: The variant's flow: its ``flow_adequacy`` from ``model.json`` (source validation brain bpd, AUROC
            against augmented slices) and ``auroc_target``, the AUROC of per-slice brain bpd between source
            validation slices and this target's slices before adaptation (0.5: the flow cannot tell the site
            from the source); empty in older results.
    """

    scores: dict[str, list[Scores]]
    curve: list[dict[str, float]]
    kept: dict[str, Kept]
    source_bpd: float
    started_as: str = ""
    flow: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        kept = {rule: {"step": k.step, "reason": k.reason} for rule, k in self.kept.items()}
        return {"scores": self.scores, "curve": self.curve, "kept": kept, "source_bpd": self.source_bpd,
                "started_as": self.started_as, "flow": self.flow}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VariantResult:
        kept = {rule: Kept(int(k["step"]), k["reason"]) for rule, k in data["kept"].items()}
        return cls(dict(data["scores"]), list(data["curve"]), kept, float(data["source_bpd"]),
                   str(data.get("started_as", "")), dict(data.get("flow", {})))  # fmt: skip


@dataclass
class TargetResult:
    """Every method on one target site's test volumes.

    Attributes:
        test_subjects: The scored volumes, in the order of every score list.
        scores: The methods that do not depend on a variant (none, histogram matching, Nyul, ComBat, TENT) -> each
            test volume's scores.
        variants: Variant -> its adaptation and scores.
    """

    test_subjects: list[str]
    scores: dict[str, list[Scores]]
    variants: dict[str, VariantResult]

    def method_scores(self, method: str, variant: str) -> list[Scores]:
        """A method's scores: a baseline's own, or, for the method's stages, those of ``variant``."""
        if method in self.scores:
            return self.scores[method]
        return self.variants[variant].scores[method]

    def to_json(self) -> dict[str, Any]:
        variants = {name: v.to_json() for name, v in self.variants.items()}
        return {"test_subjects": self.test_subjects, "scores": self.scores, "variants": variants}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TargetResult:
        variants = {name: VariantResult.from_json(v) for name, v in data["variants"].items()}
        return cls(list(data["test_subjects"]), dict(data["scores"]), variants)


@dataclass
class SettingResult:
    """One setting: a source site, its ceiling, and every target.

    Attributes:
        source: The source site.
        ceiling: The segmenter on the source's own test volumes.
        test_subjects: The source's test volumes.
        targets: Target site -> its results.
        examples: Target site -> method -> one slice of a harmonized test volume (for the figures; see
            :meth:`keep_examples`).
        levels: Target site -> method -> that volume's brain voxels counted on the 8-bit levels 0..255.
        source_example, source_levels: The same slice and counts of one source test volume.
        seconds: Wall time of the setting, when it was computed in this run.
        timings: Seconds spent in each part of the setting (fitting each network, each baseline, adapting each
            variant, scoring), summed over targets.
    """

    source: str
    ceiling: list[Scores]
    test_subjects: list[str]
    targets: dict[str, TargetResult]
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    levels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    source_example: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))
    source_levels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def keep_examples(
        self, source: np.ndarray, source_mask: np.ndarray, volumes: Mapping[str, Mapping[str, np.ndarray]]
    ) -> None:
        """Keep what the figures show of example volumes (slices first): the source slice with most brain and the
        same slice of each harmonized target volume, and each volume's brain (non-zero) voxels on 8-bit levels.
        Not the volumes: a finished setting stays small enough to carry between machines."""
        from harmonizing_flows.figures import level_counts

        k = int(source_mask.reshape(len(source), -1).sum(1).argmax())
        self.source_example, self.source_levels = source[k], level_counts(source[source_mask])
        self.examples = {t: {m: v[min(k, len(v) - 1)] for m, v in images.items()} for t, images in volumes.items()}
        self.levels = {t: {m: level_counts(v[v > 0]) for m, v in images.items()} for t, images in volumes.items()}

    def scored(self, method: str, variant: str) -> bool:
        """Whether every target has scores under ``method`` (a model fitted without pre-training its harmonizer
        network has no pre-trained harmonizer to score)."""
        if method == "ceiling":
            return True
        return all(method in t.scores or method in t.variants[variant].scores for t in self.targets.values())

    def method_scores(self, method: str, variant: str) -> list[Scores]:
        """Every test volume's scores under ``method`` over all targets (``"ceiling"``: the source's own)."""
        if method == "ceiling":
            return self.ceiling
        return [s for target in self.targets.values() for s in target.method_scores(method, variant)]

    def to_json(self) -> dict[str, Any]:
        """The numbers, as ``results.json`` holds them (no images)."""
        data: dict[str, Any] = {
            "source": self.source,
            "ceiling": self.ceiling,
            "test_subjects": self.test_subjects,
            "targets": {site: t.to_json() for site, t in self.targets.items()},
        }
        if self.seconds is not None:
            data["seconds"] = self.seconds
        if self.timings:
            data["timings"] = self.timings
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SettingResult:
        """A setting from its ``results.json`` numbers (without the example images)."""
        targets = {site: TargetResult.from_json(t) for site, t in data["targets"].items()}
        return cls(data["source"], list(data["ceiling"]), list(data["test_subjects"]), targets,
                   seconds=data.get("seconds"), timings=dict(data.get("timings", {})))  # fmt: skip
