"""A BIDS dataset as the app sees it: its T1w scans with their sites, the participants asked for, and where each
output goes, all checked before anything is written.

Outputs form a BIDS derivatives dataset in ``OUT_DIR``, never inside ``BIDS_DIR``::

    OUT_DIR/
      dataset_description.json       DatasetType derivative, GeneratedBy (name, version, the commands)
      sub-X/[ses-Y/]anat/sub-X_[ses-Y_]..._desc-harmonized_T1w.nii.gz   on the input's grid and header
      sub-X/[ses-Y/]anat/sub-X_[ses-Y_]..._desc-harmonized_T1w.json     Sources, sites, model, adaptation, QC
      sub-X/figures/sub-X_[ses-Y_]..._desc-mosaic_T1w.png               slices before and after
      group_T1w_qc.tsv               one row per harmonized scan
      sub-X.html  report.html        the reports
      models/                        the source model, one adapted model per target site, the QC reference
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harmonizing_flows.data.datasets import Subject, bids_entities, read_bids, strip_volume_suffix
from harmonizing_flows.errors import InputError

__all__ = ["Scan", "check_locations", "read_scans", "select_participants"]

DESC = "harmonized"
"""The ``desc`` entity of the harmonized images."""


@dataclass(frozen=True)
class Scan:
    """One T1w scan of the dataset: its record (files, resolved site) and where it sits in the dataset."""

    subject: Subject
    relative: Path
    """The image's path inside the BIDS root (``sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz``)."""

    @property
    def site(self) -> str:
        return self.subject.site

    @property
    def participant(self) -> str:
        """The participant's label, without ``sub-``."""
        return self.relative.parts[0].removeprefix("sub-")

    @property
    def prefix(self) -> str:
        """The file name's entities before ``_T1w`` (``sub-01_ses-1_run-2``)."""
        stem = strip_volume_suffix(self.relative.name)
        assert stem is not None and stem.endswith("_T1w")
        return stem[: -len("_T1w")]

    @property
    def entities(self) -> dict[str, str]:
        """The file name's entities (``{"sub": "01", "ses": "1", "run": "2"}``)."""
        return bids_entities(self.prefix)

    def output(self, out_dir: Path, suffix: str) -> Path:
        """A derivative of this scan: ``OUT_DIR/<the scan's folder>/<prefix>_desc-harmonized_<suffix>``."""
        return out_dir / self.relative.parent / f"{self.prefix}_desc-{DESC}_{suffix}"

    def figure(self, out_dir: Path) -> Path:
        return out_dir / f"sub-{self.participant}" / "figures" / f"{self.prefix}_desc-mosaic_T1w.png"

    @property
    def bids_uri(self) -> str:
        return f"bids:raw:{self.relative.as_posix()}"


def check_locations(bids_dir: Path, out_dir: Path) -> None:
    """Refuse a ``BIDS_DIR`` that is not a BIDS dataset, and an ``OUT_DIR`` that would write into it.

    Raises:
        InputError: ``BIDS_DIR`` is missing or has no ``dataset_description.json``; ``OUT_DIR`` is ``BIDS_DIR``,
            lies inside it or holds it.
    """
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "does not exist or is not a folder")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputError(bids_dir, "is not a BIDS dataset: it has no dataset_description.json")
    try:
        json.loads(description.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(description, f"is not readable JSON ({exc})") from exc
    inside, out = bids_dir.resolve(), out_dir.resolve()
    if out == inside:
        raise InputError(out_dir, "is the input dataset itself; give another OUT_DIR (the input is never written)")
    if out.is_relative_to(inside):
        example = inside.parent / "derivatives" / "harmonizing-flows"
        raise InputError(
            out_dir, f"lies inside the input dataset {bids_dir}, which is never written; give a folder outside it, "
            f"e.g. {example}",
        )  # fmt: skip
    if inside.is_relative_to(out):
        raise InputError(out_dir, f"holds the input dataset {bids_dir}; give a folder of its own")


def read_scans(bids_dir: Path, site_column: str | None = None) -> list[Scan]:
    """Every T1w scan of the dataset with its site (see :func:`~harmonizing_flows.data.datasets.read_bids`).

    Raises:
        InputError: No T1w scan, or a scan without a site (naming the file to fix).
    """
    return [Scan(s, s.image.relative_to(bids_dir)) for s in read_bids(bids_dir, site_column)]


def select_participants(scans: Sequence[Scan], labels: Sequence[str] | None, bids_dir: Path) -> list[Scan]:
    """The scans of the participants ``labels`` (with or without ``sub-``), or all scans.

    Raises:
        InputError: A label that names no participant with a T1w scan (listing those that exist).
    """
    if not labels:
        return list(scans)
    wanted = [label.removeprefix("sub-") for label in labels]
    known = sorted({s.participant for s in scans})
    missing = [label for label in wanted if label not in known]
    if missing:
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise InputError(bids_dir, f"has no participant {', '.join(missing)} with a T1w scan (participants: {shown})")
    return [s for s in scans if s.participant in wanted]
