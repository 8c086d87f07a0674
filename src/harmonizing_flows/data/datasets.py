"""Site datasets: subjects from a CSV manifest, a folder per site or a BIDS layout; subject-level splits; slices.

Three layouts are read into one list of :class:`Subject` records:

* **CSV manifest** (:func:`read_manifest`): columns ``subject, site, image`` and optionally ``mask, labels,
  split, participant`` (``participant`` names the person when one person has several rows: sessions, runs,
  rescans; a person's rows then share a split). The authors' names ``SUB_ID, SITE_ID, T1, brainmask,
  segmentation`` are accepted too. Relative paths are relative to the manifest's folder.
* **A folder per site** (:func:`read_site_folders`): ``ROOT/<site>/<subject>.nii.gz`` with optional companions
  ``<subject>_mask.nii.gz`` (or ``_brainmask``) and ``<subject>_labels.nii.gz`` (or ``_aseg``, ``_seg``,
  ``_dseg``); a trailing ``_T1w`` on the image name is dropped from the subject id. A FreeSurfer subject folder
  ``ROOT/<site>/<subject>/mri/`` (``brain.mgz`` or ``T1.mgz``, ``brainmask.mgz``, ``aseg.mgz``) works too;
  FreeSurfer's template subjects (:data:`FREESURFER_TEMPLATES`: ``fsaverage``, which recon-all links into
  ``SUBJECTS_DIR``, and the others it ships) are left out.
* **BIDS** (:func:`read_bids`): ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, the site from a ``sessions.tsv`` or
  ``participants.tsv`` column or else the scanner that the scan's sidecar names, a participant's split from its
  ``split`` column where it has one (``hflow simulate --layout bids`` writes it); masks and labels from
  ``*_desc-brain_mask`` and ``*_dseg`` files beside the image or under ``derivatives/*/``.

A folder of images alone is one site, named after the folder (as ``hflow harmonize`` takes a site's scans).
:func:`load_subjects` picks the layout from what it finds. :func:`split_subjects` splits each site by subject
(60/15/25 by default), deterministically for a seed and independently of listing order, so that no subject's
slices are ever in two splits (nor, for BIDS sessions and runs, two scans of one person).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from harmonizing_flows.config import SplitConfig
from harmonizing_flows.data.subject import Subject
from harmonizing_flows.data.volume import (
    VOLUME_SUFFIXES,
)
from harmonizing_flows.errors import InputError

__all__ = [
    "FREESURFER_TEMPLATES",
    "NOT_AN_IMAGE",
    "SCANNER_FIELDS",
    "Subject",
    "bids_entities",
    "bids_sidecar",
    "file_fingerprint",
    "folder_images",
    "freesurfer_subject",
    "freesurfer_subject_at",
    "freesurfer_subjects_in",
    "load_subjects",
    "read_bids",
    "read_manifest",
    "read_site_folders",
    "split_subjects",
    "strip_volume_suffix",
    "write_manifest",
]

MANIFEST_COLUMNS = ("subject", "site", "image", "mask", "labels", "split", "participant")
_COLUMN_ALIASES = {
    "sub_id": "subject",
    "subject_id": "subject",
    "participant_id": "subject",
    "site_id": "site",
    "t1": "image",
    "t1w": "image",
    "brainmask": "mask",
    "brain_mask": "mask",
    "segmentation": "labels",
    "seg": "labels",
    "aseg": "labels",
    "label": "labels",
}
_MASK_SUFFIXES = ("_mask", "_brainmask", "_desc-brain_mask")
_LABEL_SUFFIXES = ("_labels", "_aseg", "_seg", "_dseg")
NOT_AN_IMAGE = re.compile(
    r"(^|.*[_-])(mask|brainmask|labels?|aseg|aparc\+aseg|seg|dseg|probseg|tissues?|wmparc)$|.*_label-[^_]+$",
    re.IGNORECASE,
)
"""File stems that name a mask or a label map, never an image: ``mask``, ``tissue``, ``sub-01_desc-brain_mask``,
``sub-01_dseg``, ``sub-01_label-GM_probseg`` and the like (:func:`~harmonizing_flows.data.volume.load_volume`
also refuses an image whose content is a mask's or a label map's)."""
_SITE_COLUMNS = ("site", "site_id", "scanner", "centre", "center")


def strip_volume_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


# --------------------------------------------------------------------------------------------- manifest


def read_manifest(path: str | Path) -> list[Subject]:
    """Read a CSV manifest (see the module docstring for its columns)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest file does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read manifest ({exc})") from exc
    if not rows:
        raise InputError(path, "manifest is empty")
    header = [_COLUMN_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in rows[0]]
    missing = [c for c in ("subject", "site", "image") if c not in header]
    if missing:
        raise InputError(path, f"manifest lacks column(s) {', '.join(missing)} (has: {', '.join(rows[0])})")
    col = {name: header.index(name) for name in MANIFEST_COLUMNS if name in header}
    subjects, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise InputError(path, f"line {line} has {len(row)} fields, the header has {len(header)}")
        subject = _manifest_row(path, line, {name: row[i].strip() for name, i in col.items()})
        if (subject.site, subject.subject) in seen:
            raise InputError(path, f"line {line}: subject {subject.subject} of site {subject.site} is listed twice")
        seen.add((subject.site, subject.subject))
        subjects.append(subject)
    if not subjects:
        raise InputError(path, "manifest lists no subjects")
    return subjects


