"""Contrast augmentations on the 0..255 scale, vectorized on the images' device.

They serve twice: to pre-train the harmonizer (undo an augmentation, paper Eq. 5) and to make the flow's guiding
negatives (paper Eq. 4). An optional random bias field (``AugmentConfig.bias_field``, off by default, not in the
paper) multiplies the harmonizer's inputs before the contrast changes, so that it also learns to undo smooth
spatial intensity changes such as a receive coil's. As in torchio, each random transform draws its parameters
(:meth:`draw`, on the CPU from a ``torch.Generator``, so a seed gives the same draws on any device) and calls a
deterministic twin with them (:func:`apply_curve`, :func:`adjust_contrast`, :func:`apply_bias`, :func:`collapse`),
which tests can call with fixed parameters.

Images are float tensors ``(B, 1, H, W)`` on 0..255 with a brain mask of the same shape; every output is clipped
to 0..255 and zero outside the mask.

References:
    | Beizaee, Desrosiers, Lodygensky, Dolz. Harmonizing Flows: Unsupervised MR harmonization based on
    | normalizing flows. IPMI 2023 (augmentations of sections 3.1 and 3.2).
    | Sudre, Cardoso, Ourselin. Longitudinal segmentation of age-related white matter hyperintensities.
    | Medical Image Analysis 38:50-64, 2017 (random smooth bias fields as an augmentation, as torchio's
    | RandomBiasField).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harmonizing_flows.config import AugmentConfig, NegativeConfig

__all__ = [
    "COLLAPSE_MODES",
    "ContrastParams",
    "FlowNegatives",
    "HarmonizerAugmentation",
    "MixParams",
    "adjust_contrast",
    "apply_bias",
    "apply_curve",
    "collapse",
    "dissimilarity",
    "draw_bias",
    "draw_contrast",
    "random_curves",
]

CURVE_SIZE = 257
"""A curve is a look-up table on 0..256 (0 -> 0, 256 -> 255), read by linear interpolation."""

COLLAPSE_MODES = ("darkened", "blurred", "constant", "inverted")


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def random_curves(n: int, margin: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random monotonic curves ``(n, 257)`` by dyadic midpoint refinement (intervals 128, 64, ..., 1).

    Each midpoint is drawn uniformly from the central ``1 - 2 * margin`` of the range between its neighbours, so the
    curve is strictly increasing wherever its neighbours differ.
    """
    lut = torch.zeros(n, CURVE_SIZE, dtype=torch.float64)
    lut[:, -1] = 255.0
    half = (CURVE_SIZE - 1) // 2
    while half >= 1:
        mid = torch.arange(half, CURVE_SIZE - 1, 2 * half)
        left, right = lut[:, mid - half], lut[:, mid + half]
        t = margin + (1 - 2 * margin) * torch.rand(n, len(mid), generator=generator, dtype=torch.float64)
        lut[:, mid] = left + t * (right - left)
        half //= 2
    return lut.float()


