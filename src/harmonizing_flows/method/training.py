"""Fitting on the source site: pre-train the harmonizer (Eq. 5), train the guided flow (Eq. 4), measure the source
bpd on the validation split, and save everything as one model folder.

Training slices are decoded once and held in memory as uint8 (a site of 12 subjects at 224x224 is about 100 MB).
Every step draws its batch and augmentations from a generator seeded by (seed, network, epoch, step): runs are
reproducible, resuming from a checkpoint continues exactly, and under ``torchrun`` every process draws the same
global batch and computes its share (see :mod:`harmonizing_flows.method.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from harmonizing_flows.data.prepare import read_site
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import ConfigError, InputError, system_errors
from harmonizing_flows.method.adequacy import flow_adequacy
from harmonizing_flows.method.augment import FlowNegatives, HarmonizerAugmentation
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.distributed import Context, setup, stable_seed
from harmonizing_flows.method.flow import Flow, guided_loss
from harmonizing_flows.method.harmonizer import Harmonizer, pretraining_error
from harmonizing_flows.method.loop import StepFn, Validation, kept_epoch, prepare_checkpoints, run_training
from harmonizing_flows.method.restoration import Restorer, apply_degradation, draw_degradation, restoration_error
from harmonizing_flows.method.store import Model, save_model
from harmonizing_flows.profiles import Profile

__all__ = [
    "VALIDATION",
    "fit",
    "fit_flow",
    "fit_harmonizer",
    "fit_model",
    "fit_restorer",
    "measure_bpd",
    "source_bpd",
    "source_references",
]

# --------------------------------------------------------------------------------------------- the two networks


def harmonizer_step(profile: Profile, data: Slices, ctx: Context) -> StepFn:
    augment = HarmonizerAugmentation(profile.augment)

    def step(
        model: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        params = augment.draw(len(index), generator)  # the global batch's draws, the same on every process
        x, m = data.batch(index, ctx.device)
        total = m.sum()
        mine = ctx.share(len(index))
        share = params.select(mine)
        xs, ms = x[mine], m[mine]
        squared = pretraining_error(model, augment.apply(xs, ms, share), xs, ms)
        loss = squared * ctx.world / total.clamp_min(1.0)
        return loss, {"mse": float(ctx.all_sum(squared) / total.clamp_min(1.0))}

    return step


def flow_step(profile: Profile, data: Slices, ctx: Context) -> StepFn:
    """Eq. 4 (:func:`~harmonizing_flows.method.flow.guided_loss`) on one training batch: this process computes the
    bpd of its share of the positives and negatives, so that DDP's averaged gradients equal the whole batch's."""
    negatives = FlowNegatives(profile.negatives)
    by_samples = profile.flow.weighting == "samples"

    def step(
        model: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x, m = data.batch(index, ctx.device)
        neg, origin = negatives(x, m, generator)
        noise = torch.randn(x.shape[0] + neg.shape[0], *x.shape[1:], generator=generator).to(ctx.device)
        n_neg = len(origin)
        positive = torch.ones(len(index), dtype=torch.bool)
        if by_samples:  # Eq. 4 as written: a negative takes its original's place
            positive[origin] = False
        n_pos = int(positive.sum())
        mine = torch.zeros(len(index), dtype=torch.bool)
        mine[ctx.share(len(index))] = True
        rows = torch.nonzero(mine).flatten()
        mine_neg = (origin >= rows[0]) & (origin <= rows[-1])
        keep = (mine & positive).to(x.device)
        xs = torch.cat([x[keep], neg[mine_neg.to(neg.device)]])
        ms = torch.cat([m[keep], m[origin[mine_neg].to(m.device)]])
        ns = torch.cat([noise[: len(index)][keep.to(noise.device)], noise[len(index) :][mine_neg.to(noise.device)]])
        bpd = model(xs, ms, noise=ns)
        k = int(keep.sum())
        mean_positive = ctx.all_sum(bpd[:k].sum().detach()) / max(n_pos, 1)
        loss = guided_loss(bpd[:k], bpd[k:], profile.flow, n_positive=n_pos, n_negative=n_neg,
                           mean_positive=mean_positive, scale=ctx.world)  # fmt: skip
        stats = {"bpd": float(mean_positive)}
        if n_neg:
            stats["negative_bpd"] = float(ctx.all_sum(bpd[k:].detach().sum()) / n_neg)
        return loss, stats

    return step


def restoration_step(profile: Profile, data: Slices, ctx: Context) -> StepFn:
    """The restorer's loss on one batch: source slices degraded at random (some left clean), restored, compared
    with the clean slices over the brain."""
    config = profile.restoration

    def step(
        model: nn.Module, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x, m = data.batch(index, ctx.device)
        params = draw_degradation(len(index), tuple(x.shape[-2:]), config, generator)  # the global batch's draws
        total = m.sum()
        mine = ctx.share(len(index))
        xs, ms = x[mine], m[mine]
        squared = restoration_error(model, apply_degradation(xs, ms, params.select(mine)), xs, ms)
        loss = squared * ctx.world / total.clamp_min(1.0)
        return loss, {"mse": float(ctx.all_sum(squared.detach()) / total.clamp_min(1.0))}

    return step


def fit_restorer(
    restorer: Restorer,
    data: Slices,
    profile: Profile,
    ctx: Context,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Fit the restoration network on the source slices (:mod:`~harmonizing_flows.method.restoration`)."""
    return run_training(
        restorer,
        restoration_step(profile, data, ctx),
        len(data),
        profile.restoration_training,
        name="restoration",
        seed=profile.seed,
        ctx=ctx,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )


