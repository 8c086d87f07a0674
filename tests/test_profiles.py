"""Profiles, TOML settings and overrides."""

from __future__ import annotations

import pytest

from harmonizing_flows.errors import InputError
from harmonizing_flows.profiles import PROFILES, apply_overrides, load_profile, profile_from_dict, profile_to_dict


def test_profiles_round_trip_through_dicts():
    for profile in PROFILES.values():
        assert profile_from_dict(profile_to_dict(profile)) == profile


def test_paper_profile_holds_the_papers_settings():
    p = PROFILES["paper"]
    assert p.slices.image_size == (224, 224) and p.slices.axis == "coronal"
    assert p.harmonizer.widths == (16, 32, 48, 64, 64) and p.harmonizer.blocks == 2
    assert p.flow.couplings == (4, 4, 4) and p.flow.dequantization_couplings == 4 and p.flow.margin == 1.2
    assert (p.flow_training.epochs, p.flow_training.lr, p.flow_training.halve_every) == (1600, 1e-3, 200)
    assert p.flow_training.clip_grad_norm == 1.0  # the authors' gradient_clip_val
    assert (p.harmonizer_training.epochs, p.harmonizer_training.halve_every) == (200, 30)
    assert (p.adapt.lr, p.adapt.batch_size) == (4e-6, 16)


def test_overrides_and_toml(tmp_path):
    p = apply_overrides(PROFILES["fast"], ["flow.margin=2.5", "slices.image_size=[96, 96]", "adapt.stop=steps"])
    assert p.flow.margin == 2.5 and p.slices.image_size == (96, 96) and p.adapt.stop == "steps"
    assert p.harmonizer == PROFILES["fast"].harmonizer
    settings = tmp_path / "s.toml"
    settings.write_text("seed = 4\n[flow]\nbrain_only = true\n[adapt]\nalpha_guard = 0.5\n")
    q = load_profile("smoke", settings, ["adapt.steps=7"])
    assert (q.seed, q.flow.brain_only, q.adapt.alpha_guard, q.adapt.steps) == (4, True, 0.5, 7)
    assert q.flow.widths == PROFILES["smoke"].flow.widths


@pytest.mark.parametrize(
    ("name", "file_text", "overrides", "message"),
    [
        ("huge", None, [], "unknown profile 'huge'"),
        ("fast", None, ["flow.colour=3"], "unknown setting"),
        ("fast", None, ["flowmargin"], "not of the form"),
        ("fast", None, ["adapt.stop=never"], "stop must be"),
        ("fast", "[flow\n", [], "invalid settings"),
        ("fast", "[flow]\nmargin_mode = 'sideways'\n", [], "margin_mode"),
        ("fast", None, ["slices.levels=128"], "levels must be 256"),
        ("fast", None, ["flow_training.keep=first"], "keep must be last or best"),
        ("fast", None, ["segmenter_training.keep=best"], r"segmenter_training\.keep must be last: only the flow"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, name, file_text, overrides, message):
    path = None
    if file_text is not None:
        path = tmp_path / "bad.toml"
        path.write_text(file_text)
    with pytest.raises(InputError, match=message) as info:
        load_profile(name, path, overrides)
    if path is not None:
        assert str(path) in str(info.value)


def test_settings_of_an_older_model_file_still_load():
    values = profile_to_dict(PROFILES["fast"])
    del values["slices"]["voxel_size"]  # written before the field existed
    values["harmonizer_training"]["halve_every"] = 5.0  # a whole number written as a float
    profile = profile_from_dict(values)
    assert profile.slices.voxel_size == 2.0 and profile.harmonizer_training.halve_every == 5
    assert isinstance(profile.harmonizer_training.halve_every, int)
    with pytest.raises(ValueError, match=r"adapt\.steps must be a whole number, not 2\.5"):
        apply_overrides(profile, ["adapt.steps=2.5"])
    with pytest.raises(ValueError, match=r"adapt\.lr must be a number, not 'fast'"):
        apply_overrides(profile, ["adapt.lr='fast'"])
