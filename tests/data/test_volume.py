from __future__ import annotations

import gzip
import os
import stat
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from conftest import brain_phantom, write_volume
from harmonizing_flows.config import SliceConfig
from harmonizing_flows.data.labels import CLASS_NAMES
from harmonizing_flows.data.volume import load_volume, quantize, save_nifti, slice_volume, unslice
from harmonizing_flows.errors import InputError, OutputExistsError


def oriented_affine(codes: str, shape: tuple[int, int, int], zooms=(1.0, 1.2, 0.9)) -> np.ndarray:
    """An affine whose array axes point along ``codes`` (e.g. 'LIA'), with anisotropic voxels."""
    ornt = orientations.axcodes2ornt(codes)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for axis, (target, flip) in enumerate(ornt):
        affine[int(target), axis] = flip * zooms[axis]
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    return affine


ORIENTATIONS = ["RAS", "LAS", "LIA", "PSR", "ASL", "IPL"]


@pytest.mark.parametrize("codes", ORIENTATIONS)
@pytest.mark.parametrize("axis", ["coronal", "axial", "sagittal"])
def test_round_trip_reproduces_input_up_to_quantization(tmp_path, codes, axis):
    shape = (23, 30, 19)  # odd, unequal sizes
    image, mask, _labels = brain_phantom(shape)
    image = image * 3.7 + 0.25 * mask  # arbitrary units
    affine = oriented_affine(codes, shape)
    src = write_volume(tmp_path / "t1.nii.gz", image.astype(np.float32), affine)
    original_bytes = src.read_bytes()
    write_volume(tmp_path / "mask.nii.gz", mask, affine)

    volume = load_volume(src, tmp_path / "mask.nii.gz")
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    # the exact way back holds on the input's own grid (resampling is tested in test_resample.py)
    sliced = slice_volume(volume, SliceConfig(axis=axis, image_size=(41, 37), percentile=100.0, resample=False))
    assert sliced.images.dtype == np.uint8 and sliced.images.shape[1:] == (41, 37)
    assert not sliced.images[~sliced.mask].any()  # background is zero

    out = save_nifti(unslice(sliced.images, sliced.grid), tmp_path / "back.nii.gz")
    back = nib.load(out)
    assert back.shape == shape
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    restored = np.asarray(back.dataobj)
    inside = mask.astype(bool)
    step = sliced.grid.scale
    assert np.abs(restored[inside] - image[inside]).max() <= step / 2 + 1e-4
    assert not restored[~inside].any()
    assert src.read_bytes() == original_bytes  # input untouched


def test_round_trip_keeps_header_fields_and_clips_only_above_percentile(tmp_path):
    shape = (20, 24, 22)
    image, _mask, _ = brain_phantom(shape)
    img = nib.Nifti1Image(image, oriented_affine("LPS", shape))
    img.header["descrip"] = b"scanner X"
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, 2)
    nib.save(img, tmp_path / "a.nii")
    volume = load_volume(tmp_path / "a.nii")
    sliced = slice_volume(volume, SliceConfig(image_size=(32, 32), percentile=99.0, resample=False))
    back = unslice(sliced.images, sliced.grid)
    assert back.header["descrip"].tobytes().startswith(b"scanner X")
    assert int(back.header["qform_code"]) == 2
    assert back.header.get_xyzt_units() == ("mm", "sec")
    restored = np.asarray(back.dataobj)
    top = sliced.grid.scale * 255
    below = (image > 0) & (image <= top)
    assert np.abs(restored[below] - image[below]).max() <= sliced.grid.scale / 2 + 1e-4
    np.testing.assert_allclose(restored[image > top], top, rtol=1e-5)


