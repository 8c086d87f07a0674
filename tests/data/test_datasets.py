from __future__ import annotations

import csv
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import brain_phantom, write_volume
from harmonizing_flows.config import SliceConfig, SplitConfig
from harmonizing_flows.data.datasets import (
    Subject,
    bids_sidecar,
    load_subjects,
    read_bids,
    read_manifest,
    read_site_folders,
    split_counts,
    split_subjects,
    write_manifest,
)
from harmonizing_flows.errors import InputError

SHAPE = (20, 24, 18)  # small and unequal, so that a wrong axis shows in the slice counts
SLICES = SliceConfig(image_size=(32, 32))  # larger than every in-plane extent: padded, never cropped


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def tiny_volume(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(path, np.ones((4, 5, 6), dtype=np.float32))


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def phantom_subject(
    folder: Path,
    name: str,
    site: str = "A",
    *,
    seed: int = 0,
    affine: np.ndarray | None = None,
    labels: bool = True,
    split: str | None = None,
) -> Subject:
    folder.mkdir(parents=True, exist_ok=True)
    image, mask, lab = brain_phantom(SHAPE, seed=seed)
    return Subject(
        name,
        site,
        write_volume(folder / f"{name}.nii.gz", image, affine),
        write_volume(folder / f"{name}_mask.nii.gz", mask, affine),
        write_volume(folder / f"{name}_labels.nii.gz", lab, affine) if labels else None,
        split,
    )


def fake_subjects(site: str, n: int, prefix: str = "s") -> list[Subject]:
    return [Subject(f"{prefix}{i:02d}", site, Path(f"/nowhere/{site}/{prefix}{i:02d}.nii.gz")) for i in range(n)]


def by_key(subjects: list[Subject]) -> dict[tuple[str, str], Subject]:
    return {(s.site, s.subject): s for s in subjects}


# --------------------------------------------------------------------------------------------- read_manifest


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    """A folder with data/{a,b,c}.nii.gz plus a mask and labels for a; the manifest goes in the folder."""
    for name in ("a", "b", "c", "a_mask", "a_labels"):
        touch(tmp_path / "data" / f"{name}.nii.gz")
    return tmp_path


def test_manifest_columns_and_relative_paths_resolve_against_its_folder(manifest_dir, tmp_path_factory, monkeypatch):
    manifest = write_rows(
        manifest_dir / "manifest.csv",
        [
            ["subject", "site", "image", "mask", "labels", "split"],
            ["a", "s1", "data/a.nii.gz", "data/a_mask.nii.gz", "data/a_labels.nii.gz", "train"],
            ["b", "s1", str(manifest_dir / "data" / "b.nii.gz"), "", "", "test"],
            ["c", "s2", "data/c.nii.gz", "", "", ""],
        ],
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # relative to the manifest, not to the working folder
    subjects = read_manifest(manifest)
    data = manifest_dir / "data"
    assert subjects == [
        Subject("a", "s1", data / "a.nii.gz", data / "a_mask.nii.gz", data / "a_labels.nii.gz", "train"),
        Subject("b", "s1", data / "b.nii.gz", None, None, "test"),
        Subject("c", "s2", data / "c.nii.gz", None, None, None),
    ]
    assert all(s.image.is_file() for s in subjects)


def test_manifest_accepts_the_authors_column_names_in_any_order(manifest_dir):
    manifest = write_rows(
        manifest_dir / "authors.csv",
        [
            ["SITE_ID", " SUB_ID ", "segmentation", "T1", "brainmask"],
            ["s1", "a", "data/a_labels.nii.gz", "data/a.nii.gz", "data/a_mask.nii.gz"],
            ["s2", "b", "", "data/b.nii.gz", ""],
        ],
    )
    data = manifest_dir / "data"
    assert read_manifest(manifest) == [
        Subject("a", "s1", data / "a.nii.gz", data / "a_mask.nii.gz", data / "a_labels.nii.gz", None),
        Subject("b", "s2", data / "b.nii.gz", None, None, None),
    ]


def test_manifest_skips_blank_lines_and_strips_cells(manifest_dir):
    manifest = manifest_dir / "manifest.csv"
    manifest.write_text("subject,site,image\n\n  a , s1 , data/a.nii.gz \n,,\n", encoding="utf-8")
    assert read_manifest(manifest) == [Subject("a", "s1", manifest_dir / "data" / "a.nii.gz")]


def test_missing_manifest_is_an_input_error_naming_it(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="does not exist") as exc:
        read_manifest(missing)
    assert exc.value.path == missing
    assert str(missing) in str(exc.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "empty"), ("subject,site,image\n", "no subjects"), ("subject,site,image\n\n\n", "no subjects")],
    ids=["no bytes", "header only", "blank lines"],
)
def test_empty_manifest_is_an_input_error_naming_it(tmp_path, content, problem):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=problem) as exc:
        read_manifest(manifest)
    assert str(manifest) in str(exc.value)


