"""What keys a stored result: the code that made it, found by following imports."""

from __future__ import annotations

from dataclasses import replace

from harmonizing_flows.evaluation.cache import SETTINGS_MODULES, key, module_closure
from harmonizing_flows.evaluation.protocol import MODEL_CODE, MODEL_SETTINGS, SEGMENTER_CODE, SEGMENTER_SETTINGS
from harmonizing_flows.profiles import profile_to_dict


def test_the_closure_follows_imports_inside_functions_and_through_other_modules():
    closure = module_closure(["harmonizing_flows.evaluation.segmenter"])
    assert "harmonizing_flows.method.folders" in closure  # imported only inside save_segmenter
    assert "harmonizing_flows.method.loop" in closure  # at the top
    assert "harmonizing_flows.method.distributed" in closure  # and again through the loop
    assert "harmonizing_flows.data.volume" in closure  # through data.prepare
    assert not set(SETTINGS_MODULES) & set(closure)  # their values are keyed instead


def test_the_instrument_segmenters_do_not_depend_on_the_method():
    # A change of the flow, the harmonizer, their training or adaptation must not retrain the benchmark's
    # segmenters (its most expensive part); their key follows only the modules listed here.
    method = {"flow", "harmonizer", "training", "adaptation", "store", "unet"}
    for roots in (SEGMENTER_CODE, (*SEGMENTER_CODE, "harmonizing_flows.evaluation.bigaug")):
        closure = module_closure(roots)
        assert not [m for m in closure if m.split(".")[-1] in method or ".flow." in m], closure


def test_a_key_over_some_modules_differs_from_one_over_the_package_and_ignores_other_settings(smoke_profile):
    assert key(1, code=SEGMENTER_CODE) != key(1)
    assert key(1, code=SEGMENTER_CODE) == key(1, code=SEGMENTER_CODE)
    settings = profile_to_dict(smoke_profile)
    other = profile_to_dict(replace(smoke_profile, flow=replace(smoke_profile.flow, couplings=(3, 3, 3))))
    assert {k: settings[k] for k in SEGMENTER_SETTINGS} == {k: other[k] for k in SEGMENTER_SETTINGS}
    assert settings != other


def test_fitted_models_do_not_depend_on_adaptation_or_the_evaluation(smoke_profile):
    # Issue 20 changes adaptation often; the benchmark's flows must not be refitted for it. Fitting must still
    # follow the flow, the harmonizer and their training.
    closure = set(module_closure(MODEL_CODE))
    assert {"harmonizing_flows.method.flow.model", "harmonizing_flows.method.harmonizer"} <= closure
    assert not [m for m in closure if m.endswith(".adaptation") or ".evaluation." in m or m.endswith(".cli")]
    settings = profile_to_dict(smoke_profile)
    adapted = profile_to_dict(replace(smoke_profile, adapt=replace(smoke_profile.adapt, steps=7)))
    refitted = profile_to_dict(replace(smoke_profile, flow_training=replace(smoke_profile.flow_training, epochs=9)))
    assert {k: settings[k] for k in MODEL_SETTINGS} == {k: adapted[k] for k in MODEL_SETTINGS}
    assert {k: settings[k] for k in MODEL_SETTINGS} != {k: refitted[k] for k in MODEL_SETTINGS}
    # a new section of the profile must be placed on purpose: read by fitting, or known not to be
    unread_by_fitting = {"name", "adapt", "segmenter", "segmenter_training", "evaluation"}
    assert set(settings) == set(MODEL_SETTINGS) | unread_by_fitting