def apply_curve(x: torch.Tensor, lut: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Map each pixel of ``x`` (B, 1, H, W) through its image's curve ``lut`` (B, 257), interpolating linearly."""
    b = x.shape[0]
    flat = x.reshape(b, -1).clamp(0, CURVE_SIZE - 1)
    lower = flat.floor().clamp(max=CURVE_SIZE - 2)
    frac = flat - lower
    lut = lut.to(device=x.device, dtype=x.dtype)
    idx = lower.long()
    out = torch.gather(lut, 1, idx) * (1 - frac) + torch.gather(lut, 1, idx + 1) * frac
    return out.reshape_as(x).clamp(0, 255) * mask


@dataclass(frozen=True)
class ContrastParams:
    """Per-image parameters of the contrast pipeline; identity values (0, 1, 1) where a step was not drawn."""

    shift: torch.Tensor
    factor: torch.Tensor
    gamma: torch.Tensor


def draw_contrast(n: int, config: AugmentConfig, generator: torch.Generator | None = None) -> ContrastParams:
    """Draw the pipeline's parameters for ``n`` images; each step happens with ``config.step_probability``."""
    on = torch.rand(3, n, generator=generator, dtype=torch.float64) < config.step_probability
    shift = torch.where(on[0], _uniform(n, *config.shift, generator), 0.0)
    factor = torch.where(on[1], _uniform(n, *config.factor, generator), 1.0)
    gamma = torch.where(on[2], _uniform(n, *config.gamma, generator), 1.0)
    return ContrastParams(shift.float(), factor.float(), gamma.float())


def adjust_contrast(x: torch.Tensor, params: ContrastParams, mask: torch.Tensor) -> torch.Tensor:
    """Add, multiply, then gamma (on 0..1), clipping to 0..255 between steps; background stays zero."""

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

    y = ((x + per_image(params.shift)) * mask).clamp(0, 255)
    y = (y * per_image(params.factor)).clamp(0, 255)
    y = 255.0 * (y / 255.0).pow(per_image(params.gamma))
    return y * mask


BIAS_CONTROL_POINTS = 4
"""A random bias field is smooth: a 4 x 4 grid of log-values per image, upsampled bilinearly (no overshoot, so
the field spans exactly its drawn amplitude)."""


def draw_bias(n: int, amplitude: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Log bias fields ``(n, 1, 4, 4)`` on a coarse grid, each spanning ``log((1 + a/2) / (1 - a/2))`` with
    ``a`` drawn uniformly from ``0..amplitude`` (peak to peak; 0.4: up to +-20 %)."""
    grid = torch.randn(n, 1, BIAS_CONTROL_POINTS, BIAS_CONTROL_POINTS, generator=generator, dtype=torch.float64)
    a = _uniform(n, 0.0, amplitude, generator).view(-1, 1, 1, 1)
    span = torch.log((1 + a / 2) / (1 - a / 2))
    flat = grid.flatten(1)
    grid = (grid - flat.mean(1).view(-1, 1, 1, 1)) / (flat.amax(1) - flat.amin(1)).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (grid * span).float()


def apply_bias(x: torch.Tensor, log_fields: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply each image by ``exp`` of its coarse log field (B, 1, 4, 4) upsampled to the image; clip to 0..255."""
    log_fields = log_fields.to(device=x.device, dtype=x.dtype)
    field = F.interpolate(log_fields, size=x.shape[-2:], mode="bilinear", align_corners=True).exp()
    return (x * field).clamp(0, 255) * mask


@dataclass(frozen=True)
class MixParams:
    """Parameters of :class:`HarmonizerAugmentation`: per image, 0 curve only, 1 pipeline only, 2 both."""

    mode: torch.Tensor
    curves: torch.Tensor
    contrast: ContrastParams
    bias: torch.Tensor | None = None
    """Coarse log bias fields (B, 1, 4, 4), applied first, or None (no bias field: the paper's augmentation)."""

    def select(self, rows: slice | torch.Tensor) -> MixParams:
        """The parameters of some images only (a process's share of a batch)."""
        c = self.contrast
        return MixParams(
            self.mode[rows],
            self.curves[rows],
            ContrastParams(c.shift[rows], c.factor[rows], c.gamma[rows]),
            None if self.bias is None else self.bias[rows],
        )


class HarmonizerAugmentation:
    """The harmonizer's pre-training augmentation: curve only, pipeline only, or pipeline then curve.

    Example:
        >>> augment = HarmonizerAugmentation(AugmentConfig())
        >>> y = augment(x, mask, generator=torch.Generator().manual_seed(0))  # draw, then apply
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def draw(self, n: int, generator: torch.Generator | None = None) -> MixParams:
        cum = torch.tensor(self.config.mix, dtype=torch.float64).cumsum(0)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        mode = (u[:, None] >= cum[None, :2]).sum(1)
        curves = random_curves(n, self.config.curve_margin, generator)
        contrast = draw_contrast(n, self.config, generator)
        # drawn last and only when asked for, so that the paper's augmentation draws exactly what it drew before
        bias = draw_bias(n, self.config.bias_field, generator) if self.config.bias_field > 0 else None
        return MixParams(mode, curves, contrast, bias)

    @staticmethod
    def apply(x: torch.Tensor, mask: torch.Tensor, params: MixParams) -> torch.Tensor:
        if params.bias is not None:
            x = apply_bias(x, params.bias, mask)
        mode = params.mode.to(x.device).view(-1, 1, 1, 1)
        piped = torch.where(mode >= 1, adjust_contrast(x, params.contrast, mask), x)
        curved = apply_curve(piped, params.curves, mask)
        return torch.where(mode != 1, curved, piped)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, mask, self.draw(x.shape[0], generator))


def dissimilarity(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, ``mean|d| + 2 std(d)`` of ``d = y - x`` inside the mask, in float (0..255 units).

    The authors' code took ``d`` on uint8 arrays, where it wraps around; in float it measures what it says.
    """
    m = mask.to(x.dtype).flatten(1)
    d = (y - x).to(torch.float32).flatten(1) * m
    n = m.sum(1).clamp_min(1)
    mean_abs = d.abs().sum(1) / n
    mean = d.sum(1) / n
    var = ((d - mean[:, None]) ** 2 * m).sum(1) / n
    return mean_abs + 2 * var.sqrt()


def collapse(x: torch.Tensor, mask: torch.Tensor, mode: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """The ways adaptation fails, as images: per image ``mode`` indexes :data:`COLLAPSE_MODES`.

    ``strength`` in (0, 1]: darkened multiplies by ``1 - strength``, blurred blends the image towards its 9x9
    box average by strength, constant replaces the brain by a mix of its mean and itself, inverted maps
    ``v -> 255 - v`` inside the brain, blended by strength.
    """
    mode = mode.to(x.device).view(-1, 1, 1, 1)
    s = strength.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    m = mask.to(x.dtype)
    darkened = x * (1 - s)
    # One blur width for the batch keeps it a single pooling call; strength then blends towards it.
    k = 9
    blurred = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    blurred = x + s * (blurred - x)
    mean = (x * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)
    constant = x + s * (mean - x)
    inverted = x + s * ((255 - x) - x)
    out = torch.where(mode == 0, darkened, torch.where(mode == 1, blurred, torch.where(mode == 2, constant, inverted)))
    return out.clamp(0, 255) * m


class FlowNegatives:
    """Guiding negatives for the flow: augmented copies of some batch images that differ enough from them.

    Calling it returns ``(negatives, origin)``: the kept negatives and the index of the batch image each came
    from (possibly none). With ``config.collapse_modes``, one collapsed copy per chosen image joins them, kept by
    the same dissimilarity test.
    """

    def __init__(self, config: NegativeConfig | None = None) -> None:
        self.config = config or NegativeConfig()

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        n = x.shape[0]
        chosen = torch.nonzero(torch.rand(n, generator=generator) < cfg.fraction).flatten()
        k = len(chosen)
        if k == 0:
            return x[:0], chosen
        use_curve = torch.rand(k, generator=generator) < cfg.curve_share
        curves = random_curves(k, cfg.augment.curve_margin, generator)
        contrast = draw_contrast(k, cfg.augment, generator)
        xs, ms = x[chosen.to(x.device)], mask[chosen.to(x.device)]
        flag = use_curve.to(x.device).view(-1, 1, 1, 1)
        candidates = torch.where(flag, apply_curve(xs, curves, ms), adjust_contrast(xs, contrast, ms))
        origin = chosen
        if cfg.collapse_modes:
            mode = torch.randint(len(COLLAPSE_MODES), (k,), generator=generator)
            strength = 0.3 + 0.7 * torch.rand(k, generator=generator)
            candidates = torch.cat([candidates, collapse(xs, ms, mode, strength)])
            origin = torch.cat([chosen, chosen])
            xs, ms = torch.cat([xs, xs]), torch.cat([ms, ms])
        keep = (dissimilarity(xs, candidates, ms) > cfg.min_dissimilarity).cpu()
        return candidates[keep.to(x.device)], origin[keep]
