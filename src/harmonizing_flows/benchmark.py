"""The paper's evaluation protocol as a tool: settings A-D, baselines, stopping rules, guards, tables, figures.

For each setting one site is the source and every other site a target. On the source's training split it fits a
model (harmonizer and flow, :func:`harmonizing_flows.train.fit_model`) and a segmenter, which is then frozen. Each
method harmonizes the target sites' test volumes, the segmenter labels them, and :mod:`harmonizing_flows.metrics`
scores every test volume against its reference labels, in mm. Adaptation uses all of a target site's volumes,
without their labels, as the paper's test-time setting allows.

Harmonizing Flows is adapted once per target and variant, taking every step; the stopping rules (minimum entropy
and source bpd, each with and without the intensity guard; fixed steps; source bpd with the alpha guard) are
then replayed on the recorded curve with :func:`harmonizing_flows.adapt.decide`, which keeps the same step that
a run stopped by that rule keeps. The oracle keeps the step with the best Dice on the test slices: it reads
labels, so it is for analysis only.

Averages over settings are the mean of the settings' means, with the mean of their standard deviations, as in
the paper's tables. The gap closed is ``(method - none) / (ceiling - none)`` in Dice, of the averages over
settings, where the ceiling is the segmenter on its own source site's test volumes.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonizing_flows.config import AdaptConfig, SliceConfig
from harmonizing_flows.datasets import Subject, file_fingerprint, load_subjects, split_subjects
from harmonizing_flows.errors import InputError
from harmonizing_flows.labels import NUM_CLASSES, check_whole_brain
from harmonizing_flows.metrics import score_volume, subject_means
from harmonizing_flows.profiles import Profile, apply_overrides, profile_to_dict
from harmonizing_flows.report import IMAGE_KEYS
from harmonizing_flows.train import Slices

__all__ = [
    "DEFAULT_VARIANT",
    "RULES",
    "VARIANTS",
    "Stack",
    "benchmark",
    "load_stacks",
    "stacks_to_slices",
]

_PAPER = ("harmonizer.positive_alpha=false", "adapt.brain_only=false", "negatives.collapse_modes=false")
VARIANTS: dict[str, tuple[str, ...]] = {
    "paper-faithful": _PAPER,
    "brain-only": (*_PAPER, "adapt.brain_only=true"),
    "positive-alpha": (*_PAPER, "harmonizer.positive_alpha=true"),
    "collapse-negatives": (*_PAPER, "negatives.collapse_modes=true"),
}
"""The method's variants of Table 2: the paper-faithful one and the paper's with one guard that changes the
adaptation's path, each spelled out in full so that a profile's defaults cannot change
what a variant is. The alpha and intensity guards only stop a path early, so they are replayed on each
variant's curve, at the fixed values of :data:`RULES` (a profile's own ``adapt.alpha_guard`` and
``adapt.intensity_guard`` are not used here)."""

DEFAULT_VARIANT = "paper-faithful"
"""The variant that the default profiles fit and adapt (the paper's linear alpha, no guard that changes the
path; the stop-only intensity guard is on), and the one that ``hflow demo`` runs."""

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

EXAMPLE_RULE = "entropy+guard"
"""The rule whose kept step the slice figures show: what ``hflow adapt --segmenter`` does by default."""


@dataclass
class Stack:
    """One labelled subject volume as its fixed-size slices (``(N, H, W)``), with the voxel spacing in mm."""

    subject: str
    site: str
    split: str
    images: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    path: Path = field(default_factory=Path)


def _plane_spacing(affine: np.ndarray, axis: str) -> tuple[float, float, float]:
    from harmonizing_flows.volume import to_plane

    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    # the permutation of to_plane, read off a 1x2x3 array
    probe = to_plane(np.zeros((1, 2, 3)), axis).shape
    order = [(1, 2, 3).index(n) for n in probe]
    return tuple(float(zooms[i]) for i in order)  # type: ignore[return-value]


def load_stacks(subjects: Sequence[Subject], config: SliceConfig, *, progress: bool = False) -> list[Stack]:
    """Read each labelled subject once (image, mask, labels), checking that its labels are the 15-class table."""
    from tqdm.auto import tqdm

    from harmonizing_flows.volume import load_volume, slice_volume

    stacks = []
    for s in tqdm(subjects, desc="reading volumes", unit="vol", disable=not progress, leave=False):
        if s.labels is None:
            raise InputError(s.image, f"subject {s.subject} has no label map; evaluation needs one per subject")
        volume = load_volume(s.image, s.mask, s.labels)
        sliced = slice_volume(volume, config)
        check_whole_brain(sliced.labels, s.labels)
        stacks.append(
            Stack(
                s.subject,
                s.site,
                s.split or "",
                sliced.images,
                sliced.mask,
                sliced.labels,
                _plane_spacing(sliced.grid.affine, config.axis),
                Path(s.image),
            )
        )
    return stacks


def stacks_to_slices(stacks: Sequence[Stack], *, labels: bool = False) -> Slices:
    """The brain-containing slices of some stacks, as training and adaptation take them."""
    if not stacks:
        raise InputError(None, "no subjects to take slices from")
    keep = [s.mask.reshape(len(s.mask), -1).any(1) for s in stacks]
    if sum(int(k.sum()) for k in keep) == 0:
        raise InputError(stacks[0].path, "no slice with brain in these volumes")
    images = torch.from_numpy(np.concatenate([s.images[k] for s, k in zip(stacks, keep, strict=True)]))[:, None]
    masks = torch.from_numpy(np.concatenate([s.mask[k] for s, k in zip(stacks, keep, strict=True)]))[:, None]
    classes = None
    if labels:
        classes = torch.from_numpy(np.concatenate([s.labels[k] for s, k in zip(stacks, keep, strict=True)]))
    return Slices(images, masks, [s.subject for s in stacks], classes)


@torch.no_grad()
def _harmonize_stack(harmonizer: torch.nn.Module, stack: Stack, device: torch.device) -> np.ndarray:
    out = np.zeros(stack.images.shape, np.float32)
    brain = np.flatnonzero(stack.mask.reshape(len(stack.mask), -1).any(1))
    for start in range(0, len(brain), 32):
        rows = brain[start : start + 32]
        x = torch.from_numpy(stack.images[rows]).to(device).float()[:, None]
        m = torch.from_numpy(stack.mask[rows]).to(device).float()[:, None]
        out[rows] = harmonizer(x, m)[:, 0].cpu().numpy()
    return out


def _score(segmenter, images: np.ndarray, stack: Stack, device) -> dict[str, float]:
    from harmonizing_flows.segment import predict

    pred = predict(segmenter, images, stack.mask, device=device)
    return subject_means(score_volume(pred, stack.labels, stack.spacing))


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


def _summary(values: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for metric in values[0]:
        v = np.array([x[metric] for x in values], float)
        out[metric] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "n": int(np.isfinite(v).sum())}
    return out


# --------------------------------------------------------------------------------------------- one setting


@dataclass
class _Setting:
    letter: str
    source: str
    profile: Profile
    device: torch.device
    out: Path
    progress: bool
    log: Callable[[str], None]
    train_files: list[Path] = field(default_factory=list)


@functools.cache
def _code_digest() -> str:
    """A hash of this package's source: results computed by other code are never reused."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _key(*parts: Any) -> str:
    """What a stored result was computed from, as one hash: the code, torch's version and ``parts``."""
    import hashlib

    parts = (_code_digest(), torch.__version__, *parts)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _setting_key(
    profile: Profile, variants: Sequence[str], source: str, subjects: Sequence[Subject], device: torch.device
) -> str:
    """The key of one setting's results: everything that changes them."""
    files = file_fingerprint([p for s in subjects for p in (s.image, s.mask, s.labels)])
    splits = sorted((s.site, s.subject, str(s.split)) for s in subjects)
    return _key(profile_to_dict(profile), list(variants), RULES, source, files, splits, str(device))