def _manifest_row(manifest: Path, line: int, cells: dict[str, str]) -> Subject:
    def file(name: str) -> Path | None:
        value = cells.get(name, "")
        if not value:
            return None
        p = Path(value)
        p = p if p.is_absolute() else manifest.parent / p
        if not p.exists():
            raise InputError(manifest, f"line {line}: {name} file {p} does not exist")
        return p

    subject, site = cells.get("subject", ""), cells.get("site", "")
    if not subject or not site or not cells.get("image"):
        raise InputError(manifest, f"line {line}: subject, site and image must not be empty")
    image = file("image")
    assert image is not None
    split = cells.get("split") or None
    if split is not None and split not in SplitConfig().names:
        raise InputError(manifest, f"line {line}: split {split!r} is not one of {', '.join(SplitConfig().names)}")
    return Subject(subject, site, image, file("mask"), file("labels"), split, cells.get("participant") or None)


def write_manifest(subjects: Iterable[Subject], path: str | Path) -> Path:
    """Write a manifest with paths relative to its folder where they lie below it."""
    path = Path(path)
    root = path.parent.resolve()

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return Path(p).resolve().relative_to(root).as_posix()
        except ValueError:
            return str(Path(p).resolve())

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for s in subjects:
            row = [s.subject, s.site, rel(s.image), rel(s.mask), rel(s.labels), s.split or "", s.participant or ""]
            writer.writerow(row)
    return path


# --------------------------------------------------------------------------------------------- folders


def freesurfer_subject(folder: Path, site: str = "") -> Subject | None:
    """The subject of a FreeSurfer subject folder (``<subject>/mri/``: ``brain.mgz``, else ``norm.mgz`` or
    ``T1.mgz``, with ``brainmask.mgz`` and ``aseg.mgz``), or None when ``folder`` is not one."""
    mri = folder / "mri"
    image = next((mri / n for n in ("brain.mgz", "norm.mgz", "T1.mgz") if (mri / n).is_file()), None)
    if image is None:
        return None
    mask = mri / "brainmask.mgz"
    labels = mri / "aseg.mgz"
    return Subject(folder.name, site, image, mask if mask.is_file() else None, labels if labels.is_file() else None)


FREESURFER_TEMPLATES = re.compile(r"fsaverage(\d|_sym)?|cvs_avg35(_inMNI152)?|[lr]h\.EC_average|V1_average")
"""The template subjects FreeSurfer ships in ``$FREESURFER_HOME/subjects`` (recon-all links ``fsaverage`` into a
``SUBJECTS_DIR``): atlases, not scans of a site, so a folder of subjects leaves them out. Exact names only, so
that a real subject called ``pilot_average`` is kept."""


