"""MRI volumes in and out: NIfTI / MGZ -> 2D slices on the 0..255 scale, and the exact way back.

:func:`load_volume` reads an image with an optional brain mask and label map (checked against each other),
reorients them to RAS, and returns a :class:`Volume`. :func:`slice_volume` scales intensities robustly (a high
percentile inside the mask maps to 255), quantizes to 256 levels with the background at zero, cuts 2D slices along
one axis and pads or crops them to a fixed in-plane size. Data at another resolution than the profile's is first
resampled to it (:func:`conform`, see :mod:`harmonizing_flows.data.resample`). The result, a
:class:`SlicedVolume`, carries a :class:`SliceGrid` that records everything needed to undo those steps:
:func:`unslice` puts slices back on the input's own voxel grid, with its affine and header, and :func:`save_nifti`
writes them without ever leaving a half-written file.

Slices are stored as ``(n_slices, height, width)`` arrays in display order: for coronal and sagittal slices the top
row is superior, for axial slices the top row is anterior.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations

from harmonizing_flows.config import SliceAxis, SliceConfig
from harmonizing_flows.data.labels import to_classes
from harmonizing_flows.data.outputs import write_file
from harmonizing_flows.data.resample import conformed_grid, needs_resampling, resample_array
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.data.subject import Subject
from harmonizing_flows.errors import InputError, OutputExistsError

__all__ = [
    "SliceGrid",
    "SlicedVolume",
    "Volume",
    "check_not_labels",
    "check_volume",
    "check_voxel_size",
    "conform",
    "from_plane",
    "load_volume",
    "quantize",
    "quantize_with",
    "ras_shape",
    "read_image",
    "rewindow",
    "save_nifti",
    "slice_volume",
    "slices_to_ras",
    "to_image",
    "to_plane",
    "unslice",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")
_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
# Voxel sizes outside this range (mm) are a broken header, not a brain scan: a 160 mm "voxel" resampled to the
# model's 2 mm would build a grid of billions of voxels.
PLAUSIBLE_VOXEL_MM = (0.05, 20.0)
# No head needs a field of view wider than this (mm) along any axis; a wider one is a broken header, whose grid
# resampled to the model's voxels would fill the memory (a 256-voxel matrix with 10 mm in pixdim: 2.5 m, 1280^2 x
# 880 voxels at 2 mm).
MOST_FIELD_OF_VIEW_MM = 500.0
# A scan has hundreds of intensity values at least; a mask has 2, FreeSurfer's aseg about 45, a tissue map 4.
MOST_LABEL_VALUES = 64
# An affine may differ by this much (mm, or unitless for the rotation part) between image, mask and labels.
_AFFINE_TOLERANCE = 1e-3
# A skull-stripped brain fills at most about half of even a tightly cropped volume (an ellipsoid fills pi/6 of its
# box); a head with its noisy background fills nearly all of it.
_MOST_A_BRAIN_FILLS = 0.6


@dataclass(frozen=True)
class Volume:
    """One subject's image with its mask and labels, reoriented to RAS.

    Attributes:
        image: Intensities, float32, RAS array order.
        mask: Brain mask, bool. When no mask file is given, the voxels where the image is above zero.
        labels: Raw label values (aseg codes or classes) as int32, or None.
        affine: The RAS array's voxel-to-world affine.
        path: The image file.
        native_shape: The shape of the array on disk.
        native_affine: The affine on disk.
        header: The image header on disk (a NIfTI header, or an MGH header for .mgz); None for a volume made
            by :func:`conform`, which has no file of its own.
        to_ras: nibabel orientation transform from the array on disk to RAS.
    """

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    affine: np.ndarray
    path: Path
    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    header: Any
    to_ras: np.ndarray


@dataclass(frozen=True)
class SliceGrid:
    """Everything :func:`unslice` needs to put slices back on the input's voxel grid.

    Attributes:
        axis: The slicing plane.
        ras_shape: Shape of the RAS array that was sliced.
        affine: Its voxel-to-world affine (the voxel spacing of the slices; after :func:`conform`, the
            resampled grid's).
        start: Row and column in the RAS slice plane (display order) where the output window starts; negative
            means the slice was padded on that side.
        image_size: The window's size (height, width).
        scale: Input intensity units per quantization level (the robust maximum divided by ``levels - 1``).
        path: The image file the slices came from.
        native_shape, native_affine, header, to_ras: The input's geometry, as in :class:`Volume`.
    """

    axis: SliceAxis
    ras_shape: tuple[int, int, int]
    affine: np.ndarray
    start: tuple[int, int]
    image_size: tuple[int, int]
    scale: float
    path: Path
    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    header: Any
    to_ras: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)  # arrays: equal means the same object
class SlicedVolume(Slices):
    """A volume cut into quantized, fixed-size 2D slices: :class:`~harmonizing_flows.data.slices.Slices` that know
    their way back.

    Attributes:
        images: uint8 ``(n_slices, height, width)``, 0..levels-1, zero outside the brain.
        mask: bool, same shape.
        labels: uint8 class indices (see :mod:`harmonizing_flows.data.labels`), same shape, or None.
        grid: How to go back to the input's grid.
        brain_outside: The share of the volume's brain that the window left out (0 when it fits).
        subject: The dataset record the volume was read for, when it was read as part of one.
    """

    grid: SliceGrid
    brain_outside: float = 0.0
    subject: Subject | None = None

    @property
    def path(self) -> Path:
        return self.grid.path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the slice axis, the rows and the columns (as :func:`to_plane` orders them)."""
        zooms = np.sqrt((np.asarray(self.grid.affine)[:3, :3] ** 2).sum(0))
        order = [(1, 2, 3).index(n) for n in to_plane(np.zeros((1, 2, 3)), self.grid.axis).shape]
        return tuple(float(zooms[i]) for i in order)  # type: ignore[return-value]

    def with_subject(self, subject: Subject) -> SlicedVolume:
        return replace(self, subject=subject)


# --------------------------------------------------------------------------------------------- reading


def read_image(path: str | Path, *, role: str = "image") -> nib.spatialimages.SpatialImage:
    """Open a NIfTI or MGZ file with nibabel, raising :class:`InputError` with the path on any failure."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{role} file does not exist")
    if path.is_dir():
        raise InputError(path, f"{role} path is a folder, expected a .nii, .nii.gz or .mgz file")
    if not path.name.lower().endswith(VOLUME_SUFFIXES):
        raise InputError(path, f"{role} file is not a NIfTI or MGZ file (expected {', '.join(VOLUME_SUFFIXES)})")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types: ImageFileError, EOFError, zlib errors, ...
        raise InputError(path, f"cannot read {role} file ({type(exc).__name__}: {exc})") from exc
    return img


def ras_shape(img: nib.spatialimages.SpatialImage, config: SliceConfig | None = None) -> tuple[int, int, int]:
    """The shape an image's first three axes take once reoriented to RAS (from the header alone), and, given a
    ``config`` that resamples, once resampled to its voxel size as :func:`slice_volume` would."""
    ornt = orientations.io_orientation(img.affine)
    shape = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        shape[int(target)] = int(img.shape[axis])
    ras = (shape[0], shape[1], shape[2])
    if config is not None and config.resample:
        affine = img.affine @ orientations.inv_ornt_aff(ornt, img.shape[:3])
        if needs_resampling(affine, config.voxel_size):
            return conformed_grid(affine, ras, config.voxel_size)[1]
    return ras


def _volume_shape(img: nib.spatialimages.SpatialImage, path: Path, role: str) -> tuple[int, ...]:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        what = f"{len(shape)}D volume of shape {img.shape}" if len(shape) != 4 else f"4D volume of shape {img.shape}"
        raise InputError(path, f"{role} is a {what}; expected a single 3D volume")
    return shape


def check_voxel_size(img: nib.spatialimages.SpatialImage, path: Path) -> None:
    """Refuse a header whose voxel sizes or field of view no brain MRI has (:data:`PLAUSIBLE_VOXEL_MM`,
    :data:`MOST_FIELD_OF_VIEW_MM`): resampling it would build a grid that fills the memory.

    Raises:
        InputError: Naming the file, its voxel size and its field of view.
    """
    zooms = nib.affines.voxel_sizes(img.affine)
    fov = zooms * np.asarray(img.shape[:3], dtype=float)
    low, high = PLAUSIBLE_VOXEL_MM
    size, extent = "x".join(f"{z:.4g}" for z in zooms), "x".join(f"{f:.0f}" for f in fov)
    fix = "the header's affine (pixdim) is wrong: fix it (e.g. with nibabel or fslorient) before harmonizing"
    if not np.all((zooms >= low) & (zooms <= high)):
        raise InputError(path, f"the header gives voxels of {size} mm, outside the {low:g}-{high:g} mm of any brain "
                               f"MRI; {fix}")  # fmt: skip
    if fov.max() > MOST_FIELD_OF_VIEW_MM:
        raise InputError(path, f"the header gives a field of view of {extent} mm ({size} mm voxels), wider than "
                               f"{MOST_FIELD_OF_VIEW_MM:g} mm, more than any head; {fix}")  # fmt: skip


def check_not_labels(data: np.ndarray, path: Path) -> None:
    """Refuse an "image" whose content is a mask's (only 0 and 1, or 0 and 255) or a label map's: 3 to
    :data:`MOST_LABEL_VALUES` distinct whole numbers, or up to 300 spread beyond 255 (FreeSurfer's aparc+aseg and
    wmparc codes reach 2035 and 5002; a scan stored as whole numbers has thousands of values). Read on every
    second voxel along each axis: cheap, and a scan's noise shows there as well.

    Raises:
        InputError: Naming the file and what it holds.
    """
    values = np.unique(data[::2, ::2, ::2])
    whole = np.array_equal(values, np.round(values))
    if set(values.tolist()) in ({0, 1}, {0, 255}):
        what = "a binary mask"
    elif whole and (3 <= len(values) <= MOST_LABEL_VALUES or (len(values) <= 300 and values.max() > 255)):
        what = f"a label map ({len(values)} whole-number values)"
    else:
        return
    raise InputError(
        path,
        f"holds {what}, not an image; give it as the image's mask (<image>_mask.nii.gz, --mask) or labels "
        "(<image>_labels.nii.gz)",
    )


def check_volume(image: str | Path, mask: str | Path | None = None) -> None:
    """What can be checked of an image and its mask from their headers alone (readable, 3D, one grid), cheaply:
    a batch checks every input this way before it writes anything.

    Raises:
        InputError: As :func:`load_volume` would for those causes.
    """
    img = read_image(image)
    _volume_shape(img, Path(image), "image")
    check_voxel_size(img, Path(image))
    if mask is not None:
        mask_img = read_image(mask, role="mask")
        _volume_shape(mask_img, Path(mask), "mask")
        _check_same_grid(img, Path(image), mask_img, Path(mask), "mask")


def _read_array(img: nib.spatialimages.SpatialImage, path: Path, role: str, dtype: type) -> np.ndarray:
    shape = _volume_shape(img, path, role)
    try:
        data = np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    except Exception as exc:
        raise InputError(path, f"cannot decode {role} data ({type(exc).__name__}: {exc})") from exc
    return data


def _check_same_grid(ref: nib.spatialimages.SpatialImage, ref_path: Path, other, other_path: Path, role: str) -> None:
    ref_shape, other_shape = tuple(ref.shape[:3]), tuple(other.shape[:3])
    if ref_shape != other_shape:
        raise InputError(other_path, f"{role} has shape {other_shape} but image {ref_path.name} has {ref_shape}")
    if not np.allclose(ref.affine, other.affine, atol=_AFFINE_TOLERANCE):
        raise InputError(
            other_path,
            f"{role} affine differs from that of image {ref_path.name}; they must share a voxel grid "
            f"(largest difference {np.abs(ref.affine - other.affine).max():.4g})",
        )


def load_volume(
    image: str | Path,
    mask: str | Path | None = None,
    labels: str | Path | None = None,
    *,
    image_may_be_labels: bool = False,
) -> Volume:
    """Read an image, with its optional brain mask and label map, and reorient all of them to RAS.

    An image whose content is a mask's or a label map's is refused (:func:`check_not_labels`), unless
    ``image_may_be_labels`` (the simulator reads an anatomy's label map as its own image).

    Raises:
        InputError: A file is missing, unreadable, not 3D, has NaN or infinite voxels or implausible voxel sizes,
            or does not share the image's shape and affine; or the mask (given or derived) is empty.
    """
    path = Path(image)
    img = read_image(path)
    check_voxel_size(img, path)
    data = _read_array(img, path, "image", np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(path, f"image has {int(bad.sum())} NaN or infinite voxels")
    if not image_may_be_labels:
        check_not_labels(data, path)

    to_ras = orientations.io_orientation(img.affine)
    ras_affine = img.affine @ orientations.inv_ornt_aff(to_ras, data.shape)

    def ras(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(orientations.apply_orientation(array, to_ras))

    if mask is not None:
        mask_path = Path(mask)
        mask_img = read_image(mask_path, role="mask")
        _check_same_grid(img, path, mask_img, mask_path, "mask")
        mask_data = _read_array(mask_img, mask_path, "mask", np.float32)
        if not np.all(np.isfinite(mask_data)):
            raise InputError(mask_path, "mask has NaN or infinite voxels")
        mask_array = mask_data > 0
        if not mask_array.any():
            raise InputError(mask_path, "mask is empty (no voxel above zero)")
    else:
        mask_array = data > 0
        if not mask_array.any():
            raise InputError(path, "image has no voxel above zero, so no brain mask can be derived from it")
        share, negative = float(mask_array.mean()), float((data < 0).mean())
        if share > _MOST_A_BRAIN_FILLS or negative > 0.01:
            cause = (
                f"{share:.0%} of the volume is above zero, more than a skull-stripped brain fills"
                if share > _MOST_A_BRAIN_FILLS
                else f"{negative:.0%} of the voxels are negative (z-scored?), and they are not counted as brain"
            )
            warnings.warn(
                f"{path}: no brain mask given, so the brain is every voxel above zero, but {cause}; give a mask "
                "(--mask, or a <name>_mask file beside the image)",
                stacklevel=2,
            )

    label_array = None
    if labels is not None:
        labels_path = Path(labels)
        labels_img = read_image(labels_path, role="label map")
        _check_same_grid(img, path, labels_img, labels_path, "label map")
        raw = _read_array(labels_img, labels_path, "label map", np.float64)
        if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
            raise InputError(labels_path, "label map has non-integer, NaN or infinite values")
        label_array = ras(raw.astype(np.int32))

    return Volume(
        image=ras(data),
        mask=ras(mask_array),
        labels=label_array,
        affine=ras_affine,
        path=path,
        native_shape=tuple(int(s) for s in data.shape),
        native_affine=np.asarray(img.affine, dtype=float),
        header=img.header,
        to_ras=to_ras,
    )


# --------------------------------------------------------------------------------------------- slicing


def quantize(
    image: np.ndarray, mask: np.ndarray, percentile: float = 99.5, levels: int = 256, *, gain: float = 1.0
) -> tuple[np.ndarray, float]:
    """Scale so that ``percentile`` inside the mask maps to ``gain * (levels - 1)``, round, clip, zero the background.

    Returns:
        The uint8 image and the scale (input units per level), so that ``quantized * scale`` approximates the
        input to within half a level wherever it was not clipped.
    """
    inside = image[mask]
    top = float(np.percentile(inside, percentile)) if inside.size else 0.0
    if not top > 0:
        raise ValueError(f"the {percentile}th percentile of the image inside the mask is {top:g}; it must be positive")
    scale = top / ((levels - 1) * gain)
    return quantize_with(image, mask, scale, levels), scale


def quantize_with(image: np.ndarray, mask: np.ndarray, scale: float, levels: int = 256) -> np.ndarray:
    """``image`` on the levels of a known ``scale`` (input units per level): rounded, clipped, background zero."""
    q = np.rint(image * np.float32(1.0 / scale))
    np.clip(q, 0, levels - 1, out=q)
    q = q.astype(np.uint8)
    q[~mask] = 0
    return q


def to_plane(ras_array: np.ndarray, axis: SliceAxis) -> np.ndarray:
    """RAS array -> ``(n_slices, rows, cols)`` in display order (a view where possible)."""
    if axis == "coronal":  # slices along A; rows S->I; cols along R
        return ras_array.transpose(1, 2, 0)[:, ::-1, :]
    if axis == "axial":  # slices along S; rows A->P; cols along R
        return ras_array.transpose(2, 1, 0)[:, ::-1, :]
    return ras_array.transpose(0, 2, 1)[:, ::-1, :]  # sagittal: slices along R; rows S->I; cols along A


def from_plane(stack: np.ndarray, axis: SliceAxis) -> np.ndarray:
    """Inverse of :func:`to_plane`."""
    if axis == "coronal":
        return stack[:, ::-1, :].transpose(2, 0, 1)
    if axis == "axial":
        return stack[:, ::-1, :].transpose(2, 1, 0)
    return stack[:, ::-1, :].transpose(0, 2, 1)


def _window_start(extent: int, size: int, lo: int, hi: int) -> int:
    """Where a window of ``size`` starts along an axis of length ``extent``, given the brain spans lo..hi."""
    if size >= extent:
        return -((size - extent) // 2)  # pad, centring the whole image
    centre = (lo + hi + 1) / 2
    return int(min(max(round(centre - size / 2), 0), extent - size))  # crop around the brain


def _window(stack: np.ndarray, start: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Rows ``start[0]..start[0]+size[0]`` and likewise columns of every slice, zero outside the input."""
    out = np.zeros((stack.shape[0], *size), dtype=stack.dtype)
    src, dst = [], []
    for dim, (s, n) in enumerate(zip(start, size, strict=True)):
        extent = stack.shape[dim + 1]
        a, b = max(s, 0), min(s + n, extent)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[:, dst[0], dst[1]] = stack[:, src[0], src[1]]
    return out


def _unwindow(windowed: np.ndarray, start: tuple[int, int], extent: tuple[int, int]) -> np.ndarray:
    out = np.zeros((windowed.shape[0], *extent), dtype=windowed.dtype)
    src, dst = [], []
    for dim, s in enumerate(start):
        n = windowed.shape[dim + 1]
        a, b = max(s, 0), min(s + n, extent[dim])
        dst.append(slice(a, b))
        src.append(slice(a - s, b - s))
    out[:, dst[0], dst[1]] = windowed[:, src[0], src[1]]
    return out


def rewindow(slices: np.ndarray, source: SliceGrid, target: SliceGrid) -> np.ndarray:
    """Slices cut by the ``source`` grid, re-cut by the ``target`` grid of the same volume (zero where the source
    window did not reach)."""
    extent = to_plane(np.empty(source.ras_shape, dtype=bool), source.axis).shape[1:]
    return _window(_unwindow(slices, source.start, extent), target.start, target.image_size)


def conform(volume: Volume, voxel_size: float) -> Volume:
    """``volume`` on isotropic ``voxel_size`` mm voxels over the same field of view, or ``volume`` itself when
    its voxels are already within 10 % of that (:func:`harmonizing_flows.data.resample.needs_resampling`).

    The image is interpolated linearly (smoothed first where the grid gets coarser), the mask linearly and
    thresholded at one half, the labels to the nearest voxel. The result is a volume of its own, stored as RAS:
    its "native" grid is the resampled one, so :func:`unslice` writes it on that grid with a fresh header.
    """
    if not needs_resampling(volume.affine, voxel_size):
        return volume
    affine, shape = conformed_grid(volume.affine, volume.image.shape, voxel_size)
    image = resample_array(volume.image, volume.affine, affine, shape)
    mask = resample_array(volume.mask.astype(np.float32), volume.affine, affine, shape) >= 0.5
    if not mask.any():
        raise InputError(volume.path, f"no brain left after resampling to {voxel_size:g} mm voxels")
    labels = None
    if volume.labels is not None:
        labels = resample_array(volume.labels, volume.affine, affine, shape, order=0)
    return Volume(
        image=np.where(mask, np.maximum(image, 0), 0).astype(np.float32),
        mask=mask,
        labels=labels,
        affine=affine,
        path=volume.path,
        native_shape=shape,
        native_affine=affine,
        header=None,
        to_ras=orientations.io_orientation(affine),
    )


def slice_volume(volume: Volume, config: SliceConfig | None = None) -> SlicedVolume:
    """Quantize a volume to 0..255 and cut it into fixed-size 2D slices (see the module docstring).

    With ``config.resample``, a volume at another voxel size is first resampled to ``config.voxel_size``
    (:func:`conform`); the slices and their grid are then the resampled volume's.

    When the brain is larger than ``config.image_size`` in the slice plane, the window is centred on the brain and
    the parts outside it are lost (and come back as zero from :func:`unslice`).

    Raises:
        InputError: No brain in the mask, or more than ``config.max_brain_outside`` of it outside the window
            (data finer than the profile expects).
    """
    config = config or SliceConfig()
    if config.resample:
        volume = conform(volume, config.voxel_size)
    try:
        q, scale = quantize(volume.image, volume.mask, config.percentile, config.levels)
    except ValueError as exc:
        raise InputError(volume.path, str(exc)) from exc

    images = to_plane(q, config.axis)
    mask = to_plane(volume.mask, config.axis)
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    start = (
        _window_start(images.shape[1], config.image_size[0], int(rows[0]), int(rows[-1])),
        _window_start(images.shape[2], config.image_size[1], int(cols[0]), int(cols[-1])),
    )
    window_mask = _window(mask, start, config.image_size)
    outside = 1.0 - int(np.count_nonzero(window_mask)) / int(np.count_nonzero(mask))
    if outside > config.max_brain_outside:
        voxel = "x".join(f"{z:g}" for z in np.sqrt((volume.affine[:3, :3] ** 2).sum(0)))
        if needs_resampling(volume.affine, config.voxel_size):
            cause = (
                f"the data ({voxel} mm voxels) is finer than the profile expects: resample it to about "
                f"{config.voxel_size:g} mm (slices.voxel_size; slices.resample=true does it), or choose larger "
                "slices (slices.image_size)"
            )
        else:
            cause = f"the brain ({voxel} mm voxels) is larger than the slices: choose larger ones (slices.image_size)"
        raise InputError(
            volume.path,
            f"{outside:.0%} of the brain lies outside the {config.image_size[0]}x{config.image_size[1]} slices of "
            f"this profile (at most {config.max_brain_outside:.0%} may; slices.max_brain_outside): {cause}",
        )
    labels = None
    if volume.labels is not None:
        labels = _window(to_plane(to_classes(volume.labels, path=volume.path), config.axis), start, config.image_size)
    grid = SliceGrid(
        axis=config.axis,
        ras_shape=tuple(int(s) for s in volume.image.shape),
        affine=volume.affine,
        start=start,
        image_size=tuple(config.image_size),
        scale=scale,
        path=volume.path,
        native_shape=volume.native_shape,
        native_affine=volume.native_affine,
        header=volume.header,
        to_ras=volume.to_ras,
    )
    return SlicedVolume(
        images=_window(images, start, config.image_size),
        mask=window_mask,
        labels=labels,
        grid=grid,
        brain_outside=outside,
    )


def unslice(
    slices: np.ndarray,
    grid: SliceGrid,
    *,
    rescale: bool = True,
    dtype: np.dtype | type | None = None,
) -> nib.Nifti1Image:
    """Put slices back on the input's voxel grid, with its affine and header, as a NIfTI image.

    Args:
        slices: ``(n_slices, height, width)`` on the 0..255 scale (uint8 or float), as from :func:`slice_volume`
            or a network that kept that shape.
        grid: The :class:`SliceGrid` of the sliced volume.
        rescale: Multiply by ``grid.scale`` to return to the input's intensity units; otherwise stay on 0..255.
        dtype: Data type on disk; by default float32 when rescaling, else that of ``slices``.
    """
    slices = np.asarray(slices)
    plane_extent = to_plane(np.empty(grid.ras_shape, dtype=bool), grid.axis).shape
    expected = (plane_extent[0], *grid.image_size)
    if slices.shape != expected:
        raise ValueError(f"slices have shape {slices.shape}, expected {expected} for {grid.path.name}")
    data = slices.astype(np.float32) * np.float32(grid.scale) if rescale else slices
    default = np.float32 if rescale else data.dtype
    return to_image(slices_to_ras(data, grid), grid, dtype=dtype if dtype is not None else default)


def slices_to_ras(slices: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Slices of ``grid``'s window back in the RAS array they were cut from (zero where the window was not)."""
    plane_extent = to_plane(np.empty(grid.ras_shape, dtype=bool), grid.axis).shape
    return from_plane(_unwindow(slices, grid.start, plane_extent[1:]), grid.axis)


def to_image(ras: np.ndarray, like: Volume | SliceGrid, *, dtype: np.dtype | type = np.float32) -> nib.Nifti1Image:
    """A RAS array on ``like``'s grid as a NIfTI image in the orientation, affine and header it came with."""
    native = orientations.apply_orientation(ras, orientations.ornt_transform(_RAS, like.to_ras))
    dtype = np.dtype(dtype)
    native = np.ascontiguousarray(native).astype(dtype, copy=False)

    if isinstance(like.header, nib.Nifti1Header):
        header = like.header.copy()
        if isinstance(like.header, nib.Nifti2Header):
            out = nib.Nifti2Image(native, like.native_affine, header=header)
        else:
            out = nib.Nifti1Image(native, like.native_affine, header=header)
        # The input's own qform and sform with their codes, not one rebuilt from the other: after registration
        # they differ (FSL: qform the scanner's, sform the standard space's), and either may be unset
        out.set_qform(*header.get_qform(coded=True))
        out.set_sform(*header.get_sform(coded=True))
    else:  # MGZ, and resampled volumes: a fresh NIfTI header in mm, scanner coordinates (as mri_convert writes)
        out = nib.Nifti1Image(native, like.native_affine)
        out.header.set_xyzt_units("mm")
        out.header.set_zooms(nib.affines.voxel_sizes(like.native_affine))
        out.set_qform(like.native_affine, 1)
        out.set_sform(like.native_affine, 1)
    out.header.set_data_dtype(dtype)
    out.header["scl_slope"] = np.nan  # values are written as they are, not rescaled by a stale slope
    out.header["scl_inter"] = np.nan
    out.header["cal_min"] = out.header["cal_max"] = 0  # the input's display range means nothing on 0..255
    return out


# --------------------------------------------------------------------------------------------- writing


def save_nifti(image: nib.Nifti1Image, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a NIfTI file atomically: to a temporary file beside it, then renamed into place.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: output must end in .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"  # nibabel compresses by the suffix
    return write_file(path, lambda tmp: nib.save(image, tmp), suffix=suffix)
