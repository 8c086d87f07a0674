"""Configuration dataclasses: the one place where defaults live.

Every stage reads its settings from a dataclass defined here, never from a constant of its own, so that a
profile or a TOML file can change any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["SimulationConfig", "SliceAxis", "SliceConfig", "SplitConfig"]

SliceAxis = Literal["sagittal", "coronal", "axial"]


@dataclass(frozen=True)
class SliceConfig:
    """How a volume becomes 2D slices of a fixed size on the 0..255 scale.

    Attributes:
        axis: Slicing plane after reorientation to RAS; the paper uses coronal slices.
        image_size: In-plane size (height, width) that slices are padded or cropped to.
        percentile: Intensity percentile inside the brain mask that maps to 255. A high percentile rather than
            the maximum, so that a few bright voxels do not compress the whole range.
        levels: Number of intensity levels after quantization (the paper: 256).
    """

    axis: SliceAxis = "coronal"
    image_size: tuple[int, int] = (224, 224)
    percentile: float = 99.5
    levels: int = 256

    def __post_init__(self) -> None:
        if self.axis not in ("sagittal", "coronal", "axial"):
            raise ValueError(f"axis must be sagittal, coronal or axial, not {self.axis!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be two positive integers, not {self.image_size!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], not {self.percentile}")
        if not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be in 2..256, not {self.levels}")


@dataclass(frozen=True)
class SplitConfig:
    """Subject-level split of each site into train / validation / test (the paper: 60 / 15 / 25)."""

    fractions: tuple[float, float, float] = (0.60, 0.15, 0.25)
    seed: int = 0
    names: tuple[str, str, str] = field(default=("train", "val", "test"))

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be three non-negative numbers summing to 1, not {self.fractions}")


@dataclass(frozen=True)
class SimulationConfig:
    """How the simulator makes subjects and images (site-independent settings; sites are in ``simulate.sites``).

    Attributes:
        subjects_per_site: Pseudo-subjects per site; each has its own anatomy.
        voxel_size: Output voxel size (mm, isotropic).
        seed: Seed of every random draw; the same seed gives the same bytes.
        fov_mm: Field of view (R, A, S extent in mm), centred on the anatomy's brain.
        control_spacing_mm: Spacing of the control points of the random smooth deformation.
        deformation_mm: Standard deviation of each control point's displacement.
        rotation_deg: Standard deviation of the rotation about each axis.
        scale_std: Standard deviation of the per-axis scaling (a brain-size factor shared by all axes, plus a
            per-axis factor of half this size).
        translation_mm: Standard deviation of the translation along each axis.
        relaxation_jitter: Per-subject relative standard deviation of each base tissue's T1 and proton density.
        texture: Standard deviation of the within-tissue multiplicative texture.
        texture_mm: Correlation length (Gaussian sigma) of that texture.
        partial_volume_voxels: Gaussian sigma (in output voxels) that turns hard labels into partial volumes.
        percentile: Intensity percentile inside the brain that maps to the site's top of scale.
        mask_dilation_mm: How far the brain mask reaches past the labelled brain (sulcal and outer CSF).
    """

    subjects_per_site: int = 20
    voxel_size: float = 1.0
    seed: int = 0
    fov_mm: tuple[float, float, float] = (160.0, 200.0, 176.0)
    control_spacing_mm: float = 24.0
    deformation_mm: float = 2.5
    rotation_deg: float = 3.0
    scale_std: float = 0.04
    translation_mm: float = 2.0
    relaxation_jitter: float = 0.03
    texture: float = 0.03
    texture_mm: float = 1.5
    partial_volume_voxels: float = 0.5
    percentile: float = 99.5
    mask_dilation_mm: float = 2.0

    def __post_init__(self) -> None:
        if self.subjects_per_site < 1:
            raise ValueError(f"subjects_per_site must be at least 1, not {self.subjects_per_site}")
        if not 0.25 <= self.voxel_size <= 8:
            raise ValueError(f"voxel_size must be between 0.25 and 8 mm, not {self.voxel_size}")
        if min(self.fov_mm) <= 0:
            raise ValueError(f"fov_mm must be positive, not {self.fov_mm}")
