"""``hflow simulate --layout bids``: a BIDS raw dataset with derivatives, read back by the package's BIDS reader."""

from __future__ import annotations

import csv
import json
import re

import pytest
from typer.testing import CliRunner

from harmonizing_flows.cli import app
from harmonizing_flows.config import SimulationConfig
from harmonizing_flows.data.datasets import load_subjects, read_bids
from harmonizing_flows.errors import ConfigError, InputError
from harmonizing_flows.simulate import BUILTIN_SITES, simulate
from harmonizing_flows.simulate.bids import participant_labels, t1w_sidecar
from harmonizing_flows.simulate.sites import Site, load_sites

SITES = ["mprage-3t", "spgr-15t"]
CONFIG = SimulationConfig(subjects_per_site=3, voxel_size=6.0, seed=3)


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
    """The same simulation in the BIDS layout and in the default one."""
    root = tmp_path_factory.mktemp("bids")
    as_bids = simulate(root / "bids", sites=SITES, config=CONFIG, layout="bids", progress=False)
    as_sites = simulate(root / "sites", sites=SITES, config=CONFIG, progress=False)
    return as_bids, as_sites


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_dataset_files_follow_bids(both_layouts):
    result, _ = both_layouts
    root = result.folder
    assert result.layout == "bids" and result.manifest == root
    description = _json(root / "dataset_description.json")
    assert description["BIDSVersion"] == "1.9.0" and description["DatasetType"] == "raw" and description["Name"]
    assert description["GeneratedBy"][0]["Name"] == "harmonizing-flows" and description["GeneratedBy"][0]["Version"]
    derivative = _json(root / "derivatives" / "simulation" / "dataset_description.json")
    assert derivative["DatasetType"] == "derivative" and derivative["GeneratedBy"][0]["Name"] == "harmonizing-flows"
    with (root / "participants.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["participant_id", "site", "split"]
    assert len(rows) == 6 and {r["site"] for r in rows} == set(SITES)
    assert all(re.fullmatch(r"sub-[A-Za-z0-9]+", r["participant_id"]) for r in rows)
    assert "sub-mprage3t001" in {r["participant_id"] for r in rows}
    assert set(_json(root / "participants.json")) == {"participant_id", "site", "split"}
    assert (root / ".bidsignore").read_text().split() == ["simulation.json", "montage.png"]
    assert not (root / "manifest.csv").exists() and not (root / "mprage-3t").exists()
    for row in rows:
        sub = row["participant_id"]
        assert (root / sub / "anat" / f"{sub}_T1w.nii.gz").is_file()
        assert (root / sub / "anat" / f"{sub}_T1w.json").is_file()
        for name in (f"{sub}_desc-brain_mask.nii.gz", f"{sub}_dseg.nii.gz", f"{sub}_desc-brain_mask.json"):
            assert (root / "derivatives" / "simulation" / sub / "anat" / name).is_file()
    lut = (root / "derivatives" / "simulation" / "dseg.tsv").read_text().splitlines()
    assert lut[0] == "index\tname" and len(lut) == 16


def test_sidecars_hold_the_sites_scanner_fields_in_bids_units(both_layouts):
    root = both_layouts[0].folder
    mprage = _json(root / "sub-mprage3t002" / "anat" / "sub-mprage3t002_T1w.json")
    site = BUILTIN_SITES["mprage-3t"]
    assert mprage["Manufacturer"] == site.manufacturer == "Siemens"
    assert mprage["ManufacturersModelName"] == site.model
    assert mprage["MagneticFieldStrength"] == 3.0
    assert mprage["RepetitionTime"] == pytest.approx(2.3)  # seconds
    assert mprage["InversionTime"] == pytest.approx(0.9)
    assert mprage["EchoTime"] == pytest.approx(0.00298)
    assert mprage["FlipAngle"] == 9.0  # degrees
    spgr = _json(root / "sub-spgr15t001" / "anat" / "sub-spgr15t001_T1w.json")
    assert spgr["Manufacturer"] == "GE" and spgr["MagneticFieldStrength"] == 1.5
    assert "InversionTime" not in spgr and spgr["RepetitionTime"] == pytest.approx(0.024)


def test_the_bids_reader_finds_every_scan_mask_labels_and_the_simulators_split(both_layouts):
    as_bids, as_sites = both_layouts
    subjects = load_subjects(as_bids.folder)
    assert sorted(subjects, key=lambda s: s.subject) == sorted(as_bids.subjects, key=lambda s: s.subject)
    for s in subjects:
        assert s.participant == s.subject and s.split in ("train", "val", "test")
        assert s.mask is not None and s.mask.name.endswith("_desc-brain_mask.nii.gz")
        assert s.labels is not None and s.labels.name.endswith("_dseg.nii.gz")
        assert "derivatives" in s.mask.parts and "derivatives" in s.labels.parts
    # Same seed, same voxels and same split as the default layout.
    by_name = {(s.site, int(s.subject[-3:])): s for s in subjects}
    for s in as_sites.subjects:
        twin = by_name[(s.site, int(s.subject[-3:]))]
        assert twin.split == s.split
        assert twin.image.read_bytes() == s.image.read_bytes()
        assert twin.labels.read_bytes() == s.labels.read_bytes()  # type: ignore[union-attr]
    parameters = _json(as_bids.parameters)
    assert parameters["layout"] == "bids" and parameters["sites"]["mprage-3t"]["manufacturer"] == "Siemens"
    assert {r["participant_id"] for r in parameters["subjects"]} == {s.subject for s in subjects}


def test_the_default_layouts_parameters_are_as_before(both_layouts):
    parameters = _json(both_layouts[1].parameters)
    assert "layout" not in parameters
    assert not {"manufacturer", "model"} & set(parameters["sites"]["mprage-3t"])
    assert not any("participant_id" in r for r in parameters["subjects"])


def test_hflow_fit_reads_the_bids_simulation(both_layouts, tmp_path):
    root = both_layouts[0].folder
    result = CliRunner().invoke(
        app, ["fit", str(root), "--site", "mprage-3t", "--out", str(tmp_path / "m"), "--profile", "smoke", "-q"]
    )
    assert result.exit_code == 0, result.output
    model = _json(tmp_path / "m" / "model.json")
    with (root / "participants.tsv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["site"] == "mprage-3t"]
    assert model["source_subjects"]["train"] == [r["participant_id"] for r in rows if r["split"] == "train"]
    assert model["source_subjects"]["val"] == [r["participant_id"] for r in rows if r["split"] == "val"]


def test_the_split_column_is_checked(both_layouts, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(both_layouts[0].folder, root)
    table = root / "participants.tsv"
    text = table.read_text()
    table.write_text(text.replace("\ttest\n", "\tholdout\n", 1))
    with pytest.raises(InputError, match=r"participants.tsv: sub-\w+: split 'holdout' is not one of train, val, test"):
        read_bids(root)
    table.write_text(re.sub(r"\t(train|val|test)\n", "\tn/a\n", text))
    assert all(s.split is None for s in read_bids(root))  # n/a: no split given; the usual split applies
    table.write_text("\n".join(line.rsplit("\t", 1)[0] for line in text.splitlines()) + "\n")
    assert all(s.split is None for s in read_bids(root))  # no column: as before


def test_participant_labels_are_alphanumeric_and_distinct():
    sites = [BUILTIN_SITES["mprage-3t"], BUILTIN_SITES["spgr-15t"]]
    assert participant_labels(sites, 3) == {
        "mprage-3t": ["mprage3t001", "mprage3t002", "mprage3t003"],
        "spgr-15t": ["spgr15t001", "spgr15t002", "spgr15t003"],
    }
    assert participant_labels(sites[:1], 1200)["mprage-3t"][0] == "mprage3t0001"
    with pytest.raises(InputError, match="both give BIDS participant labels sub-ab"):
        participant_labels([Site(name="a-b"), Site(name="a_b")], 3)
    with pytest.raises(InputError, match="no letter or digit"):
        participant_labels([Site(name="--")], 3)


def test_site_files_may_name_the_scanner(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[sites.mine]\nmanufacturer = "Philips"\nmodel = "Achieva"\nsequence = "spgr"\ntr_ms = 20.0\n'
        '[sites.plain]\nsequence = "spin_echo"\ntr_ms = 500.0\nte_ms = 15.0\n'
    )
    sites = load_sites(path)
    sidecar = t1w_sidecar(sites["mine"])
    assert sidecar["Manufacturer"] == "Philips" and sidecar["ManufacturersModelName"] == "Achieva"
    plain = t1w_sidecar(sites["plain"])
    assert "Manufacturer" not in plain and "ManufacturersModelName" not in plain
    assert "FlipAngle" not in plain and "InversionTime" not in plain and plain["EchoTime"] == pytest.approx(0.015)
    path.write_text("[sites.bad]\nmanufacturer = 3\n")
    with pytest.raises(InputError, match="manufacturer must be a string"):
        load_sites(path)
    assert all(s.manufacturer and s.model for s in BUILTIN_SITES.values())


def test_the_command_line_takes_the_layout(tmp_path):
    runner = CliRunner()
    out = tmp_path / "b"
    args = ["simulate", "--out", str(out), "--sites", "spgr-15t", "--subjects-per-site", "3", "--voxel-size", "8"]
    result = runner.invoke(app, [*args, "--layout", "bids", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"BIDS root: {out}" in result.stdout and (out / "dataset_description.json").is_file()
    bad = runner.invoke(app, ["simulate", "--out", str(tmp_path / "c"), "--layout", "nested", "--quiet"])
    assert bad.exit_code == 2 and "layout 'nested' is not one of sites, bids" in bad.output
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError):
        simulate(tmp_path / "d", layout="BIDS", progress=False)
