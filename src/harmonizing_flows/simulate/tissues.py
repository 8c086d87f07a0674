"""Tissue properties for image formation: relaxation times and proton density per structure and field strength.

Three base tissues carry literature values: white matter, grey matter and CSF. Every aseg structure is either CSF
or a fast-exchange mixture of white and grey matter with a white-matter weight ``w``: relaxation *rates* and proton
density mix linearly, ``1/T1 = w/T1_WM + (1-w)/T1_GM``. The weights of the deep nuclei are set from where
FreeSurfer's probabilistic atlas puts each structure's mean T1-weighted intensity between cortex and white matter
(``w = (I - I_GM) / (I_WM - I_GM)``, clipped to 0..1); structures without an atlas figure carry an estimate, marked
as such below.

The mixture puts every structure on one curve, so every sequence orders the structures alike and one monotone
grey-level map carries any site onto any other, which real protocols do not allow. The putamen and the caudate
therefore carry their own values (:data:`MEASURED_STRUCTURES`): the T1 that Wright et al. measured with the same
MPRAGE method as the white and grey matter values (putamen 1084 ms at 1.5 T and 1332 ms at 3 T, caudate head 1109
and 1395 ms), much closer to cortex than their T1-weighted brightness, and an *effective* proton density chosen so
that the reference protocol (ADNI's 3 T MPRAGE, ``mprage-3t``) still shows them where FreeSurfer's atlas does. That
density (1.02 and 0.96, above the tissues' water content) absorbs what the signal model leaves out, chiefly
magnetization transfer; it is a fit to two measured facts, not a measurement itself. With it the nuclei sit at
different places between cortex and white matter in each sequence: darker in the short-TI IR-SPGR, brighter in
the spoiled gradient echo, whose contrast weighs proton density more.

Values (ms; proton density relative to CSF):

============  ==========  =========  ==========  ==========  =========  ==========  ====
tissue        T1 1.5 T    T2 1.5 T   T2* 1.5 T   T1 3 T      T2 3 T     T2* 3 T     PD
============  ==========  =========  ==========  ==========  =========  ==========  ====
white matter  646         72         66          838         69         53          0.69
grey matter   1197        95         84          1607        99         66          0.80
CSF           4300        2000       1000        4300        1500       800         1.00
============  ==========  =========  ==========  ==========  =========  ==========  ====

References:
    | Wright et al. Water proton T1 measurements in brain tissue at 7, 3, and 1.5 T using IR-EPI, IR-TSE, and
    | MPRAGE: results and optimization. MAGMA 21:121-130, 2008 (white and grey matter T1, MPRAGE method).
    | Stanisz et al. T1, T2 relaxation and magnetization transfer in tissue at 3T. MRM 54:507-512, 2005
    | (white and grey matter T2 at 1.5 T and 3 T).
    | Peters et al. T2* measurements in human brain at 1.5, 3 and 7 T. MRI 25:748-753, 2007 (T2* of WM and GM).
    | Rooney et al. Magnetic field and tissue dependencies of human brain longitudinal 1H2O relaxation in vivo.
    | MRM 57:308-318, 2007 (CSF T1 of about 4.3 s, nearly independent of field strength).
    | Tofts (ed.). Quantitative MRI of the Brain, Wiley 2003, ch. 4 (water content: WM ~0.69, GM ~0.80).
    | FreeSurfer 7.3.2 atlas RB_all_2020-01-02.gca (mean T1-weighted intensities: WM 90, cortex 57, thalamus 82,
    | putamen 79, pallidum 96, hippocampus 59).

CSF T2 and T2* are order-of-magnitude figures; they barely matter at the echo times of T1-weighted sequences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from harmonizing_flows.errors import ConfigError

__all__ = [
    "BASE_TISSUES",
    "MEASURED_STRUCTURES",
    "STRUCTURES",
    "STRUCTURE_WM_WEIGHT",
    "TissueTable",
    "base_tissues",
    "check_structures",
    "structure_values",
    "tissue_table",
]


@dataclass(frozen=True)
class Relaxation:
    """Relaxation times (ms) and proton density of one tissue at one field strength."""

    t1: float
    t2: float
    t2s: float
    pd: float


BASE_TISSUES: dict[float, dict[str, Relaxation]] = {
    1.5: {
        "white_matter": Relaxation(t1=646.0, t2=72.0, t2s=66.0, pd=0.69),
        "grey_matter": Relaxation(t1=1197.0, t2=95.0, t2s=84.0, pd=0.80),
        "csf": Relaxation(t1=4300.0, t2=2000.0, t2s=1000.0, pd=1.00),
    },
    3.0: {
        "white_matter": Relaxation(t1=838.0, t2=69.0, t2s=53.0, pd=0.69),
        "grey_matter": Relaxation(t1=1607.0, t2=99.0, t2s=66.0, pd=0.80),
        "csf": Relaxation(t1=4300.0, t2=1500.0, t2s=800.0, pd=1.00),
    },
}
"""Base tissue values at the tabulated field strengths (see the module docstring for sources)."""

_CSF = -1.0  # marks a structure imaged as CSF

STRUCTURE_WM_WEIGHT: dict[int, float] = {
    2: 1.0,
    41: 1.0,
    77: 1.0,
    78: 1.0,
    79: 1.0,
    251: 1.0,
    252: 1.0,
    253: 1.0,
    254: 1.0,
    255: 1.0,  # cerebral WM
    3: 0.0,
    42: 0.0,  # cerebral cortex
    7: 0.90,
    46: 0.90,  # cerebellar WM (estimate: slightly darker than cerebral WM)
    8: 0.15,
    47: 0.15,  # cerebellar cortex (estimate)
    10: 0.76,
    49: 0.76,
    9: 0.76,
    48: 0.76,  # thalamus (atlas: 82)
    17: 0.06,
    53: 0.06,  # hippocampus (atlas: 59)
    18: 0.10,
    54: 0.10,  # amygdala (estimate, close to hippocampus)
    11: 0.45,
    50: 0.45,  # caudate (estimate)
    12: 0.67,
    51: 0.67,  # putamen (atlas: 79)
    13: 1.00,
    52: 1.00,  # pallidum (atlas: 96, above WM; clipped to 1)
    26: 0.40,
    58: 0.40,  # accumbens (estimate)
    28: 0.80,
    60: 0.80,  # ventral DC (estimate)
    16: 0.85,  # brainstem (estimate)
    85: 1.00,  # optic chiasm (white matter)
    30: 0.50,
    62: 0.50,
    31: 0.30,
    63: 0.30,  # vessels, choroid plexus (estimates)
    80: 0.30,
    81: 0.30,
    82: 0.30,  # non-WM hypointensities (estimate)
    4: _CSF,
    43: _CSF,
    5: _CSF,
    44: _CSF,
    14: _CSF,
    15: _CSF,
    72: _CSF,
    24: _CSF,  # ventricles, CSF
}
"""aseg code -> white-matter weight ``w`` (0 = grey matter, 1 = white matter), or -1 for CSF.

