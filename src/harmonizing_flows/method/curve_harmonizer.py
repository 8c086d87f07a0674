"""A harmonizer that starts at histogram matching: ``h(x) = c(HM_v(x))``.

Each volume ``v`` is first mapped onto the source's stored histogram (:func:`~harmonizing_flows.method.curve.
matching_lut`, rounded to integer levels as the source slices are): fixed, computed from the volume alone, and
source-free (the model keeps the source's histogram, not its images). Then one monotone curve ``c`` per target site
(:class:`~harmonizing_flows.method.curve.MonotoneCurve`) that adaptation moves. ``c`` starts as the identity, so
step 0 is histogram matching; it is shared by the site's volumes, so a new scan of an adapted site needs no new
adaptation; and it is one intensity map per volume, so neighbouring slices cannot flicker.

Its log-derivative gives adaptation a change-of-variables term (``AdaptConfig.jacobian_weight``): minimising
``bpd(h(x)) - log2 c'(x)`` matches the target's distribution to the flow's instead of seeking the flow's mode
(the flattest, darkest image), which the bpd alone rewards.

A model fitted with ``restoration.enabled`` passes its output through a restoration network fitted on the source
(:mod:`~harmonizing_flows.method.restoration`), for the noise and blur no intensity map can undo. Not here: a
smooth multiplicative bias field (its oracle showed no gain on top of histogram matching in the benchmark's first
setting).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import InputError
from harmonizing_flows.method.curve import LEVELS, MonotoneCurve, matching_lut

__all__ = ["MIN_BRAIN_PIXELS", "CurveHarmonizer"]

MIN_BRAIN_PIXELS = 500
"""A volume with fewer brain pixels on the model's grid has no histogram worth matching."""


class CurveHarmonizer(nn.Module):
    """``h(x) = c(HM_v(x))`` (see the module docstring).

    Args:
        source_histogram: The source's brain pixels per level 0..255 (``model.json``'s ``source_histogram``).

    Example:
        >>> harmonizer = CurveHarmonizer(source_histogram)
        >>> matched = harmonizer.prepare(sliced)          # once per volume, before pooling a site's slices
        >>> y = harmonizer(x, mask)                        # x: matched slices (B, 1, H, W) on 0..255
    """

    def __init__(self, source_histogram: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        histogram = torch.as_tensor(np.asarray(source_histogram), dtype=torch.float64)
        if histogram.shape != (LEVELS,) or not histogram.sum() > 0:
            raise ValueError(f"a source histogram of {LEVELS} levels with some counts is needed")
        self.register_buffer("source_histogram", histogram)
        self.curve = MonotoneCurve(1)

    def volume_lut(self, sliced: Slices) -> np.ndarray:
        """Histogram matching of one volume's brain onto the source, as 256 integer levels.

        Raises:
            InputError: The volume's brain is almost empty or of one intensity (nothing to match).
        """
        counts = sliced.brain_counts()
        where = getattr(sliced, "path", None)
        if counts.sum() < MIN_BRAIN_PIXELS:
            raise InputError(where, f"has {int(counts.sum())} brain pixels on the model's grid; histogram matching "
                                    f"needs {MIN_BRAIN_PIXELS} at least (is the mask almost empty?)")  # fmt: skip
        if np.count_nonzero(counts) < 2:
            raise InputError(where, "has one intensity in its whole brain; its histogram cannot be matched")
        return np.rint(matching_lut(self.source_histogram.cpu().numpy(), counts))

    def prepare(self, sliced: Slices, *, like: Slices | None = None) -> Slices:
        """One volume's slices mapped onto the source histogram (uint8, zero outside the brain), labels kept; with
        ``like`` (another cut of the same volume), by the map of its histogram. Raises as :meth:`volume_lut`."""
        lut = self.volume_lut(sliced if like is None else like).astype(np.uint8)
        images = np.where(sliced.mask.astype(bool), lut[sliced.images], 0).astype(np.uint8)
        return replace(sliced, images=images)

    def parts(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper harmonizer's interface: a gain of one per image and the offset map ``c(x) - x``, so that
        ``Harmonizer.apply`` gives ``c(x)`` (for code that scores both families alike; ``mask`` is unused)."""
        return torch.ones(x.shape[0], device=x.device, dtype=x.dtype), self.curve(x) - x

    @torch.no_grad()
    def volume_map(self, sliced: Slices) -> np.ndarray:
        """The harmonizer's map of one volume as 256 values, ``c(HM_v(level))`` for each input level: one
        intensity map, which applies on any grid (a restorer's correction comes on top). Raises as
        :meth:`volume_lut`."""
        knots = self.curve.knots()[0].double().cpu().numpy()
        return knots[self.volume_lut(sliced).astype(np.int64)]

    def harmonize(
        self, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Harmonized matched slices (zero outside ``mask``) and a gain of one per image (there is no per-slice
        gain: the interface is the paper harmonizer's)."""
        y = self.curve(x)
        if clamp:
            y = y.clamp(0.0, 255.0)
        return y * mask, torch.ones(x.shape[0], device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        return self.harmonize(x, mask, clamp=clamp)[0]

    def log_jacobian(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per image, ``log2 c'(x)`` summed over its brain pixels (the change-of-variables term, in bits; the
        adaptation divides it by the pixels its bpd counts)."""
        return (self.curve.log_derivative(x) * mask).sum((1, 2, 3)) / math.log(2.0)
