"""Harmonized NIfTI out: the input's grid and header, background zero, inputs never touched."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from harmonizing_flows.config import SliceConfig
from harmonizing_flows.data.volume import load_volume, quantize_with, slice_volume, to_image, unslice
from harmonizing_flows.errors import InputError, OutputExistsError
from harmonizing_flows.harmonize import harmonize, harmonize_slices, harmonize_volume
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.store import Model, load_model, save_model
from harmonizing_flows.profiles import PROFILES


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identity_harmonizer_gives_back_the_quantized_input(simulated):
    subject = next(s for s in simulated.subjects if s.site == "spgr-15t")  # stored PIR
    config = SliceConfig(image_size=(64, 64), voxel_size=4.0)  # the simulation's voxels: no resampling
    out = harmonize_volume(Harmonizer(PROFILES["smoke"].harmonizer), subject.image, subject.mask, slices=config)
    source = nib.load(subject.image)
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    volume = load_volume(subject.image, subject.mask)
    sliced = slice_volume(volume, config)
    expected = np.asarray(unslice(sliced.images, sliced.grid, rescale=False).dataobj)
    assert np.array_equal(np.asarray(out.dataobj), expected)


class _Fields(torch.nn.Module):
    """A harmonizer whose gain is ``gain`` and whose offset is ``share`` of its input: fields that vary in space
    with the anatomy, so that a misplaced field shows."""

    factor = 1

    def __init__(self, gain: float, share: float) -> None:
        super().__init__()
        self.gain, self.share = gain, share

    def parts(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((x.shape[0],), self.gain), self.share * x


@pytest.mark.parametrize(("gain", "share"), [(1.0, 0.0), (0.5, 0.0), (1.0, 0.25)])
def test_a_model_on_coarser_voxels_carries_its_correction_back_to_the_inputs_grid(simulated, gain, share):
    # 4 mm data, a model for 8 mm voxels: the harmonizer runs on the resampled volume, but the output keeps the
    # input's own detail (alpha and beta go back to the input grid, not the coarse image)
    from nibabel.processing import resample_from_to

    from harmonizing_flows.data.volume import conform

    subject = next(s for s in simulated.subjects if s.site == "spgr-15t")
    config = SliceConfig(image_size=(32, 32), voxel_size=8.0)
    out = harmonize_volume(_Fields(gain, share), subject.image, subject.mask, slices=config, dtype="float32")
    source = nib.load(subject.image)
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    volume = load_volume(subject.image, subject.mask)
    coarse = conform(volume, 8.0)
    assert coarse.image.shape != volume.image.shape  # it was resampled
    scale = slice_volume(volume, config).grid.scale
    # the expected offset, interpolated onto the input's grid by nibabel, from the coarse image the model saw
    q = quantize_with(coarse.image, coarse.mask, scale).astype(np.float32)
    moved = resample_from_to(nib.Nifti1Image(q, coarse.affine), (volume.image.shape, volume.affine), order=1)
    x = volume.image / scale
    expected = to_image(np.clip(gain * x + share * np.asarray(moved.dataobj), 0, 255) * volume.mask, volume)
    # compare where every coarse voxel the interpolation reads is brain (outside it the offset is extended)
    inside = resample_from_to(
        nib.Nifti1Image(coarse.mask.astype(np.float32), coarse.affine), (volume.image.shape, volume.affine), order=1
    )
    inner = np.asarray(to_image((np.asarray(inside.dataobj) > 0.999).astype(np.float32), volume).dataobj) > 0
    assert inner.sum() > 0.5 * volume.mask.sum()
    got, want = np.asarray(out.dataobj), np.asarray(expected.dataobj)
    np.testing.assert_allclose(got[inner], want[inner], atol=0.05)
    if share == 0:  # constant fields: exact everywhere, edges included
        np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize(("gain", "share"), [(0.5, 0.0), (-1.0, 1.5)])  # h = 0.5 x both: in range
def test_a_restorer_after_a_gain_keeps_the_gain_on_the_inputs_finer_detail(simulated, gain, share):
    # Restored's fields: the harmonizer's gain and the offset R(h) - gain * x, so that the finer grid's detail is
    # scaled by the gain (inverted, for a negative one) as without the restorer; here R is the identity
    from harmonizing_flows.method.restoration import Restored, Restorer

    subject = next(s for s in simulated.subjects if s.site == "spgr-15t")
    config = SliceConfig(image_size=(32, 32), voxel_size=8.0)

    def harmonized(harmonizer):
        return np.asarray(
            harmonize_volume(harmonizer, subject.image, subject.mask, slices=config, dtype="float32").dataobj
        )

    plain = harmonized(_Fields(gain, share))
    assert plain.any()
    np.testing.assert_allclose(harmonized(Restored(_Fields(gain, share), Restorer())), plain, atol=1e-3)


def test_a_brain_filling_the_model_window_is_not_darkened_at_its_edge(tmp_path):
    # the coarse brain fills the window exactly: the fields are zero just outside it, and must not leak in
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 64), np.float32)
    image[16:48, 16:48, 16:48] = rng.uniform(60, 200, (32, 32, 32))
    path = tmp_path / "box.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), path)
    config = SliceConfig(image_size=(16, 16), voxel_size=2.0)
    out = np.asarray(harmonize_volume(_Fields(1.0, 0.0), path, slices=config, dtype="float32").dataobj)
    scale = slice_volume(load_volume(path), config).grid.scale
    np.testing.assert_allclose(out, np.clip(image / scale, 0, 255), atol=1e-3)


def test_harmonize_a_folder_keeps_headers_and_names(simulated, fitted, tmp_path):
    site_folder = simulated.folder / "irspgr-3t"
    before = {p.name: _digest(p) for p in site_folder.iterdir()}
    written = harmonize(fitted, site_folder, tmp_path / "out", progress=False)
    assert sorted(p.name for p in written) == sorted(p for p in before if p.endswith("_T1w.nii.gz"))
    for path in written:
        out, src = nib.load(path), nib.load(site_folder / path.name)
        mask = np.asarray(nib.load(site_folder / path.name.replace("_T1w", "_mask")).dataobj) > 0
        data = np.asarray(out.dataobj)
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
        assert out.header.get_xyzt_units() == src.header.get_xyzt_units()
        assert data.dtype == np.uint8 and np.all(data[~mask] == 0) and data[mask].max() > 100
    assert {p.name: _digest(p) for p in site_folder.iterdir()} == before  # inputs untouched


def test_single_file_float_output_and_refusals(simulated, fitted, tmp_path):
    subject = simulated.subjects[0]
    target = tmp_path / "one.nii.gz"
    (written,) = harmonize(fitted, subject.image, target, mask=subject.mask, dtype="float32", progress=False)
    assert written == target and nib.load(target).get_data_dtype() == np.float32
    with pytest.raises(OutputExistsError):
        harmonize(fitted, subject.image, target, progress=False)
    with pytest.raises(OutputExistsError, match="is an input"):
        harmonize(fitted, subject.image, subject.image, overwrite=True, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        harmonize(fitted, tmp_path / "missing.nii.gz", tmp_path / "o.nii.gz", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no image"):
        harmonize(fitted, empty, tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="model folder does not exist"):
        harmonize(tmp_path / "nomodel", subject.image, tmp_path / "o.nii.gz", progress=False)


def test_a_model_of_another_size_still_harmonizes_whole_volumes(simulated, tmp_path):
    model = Model.create(PROFILES["smoke"])
    folder = save_model(model, tmp_path / "m")
    subject = simulated.subjects[0]
    (written,) = harmonize(folder, subject.image, tmp_path / "o.nii.gz", mask=subject.mask, progress=False)
    data = np.asarray(nib.load(written).dataobj)
    mask = np.asarray(nib.load(subject.mask).dataobj) > 0
    assert np.count_nonzero(data[mask]) > 0.9 * mask.sum()  # no part of the brain cropped away


def _window_pass(harmonizer, sliced):
    x = torch.from_numpy(sliced.images).float()[:, None]
    m = torch.from_numpy(sliced.mask).float()[:, None]
    with torch.no_grad():
        return harmonizer(x, m)[:, 0].numpy()


def test_a_harmonized_file_holds_what_adaptation_and_the_benchmark_see(simulated, fitted):
    # The gain alpha is pooled over the whole slice, so the file must come from the model's own window (as in
    # fitting, adaptation and the benchmark), not from whole slices padded otherwise.
    model = load_model(fitted)
    subject = next(s for s in simulated.subjects if s.site == "spgr-15t")
    out = harmonize_volume(model.harmonizer, subject.image, subject.mask, slices=model.profile.slices, dtype="float32")
    window = slice_volume(load_volume(subject.image, subject.mask), model.profile.slices)
    assert window.mask.sum() == (np.asarray(nib.load(subject.mask).dataobj) > 0).sum()  # the brain fits the window
    expected = np.asarray(unslice(_window_pass(model.harmonizer, window), window.grid, rescale=False).dataobj)
    np.testing.assert_allclose(np.asarray(out.dataobj), expected, atol=1e-3)
    # the benchmark scores harmonize_slices on the same window: exactly what the file holds
    scored = harmonize_slices(model.harmonizer, window)
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(unslice(scored, window.grid, rescale=False).dataobj))
    whole = harmonize_volume(
        model.harmonizer, subject.image, subject.mask, slices=replace(model.profile.slices, image_size=(64, 64))
    )
    assert np.abs(np.asarray(whole.dataobj) - expected).max() > 1.0  # another window, another output


def test_brain_outside_the_window_comes_from_whole_slices(simulated, fitted):
    model = load_model(fitted)
    subject = next(s for s in simulated.subjects if s.site == "mprage-3t")
    volume = load_volume(subject.image, subject.mask)
    small = replace(model.profile.slices, image_size=(32, 32), max_brain_outside=0.5)
    window = slice_volume(volume, small)
    brain = np.asarray(nib.load(subject.mask).dataobj) > 0
    assert 0 < window.mask.sum() < brain.sum()  # some brain outside the window
    out = np.asarray(
        harmonize_volume(model.harmonizer, subject.image, subject.mask, slices=small, dtype="float32").dataobj
    )
    inside = np.asarray(unslice(window.mask.astype(np.uint8), window.grid, rescale=False).dataobj) > 0
    by_window = np.asarray(unslice(_window_pass(model.harmonizer, window), window.grid, rescale=False).dataobj)
    np.testing.assert_allclose(out[inside], by_window[inside], atol=1e-3)
    outside = brain & ~inside
    assert np.count_nonzero(out[outside]) > 0.9 * outside.sum()  # harmonized, not lost
    with pytest.warns(UserWarning, match="of the brain lies outside the model's 32x32 slices"):
        strict = harmonize_volume(
            model.harmonizer, subject.image, subject.mask, slices=replace(small, max_brain_outside=0.0)
        )
    assert np.count_nonzero(np.asarray(strict.dataobj)[brain]) > 0.9 * brain.sum()


def test_a_single_file_uses_the_mask_beside_it(simulated, fitted, tmp_path):
    subject = next(s for s in simulated.subjects if s.site == "mprage-15t")
    source = nib.load(subject.mask)
    brain = np.asarray(source.dataobj) > 0
    half = brain.copy()
    half[: brain.shape[0] // 2] = False
    nib.save(nib.load(subject.image), tmp_path / "sub_T1w.nii.gz")
    nib.save(nib.Nifti1Image(half.astype(np.uint8), source.affine, source.header), tmp_path / "sub_mask.nii.gz")
    (tmp_path / "a_link.nii.gz").symlink_to(tmp_path / "sub_T1w.nii.gz")  # sorts first, has no mask of its own
    (written,) = harmonize(fitted, tmp_path / "sub_T1w.nii.gz", tmp_path / "out.nii.gz", progress=False)
    data = np.asarray(nib.load(written).dataobj)
    assert np.all(data[~half] == 0) and np.count_nonzero(data[half]) > 0.9 * half.sum()
    with pytest.raises(OutputExistsError, match="is an input"):  # the companion it reads is never overwritten
        harmonize(fitted, tmp_path / "sub_T1w.nii.gz", tmp_path / "sub_mask.nii.gz", overwrite=True, progress=False)


def test_the_callers_harmonizer_stays_trainable_and_untouched(simulated):
    subject = simulated.subjects[0]
    harmonizer = Harmonizer(PROFILES["smoke"].harmonizer).train()
    before = {name: p.clone() for name, p in harmonizer.state_dict().items()}
    harmonize_volume(harmonizer, subject.image, subject.mask, slices=SliceConfig(image_size=(64, 64), voxel_size=4.0))
    assert harmonizer.training  # its mode, memory layout and weights are the caller's, as they were
    assert all(p.is_contiguous() and torch.equal(p, before[name]) for name, p in harmonizer.state_dict().items())
    x = torch.rand(2, 1, 32, 32) * 255
    harmonizer(x, torch.ones_like(x)).sum().backward()  # inference tensors would refuse this
    assert all(p.grad is not None for p in harmonizer.alpha_head.parameters())


def test_the_headers_qform_and_sform_and_their_codes_are_kept(simulated, fitted, tmp_path):
    subject = simulated.subjects[0]
    img = nib.load(subject.image)
    shifted = img.affine.copy()
    shifted[:3, 3] += 10.0  # a registration's sform beside the scanner's qform (FSL's layout)
    odd = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), None, header=img.header.copy())
    odd.set_qform(img.affine, 1)
    odd.set_sform(shifted, 2)
    odd.header["cal_min"], odd.header["cal_max"] = 0, 4000
    nib.save(odd, tmp_path / "odd.nii.gz")
    mask = nib.Nifti1Image(np.asarray(nib.load(subject.mask).dataobj), shifted)  # on the sform's grid, as nibabel reads
    nib.save(mask, tmp_path / "odd_mask.nii.gz")
    (written,) = harmonize(fitted, tmp_path / "odd.nii.gz", tmp_path / "o.nii.gz", progress=False)
    out = nib.load(written)
    q, qcode = out.header.get_qform(coded=True)
    sform, scode = out.header.get_sform(coded=True)
    assert (qcode, scode) == (1, 2)
    np.testing.assert_allclose(q, img.affine, atol=1e-5)
    np.testing.assert_allclose(sform, shifted, atol=1e-5)
    assert out.header["cal_max"] == 0  # the input's display range does not fit 0..255
    only_s = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), None, header=img.header.copy())
    only_s.set_qform(None, 0)
    only_s.set_sform(img.affine, 2)
    nib.save(only_s, tmp_path / "s.nii.gz")
    (written,) = harmonize(fitted, tmp_path / "s.nii.gz", tmp_path / "o2.nii.gz", mask=subject.mask, progress=False)
    assert nib.load(written).header["qform_code"] == 0 and nib.load(written).header["sform_code"] == 2


def test_a_folder_is_checked_before_anything_is_written_and_can_be_finished(simulated, fitted, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for s in simulated.subjects[:3]:
        for path in (s.image, s.mask):
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz_broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"zz_broken\.nii\.gz: cannot read image"):
        harmonize(fitted, folder, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before the first volume, not after it
    (folder / "zz_broken.nii.gz").unlink()
    first = harmonize(fitted, folder, tmp_path / "out", progress=False)
    (first[0]).unlink()  # as if interrupted
    with pytest.raises(OutputExistsError, match="--skip-existing"):
        harmonize(fitted, folder, tmp_path / "out", progress=False)
    before = {p: _digest(p) for p in first[1:]}
    again = harmonize(fitted, folder, tmp_path / "out", skip_existing=True, progress=False)
    assert again == [first[0]] and {p: _digest(p) for p in first[1:]} == before


def test_a_freesurfer_subject_gives_its_brain_with_its_mask(simulated, fitted, tmp_path):
    subject = simulated.subjects[0]
    mri = tmp_path / "fs" / "sub01" / "mri"
    mri.mkdir(parents=True)
    for source, name in ((subject.image, "brain.mgz"), (subject.mask, "brainmask.mgz"), (subject.labels, "aseg.mgz")):
        img = nib.load(source)
        nib.save(nib.MGHImage(np.asarray(img.dataobj, dtype=np.float32), img.affine), mri / name)
    for given in (mri, mri.parent):
        written = harmonize(fitted, given, tmp_path / f"out-{given.name}", progress=False)
        assert [p.name for p in written] == ["sub01.nii.gz"]  # the subject, not aseg or brainmask as images
        header = nib.load(written[0]).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
    data = np.asarray(nib.load(written[0]).dataobj)
    assert not data[np.asarray(nib.load(subject.mask).dataobj) == 0].any()  # brainmask.mgz was used
    shutil.copytree(mri.parent, tmp_path / "fs" / "fsaverage")  # recon-all's link: a template, not a scan
    with pytest.warns(UserWarning, match="template subject"):
        (again,) = harmonize(fitted, tmp_path / "fs", tmp_path / "out-subjects-dir", progress=False)
    assert again.name == "sub01.nii.gz" and np.array_equal(np.asarray(nib.load(again).dataobj), data)
    nib.save(nib.load(subject.image), tmp_path / "fs" / "sub01.nii.gz")
    with pytest.warns(UserWarning), pytest.raises(InputError, match=r"would be written as sub01\.nii\.gz"):
        harmonize(fitted, tmp_path / "fs", tmp_path / "out-clash", progress=False)
    assert not (tmp_path / "out-clash").exists()


def test_names_that_cannot_be_told_apart_or_written_are_refused(simulated, fitted, tmp_path):
    subject = simulated.subjects[0]
    folder = tmp_path / "in"
    folder.mkdir()
    img = nib.load(subject.image)
    nib.save(img, folder / "s.nii.gz")
    nib.save(img, folder / "s.nii")
    with pytest.raises(InputError, match=r"s\.nii\.gz: has the same name as s\.nii in another format"):
        harmonize(fitted, folder, tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="written as NIfTI"):
        harmonize(fitted, subject.image, tmp_path / "x.mgz", progress=False)
    with pytest.raises(InputError, match="is a folder, so its outputs go to a folder"):
        harmonize(fitted, simulated.folder / "irspgr-3t", tmp_path / "y.nii.gz", progress=False)
    (written,) = harmonize(fitted, subject.image, tmp_path / "UPPER.NII.GZ", mask=subject.mask, progress=False)
    assert written.is_file()
    labels = subject.image.with_name(subject.image.name.replace("_T1w", "_labels"))
    with pytest.raises(OutputExistsError, match="is an input"):
        harmonize(fitted, subject.image, labels, overwrite=True, progress=False)
    assert not (tmp_path / "x.mgz").exists() and not (tmp_path / "y.nii.gz").exists()


@pytest.mark.parametrize("voxel_size", [4.0, 8.0])  # the input's own grid; a coarser model's
def test_a_restorer_corrects_the_curves_output_and_the_file_holds_what_is_scored(simulated, voxel_size):
    from harmonizing_flows.config import RestorationConfig
    from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
    from harmonizing_flows.method.restoration import Restored, Restorer

    config = SliceConfig(image_size=(64, 64) if voxel_size == 4.0 else (32, 32), voxel_size=voxel_size)
    source = next(s for s in simulated.subjects if s.site == "mprage-3t")
    curve = CurveHarmonizer(slice_volume(load_volume(source.image, source.mask), config).brain_counts())
    with torch.no_grad():
        curve.curve.offset += 5.0
    torch.manual_seed(0)
    restorer = Restorer(RestorationConfig(channels=4, layers=3))
    torch.nn.init.normal_(restorer.net[-1].weight, std=0.05)
    subject = next(s for s in simulated.subjects if s.site == "spgr-15t")
    before = _digest(subject.image)

    def harmonized(harmonizer):
        out = harmonize_volume(harmonizer, subject.image, subject.mask, slices=config, dtype="float32")
        return np.asarray(out.dataobj)

    bare = harmonized(curve)
    assert np.array_equal(harmonized(Restored(curve, Restorer(RestorationConfig(channels=4, layers=3)))), bare)
    restored = harmonized(Restored(curve, restorer.eval()))
    mask = np.asarray(nib.load(subject.mask).dataobj) > 0
    assert np.abs(restored - bare)[mask].max() > 0.5 and not restored[~mask].any()
    assert _digest(subject.image) == before
    if voxel_size == 4.0:  # on the model's grid, the file holds what the benchmark scores
        window = slice_volume(load_volume(subject.image, subject.mask), config)
        assert window.mask.sum() == mask.sum()  # the brain fits the window
        scored = harmonize_slices(Restored(curve, restorer), window)
        expected = np.asarray(unslice(scored, window.grid, rescale=False).dataobj)
        np.testing.assert_allclose(restored, expected, atol=1e-3)
    else:  # the correction made on the model's grid, interpolated once onto the input's
        from nibabel.processing import resample_from_to

        from harmonizing_flows.data.volume import conform

        volume = load_volume(subject.image, subject.mask)
        coarse = conform(volume, voxel_size)
        on_model_grid = [
            np.asarray(harmonize_volume(h, coarse, slices=config, dtype="float32").dataobj)
            for h in (curve, Restored(curve, restorer))
        ]
        correction = nib.Nifti1Image(on_model_grid[1] - on_model_grid[0], coarse.affine)
        moved = resample_from_to(correction, (volume.image.shape, volume.affine), order=1)
        expected = np.asarray(to_image(np.asarray(moved.dataobj, dtype=np.float32), volume, dtype=np.float32).dataobj)
        inside = resample_from_to(nib.Nifti1Image(coarse.mask.astype(np.float32), coarse.affine),
                                  (volume.image.shape, volume.affine), order=1)  # fmt: skip
        inner = np.asarray(to_image((np.asarray(inside.dataobj) > 0.999).astype(np.float32), volume).dataobj) > 0
        inner &= (bare > 0) & (bare < 255) & (restored > 0) & (restored < 255)  # not clipped
        assert inner.sum() > 0.3 * mask.sum()
        np.testing.assert_allclose((restored - bare)[inner], expected[inner], atol=0.05)