def _save_setting(folder: Path, letter: str, key: str, result: dict[str, Any]) -> None:
    """Keep a finished setting under ``folder`` (``LETTER.json`` + ``LETTER.npz``), so an interrupted run resumes.

    The JSON names its key and is written last, after any older JSON is removed, so a half-written pair (or a new
    ``.npz`` beside an older run's JSON) is never taken for a finished setting.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{letter}.json").unlink(missing_ok=True)
    arrays = {"source_example": result["source_example"], "source_mask": result["source_mask"]}
    for target, images in result["examples"].items():
        for name, image in images.items():
            arrays[f"examples/{target}/{name}"] = image
    document = {"key": key, "examples": {t: list(images) for t, images in result["examples"].items()}}
    document["result"] = {k: v for k, v in result.items() if k not in IMAGE_KEYS}
    for path, write in (
        (folder / f"{letter}.npz", lambda f: np.savez_compressed(f, **arrays)),
        (folder / f"{letter}.json", lambda f: f.write(json.dumps(document, default=float).encode())),
    ):
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "wb") as handle:
            write(handle)
        tmp.replace(path)


def _load_setting(folder: Path, letter: str, key: str) -> dict[str, Any] | None:
    """A setting finished earlier with the same key, or None (also when its files are missing or damaged)."""
    try:
        document = json.loads((folder / f"{letter}.json").read_text(encoding="utf-8"))
        if document.get("key") != key:
            return None
        with np.load(folder / f"{letter}.npz", allow_pickle=False) as arrays:
            result = dict(document["result"])
            result["source_example"] = arrays["source_example"]
            result["source_mask"] = arrays["source_mask"]
            result["examples"] = {
                target: {name: arrays[f"examples/{target}/{name}"] for name in names}
                for target, names in document["examples"].items()
            }
    except Exception:  # a damaged cache (truncated zip, bad zlib stream, JSON of another shape) is recomputed
        return None
    return result


def _fit_or_load(setting: _Setting, name: str, profile: Profile, build: Callable[[], Any], save, load) -> Any:
    """Fit once and keep the result under OUT/models/SOURCE/NAME, so that a benchmark run can be resumed.

    A stored network is reused only when it was fitted with the same settings on the same training files
    (path, size and modification time of each), so new data is never judged by a stale network.
    """
    folder = setting.out / "models" / setting.source / name
    key = _key(profile_to_dict(profile), file_fingerprint(setting.train_files), str(setting.device))
    doc = folder / "model.json"
    if doc.is_file() and json.loads(doc.read_text(encoding="utf-8")).get("benchmark_key") == key:
        setting.log(f"  {name}: reusing {folder}")
        return load(folder)
    started = time.perf_counter()
    made = build()
    made.metadata["benchmark_key"] = key
    save(made, folder)
    setting.log(f"  {name}: fitted in {time.perf_counter() - started:.0f} s")
    return made


def _run_setting(
    setting: _Setting,
    stacks: dict[str, list[Stack]],
    variants: Sequence[str],
) -> dict[str, Any]:
    from harmonizing_flows.adapt import adapt_harmonizer, decide
    from harmonizing_flows.baselines import HistogramMatching, NyulStandardization, combat, tent
    from harmonizing_flows.distributed import Context
    from harmonizing_flows.harmonizer import Harmonizer
    from harmonizing_flows.segment import fit_segmenter, load_segmenter, save_segmenter
    from harmonizing_flows.store import Model, load_model, save_model
    from harmonizing_flows.train import fit_flow, fit_harmonizer, fit_model, source_bpd

    profile, device, log = setting.profile, setting.device, setting.log
    source = stacks[setting.source]
    train = [s for s in source if s.split == "train"]
    val = [s for s in source if s.split == "val"] or train
    test = [s for s in source if s.split == "test"]
    if not train or not test:
        raise InputError(source[0].path.parent, f"site {setting.source} needs subjects in its train and test splits")
    train_slices = stacks_to_slices(train, labels=True)
    val_slices = stacks_to_slices(val)
    setting.train_files = [s.path for s in train]
    ctx = Context(device=device)

    def fit_whole(vprofile: Profile) -> Model:
        model = fit_model(train_slices, val_slices, vprofile, ctx, progress=setting.progress)
        assert model is not None
        model.metadata.update(source_site=setting.source, source_subjects=[s.subject for s in train])
        return model

    def save(model: Model, folder: Path) -> None:
        save_model(model, folder, overwrite=True)

    # The paper-faithful model, fitted when a variant first needs it: brain-only adapts it as it is, and
    # collapse-negatives refits its flow. A whole fit of positive-alpha equals the paper-faithful flow with its own
    # harmonizer (fit_model draws the same initial weights and batches; tested), so when the paper-faithful model is
    # fitted anyway, positive-alpha refits only the harmonizer; alone (--variants positive-alpha) it is fitted whole.
    paper = apply_overrides(profile, VARIANTS["paper-faithful"])
    paper_needed = any(v != "positive-alpha" for v in variants)

    @functools.cache
    def paper_model() -> Model:
        return _fit_or_load(setting, "model", paper, lambda: fit_whole(paper), save, load_model)

    def fit_seg():
        seg = fit_segmenter(
            train_slices,
            profile,
            device=str(device),
            progress=setting.progress,
            metadata={"source_site": setting.source},
        )
        return seg

    segmenter = (
        _fit_or_load(
            setting, "segmenter", profile, fit_seg, lambda s, f: save_segmenter(s, f, overwrite=True), load_segmenter
        )
        .to(device)
        .eval()
    )

    models: dict[str, Model] = {}
    for variant in variants:
        vprofile = apply_overrides(profile, VARIANTS[variant])
        if variant == "positive-alpha":

            def fit_harmonizer_variant(vprofile: Profile = vprofile) -> Model:
                if not paper_needed:
                    return fit_whole(vprofile)
                model = copy.deepcopy(paper_model())
                model.profile = vprofile
                torch.manual_seed(vprofile.seed)  # initial weights from the seed alone, as in fit_model
                model.harmonizer = Harmonizer(vprofile.harmonizer)
                history = fit_harmonizer(model.harmonizer, train_slices, vprofile, ctx, progress=setting.progress)
                model.metadata["training"] = {**model.metadata["training"], "harmonizer": history}
                return model.to("cpu")

            models[variant] = _fit_or_load(setting, variant, vprofile, fit_harmonizer_variant, save, load_model)
            continue
        if variant in ("paper-faithful", "brain-only"):
            models[variant] = paper_model()
            continue

        def fit_flow_variant(vprofile: Profile = vprofile) -> Model:
            from harmonizing_flows.flow import Flow

            model = copy.deepcopy(paper_model())
            model.profile = vprofile
            torch.manual_seed(vprofile.seed)  # initial weights from the seed alone, as in fit_model
            model.flow = Flow(vprofile.flow)
            fit_flow(model.flow, train_slices, vprofile, ctx, progress=setting.progress)
            model.metadata["source_bpd"] = source_bpd(model.flow.eval(), val_slices, device, seed=vprofile.seed)
            return model.to("cpu")

        models[variant] = _fit_or_load(setting, variant, vprofile, fit_flow_variant, save, load_model)

    log("  ceiling: the segmenter on its own test volumes")
    ceiling = [_score(segmenter, s.images, s, device) for s in test]
    histogram = HistogramMatching().fit([s.images for s in train], [s.mask for s in train])
    nyul = NyulStandardization().fit([s.images for s in train], [s.mask for s in train])

    per_target: dict[str, Any] = {}
    examples: dict[str, dict[str, np.ndarray]] = {}
    for target_site, target in stacks.items():
        if target_site == setting.source:
            continue
        t_test = [s for s in target if s.split == "test"]
        if not t_test:
            raise InputError(target[0].path.parent, f"target site {target_site} has no subject in its test split")
        t_slices = stacks_to_slices(target)
        log(f"  target {target_site}: {len(target)} volumes ({len(t_slices)} slices), {len(t_test)} to score")
        harmonized: dict[str, list[np.ndarray]] = {
            "none": [s.images.astype(np.float32) for s in t_test],
            "histogram matching": [histogram.transform(s.images, s.mask) for s in t_test],
            "Nyul": [nyul.transform(s.images, s.mask) for s in t_test],
        }
        reference = train + [s for s in val if s not in train]  # source intensities only, never labels
        combat_all = combat(
            [s.images for s in reference],
            [s.mask for s in reference],
            [s.images for s in target],
            [s.mask for s in target],
            profile.evaluation,
        )
        harmonized["ComBat"] = [combat_all[target.index(s)] for s in t_test]
        scores: dict[str, list[dict[str, float]]] = {
            name: [_score(segmenter, imgs, s, device) for imgs, s in zip(images, t_test, strict=True)]
            for name, images in harmonized.items()
        }
        adapted_segmenter = tent(segmenter, t_slices, profile.evaluation, device=device, seed=profile.seed)
        scores["TENT"] = [_score(adapted_segmenter, s.images, s, device) for s in t_test]
        del adapted_segmenter

        # the cheap Dice of the curves: every k-th brain slice of the test volumes
        curve_slices = stacks_to_slices(t_test, labels=True)
        pick = torch.arange(0, len(curve_slices), profile.evaluation.curve_slice_stride)
        cx, cm = curve_slices.batch(pick, device)
        assert curve_slices.labels is not None
        cl = curve_slices.labels[pick].to(device).long()

        variant_results: dict[str, Any] = {}
        pretrained_scores: dict[int, list[dict[str, float]]] = {}
        for variant in variants:
            model = models[variant]
            vprofile = apply_overrides(profile, VARIANTS[variant])
            pretrained = model.harmonizer.to(device).eval()
            if id(model) not in pretrained_scores:  # variants that share a model share its pre-trained harmonizer
                pretrained_scores[id(model)] = [
                    _score(segmenter, _harmonize_stack(pretrained, s, device), s, device) for s in t_test
                ]
            scores_v = {"pre-trained harmonizer": pretrained_scores[id(model)]}
            snapshots: dict[int, dict[str, torch.Tensor]] = {}

            def observer(harmonizer, step: int, snapshots=snapshots, cx=cx, cm=cm, cl=cl) -> dict[str, float]:
                snapshots[step] = {k: v.detach().cpu().clone() for k, v in harmonizer.state_dict().items()}
                with torch.no_grad():
                    return {"dice": _pooled_dice(segmenter, harmonizer(cx, cm), cm, cl)}

            unguarded = replace(vprofile.adapt, alpha_guard=0.0, intensity_guard=0.0)
            config = replace(unguarded, stop="steps")
            result = adapt_harmonizer(
                model,
                t_slices,
                config,
                device=device,
                segmenter=segmenter,
                seed=profile.seed,
                progress=setting.progress,
                observer=observer,
            )
            curve = result.curve
            source_value = result.summary["source_bpd"]
            chosen: dict[str, tuple[int, str]] = {}
            for rule, (_, fields) in RULES.items():
                if rule == "oracle":
                    index = int(np.nanargmax([r["dice"] for r in curve]))
                    chosen[rule] = (index, "best Dice on the test slices (reads labels: analysis only)")
                    continue
                decision = decide(curve, replace(unguarded, **fields), source_value, final=True)
                chosen[rule] = (decision.index, decision.reason)
            harmonizer = copy.deepcopy(model.harmonizer).to(device).eval()
            kept_images: dict[int, list[np.ndarray]] = {}
            for rule, (index, _) in chosen.items():
                step = int(curve[index]["step"])
                if step not in kept_images:
                    harmonizer.load_state_dict(snapshots[step])
                    kept_images[step] = [_harmonize_stack(harmonizer, s, device) for s in t_test]
                if variant == variants[0] and rule == EXAMPLE_RULE:
                    examples.setdefault(target_site, {})["Harmonizing Flows"] = kept_images[step][0]
                scores_v[f"adapted ({rule})"] = [
                    _score(segmenter, imgs, s, device) for imgs, s in zip(kept_images[step], t_test, strict=True)
                ]
            if variant == variants[0]:
                examples.setdefault(target_site, {})["pre-trained harmonizer"] = _harmonize_stack(
                    pretrained, t_test[0], device
                )
            variant_results[variant] = {
                "scores": scores_v,
                "curve": curve,
                "kept": {rule: {"step": int(curve[i]["step"]), "reason": why} for rule, (i, why) in chosen.items()},
                "source_bpd": source_value,
            }
            model.harmonizer.cpu()
            log(
                f"    {variant}: Dice none {np.mean([x['dice'] for x in scores['none']]):.1f} -> pre-trained "
                f"{np.mean([x['dice'] for x in scores_v['pre-trained harmonizer']]):.1f} -> source-bpd "
                f"{np.mean([x['dice'] for x in scores_v['adapted (source-bpd)']]):.1f} "
                f"(kept step {int(curve[chosen['source-bpd'][0]]['step'])})"
            )
        for name in ("none", "histogram matching", "Nyul", "ComBat"):
            examples.setdefault(target_site, {})[name] = harmonized[name][0]
        per_target[target_site] = {
            "test_subjects": [s.subject for s in t_test],
            "scores": scores,
            "variants": variant_results,
        }
    return {
        "source": setting.source,
        "ceiling": ceiling,
        "test_subjects": [s.subject for s in test],
        "targets": per_target,
        "examples": examples,
        "source_example": test[0].images,
        "source_mask": test[0].mask,
    }


# --------------------------------------------------------------------------------------------- the whole run


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
    from harmonizing_flows.distributed import resolve_device
    from harmonizing_flows.errors import OutputExistsError
    from harmonizing_flows.report import write_report

    out = Path(out)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if (out / "results.json").exists() and not overwrite:
        raise OutputExistsError(out / "results.json")
    resolved = resolve_device(device)
    started = time.perf_counter()
    subjects = load_subjects(data)
    subjects = split_subjects(subjects)  # keeps the splits the data gives
    sites = sorted({s.site for s in subjects})
    if len(sites) < 2:
        raise InputError(data, f"holds {len(sites)} site(s); the benchmark needs a source and at least one target")
    letters = {chr(ord("A") + i): site for i, site in enumerate(sites)}
    chosen = list(settings or letters)
    bad = [x for x in chosen if x not in letters]
    if bad:
        raise ValueError(f"unknown setting(s) {bad}; this data has {', '.join(f'{k}={v}' for k, v in letters.items())}")
    # refuse unusable splits before any network is fitted
    for site in sites:
        splits = [s.split for s in subjects if s.site == site]
        if "test" not in splits:
            raise InputError(data, f"target site {site} has no subject in its test split")
        if len(splits) < 2:
            raise InputError(data, f"site {site} has {len(splits)} subject; ComBat and the splits need at least 2")
    for letter in chosen:
        if not any(s.site == letters[letter] and s.split == "train" for s in subjects):
            raise InputError(data, f"source site {letters[letter]} has no subject in its train split")
    log(f"reading {len(subjects)} labelled volumes from {len(sites)} sites")
    stacks: dict[str, list[Stack]] = {}
    for site in sites:
        stacks[site] = load_stacks([s for s in subjects if s.site == site], profile.slices, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    resumed: list[str] = []
    for letter in chosen:
        log(f"setting {letter}: source {letters[letter]} -> {', '.join(s for s in sites if s != letters[letter])}")
        key = _setting_key(profile, variants, letters[letter], subjects, resolved)
        earlier = _load_setting(out / "settings", letter, key)
        if earlier is not None:
            log(f"  reusing {out / 'settings' / letter}.json: finished earlier with the same code, settings and data")
            results[letter] = earlier
            resumed.append(letter)
            continue
        setting = _Setting(letter, letters[letter], profile, resolved, out, progress, log)
        begun = time.perf_counter()
        results[letter] = _run_setting(setting, stacks, variants)
        results[letter]["seconds"] = round(time.perf_counter() - begun, 1)
        _save_setting(out / "settings", letter, key, results[letter])
    meta = {
        "command": command,
        "data": str(Path(data).resolve()),
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