def test_mgz_input_round_trips_to_nifti_in_mm(tmp_path):
    shape = (21, 18, 25)
    image, _mask, labels = brain_phantom(shape)
    affine = oriented_affine("LIA", shape, zooms=(1.0, 1.0, 1.0))
    write_volume(tmp_path / "brain.mgz", image, affine)
    write_volume(tmp_path / "aseg.mgz", labels.astype(np.int32), affine)
    volume = load_volume(tmp_path / "brain.mgz", labels=tmp_path / "aseg.mgz")
    sliced = slice_volume(volume, SliceConfig(image_size=(32, 32), percentile=100.0))
    assert sliced.labels is not None
    assert set(np.unique(sliced.labels)) <= {0, CLASS_NAMES.index("cerebral GM"), CLASS_NAMES.index("cerebral WM"),
                                             CLASS_NAMES.index("ventricles")}  # fmt: skip
    back = unslice(sliced.images, sliced.grid)
    assert isinstance(back, nib.Nifti1Image)
    assert back.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(back.affine, affine)
    inside = image > 0
    assert np.abs(np.asarray(back.dataobj)[inside] - image[inside]).max() <= sliced.grid.scale / 2 + 1e-4


def test_labels_follow_the_image_through_slicing(tmp_path):
    shape = (25, 27, 23)
    image, mask, labels = brain_phantom(shape)
    affine = oriented_affine("PSR", shape)
    for name, data in (("t1", image), ("mask", mask), ("aseg", labels)):
        write_volume(tmp_path / f"{name}.nii.gz", data, affine)
    volume = load_volume(tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "aseg.nii.gz")
    sliced = slice_volume(volume, SliceConfig(image_size=(40, 40), percentile=100.0, resample=False))
    back_labels = np.asarray(unslice(sliced.labels, sliced.grid, rescale=False).dataobj)
    ventricle = CLASS_NAMES.index("ventricles")
    np.testing.assert_array_equal(back_labels == ventricle, labels == 4)
    # ventricles are dark, white matter bright, in the same voxels as in the input
    assert sliced.images[sliced.labels == ventricle].mean() < sliced.images[sliced.labels == 4].mean()


def test_crop_is_centred_on_the_brain(tmp_path):
    data = np.zeros((60, 10, 60), np.float32)
    data[40:50, :, 5:15] = 100.0  # brain off-centre, right-inferior
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")
    sliced = slice_volume(load_volume(tmp_path / "a.nii.gz"), SliceConfig(image_size=(16, 16)))
    assert sliced.mask.sum() == data.astype(bool).sum()  # nothing of the brain was cut


