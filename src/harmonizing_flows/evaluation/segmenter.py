"""The frozen segmenter that judges harmonization: a 2D U-Net over the 15 classes, trained on the source site.

The paper measures a harmonizer by what a segmenter trained on the source site, then frozen, makes of its output
(section 4). The network is MONAI's residual U-Net (a well-kept, widely used implementation; nothing here needs a
custom one) with batch normalisation, so that TENT has normalisation parameters to adapt. It sees images on the
0..255 scale divided by 255, trains with cross-entropy plus soft Dice on the source's training slices (Adam,
the learning rate halved on a schedule, as :mod:`harmonizing_flows.method.training` does for the other networks), and is
saved as a folder like the models: ``model.json`` and ``segmenter.safetensors``, never pickled.

Predictions are forced to background outside the brain mask: every method is judged on the same brain.

References:
    | Kerfoot et al. Left-ventricle quantification using residual U-Net. STACOM 2018 (MONAI's ``UNet``).
    | Beizaee et al. Harmonizing Flows. IPMI 2023, section 4 (the protocol).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harmonizing_flows import __version__
from harmonizing_flows.config import SegmenterConfig
from harmonizing_flows.data.labels import NUM_CLASSES
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import ConfigError, InputError, system_errors
from harmonizing_flows.method.distributed import Context, setup
from harmonizing_flows.method.loop import StepFn, run_training
from harmonizing_flows.profiles import Profile

__all__ = [
    "SEGMENTER_FORMAT",
    "Segmenter",
    "check_compatible",
    "fit_segmenter",
    "fit_segmenter_on",
    "load_segmenter",
    "predict",
    "save_segmenter",
    "segmenter_step",
]

SEGMENTER_FORMAT = "harmonizing-flows segmenter"


class Segmenter(nn.Module):
    """Images ``(B, 1, H, W)`` on 0..255 -> class logits ``(B, 15, H, W)``.

    ``profile`` keeps the settings it was made with (its slicing is the one its inputs must follow).
    """

    def __init__(self, profile: Profile, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.profile = profile
        self.config: SegmenterConfig = profile.segmenter
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.net = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=NUM_CLASSES,
            channels=self.config.channels,
            strides=(2,) * (len(self.config.channels) - 1),
            num_res_units=self.config.res_units,
            norm="batch",
            dropout=self.config.dropout,
        )

    @property
    def factor(self) -> int:
        return self.config.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * (1.0 / 255.0))


Augmentation = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]
"""Images ``(B, 1, H, W)``, labels ``(B, H, W)``, masks and the step's generator -> the three augmented (as
:func:`harmonizing_flows.evaluation.bigaug.stacked_augmentation`)."""


def segmenter_step(profile: Profile, data: Slices, ctx: Context, augment: Augmentation | None = None) -> StepFn:
    """One step of cross-entropy plus (weighted) soft Dice on a batch of labelled source slices, augmented by
    ``augment`` when given (its draws from the step's generator, the same on every process)."""
    from monai.losses import DiceCELoss

    if data.labels is None:
        raise ValueError("the segmenter needs labelled slices")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=profile.segmenter.dice_weight)

    def step(model: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        mine = index[ctx.share(len(index))]
        x, m = data.batch(mine, ctx.device)
        y = data.batch_labels(mine, ctx.device)
        if augment is not None:
            x, y, m = augment(x, y, m, generator)
        loss = loss_fn(model(x), y[:, None])
        return loss, {"loss": float(ctx.all_sum(loss.detach())) / ctx.world}

    return step


def fit_segmenter(
    data: Slices,
    profile: Profile,
    *,
    device: str | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    augment: Augmentation | None = None,
) -> Segmenter:
    """Train a segmenter on labelled source slices (``profile.segmenter`` and ``profile.segmenter_training``),
    augmented by ``augment`` when given (BigAug's segmenter)."""
    ctx = setup(device)
    h, w = data.images.shape[-2:]
    if h % profile.segmenter.factor or w % profile.segmenter.factor:
        raise ConfigError(
            f"slices of {h}x{w}: the segmenter needs multiples of {profile.segmenter.factor}; "
            "change slices.image_size or segmenter.channels"
        )
    torch.manual_seed(profile.seed)
    segmenter = Segmenter(profile)
    started = time.perf_counter()
    history = run_training(
        segmenter,
        segmenter_step(profile, data, ctx, augment),
        len(data),
        profile.segmenter_training,
        name="segmenter",
        seed=profile.seed,
        ctx=ctx,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )
    segmenter.eval().cpu()
    segmenter.metadata = {
        **(metadata or {}),
        "image_size": [int(h), int(w)],
        "training": {"history": history, "seconds": round(time.perf_counter() - started, 1), "slices": len(data)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return segmenter


def save_segmenter(segmenter: Segmenter, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model.json`` (format, profile, metadata) and ``segmenter.safetensors`` atomically into ``out``."""
    from harmonizing_flows.method.folders import save_weights, write_document, write_folder

    def write(folder: Path) -> None:
        save_weights(segmenter, folder / "segmenter.safetensors", {"version": __version__})
        write_document(folder, SEGMENTER_FORMAT, segmenter.profile, segmenter.metadata)

    return write_folder(Path(out), overwrite, write, SEGMENTER_FORMAT)


def load_segmenter(folder: str | Path) -> Segmenter:
    """Read a segmenter folder; a missing, damaged or mismatched file is an InputError naming it."""
    from harmonizing_flows.method.folders import load_weights, read_document

    folder = Path(folder)
    profile, metadata = read_document(
        folder, SEGMENTER_FORMAT, "segmenter folder", "fit one with `hflow fit-segmenter`"
    )
    segmenter = Segmenter(profile, metadata)
    load_weights(segmenter, folder / "segmenter.safetensors")
    return segmenter.eval()


@torch.no_grad()
def predict(
    segmenter: nn.Module,
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> np.ndarray:
    """Class indices ``(N, H, W)`` uint8 for slices ``(N, H, W)`` on 0..255; background outside the masks.

    Only slices with brain go through the network, in whatever mode ``segmenter`` is in.
    """
    images = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    masks = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks).bool()
    out = torch.zeros(images.shape, dtype=torch.uint8)
    brain = torch.nonzero(masks.flatten(1).any(1)).flatten()
    for start in range(0, len(brain), batch_size):
        rows = brain[start : start + batch_size]
        x = images[rows].to(device).float()[:, None]
        labels = segmenter(x).argmax(1).to(torch.uint8).cpu()
        out[rows] = labels * masks[rows]
    return out.numpy()


def check_compatible(segmenter: Segmenter, model: Any, segmenter_path: str | Path | None = None) -> None:
    """A segmenter can judge a model's harmonizer only if both come from the same source site and image size."""
    seg_site, model_site = segmenter.metadata.get("source_site"), model.metadata.get("source_site")
    if seg_site and model_site and seg_site != model_site:
        raise InputError(
            segmenter_path, f"segmenter was trained on site {seg_site!r}, but the model's source site is {model_site!r}"
        )
    seg_size = segmenter.metadata.get("image_size")
    model_size = model.metadata.get("image_size") or list(model.profile.slices.image_size)
    if seg_size and list(seg_size) != list(model_size):
        raise InputError(
            segmenter_path,
            f"segmenter works on {seg_size[0]}x{seg_size[1]} slices, the model on {model_size[0]}x{model_size[1]}",
        )


@system_errors
def fit_segmenter_on(
    source: str | Path,
    out: str | Path,
    profile: Profile,
    *,
    site: str | None = None,
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train a segmenter on one site's training split of a labelled dataset and write its folder ``out``.

    Checkpoints go to ``OUT.checkpoints/`` (every ``segmenter_training.checkpoint_every`` epochs); with ``resume``
    training continues from them.
    """
    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.method.folders import check_output_folder
    from harmonizing_flows.method.loop import prepare_checkpoints

    source, out = Path(source), Path(out)
    check_output_folder(out, overwrite, SEGMENTER_FORMAT)
    site_data = read_site(source, profile.slices, site=site, splits=("train",), labels=True, progress=progress,
                          desc="reading labelled volumes")  # fmt: skip
    data = Slices.pool(site_data.volumes, labels=True)
    train = [v.subject for v in site_data.volumes if v.subject is not None]
    site_name = site_data.name
    del site_data  # the pooled brain slices are all that training needs
    checkpoints = out.with_name(out.name + ".checkpoints")
    ctx = setup(device)
    prepare_checkpoints(checkpoints, profile, train, resume=resume, main=ctx.main, overwrite=overwrite)
    ctx.barrier()
    segmenter = fit_segmenter(
        data,
        profile,
        device=device,
        checkpoint=checkpoints / "segmenter.safetensors",
        resume=resume,
        progress=progress,
        metadata={"source_site": site_name, "source_subjects": [s.subject for s in train]},
    )
    if ctx.main:  # under torchrun, one process writes
        save_segmenter(segmenter, out, overwrite=overwrite)
    ctx.barrier()
    return out
