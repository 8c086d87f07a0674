"""FreeSurfer aseg codes -> the paper's 15 segmentation classes.

One table, :data:`ASEG_TO_CLASS`, maps every FreeSurfer code that the 15 classes use; codes it does not list become
background. Codes that FreeSurfer documents but the paper's grouping leaves out (accumbens, vessels, optic chiasm,
non-white-matter hypointensities, ...) are listed in :data:`EXCLUDED_ASEG_CODES` and become background without a
warning. Any other code is unknown: by default it becomes background with a warning that names the codes and their
voxel counts, and with ``unknown="error"`` it raises.

Cortical parcels of ``aparc+aseg`` (1000-1035 and 2000-2035, and the a2009s range 11100-12175) count as cerebral
grey matter, so a user's ``aparc+aseg.mgz`` works in place of ``aseg.mgz``.

A label map whose values all lie in 0..14 is taken to be in class indices already (every aseg of a whole brain
has right-hemisphere codes above 14); pass ``source="aseg"`` or ``source="classes"`` to say which it is.

References:
    | FreeSurferColorLUT.txt (FreeSurfer 7), the meaning of each aseg code.
    | Dolz, Desrosiers, Ben Ayed. 3D fully convolutional networks for subcortical segmentation in MRI:
    | a large-scale study. NeuroImage 170, 2018 (the grouping the paper follows).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "ASEG_TO_CLASS",
    "CLASS_NAMES",
    "EXCLUDED_ASEG_CODES",
    "MIN_FOREGROUND_CLASSES",
    "NUM_CLASSES",
    "aseg_lookup",
    "check_whole_brain",
    "to_classes",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "cerebellum GM",
    "cerebellum WM",
    "cerebral GM",
    "cerebral WM",
    "thalamus",
    "hippocampus",
    "amygdala",
    "ventricles",
    "caudate",
    "putamen",
    "pallidum",
    "ventral DC",
    "CSF",
    "brainstem",
)
NUM_CLASSES = len(CLASS_NAMES)

_GROUPS: dict[str, tuple[int, ...]] = {
    "cerebellum GM": (8, 47),
    "cerebellum WM": (7, 46),
    "cerebral GM": (3, 42),
    # 77-79: white-matter hypointensities; 251-255: corpus callosum.
    "cerebral WM": (2, 41, 77, 78, 79, 251, 252, 253, 254, 255),
    "thalamus": (10, 49, 9, 48),  # 9/48: "Thalamus" in older LUTs, "Thalamus-Proper" is 10/49
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    # lateral, inferior lateral, 3rd, 4th, 5th ventricles and choroid plexus
    "ventricles": (4, 43, 5, 44, 14, 15, 72, 31, 63),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "ventral DC": (28, 60),
    "CSF": (24,),
    "brainstem": (16,),
}

ASEG_TO_CLASS: dict[int, int] = {code: CLASS_NAMES.index(name) for name, codes in _GROUPS.items() for code in codes}
"""FreeSurfer aseg code -> class index in :data:`CLASS_NAMES`."""

EXCLUDED_ASEG_CODES: frozenset[int] = frozenset(
    {
        0,  # unknown / outside the brain
        26,
        58,  # accumbens area
        30,
        62,  # vessel
        80,
        81,
        82,  # non-white-matter hypointensities
        85,  # optic chiasm
        1,
        6,
        19,
        20,
        21,
        22,
        23,
        25,
        27,
        29,
        32,
        33,
        34,
        35,
        36,
        37,
        38,
        39,
        40,
        45,
        55,
        56,
        57,
        59,
        61,
        64,  # rare or unused
    }
)
"""Known FreeSurfer codes that the 15 classes leave out: they map to background silently."""

_CORTEX_RANGES = ((1000, 1036), (2000, 2036), (11100, 11176), (12100, 12176))
_GM = CLASS_NAMES.index("cerebral GM")


def aseg_lookup(max_code: int) -> np.ndarray:
    """A look-up table ``lut[code] -> class`` for codes ``0..max_code``, unknown codes mapped to background."""
    lut = np.zeros(max_code + 1, dtype=np.uint8)
    for code, cls in ASEG_TO_CLASS.items():
        if code <= max_code:
            lut[code] = cls
    for lo, hi in _CORTEX_RANGES:
        if lo <= max_code:
            lut[lo : min(hi, max_code + 1)] = _GM
    return lut


def _is_known(code: int) -> bool:
    return code in ASEG_TO_CLASS or code in EXCLUDED_ASEG_CODES or any(lo <= code < hi for lo, hi in _CORTEX_RANGES)


def to_classes(
    labels: np.ndarray,
    *,
    source: Literal["auto", "aseg", "classes"] = "auto",
    unknown: Literal["background", "error"] = "background",
    path: str | Path | None = None,
) -> np.ndarray:
    """Convert a label map to class indices (uint8, 0..14).

    Args:
        labels: Integer-valued label map of any shape (float arrays with integral values are accepted).
        source: ``"aseg"`` for FreeSurfer codes, ``"classes"`` for maps already in 0..14, ``"auto"`` to decide
            from the values (all in 0..14 means classes).
        unknown: What to do with codes that are neither mapped nor listed in :data:`EXCLUDED_ASEG_CODES`.
        path: The file the labels came from, named in warnings and errors.

    Raises:
        InputError: Non-integral or negative values, classes outside 0..14, or unknown codes with ``unknown="error"``.
    """
    from harmonizing_flows.errors import InputError

    values = np.asarray(labels)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise InputError(path, "label map has non-integer values; expected FreeSurfer codes or class indices")
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iub":
        raise InputError(path, f"label map has data type {values.dtype}; expected integers")
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:
        raise InputError(path, f"label map has negative value {lo}")
    if source == "auto":
        source = "classes" if hi < NUM_CLASSES else "aseg"
    if source == "classes":
        if hi >= NUM_CLASSES:
            raise InputError(path, f"label map has class {hi}, but there are only {NUM_CLASSES} classes (0..14)")
        return values.astype(np.uint8)
    if source != "aseg":
        raise ValueError(f"source must be 'auto', 'aseg' or 'classes', not {source!r}")

    codes, counts = np.unique(values, return_counts=True)
    strange = {int(c): int(n) for c, n in zip(codes, counts, strict=True) if not _is_known(int(c))}
    if strange:
        listed = ", ".join(f"{c} ({n} voxels)" for c, n in sorted(strange.items()))
        if unknown == "error":
            raise InputError(path, f"label map has codes that are not FreeSurfer aseg codes: {listed}")
        logger.warning("%s: unknown label codes mapped to background: %s", path or "label map", listed)
    return aseg_lookup(hi)[values]


MIN_FOREGROUND_CLASSES = 10
"""A whole-brain label map holds nearly all 14 foreground classes; fewer means the classes do not match."""


def check_whole_brain(classes: np.ndarray, path: str | Path | None = None) -> None:
    """Refuse a class map (from :func:`to_classes`) that lacks most of the 14 foreground classes.

    Why: a map of other classes (three tissues, say) converts without error, since its values lie in 0..14, and a
    segmenter would then learn and be scored on the wrong classes.

    Raises:
        InputError: Fewer than :data:`MIN_FOREGROUND_CLASSES` foreground classes present.
    """
    from harmonizing_flows.errors import InputError

    foreground = [int(c) for c in np.unique(classes) if c > 0]
    if len(foreground) < MIN_FOREGROUND_CLASSES:
        raise InputError(
            path,
            f"label map holds only classes {foreground} of the {NUM_CLASSES - 1} foreground classes; expected "
            "FreeSurfer aseg codes or the 15-class table of harmonizing_flows.data.labels",
        )
