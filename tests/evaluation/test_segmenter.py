"""The segmenter: it learns the source, saves and loads without pickling, and refuses mismatched partners."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from harmonizing_flows.errors import InputError
from harmonizing_flows.evaluation.segmenter import (
    check_compatible,
    fit_segmenter,
    fit_segmenter_on,
    load_segmenter,
    predict,
    save_segmenter,
)
from harmonizing_flows.method.store import load_model


@pytest.fixture(scope="module")
def segmenter_folder(simulated, smoke_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "segmenter"
    return fit_segmenter_on(simulated.manifest, out, smoke_profile, site="mprage-3t", device="cpu", progress=False)


def test_training_lowers_the_loss_and_the_folder_round_trips(segmenter_folder):
    doc = json.loads((segmenter_folder / "model.json").read_text())
    history = doc["training"]["history"]
    assert doc["format"] == "harmonizing-flows segmenter" and doc["source_site"] == "mprage-3t"
    assert history[-1]["loss"] < history[0]["loss"]
    seg = load_segmenter(segmenter_folder)
    again = load_segmenter(segmenter_folder)
    x = torch.rand(2, 1, 48, 48) * 255
    assert torch.equal(seg(x), again(x))


def test_prediction_is_background_outside_the_brain(segmenter_folder):
    seg = load_segmenter(segmenter_folder)
    images = np.random.default_rng(0).integers(0, 255, (5, 48, 48)).astype(np.uint8)
    masks = np.zeros((5, 48, 48), bool)
    masks[1:3, 10:30, 12:40] = True
    labels = predict(seg, images, masks)
    assert labels.dtype == np.uint8 and labels.shape == images.shape
    assert not labels[~masks].any()


def test_a_segmenter_learns_a_separable_toy_problem(smoke_profile):
    from dataclasses import replace

    from harmonizing_flows.config import TrainConfig
    from harmonizing_flows.data.slices import Slices

    rng = np.random.default_rng(0)
    labels = np.zeros((64, 48, 48), np.uint8)
    for k in range(64):
        r0, c0 = rng.integers(4, 30, 2)
        labels[k, r0 : r0 + 14, c0 : c0 + 14] = 1 + k % 3
    images = (labels.astype(float) * 60 + rng.normal(0, 5, labels.shape)).clip(0, 255).astype(np.uint8)
    data = Slices(images=images, mask=np.ones((64, 48, 48), bool), labels=labels)
    profile = replace(smoke_profile, segmenter_training=TrainConfig(epochs=25, batch_size=16, lr=1e-2, halve_every=10))
    seg = fit_segmenter(data, profile, device="cpu", progress=False).eval()
    pred = predict(seg, images[:8], np.ones((8, 48, 48), bool))
    assert (pred == labels[:8]).mean() > 0.95


def test_damaged_or_foreign_folders_are_clear_errors(segmenter_folder, fitted, tmp_path):
    with pytest.raises(InputError, match="not a harmonizing-flows segmenter description"):
        load_segmenter(fitted)  # a harmonizing-flows model, not a segmenter
    with pytest.raises(InputError, match=r"no model\.json"):
        load_segmenter(tmp_path)
    broken = tmp_path / "broken"
    seg = load_segmenter(segmenter_folder)
    save_segmenter(seg, broken)
    (broken / "segmenter.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match=r"segmenter\.safetensors"):
        load_segmenter(broken)


def test_a_segmenter_from_another_site_or_size_is_refused(segmenter_folder, fitted):
    seg = load_segmenter(segmenter_folder)
    model = load_model(fitted)
    check_compatible(seg, model)  # same site and size: fine
    seg.metadata["source_site"] = "spgr-15t"
    with pytest.raises(InputError, match="trained on site 'spgr-15t'"):
        check_compatible(seg, model, segmenter_folder)
    seg.metadata["source_site"] = "mprage-3t"
    seg.metadata["image_size"] = [64, 64]
    with pytest.raises(InputError, match="64x64"):
        check_compatible(seg, model, segmenter_folder)


def test_a_label_map_of_other_classes_is_refused_before_training(simulated, smoke_profile, tmp_path):
    # Three tissue classes lie in 0..14 and would pass for class indices: the segmenter must not learn them.
    rows = []
    for s in simulated.subjects:
        if s.site != "mprage-3t":
            continue
        labels = s.labels
        if s.split == "train":
            img = nib.load(s.labels)
            data = np.asarray(img.dataobj)
            labels = tmp_path / f"{s.subject}_tissues.nii.gz"
            nib.save(nib.Nifti1Image(np.where(data > 0, 1 + data % 3, 0).astype(np.int16), img.affine), labels)
        rows.append(f"{s.subject},{s.site},{s.image},{s.mask},{labels},{s.split}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,site,image,mask,labels,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"_tissues\.nii\.gz: label map holds only classes \[1, 2, 3\]"):
        fit_segmenter_on(manifest, tmp_path / "seg", smoke_profile, device="cpu", progress=False)
    assert not (tmp_path / "seg").exists()
