"""``hflow bids``: the BIDS app end to end at the smoke profile, its derivatives, resuming, and the bad input it
must refuse before writing anything."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from harmonizing_flows.bids.app import MIN_SOURCE_PARTICIPANTS, group, participant
from harmonizing_flows.bids.qc import QC_COLUMNS
from harmonizing_flows.cli import app
from harmonizing_flows.config import SimulationConfig
from harmonizing_flows.errors import InputError, OutputExistsError
from harmonizing_flows.simulate import simulate

SOURCE, TARGET = "mprage-3t", "spgr-15t"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what must not change."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    config = SimulationConfig(subjects_per_site=MIN_SOURCE_PARTICIPANTS, voxel_size=4.0, seed=3)
    root = tmp_path_factory.mktemp("bidsapp") / "raw"
    return simulate(root, sites=[SOURCE, TARGET], config=config, layout="bids", progress=False).folder


@pytest.fixture(scope="module")
def run(dataset, smoke_profile, tmp_path_factory):
    """The group level, then the participant level over everyone."""
    before = _tree(dataset)
    out = tmp_path_factory.mktemp("bidsapp-out") / "derivatives"
    lines: list[str] = []
    group(dataset, out, smoke_profile, source_site=SOURCE, progress=False, command="hflow bids group", log=lines.append)
    written = participant(dataset, out, progress=False, command="hflow bids participant", log=lines.append)
    return out, written, lines, before


def _weights_digest(model: Path) -> str:
    """The sidecars' ModelChecksum: a SHA-256 over the folder's weights files (name and content, by name)."""
    digest = hashlib.sha256()
    for path in sorted(model.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"sha256:{digest.hexdigest()}"


def test_the_model_checksum_covers_every_weights_file_but_not_the_notes(run, tmp_path):
    # a refit that adds a restorer (or changes the flow) with the harmonizer's bytes unchanged is another model
    from harmonizing_flows.bids.app import _checksum

    model = tmp_path / "model"
    shutil.copytree(run[0] / "models" / "source", model)
    before = _checksum(model)
    assert before == _weights_digest(model)
    document = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**document, "note": "the app writes here"}))
    assert _checksum(model) == before
    (model / "restorer.safetensors").write_bytes(b"weights")
    with_restorer = _checksum(model)
    (model / "restorer.safetensors").unlink()
    flow = (model / "flow.safetensors").read_bytes()
    (model / "flow.safetensors").write_bytes(flow[:-1] + bytes([flow[-1] ^ 1]))
    assert len({before, with_restorer, _checksum(model)}) == 3


def _scans(dataset: Path) -> list[Path]:
    return sorted(dataset.glob("sub-*/anat/*_T1w.nii.gz"))


def test_every_scan_gets_a_harmonized_image_on_its_own_grid_and_a_sidecar(run, dataset):
    out, written, _, before = run
    scans = _scans(dataset)
    assert len(written) == len(scans) == 2 * MIN_SOURCE_PARTICIPANTS
    for scan in scans:
        relative = scan.relative_to(dataset)
        stem = relative.name.removesuffix("_T1w.nii.gz")
        image = out / relative.parent / f"{stem}_desc-harmonized_T1w.nii.gz"
        original, harmonized = nib.load(scan), nib.load(image)
        assert harmonized.shape == original.shape
        assert np.allclose(harmonized.affine, original.affine)
        assert harmonized.header.get_zooms() == original.header.get_zooms()
        data = np.asarray(harmonized.dataobj)
        assert data.dtype == np.uint8 and data.max() > 0
        sidecar = json.loads(image.with_name(f"{stem}_desc-harmonized_T1w.json").read_text())
        site = SOURCE if SOURCE.replace("-", "") in stem else TARGET
        assert sidecar["Sources"] == [f"bids:raw:{relative.as_posix()}"]
        assert sidecar["SourceSite"] == SOURCE and sidecar["TargetSite"] == site
        model = out / sidecar["Model"]
        assert model.name == ("source" if site == SOURCE else f"site-{site}")
        assert sidecar["ModelChecksum"] == _weights_digest(model)
        assert set(sidecar["Adaptation"]) == {"KeptStep", "Reason", "Guard"} and sidecar["Adaptation"]["Reason"]
        assert list(sidecar["QC"]) == list(QC_COLUMNS)
        assert (image.parent / sidecar["Mosaic"]).is_file()
    assert _tree(dataset) == before  # the input dataset is never written


def test_the_derivatives_describe_themselves(run):
    out = run[0]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    commands = [g["Description"] for g in description["GeneratedBy"]]
    assert commands == ["hflow bids group", "hflow bids participant"]
    assert all(g["Name"] == "harmonizing-flows" and g["Version"] for g in description["GeneratedBy"])


def test_the_qc_table_has_a_row_per_scan_matching_its_sidecar(run, dataset):
    out = run[0]
    with (out / "group_T1w_qc.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == list(QC_COLUMNS)
    assert [r["scan"] for r in rows] == [p.relative_to(dataset).as_posix() for p in _scans(dataset)]
    for row in rows:
        sidecar = next(out.glob(f"{row['participant_id']}/anat/*_desc-harmonized_T1w.json"))
        qc = json.loads(sidecar.read_text())["QC"]
        assert float(row["bpd_after"]) == qc["bpd_after"] and row["flagged"] == str(qc["flagged"]).lower()
        assert row["session_id"] == "n/a"  # no sessions in this dataset
        assert float(row["p05_after"]) <= float(row["p50_after"]) <= float(row["p95_after"])
    reference = json.loads((out / "models" / "qc_reference.json").read_text())
    assert len(reference["bpd"]) >= 3 and reference["sd"] > 0  # three validation participants at least


def test_the_reports_are_self_contained_and_cover_every_scan(run, dataset):
    out = run[0]
    group_report = (out / "report.html").read_text()
    for scan in _scans(dataset):
        assert scan.relative_to(dataset).as_posix() in group_report
    for page in [out / "report.html", *out.glob("sub-*.html")]:
        text = page.read_text()
        assert "<img" in text and "http://" not in text and "https://" not in text
        sources = [part.split('"', 1)[0] for part in text.split('src="')[1:]]
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(list(out.glob("sub-*.html"))) == 2 * MIN_SOURCE_PARTICIPANTS


def test_a_second_run_reuses_the_adapted_model_and_redoes_only_what_is_missing(run, dataset, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    lines: list[str] = []
    assert participant(dataset, out, progress=False, log=lines.append) == []
    assert any(f"site {TARGET}: reusing" in line for line in lines) and not any("adapting" in x for x in lines)
    # an interrupted run: one image written without its sidecar, another scan not started
    sidecars = sorted(out.glob("sub-*/anat/*_desc-harmonized_T1w.json"))
    sidecars[0].unlink()
    image = sidecars[1].with_name(sidecars[1].name.replace(".json", ".nii.gz"))
    sidecars[1].unlink()
    image.write_bytes(b"half a file")
    redone = participant(dataset, out, progress=False, log=lines.append)
    assert sorted(p.name for p in redone) == sorted(p.name.replace(".json", ".nii.gz") for p in sidecars[:2])
    assert nib.load(image).shape == nib.load(run[0] / image.relative_to(out)).shape


def test_a_new_scan_of_a_known_site_is_harmonized_without_adapting_again(run, dataset, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(dataset, raw)
    shutil.copytree(run[0], out)
    old = next(p for p in sorted(raw.glob("sub-*")) if TARGET.replace("-", "") in p.name)
    new = raw / "sub-newcomer"
    shutil.copytree(old, new)
    for path in new.rglob("*"):
        path.rename(path.with_name(path.name.replace(old.name, "sub-newcomer")))
    with (raw / "participants.tsv").open("a") as f:
        f.write(f"sub-newcomer\t{TARGET}\tn/a\n")
    lines: list[str] = []
    written = participant(raw, out, labels=["newcomer"], progress=False, log=lines.append)
    assert [p.name for p in written] == ["sub-newcomer_desc-harmonized_T1w.nii.gz"]
    assert not any("adapting" in line for line in lines)


def test_sessions_and_runs_keep_their_entities_in_the_outputs(run, dataset, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(dataset, raw)
    shutil.copytree(run[0], out)
    person = next(p.name for p in sorted(raw.glob("sub-*")) if TARGET.replace("-", "") in p.name)
    scan = raw / person / "anat" / f"{person}_T1w.nii.gz"
    for session, run_label in (("1", "1"), ("1", "2"), ("2", "1")):
        moved = raw / person / f"ses-{session}" / "anat" / f"{person}_ses-{session}_run-{run_label}_T1w.nii.gz"
        moved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(scan, moved)
    shutil.rmtree(raw / person / "anat")
    written = participant(raw, out, labels=[person], progress=False, log=lambda _: None)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        f"{person}/ses-1/anat/{person}_ses-1_run-1_desc-harmonized_T1w.nii.gz",
        f"{person}/ses-1/anat/{person}_ses-1_run-2_desc-harmonized_T1w.nii.gz",
        f"{person}/ses-2/anat/{person}_ses-2_run-1_desc-harmonized_T1w.nii.gz",
    ]
    sidecar = json.loads(written[0].with_name(written[0].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["QC"]["session_id"] == "ses-1" and (written[0].parent / sidecar["Mosaic"]).is_file()
    with (out / "group_T1w_qc.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    # the scan that moved into sessions is gone from the dataset: its old output is left out of the table
    assert sum(r["participant_id"] == person for r in rows) == 3
    assert len(rows) == 2 * MIN_SOURCE_PARTICIPANTS + 2


def test_refitting_the_source_drops_the_adapted_models_and_remeasures_the_reference(run, dataset, smoke_profile,
                                                                                      tmp_path):  # fmt: skip
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    old = json.loads((out / "models" / "qc_reference.json").read_text())["model"]
    refit = replace(smoke_profile, seed=smoke_profile.seed + 1)
    group(dataset, out, refit, source_site=SOURCE, overwrite=True, progress=False, log=lambda _: None)
    assert not list((out / "models").glob("site-*"))
    assert (out / "models" / "scans" / "source.csv").is_file()
    new = json.loads((out / "models" / "qc_reference.json").read_text())["model"]
    assert new == _weights_digest(out / "models" / "source") != old
    lines: list[str] = []
    person = next(p.name for p in sorted(dataset.glob("sub-*")) if TARGET.replace("-", "") in p.name)
    written = participant(dataset, out, labels=[person], progress=False, log=lines.append)
    assert len(written) == 1 and any("adapting" in line for line in lines)
    assert any(f"left out of the QC table and reports: {2 * MIN_SOURCE_PARTICIPANTS - 1} scan(s)" in line
               for line in lines)  # fmt: skip
    with (out / "group_T1w_qc.tsv").open(newline="") as f:
        assert [r["participant_id"] for r in csv.DictReader(f, delimiter="\t")] == [person]


@pytest.mark.parametrize("level", ["group", "participant"])
def test_bad_input_is_refused_naming_the_path_before_anything_is_written(dataset, smoke_profile, tmp_path, level):
    def call(bids, out, **kwargs):
        if level == "group":
            return group(bids, out, smoke_profile, source_site=kwargs.pop("source_site", SOURCE), progress=False,
                         log=lambda _: None, **kwargs)  # fmt: skip
        return participant(bids, out, progress=False, log=lambda _: None, **kwargs)

    out = tmp_path / "out"
    not_bids = tmp_path / "plain"
    not_bids.mkdir()
    with pytest.raises(InputError, match="not a BIDS dataset") as exc:
        call(not_bids, out)
    assert exc.value.path == not_bids
    with pytest.raises(InputError, match="the input dataset itself"):
        call(dataset, dataset)
    with pytest.raises(InputError, match="inside the input dataset"):
        call(dataset, dataset / "derivatives" / "hflow")
    assert not out.exists()

    no_t1w = tmp_path / "no_t1w"
    (no_t1w / "sub-01" / "anat").mkdir(parents=True)
    (no_t1w / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (no_t1w / "participants.tsv").write_text("participant_id\tsite\nsub-01\tA\n")
    with pytest.raises(InputError, match=r"no sub-.*T1w"):
        call(no_t1w, out)

    unsited = tmp_path / "unsited"
    shutil.copytree(dataset, unsited, ignore=shutil.ignore_patterns("*.json", "derivatives"))
    (unsited / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (unsited / "participants.tsv").write_text("participant_id\n" + "".join(
        f"{p.name}\n" for p in sorted(unsited.glob("sub-*"))))  # fmt: skip
    with pytest.raises(InputError, match=r"no site for sub-.*Manufacturer"):
        call(unsited, out)
    assert not out.exists()

    if level == "group":
        with pytest.raises(InputError, match="has no site 'nowhere'"):
            call(dataset, out, source_site="nowhere")
        few = tmp_path / "few"
        shutil.copytree(dataset, few)
        shutil.rmtree(next(few.glob(f"sub-{SOURCE.replace('-', '')}*")))
        table = (few / "participants.tsv").read_text().splitlines()
        kept = [line for line in table if any(line.startswith(p.name) for p in few.glob("sub-*"))]
        (few / "participants.tsv").write_text("\n".join([table[0], *kept]) + "\n")
        with pytest.raises(InputError, match=f"{MIN_SOURCE_PARTICIPANTS} at least") as exc:
            call(few, out)
        assert exc.value.path == few
    else:
        with pytest.raises(InputError, match="run the group level first"):
            call(dataset, out)
        with pytest.raises(InputError, match="no participant nobody"):
            participant(dataset, out, labels=["sub-nobody"], progress=False, log=lambda _: None)
    assert not out.exists()


def test_another_source_site_needs_overwrite(run, dataset, smoke_profile, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    with pytest.raises(OutputExistsError, match="source site 'mprage-3t'"):
        group(dataset, out, smoke_profile, source_site=TARGET, progress=False, log=lambda _: None)
    lines: list[str] = []
    group(dataset, out, smoke_profile, source_site=SOURCE, progress=False, log=lines.append)
    assert any("already fitted" in line for line in lines)


def test_the_cli_levels_and_their_options(dataset, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["bids", str(dataset), str(tmp_path / "o"), "group"])
    assert result.exit_code != 0 and "--source-site" in result.output
    result = runner.invoke(app, ["bids", str(dataset), str(tmp_path / "o"), "subject"])
    assert result.exit_code != 0 and "group or participant" in result.output
    result = runner.invoke(app, ["bids", str(dataset), str(tmp_path / "o"), "participant", "--source-site", "x"])
    assert result.exit_code != 0 and "group level" in result.output
    result = runner.invoke(app, ["bids", str(dataset), str(tmp_path / "o"), "participant", "--participant-label",
                                 "mprage3t001,nobody"])  # fmt: skip
    assert result.exit_code != 0 and "no participant nobody" in result.output  # labels split at commas
    result = runner.invoke(app, ["bids", str(dataset), str(tmp_path / "o"), "participant", "--participant-label",
                                 "mprage3t001", "nobody2"])  # fmt: skip
    assert result.exit_code != 0 and "no participant nobody2" in result.output  # and as separate values
    result = runner.invoke(app, ["bids", str(dataset), str(tmp_path / "o"), "participant", "stray"])
    assert result.exit_code != 0 and "unexpected argument(s): stray" in result.output
    assert not (tmp_path / "o").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to render the report (Debian: apt install chromium)")
def test_the_group_report_renders_in_a_headless_browser(run, tmp_path):
    import subprocess

    import matplotlib.image

    report = run[0] / "report.html"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1600"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == (report.read_text().count("<img")) > 0  # every figure survived parsing
    with (run[0] / "group_T1w_qc.tsv").open(newline="") as f:
        flagged = sum(row["flagged"] == "true" for row in csv.DictReader(f, delimiter="\t"))
    # the header, a row per scan, and a row of reasons under each flagged scan
    assert dom.stdout.count("<tr") == 1 + 2 * MIN_SOURCE_PARTICIPANTS + flagged
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.is_file()
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200) and pixels[..., :3].std() > 0.05  # drawn, not a blank page