@pytest.mark.parametrize("column", ["subject", "site", "image"])
def test_manifest_without_a_required_column_is_an_input_error(manifest_dir, column):
    header = [c for c in ("subject", "site", "image") if c != column]
    values = {"subject": "a", "site": "s1", "image": "data/a.nii.gz"}
    manifest = write_rows(manifest_dir / "manifest.csv", [header, [values[c] for c in header]])
    with pytest.raises(InputError, match=f"lacks column.*{column}") as exc:
        read_manifest(manifest)
    assert str(manifest) in str(exc.value)


@pytest.mark.parametrize("role", ["image", "mask", "labels"])
def test_manifest_line_with_a_missing_file_is_an_input_error_naming_the_line(manifest_dir, role):
    row = {"subject": "b", "site": "s1", "image": "data/b.nii.gz", "mask": "", "labels": ""}
    row[role] = "data/gone.nii.gz"
    manifest = write_rows(
        manifest_dir / "manifest.csv",
        [list(row), ["a", "s1", "data/a.nii.gz", "", ""], list(row.values())],
    )
    with pytest.raises(InputError) as exc:
        read_manifest(manifest)
    message = str(exc.value)
    assert str(manifest) in message
    assert "line 3" in message
    assert f"{role} file" in message
    assert "gone.nii.gz" in message


def test_duplicate_subject_at_a_site_is_an_input_error_but_not_across_sites(manifest_dir):
    rows = [["subject", "site", "image"], ["a", "s1", "data/a.nii.gz"], ["a", "s2", "data/b.nii.gz"]]
    assert [s.site for s in read_manifest(write_rows(manifest_dir / "ok.csv", rows))] == ["s1", "s2"]

    manifest = write_rows(manifest_dir / "dup.csv", [*rows, ["a", "s1", "data/c.nii.gz"]])
    with pytest.raises(InputError, match=r"line 4.*subject a of site s1 is listed twice") as exc:
        read_manifest(manifest)
    assert str(manifest) in str(exc.value)


@pytest.mark.parametrize("column", [0, 1, 2], ids=["subject", "site", "image"])
def test_empty_required_cell_is_an_input_error(manifest_dir, column):
    row = ["b", "s1", "data/b.nii.gz"]
    row[column] = "  "
    manifest = write_rows(manifest_dir / "manifest.csv", [["subject", "site", "image"], row])
    with pytest.raises(InputError, match="line 2: subject, site and image must not be empty") as exc:
        read_manifest(manifest)
    assert str(manifest) in str(exc.value)


def test_short_manifest_row_is_an_input_error(manifest_dir):
    manifest = write_rows(manifest_dir / "manifest.csv", [["subject", "site", "image"], ["a", "s1"]])
    with pytest.raises(InputError, match="line 2 has 2 fields, the header has 3"):
        read_manifest(manifest)


def test_write_then_read_manifest_round_trips_with_relative_paths(manifest_dir, tmp_path_factory):
    outside = touch(tmp_path_factory.mktemp("outside") / "x.nii.gz")
    data = manifest_dir / "data"
    subjects = [
        Subject("a", "s1", data / "a.nii.gz", data / "a_mask.nii.gz", data / "a_labels.nii.gz", "train"),
        Subject("b, the second", "s1", data / "b.nii.gz", None, None, "val", participant="b"),
        Subject("x", "s2", outside, None, None, None),
    ]
    manifest = write_manifest(subjects, manifest_dir / "manifest.csv")
    assert manifest == manifest_dir / "manifest.csv"

    rows = list(csv.reader(manifest.open(newline="", encoding="utf-8")))
    assert rows[0] == ["subject", "site", "image", "mask", "labels", "split", "participant"]
    assert rows[1] == ["a", "s1", "data/a.nii.gz", "data/a_mask.nii.gz", "data/a_labels.nii.gz", "train", ""]
    assert rows[2] == ["b, the second", "s1", "data/b.nii.gz", "", "", "val", "b"]
    assert Path(rows[3][2]).is_absolute()  # not below the manifest's folder: kept absolute

    def resolved(s: Subject) -> tuple:
        return (s.subject, s.site, s.image.resolve(), s.mask and s.mask.resolve(), s.labels and s.labels.resolve())

    back = read_manifest(manifest)
    assert [resolved(s) for s in back] == [resolved(s) for s in subjects]
    assert [s.split for s in back] == ["train", "val", None]
    assert [s.participant for s in back] == [None, "b", None]


# --------------------------------------------------------------------------------------------- site folders


