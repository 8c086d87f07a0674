"""Configuration dataclasses: the one place where defaults live.

Every stage reads its settings from a dataclass defined here, never from a constant of its own, so that a
profile or a TOML file can change any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["SliceAxis", "SliceConfig", "SplitConfig"]

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
