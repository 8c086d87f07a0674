"""Signal equations against brute-force magnetization tracking and textbook limits."""

from __future__ import annotations

import numpy as np
import pytest

from harmonizing_flows.simulate.sequences import mprage, spgr, spin_echo


def _mprage_by_iteration(t1, *, tr, ti, flip, echo_spacing, readouts, efficiency, cycles=200):
    """Follow Mz event by event over many inversion cycles; return Mz before the centre excitation."""
    centre = readouts // 2
    before = ti - centre * echo_spacing
    after = tr - before - readouts * echo_spacing
    cos_a = np.cos(np.radians(flip))
    mz, at_centre = 1.0, None
    for _ in range(cycles):
        mz = -efficiency * mz
        mz = 1 - (1 - mz) * np.exp(-before / t1)
        for k in range(readouts):
            if k == centre:
                at_centre = mz
            mz = 1 - (1 - mz * cos_a) * np.exp(-echo_spacing / t1)
        mz = 1 - (1 - mz) * np.exp(-after / t1)
    return at_centre


@pytest.mark.parametrize("t1", [650.0, 1200.0, 4300.0])
@pytest.mark.parametrize(("tr", "ti", "flip", "esp", "n"), [(2300, 900, 9, 7.1, 176), (1500, 450, 12, 6.0, 120)])
def test_mprage_steady_state_matches_event_by_event_tracking(t1, tr, ti, flip, esp, n):
    expected = _mprage_by_iteration(t1, tr=tr, ti=ti, flip=flip, echo_spacing=esp, readouts=n, efficiency=0.96)
    got = mprage(np.array([t1]), np.array([50.0]), np.array([1.0]), tr=tr, ti=ti, te=0.0, flip=flip,
                 echo_spacing=esp, readouts=n, inversion_efficiency=0.96)  # fmt: skip
    assert got[0] == pytest.approx(abs(expected) * np.sin(np.radians(flip)), rel=1e-9)


def test_mprage_gives_t1_weighting_wm_brighter_than_gm_brighter_than_csf():
    t1 = np.array([838.0, 1607.0, 4300.0])  # 3 T WM, GM, CSF
    s = mprage(t1, np.full(3, 50.0), np.array([0.69, 0.8, 1.0]), tr=2300, ti=900, te=3, flip=9,
               echo_spacing=7.1, readouts=176)  # fmt: skip
    assert s[0] > s[1] > s[2]


def test_mprage_rejects_impossible_timing():
    with pytest.raises(ValueError, match="timing impossible"):
        mprage(np.array([1000.0]), np.array([50.0]), np.array([1.0]), tr=1000, ti=300, te=3, flip=9,
               echo_spacing=10, readouts=176)  # fmt: skip


def test_spgr_matches_iterated_steady_state_and_ernst_angle():
    t1, tr, flip = 1000.0, 24.0, 30.0
    mz, cos_a, e1 = 1.0, np.cos(np.radians(flip)), np.exp(-tr / t1)
    for _ in range(2000):
        mz = 1 - (1 - mz * cos_a) * e1
    expected = mz * np.sin(np.radians(flip))
    got = spgr(np.array([t1]), np.array([1e9]), np.array([1.0]), tr=tr, te=0.0, flip=flip)
    assert got[0] == pytest.approx(expected, rel=1e-9)
    # The signal peaks at the Ernst angle arccos(exp(-TR/T1)).
    flips = np.linspace(1, 89, 8801)
    signals = spgr(np.full_like(flips, t1), np.full_like(flips, 1e9), np.ones_like(flips), tr=tr, te=0.0, flip=flips)
    assert flips[np.argmax(signals)] == pytest.approx(np.degrees(np.arccos(e1)), abs=0.02)


def test_spin_echo_limits():
    pd, t1, t2 = np.array([0.8]), np.array([1000.0]), np.array([90.0])
    assert spin_echo(t1, t2, pd, tr=1e7, te=0.0)[0] == pytest.approx(0.8)
    assert spin_echo(t1, t2, pd, tr=1e7, te=90.0)[0] == pytest.approx(0.8 / np.e)
    assert spin_echo(t1, t2, pd, tr=1000.0, te=0.0)[0] == pytest.approx(0.8 * (1 - 1 / np.e))