Codes not listed are imaged as grey matter (cortical parcels of aparc+aseg included); label 0 inside the brain mask
is imaged as CSF (the sulcal and extra-cerebral CSF that aseg leaves unlabelled).
"""


STRUCTURES: dict[str, tuple[int, ...]] = {
    "cerebellum_white_matter": (7, 46),
    "cerebellum_cortex": (8, 47),
    "thalamus": (9, 10, 48, 49),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "brainstem": (16,),
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "accumbens": (26, 58),
    "ventral_dc": (28, 60),
}
"""Structures whose tissue values a site may set on their own (both hemispheres' aseg codes), instead of the
white/grey mixture of :data:`STRUCTURE_WM_WEIGHT`. The mixture gives every sequence the same order of brightness
between structures; measured deep-grey values differ from it (the putamen's T1 lies near cortex, its T1-weighted
intensity near white matter, as proton density, magnetization transfer and iron differ), and real protocols do
reorder structures."""

MEASURED_STRUCTURES: dict[float, dict[str, dict[str, float]]] = {
    1.5: {"putamen": {"t1": 1084.0, "pd": 1.02}, "caudate": {"t1": 1109.0, "pd": 0.96}},
    3.0: {"putamen": {"t1": 1332.0, "pd": 1.02}, "caudate": {"t1": 1395.0, "pd": 0.96}},
}
"""Structures imaged with their own values by default, per field strength: T1 measured by Wright et al. (2008),
effective proton density fitted to FreeSurfer's atlas intensity at the reference MPRAGE (see the module
docstring). Their T2 and T2* stay the mixture's. A site's ``structures`` replace these parameter by parameter."""

_PARAMETERS = ("t1", "t2", "t2s", "pd")


def _check_overrides(overrides: object, known: Mapping[str, object], kind: str) -> None:
    """Raise ValueError unless ``overrides`` maps names in ``known`` (tissues or structures) to tables of
    positive ``t1``, ``t2``, ``t2s``, ``pd``: the one check behind a site file's ``tissues`` and ``structures``."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{kind}s must be a table of {kind} tables, e.g. [sites.NAME.{kind}s.{next(iter(known))}]")
    for name, values in overrides.items():
        if name not in known:
            raise ConfigError(f"unknown {kind} {name!r}; {kind}s are {', '.join(known)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{kind} {name} must be a table of {', '.join(_PARAMETERS)}")
        unknown = set(values) - set(_PARAMETERS)
        if unknown:
            raise ConfigError(f"unknown tissue parameter(s) {', '.join(sorted(unknown))} for {name}")
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values())
        if not numbers or not all(v > 0 for v in values.values()):  # NaN fails v > 0 too
            raise ConfigError(f"tissue values of {name} must be positive numbers: {dict(values)}")