def test_site_folders_with_companions_and_t1w_suffix(tmp_path):
    root = tmp_path / "root"
    a, b = root / "siteA", root / "siteB"
    for name in ("s1", "s1_mask", "s1_labels", "s2_T1w", "s2_brainmask", "s2_aseg", "s3_T1w", "s3_T1w_mask"):
        tiny_volume(a / f"{name}.nii.gz")
    tiny_volume(b / "s4.nii")
    tiny_volume(b / "s5.mgz")
    tiny_volume(b / "s5_dseg.mgz")
    touch(b / "notes.txt")
    touch(b / ".hidden.nii.gz")
    tiny_volume(root / ".cache" / "s9.nii.gz")  # hidden folders are not sites

    subjects = by_key(read_site_folders(root))
    assert sorted(subjects) == [("siteA", "s1"), ("siteA", "s2"), ("siteA", "s3"), ("siteB", "s4"), ("siteB", "s5")]
    assert subjects["siteA", "s1"] == Subject(
        "s1", "siteA", a / "s1.nii.gz", a / "s1_mask.nii.gz", a / "s1_labels.nii.gz"
    )
    assert subjects["siteA", "s2"] == Subject(
        "s2", "siteA", a / "s2_T1w.nii.gz", a / "s2_brainmask.nii.gz", a / "s2_aseg.nii.gz"
    )
    assert subjects["siteA", "s3"] == Subject("s3", "siteA", a / "s3_T1w.nii.gz", a / "s3_T1w_mask.nii.gz", None)
    assert subjects["siteB", "s4"] == Subject("s4", "siteB", b / "s4.nii")
    assert subjects["siteB", "s5"] == Subject("s5", "siteB", b / "s5.mgz", None, b / "s5_dseg.mgz")


def test_site_folders_with_freesurfer_subject_folders(tmp_path):
    root = tmp_path / "root"
    full = root / "fs" / "bert" / "mri"
    for name in ("T1.mgz", "brain.mgz", "brainmask.mgz", "aseg.mgz"):
        tiny_volume(full / name)
    tiny_volume(root / "fs" / "ernie" / "mri" / "T1.mgz")
    (root / "fs" / "fsaverage" / "surf").mkdir(parents=True)  # no mri/: not a subject

    subjects = by_key(read_site_folders(root))
    assert sorted(subjects) == [("fs", "bert"), ("fs", "ernie")]
    assert subjects["fs", "bert"] == Subject(
        "bert", "fs", full / "brain.mgz", full / "brainmask.mgz", full / "aseg.mgz"
    )  # brain.mgz before T1.mgz
    assert subjects["fs", "ernie"] == Subject("ernie", "fs", root / "fs" / "ernie" / "mri" / "T1.mgz")


def test_a_site_folder_of_another_layout_beside_readable_sites_is_an_input_error(tmp_path):
    root = tmp_path / "root"
    tiny_volume(root / "A" / "s1.nii.gz")
    tiny_volume(root / "B" / "s2" / "T1.nii.gz")  # a subject folder, but not FreeSurfer's
    with pytest.raises(InputError, match=r"holds no image .* unlike the other site folders") as exc:
        read_site_folders(root)
    assert exc.value.path == root / "B"


def test_a_manifest_split_of_another_name_is_an_input_error_naming_the_line(manifest_dir):
    manifest = manifest_dir / "m.csv"
    manifest.write_text("subject,site,image,split\na,s,data/a.nii.gz,train\nb,s,data/b.nii.gz,Validation\n")
    with pytest.raises(InputError, match=r"line 3: split 'Validation' is not one of train, val, test"):
        read_manifest(manifest)


def test_a_manifests_participant_column_keeps_a_persons_scans_in_one_split(tmp_path):
    rows = [f"p{i}-s{k},A,data/p{i}-s{k}.nii.gz,p{i}\n" for i in range(10) for k in (1, 2)]
    for i in range(10):
        for k in (1, 2):
            touch(tmp_path / "data" / f"p{i}-s{k}.nii.gz")
    (tmp_path / "m.csv").write_text("subject,site,image,participant\n" + "".join(rows))
    subjects = split_subjects(read_manifest(tmp_path / "m.csv"))
    split_of: dict[str, set[str]] = {}
    for s in subjects:
        split_of.setdefault(s.participant, set()).add(s.split)
    assert len(split_of) == 10 and all(len(splits) == 1 for splits in split_of.values())


def test_given_splits_that_part_a_persons_scans_are_an_input_error_naming_the_scan(manifest_dir):
    manifest = manifest_dir / "m.csv"
    manifest.write_text(
        "subject,site,image,split,participant\n"
        "a,s,data/a.nii.gz,train,p1\nb,s,data/b.nii.gz,train,p2\nc,s,data/c.nii.gz,test,p1\n"
    )
    with pytest.raises(InputError, match=r"participant p1 of site s is in split 'train' \(scan a\) and 'test'") as exc:
        split_subjects(read_manifest(manifest))
    assert exc.value.path == manifest_dir / "data" / "c.nii.gz"