def freesurfer_subjects_in(folder: Path, site: str = "") -> list[Subject]:
    """The FreeSurfer subjects in ``folder`` (a ``SUBJECTS_DIR``), without FreeSurfer's template subjects."""
    subjects = []
    for f in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (subject := freesurfer_subject(f, site)) is None:
            continue
        if FREESURFER_TEMPLATES.fullmatch(f.name):
            warnings.warn(f"{f}: FreeSurfer's template subject, not a scan of the site; left out", stacklevel=3)
            continue
        subjects.append(subject)
    return subjects


def freesurfer_subject_at(path: Path) -> Subject | None:
    """The FreeSurfer subject whose folder, or whose ``mri/`` folder, ``path`` is; None when it is neither."""
    return freesurfer_subject(path) or (freesurfer_subject(path.parent) if path.name == "mri" else None)


def folder_images(folder: Path, *, only: str | None = None) -> list[tuple[str, Path, Path | None, Path | None]]:
    """``(subject, image, mask, labels)`` for each image file directly in ``folder`` (or for the one named
    ``only``). Files named like masks or label maps (:data:`NOT_AN_IMAGE`) are never images; those that are no
    image's companion are left out with a warning.

    Companions ``<name>_mask`` (or ``_brainmask``, ``_desc-brain_mask``) and ``<name>_labels`` (or ``_aseg``,
    ``_seg``, ``_dseg``) go with ``<name>`` and are not images themselves; a trailing ``_T1w`` is dropped from the
    subject id and may be left out of the companions' names. Hidden files are skipped.

    Raises:
        InputError: Two files share a name but not a format (``s.nii`` and ``s.nii.gz``) where one of them is
            listed or is a listed image's companion: which one is meant cannot be told.
    """
    stems: dict[str, Path] = {}
    clashes: dict[str, tuple[Path, Path]] = {}
    for f in sorted(folder.iterdir()):
        stem = strip_volume_suffix(f.name)
        if f.is_file() and stem is not None and not f.name.startswith("."):
            if stem in stems:
                clashes.setdefault(stem, (stems[stem], f))
            stems.setdefault(stem, f)

    images = [s for s in stems if not NOT_AN_IMAGE.fullmatch(s)]

    def companion(names: tuple[str, ...], suffixes: tuple[str, ...]) -> Path | None:
        found = next((stems[n + sfx] for n in names for sfx in suffixes if n + sfx in stems), None)
        if found is None and len(images) == 1:  # one image: a bare "mask" or "labels" beside it is its own
            found = next((stems[sfx[1:]] for sfx in suffixes if sfx[1:] in stems), None)
        return found

    found = []
    skipped: list[Path] = []
    attached = {
        stem: {companion((stem, re.sub(r"_T1w$", "", stem)), sfx) for sfx in (_MASK_SUFFIXES, _LABEL_SUFFIXES)}
        for stem in stems
        if not NOT_AN_IMAGE.fullmatch(stem)
    }
    for stem, image in stems.items():
        if only is not None and strip_volume_suffix(only) != stem:
            continue
        if NOT_AN_IMAGE.fullmatch(stem):
            if not any(image in companions for companions in attached.values()):
                skipped.append(image)
            continue
        subject = re.sub(r"_T1w$", "", stem)
        names = (stem, subject) if subject != stem else (stem,)
        mask, labels = companion(names, _MASK_SUFFIXES), companion(names, _LABEL_SUFFIXES)
        for used in (image, mask, labels):
            clash = clashes.get(strip_volume_suffix(used.name) or "") if used is not None else None
            if clash is not None:
                raise InputError(clash[1], f"has the same name as {clash[0].name} in another format; keep one of them")
        found.append((subject, image, mask, labels))
    if skipped and only is None:
        listed = ", ".join(p.name for p in skipped)
        warnings.warn(
            f"{folder}: left out {listed}: named like a mask or label map, and not the companion of an image "
            "(name a mask <image>_mask.nii.gz and a label map <image>_labels.nii.gz to use them)",
            stacklevel=3,
        )
    return found


