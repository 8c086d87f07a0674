"""Segmentation metrics per subject volume, in millimetres: Dice, HD95, the modified Hausdorff distance, ASSD.

Distances are measured between the surfaces of the predicted and the reference region of one class, with the
voxel spacing of the image header (anisotropic spacing is honoured). A surface voxel is a voxel of the region
with a face-neighbour outside it (the region minus its erosion by the 6-neighbourhood cross), as in MONAI and
medpy; ``d(A, B)`` is the set of distances from each surface voxel of A to the nearest surface voxel of B.

* HD95: ``max(P95 d(A, B), P95 d(B, A))``, the symmetric 95th-percentile Hausdorff distance.
* Modified Hausdorff distance (Dubuisson and Jain): ``max(mean d(A, B), mean d(B, A))``.
* ASSD: the mean of ``d(A, B)`` and ``d(B, A)`` pooled together.

Empty regions, decided once and used everywhere:

* reference and prediction both empty: the class is absent from this volume; every metric is NaN and the class
  is left out of the subject's mean (a volume cut from a site's field of view may miss the cerebellum, say);
* exactly one empty: Dice 0, and every distance is the diagonal of the volume's extent in mm, the largest
  distance the field of view allows, so that a missed structure is penalised rather than silently skipped.

References:
    | Dubuisson, Jain. A modified Hausdorff distance for object matching. ICPR 1994.
    | Dice. Measures of the amount of ecologic association between species. Ecology 26(3), 1945.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from harmonizing_flows.data.labels import NUM_CLASSES

__all__ = ["METRICS", "dice", "neighbour_difference", "score_volume", "subject_means", "surface_distances"]

METRICS = ("dice", "hd95", "mhd", "assd")
"""The per-class metrics of :func:`score_volume`, in its output's order."""

_CROSS = None  # scipy's default structuring element for erosion: the face-neighbour cross


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean regions (NaN when both are empty)."""
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(region: np.ndarray) -> np.ndarray:
    return region & ~ndimage.binary_erosion(region, structure=_CROSS, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and from ``b`` to ``a``.

    Both regions must be non-empty. The work is cropped to the regions' joint bounding box (plus one voxel of
    background, so that erosion sees the same neighbourhood as in the whole volume): the nearest surface voxel of
    either region always lies inside that box, so the distances are exact.
    """
    both = a | b
    box = ndimage.find_objects(both.astype(np.uint8))[0]
    box = tuple(slice(s.start, s.stop) for s in box)
    a = np.pad(a[box], 1)
    b = np.pad(b[box], 1)
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def score_volume(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    classes: Sequence[int] = tuple(range(1, NUM_CLASSES)),
) -> dict[str, np.ndarray]:
    """Per-class Dice, HD95, modified HD and ASSD of one volume (see the module docstring for empty regions).

    Args:
        pred: Predicted class indices, any dimension.
        ref: Reference class indices, the same shape.
        spacing: Voxel size along each axis of ``pred`` (mm).
        classes: The classes to score (default: the 14 foreground classes).

    Returns:
        Metric name -> float64 array with one value per class, in the order of ``classes``.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    if len(spacing) != pred.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {pred.ndim}-D volume")
    worst = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
    out = {name: np.full(len(classes), np.nan) for name in METRICS}
    for i, c in enumerate(classes):
        p, r = pred == c, ref == c
        has_p, has_r = bool(p.any()), bool(r.any())
        if not has_p and not has_r:
            continue
        out["dice"][i] = dice(p, r)
        if has_p != has_r:
            for name in ("hd95", "mhd", "assd"):
                out[name][i] = worst
            continue
        d_pr, d_rp = surface_distances(p, r, spacing)
        out["hd95"][i] = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        out["mhd"][i] = max(d_pr.mean(), d_rp.mean())
        out["assd"][i] = np.concatenate([d_pr, d_rp]).mean()
    return out


def subject_means(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric's mean over the classes present in the volume (Dice as a percentage, as the paper reports)."""
    means = {}
    for name, values in scores.items():
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else float("nan")
        means[name] = 100.0 * mean if name == "dice" else mean
    return means


def neighbour_difference(images: np.ndarray, mask: np.ndarray) -> float:
    """The 3D consistency of a harmonized volume: the mean absolute difference (grey levels) between neighbouring
    slices, over the brain pixels of both.

    Anatomy changes from slice to slice, so this is never 0; a harmonizer with parameters of its own per slice
    adds flicker on top, which shows as a value above the same volume's (or the source's) unharmonized one.

    Args:
        images: ``(n_slices, height, width)``, harmonized or not, on the scale of the source's grey levels.
        mask: The brain, the same shape.
    """
    both = mask[1:].astype(bool) & mask[:-1].astype(bool)
    if not both.any():
        return float("nan")
    x = np.asarray(images, np.float32)
    return float(np.abs(x[1:] - x[:-1])[both].mean())