def test_a_brain_much_larger_than_the_slices_is_refused_naming_the_file(tmp_path):
    data = np.zeros((80, 10, 80), np.float32)
    data[15:65, :, 15:65] = 100.0  # 50x50 voxels of brain in the plane
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "big.nii.gz")
    volume = load_volume(tmp_path / "big.nii.gz")
    with pytest.raises(
        InputError, match=r"big\.nii\.gz.*36% of the brain lies outside the 40x40 slices.*larger than the slices"
    ):
        slice_volume(volume, SliceConfig(image_size=(40, 40)))
    # the share that may be lost is a setting: 36 % is allowed when 40 % is
    sliced = slice_volume(volume, SliceConfig(image_size=(40, 40), max_brain_outside=0.4))
    assert sliced.mask.sum() == 40 * 40 * 10


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda rng: rng.uniform(1, 100, (20, 20, 20)), r"100% of the volume is above zero"),  # a head, noisy air
        (lambda rng: rng.normal(0, 1, (20, 20, 20)), r"5\d% of the voxels are negative \(z-scored\?\)"),
    ],
)
def test_an_unmasked_image_that_is_not_skull_stripped_is_warned_about(tmp_path, make, message):
    path = write_volume(tmp_path / "head.nii.gz", make(np.random.default_rng(0)).astype(np.float32))
    with pytest.warns(UserWarning, match=rf"head\.nii\.gz: no brain mask given.*{message}.*give a mask"):
        load_volume(path)
    mask = write_volume(tmp_path / "head_mask.nii.gz", np.ones((20, 20, 20), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_volume(path, mask)  # with a mask nothing is guessed


def test_finer_data_is_resampled_to_the_profiles_voxel_size_or_refused_without_resampling(tmp_path):
    data = np.zeros((72, 10, 72), np.float32)
    data[12:60, :, 12:60] = 100.0  # 48x48 voxels of 0.5 mm: a 24 mm brain in the plane
    labels = (data > 0).astype(np.int16) * 4  # aseg's white matter
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    write_volume(tmp_path / "fine.nii.gz", data, affine)
    write_volume(tmp_path / "fine_aseg.nii.gz", labels, affine)
    volume = load_volume(tmp_path / "fine.nii.gz", labels=tmp_path / "fine_aseg.nii.gz")
    sliced = slice_volume(volume, SliceConfig(image_size=(40, 40), voxel_size=1.0))
    assert sliced.grid.ras_shape == (36, 5, 36)
    np.testing.assert_allclose(np.diag(sliced.grid.affine)[:3], 1.0)
    assert sliced.brain_outside == 0 and sliced.mask.sum() == 24 * 24 * 5
    assert sliced.labels is not None and np.array_equal(sliced.labels > 0, sliced.mask)
    with pytest.raises(
        InputError,
        match=r"fine\.nii\.gz.*31% of the brain lies outside.*0\.5x0\.5x0\.5 mm voxels\) is finer.*slices\.resample",
    ):
        slice_volume(volume, SliceConfig(image_size=(40, 40), voxel_size=1.0, resample=False))


def test_quantize_maps_percentile_to_top_and_zeroes_background():
    image = np.arange(1, 101, dtype=np.float32)
    mask = np.ones(100, bool)
    mask[:10] = False
    q, scale = quantize(image, mask, percentile=100.0)
    assert q.max() == 255 and q[:10].sum() == 0
    assert scale == pytest.approx(100.0 / 255)
    with pytest.raises(ValueError, match="positive"):
        quantize(np.zeros(5, np.float32), np.ones(5, bool))


# ------------------------------------------------------------------------------------ bad input


def test_missing_and_non_image_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: image file does not exist"):
        load_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt.*not a NIfTI"):
        load_volume(tmp_path / "notes.txt")
    (tmp_path / "fake.nii.gz").write_bytes(b"this is not gzip")
    with pytest.raises(InputError, match=r"fake\.nii\.gz: cannot read image"):
        load_volume(tmp_path / "fake.nii.gz")


def test_an_implausible_voxel_size_is_refused_before_any_grid_is_built(tmp_path):
    # found by hand: a 160 mm voxel size made harmonize build a 2000x1760x1600 grid (21 GB)
    image, _, _ = brain_phantom((12, 11, 10))
    path = write_volume(tmp_path / "broken.nii.gz", image, np.diag([160.0, 160.0, 160.0, 1.0]))
    with pytest.raises(InputError, match=r"broken\.nii\.gz: the header gives voxels of 160x160x160 mm"):
        load_volume(path)
    from harmonizing_flows.data.volume import check_volume

    with pytest.raises(InputError, match="pixdim"):
        check_volume(path)  # the header alone: a batch refuses it before writing anything
    # a normal matrix with a mistyped 10 mm: each voxel plausible, the grid 2.5 m wide (1280^2 x 880 at 2 mm)
    wide = nib.Nifti1Image(np.zeros((256, 256, 176), np.uint8), np.diag([10.0, 10.0, 10.0, 1.0]))
    nib.save(wide, tmp_path / "wide.nii.gz")
    with pytest.raises(InputError, match=r"wide\.nii\.gz: the header gives a field of view of 2560x2560x1760 mm"):
        check_volume(tmp_path / "wide.nii.gz")


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda m, labels: m.astype(np.float32), "a binary mask"),
        (lambda m, labels: labels.astype(np.float32), r"a label map \(\d+ whole-number values\)"),
        # aparc+aseg: about a hundred codes up to 2035, more than a tissue map, far fewer than a scan's values
        (
            lambda m, labels: np.where(m > 0, 1000 + np.arange(m.size).reshape(m.shape) % 109, 0).astype(np.int16),
            r"a label map \(110 whole-number values\)",
        ),
    ],
)
def test_a_mask_or_label_map_given_as_the_image_is_refused(tmp_path, make, what):
    image, mask, labels = brain_phantom((20, 22, 24))
    path = write_volume(tmp_path / "scan.nii.gz", make(mask, labels))
    with pytest.raises(InputError, match=rf"scan\.nii\.gz: holds {what}, not an image"):
        load_volume(path)
    load_volume(write_volume(tmp_path / "real.nii.gz", image))  # a scan has many values