def read_site_folders(root: str | Path) -> list[Subject]:
    """Read ``ROOT/<site>/...`` (see the module docstring for the file names)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "is not a folder")
    subjects, empty = [], []
    for site_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        site = site_dir.name
        seen: dict[str, Path] = {}
        found = len(subjects)
        subjects += freesurfer_subjects_in(site_dir, site)
        for subject, image, mask, labels in folder_images(site_dir):
            if subject in seen:
                raise InputError(image, f"subject id {subject!r} of site {site} is also used by {seen[subject].name}")
            seen[subject] = image
            subjects.append(Subject(subject, site, image, mask, labels))
        if len(subjects) == found:
            empty.append(site_dir)
    if not subjects:
        volumes = [f.name for f in root.iterdir() if f.is_file() and strip_volume_suffix(f.name)]
        if volumes and all(NOT_AN_IMAGE.fullmatch(strip_volume_suffix(n) or "") for n in volumes):  # all left out
            raise InputError(root, f"holds only masks or label maps ({', '.join(sorted(volumes)[:3])}), no image")
        raise InputError(root, "holds no site folder with NIfTI or MGZ images (expected ROOT/<site>/<subject>.nii.gz)")
    if empty:  # beside sites that were read, a site that silently vanished would shrink the study unnoticed
        raise InputError(
            empty[0],
            "holds no image (<subject>.nii.gz) and no FreeSurfer subject folder (<subject>/mri/), unlike the other "
            "site folders; subject folders of other layouts are not read",
        )
    return subjects


# --------------------------------------------------------------------------------------------- BIDS


_DERIVATIVE_ENTITIES = {"space", "desc", "res", "den", "label"}


def bids_entities(name: str) -> dict[str, str]:
    """A BIDS file name's entities (``sub-01_ses-1_T1w`` -> ``{"sub": "01", "ses": "1"}``)."""
    return dict(part.split("-", 1) for part in name.split("_") if "-" in part)


def read_bids(root: str | Path, site_column: str | None = None) -> list[Subject]:
    """Read a BIDS dataset's T1-weighted scans with the site of each.

    A scan's site comes from, in this order: the site column of its subject's ``sub-X_sessions.tsv`` (for that
    session), the site column of ``participants.tsv``, or, when neither file has a site column, the scanner its
    JSON sidecar names (``Manufacturer``, ``ManufacturersModelName``, ``MagneticFieldStrength``, with BIDS'
    inheritance from sidecars higher in the tree), e.g. ``Siemens-Prisma-3T``.

    Args:
        root: The BIDS root.
        site_column: The column naming the site; by default the first of ``site``, ``site_id``, ``scanner``,
            ``centre``, ``center`` that exists (case-insensitive). A column named here must exist.

    Raises:
        InputError: Naming the file: no T1w scan, a participants.tsv without participant_id or participants, a
            subject folder it does not list, a participant without a site, a named column that does not exist,
            or a scan whose site nothing gives.
    """
    root = Path(root)
    table = root / "participants.tsv"
    rows = _read_tsv(table) if table.is_file() else []
    if table.is_file():
        if not rows:
            raise InputError(table, "participants.tsv lists no participants")
        if "participant_id" not in rows[0]:
            raise InputError(table, "participants.tsv has no participant_id column")
    sessions_tables = {t.parent.name: _read_tsv(t) for t in sorted(root.glob("sub-*/sub-*_sessions.tsv"))}
    headers = [rows[0] if rows else {}] + [t[0] for t in sessions_tables.values() if t]
    column = _site_column(headers, site_column)  # one name for every table, so none silently uses another
    if site_column is not None and column is None:
        where = table if table.is_file() else root
        raise InputError(where, f"has no column {site_column!r} (has: {', '.join(rows[0]) if rows else 'none'})")
    in_participants = _lookup(rows[0], column) if rows and column else None
    sites = {(r.get("participant_id") or "").strip(): _value(r.get(in_participants)) for r in rows}
    splits = _bids_splits(table, rows) if rows else {}
    listed = {(r.get("participant_id") or "").strip() for r in rows}

    derivatives = sorted((root / "derivatives").glob("*/")) if (root / "derivatives").is_dir() else []
    subjects = []
    for sub_dir in sorted(root.glob("sub-*/")):
        sub = sub_dir.name
        if rows and sub not in listed:
            raise InputError(table, f"does not list {sub}, which has a folder in {root}")
        sessions = _session_sites(sessions_tables.get(sub, []), column)
        for image in sorted(sub_dir.glob("**/anat/*_T1w.nii*")):
            stem = strip_volume_suffix(image.name)
            assert stem is not None
            prefix = stem[: -len("_T1w")]
            entities = bids_entities(prefix)
            site = sessions.get(entities.get("ses", "")) or sites.get(sub)
            if column and not site:  # a site column exists: every scan takes its site from the tables
                where = table if in_participants else sub_dir / f"{sub}_sessions.tsv"
                raise InputError(where, f"{sub} has no site in column {column!r}")
            site = site or _scanner_site(image, root, table)
            rel_dir = image.parent.relative_to(root)
            search = [image.parent] + [d / rel_dir for d in derivatives]
            mask = _find_bids(search, prefix, ("_desc-brain_mask", "_mask"))
            labels = _find_bids(search, prefix, ("_dseg", "_desc-aseg_dseg"))
            ident = sub + "".join(f"_{k}-{v}" for k, v in entities.items() if k not in ("sub",))
            subjects.append(Subject(ident, site, image, mask, labels, splits.get(sub), participant=sub))
    if not subjects:
        raise InputError(root, "BIDS dataset has no sub-*/anat/*_T1w.nii[.gz] images")
    return subjects


