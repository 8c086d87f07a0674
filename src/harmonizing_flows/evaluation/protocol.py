"""The paper's evaluation protocol as a tool: settings A-D, baselines, stopping rules, guards, tables, figures.

For each setting one site is the source and every other site a target. On the source's training split it fits a
model (harmonizer and flow) and a segmenter, which is then frozen. Each method harmonizes the target sites' test
volumes, the segmenter labels them, and :mod:`~harmonizing_flows.evaluation.metrics` scores every test volume
against its reference labels, in mm. Harmonizing Flows' volumes are harmonized by
:func:`~harmonizing_flows.harmonize.harmonize_slices`, the code that ``hflow harmonize`` runs. Adaptation uses all
of a target site's volumes, without their labels, as the paper's test-time setting allows.

Harmonizing Flows is adapted once per target and variant, taking every step; the stopping rules
(:data:`~harmonizing_flows.evaluation.variants.RULES`) are then replayed on the recorded curve with
:func:`~harmonizing_flows.method.adaptation.decide`, which keeps the same step that a run stopped by that rule
keeps. The oracle keeps the step with the best Dice on the test slices: it reads labels, so it is for analysis
only.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonizing_flows.data.datasets import Subject, file_fingerprint, load_subjects, split_subjects
from harmonizing_flows.data.labels import NUM_CLASSES
from harmonizing_flows.data.prepare import Site, read_sites
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.data.volume import SlicedVolume
from harmonizing_flows.errors import ConfigError, InputError, system_errors
from harmonizing_flows.evaluation import cache
from harmonizing_flows.evaluation.metrics import neighbour_difference, score_volume, subject_means
from harmonizing_flows.evaluation.results import START, Kept, Scores, SettingResult, TargetResult, VariantResult
from harmonizing_flows.evaluation.variants import ADAPT_ONLY, DEFAULT_RULE, DEFAULT_VARIANT, RULES, VARIANTS
from harmonizing_flows.harmonize import harmonize_slices
from harmonizing_flows.method.store import Model
from harmonizing_flows.profiles import Profile, apply_overrides, profile_to_dict

__all__ = [
    "DEFAULT_VARIANT",
    "MODEL_CODE",
    "MODEL_SETTINGS",
    "RULES",
    "SEGMENTER_CODE",
    "SEGMENTER_SETTINGS",
    "VARIANTS",
    "benchmark",
]

SEGMENTER_SETTINGS = ("seed", "slices", "segmenter", "segmenter_training")
"""The profile's sections that a segmenter's training reads (with its training files and device)."""
SEGMENTER_CODE = ("harmonizing_flows.evaluation.segmenter",)
"""The modules that train a segmenter (BigAug's adds :mod:`.bigaug`), keying a stored one with what they import."""
MODEL_SETTINGS = ("seed", "slices", "augment", "negatives", "harmonizer", "harmonizer_training", "flow",
                  "flow_training", "restoration", "restoration_training")  # fmt: skip
"""The profile's sections that fitting a model (flow, pre-trained harmonizer, restorer) reads; adaptation's are
not."""
SEPARATION_SLICES = 128
"""Slices of the source validation split and of each target, spread evenly, on which the flow's AUROC between
them is measured (enough for a stable AUROC, a few seconds per target on the CPU)."""
MODEL_CODE = ("harmonizing_flows.method.training", "harmonizing_flows.method.store")
"""The modules that fit, save and load a model, keying a stored one with what they import: a change of
adaptation, of the evaluation or of the CLI keeps the fitted flows."""


def _sections(profile: Profile, names: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in profile_to_dict(profile).items() if k in names}


def _model_sections(profile: Profile) -> dict[str, Any]:
    """The settings a fitted model is keyed on: :data:`MODEL_SETTINGS`, less the restorer's when it is off (a
    model without one does not depend on them)."""
    off = () if profile.restoration.enabled else ("restoration", "restoration_training")
    return _sections(profile, [name for name in MODEL_SETTINGS if name not in off])


def _score(segmenter: torch.nn.Module, images: np.ndarray, volume: SlicedVolume, device: torch.device) -> Scores:
    """A test volume's scores: the segmenter's labels of ``images`` (its slices, harmonized or not) against its own,
    and the images' 3D consistency."""
    from harmonizing_flows.evaluation.segmenter import predict

    assert volume.labels is not None
    pred = predict(segmenter, images, volume.mask, device=device)
    scores = subject_means(score_volume(pred, volume.labels, volume.spacing))
    return {**scores, "neighbour_difference": neighbour_difference(images, volume.mask)}


def _pooled_dice(segmenter, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the Dice pooled over a set of slices (the cheap Dice of the adaptation curves)."""
    pred = segmenter(images).argmax(1) * masks[:, 0].long()
    scores = []
    for c in range(1, NUM_CLASSES):
        p, r = pred == c, labels == c
        total = int(p.sum() + r.sum())
        if total:
            scores.append(2.0 * int((p & r).sum()) / total)
    return 100.0 * float(np.mean(scores)) if scores else float("nan")


def _mean_dice(scores: Sequence[Scores]) -> float:
    return float(np.mean([x["dice"] for x in scores]))


@dataclass
class _Setting:
    """One setting's run: the source's split volumes, the frozen segmenter and the variants' fitted models."""

    letter: str
    source: Site
    profile: Profile
    device: torch.device
    out: Path
    progress: bool
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.train, self.val = self.source.fitting_splits()
        self.test = self.source.split("test")
        if not self.test:
            raise InputError(self.source.source, f"site {self.source.name} has no subject in its test split")
        self.train_slices = Slices.pool(self.train, labels=True)
        self.val_slices = Slices.pool(self.val)
        self._flows: dict[int, tuple[torch.nn.Module, np.ndarray]] = {}  # model -> its flow, source slices' bpd

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the seconds spent in the block to ``part``'s total (the report's time per part)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] = round(self.timings.get(part, 0.0) + time.perf_counter() - started, 2)

    # ----------------------------------------------------------------------------------------- fitting

    def _fit_or_load(
        self, name: str, settings: dict, build: Callable[[], Any], save, load, code: Sequence[str] = ()
    ) -> Any:
        """Fit once and keep the result under OUT/models/SOURCE/NAME, reused when fitted with the same settings
        and code (all of the package's, or the modules ``code`` and what they import) on the same training and
        validation files (a flow keeps its best epoch on the validation split)."""
        # each split's files apart: the same files split otherwise give another fit (the flow's epoch is chosen on val)
        files = {split: file_fingerprint([v.path for v in volumes]) for split, volumes in
                 (("train", self.train), ("val", self.val))}  # fmt: skip
        fit_key = cache.key(settings, files, str(self.device), code=code)
        folder = self.out / "models" / self.source.name / name
        return cache.fit_or_load(folder, fit_key, build, save, load, self.log)

    def segmenter(self, *, bigaug: bool = False) -> torch.nn.Module:
        """The frozen source segmenter, or BigAug's: the same network trained under stacked augmentation."""
        from harmonizing_flows.evaluation.bigaug import stacked_augmentation
        from harmonizing_flows.evaluation.segmenter import fit_segmenter, load_segmenter, save_segmenter

        metadata = {"source_site": self.source.name, "augmentation": "bigaug" if bigaug else None}

        def fit() -> Any:
            return fit_segmenter(self.train_slices, self.profile, device=str(self.device), progress=self.progress,
                                 metadata=metadata, augment=stacked_augmentation if bigaug else None)  # fmt: skip

        # Keyed on what trains it alone, so that a change of the method's code or settings keeps it.
        settings = _sections(self.profile, SEGMENTER_SETTINGS)
        code = SEGMENTER_CODE + (("harmonizing_flows.evaluation.bigaug",) if bigaug else ())
        made = self._fit_or_load("segmenter-bigaug" if bigaug else "segmenter", settings, fit,
                                 lambda s, f: save_segmenter(s, f, overwrite=True), load_segmenter, code)  # fmt: skip
        return made.to(self.device).eval()

    def models(self, variants: Sequence[str]) -> dict[str, Model]:
        """Each variant's fitted model.

        The paper-faithful model is fitted when a variant first needs it: brain-only adapts it as it is, and
        collapse-negatives refits its flow. A whole fit of positive-alpha equals the paper-faithful flow with its
        own harmonizer (fit_model draws the same initial weights and batches; tested), so when the paper-faithful
        model is fitted anyway, positive-alpha refits only the harmonizer; alone it is fitted whole. When no variant
        adapts the paper's harmonizer (the demo runs the curve alone), it is not pre-trained, and the tables lack the
        pre-trained harmonizer's row.
        """
        from harmonizing_flows.method.adequacy import flow_adequacy
        from harmonizing_flows.method.distributed import Context
        from harmonizing_flows.method.flow import Flow
        from harmonizing_flows.method.harmonizer import Harmonizer
        from harmonizing_flows.method.loop import kept_epoch
        from harmonizing_flows.method.restoration import Restorer
        from harmonizing_flows.method.store import load_model, save_model
        from harmonizing_flows.method.training import (
            VALIDATION,
            fit_flow,
            fit_harmonizer,
            fit_model,
            fit_restorer,
            source_references,
        )

        ctx = Context(device=self.device)

        def fit_whole(vprofile: Profile, pretrain_harmonizer: bool = True) -> Model:
            model = fit_model(self.train_slices, self.val_slices, vprofile, ctx, progress=self.progress,
                              pretrain_harmonizer=pretrain_harmonizer)  # fmt: skip
            assert model is not None
            model.metadata.update(source_site=self.source.name, source_subjects=[_name(v) for v in self.train])
            return model

        def save(model: Model, folder: Path) -> None:
            save_model(model, folder, overwrite=True)

        paper = apply_overrides(self.profile, VARIANTS["paper-faithful"])
        paper_needed = any(v != "positive-alpha" for v in variants)
        adapts = [apply_overrides(self.profile, VARIANTS[v]).adapt for v in variants]
        network = any(a.harmonizer == "paper" for a in adapts)
        model_settings = {**_model_sections(paper), "pretrained_harmonizer": network}
        # a model without the network stores the first variant's adaptation settings (a curve's), so that
        # `hflow adapt` on it adapts what it can; adaptation settings do not change the fit
        stored = paper if network else replace(paper, adapt=adapts[0])

        @functools.cache
        def paper_model() -> Model:
            return self._fit_or_load("model", model_settings, lambda: fit_whole(stored, network), save, load_model,
                                     MODEL_CODE)  # fmt: skip

        def refit(vprofile: Profile, part: str) -> Model:
            model = copy.deepcopy(paper_model())
            model.profile = vprofile
            torch.manual_seed(vprofile.seed)  # initial weights from the seed alone, as in fit_model
            if part == "harmonizer":
                model.harmonizer = Harmonizer(vprofile.harmonizer)
                history = fit_harmonizer(model.harmonizer, self.train_slices, vprofile, ctx, progress=self.progress)
                model.metadata["training"] = {**model.metadata["training"], "harmonizer": history}
                model.metadata["pretrained_harmonizer"] = True
            elif part == "restorer":  # the restorer alone: the flow and the references stay the shared model's
                model.restorer = Restorer(vprofile.restoration)
                history = fit_restorer(model.restorer, self.train_slices, vprofile, ctx, progress=self.progress)
                model.metadata["training"] = {**model.metadata["training"], "restoration": history}
                return model.to("cpu")
            else:
                model.flow = Flow(vprofile.flow)
                history = fit_flow(model.flow, self.train_slices, vprofile, ctx, val=self.val_slices,
                                   progress=self.progress)  # fmt: skip
                model.metadata["training"] = {**model.metadata["training"], "flow": history,
                                              "flow_kept_epoch": kept_epoch(history, vprofile.flow_training,
                                                                            VALIDATION)}  # fmt: skip
                model.metadata["flow_adequacy"] = flow_adequacy(model.flow, self.val_slices, vprofile.augment,
                                                                self.device, seed=vprofile.seed).to_json()  # fmt: skip
            # measured through the harmonizers: a new harmonizer or a new flow changes them
            model.to(self.device)  # the copied flow of a harmonizer refit is still on the CPU
            pretrained = model.harmonizer.eval() if model.metadata.get("pretrained_harmonizer", True) else None
            histogram = model.metadata["source_histogram"]
            model.metadata.update(source_references(model.flow.eval(), self.val_slices, self.device, pretrained,
                                                    histogram, seed=vprofile.seed))  # fmt: skip
            return model.to("cpu")

        models: dict[str, Model] = {}
        for variant in variants:
            vprofile = apply_overrides(self.profile, VARIANTS[variant])
            if variant in ADAPT_ONLY:
                models[variant] = paper_model()
                continue
            part = {"positive-alpha": "harmonizer", "curve+restoration": "restorer"}.get(variant, "flow")
            if part == "harmonizer" and not paper_needed:
                build = functools.partial(fit_whole, vprofile)
            else:
                build = functools.partial(refit, vprofile, part)
            # a refit copies the shared model, with or without its network: keyed on that too
            settings = {**_model_sections(vprofile), "pretrained_harmonizer": network}
            models[variant] = self._fit_or_load(variant, settings, build, save, load_model, MODEL_CODE)
        return models

    # ----------------------------------------------------------------------------------------- scoring

    def run(self, sites: Sequence[Site], variants: Sequence[str]) -> SettingResult:
        from harmonizing_flows.evaluation.baselines import HistogramMatching, NyulStandardization, WhiteStripe

        with self.timed("fit segmenter"):
            segmenter = self.segmenter()
        with self.timed("fit BigAug segmenter"):
            self.bigaug = self.segmenter(bigaug=True)
        with self.timed("fit models"):
            models = self.models(variants)
        self.log("  ceiling: the segmenter on its own test volumes")
        with self.timed("score"):
            ceiling = [_score(segmenter, v.images, v, self.device) for v in self.test]
        stored = [v.images for v in self.train], [v.mask for v in self.train]
        with self.timed("histogram matching"):
            self.histogram = HistogramMatching().fit(*stored)
        with self.timed("Nyul"):
            self.nyul = NyulStandardization().fit(*stored)
        with self.timed("WhiteStripe"):
            self.whitestripe = WhiteStripe().fit(*stored)
        result = SettingResult(self.source.name, ceiling, [_name(v) for v in self.test], {})
        volumes: dict[str, dict[str, np.ndarray]] = {}  # each target's harmonized example volume per method
        for site in sites:
            if site.name != self.source.name:
                result.targets[site.name] = self.target(site, segmenter, models, variants, volumes)
        result.keep_examples(self.test[0].images, self.test[0].mask, volumes)
        result.timings = dict(self.timings)
        return result

    def target(
        self,
        site: Site,
        segmenter: torch.nn.Module,
        models: dict[str, Model],
        variants: Sequence[str],
        examples: dict[str, dict[str, np.ndarray]],
    ) -> TargetResult:
        """Every method on one target site's test volumes."""
        test = site.split("test")
        if not test:
            raise InputError(site.source, f"target site {site.name} has no subject in its test split")
        slices = Slices.pool(site.volumes)
        self.log(f"  target {site.name}: {len(site.volumes)} volumes ({len(slices)} slices), {len(test)} to score")
        harmonized, scores = self.baselines(site, test, slices, segmenter)
        site_examples = examples.setdefault(site.name, {})
        results: dict[str, VariantResult] = {}
        pretrained: dict[int, list[Scores]] = {}  # variants that share a model share its pre-trained harmonizer
        for variant in variants:
            model = models[variant]
            network = model.metadata.get("pretrained_harmonizer", True)
            if network and id(model) not in pretrained:
                with self.timed("pre-trained harmonizer"):
                    pretrained[id(model)] = [self._harmonized_score(segmenter, model.harmonizer, v) for v in test]
            with self.timed(f"adapt and score {variant}"):
                results[variant] = self.variant(
                    variant, model, site.volumes, slices, test, segmenter, site_examples, variant == variants[0]
                )
            if network:
                results[variant].scores = {"pre-trained harmonizer": pretrained[id(model)], **results[variant].scores}
                results[variant].scores.setdefault(START, pretrained[id(model)])  # the paper's family starts there
            with self.timed("flow adequacy"):
                results[variant].flow = self.flow_measures(model, slices)
            self.log(
                f"    {variant}: Dice none {_mean_dice(scores['none']):.1f} -> start "
                f"{_mean_dice(results[variant].scores[START]):.1f} -> source-bpd "
                f"{_mean_dice(results[variant].scores['adapted (source-bpd)']):.1f} "
                f"(kept step {results[variant].kept['source-bpd'].step})"
            )
        for name in ("none", "histogram matching", "Nyul", "WhiteStripe", "ComBat"):
            site_examples[name] = harmonized[name][0]
        return TargetResult([_name(v) for v in test], scores, results)

    def flow_measures(self, model: Model, slices: Slices) -> dict[str, float]:
        """The model's stored flow adequacy, and its flow's AUROC of per-slice brain bpd between the source
        validation slices and ``slices`` (a target's, before adaptation), on at most :data:`SEPARATION_SLICES`
        of each."""
        from harmonizing_flows.method.adequacy import auroc, slice_bpd

        if id(model) not in self._flows:
            flow = copy.deepcopy(model.flow).to(self.device)
            source = slice_bpd(flow, self.val_slices.spread(SEPARATION_SLICES), self.device, seed=self.profile.seed)
            self._flows[id(model)] = flow, source
        flow, source = self._flows[id(model)]
        target = slice_bpd(flow, slices.spread(SEPARATION_SLICES), self.device, seed=self.profile.seed)
        stored = model.metadata.get("flow_adequacy") or {}
        return {"brain_bpd": float(stored.get("brain_bpd", math.nan)),
                "auroc_augmented": float(stored.get("auroc_augmented", math.nan)),
                "auroc_target": auroc(source, target)}  # fmt: skip

    def baselines(
        self, site: Site, test: list[SlicedVolume], slices: Slices, segmenter: torch.nn.Module
    ) -> tuple[dict[str, list[np.ndarray]], dict[str, list[Scores]]]:
        """Every baseline on a target's test volumes: the harmonized slices of the intensity methods (for the
        figures) and every baseline's scores."""
        from harmonizing_flows.evaluation.baselines import combat, tent

        harmonized: dict[str, list[np.ndarray]] = {"none": [v.images.astype(np.float32) for v in test]}
        for name, method in (("histogram matching", self.histogram), ("Nyul", self.nyul),
                             ("WhiteStripe", self.whitestripe)):  # fmt: skip
            with self.timed(name):
                harmonized[name] = [method.transform(v.images, v.mask) for v in test]
        reference = self.train + [v for v in self.val if v not in self.train]  # source intensities, never labels
        with self.timed("ComBat"):
            combat_all = combat([v.images for v in reference], [v.mask for v in reference],
                                [v.images for v in site.volumes], [v.mask for v in site.volumes],
                                self.profile.evaluation)  # fmt: skip
        harmonized["ComBat"] = [combat_all[site.volumes.index(v)] for v in test]
        with self.timed("score"):
            scores = {
                name: [_score(segmenter, imgs, v, self.device) for imgs, v in zip(images, test, strict=True)]
                for name, images in harmonized.items()
            }
        with self.timed("TENT"):
            adapted = tent(segmenter, slices, self.profile.evaluation, device=self.device, seed=self.profile.seed)
            scores["TENT"] = [_score(adapted, v.images, v, self.device) for v in test]
        with self.timed("score"):
            scores["BigAug"] = [_score(self.bigaug, v.images, v, self.device) for v in test]
        return harmonized, scores

    def _harmonized_score(self, segmenter, harmonizer, volume: SlicedVolume) -> Scores:
        return _score(segmenter, harmonize_slices(harmonizer, volume, device=self.device), volume, self.device)

    def variant(
        self,
        variant: str,
        model: Model,
        volumes: list[SlicedVolume],
        slices: Slices,
        test: list[SlicedVolume],
        segmenter: torch.nn.Module,
        examples: dict[str, np.ndarray],
        show: bool,
    ) -> VariantResult:
        """One variant adapted to a target (``slices``: its ``volumes`` pooled), every step taken, each stopping
        rule's kept step scored."""
        from harmonizing_flows.method.adaptation import adapt_harmonizer, decide, starting_harmonizer

        vprofile = apply_overrides(self.profile, VARIANTS[variant])
        start = starting_harmonizer(model, vprofile.adapt)
        if start is not model.harmonizer:  # a harmonizer that takes each volume prepared (histogram-matched)
            slices = Slices.pool([start.prepare(v) for v in volumes])
        # the cheap Dice of the curves: every k-th brain slice of the test volumes
        curve_slices = Slices.pool([start.prepare(v) for v in test], labels=True)
        pick = torch.arange(0, len(curve_slices), self.profile.evaluation.curve_slice_stride)
        cx, cm = curve_slices.batch(pick, self.device)
        cl = curve_slices.batch_labels(pick, self.device)
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        if model.restorer is not None:
            model.restorer.to(self.device).eval()

        def observer(harmonizer, step: int) -> dict[str, float]:
            snapshots[step] = {k: v.detach().cpu().clone() for k, v in harmonizer.state_dict().items()}
            with torch.no_grad():  # the Dice of what harmonizing outputs: through the model's restorer, if any
                return {"dice": _pooled_dice(segmenter, model.output(harmonizer)(cx, cm), cm, cl)}

        unguarded = replace(vprofile.adapt, alpha_guard=0.0, intensity_guard=0.0)
        adapted = adapt_harmonizer(model, slices, replace(unguarded, stop="steps"), device=self.device,
                                   segmenter=segmenter, seed=self.profile.seed, progress=self.progress,
                                   observer=observer)  # fmt: skip
        curve, source_value = adapted.curve, adapted.summary["source_bpd"]
        kept: dict[str, Kept] = {}
        for rule, (_, fields) in RULES.items():
            if rule == "oracle":
                index = int(np.nanargmax([r["dice"] for r in curve]))
                reason = "best Dice on the test slices (reads labels: analysis only)"
            else:
                decision = decide(curve, replace(unguarded, **fields), source_value, final=True)
                index, reason = decision.index, decision.reason
            kept[rule] = Kept(int(curve[index]["step"]), reason)
        harmonizer = copy.deepcopy(start)
        output = model.output(harmonizer)
        images: dict[int, list[np.ndarray]] = {}
        scores: dict[str, list[Scores]] = {}
        for rule, k in kept.items():
            if k.step not in images:
                harmonizer.load_state_dict(snapshots[k.step])
                images[k.step] = [harmonize_slices(output, v, device=self.device) for v in test]
            if show and rule == DEFAULT_RULE:
                examples["Harmonizing Flows"] = images[k.step][0]
            scores[f"adapted ({rule})"] = [
                _score(segmenter, imgs, v, self.device) for imgs, v in zip(images[k.step], test, strict=True)
            ]
        if start is not model.harmonizer:  # Table 2's start; the pre-trained one the caller scores once per model
            if 0 not in images:
                harmonizer.load_state_dict(snapshots[0])
                images[0] = [harmonize_slices(output, v, device=self.device) for v in test]
            scores[START] = [_score(segmenter, x, v, self.device) for x, v in zip(images[0], test, strict=True)]
        if show and model.metadata.get("pretrained_harmonizer", True):
            examples["pre-trained harmonizer"] = harmonize_slices(model.harmonizer, test[0], device=self.device)
        started_as = adapted.summary["started_as"] + (", then the restorer" if model.restorer is not None else "")
        return VariantResult(scores, curve, kept, source_value, started_as)


