"""The methods Harmonizing Flows is compared with, each under the benchmark's protocol.

Every intensity method maps a target subject's slice stack ``(N, H, W)`` on 0..255 to a harmonized stack on
0..255 (float, zero outside the brain), which the frozen source segmenter then labels. What each needs at test
time is what the paper's SF / TA / UD columns record (:data:`REQUIREMENTS`):

* **histogram matching**: each target brain's intensity quantiles mapped onto the source training brains'
  pooled histogram (a stored summary of the source, not its images);
* **Nyul**: piecewise-linear standardisation of percentile landmarks (intensity-normalization's
  ``NyulNormalizer``, the field's reference implementation), fitted on the source training brains; the standard
  scale is mapped back onto the source's own intensities, since the segmenter was trained on those;
* **WhiteStripe**: each brain scaled linearly so that its normal-appearing white matter matches the source's
  (intensity-normalization's ``WhiteStripeNormalizer``, mapped back onto the source's white-matter mean and
  spread);
* **ComBat**: neuroCombat voxel-wise, with the source site as reference batch: it needs source and target images
  together, and all of a target site's images at once;
* **BigAug** (:mod:`~harmonizing_flows.evaluation.bigaug`): no image change; the segmenter itself is trained
  under heavy stacked augmentation, so it is its own harmonization (and so not task-agnostic);
* **TENT**: no image change; the segmenter's batch-norm scales and shifts are adapted to the target by minimising
  the entropy of its predictions (so it is tied to that segmenter: not task-agnostic).

References:
    | Nyul, Udupa, Zhang. New variants of a method of MRI scale standardization. IEEE TMI 19(2), 2000.
    | Johnson, Li, Rabinovic. Adjusting batch effects in microarray expression data using empirical Bayes
    | methods. Biostatistics 8(1), 2007; Fortin et al. Harmonization of cortical thickness measurements across
    | scanners and sites. NeuroImage 167, 2018 (neuroCombat).
    | Wang, Shelhamer, Liu, Olshausen, Darrell. Tent: fully test-time adaptation by entropy minimization.
    | ICLR 2021.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import types
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from harmonizing_flows.config import EvaluationConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import InputError
from harmonizing_flows.method.curve import mid_rank_quantiles
from harmonizing_flows.method.distributed import stable_seed

__all__ = ["REQUIREMENTS", "HistogramMatching", "NyulStandardization", "WhiteStripe", "combat", "tent"]

REQUIREMENTS: dict[str, tuple[bool, bool, bool]] = {
    # name: (source-free, task-agnostic, handles unseen domains without refitting)
    "none": (True, True, True),
    "histogram matching": (True, True, True),
    "Nyul": (True, True, True),
    "WhiteStripe": (True, True, True),
    "ComBat": (False, True, False),
    "TENT": (True, False, True),
    "BigAug": (True, False, True),
    "pre-trained harmonizer": (True, True, True),
    "Harmonizing Flows": (True, True, True),
}
"""What each method needs at test time, as the paper's columns: SF source-free (no source images; a stored
summary such as a histogram is allowed), TA task-agnostic (no task model or labels involved), UD unseen domains
(a new site needs no refitting on other sites' data)."""


def _finish(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.clip(values, 0.0, 255.0).astype(np.float32) * mask


class HistogramMatching:
    """Map each brain's intensity quantiles onto the source brains' pooled histogram."""

    def __init__(self, levels: int = 256) -> None:
        self.levels = levels
        self.quantiles: np.ndarray | None = None
        self.values: np.ndarray | None = None

    def fit(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> HistogramMatching:
        counts = np.zeros(self.levels)
        for image, mask in zip(images, masks, strict=True):
            counts += np.bincount(np.clip(np.rint(image[mask]), 0, self.levels - 1).astype(int), minlength=self.levels)
        # the mid-rank quantile of each occupied level, the same convention as ``transform`` uses for a target
        # brain, so that the source mapped onto its own histogram is unchanged (against the plain CDF it came
        # out about half a level darker)
        self.quantiles, self.values = mid_rank_quantiles(counts)
        return self

    def transform(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.quantiles is None:
            raise RuntimeError("fit before transform")
        values = image[mask].astype(np.float64)
        # mid-rank quantile of each value inside this brain, then the source level at that quantile
        order = np.sort(values)
        q = (np.searchsorted(order, values, "left") + np.searchsorted(order, values, "right")) / (2.0 * len(values))
        out = np.zeros(image.shape, dtype=np.float64)
        out[mask] = np.interp(q, self.quantiles, self.values)
        return _finish(out, mask)


class NyulStandardization:
    """intensity-normalization's Nyul normaliser, fitted on source brains, mapped back to source intensities."""

    def __init__(self) -> None:
        from intensity_normalization import NyulNormalizer

        self.normalizer = NyulNormalizer()
        self.source_landmarks: np.ndarray | None = None

    def fit(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> NyulStandardization:
        from intensity_normalization import create_image

        self.normalizer.fit_population(
            [create_image(i.astype(np.float32)) for i in images], [create_image(m.astype(np.float32)) for m in masks]
        )
        percentiles = self.normalizer.percentiles
        landmarks = [np.percentile(i[m], percentiles) for i, m in zip(images, masks, strict=True)]
        self.source_landmarks = np.mean(landmarks, 0)
        return self

    def transform(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        from intensity_normalization import create_image

        if self.source_landmarks is None:
            raise RuntimeError("fit before transform")
        image_in = create_image(image.astype(np.float32))
        standard = self.normalizer.transform(image_in, create_image(mask.astype(np.float32))).get_data()
        scale, source = self.normalizer.standard_scale, self.source_landmarks
        back = np.interp(standard, scale, source)
        # np.interp holds the ends flat; extend linearly, as the normaliser itself does
        lo, hi = standard < scale[0], standard > scale[-1]
        back[lo] = source[0] + (standard[lo] - scale[0]) * (source[1] - source[0]) / (scale[1] - scale[0])
        back[hi] = source[-1] + (standard[hi] - scale[-1]) * (source[-1] - source[-2]) / (scale[-1] - scale[-2])
        return _finish(back, mask)


class WhiteStripe:
    """WhiteStripe: each brain scaled so that its normal-appearing white matter (a stripe of intensities around
    the highest tissue mode, intensity-normalization's ``WhiteStripeNormalizer``) has the mean and spread of the
    source training brains' white matter. Linear per volume: it moves the white matter, not the contrast.

    References:
        | Shinohara et al. Statistical normalization techniques for magnetic resonance imaging. NeuroImage:
        | Clinical 6, 2014.
    """

    def __init__(self, width: float = 0.05) -> None:
        self.width = width
        self.source: tuple[float, float] | None = None

    def _stripe(self, image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        from intensity_normalization import create_image
        from intensity_normalization.normalizers.individual.whitestripe import WhiteStripeNormalizer

        fitted = WhiteStripeNormalizer(width=self.width).fit(
            create_image(image.astype(np.float32)), create_image(mask.astype(np.float32))
        )
        assert fitted.mean is not None and fitted.std is not None
        return fitted.mean, fitted.std

    def fit(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> WhiteStripe:
        stripes = np.array([self._stripe(i, m) for i, m in zip(images, masks, strict=True)])
        self.source = (float(stripes[:, 0].mean()), float(stripes[:, 1].mean()))
        return self

    def transform(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.source is None:
            raise RuntimeError("fit before transform")
        mean, std = self._stripe(image, mask)
        return _finish((image.astype(np.float64) - mean) / std * self.source[1] + self.source[0], mask)


def _align(stacks: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list]:
    """Stack volumes on one grid, each placed so that its brain's slice range is centred (the in-plane window is
    already centred on the brain by the slicing)."""
    ranges = []
    for m in masks:
        rows = np.flatnonzero(m.reshape(len(m), -1).any(1))
        ranges.append((int(rows[0]), int(rows[-1]) + 1))
    length = max(hi - lo for lo, hi in ranges)
    shape = (len(stacks), length, *stacks[0].shape[1:])
    images, brains, places = np.zeros(shape, np.float64), np.zeros(shape, bool), []
    for k, (s, m, (lo, hi)) in enumerate(zip(stacks, masks, ranges, strict=True)):
        if s.shape[1:] != shape[2:]:
            raise ValueError(f"ComBat needs slices of one size, not {s.shape[1:]} and {shape[2:]}")
        at = (length - (hi - lo)) // 2
        images[k, at : at + hi - lo] = s[lo:hi]
        brains[k, at : at + hi - lo] = m[lo:hi]
        places.append((lo, hi, at))
    return images, brains, places


def _neurocombat():
    """neuroCombat 0.2.12 (its latest release) still calls ``np.int``, which NumPy 2 removed; give its module a
    NumPy that has it, without touching NumPy itself."""
    import neuroCombat  # noqa: F401  (imports the module below)

    module = sys.modules["neuroCombat.neuroCombat"]
    if not hasattr(module.np, "int"):

        class _NumPy(types.ModuleType):
            int = int

            def __getattr__(self, name: str):
                return getattr(np, name)

        module.np = _NumPy("numpy")
    return module.neuroCombat


def combat(
    source: Sequence[np.ndarray],
    source_masks: Sequence[np.ndarray],
    target: Sequence[np.ndarray],
    target_masks: Sequence[np.ndarray],
    config: EvaluationConfig | None = None,
) -> list[np.ndarray]:
    """Voxel-wise ComBat of target stacks towards the source (reference batch); returns the target stacks.

    ComBat models each voxel across subjects, so it runs on the voxels that are brain in at least
    ``config.combat_min_share`` of all volumes; the rest of each target brain follows that volume's own map from
    raw to harmonized intensity, fitted on its ComBat voxels (the mean output in 64 intensity bins, interpolated).
    """
    import pandas as pd

    config = config or EvaluationConfig()
    if len(source) < 2 or len(target) < 2:
        raise InputError(None, f"ComBat needs at least two volumes per site, not {len(source)} and {len(target)}")
    run = _neurocombat()
    stacks = [*source, *target]
    images, brains, places = _align(stacks, [*source_masks, *target_masks])
    voxels = brains.mean(0) >= config.combat_min_share - 1e-9
    if voxels.sum() < 10:
        raise InputError(None, "ComBat: the volumes share almost no brain voxels; they are not on comparable grids")
    data = images[:, voxels].T  # features x samples
    batch = pd.DataFrame({"site": [0] * len(source) + [1] * len(target)})
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
        corrected = run(data, batch, "site", ref_batch=0)["data"]
    out = []
    for k in range(len(source), len(stacks)):
        lo, hi, at = places[k]
        raw, brain = images[k], brains[k]
        result = np.zeros_like(raw)
        result[voxels] = corrected[:, k]
        rest = brain & ~voxels
        if rest.any():
            x, y = raw[voxels], corrected[:, k]
            edges = np.quantile(x, np.linspace(0, 1, 65))
            which = np.clip(np.searchsorted(edges, x, "right") - 1, 0, 63)
            counts = np.bincount(which, minlength=64)
            centres = np.bincount(which, x, 64)[counts > 0] / counts[counts > 0]
            means = np.bincount(which, y, 64)[counts > 0] / counts[counts > 0]
            result[rest] = np.interp(raw[rest], centres, means)
        stack = np.zeros(stacks[k].shape, np.float64)
        stack[lo:hi] = result[at : at + hi - lo]
        mask = np.asarray(target_masks[k - len(source)], bool)
        out.append(_finish(stack, mask))
    return out


def _norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def tent(
    segmenter: nn.Module,
    target: Slices,
    config: EvaluationConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> nn.Module:
    """A copy of ``segmenter`` adapted to ``target`` by TENT, in evaluation mode.

    TENT normalises with the target's statistics and learns the normalisation's scales and shifts by entropy.
    It adapts with the statistics of random target batches, as the paper does; afterwards the statistics are
    re-estimated over all of ``target`` (``torch.optim.swa_utils.update_bn``) and frozen, so that a prediction
    does not depend on which slices share its batch (a volume's slices in order put a handful of edge slices
    in a batch of their own).
    """
    model = copy.deepcopy(segmenter).to(device)
    model.train()
    model.requires_grad_(False)
    layers = _norm_layers(model)
    if not layers:
        raise ValueError("TENT needs a segmenter with batch normalisation")
    params = []
    for layer in layers:
        layer.track_running_stats = False
        layer.running_mean = None
        layer.running_var = None
        layer.requires_grad_(True)
        params += [layer.weight, layer.bias]
    optimizer = torch.optim.Adam(params, lr=config.tent_lr)
    n = len(target)
    batch = min(config.tent_batch_size, n)
    for step in range(config.tent_steps):
        g = torch.Generator().manual_seed(stable_seed(seed, "tent", step))
        index = torch.randperm(n, generator=g)[:batch]
        x, m = target.batch(index, torch.device(device))
        log_p = torch.log_softmax(model(x), 1)
        entropy = -(log_p.exp() * log_p).sum(1, keepdim=True)
        loss = (entropy * m).sum() / m.sum().clamp_min(1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.requires_grad_(False)
    for layer in layers:
        layer.track_running_stats = True
        like = {"device": layer.weight.device}
        layer.register_buffer("running_mean", torch.zeros(layer.num_features, **like))
        layer.register_buffer("running_var", torch.ones(layer.num_features, **like))
        layer.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, **like))
    # shuffled full batches: each one a sample of the whole site, so the average of their statistics is the site's
    g = torch.Generator().manual_seed(stable_seed(seed, "tent", "statistics"))
    order = torch.randperm(n, generator=g)
    batches = (target.batch(order[i : i + batch], torch.device(device))[0] for i in range(0, n - batch + 1, batch))
    torch.optim.swa_utils.update_bn(batches, model)
    return model.eval()
