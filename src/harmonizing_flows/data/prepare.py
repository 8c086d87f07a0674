"""From a dataset on disk to a site's sliced volumes, one way for every command: load -> select site -> split ->
slice.

``hflow fit``, ``fit-segmenter``, ``adapt`` and the benchmark all read their data here, so they agree on what a
site needs: fitting needs a training split, and a site without a validation split measures its source bpd on the
training split, with a warning; adaptation takes every scan of the target site (one scan works, with a warning
that a single scan is a thin sample of a site).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harmonizing_flows.config import SliceConfig
from harmonizing_flows.data.datasets import Subject, load_subjects, split_subjects
from harmonizing_flows.data.labels import check_whole_brain
from harmonizing_flows.data.volume import SlicedVolume, load_volume, slice_volume
from harmonizing_flows.errors import InputError

__all__ = ["Site", "read_site", "read_sites", "read_volumes", "select_site"]


@dataclass(frozen=True)
class Site:
    """One site's sliced volumes (each knows its :class:`~harmonizing_flows.data.datasets.Subject`)."""

    name: str
    volumes: list[SlicedVolume]
    source: Path
    """The dataset it was read from (for messages)."""

    def split(self, name: str) -> list[SlicedVolume]:
        return [v for v in self.volumes if v.subject is not None and v.subject.split == name]

    def fitting_splits(self) -> tuple[list[SlicedVolume], list[SlicedVolume]]:
        """The training and validation volumes of a source site.

        The validation split measures the source bpd that adaptation's source-bpd rule aims for; a site without one
        measures it on the training split, where it is too low, and says so.

        Raises:
            InputError: The site has no subject in its training split.
        """
        train, val = self.split("train"), self.split("val")
        if not train:
            raise InputError(self.source, f"site {self.name} has no subject in its train split, which fitting needs")
        if not val:
            warnings.warn(
                f"{self.source}: site {self.name} has no subject in the validation split, so the source bpd that "
                "adaptation's source-bpd rule aims for is measured on the training slices, where it is too low",
                stacklevel=2,
            )
            val = train
        return train, val


def read_volumes(
    subjects: Sequence[Subject],
    config: SliceConfig,
    *,
    labels: bool = False,
    progress: bool = False,
    desc: str = "reading volumes",
) -> list[SlicedVolume]:
    """Read, quantize and slice each subject once (with its label map, checked to be whole-brain, if asked)."""
    from harmonizing_flows.progress import progress_bar

    volumes = []
    for s in progress_bar(subjects, desc=desc, unit="vol", enabled=progress, leave=False):
        if labels and s.labels is None:
            raise InputError(s.image, f"subject {s.subject} has no label map, and labels are needed here")
        sliced = slice_volume(load_volume(s.image, s.mask, s.labels if labels else None), config)
        if labels:
            assert sliced.labels is not None and s.labels is not None
            check_whole_brain(sliced.labels, s.labels)
        volumes.append(sliced.with_subject(s))
    return volumes


def select_site(subjects: Sequence[Subject], site: str | None, source: Path) -> list[Subject]:
    """The subjects of ``site``, or of the only site; an error lists the sites when the choice is ambiguous."""
    sites = sorted({s.site for s in subjects})
    if site is None:
        if len(sites) > 1:
            raise InputError(source, f"holds several sites ({', '.join(sites)}); choose one with --site")
        site = sites[0]
    chosen = [s for s in subjects if s.site == site]
    if not chosen:
        raise InputError(source, f"has no site {site!r} (sites: {', '.join(sites)})")
    return chosen


def read_site(
    data: str | Path,
    config: SliceConfig,
    *,
    site: str | None = None,
    splits: Sequence[str] | None = None,
    split: bool = True,
    labels: bool = False,
    progress: bool = False,
    desc: str = "reading volumes",
) -> Site:
    """One site of a dataset (manifest, site folders, BIDS or a folder of one site's scans), split, sliced.

    Args:
        site: Which site, when the data holds several.
        splits: Read only the subjects of these splits; all by default.
        split: Split the site's subjects first (keeping the splits the data gives). Without it, ``splits``
            selects among the splits the data gives: adaptation, which takes a site's scans as they are, so takes
            a site too small to split.
        labels: Read the label maps too (every subject must have one).

    Raises:
        InputError: Unreadable data, an ambiguous or unknown site, too few subjects to split, no subject in
            ``splits``.
    """
    data = Path(data)
    subjects = select_site(load_subjects(data), site, data)
    if split:
        subjects = split_subjects(subjects)  # keeps the splits the data gives
    if splits:
        subjects = [s for s in subjects if s.split in splits]
        if not subjects:
            raise InputError(data, f"has no subject in split(s) {', '.join(splits)}")
    volumes = read_volumes(subjects, config, labels=labels, progress=progress, desc=desc)
    return Site(subjects[0].site, volumes, data)


def read_sites(
    data: str | Path,
    config: SliceConfig,
    *,
    subjects: Sequence[Subject] | None = None,
    labels: bool = False,
    progress: bool = False,
) -> list[Site]:
    """Every site of a multi-site dataset, in name order, split and sliced (each volume decoded once).

    Args:
        subjects: The dataset's subjects, split, when the caller has read them already (to check them first).
    """
    data = Path(data)
    subjects = split_subjects(load_subjects(data)) if subjects is None else subjects
    names = sorted({s.site for s in subjects})
    return [
        Site(
            name, read_volumes([s for s in subjects if s.site == name], config, labels=labels, progress=progress), data
        )
        for name in names
    ]
