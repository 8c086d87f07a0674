"""Model folders: safetensors + JSON, atomic writes, and clear errors on damaged or mismatched files."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from harmonizing_flows.errors import InputError, OutputExistsError
from harmonizing_flows.method.store import Model, load_model, save_model
from harmonizing_flows.profiles import PROFILES, apply_overrides


@pytest.fixture
def saved(tmp_path):
    model = Model.create(PROFILES["smoke"], {"source_site": "A", "source_bpd": {"all_pixels": 3.0}})
    with torch.no_grad():
        for p in model.flow.parameters():
            p.normal_()
    return model, save_model(model, tmp_path / "model")


def test_round_trip_keeps_weights_settings_and_metadata(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["flow.safetensors", "harmonizer.safetensors", "model.json"]
    loaded = load_model(folder)
    assert loaded.profile == model.profile and loaded.source_site == "A"
    for a, b in zip(model.flow.state_dict().values(), loaded.flow.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    doc = json.loads((folder / "model.json").read_text())
    assert doc["format"] == "harmonizing-flows model" and doc["package_version"]


def test_existing_folder_is_refused_unless_overwrite(saved):
    model, folder = saved
    with pytest.raises(OutputExistsError):
        save_model(model, folder)
    save_model(model, folder, overwrite=True)
    other = folder.parent / "notes"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a harmonizing-flows model"):
        save_model(model, other, overwrite=True)
    assert (other / "x.txt").read_text() == "mine"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model", "notes"]
    from harmonizing_flows.evaluation.segmenter import SEGMENTER_FORMAT
    from harmonizing_flows.method.folders import check_output_folder

    with pytest.raises(OutputExistsError, match="is a harmonizing-flows model, not a harmonizing-flows segmenter"):
        check_output_folder(folder, True, SEGMENTER_FORMAT)  # a model is not replaced by a segmenter


def test_missing_truncated_and_mismatched_files_are_clear_errors(saved, tmp_path):
    _, folder = saved
    with pytest.raises(InputError, match="model folder does not exist"):
        load_model(tmp_path / "nowhere")
    weights = folder / "flow.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or damaged") as info:
        load_model(folder)
    assert str(weights) in str(info.value)
    weights.unlink()
    with pytest.raises(InputError, match="weights file is missing"):
        load_model(folder)
    # A model.json that describes another architecture than the weights.
    other = Model.create(apply_overrides(PROFILES["smoke"], ["harmonizer.widths=[4, 8, 16]"]))
    folder2 = save_model(other, tmp_path / "other")
    doc = json.loads((folder2 / "model.json").read_text())
    doc["profile"]["harmonizer"]["widths"] = [4, 8, 8]
    (folder2 / "model.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="do not match the architecture") as info:
        load_model(folder2)
    assert "harmonizer.safetensors" in str(info.value)
    doc["profile"] = {}
    (folder2 / "model.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="holds no settings") as info:
        load_model(folder2)  # not the defaults, and then a complaint about the weights
    assert "model.json" in str(info.value)
    (folder2 / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(folder2)


def test_loading_never_unpickles(saved):
    _, folder = saved
    # A pickle in place of the weights is refused, not executed.
    torch.save({"x": torch.zeros(1)}, folder / "harmonizer.safetensors")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_model(folder)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_model_folder_has_the_permissions_the_umask_gives(tmp_path, umask):
    model = Model.create(PROFILES["smoke"], {"source_site": "A"})
    old = os.umask(umask)
    try:
        folder = save_model(model, tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o666 & ~umask}


def test_a_model_fitted_for_the_curve_alone_has_nothing_to_harmonize_until_adapted(tmp_path):
    from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
    from harmonizing_flows.method.store import load_harmonizer

    histogram = [0.0] + [1.0] * 255
    model = Model.create(PROFILES["smoke"], {"pretrained_harmonizer": False, "source_histogram": histogram})
    folder = save_model(model, tmp_path / "model")
    with pytest.raises(InputError, match=r"curve harmonizer alone .* adapt it to a site first") as info:
        load_harmonizer(folder)
    assert str(folder) in str(info.value)
    model.harmonizer = CurveHarmonizer(histogram)  # once adapted, its curve is what it applies
    model.metadata["harmonizer"] = "curve"
    adapted = save_model(model, tmp_path / "adapted")
    assert isinstance(load_harmonizer(adapted)[0], CurveHarmonizer)
