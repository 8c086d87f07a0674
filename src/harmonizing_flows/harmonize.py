"""Harmonized NIfTI out: run a (fitted or adapted) harmonizer over every slice of a volume and write the result on
the input's own grid, with its affine and header, background zero.

A volume is cut as in fitting, adaptation and the benchmark: slices of the model's size, centred on the brain.
That window matters beyond speed: the harmonizer's gain alpha is pooled over the whole window, background
included, so another window gives another alpha (up to 14 % on a slice), and the file would not hold what
adaptation optimized and the benchmark scored. Brain outside the window (a sliver of the largest brains) comes
from a second pass over whole slices, padded to a multiple of the network's down-sampling, never cropped. When
much of the brain lies outside (a brain much larger than the model's window), the whole slices serve alone, with
a warning.

Data at another voxel size than the model's is resampled to it first (:func:`harmonizing_flows.data.volume.conform`),
but the output is not the coarse image brought back: the harmonizer is ``alpha * x + beta``, so its gain (one
per slice) and its offset map are interpolated back to the input's grid and applied to the input's own
intensities. A 1 mm scan harmonized by a 2 mm model keeps its 1 mm detail; only the correction is coarse.
A curve harmonizer (what ``hflow adapt`` adapts by default) is one intensity map per volume (its histogram
matched onto the source's, then the site's curve), so it applies to the input's own intensities on any grid. A
model's restoration network (``restoration.enabled``) runs on the model's grid, over whole slices (it is fully
convolutional), and its correction ``R(h(x)) - h(x)`` is carried to the input's grid like the fields above.
Intensities follow the model's scaling (a high percentile inside the brain maps to 255), and the output stays on
that 0..255 scale, as the source images the model learned from. Without a mask, the brain is every voxel above
zero (skull-stripped input); a ``<name>_mask`` file beside an image is its mask.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from harmonizing_flows.config import SliceConfig
from harmonizing_flows.data.datasets import (
    folder_images,
    freesurfer_subject_at,
    freesurfer_subjects_in,
    strip_volume_suffix,
)
from harmonizing_flows.data.outputs import check_location
from harmonizing_flows.data.resample import resample_array
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.data.volume import (
    VOLUME_SUFFIXES,
    SlicedVolume,
    Volume,
    check_volume,
    conform,
    load_volume,
    quantize_with,
    rewindow,
    save_nifti,
    slice_volume,
    slices_to_ras,
    to_image,
    to_plane,
)
from harmonizing_flows.errors import ConfigError, InputError, OutputExistsError, system_errors
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.distributed import channels_last, resolve_device
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.restoration import Restored
from harmonizing_flows.method.store import load_harmonizer

__all__ = ["apply_fields", "harmonize", "harmonize_slices", "harmonize_volume", "harmonizer_fields"]


@torch.no_grad()  # not inference_mode: tensors made here may meet training later
def harmonizer_fields(
    harmonizer: Harmonizer, sliced: Slices, *, device: torch.device | str = "cpu", batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """The harmonizer's gain alpha (one per slice, spread as a map) and offset beta on each brain slice of
    ``sliced``, float32 ``(N, H, W)``, zero on slices without brain. ``harmonizer`` must be in evaluation mode."""
    alpha = np.zeros(sliced.images.shape, dtype=np.float32)
    beta = np.zeros(sliced.images.shape, dtype=np.float32)
    brain = sliced.brain_rows()
    for start in range(0, len(brain), batch_size):
        rows = brain[start : start + batch_size]
        x, m = sliced.batch(rows, device)
        a, b = harmonizer.parts(x, m)
        alpha[rows] = a.float().cpu().numpy()[:, None, None]
        beta[rows] = b[:, 0].float().cpu().numpy()
    return alpha, beta


def apply_fields(alpha: np.ndarray, beta: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``h(x)`` (:meth:`Harmonizer.apply`) with gain and offset maps on ``x``'s own grid, float32 on 0..255."""

    def t(array: np.ndarray, dtype: type | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))

    return Harmonizer.apply(t(alpha), t(beta), t(x, np.float32), t(mask)).numpy()