def test_a_folder_of_images_is_one_site_named_after_it(tmp_path):
    site = tmp_path / "scanner-B"
    for name in ("s1_T1w.nii.gz", "s1_mask.nii.gz", "s2_T1w.nii.gz"):
        touch(site / name)
    subjects = load_subjects(site)
    assert [(s.subject, s.site, s.mask is not None) for s in subjects] == [
        ("s1", "scanner-B", True),
        ("s2", "scanner-B", False),
    ]
    touch(site / "other-site" / "s3.nii.gz")
    with pytest.raises(InputError, match="holds both a site's scans and site folders"):
        load_subjects(site)


@pytest.mark.parametrize(
    "names",
    [
        ("T1w.nii.gz", "mask.nii.gz", "tissue.nii.gz"),  # found by hand: read as three scans before
        ("sub-01_T1w.nii.gz", "sub-02_desc-brain_mask.nii.gz", "sub-02_dseg.nii.gz", "sub-02_label-GM_probseg.nii"),
    ],
)
def test_masks_and_label_maps_are_never_read_as_scans(tmp_path, names):
    site = tmp_path / "site"
    for name in names:
        touch(site / name)
    with pytest.warns(UserWarning, match=r"left out .*named like a mask or label map"):
        subjects = load_subjects(site)
    assert [s.image.name for s in subjects] == [names[0]]
    if "mask.nii.gz" in names:  # beside a folder's only image, a bare mask is that image's
        assert subjects[0].mask.name == "mask.nii.gz"


def test_a_folder_of_masks_only_says_so(tmp_path):
    for name in ("a_mask.nii.gz", "b_dseg.nii.gz"):
        touch(tmp_path / "site" / name)
    with pytest.warns(UserWarning), pytest.raises(InputError, match=r"holds only masks or label maps \(a_mask"):
        load_subjects(tmp_path / "site")


def test_a_folder_of_freesurfer_subjects_is_one_site_but_one_subject_is_refused(tmp_path):
    subjects_dir = tmp_path / "site-C"
    for name in ("bert", "ernie"):
        for f in ("brain.mgz", "brainmask.mgz", "aseg.mgz", "wm.mgz", "T1.mgz"):
            touch(subjects_dir / name / "mri" / f)
    subjects = load_subjects(subjects_dir)
    assert [(s.subject, s.site, s.image.name, s.mask.name) for s in subjects] == [
        ("bert", "site-C", "brain.mgz", "brainmask.mgz"),
        ("ernie", "site-C", "brain.mgz", "brainmask.mgz"),
    ]
    for one in (subjects_dir / "bert", subjects_dir / "bert" / "mri"):  # not its .mgz files as scans
        with pytest.raises(InputError, match="is one FreeSurfer subject"):
            load_subjects(one)


def test_freesurfers_template_subjects_are_left_out_of_a_subjects_dir_with_a_warning(tmp_path):
    subjects_dir = tmp_path / "site-C"
    templates = ["V1_average", "cvs_avg35", "fsaverage", "fsaverage5", "fsaverage_sym", "lh.EC_average"]
    for name in ["bert", "pilot_average", "fsaverage_2", *templates]:  # templates have mri/brain.mgz too
        for f in ("brain.mgz", "brainmask.mgz", "aseg.mgz"):
            touch(subjects_dir / name / "mri" / f)
    with pytest.warns(UserWarning, match="template subject") as caught:
        subjects = load_subjects(subjects_dir)
    assert [s.subject for s in subjects] == ["bert", "fsaverage_2", "pilot_average"]  # not FreeSurfer's names
    assert sorted(Path(str(w.message).split(":")[0]).name for w in caught) == templates
    with pytest.warns(UserWarning, match="template subject"):  # the same in ROOT/<site>/<subject>/mri/
        assert [s.subject for s in read_site_folders(tmp_path)] == ["bert", "fsaverage_2", "pilot_average"]
    for name in ("bert", "pilot_average", "fsaverage_2"):
        shutil.rmtree(subjects_dir / name)
    with pytest.warns(UserWarning), pytest.raises(InputError, match="only FreeSurfer's template subjects") as exc:
        load_subjects(subjects_dir)
    assert exc.value.path == subjects_dir


def test_a_subject_id_used_twice_in_a_sites_folder_is_an_error(tmp_path):
    site = tmp_path / "site-D"
    touch(site / "s01.nii.gz")
    touch(site / "s01_T1w.nii.gz")
    with pytest.raises(InputError, match="subject id 's01' is also used by"):
        load_subjects(site)


def test_site_folders_without_images_is_an_input_error(tmp_path):
    root = tmp_path / "root"
    touch(root / "siteA" / "readme.txt")
    (root / "siteB").mkdir()
    touch(root / "loose.nii.gz")  # not inside a site folder
    with pytest.raises(InputError, match="no site folder") as exc:
        read_site_folders(root)
    assert exc.value.path == root
    with pytest.raises(InputError, match="not a folder"):
        read_site_folders(tmp_path / "missing")


# --------------------------------------------------------------------------------------------- BIDS


def bids_root(tmp_path: Path, table: str, images: list[str]) -> Path:
    root = tmp_path / "bids"
    root.mkdir()
    (root / "participants.tsv").write_text(table, encoding="utf-8")
    for image in images:
        tiny_volume(root / image)
    return root


