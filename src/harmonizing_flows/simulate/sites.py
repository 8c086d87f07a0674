"""Scanner sites: what differs between them, the four built-in ones, and site definition files (TOML).

A site is a scanner and protocol: field strength, sequence and its timing, acquired resolution, signal-to-noise
ratio, strength of the receive bias field (the coil's fixed profile and what varies per scan), where the site's
export puts the brain on the 0..255 scale, and the orientation its files are stored in. The built-in sites span
the T1-weighted protocols common in multi-site studies (3 T and 1.5 T MPRAGE, IR-prepared SPGR with a short
inversion time, and a plain spoiled gradient echo). Sources of the values:

* ``mprage-3t`` and ``mprage-15t``: timing and acquired resolution of ADNI-1's MPRAGE protocols at 3 T (TR 2300 ms,
  TI 900 ms, 9 deg, 1.2 mm sagittal slices) and 1.5 T (TR 2400 ms, TI 1000 ms, 8 deg, 1.25 x 1.25 x 1.2 mm), Jack et
  al., J Magn Reson Imaging 27:685-691, 2008.
* ``irspgr-3t`` and ``spgr-15t``: typical vendor protocols of those sequence families (a judgment; no one study's
  protocol is copied). The short inversion time makes the IR-SPGR's grey/white contrast the strongest of the four;
  the spoiled gradient echo without inversion has the weakest and weighs proton density most.
* Tissue relaxation times and the structures' own values: :mod:`~harmonizing_flows.simulate.tissues` (Wright et
  al. 2008, Stanisz et al. 2005, Peters et al. 2007, FreeSurfer's atlas), so the structures do not all move by one
  monotone grey-level map between sequences.
* SNR (white-matter signal over noise, 18-35) and export scaling (the brain's robust maximum at 80-100 % of 255, no
  site clipped): judgments within the range of T1-weighted research scans, lower at 1.5 T and for the lower-SNR
  protocol; a user's site file can set clipping (``intensity_scale`` above 1).

Their ``manufacturer`` and ``model`` (written only into the BIDS sidecars of ``hflow simulate --layout bids``) are
illustrative: a vendor that typically runs the protocol, not a measured scanner.

Bias fields: the per-scan field spans 15-20 % peak to peak at every site, BrainWeb's lower level (fields estimated
from real scans, Kwan et al. 1999). The coil profiles differ by site: 10-20 % where the vendor's intensity
correction (prescan normalization) leaves a residual or the coil is a volume coil (a judgment within BrainWeb's
levels; no published figure for those residuals was found), and 57 % at ``irspgr-3t``, a
32-channel array without that correction: a centre-to-edge ratio of 1.8, the lower of the two signal ratios Chu et
al. (PLoS One 11:e0149446, 2016) measured for 32-channel arrays at 3 T.

A site file holds one table per site; every key but ``sequence``-specific timing has a default::

    [sites.my-scanner]
    description = "Prisma, 3D MPRAGE"
    manufacturer = "Siemens"        # optional (default ""): BIDS sidecars' Manufacturer
    model = "Prisma"                # optional (default ""): BIDS sidecars' ManufacturersModelName
    field_strength = 3.0            # tesla: 1.5 or 3.0 (tissue tables exist for these)
    sequence = "mprage"             # "mprage", "spgr" or "spin_echo"
    tr_ms = 2300.0                  # MPRAGE: inversion to inversion
    ti_ms = 900.0
    te_ms = 2.98
    flip_deg = 9.0
    echo_spacing_ms = 7.1
    readouts = 176
    voxel_size_mm = [1.0, 1.0, 1.0] # acquired resolution along R, A, S
    snr = 30.0                      # mean white-matter signal / noise standard deviation
    bias_range = 0.2                # peak-to-peak amplitude of the per-scan bias field in the brain (0.2 = +-10 %)
    coil_bias = 0.0                 # peak-to-peak amplitude of the site's fixed coil profile (0 = uniform coil)
    intensity_scale = 1.0           # the brain's robust maximum lands at 255 * intensity_scale
    orientation = "LAS"             # axis codes of the files written

    [sites.my-scanner.tissues.white_matter]   # optional: override literature values (ms, relative PD)
    t1 = 900.0

    [sites.my-scanner.structures.thalamus]    # optional: a structure's own values instead of the white/grey
    t1 = 1100.0                                # mixture (see tissues.STRUCTURES); the rest keep the mixture's
                                               # (or tissues.MEASURED_STRUCTURES' for the putamen and caudate)
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harmonizing_flows.errors import ConfigError, InputError
from harmonizing_flows.simulate.sequences import mprage, spgr, spin_echo
from harmonizing_flows.simulate.tissues import TissueTable, base_tissues, check_structures

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["BUILTIN_SITES", "Site", "load_sites", "resolve_sites", "site_key"]

Sequence_ = Literal["mprage", "spgr", "spin_echo"]
_AXIS_CODES = {frozenset("LR"), frozenset("AP"), frozenset("IS")}


@dataclass(frozen=True)
class Site:
    """One simulated scanner and protocol (see the module docstring for each field's meaning)."""

    name: str
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    field_strength: float = 3.0
    sequence: Sequence_ = "mprage"
    tr_ms: float = 2300.0
    te_ms: float = 3.0
    ti_ms: float = 900.0
    flip_deg: float = 9.0
    echo_spacing_ms: float = 7.1
    readouts: int = 176
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    snr: float = 30.0
    bias_range: float = 0.2
    coil_bias: float = 0.0
    intensity_scale: float = 1.0
    orientation: str = "RAS"
    tissues: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    structures: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.name or any(c in self.name for c in "/\\ ,\t\n") or self.name.startswith("."):
            problems.append(f"name {self.name!r} must be non-empty, without spaces, commas or slashes")
        for name in ("manufacturer", "model"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string")
        if self.sequence not in ("mprage", "spgr", "spin_echo"):
            problems.append(f"sequence must be mprage, spgr or spin_echo, not {self.sequence!r}")
        for name in ("tr_ms", "te_ms", "flip_deg", "snr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive")
        if self.sequence == "mprage" and not (self.ti_ms > 0 and self.echo_spacing_ms > 0 and self.readouts >= 1):
            problems.append("mprage needs positive ti_ms, echo_spacing_ms and readouts")
        if len(self.voxel_size_mm) != 3 or min(self.voxel_size_mm) <= 0:
            problems.append(f"voxel_size_mm must be three positive numbers, not {self.voxel_size_mm}")
        for name in ("bias_range", "coil_bias"):
            if not 0 <= getattr(self, name) < 2:
                problems.append(f"{name} must be in [0, 2), not {getattr(self, name)}")
        if not 0 < self.intensity_scale <= 2:
            problems.append(f"intensity_scale must be in (0, 2], not {self.intensity_scale}")
        if len(self.orientation) != 3 or {frozenset(p) for p in _pairs(self.orientation)} != _AXIS_CODES:
            problems.append(f"orientation must be three axis codes such as RAS or LPS, not {self.orientation!r}")
        if problems:
            raise ConfigError(f"site {self.name!r}: " + "; ".join(problems))
        try:
            base_tissues(self.field_strength, self.tissues)
            check_structures(self.structures)
            self.signal(np.array([1000.0]), np.array([80.0]), np.array([60.0]), np.array([0.7]))
        except ValueError as exc:
            raise ConfigError(f"site {self.name!r}: {exc}") from exc

    def signal(self, t1: np.ndarray, t2: np.ndarray, t2s: np.ndarray, pd: np.ndarray) -> np.ndarray:
        """The site's signal for tissues with these relaxation times (ms) and proton densities."""
        if self.sequence == "mprage":
            return mprage(
                t1, t2s, pd, tr=self.tr_ms, ti=self.ti_ms, te=self.te_ms, flip=self.flip_deg,
                echo_spacing=self.echo_spacing_ms, readouts=self.readouts,
            )  # fmt: skip
        if self.sequence == "spgr":
            return spgr(t1, t2s, pd, tr=self.tr_ms, te=self.te_ms, flip=self.flip_deg)
        return spin_echo(t1, t2, pd, tr=self.tr_ms, te=self.te_ms)

    def table_signal(self, table: TissueTable) -> np.ndarray:
        """Signal per aseg code from a tissue look-up table."""
        return self.signal(table.t1, table.t2, table.t2s, table.pd)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["voxel_size_mm"] = list(self.voxel_size_mm)
        d["tissues"] = {k: dict(v) for k, v in self.tissues.items()}
        d["structures"] = {k: dict(v) for k, v in self.structures.items()}
        return d


def site_key(name: str) -> int:
    """A stable integer from a site's name, so that a site's random draws do not depend on the other sites."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _pairs(codes: str) -> list[str]:
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "I": "S", "S": "I"}
    return [c + opposite.get(c, "?") for c in codes.upper()]


BUILTIN_SITES: dict[str, Site] = {  # manufacturer and model: illustrative (see the module docstring)
    s.name: s
    for s in (
        Site(
            name="mprage-3t",
            description="3 T MPRAGE (TI 900 ms, 9 deg), sagittal 1.2 mm slices, 32-channel coil",
            manufacturer="Siemens", model="Prisma",
            field_strength=3.0, sequence="mprage", tr_ms=2300.0, ti_ms=900.0, te_ms=2.98, flip_deg=9.0,
            echo_spacing_ms=7.1, readouts=176, voxel_size_mm=(1.2, 1.0, 1.0), snr=30.0, bias_range=0.15,
            coil_bias=0.2, intensity_scale=1.0, orientation="LAS",
        ),
        Site(
            name="mprage-15t",
            description="1.5 T MPRAGE (TI 1000 ms, 8 deg), 1.25 x 1.25 x 1.2 mm, lower SNR",
            manufacturer="Siemens", model="Avanto",
            field_strength=1.5, sequence="mprage", tr_ms=2400.0, ti_ms=1000.0, te_ms=3.5, flip_deg=8.0,
            echo_spacing_ms=8.6, readouts=160, voxel_size_mm=(1.25, 1.25, 1.2), snr=18.0, bias_range=0.15,
            coil_bias=0.1, intensity_scale=0.9, orientation="RAS",
        ),
        Site(
            name="irspgr-3t",
            description="3 T IR-prepared SPGR, short TI 450 ms, 12 deg; 32-channel array without intensity correction",
            manufacturer="GE", model="DISCOVERY MR750",
            field_strength=3.0, sequence="mprage", tr_ms=1500.0, ti_ms=450.0, te_ms=3.2, flip_deg=12.0,
            echo_spacing_ms=6.0, readouts=120, voxel_size_mm=(1.0, 1.0, 1.2), snr=35.0, bias_range=0.2,
            coil_bias=0.57, intensity_scale=0.8, orientation="LPS",
        ),
        Site(
            name="spgr-15t",
            description="1.5 T 3D spoiled gradient echo (TR 24 ms, 30 deg), no inversion; 1.5 mm coronal slices",
            manufacturer="GE", model="Signa HDxt",
            field_strength=1.5, sequence="spgr", tr_ms=24.0, te_ms=5.0, flip_deg=30.0,
            voxel_size_mm=(0.94, 1.5, 0.94), snr=20.0, bias_range=0.15, coil_bias=0.15, intensity_scale=0.95,
            orientation="PIR",
        ),
    )
}  # fmt: skip
"""The built-in sites, by name."""


def load_sites(path: str | Path) -> dict[str, Site]:
    """Read site definitions from a TOML file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "site file does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"site file is not valid TOML ({exc})") from exc
    tables = data.get("sites")
    if not isinstance(tables, dict) or not tables:
        raise InputError(path, "site file has no [sites.<name>] table")
    known = {f.name for f in fields(Site)} - {"name"}
    sites = {}
    for name, values in tables.items():
        if not isinstance(values, dict):
            raise InputError(path, f"sites.{name} must be a table")
        unknown = set(values) - known
        if unknown:
            raise InputError(path, f"sites.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        values = dict(values)
        if "voxel_size_mm" in values:
            vs = values["voxel_size_mm"]
            values["voxel_size_mm"] = tuple(float(v) for v in (vs if isinstance(vs, list) else [vs] * 3))
        if "readouts" in values:
            values["readouts"] = int(values["readouts"])
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(path, f"sites.{name}.{key} is not a finite number")
        try:
            sites[name] = Site(name=name, **values)
        except (TypeError, ValueError) as exc:
            raise InputError(path, str(exc)) from exc
    return sites


def resolve_sites(names: Sequence[str] | None, sites_file: str | Path | None = None) -> list[Site]:
    """Sites by name, from the built-in ones and a site file (whose sites win on a clash).

    With no names: the file's sites when a file is given, else all built-in sites.
    """
    available = dict(BUILTIN_SITES)
    from_file = load_sites(sites_file) if sites_file is not None else {}
    available.update(from_file)
    if not names:
        return list(from_file.values()) if from_file else list(BUILTIN_SITES.values())
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(sites_file, f"unknown site(s) {', '.join(missing)}; available: {', '.join(available)}")
    if len(set(names)) != len(names):
        raise InputError(sites_file, f"a site is named twice in {', '.join(names)}")
    return [available[n] for n in names]