def check_structures(structures: Mapping[str, Mapping[str, float]]) -> None:
    """Raise ValueError for an unknown structure or parameter, or a value that is not a positive number."""
    _check_overrides(structures, STRUCTURES, "structure")


def structure_values(
    field_strength: float, overrides: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    """The structures a site images with their own values: :data:`MEASURED_STRUCTURES` at its field strength, with
    the site's ``overrides`` replacing them parameter by parameter (a field strength without a table gets only the
    overrides)."""
    overrides = {} if overrides is None else overrides
    check_structures(overrides)
    merged = {name: dict(values) for name, values in MEASURED_STRUCTURES.get(field_strength, {}).items()}
    for name, values in overrides.items():
        merged[name] = {**merged.get(name, {}), **{k: float(v) for k, v in values.items()}}
    return merged


def base_tissues(
    field_strength: float, overrides: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, Relaxation]:
    """Base tissue values at a tabulated field strength, with optional per-tissue overrides.

    Args:
        field_strength: 1.5 or 3.0 (tesla).
        overrides: ``{"white_matter": {"t1": 950.0}, ...}``; keys ``t1``, ``t2``, ``t2s`` (ms) and ``pd``.
    """
    if field_strength not in BASE_TISSUES:
        raise ConfigError(
            f"field strength {field_strength} T has no tissue table; use one of "
            f"{', '.join(str(b) for b in BASE_TISSUES)} or give every tissue's values under [tissues]"
        )
    table = dict(BASE_TISSUES[field_strength])
    overrides = {} if overrides is None else overrides
    _check_overrides(overrides, table, "tissue")
    for tissue, values in overrides.items():
        table[tissue] = Relaxation(**{**table[tissue].__dict__, **{k: float(v) for k, v in values.items()}})
    return table


@dataclass(frozen=True)
class TissueTable:
    """Per-code look-up arrays ``t1[code]``, ``t2[code]``, ``t2s[code]``, ``pd[code]`` (ms; relative PD)."""

    t1: np.ndarray
    t2: np.ndarray
    t2s: np.ndarray
    pd: np.ndarray


def tissue_table(
    base: Mapping[str, Relaxation],
    max_code: int,
    structures: Mapping[str, Mapping[str, float]] | None = None,
) -> TissueTable:
    """Relaxation look-up tables over aseg codes ``0..max_code`` from the base tissues.

    Code 0 gets CSF values (it is only imaged inside the brain mask, where it is sulcal CSF). ``structures``
    (names of :data:`STRUCTURES` -> ``t1``, ``t2``, ``t2s`` in ms, ``pd``) replaces the mixture's values of those
    structures; a parameter not given keeps the mixture's.
    """
    wm, gm, csf = base["white_matter"], base["grey_matter"], base["csf"]
    w = np.zeros(max_code + 1)
    is_csf = np.zeros(max_code + 1, dtype=bool)
    is_csf[0] = True
    for code, weight in STRUCTURE_WM_WEIGHT.items():
        if code <= max_code:
            if weight == _CSF:
                is_csf[code] = True
            else:
                w[code] = weight

    def rate_mix(a: float, b: float, c: float) -> np.ndarray:  # relaxation rates mix in fast exchange
        return np.where(is_csf, c, 1.0 / (w / a + (1.0 - w) / b))

    table = TissueTable(
        t1=rate_mix(wm.t1, gm.t1, csf.t1),
        t2=rate_mix(wm.t2, gm.t2, csf.t2),
        t2s=rate_mix(wm.t2s, gm.t2s, csf.t2s),
        pd=np.where(is_csf, csf.pd, w * wm.pd + (1.0 - w) * gm.pd),
    )
    if structures:
        check_structures(structures)
        for name, values in structures.items():
            codes = [c for c in STRUCTURES[name] if c <= max_code]
            for parameter, value in values.items():
                getattr(table, parameter)[codes] = float(value)
    return table
