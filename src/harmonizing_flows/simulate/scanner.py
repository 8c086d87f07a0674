"""Image formation: a site's scanner turns a pseudo-subject's labels into a quantized T1-weighted image.

The steps, in the order a real acquisition and export apply them:

1. Tissue properties per structure at the site's field strength (:mod:`.tissues`; a white/grey mixture unless the
   site gives a structure its own values), jittered per subject, and the site's signal equation
   (:mod:`.sequences`) give one signal per structure.
2. Within-tissue texture: a smooth multiplicative Gaussian random field, so that tissue is not piecewise constant.
3. Partial volume and resolution: one anisotropic Gaussian blur whose width combines the partial-volume kernel of
   the output voxel with the site's acquired voxel size (FWHM equal to the acquired size along each axis).
   Blurring the signal map equals mixing the per-structure signals by blurred label fractions, as the signal is
   linear in them.
4. Receive bias field, the product of two smooth multiplicative fields: the site's coil profile (``coil_bias``),
   fixed in scanner coordinates and shared by every scan of the site, as a receive array's sensitivity is (the head
   moves within it by the subject's pose); and a random field per scan (``bias_range``) for what changes from
   scan to scan (head size and position, loading, transmit field). The coil profile rises from the centre of the
   field of view to its edge, as the sensitivity of a surrounding array does, with an asymmetric part of its own.
5. Rician noise: magnitude of the complex signal with Gaussian noise of standard deviation WM signal / SNR.
6. Export: the brain mask applied, a high percentile inside the brain mapped to ``255 * intensity_scale``, clipped
   and quantized to 0..255.

References:
    | Gudbjartsson, Patz. The Rician distribution of noisy MRI data. MRM 34:910-914, 1995.
    | Sled, Zijdenbos, Evans. A nonparametric method for automatic correction of intensity nonuniformity in MRI
    | data. IEEE TMI 17:87-97, 1998 (smooth multiplicative bias fields).
    | Kwan, Evans, Pike. MRI simulation-based evaluation of image-processing and classification methods.
    | IEEE TMI 18:1085-1097, 1999 (BrainWeb: partial volume, noise and bias as separate simulated factors; its
    | 20 % and 40 % non-uniformity levels, fields estimated from real scans, span 0.9-1.1 and 0.8-1.2).
    | Chu et al. Comparison of two 32-channel head coils for brain imaging at 3 T. PLoS One 11:e0149446, 2016
    | (signal-to-noise ratio of 32-channel arrays 1.8 to 3.5 times higher at the periphery than at the centre).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from harmonizing_flows.config import SimulationConfig
from harmonizing_flows.data.volume import quantize
from harmonizing_flows.simulate.fields import gaussian_blur, smooth_field
from harmonizing_flows.simulate.sites import Site, site_key
from harmonizing_flows.simulate.tissues import Relaxation, base_tissues, structure_values, tissue_table

__all__ = ["acquire", "coil_profile"]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_BIAS_CONTROL_POINTS = 4
_COIL_SEED = 7  # purpose key of the coil profile's random draws, apart from every per-scan draw


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def _log_span(peak_to_peak: float) -> float:
    """The span of a log field whose exponential runs from ``1 - r/2`` to ``1 + r/2`` (``r`` peak-to-peak)."""
    return math.log((1 + peak_to_peak / 2) / (1 - peak_to_peak / 2)) if peak_to_peak > 0 else 0.0


def coil_profile(site: Site, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """The site's receive-coil log field on a grid of ``shape`` (RAS order), the same for all of its scans.

    An array's sensitivity falls from the elements at the head's surface towards its centre: the radial part is
    the squared distance from the centre of the field of view, scaled to the grid's half-widths. Element layout and
    where the head rests in the coil add an asymmetric part, a smooth random field drawn from the site's name and
    ``seed``. Both parts count equally; the sum is scaled so that the field spans ``site.coil_bias`` peak to peak
    over the ellipsoid inscribed in the grid, where the brain lies, and is zero on average there.

    The field is computed once per site, grid and seed and shared (read-only) by every scan of the site.
    """
    return _coil_profile(site.name, site.coil_bias, tuple(shape), seed)


@functools.lru_cache(maxsize=8)
def _coil_profile(name: str, coil_bias: float, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    radial = x * x + y * y + z * z
    inside = radial <= 1.0
    rng = np.random.default_rng(np.random.SeedSequence([seed, site_key(name), _COIL_SEED]))
    asymmetric = smooth_field(rng.normal(0.0, 1.0, (1, *([_BIAS_CONTROL_POINTS] * 3))), shape)[0]
    field = sum(part / part[inside].std().clamp_min(1e-6) for part in (radial, asymmetric))
    field = field - field[inside].mean()
    span = float(field[inside].max() - field[inside].min())
    return field * (_log_span(coil_bias) / max(span, 1e-6))


def acquire(
    labels: np.ndarray,
    mask: np.ndarray,
    site: Site,
    config: SimulationConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Image one pseudo-subject at one site.

    Args:
        labels: aseg codes on the output grid (RAS order).
        mask: Brain mask on the same grid.
        site: The scanner and protocol.
        config: Simulation settings (voxel size, texture, partial volume, percentile).
        rng: Source of every random draw of this image.

    Returns:
        The quantized image (uint8, zero outside the mask) and the parameters drawn.
    """
    generator = _torch_generator(rng)
    base = base_tissues(site.field_strength, site.tissues)
    jitter = {name: np.exp(rng.normal(0.0, config.relaxation_jitter, 2)) for name in base}
    subject_tissues = {
        name: Relaxation(t1=r.t1 * jitter[name][0], t2=r.t2, t2s=r.t2s, pd=r.pd * jitter[name][1])
        for name, r in base.items()
    }
    # A structure's own values are population means of grey tissue: they vary between subjects as grey matter does.
    t1_factor, pd_factor = jitter["grey_matter"]
    factor = {"t1": t1_factor, "pd": pd_factor}
    structures = {
        name: {k: v * factor.get(k, 1.0) for k, v in values.items()}
        for name, values in structure_values(site.field_strength, site.structures).items()
    }
    max_code = int(labels.max())
    table = tissue_table(subject_tissues, max(max_code, 2), structures)
    signal_per_code = site.table_signal(table).astype(np.float32)
    wm_signal = float(signal_per_code[2])

    codes = torch.from_numpy(labels.astype(np.int64))
    signal = torch.from_numpy(signal_per_code)[codes]
    mask_t = torch.from_numpy(mask)
    signal[~mask_t] = 0.0

    v = config.voxel_size
    if config.texture > 0:
        noise = torch.randn(labels.shape, generator=generator)
        sigma = config.texture_mm / v
        texture = gaussian_blur(noise, (sigma, sigma, sigma))
        texture *= config.texture / texture.std().clamp_min(1e-6)
        signal *= 1.0 + texture
        del noise, texture

    acquired = np.asarray(site.voxel_size_mm, dtype=float)
    extra_fwhm = np.sqrt(np.maximum(acquired**2 - v**2, 0.0)) / v  # voxels
    sigmas = tuple(float(math.hypot(config.partial_volume_voxels, f / _FWHM_PER_SIGMA)) for f in extra_fwhm)
    image = gaussian_blur(signal, sigmas)  # type: ignore[arg-type]
    del signal

    bias_control = rng.normal(0.0, 1.0, (1, *([_BIAS_CONTROL_POINTS] * 3)))
    log_bias = smooth_field(bias_control, labels.shape)[0]
    inside = log_bias[mask_t]
    span = float(inside.max() - inside.min()) if inside.numel() else 1.0
    target_span = _log_span(site.bias_range)
    log_bias = (log_bias - inside.mean()) * (target_span / max(span, 1e-6))
    if site.coil_bias > 0:
        log_bias += coil_profile(site, labels.shape, config.seed)
    image *= torch.exp(log_bias)
    del log_bias

    noise_sigma = wm_signal / site.snr
    real = image + noise_sigma * torch.randn(labels.shape, generator=generator)
    imag = noise_sigma * torch.randn(labels.shape, generator=generator)
    image = torch.sqrt(real * real + imag * imag)
    del real, imag

    q, scale = quantize(image.numpy(), mask, config.percentile, gain=site.intensity_scale)
    draws = {
        "tissue_t1_factor": {k: round(float(j[0]), 5) for k, j in jitter.items()},
        "tissue_pd_factor": {k: round(float(j[1]), 5) for k, j in jitter.items()},
        "white_matter_signal": round(wm_signal, 6),
        "noise_sigma": round(noise_sigma, 6),
        "blur_sigma_voxels": [round(s, 4) for s in sigmas],
        "bias_control_points": bias_control[0].round(4).tolist(),
        "bias_log_span": round(target_span, 5),
        "robust_max": round(scale * 255 * site.intensity_scale, 6),
    }
    return q, draws