def test_bids_sites_from_participants_tsv(tmp_path):
    root = bids_root(
        tmp_path,
        "participant_id\tage\tSite\nsub-01\t30\tmunich\nsub-02\t41\tparis \n",
        ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii", "sub-02/anat/sub-02_FLAIR.nii.gz"],
    )
    touch(root / "sub-02" / "anat" / "sub-02_T1w.json")
    assert read_bids(root) == [
        Subject("sub-01", "munich", root / "sub-01/anat/sub-01_T1w.nii.gz", participant="sub-01"),
        Subject("sub-02", "paris", root / "sub-02/anat/sub-02_T1w.nii", participant="sub-02"),
    ]


def test_bids_sessions_give_one_subject_per_session(tmp_path):
    root = bids_root(
        tmp_path,
        "participant_id\tscanner\nsub-01\tprisma\nsub-02\tskyra\n",
        [
            "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
            "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_run-2_T1w.nii.gz",
        ],
    )
    subjects = read_bids(root)
    assert [(s.subject, s.site) for s in subjects] == [
        ("sub-01_ses-1", "prisma"),
        ("sub-01_ses-2", "prisma"),
        ("sub-02_ses-1_run-2", "skyra"),
    ]
    assert subjects[1].image == root / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"


def test_a_participants_sessions_share_one_split(tmp_path):
    table = "participant_id\tsite\n" + "".join(f"sub-{i:02d}\tA\n" for i in range(10))
    images = [f"sub-{i:02d}/ses-{k}/anat/sub-{i:02d}_ses-{k}_T1w.nii.gz" for i in range(10) for k in (1, 2)]
    subjects = split_subjects(read_bids(bids_root(tmp_path, table, images)))
    split_of: dict[str, set[str]] = {}
    for s in subjects:
        split_of.setdefault(s.participant, set()).add(s.split)
    assert all(len(splits) == 1 for splits in split_of.values())  # no person in two splits
    counts = {name: sum(splits == {name} for splits in split_of.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 5, "val": 2, "test": 3}  # the sizes of 10 people (of 20 scans: 12/3/5)


def test_bids_explicit_site_column(tmp_path):
    root = bids_root(
        tmp_path,
        "participant_id\tsite\tvendor\nsub-01\tA\tsiemens\nsub-02\tB\tge\n",
        ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"],
    )
    assert [s.site for s in read_bids(root)] == ["A", "B"]
    assert [s.site for s in read_bids(root, site_column="vendor")] == ["siemens", "ge"]
    assert [s.site for s in load_subjects(root, site_column="vendor")] == ["siemens", "ge"]
    with pytest.raises(InputError, match="has no column 'model'") as exc:
        read_bids(root, site_column="model")
    assert exc.value.path == root / "participants.tsv"


def test_bids_sessions_tsv_gives_a_sessions_site(tmp_path):
    # one person scanned at two sites: the sessions table says which session was where
    root = bids_root(
        tmp_path,
        "participant_id\tsite\nsub-01\tmunich\nsub-02\tparis\n",
        ["sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz", "sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz",
         "sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz"],
    )  # fmt: skip
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tsite\nses-a\tn/a\nses-b\tberlin\n")
    assert [(s.subject, s.site) for s in read_bids(root)] == [
        ("sub-01_ses-a", "munich"),  # n/a: the participant's
        ("sub-01_ses-b", "berlin"),
        ("sub-02_ses-a", "paris"),
    ]
    # one column name for every table: a sessions table's other usual name does not override participants.tsv's
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tscanner\nses-a\tx\nses-b\ty\n")
    assert [s.site for s in read_bids(root)] == ["munich", "munich", "paris"]
    # a column only some sessions tables have: the others' scans must get a site from it too
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t1\nsub-02\t2\n")
    with pytest.raises(InputError, match="sub-02 has no site in column 'scanner'") as exc:
        read_bids(root)
    assert exc.value.path == root / "sub-02" / "sub-02_sessions.tsv"


def test_bids_sites_from_the_scanner_the_sidecars_name_with_inheritance(tmp_path):
    root = tmp_path / "bids"
    for image in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz", "sub-03/anat/sub-03_T1w.nii.gz"):
        tiny_volume(root / image)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    # a dataset-wide sidecar, overridden for sub-02 by its own; sub-03 inherits the model but changes the field
    siemens = {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma fit", "MagneticFieldStrength": 3}
    ge = {"Manufacturer": "GE", "ManufacturersModelName": "DISCOVERY MR750", "MagneticFieldStrength": 3.0}
    (root / "T1w.json").write_text(json.dumps(siemens))
    (root / "sub-02/anat/sub-02_T1w.json").write_text(json.dumps(ge))
    (root / "sub-03/sub-03_T1w.json").write_text(json.dumps({"MagneticFieldStrength": 1.5}))
    sites = ["Siemens-Prismafit-3T", "GE-DISCOVERYMR750-3T", "Siemens-Prismafit-1.5T"]
    assert [s.site for s in read_bids(root)] == sites
    assert bids_sidecar(root / "sub-03/anat/sub-03_T1w.nii.gz", root)["MagneticFieldStrength"] == 1.5
    # a participants.tsv without a site column leaves the sidecars in charge; one with a site column wins
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t1\nsub-02\t2\nsub-03\t3\n")
    assert read_bids(root)[1].site == "GE-DISCOVERYMR750-3T"
    (root / "participants.tsv").write_text("participant_id\tsite\nsub-01\ta\nsub-02\tb\nsub-03\tc\n")
    assert [s.site for s in read_bids(root)] == ["a", "b", "c"]


def test_bids_with_neither_a_site_column_nor_scanner_fields_names_the_scan(tmp_path):
    root = bids_root(tmp_path, "participant_id\tage\nsub-01\t30\n", ["sub-01/anat/sub-01_T1w.nii.gz"])
    (root / "sub-01/anat/sub-01_T1w.json").write_text('{"RepetitionTime": 2.3}')
    with pytest.raises(InputError, match=r"no site for sub-01/anat/sub-01_T1w.nii.gz.*--site-column.*Manufacturer"):
        read_bids(root)
    (root / "sub-01/anat/sub-01_T1w.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable JSON sidecar") as exc:
        read_bids(root)
    assert exc.value.path == root / "sub-01/anat/sub-01_T1w.json"


def test_bids_without_a_site_column_is_an_input_error_naming_participants_tsv(tmp_path):
    root = bids_root(tmp_path, "participant_id\tage\nsub-01\t30\n", ["sub-01/anat/sub-01_T1w.nii.gz"])
    with pytest.raises(InputError, match="no site column") as exc:
        read_bids(root)
    assert exc.value.path == root / "participants.tsv"
    assert "participants.tsv" in str(exc.value)


def test_bids_without_participants_tsv_is_an_input_error(tmp_path):
    root = tmp_path / "bids"
    tiny_volume(root / "sub-01/anat/sub-01_T1w.nii.gz")
    (root / "dataset_description.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match=r"participants\.tsv"):
        read_bids(root)
    with pytest.raises(InputError, match=r"participants\.tsv"):  # detected as BIDS by dataset_description.json
        load_subjects(root)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("participant_id\tsite\nsub-01\tA\n", "does not list sub-02"),
        ("participant_id\tsite\nsub-01\tA\nsub-02\tn/a\n", "sub-02 has no site"),
        ("participant_id\tsite\nsub-01\tA\nsub-02\t \n", "sub-02 has no site"),
        ("subject\tsite\nsub-01\tA\nsub-02\tB\n", "no participant_id column"),
        ("participant_id\tsite\n", "lists no participants"),
    ],
)
def test_bids_participants_problems_are_input_errors(tmp_path, table, problem):
    root = bids_root(tmp_path, table, ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"])
    with pytest.raises(InputError, match=problem) as exc:
        read_bids(root)
    assert exc.value.path == root / "participants.tsv"


def test_bids_without_t1w_images_is_an_input_error(tmp_path):
    root = bids_root(tmp_path, "participant_id\tsite\nsub-01\tA\n", ["sub-01/anat/sub-01_T2w.nii.gz"])
    with pytest.raises(InputError, match="no sub-\\*/anat/\\*_T1w") as exc:
        read_bids(root)
    assert exc.value.path == root


def test_bids_masks_and_labels_beside_the_image_or_under_derivatives(tmp_path):
    root = bids_root(
        tmp_path,
        "participant_id\tsite\nsub-01\tA\nsub-02\tB\nsub-03\tB\n",
        [
            # sub-01: mask and labels beside the image (preferred over the derivatives' copies)
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
            "sub-01/anat/sub-01_dseg.nii.gz",
            "derivatives/pipe/sub-01/anat/sub-01_desc-brain_mask.nii.gz",
            # sub-02 (with a session): both under derivatives, with extra entities
            "sub-02/ses-a/anat/sub-02_ses-a_T1w.nii.gz",
            "derivatives/pipe/sub-02/ses-a/anat/sub-02_ses-a_space-orig_desc-brain_mask.nii",
            "derivatives/seg/sub-02/ses-a/anat/sub-02_ses-a_desc-aseg_dseg.nii.gz",
            # sub-03: none
            "sub-03/anat/sub-03_T1w.nii.gz",
        ],
    )
    subjects = by_key(read_bids(root))
    s1, s2, s3 = subjects["A", "sub-01"], subjects["B", "sub-02_ses-a"], subjects["B", "sub-03"]
    assert (s1.mask, s1.labels) == (
        root / "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
        root / "sub-01/anat/sub-01_dseg.nii.gz",
    )
    assert s2.mask == root / "derivatives/pipe/sub-02/ses-a/anat/sub-02_ses-a_space-orig_desc-brain_mask.nii"
    assert s2.labels == root / "derivatives/seg/sub-02/ses-a/anat/sub-02_ses-a_desc-aseg_dseg.nii.gz"
    assert (s3.mask, s3.labels) == (None, None)


def test_bids_mask_is_the_images_own_not_a_sibling_acquisitions(tmp_path):
    root = bids_root(
        tmp_path,
        "participant_id\tsite\nsub-01\tA\n",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
            "sub-01/anat/sub-01_acq-fast_T1w.nii.gz",
            "sub-01/anat/sub-01_acq-fast_desc-brain_mask.nii.gz",
        ],
    )
    masks = {s.subject: s.mask.name for s in read_bids(root)}
    assert masks == {
        "sub-01": "sub-01_desc-brain_mask.nii.gz",
        "sub-01_acq-fast": "sub-01_acq-fast_desc-brain_mask.nii.gz",
    }


def test_bids_participants_row_missing_its_site_cell_is_an_input_error(tmp_path):
    root = bids_root(
        tmp_path,
        "participant_id\tage\tsite\nsub-01\t30\tA\nsub-02\t41\n",  # an editor dropped sub-02's empty trailing cell
        ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"],
    )
    with pytest.raises(InputError) as exc:
        read_bids(root)
    assert exc.value.path == root / "participants.tsv"


# --------------------------------------------------------------------------------------------- load_subjects


def test_load_subjects_detects_each_layout(tmp_path):
    sites = tmp_path / "sites"
    tiny_volume(sites / "A" / "s1.nii.gz")
    tiny_volume(sites / "B" / "s2_T1w.nii.gz")
    assert [(s.site, s.subject) for s in load_subjects(sites)] == [("A", "s1"), ("B", "s2")]

    bids = tmp_path / "bids"
    tiny_volume(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    (bids / "participants.tsv").write_text("participant_id\tsite\nsub-01\tC\n", encoding="utf-8")
    assert [(s.site, s.subject) for s in load_subjects(bids)] == [("C", "sub-01")]

    # A folder with manifest.csv is read through the manifest, even though it also looks like site folders.
    with_manifest = tmp_path / "with_manifest"
    tiny_volume(with_manifest / "D" / "s3.nii.gz")
    tiny_volume(with_manifest / "E" / "s4.nii.gz")
    write_rows(
        with_manifest / "manifest.csv", [["subject", "site", "image", "split"], ["x3", "D", "D/s3.nii.gz", "test"]]
    )
    expected = [Subject("x3", "D", with_manifest / "D" / "s3.nii.gz", split="test")]
    assert load_subjects(with_manifest) == expected
    assert load_subjects(with_manifest / "manifest.csv") == expected

    renamed = write_rows(tmp_path / "list.CSV", [["subject", "site", "image"], ["y", "F", "sites/A/s1.nii.gz"]])
    assert load_subjects(renamed) == [Subject("y", "F", tmp_path / "sites/A/s1.nii.gz")]


def test_load_subjects_refuses_missing_paths_and_other_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_subjects(tmp_path / "missing")
    other = touch(tmp_path / "subjects.txt")
    with pytest.raises(InputError, match="expected a CSV manifest") as exc:
        load_subjects(other)
    assert exc.value.path == other


def test_load_subjects_reads_a_tab_separated_manifest(tmp_path):
    tiny_volume(tmp_path / "a.nii.gz")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("subject\tsite\timage\na\tA\ta.nii.gz\n", encoding="utf-8")
    assert load_subjects(manifest) == [Subject("a", "A", tmp_path / "a.nii.gz")]


def test_simulated_manifest_loads_with_all_sites_and_its_splits(simulated, tiny_config):
    for source in (simulated.manifest, simulated.folder):
        subjects = load_subjects(source)
        assert len(subjects) == 4 * tiny_config.subjects_per_site
        sites = sorted({s.site for s in subjects})
        assert len(sites) == 4
        assert {(s.site, s.subject, s.split) for s in subjects} == {
            (s.site, s.subject, s.split) for s in simulated.subjects
        }
        for site in sites:  # 3 subjects per site: one per split
            assert sorted(s.split for s in subjects if s.site == site) == ["test", "train", "val"]
        for s in subjects:
            assert s.image.is_file() and s.mask is not None and s.labels is not None
            assert s.image.resolve().is_relative_to(simulated.folder.resolve())
        assert split_subjects(subjects) == subjects  # given splits are kept


# --------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    ("n", "fractions", "expected"),
    [
        (100, (0.6, 0.15, 0.25), (60, 15, 25)),
        (20, (0.6, 0.15, 0.25), (12, 3, 5)),
        (4, (0.6, 0.15, 0.25), (2, 1, 1)),
        (3, (0.6, 0.15, 0.25), (1, 1, 1)),  # validation and test get at least one each
        (2, (0.6, 0.15, 0.25), (0, 1, 1)),
        (5, (1.0, 0.0, 0.0), (5, 0, 0)),
        (10, (0.5, 0.0, 0.5), (5, 0, 5)),
    ],
)
def test_split_counts(n, fractions, expected):
    assert split_counts(n, fractions) == expected
    assert sum(split_counts(n, fractions)) == n


def test_default_split_is_60_15_25_per_site_and_covers_every_subject_once():
    subjects = fake_subjects("big", 20) + fake_subjects("small", 4) + fake_subjects("mid", 10, prefix="m")
    out = split_subjects(subjects)
    assert [(s.site, s.subject) for s in out] == [(s.site, s.subject) for s in subjects]  # same order, same people
    assert [s.image for s in out] == [s.image for s in subjects]
    assert all(s.split in ("train", "val", "test") for s in out)
    for site, n in (("big", 20), ("small", 4), ("mid", 10)):
        splits = [s.split for s in out if s.site == site]
        counts = (splits.count("train"), splits.count("val"), splits.count("test"))
        assert counts == split_counts(n, SplitConfig().fractions)
    assert [s.split for s in out if s.site == "big"].count("train") == 12


def test_split_names_come_from_the_config():
    out = split_subjects(fake_subjects("A", 10), SplitConfig(fractions=(0.5, 0.2, 0.3), names=("fit", "tune", "eval")))
    assert sorted(s.split for s in out) == ["eval"] * 3 + ["fit"] * 5 + ["tune"] * 2


def test_split_is_deterministic_and_independent_of_listing_order():
    subjects = fake_subjects("A", 15) + fake_subjects("B", 12)
    first = by_key(split_subjects(subjects, SplitConfig(seed=3)))
    assert by_key(split_subjects(subjects, SplitConfig(seed=3))) == first
    shuffled = subjects.copy()
    for seed in range(3):
        random.Random(seed).shuffle(shuffled)
        out = split_subjects(shuffled, SplitConfig(seed=3))
        assert [(s.site, s.subject) for s in out] == [(s.site, s.subject) for s in shuffled]
        assert by_key(out) == first


def test_split_depends_on_the_seed():
    subjects = fake_subjects("A", 20)
    assignments = {tuple(s.split for s in split_subjects(subjects, SplitConfig(seed=seed))) for seed in range(5)}
    assert len(assignments) >= 4  # 20 subjects have 7e6 assignments; equal ones would mean the seed is ignored


def test_each_site_is_split_on_its_own():
    a = fake_subjects("A", 10)
    alone = by_key(split_subjects(a))
    with_another_site = by_key(split_subjects(a + fake_subjects("B", 7)))
    assert {k: v for k, v in with_another_site.items() if k[0] == "A"} == alone


def test_same_subject_id_at_two_sites_is_split_per_site():
    out = split_subjects(fake_subjects("A", 5) + fake_subjects("B", 5))
    assert len(by_key(out)) == 10
    for site in ("A", "B"):
        assert sorted(s.split for s in out if s.site == site) == ["test", "train", "train", "train", "val"]


@pytest.mark.parametrize("n", [1, 2])
def test_site_with_too_few_subjects_is_an_input_error_naming_it(n):
    subjects = fake_subjects("plenty", 5) + fake_subjects("tiny-site", n)
    with pytest.raises(InputError, match=f"site 'tiny-site' has {n} subject") as exc:
        split_subjects(subjects)
    assert exc.value.path == Path("/nowhere/tiny-site")
    # Only training: one subject is enough.
    only_train = split_subjects(subjects, SplitConfig(fractions=(1.0, 0.0, 0.0)))
    assert {s.split for s in only_train} == {"train"}


def test_given_splits_are_kept_unless_told_otherwise():
    subjects = [replace(s, split="train") for s in fake_subjects("A", 10)]
    assert split_subjects(subjects) == subjects  # all train: kept as given, even though it is not 60/15/25
    resplit = split_subjects(subjects, keep=False)
    assert sorted(s.split for s in resplit) == ["test"] * 3 + ["train"] * 5 + ["val"] * 2
    assert by_key(resplit) == by_key(split_subjects(fake_subjects("A", 10)))


def test_splits_given_for_some_subjects_only_is_an_input_error():
    subjects = fake_subjects("A", 6)
    partly = [replace(s, split="train") for s in subjects[:3]] + subjects[3:]
    with pytest.raises(InputError, match="give all or none") as exc:
        split_subjects(partly)
    assert exc.value.path == subjects[3].image
    assert {s.split for s in split_subjects(partly, keep=False)} == {"train", "val", "test"}


def test_site_folders_refuse_two_images_with_one_subject_id(tmp_path):
    tiny_volume(tmp_path / "A" / "s1.nii.gz")
    tiny_volume(tmp_path / "A" / "s1_T1w.nii.gz")
    with pytest.raises(InputError, match="subject id 's1' of site A is also used"):
        read_site_folders(tmp_path)