def _value(cell: str | None) -> str:
    """A table cell's value, empty for a blank or ``n/a`` cell."""
    value = (cell or "").strip()
    return "" if value.lower() == "n/a" else value


def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as a tab-separated table ({exc})") from exc


def _lookup(header: Iterable[str], name: str) -> str | None:
    """The column of ``header`` named ``name``, ignoring case."""
    return next((c for c in header if c.lower() == name.lower()), None)


def _site_column(headers: Sequence[Iterable[str]], site_column: str | None) -> str | None:
    """The site column's name: ``site_column`` if some table has it, else the first usual name that one has
    (participants.tsv first, then the sessions tables)."""
    names = [site_column] if site_column is not None else list(_SITE_COLUMNS)
    for name in names:
        if any(_lookup(header, name) for header in headers):
            return name
    return None


def _session_sites(rows: Sequence[dict[str, str]], column: str | None) -> dict[str, str]:
    """Session label -> site from a ``sub-X_sessions.tsv``'s rows (empty without the column)."""
    found = _lookup(rows[0], column) if rows and column else None
    if found is None or "session_id" not in rows[0]:
        return {}
    sites = {}
    for r in rows:
        session, site = (r.get("session_id") or "").strip(), _value(r.get(found))
        if site:
            sites[session.removeprefix("ses-")] = site
    return sites


SCANNER_FIELDS = ("Manufacturer", "ManufacturersModelName", "MagneticFieldStrength")
"""The sidecar fields that name a scanner, and so a site, when no table gives one."""