class _FlowBpd(nn.Module):
    """The flow's bpd as the module DDP wraps (its forward is what DDP synchronises)."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, noise: torch.Tensor) -> torch.Tensor:
        return self.flow.bpd(x, mask, noise=noise)


def fit_harmonizer(
    harmonizer: Harmonizer,
    data: Slices,
    profile: Profile,
    ctx: Context,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Pre-train the harmonizer to undo augmentations of the source slices (paper Eq. 5)."""
    _check_size(data, harmonizer.factor, "harmonizer")
    return run_training(
        harmonizer,
        harmonizer_step(profile, data, ctx),
        len(data),
        profile.harmonizer_training,
        name="harmonizer",
        seed=profile.seed,
        ctx=ctx,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )


VALIDATION = "val_brain_bpd"
"""The flow's validation score in its training history: the bpd of the source validation slices' brains."""

VALIDATION_SLICES = 64
"""Validation slices scored after every epoch, spread evenly through the split: the same slices every epoch, so
epochs compare paired, at a cost the fast profile's short epochs can carry."""


def fit_flow(
    flow: Flow,
    data: Slices,
    profile: Profile,
    ctx: Context,
    *,
    val: Slices | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train the flow on the source slices with guiding negatives (paper Eq. 4).

    With ``val``, every epoch records :data:`VALIDATION` (on :data:`VALIDATION_SLICES` of its slices), and
    ``flow_training.keep = "best"`` ends with the epoch that scored lowest (a brain the flow has not seen is what
    it must judge at test time, so held-out brain bpd is the measure of what it has learnt).
    """
    _check_size(data, flow.factor, "flow")
    wrapper = _FlowBpd(flow)
    validation = None
    if val is not None and len(val):
        scored = val.spread(VALIDATION_SLICES)
        validation = Validation(
            VALIDATION, lambda: measure_bpd(flow, scored, ctx.device, brain_only=True, seed=profile.seed)
        )
    return run_training(
        wrapper,
        flow_step(profile, data, ctx),
        len(data),
        profile.flow_training,
        name="flow",
        seed=profile.seed,
        ctx=ctx,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        validation=validation,
    )


def _check_size(data: Slices, factor: int, what: str) -> None:
    h, w = data.images.shape[-2:]
    if h % factor or w % factor:
        raise ConfigError(f"slices of {h}x{w}: the {what} needs multiples of {factor}; change slices.image_size")


@torch.no_grad()
def measure_bpd(
    flow: Flow,
    data: Slices,
    device: torch.device,
    *,
    brain_only: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    harmonizer: Harmonizer | CurveHarmonizer | None = None,
) -> float:
    """Mean bpd of ``data`` (through ``harmonizer`` when given) under ``flow`` with fixed dequantization noise, over
    all pixels or the brain's."""
    flow.eval()
    if harmonizer is not None:
        harmonizer = harmonizer.to(device).eval()
    generator = torch.Generator().manual_seed(stable_seed(seed, "measure"))
    total = 0.0
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        x, m = data.batch(index, device)
        if harmonizer is not None:
            x = harmonizer(x, m)
        noise = torch.randn(x.shape, generator=generator).to(device)
        total += float(flow.bpd(x, m, noise=noise, brain_only=brain_only).sum())
    return total / len(data)


def fit_model(
    train: Slices,
    val: Slices,
    profile: Profile,
    ctx: Context,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    pretrain_harmonizer: bool = True,
) -> Model | None:
    """Pre-train a harmonizer and train a flow on ``train`` (and the restorer, with ``restoration.enabled``);
    measure the source bpd on ``val``.

    Returns the model on the CPU with its metadata (image size, scaling, source bpd, training history), or None on
    processes other than the first under torchrun. Checkpoints go to the folder ``checkpoints`` when given.
    Without ``pretrain_harmonizer`` the paper's harmonizer is left untrained (``metadata["pretrained_harmonizer"]``
    is false): such a model adapts with the curve harmonizer only, which starts from histogram matching.

    Raises:
        InputError: A validation brain that histogram matching cannot map (almost empty, or of one intensity),
            before any training.
    """
    # The initial weights come from the seed alone, not from whatever drew from the global generator before
    # (a simulation run in the same process, an earlier setting of a benchmark).
    # the source's one summary that adaptation may keep (source-free): where histogram matching maps to
    histogram = train.brain_counts().tolist()
    try:  # the curve's reference matches the validation brain: refuse one that cannot be, before any training
        CurveHarmonizer(histogram).volume_lut(val)
    except InputError as error:
        raise InputError(None, f"the source validation slices: {error.problem}") from None
    torch.manual_seed(profile.seed)
    model = Model.create(profile)
    if checkpoints is not None and ctx.main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    started = time.perf_counter()

    def checkpoint(name: str) -> Path | None:
        return checkpoints / f"{name}.safetensors" if checkpoints is not None else None

    harmonizer_history = None
    if pretrain_harmonizer:
        harmonizer_history = fit_harmonizer(model.harmonizer, train, profile, ctx, checkpoint=checkpoint("harmonizer"),
                                            resume=resume, progress=progress)  # fmt: skip
    flow_history = fit_flow(
        model.flow, train, profile, ctx, val=val, checkpoint=checkpoint("flow"), resume=resume, progress=progress
    )
    restoration_history = None
    if profile.restoration.enabled:
        torch.manual_seed(profile.seed)  # its initial weights from the seed alone, as a refit of it alone draws
        model.restorer = Restorer(profile.restoration)
        restoration_history = fit_restorer(model.restorer, train, profile, ctx, checkpoint=checkpoint("restorer"),
                                           resume=resume, progress=progress)  # fmt: skip
    if not ctx.main:
        return None
    model.flow.eval()
    model.harmonizer.eval()
    pretrained = model.harmonizer if pretrain_harmonizer else None
    references = source_references(model.flow, val, ctx.device, pretrained, histogram, seed=profile.seed)
    model.metadata = {
        "image_size": list(profile.slices.image_size),
        "intensity_scaling": {
            "percentile": profile.slices.percentile,
            "levels": profile.slices.levels,
            "axis": profile.slices.axis,
        },
        "pretrained_harmonizer": pretrain_harmonizer,
        **references,
        "source_histogram": histogram,
        "flow_adequacy": flow_adequacy(model.flow, val, profile.augment, ctx.device, seed=profile.seed).to_json(),
        "training": {
            "harmonizer": harmonizer_history,
            "flow": flow_history,
            "flow_kept_epoch": kept_epoch(flow_history, profile.flow_training, VALIDATION),
            "restoration": restoration_history,
            "processes": ctx.world,
            "device": str(ctx.device),
            "seconds": round(time.perf_counter() - started, 1),
            "slices": {"train": len(train), "val": len(val)},
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "adaptation": None,
    }
    return model.to("cpu")


def source_bpd(
    flow: Flow, val: Slices, device: torch.device, harmonizer: Harmonizer | CurveHarmonizer, *, seed: int = 0
) -> dict[str, float]:
    """The source validation bpd that the ``source-bpd`` stopping rule aims for, over all pixels and the brain's,
    measured through ``harmonizer`` (as the target's bpd is measured through the adapted one, so that the rule
    compares images that went through the same kind of map)."""
    return {
        "all_pixels": measure_bpd(flow, val, device, seed=seed, harmonizer=harmonizer),
        "brain_only": measure_bpd(flow, val, device, brain_only=True, seed=seed, harmonizer=harmonizer),
    }


def source_references(
    flow: Flow,
    val: Slices,
    device: torch.device,
    harmonizer: Harmonizer | None,
    histogram: Sequence[float],
    *,
    seed: int = 0,
) -> dict[str, dict[str, float] | None]:
    """The stopping rule's two references, one per harmonizer family, as ``model.json`` stores them.

    ``source_bpd``: through the pre-trained ``harmonizer`` (None without one). ``source_bpd_curve``: through the
    curve harmonizer's start, the validation slices histogram-matched onto the source ``histogram`` (matched as
    one pool: the source's own volumes barely move)."""
    curve = CurveHarmonizer(histogram)
    return {
        "source_bpd": None if harmonizer is None else source_bpd(flow, val, device, harmonizer, seed=seed),
        "source_bpd_curve": source_bpd(flow, curve.prepare(val), device, curve, seed=seed),
    }


@system_errors
def fit(
    source: str | Path,
    out: str | Path,
    profile: Profile,
    *,
    site: str | None = None,
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path | None:
    """Fit a model on one source site: harmonizer, flow, source bpd; write the model folder ``out``.

    Checkpoints go to ``OUT.checkpoints/`` (beside the model folder); with ``resume`` training continues from them.
    Returns the model folder (None on processes other than the first under torchrun).

    Raises:
        InputError: Unreadable data, an ambiguous or unknown site, too few subjects to split, a validation brain
            that cannot be histogram-matched.
        OutputExistsError: ``out`` exists and ``overwrite`` is not set.
    """
    from harmonizing_flows.method.folders import check_output_folder
    from harmonizing_flows.method.store import FORMAT

    source, out = Path(source), Path(out)
    check_output_folder(out, overwrite, FORMAT)  # an interrupted fit never wrote OUT: resuming needs no overwrite
    ctx = setup(device)
    started = time.perf_counter()
    data = read_site(source, profile.slices, site=site, splits=("train", "val"), progress=progress and ctx.main,
                     desc="reading source volumes")  # fmt: skip
    train, val = data.fitting_splits()
    train_slices, val_slices = Slices.pool(train), Slices.pool(val)
    train_subjects = [v.subject for v in train if v.subject is not None]
    val_subjects = [v.subject for v in val if v.subject is not None]
    site_name = data.name
    del data, train, val  # the pooled brain slices are all that training needs

    checkpoints = out.with_name(out.name + ".checkpoints")
    # keyed on the validation files too: the flow's kept epoch is chosen on them
    prepare_checkpoints(checkpoints, profile, [*train_subjects, *val_subjects], resume=resume, main=ctx.main,
                        overwrite=overwrite)  # fmt: skip
    model = fit_model(train_slices, val_slices, profile, ctx, checkpoints=checkpoints, resume=resume, progress=progress)
    if model is None:
        return None
    model.metadata = {
        "source_site": site_name,
        "source_subjects": {"train": [s.subject for s in train_subjects], "val": [s.subject for s in val_subjects]},
        "source_data": str(source.resolve()),
        **model.metadata,
    }
    model.metadata["training"]["seconds"] = round(time.perf_counter() - started, 1)
    folder = save_model(model.to("cpu"), out, overwrite=overwrite)
    return folder
