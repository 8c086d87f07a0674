from __future__ import annotations

import logging

import numpy as np
import pytest

from harmonizing_flows.data.labels import ASEG_TO_CLASS, CLASS_NAMES, EXCLUDED_ASEG_CODES, NUM_CLASSES, to_classes
from harmonizing_flows.errors import InputError


def test_fifteen_classes_in_the_papers_order():
    assert NUM_CLASSES == 15
    assert CLASS_NAMES[0] == "background"
    assert CLASS_NAMES[1:] == (
        "cerebellum GM", "cerebellum WM", "cerebral GM", "cerebral WM", "thalamus", "hippocampus", "amygdala",
        "ventricles", "caudate", "putamen", "pallidum", "ventral DC", "CSF", "brainstem",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("codes", "name"),
    [
        ((8, 47), "cerebellum GM"), ((7, 46), "cerebellum WM"), ((3, 42), "cerebral GM"),
        ((2, 41, 77, 251, 255), "cerebral WM"), ((10, 49), "thalamus"), ((17, 53), "hippocampus"),
        ((18, 54), "amygdala"), ((4, 43, 5, 44, 14, 15, 31, 63), "ventricles"), ((11, 50), "caudate"),
        ((12, 51), "putamen"), ((13, 52), "pallidum"), ((28, 60), "ventral DC"), ((24,), "CSF"),
        ((16,), "brainstem"),
    ],
)  # fmt: skip
def test_aseg_codes_map_to_their_class(codes, name):
    # Values > 14 force aseg interpretation; 41 is present in every whole-brain aseg.
    labels = np.array([*codes, 41])
    out = to_classes(labels, source="aseg")
    assert out[:-1].tolist() == [CLASS_NAMES.index(name)] * len(codes)


def test_every_class_is_reachable_and_no_code_is_both_mapped_and_excluded():
    assert set(ASEG_TO_CLASS.values()) == set(range(1, NUM_CLASSES))
    assert not set(ASEG_TO_CLASS) & EXCLUDED_ASEG_CODES


def test_excluded_codes_become_background_silently(caplog):
    with caplog.at_level(logging.WARNING):
        out = to_classes(np.array([0, 26, 58, 30, 62, 85, 41]), source="aseg")
    assert out.tolist() == [0, 0, 0, 0, 0, 0, CLASS_NAMES.index("cerebral WM")]
    assert not caplog.records


def test_unknown_codes_warn_with_counts_or_raise(caplog):
    labels = np.array([2, 999, 999, 41])
    with caplog.at_level(logging.WARNING):
        out = to_classes(labels, source="aseg", path="x.mgz")
    assert out.tolist() == [4, 0, 0, 4]
    assert "999 (2 voxels)" in caplog.text and "x.mgz" in caplog.text
    with pytest.raises(InputError, match=r"x\.mgz.*999"):
        to_classes(labels, source="aseg", unknown="error", path="x.mgz")


def test_aparc_cortical_parcels_are_cerebral_grey_matter():
    out = to_classes(np.array([1001, 1035, 2024, 11105, 12175, 41]))
    assert set(out[:-1].tolist()) == {CLASS_NAMES.index("cerebral GM")}


def test_auto_detects_class_maps_and_validates_them():
    classes = np.arange(15).reshape(3, 5)
    np.testing.assert_array_equal(to_classes(classes), classes)
    assert to_classes(np.array([2, 3, 41])).tolist() == [4, 3, 4]  # aseg, because of 41
    with pytest.raises(InputError, match="only 15 classes"):
        to_classes(np.array([0, 15]), source="classes")


@pytest.mark.parametrize("bad", [np.array([1.5, 2.0]), np.array([-1, 2]), np.array([np.nan, 1.0])])
def test_non_integer_or_negative_labels_are_rejected(bad):
    with pytest.raises(InputError):
        to_classes(bad)


def test_float_arrays_with_integer_values_are_accepted():
    assert to_classes(np.array([2.0, 41.0])).tolist() == [4, 4]