def harmonize_slices(
    harmonizer: Harmonizer, sliced: Slices, *, device: torch.device | str = "cpu", batch_size: int = 32
) -> np.ndarray:
    """Harmonized slices (float32 on 0..255, zero outside the brain) of ``sliced``, as the model sees them: what
    :func:`harmonize_volume` writes, on the model's grid and window. The benchmark scores these."""
    harmonizer = channels_last(copy.deepcopy(harmonizer).to(device)).eval()  # the caller's keeps its device and mode
    sliced = harmonizer.prepare(sliced)
    alpha, beta = harmonizer_fields(harmonizer, sliced, device=device, batch_size=batch_size)
    return apply_fields(alpha, beta, sliced.images, sliced.mask)


@torch.no_grad()
def harmonize_volume(
    harmonizer: Harmonizer,
    image: str | Path | Volume,
    mask: str | Path | None = None,
    *,
    slices: SliceConfig | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    dtype: str = "uint8",
) -> nib.Nifti1Image:
    """The harmonized image of one volume (0..255, ``uint8`` or ``float32``), on the input's grid and header.

    ``image`` is a file (read with ``mask``) or a volume read already (its own mask serves)."""
    config = slices or SliceConfig()
    volume = image if isinstance(image, Volume) else load_volume(image, mask)
    model_grid = conform(volume, config.voxel_size) if config.resample else volume
    config = replace(config, resample=False)  # model_grid is on the model's grid already
    window = slice_volume(model_grid, replace(config, max_brain_outside=1.0))  # too much outside: warn, don't refuse
    curve = harmonizer.harmonizer if isinstance(harmonizer, Restored) else harmonizer
    if isinstance(curve, CurveHarmonizer):  # one intensity map per volume: it applies on the input's grid
        if model_grid is volume:  # the very levels adaptation saw
            levels = quantize_with(volume.image, volume.mask, window.grid.scale, config.levels)
        else:  # a finer grid keeps its own intensities between the levels
            levels = np.where(volume.mask, volume.image * np.float32(1.0 / window.grid.scale), np.float32(0.0))
        mapped = np.interp(levels, np.arange(config.levels), curve.volume_map(window))
        if isinstance(harmonizer, Restored):
            whole = slice_volume(model_grid, replace(config, image_size=_extent(model_grid, config)))
            correction = _restoration(harmonizer, curve.prepare(whole, like=window), device, batch_size)
            mapped = np.clip(mapped, 0.0, 255.0) + _to_input_grid(correction, whole, model_grid, volume)
        return _image(np.where(volume.mask, np.clip(mapped, 0.0, 255.0), 0.0).astype(np.float32), volume, dtype)
    extent = _extent(model_grid, config)
    f = harmonizer.factor
    size = (math.ceil(extent[0] / f) * f, math.ceil(extent[1] / f) * f)
    whole = slice_volume(model_grid, replace(config, image_size=size))  # padded: nothing outside
    outside = window.brain_outside
    harmonizer = channels_last(copy.deepcopy(harmonizer).to(device)).eval()  # the caller's keeps its device and mode

    def fields(sliced: SlicedVolume) -> tuple[np.ndarray, np.ndarray]:
        return harmonizer_fields(harmonizer, sliced, device=device, batch_size=batch_size)

    if outside > config.max_brain_outside:
        warnings.warn(
            f"{volume.path}: {outside:.0%} of the brain lies outside the model's {config.image_size[0]}x"
            f"{config.image_size[1]} slices, so the brain is larger than the model's; harmonized over whole "
            "slices, a view the model did not train on",
            stacklevel=2,
        )
        alpha, beta = fields(whole)
    else:
        alpha, beta = (rewindow(field, window.grid, whole.grid) for field in fields(window))
        if outside > 0:
            covered = rewindow(np.ones(window.mask.shape, dtype=bool), window.grid, whole.grid)
            alpha_whole, beta_whole = fields(whole)
            alpha, beta = np.where(covered, alpha, alpha_whole), np.where(covered, beta, beta_whole)
    alpha, beta = (_to_input_grid(field, whole, model_grid, volume) for field in (alpha, beta))
    if model_grid is volume:
        x = quantize_with(volume.image, volume.mask, whole.grid.scale, config.levels).astype(np.float32)
    else:
        # on the model's levels but neither rounded nor clipped: the finer grid's brightest voxels lie above the
        # coarse grid's percentile, and only the output is clipped
        x = np.where(volume.mask, volume.image * np.float32(1.0 / whole.grid.scale), np.float32(0.0))
    out = apply_fields(alpha.astype(np.float32), beta.astype(np.float32), x, volume.mask)
    return _image(out, volume, dtype)


