"""End-to-end simulation: what is written, reproducibility, and refusal to damage existing folders."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from harmonizing_flows.config import SimulationConfig
from harmonizing_flows.data.datasets import load_subjects
from harmonizing_flows.data.labels import CLASS_NAMES
from harmonizing_flows.errors import InputError, OutputExistsError
from harmonizing_flows.simulate import BUILTIN_SITES, simulate
from harmonizing_flows.simulate.anatomy import deform, load_anatomy, output_grid
from harmonizing_flows.simulate.run import _rng


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".png"  # PNG metadata holds the matplotlib version; pixels are checked below
    }


def test_output_layout_manifest_and_parameters(simulated, tiny_config):
    folder = simulated.folder
    subjects = load_subjects(simulated.manifest)
    assert sorted({s.site for s in subjects}) == sorted(BUILTIN_SITES)
    assert len(subjects) == 4 * tiny_config.subjects_per_site
    for site in BUILTIN_SITES:
        splits = sorted(s.split for s in subjects if s.site == site)
        assert splits == ["test", "train", "val"]
    params = json.loads(simulated.parameters.read_text())
    assert params["config"]["seed"] == tiny_config.seed
    assert len(params["subjects"]) == len(subjects)
    assert set(params["subjects"][0]) >= {"anatomy", "imaging", "split"}
    assert set(params["travelling_subject"]["imaging"]) == set(BUILTIN_SITES)
    png = simulated.montage.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temporary folder left


def test_files_are_in_each_sites_orientation_with_consistent_grids(simulated):
    for subject in simulated.subjects:
        image, mask, labels = (nib.load(p) for p in (subject.image, subject.mask, subject.labels))
        codes = "".join(orientations.aff2axcodes(image.affine))
        assert codes == BUILTIN_SITES[subject.site].orientation
        assert image.shape == mask.shape == labels.shape
        assert np.allclose(image.affine, labels.affine)
        assert image.get_data_dtype() == np.uint8


def test_images_labels_and_contrast(simulated):
    wm, gm, csf = (CLASS_NAMES.index(n) for n in ("cerebral WM", "cerebral GM", "ventricles"))
    for subject in simulated.subjects:
        image = np.asarray(nib.load(subject.image).dataobj)
        mask = np.asarray(nib.load(subject.mask).dataobj).astype(bool)
        labels = np.asarray(nib.load(subject.labels).dataobj)
        assert image[~mask].max() == 0  # background zero
        assert image[mask].max() > 150
        assert set(np.unique(labels)) <= set(range(len(CLASS_NAMES)))
        assert len(np.unique(labels)) >= 12  # 4 mm voxels still hold most structures
        assert np.all(labels[~mask] == 0)
        means = [image[labels == c].mean() for c in (wm, gm, csf)]
        assert means[0] > means[1] > means[2], (subject.subject, means)


def test_sites_differ_and_subjects_differ(simulated):
    by_site: dict[str, list[np.ndarray]] = {}
    wm = CLASS_NAMES.index("cerebral WM")
    gm = CLASS_NAMES.index("cerebral GM")
    for subject in simulated.subjects:
        image = np.asarray(nib.load(subject.image).dataobj).astype(float)
        labels = np.asarray(nib.load(subject.labels).dataobj)
        by_site.setdefault(subject.site, []).append(image[labels == gm].mean() / image[labels == wm].mean())
    contrast = {site: np.mean(v) for site, v in by_site.items()}
    assert max(contrast.values()) - min(contrast.values()) > 0.1, contrast
    labels = [np.asarray(nib.load(s.labels).dataobj) for s in simulated.subjects if s.site == "mprage-15t"]
    canon = [nib.as_closest_canonical(nib.load(s.labels)).get_fdata() for s in simulated.subjects[:3]]
    assert not np.array_equal(canon[0], canon[1])  # every pseudo-subject has its own anatomy
    assert len(labels) == 3


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, tiny_config):
    config = SimulationConfig(subjects_per_site=3, voxel_size=6.0, seed=3)
    a = simulate(tmp_path / "a", sites=["spgr-15t"], config=config, progress=False)
    b = simulate(tmp_path / "b", sites=["spgr-15t"], config=config, progress=False)
    assert _digest(a.folder) == _digest(b.folder)
    import matplotlib.image

    assert np.array_equal(matplotlib.image.imread(a.montage), matplotlib.image.imread(b.montage))
    c = simulate(tmp_path / "c", sites=["spgr-15t"], config=SimulationConfig(**{**config.__dict__, "seed": 4}),
                 progress=False)  # fmt: skip
    differ = {k for k, v in _digest(c.folder).items() if _digest(a.folder).get(k) != v}
    assert any(k.endswith("_T1w.nii.gz") for k in differ)


def test_adding_a_site_leaves_the_others_unchanged(tmp_path):
    config = SimulationConfig(subjects_per_site=3, voxel_size=6.0, seed=3)
    one = simulate(tmp_path / "one", sites=["spgr-15t"], config=config, progress=False)
    two = simulate(tmp_path / "two", sites=["mprage-3t", "spgr-15t"], config=config, progress=False)
    for name in ("spgr-15t-001_T1w.nii.gz", "spgr-15t-003_labels.nii.gz"):
        assert (one.folder / "spgr-15t" / name).read_bytes() == (two.folder / "spgr-15t" / name).read_bytes()


def test_deformation_keeps_the_anatomy_plausible(tiny_config):
    anatomy = load_anatomy()
    grid = output_grid(anatomy, tiny_config)
    labels, mask, draws = deform(anatomy, grid, tiny_config, _rng(1, "x", 0, 0))
    assert labels.shape == grid.shape and mask.shape == grid.shape
    assert np.all(labels[~mask] == 0)
    # brain volume within 25 % of the template's (scale jitter is a few per cent)
    template_ml = anatomy.mask.sum() * abs(np.linalg.det(anatomy.affine[:3, :3])) / 1000
    subject_ml = mask.sum() * grid.voxel_size**3 / 1000
    assert subject_ml == pytest.approx(template_ml, rel=0.25)
    assert set(draws) >= {"rotation_deg", "size_factor", "translation_mm", "control_displacements_mm"}
    again, _, _ = deform(anatomy, grid, tiny_config, _rng(1, "x", 0, 0))
    other, _, _ = deform(anatomy, grid, tiny_config, _rng(1, "x", 1, 0))
    assert np.array_equal(labels, again) and not np.array_equal(labels, other)


def test_refuses_a_folder_with_other_files_even_with_overwrite(tmp_path, tiny_config):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already holds files"):
        simulate(out, config=tiny_config, progress=False)
    with pytest.raises(OutputExistsError, match="not an hflow simulation"):
        simulate(out, config=tiny_config, overwrite=True, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_replaces_an_earlier_simulation(tmp_path):
    config = SimulationConfig(subjects_per_site=3, voxel_size=6.0, seed=3)
    out = tmp_path / "sim"
    simulate(out, sites=["spgr-15t"], config=config, progress=False)
    with pytest.raises(OutputExistsError):
        simulate(out, sites=["mprage-3t"], config=config, progress=False)
    assert (out / "spgr-15t").is_dir()
    simulate(out, sites=["mprage-3t"], config=config, overwrite=True, progress=False)
    assert (out / "mprage-3t").is_dir() and not (out / "spgr-15t").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim"]


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    import harmonizing_flows.simulate.run as run

    calls = {"n": 0}
    real = run.acquire

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "acquire", failing)
    config = SimulationConfig(subjects_per_site=3, voxel_size=6.0, seed=3)
    with pytest.raises(RuntimeError, match="disk on fire"):
        simulate(tmp_path / "sim", sites=["spgr-15t"], config=config, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="too few"):
        simulate(tmp_path / "s", config=SimulationConfig(subjects_per_site=1, voxel_size=6.0), progress=False)
    with pytest.raises(InputError, match="unknown site"):
        simulate(tmp_path / "s", sites=["nowhere"], config=SimulationConfig(voxel_size=6.0), progress=False)
    bad = tmp_path / "aseg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), bad)
    with pytest.raises(InputError, match="no voxel above zero"):
        simulate(tmp_path / "s", anatomy=bad, config=SimulationConfig(subjects_per_site=3, voxel_size=6.0),
                 progress=False)  # fmt: skip
    inside = tmp_path / "out" / "sites.toml"
    inside.parent.mkdir()
    inside.write_text("[sites.a]\n")
    (tmp_path / "out" / "simulation.json").write_text("{}")
    with pytest.raises(InputError, match="inside the output folder"):
        simulate(tmp_path / "out", sites_file=inside, overwrite=True, config=SimulationConfig(voxel_size=6.0),
                 progress=False)  # fmt: skip
    assert inside.read_text() == "[sites.a]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aseg.nii.gz", "out"]


def test_custom_anatomy_is_used(tmp_path):
    from conftest import brain_phantom

    _, _, labels = brain_phantom((60, 70, 60))
    path = tmp_path / "my_aseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.5, 2.5, 2.5, 1.0])), path)
    config = SimulationConfig(subjects_per_site=3, voxel_size=6.0, seed=1)
    result = simulate(tmp_path / "s", sites=["mprage-3t"], anatomy=path, config=config, progress=False)
    params = json.loads(result.parameters.read_text())
    assert params["anatomy"] == "my_aseg.nii.gz"
    classes = np.asarray(nib.load(result.subjects[0].labels).dataobj)
    assert set(np.unique(classes)) <= {0, CLASS_NAMES.index("cerebral GM"), CLASS_NAMES.index("cerebral WM"),
                                       CLASS_NAMES.index("ventricles")}  # fmt: skip
