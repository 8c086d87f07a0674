"""Signal equations of T1-weighted sequences (magnitude, arbitrary units, proportional to proton density).

* :func:`mprage`: inversion-prepared gradient echo (MPRAGE, IR-SPGR, TFE). The longitudinal magnetization is
  followed exactly through one inversion cycle (inversion, free recovery, a train of ``readouts`` small-angle
  excitations spaced ``echo_spacing`` apart, recovery to the next inversion). Every step is an affine map of Mz,
  so the cycle is ``Mz -> a Mz + b`` and its steady state is ``b / (1 - a)``; the signal is read at the centre of
  the train (linear phase-encoding order), where the centre of k-space is. Magnitude reconstruction, as scanners do.
* :func:`spgr`: steady-state spoiled gradient echo (FLASH, SPGR), the Ernst equation.
* :func:`spin_echo`: T1-weighted spin echo with full refocusing.

All functions broadcast over NumPy arrays of tissue parameters.

References:
    | Mugler, Brookeman. Three-dimensional magnetization-prepared rapid gradient-echo imaging (3D MP RAGE).
    | MRM 15:152-157, 1990.
    | Deichmann, Good, Josephs, Ashburner, Turner. Optimization of 3-D MP-RAGE sequences for structural brain
    | imaging. NeuroImage 12:112-127, 2000.
    | Haacke, Brown, Thompson, Venkatesan. Magnetic Resonance Imaging: Physical Principles and Sequence Design,
    | Wiley 1999 (spoiled gradient echo and spin echo signal equations).
"""

from __future__ import annotations

import numpy as np

from harmonizing_flows.errors import ConfigError

__all__ = ["mprage", "spgr", "spin_echo"]


def mprage(
    t1: np.ndarray,
    t2s: np.ndarray,
    pd: np.ndarray,
    *,
    tr: float,
    ti: float,
    te: float,
    flip: float,
    echo_spacing: float,
    readouts: int,
    inversion_efficiency: float = 0.96,
) -> np.ndarray:
    """Magnitude signal of an inversion-prepared gradient-echo sequence at the centre of k-space.

    Args:
        t1, t2s, pd: Tissue T1 and T2* (ms) and proton density.
        tr: Time between successive inversions (ms), what Siemens calls TR for MPRAGE.
        ti: Inversion to the centre of the readout train (ms).
        te: Echo time of each gradient echo (ms).
        flip: Excitation flip angle (degrees).
        echo_spacing: Time between excitations in the train (ms).
        readouts: Excitations per inversion.
        inversion_efficiency: Fraction of Mz inverted (1 = perfect adiabatic inversion).
    """
    t1 = np.asarray(t1, dtype=float)
    centre = readouts // 2
    before = ti - centre * echo_spacing  # inversion -> first excitation
    after = tr - before - readouts * echo_spacing  # last excitation -> next inversion
    if before < 0 or after < 0:
        raise ConfigError(
            f"MPRAGE timing impossible: TI={ti} ms, TR={tr} ms with {readouts} readouts every {echo_spacing} ms "
            f"(the train needs {readouts * echo_spacing:g} ms and must start after the inversion)"
        )
    cos_a, sin_a = np.cos(np.radians(flip)), np.sin(np.radians(flip))

    def relax(a: np.ndarray, b: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        # Mz(t) = 1 - (1 - Mz) e^{-t/T1}, applied to Mz = a m + b (unit M0; PD scales at the end)
        e = np.exp(-t / t1)
        return a * e, b * e + (1.0 - e)

    # Mz at the start of a cycle (just before the inversion) as a * m + b, with m the value a cycle earlier.
    a, b = np.ones_like(t1), np.zeros_like(t1)
    a, b = -inversion_efficiency * a, -inversion_efficiency * b
    a, b = relax(a, b, before)
    for _ in range(centre):
        a, b = relax(a * cos_a, b * cos_a, echo_spacing)
    centre_a, centre_b = a, b
    for _ in range(readouts - centre):
        a, b = relax(a * cos_a, b * cos_a, echo_spacing)
    a, b = relax(a, b, after)
    steady = b / (1.0 - a)
    mz_centre = centre_a * steady + centre_b
    return np.abs(np.asarray(pd) * mz_centre * sin_a * np.exp(-te / np.asarray(t2s)))


def spgr(t1: np.ndarray, t2s: np.ndarray, pd: np.ndarray, *, tr: float, te: float, flip: float) -> np.ndarray:
    """Steady-state spoiled gradient echo: ``PD sin a (1 - E1) / (1 - cos a E1) exp(-TE/T2*)``."""
    e1 = np.exp(-tr / np.asarray(t1, dtype=float))
    a = np.radians(flip)
    return np.asarray(pd) * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / np.asarray(t2s))


def spin_echo(t1: np.ndarray, t2: np.ndarray, pd: np.ndarray, *, tr: float, te: float) -> np.ndarray:
    """T1-weighted spin echo: ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``."""
    return np.asarray(pd) * (1 - np.exp(-tr / np.asarray(t1, dtype=float))) * np.exp(-te / np.asarray(t2))
