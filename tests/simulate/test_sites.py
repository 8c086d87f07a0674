"""Built-in sites and site definition files."""

from __future__ import annotations

import numpy as np
import pytest

from harmonizing_flows.errors import ConfigError, InputError
from harmonizing_flows.simulate.sites import BUILTIN_SITES, Site, load_sites, resolve_sites
from harmonizing_flows.simulate.tissues import (
    MEASURED_STRUCTURES,
    STRUCTURES,
    base_tissues,
    structure_values,
    tissue_table,
)

GOOD = """
[sites.prisma]
description = "a user's scanner"
field_strength = 3.0
sequence = "mprage"
tr_ms = 2000.0
ti_ms = 850.0
te_ms = 2.5
flip_deg = 8.0
echo_spacing_ms = 6.5
readouts = 192
voxel_size_mm = [1.0, 1.0, 1.0]
snr = 40.0
orientation = "LPS"

[sites.prisma.tissues.white_matter]
t1 = 900.0

[sites.old-ge]
field_strength = 1.5
sequence = "spgr"
tr_ms = 20.0
te_ms = 4.0
flip_deg = 25.0
voxel_size_mm = 1.2
"""


def test_builtin_sites_have_distinct_contrast():
    table = tissue_table(base_tissues(3.0), 42)
    assert len(BUILTIN_SITES) >= 4
    ratios = []
    for site in BUILTIN_SITES.values():
        t = tissue_table(base_tissues(site.field_strength), 42)
        s = site.table_signal(t)
        assert s[2] > s[3] > s[4] > 0, site.name  # WM > cortex > lateral ventricle: T1 weighting
        ratios.append(s[3] / s[2])
    assert max(ratios) - min(ratios) > 0.1  # grey/white contrast differs between sites
    assert table.t1.shape == (43,)


def test_site_file_is_read_with_defaults_and_overrides(tmp_path):
    path = tmp_path / "sites.toml"
    path.write_text(GOOD)
    sites = load_sites(path)
    assert list(sites) == ["prisma", "old-ge"]
    assert sites["prisma"].tissues["white_matter"]["t1"] == 900.0
    assert sites["prisma"].readouts == 192
    assert sites["old-ge"].voxel_size_mm == (1.2, 1.2, 1.2)
    assert sites["old-ge"].snr == Site(name="x").snr  # default
    # File sites come first when no names are given; names mix file and built-in sites.
    assert [s.name for s in resolve_sites(None, path)] == ["prisma", "old-ge"]
    assert [s.name for s in resolve_sites(["mprage-3t", "old-ge"], path)] == ["mprage-3t", "old-ge"]
    assert [s.name for s in resolve_sites(None)] == list(BUILTIN_SITES)


def test_tissue_override_changes_the_signal():
    plain = Site(name="a")
    changed = Site(name="b", tissues={"white_matter": {"t1": 1400.0}})
    t_plain = tissue_table(base_tissues(3.0), 3)
    t_changed = tissue_table(base_tissues(3.0, changed.tissues), 3)
    assert t_changed.t1[2] == 1400.0
    assert plain.table_signal(t_plain)[2] > changed.table_signal(t_changed)[2]


def test_a_structure_of_its_own_leaves_the_others_alone():
    mixed = tissue_table(base_tissues(3.0), 60)
    own = tissue_table(base_tissues(3.0), 60, {"putamen": {"t1": 1332.0, "pd": 0.75}, "pallidum": {"t2s": 26.0}})
    putamen, pallidum = list(STRUCTURES["putamen"]), list(STRUCTURES["pallidum"])
    assert np.all(own.t1[putamen] == 1332.0) and np.all(own.pd[putamen] == 0.75)
    assert np.all(own.t2s[putamen] == mixed.t2s[putamen])  # a parameter not given keeps the mixture's
    assert np.all(own.t2s[pallidum] == 26.0) and np.all(own.t1[pallidum] == mixed.t1[pallidum])
    others = np.setdiff1d(np.arange(61), putamen + pallidum)
    for parameter in ("t1", "t2", "t2s", "pd"):
        assert np.array_equal(getattr(own, parameter)[others], getattr(mixed, parameter)[others])