def bids_sidecar(image: Path, root: Path) -> dict[str, object]:
    """The JSON sidecar fields of a BIDS image, inherited as BIDS says: every ``*_<suffix>.json`` from the root down
    to the image's folder whose entities are a subset of the image's, the deeper ones overriding."""
    stem = strip_volume_suffix(image.name)
    assert stem is not None
    suffix = stem.rsplit("_", 1)[-1]
    entities = bids_entities(stem)
    folders = [root, *[root / Path(*image.parent.relative_to(root).parts[:n]) for n in range(1, 4)]]
    fields: dict[str, object] = {}
    for folder in dict.fromkeys(f for f in folders if f.is_dir() and image.parent.is_relative_to(f)):
        for sidecar in sorted(folder.glob(f"*{suffix}.json"), key=lambda p: len(p.name)):
            if sidecar.name.rsplit("_", 1)[-1] != f"{suffix}.json" and sidecar.name != f"{suffix}.json":
                continue
            if bids_entities(sidecar.name[: -len(".json")]).items() <= entities.items():
                try:
                    loaded = json.loads(sidecar.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise InputError(sidecar, f"is not a readable JSON sidecar ({exc})") from exc
                if isinstance(loaded, dict):
                    fields.update(loaded)
    return fields


def _scanner_site(image: Path, root: Path, table: Path) -> str:
    """A site named after the scanner that the image's sidecar names (``Siemens-Prisma-3T``)."""
    fields = bids_sidecar(image, root)
    parts = [str(fields[k]).strip() for k in SCANNER_FIELDS[:2] if str(fields.get(k, "")).strip()]
    if not parts:
        looked = ", ".join(_SITE_COLUMNS)
        raise InputError(
            table if table.is_file() else image,
            f"no site for {image.relative_to(root)}: no site column in participants.tsv or sessions.tsv (looked "
            f"for {looked}; name one with --site-column) and its sidecar names no scanner "
            f"({', '.join(SCANNER_FIELDS)})",
        )
    strength = fields.get("MagneticFieldStrength")
    if isinstance(strength, int | float) and not isinstance(strength, bool):
        parts.append(f"{strength:g}T")
    return "-".join(re.sub(r"[^A-Za-z0-9.]+", "", p) or "unknown" for p in parts)


def _bids_splits(table: Path, rows: Sequence[dict[str, str]]) -> dict[str, str]:
    """Participant -> split from a ``split`` column of participants.tsv (empty or ``n/a``: none given)."""
    if "split" not in rows[0]:
        return {}
    names = SplitConfig().names
    splits = {}
    for r in rows:
        participant, value = (r.get("participant_id") or "").strip(), (r.get("split") or "").strip()
        if value and value.lower() != "n/a":
            if value not in names:
                raise InputError(table, f"{participant}: split {value!r} is not one of {', '.join(names)}")
            splits[participant] = value
    return splits


def _find_bids(folders: Sequence[Path], prefix: str, suffixes: Sequence[str]) -> Path | None:
    """The first companion of the image named ``prefix`` (e.g. its brain mask) in the first folder that has one.

    Between the prefix and the suffix only derivative entities (space, desc, res, den, label) may appear, so that
    ``sub-01_T1w`` never takes ``sub-01_acq-fast_desc-brain_mask`` or ``run-1`` the mask of ``run-10``.
    """
    for folder in folders:
        if not folder.is_dir():
            continue
        for suffix in suffixes:
            for ext in (".nii.gz", ".nii"):
                for candidate in sorted(folder.glob(f"{prefix}*{suffix}{ext}")):
                    extra = candidate.name[len(prefix) : -len(suffix + ext)]
                    keys = [part.split("-", 1)[0] for part in extra.split("_") if part]
                    if all("-" in part for part in extra.split("_") if part) and set(keys) <= _DERIVATIVE_ENTITIES:
                        return candidate
    return None


def load_subjects(path: str | Path, *, site_column: str | None = None) -> list[Subject]:
    """Read subjects from a manifest file, a BIDS root, a folder holding ``manifest.csv``, site folders, or a
    folder of one site's images (the site named after the folder)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".tsv"):
            raise InputError(path, "expected a CSV manifest or a folder")
        return read_manifest(path)
    if (path / "participants.tsv").is_file() or (path / "dataset_description.json").is_file():
        return read_bids(path, site_column)
    if (path / "manifest.csv").is_file():
        return read_manifest(path / "manifest.csv")
    if freesurfer_subject_at(path) is not None:
        raise InputError(path, "is one FreeSurfer subject; give the folder of a site's subject folders")
    return _one_site_folder(path) or read_site_folders(path)


def _one_site_folder(path: Path) -> list[Subject] | None:
    """A folder of one site's scans (images, FreeSurfer subject folders, or both), as ``hflow harmonize`` takes
    them, the site named after the folder; None when ``path`` holds neither (site folders, say)."""
    site = path.resolve().name
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    subjects = freesurfer_subjects_in(path, site)
    if not subjects and any(FREESURFER_TEMPLATES.fullmatch(f.name) and freesurfer_subject(f) for f in folders):
        raise InputError(path, "holds only FreeSurfer's template subjects (fsaverage, ...), no scan of a site")
    subjects += [Subject(subject, site, image, mask, labels) for subject, image, mask, labels in folder_images(path)]
    if not subjects:
        return None
    if any(freesurfer_subject(f) is None and folder_images(f) for f in folders):
        raise InputError(path, "holds both a site's scans and site folders of images; keep one layout")
    seen: dict[str, Path] = {}
    for s in subjects:
        if s.subject in seen:
            raise InputError(s.image, f"subject id {s.subject!r} is also used by {seen[s.subject]}")
        seen[s.subject] = s.image
    return subjects


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Subjects per split for a site of ``n``: validation and test rounded, at least one each; train the rest."""
    n_val = max(1, math.floor(n * fractions[1] + 0.5)) if fractions[1] > 0 else 0
    n_test = max(1, math.floor(n * fractions[2] + 0.5)) if fractions[2] > 0 else 0
    return n - n_val - n_test, n_val, n_test


def split_subjects(
    subjects: Sequence[Subject], config: SplitConfig | None = None, *, keep: bool = True
) -> list[Subject]:
    """Assign each subject to train / val / test, site by site, a participant's scans all to one split.

    The order within a site comes from a hash of (seed, site, participant id), so the split depends only on the
    seed and the set of ids, not on the order they were listed in; the split sizes count participants. Subjects
    that already have a split keep it when ``keep`` is true (and then all of them must have one).

    Raises:
        InputError: A site has too few subjects to give every split at least one, splits are partly given, or
            given splits put one participant's scans in two splits.
    """
    config = config or SplitConfig()
    given = [s.split for s in subjects]
    if keep and any(given):
        if not all(given):
            missing = next(s for s in subjects if not s.split)
            raise InputError(missing.image, "some subjects have a split and this one has none; give all or none")
        first: dict[tuple[str, str], Subject] = {}
        for s in subjects:
            other = first.setdefault((s.site, s.participant or s.subject), s)
            if other.split != s.split:
                raise InputError(
                    s.image,
                    f"participant {s.participant or s.subject} of site {s.site} is in split {other.split!r} "
                    f"(scan {other.subject}) and {s.split!r} (scan {s.subject}): one person's scans would leak "
                    "between splits",
                )
        return list(subjects)
    by_site: dict[str, list[Subject]] = {}
    for s in subjects:
        by_site.setdefault(s.site, []).append(s)
    out: dict[tuple[str, str], Subject] = {}
    for site, members in by_site.items():
        people = sorted({s.participant or s.subject for s in members})
        n_train, n_val, n_test = split_counts(len(people), config.fractions)
        if n_train < (1 if config.fractions[0] > 0 else 0):
            raise InputError(
                members[0].image.parent,
                f"site {site!r} has {len(people)} subject(s), too few to split "
                f"{'/'.join(f'{f:.0%}' for f in config.fractions)} with at least one subject per split",
            )
        order = sorted(people, key=lambda person: (_stable_int(config.seed, site, person), person))
        names = [config.names[0]] * n_train + [config.names[1]] * n_val + [config.names[2]] * n_test
        split_of = dict(zip(order, names, strict=True))
        for s in members:
            out[(s.site, s.subject)] = replace(s, split=split_of[s.participant or s.subject])
    return [out[(s.site, s.subject)] for s in subjects]


def file_fingerprint(paths: Iterable[Path | None]) -> list[tuple[str, int, str]]:
    """Name, size and SHA-256 of each file: what says that data is the same data (for keys of stored results:
    fitted networks, checkpoints, finished benchmark settings).

    The content, not the path or the modification time: the simulator writes the same bytes for the same seed, so a
    result stored by an earlier run, in another folder or on another machine, is reused for data written again."""
    found = []
    for path in paths:
        if path is None:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        found.append((path.name, path.stat().st_size, digest.hexdigest()))
    return sorted(found)