def _extent(model_grid: Volume, config: SliceConfig) -> tuple[int, int]:
    """The in-plane size of the whole slices of ``model_grid``."""
    return to_plane(np.empty(model_grid.image.shape, dtype=bool), config.axis).shape[1:]


def _to_input_grid(field: np.ndarray, whole: SlicedVolume, model_grid: Volume, volume: Volume) -> np.ndarray:
    """A field on the whole slices of ``model_grid`` brought to ``volume``'s own grid (RAS voxels, float32).

    The fields, not the coarse image, go back to the input's grid. They hold on the brain only: outside the model
    grid's brain each voxel takes the nearest brain voxel's, so that interpolating onto a finer grid never mixes in
    the window's zeros or the background's values at the brain's edge."""
    field = slices_to_ras(field, whole.grid)
    if model_grid is volume:
        return field.astype(np.float32)
    brain = slices_to_ras(whole.mask, whole.grid)
    nearest = tuple(ndimage.distance_transform_edt(~brain, return_distances=False, return_indices=True))
    return resample_array(field[nearest], model_grid.affine, volume.affine, volume.image.shape).astype(np.float32)


@torch.no_grad()
def _restoration(restored: Restored, prepared: Slices, device: torch.device | str, batch_size: int) -> np.ndarray:
    """The restorer's correction ``R(h(x)) - h(x)`` on each brain slice of ``prepared`` (float32, zero outside the
    brain and on slices without brain)."""
    restored = copy.deepcopy(restored).to(device).eval()  # the caller's keeps its device
    correction = np.zeros(prepared.images.shape, dtype=np.float32)
    brain = prepared.brain_rows()
    for start in range(0, len(brain), batch_size):
        x, m = prepared.batch(brain[start : start + batch_size], device)
        h = restored.harmonizer(x, m)
        correction[brain[start : start + batch_size]] = (restored.restorer(h, m) - h)[:, 0].float().cpu().numpy()
    return correction


def _image(out: np.ndarray, volume: Volume, dtype: str) -> nib.Nifti1Image:
    if dtype == "uint8":
        return to_image(np.rint(out).astype(np.uint8), volume, dtype=np.uint8)
    return to_image(out, volume, dtype=np.float32)


def _inputs(path: Path) -> list[tuple[str, Path, Path | None, Path | None]]:
    """(output name, image, mask, labels) of a file, of a FreeSurfer subject (its folder or its ``mri/``), or of
    every image and FreeSurfer subject (a ``SUBJECTS_DIR``) of a folder, each with its companions if present."""

    def named(image: Path, mask: Path | None, labels: Path | None) -> tuple[str, Path, Path | None, Path | None]:
        stem = strip_volume_suffix(image.name)
        return f"{stem}{'.nii' if image.name.endswith('.nii') else '.nii.gz'}", image, mask, labels

    if path.is_file():
        beside = [named(path, m, lab) for _, _, m, lab in folder_images(path.parent, only=path.name)]
        return beside or [named(path, None, None)]
    if not path.is_dir():
        raise InputError(path, "does not exist")
    subject = freesurfer_subject_at(path)
    if subject is not None:  # not every .mgz of mri/: brain.mgz (or norm, T1) with brainmask.mgz, named for the subject
        return [(f"{subject.subject}.nii.gz", subject.image, subject.mask, subject.labels)]
    found = [named(image, mask, labels) for _, image, mask, labels in folder_images(path)]
    found += [(f"{s.subject}.nii.gz", s.image, s.mask, s.labels) for s in freesurfer_subjects_in(path)]
    if not found:
        raise InputError(path, f"holds no image ({', '.join(VOLUME_SUFFIXES)}) and no FreeSurfer subject folder")
    outputs: dict[str, Path] = {}
    for name, image, *_ in found:  # bert.nii.gz beside FreeSurfer's bert/ would both become bert.nii.gz
        if name in outputs:
            raise InputError(image, f"would be written as {name}, as {outputs[name]} is; rename one of them")
        outputs[name] = image
    return found