def _name(volume: SlicedVolume) -> str:
    assert volume.subject is not None
    return volume.subject.subject


# --------------------------------------------------------------------------------------------- the whole run


def _check_data(data: Path, subjects: Sequence[Subject], letters: dict[str, str], chosen: Sequence[str]) -> None:
    """Refuse unusable splits before any network is fitted."""
    for site in letters.values():
        splits = [s.split for s in subjects if s.site == site]
        if "test" not in splits:
            raise InputError(data, f"target site {site} has no subject in its test split")
        if len(splits) < 2:
            raise InputError(data, f"site {site} has {len(splits)} subject; ComBat and the splits need at least 2")
    for letter in chosen:
        source = [s.split for s in subjects if s.site == letters[letter]]
        if "train" not in source:
            raise InputError(data, f"source site {letters[letter]} has no subject in its train split")
        if source.count("train") + source.count("val") < 2:  # ComBat's reference site
            raise InputError(
                data,
                f"source site {letters[letter]} has {source.count('train') + source.count('val')} subject in its "
                "train and validation splits; ComBat needs at least 2 as its reference",
            )


@system_errors
def benchmark(
    data: str | Path,
    out: str | Path,
    profile: Profile,
    *,
    settings: Sequence[str] | None = None,
    variants: Sequence[str] = tuple(VARIANTS),
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str = "",
) -> dict[str, Path]:
    """Run settings (each site in turn as the source) and write the tables, JSON and figures into ``out``.

    Args:
        data: A multi-site labelled dataset (manifest, site folders or BIDS), such as ``hflow simulate`` writes.
        out: The results folder: ``tables.md``, ``results.json``, ``figures/``, ``models/`` (fitted networks)
            and ``settings/`` (each finished setting's results). Both are reused when the same code runs again
            with the same settings on the same data and device, so an interrupted run resumes where it stopped.
        settings: Letters (A, B, ...) of the settings to run, in the order of the sorted site names; all by default.
        variants: Keys of :data:`VARIANTS`; the first is the one Table 1 reports.

    Returns:
        Name -> path of each written result file.
    """
    from harmonizing_flows.errors import OutputExistsError
    from harmonizing_flows.evaluation.report import write_report
    from harmonizing_flows.method.distributed import resolve_device

    data, out = Path(data), Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if (out / "results.json").exists() and not overwrite:
        raise OutputExistsError(out / "results.json")
    resolved = resolve_device(device)
    started = time.perf_counter()
    subjects = split_subjects(load_subjects(data))  # keeps the splits the data gives
    names = sorted({s.site for s in subjects})
    if len(names) < 2:
        raise InputError(data, f"holds {len(names)} site(s); the benchmark needs a source and at least one target")
    letters = {chr(ord("A") + i): site for i, site in enumerate(names)}
    chosen = list(settings or letters)
    if bad := [x for x in chosen if x not in letters]:
        this = ", ".join(f"{k}={v}" for k, v in letters.items())
        raise ConfigError(f"unknown setting(s) {bad}; this data has {this}")
    _check_data(data, subjects, letters, chosen)
    log(f"reading {len(subjects)} labelled volumes from {len(names)} sites")
    sites = read_sites(data, profile.slices, subjects=subjects, labels=True, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, SettingResult] = {}
    resumed: list[str] = []
    for letter in chosen:
        source = sites[names.index(letters[letter])]
        log(f"setting {letter}: source {source.name} -> {', '.join(s for s in names if s != source.name)}")
        key = cache.setting_key(profile, variants, source.name, subjects, resolved)
        earlier = cache.load_setting(out / "settings", letter, key)
        if earlier is not None:
            log(f"  reusing {out / 'settings' / letter}.json: finished earlier with the same code, settings and data")
            results[letter] = earlier
            resumed.append(letter)
            continue
        begun = time.perf_counter()
        results[letter] = _Setting(letter, source, profile, resolved, out, progress, log).run(sites, variants)
        results[letter].seconds = round(time.perf_counter() - begun, 1)
        cache.save_setting(out / "settings", letter, key, results[letter])
    meta = {
        "command": command,
        "data": str(data.resolve()),
        "sites": letters,
        "settings": chosen,
        "variants": list(variants),
        "profile": profile_to_dict(profile),
        "device": str(resolved),
        "seconds": round(time.perf_counter() - started, 1),
        "resumed": resumed,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
    }
    return write_report(results, meta, out)


def _machine() -> dict[str, Any]:
    """What the run ran on, for the report's provenance."""
    import os
    import platform

    from harmonizing_flows import __version__

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # CPU results depend on it: one thread and two give different float rounding, and training amplifies it
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "harmonizing_flows": __version__,
    }