def test_truncated_file_is_an_error(tmp_path):
    image, _, _ = brain_phantom((20, 20, 20))
    path = write_volume(tmp_path / "a.nii.gz", image)
    raw = gzip.decompress(path.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(InputError, match=r"cut\.nii\.gz"):
        load_volume(tmp_path / "cut.nii.gz")


def test_4d_volume_is_rejected_but_a_singleton_4th_axis_is_fine(tmp_path):
    image, _, _ = brain_phantom((10, 11, 12))
    write_volume(tmp_path / "4d.nii.gz", np.stack([image, image], -1))
    with pytest.raises(InputError, match=r"4d\.nii\.gz: image is a 4D volume"):
        load_volume(tmp_path / "4d.nii.gz")
    write_volume(tmp_path / "single.nii.gz", image[..., None])
    assert load_volume(tmp_path / "single.nii.gz").image.shape == (10, 11, 12)


def test_nan_and_infinite_voxels_are_rejected(tmp_path):
    image, _, _ = brain_phantom((10, 10, 10))
    image[3, 3, 3] = np.nan
    image[4, 4, 4] = np.inf
    write_volume(tmp_path / "nan.nii.gz", image)
    with pytest.raises(InputError, match=r"nan\.nii\.gz: image has 2 NaN or infinite voxels"):
        load_volume(tmp_path / "nan.nii.gz")


def test_shape_and_affine_mismatch_name_the_companion(tmp_path):
    image, mask, labels = brain_phantom((12, 12, 12))
    write_volume(tmp_path / "t1.nii.gz", image)
    write_volume(tmp_path / "small_mask.nii.gz", mask[:-1])
    with pytest.raises(InputError, match=r"small_mask\.nii\.gz: mask has shape \(11, 12, 12\)"):
        load_volume(tmp_path / "t1.nii.gz", tmp_path / "small_mask.nii.gz")
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    write_volume(tmp_path / "moved_aseg.nii.gz", labels, shifted)
    with pytest.raises(InputError, match=r"moved_aseg\.nii\.gz: label map affine differs"):
        load_volume(tmp_path / "t1.nii.gz", labels=tmp_path / "moved_aseg.nii.gz")


def test_empty_mask_is_rejected(tmp_path):
    image, mask, _ = brain_phantom((10, 10, 10))
    write_volume(tmp_path / "t1.nii.gz", image)
    write_volume(tmp_path / "mask.nii.gz", np.zeros_like(mask))
    with pytest.raises(InputError, match=r"mask\.nii\.gz: mask is empty"):
        load_volume(tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz")
    write_volume(tmp_path / "zero.nii.gz", np.zeros((5, 5, 5), np.float32))
    with pytest.raises(InputError, match="no voxel above zero"):
        load_volume(tmp_path / "zero.nii.gz")


def test_save_refuses_to_overwrite_and_leaves_no_partial_file(tmp_path):
    image, _, _ = brain_phantom((8, 8, 8))
    target = write_volume(tmp_path / "out.nii.gz", image)
    before = target.read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_nifti(nib.Nifti1Image(image * 2, np.eye(4)), target)
    assert target.read_bytes() == before
    save_nifti(nib.Nifti1Image(image * 2, np.eye(4)), target, overwrite=True)
    np.testing.assert_allclose(np.asarray(nib.load(target).dataobj), image * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_unslice_rejects_slices_of_the_wrong_shape(tmp_path):
    image, _, _ = brain_phantom((10, 12, 14))
    sliced = slice_volume(load_volume(write_volume(tmp_path / "a.nii.gz", image)), SliceConfig(image_size=(16, 16)))
    with pytest.raises(ValueError, match="expected"):
        unslice(sliced.images[:, :8], sliced.grid)


def test_paths_are_accepted_as_strings(tmp_path):
    image, _, _ = brain_phantom((8, 9, 10))
    path = write_volume(tmp_path / "a.nii.gz", image)
    assert load_volume(str(path)).path == Path(path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_saved_image_has_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_nifti(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