@system_errors
def harmonize(
    model_dir: str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    mask: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 32,
    dtype: str = "uint8",
    overwrite: bool = False,
    skip_existing: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Harmonize a NIfTI/MGZ file, or every image in a folder, with the model in ``model_dir``.

    Args:
        inputs: A file or a folder. ``<name>_mask.nii.gz`` beside an image is its brain mask; in a folder,
            companions (``_mask``, ``_labels``, ...) are not harmonized themselves. A FreeSurfer subject folder
            (or its ``mri/``) gives its ``brain.mgz`` with ``brainmask.mgz``, and so does each subject of a folder
            of them (a ``SUBJECTS_DIR``; FreeSurfer's templates such as ``fsaverage`` are left out).
        out: For a file: the output file (``.nii`` or ``.nii.gz``) or a folder; for a folder: a folder. Output
            files keep the input's name (``.mgz`` becomes ``.nii.gz``).
        mask: The brain mask of a single input file (instead of its companion).
        dtype: ``uint8`` (rounded, as the model's source images) or ``float32``.
        skip_existing: Leave outputs that exist as they are and harmonize the rest (to finish an interrupted
            folder).

    Returns:
        The files written. Inputs are never modified; an existing output is refused unless ``overwrite`` (or
        skipped with ``skip_existing``). Every input's header is checked before anything is written.
    """
    from harmonizing_flows.progress import progress_bar

    if dtype not in ("uint8", "float32"):
        raise ConfigError(f"dtype must be uint8 or float32, not {dtype!r}")
    if overwrite and skip_existing:
        raise ConfigError("overwrite and skip_existing exclude each other")
    inputs, out = Path(inputs), Path(out)
    found = _inputs(inputs)
    if mask is not None:
        if len(found) != 1 or not inputs.is_file():
            raise InputError(mask, "--mask goes with a single input file; in a folder name masks <image>_mask.nii.gz")
        found = [(found[0][0], found[0][1], Path(mask), found[0][3])]
    names_a_file = strip_volume_suffix(out.name) is not None
    if names_a_file and not out.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(out, "output is written as NIfTI: name it .nii or .nii.gz, or give a folder")
    if names_a_file and not inputs.is_file():
        raise InputError(out, f"{inputs} is a folder, so its outputs go to a folder, not to one file")
    check_location(out)
    if not names_a_file and out.exists() and not out.is_dir():
        raise OutputExistsError(out, "is a file; the outputs go to a folder")
    inputs_read = {p.resolve() for _, *files in found for p in files if p is not None}
    jobs = []
    for file_name, image, image_mask, _ in found:
        name = out if names_a_file else out / file_name
        if name.resolve() in inputs_read:
            raise OutputExistsError(name, "is an input; choose another output")
        if name.exists() and skip_existing:
            continue
        if name.exists() and not overwrite:
            raise OutputExistsError(name, "already exists; pass --overwrite to replace it, --skip-existing to keep it")
        jobs.append((image, image_mask, name))
    for image, image_mask, _ in jobs:
        check_volume(image, image_mask)
    resolved = resolve_device(device)
    harmonizer, profile, metadata = load_harmonizer(model_dir)
    source_site = metadata.get("source_site")
    written = []
    for image, image_mask, target in progress_bar(
        jobs, desc="harmonizing", unit="vol", enabled=progress and len(jobs) > 1
    ):
        try:
            result = harmonize_volume(
                harmonizer,
                image,
                image_mask,
                slices=profile.slices,
                device=resolved,
                batch_size=batch_size,
                dtype=dtype,
            )
        except InputError as exc:
            if written:  # say what is done, so that a rerun can keep it
                exc.add_note(
                    f"{len(written)} of {len(jobs)} volumes were written before this one and are kept; after fixing "
                    "it, rerun with --skip-existing to harmonize the rest"
                )
            raise
        result.header["descrip"] = f"harmonized by harmonizing-flows to {source_site or 'source'}"[:79]
        written.append(save_nifti(result, target, overwrite=overwrite))
    return written