def test_structures_of_their_own_can_reorder_structures_between_sequences():
    # With the mixture every sequence orders the structures alike. A pallidum with a T1 a little shorter than white
    # matter's and a short T2* (iron; illustrative values) is brighter than white matter in a short-TE MPRAGE, as
    # in FreeSurfer's atlas, and darker in a long-TE spoiled gradient echo.
    mprage, spgr = BUILTIN_SITES["mprage-3t"], Site(name="flash", sequence="spgr", tr_ms=24.0, te_ms=12.0, flip_deg=30)
    white, pallidum = 2, STRUCTURES["pallidum"][0]
    for own in ({}, {"pallidum": {"t1": 750.0, "t2s": 26.0}}):
        table = tissue_table(base_tissues(3.0), 60, own)
        a, b = mprage.table_signal(table), spgr.table_signal(table)
        flipped = (a[pallidum] - a[white]) * (b[pallidum] - b[white]) < 0
        assert flipped == bool(own)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not toml [", "not valid TOML"),
        ("[other]\nx = 1\n", "no \\[sites.<name>\\] table"),
        ("[sites.a]\ncolour = 'red'\n", "unknown key"),
        ("[sites.a]\nsequence = 'epi'\n", "sequence must be"),
        ("[sites.a]\nsnr = -1.0\n", "snr must be positive"),
        ("[sites.a]\nfield_strength = 7.0\n", "7"),
        ("[sites.a]\norientation = 'LLS'\n", "orientation"),
        ("[sites.a]\nsnr = nan\n", "not a finite number"),
        ("[sites.a]\ntr_ms = 500.0\nti_ms = 900.0\n", "timing impossible"),
        ("[sites.'a b']\n", "without spaces"),
        ("[sites.a.structures.striatum]\nt1 = 1000.0\n", "unknown structure 'striatum'"),
        ("[sites.a.structures.putamen]\nt3 = 1000.0\n", "unknown tissue parameter"),
        ("[sites.a.structures.putamen]\nt1 = -5.0\n", "must be positive"),
        ("[sites.a.structures.putamen]\nt1 = 'long'\n", "must be positive numbers"),
        ("[sites.a]\nstructures = 5\n", "table of structure tables"),
        ("[sites.a]\ntissues = 5\n", "table of tissue tables"),
        ("[sites.a.tissues]\nwhite_matter = 5\n", "must be a table"),
        ("[sites.a.structures]\nputamen = 5\n", "must be a table"),
    ],
)
def test_bad_site_files_name_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        load_sites(path)
    assert str(path) in str(info.value)


def test_missing_site_file_and_unknown_site_name(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_sites(tmp_path / "nope.toml")
    with pytest.raises(InputError, match=r"unknown site.*available: mprage-3t"):
        resolve_sites(["mprage-3t", "siemens-9t"])
    with pytest.raises(InputError, match="named twice"):
        resolve_sites(["mprage-3t", "mprage-3t"])


def test_signal_broadcasts_over_arrays():
    site = BUILTIN_SITES["spgr-15t"]
    t1 = np.linspace(500, 4000, 7)
    s = site.signal(t1, np.full(7, 80.0), np.full(7, 60.0), np.ones(7))
    assert s.shape == (7,) and np.all(np.diff(s) < 0)  # longer T1, darker


def test_measured_structures_keep_their_atlas_brightness_at_the_reference_mprage_and_move_elsewhere():
    # The effective proton density is fitted so that ADNI's 3 T MPRAGE shows the putamen and caudate where the
    # white/grey mixture (FreeSurfer's atlas intensities) puts them, despite their measured, longer T1 ...
    reference = BUILTIN_SITES["mprage-3t"]
    mixed = reference.table_signal(tissue_table(base_tissues(3.0), 60))
    own = reference.table_signal(tissue_table(base_tissues(3.0), 60, structure_values(3.0)))
    for name in MEASURED_STRUCTURES[3.0]:
        code = STRUCTURES[name][0]
        assert own[code] == pytest.approx(mixed[code], rel=0.01), name
    # ... so elsewhere they move on their own: the putamen falls below the thalamus in the short-TI IR-SPGR and
    # rises above it in the spoiled gradient echo, an order no monotone grey-level map can carry across.
    putamen, thalamus = STRUCTURES["putamen"][0], STRUCTURES["thalamus"][0]
    order = {}
    for name in ("irspgr-3t", "spgr-15t"):
        site = BUILTIN_SITES[name]
        values = structure_values(site.field_strength)
        signal = site.table_signal(tissue_table(base_tissues(site.field_strength), 60, values))
        order[name] = signal[putamen] > signal[thalamus]
    assert order == {"irspgr-3t": False, "spgr-15t": True}


def test_a_site_overrides_the_measured_structures_parameter_by_parameter():
    values = structure_values(1.5, {"putamen": {"t2s": 30.0}, "thalamus": {"t1": 1000.0}})
    assert values["putamen"] == {"t1": 1084.0, "pd": 1.02, "t2s": 30.0}
    assert values["thalamus"] == {"t1": 1000.0}
    assert values["caudate"] == MEASURED_STRUCTURES[1.5]["caudate"]
    with pytest.raises(ConfigError, match="unknown structure"):
        structure_values(3.0, {"nucleus": {"t1": 1.0}})
