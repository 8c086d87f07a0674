"""``hflow simulate --layout bids``: the simulated data set as a BIDS raw dataset, masks and labels as derivatives.

Output folder::

    OUT/
      dataset_description.json        Name, BIDSVersion 1.9.0, DatasetType raw, GeneratedBy harmonizing-flows
      README.md                       what the data set is
      participants.tsv                participant_id, site, split
      participants.json               what those columns mean
      .bidsignore                     simulation.json and montage.png, the simulator's own files
      simulation.json  montage.png    as in the default layout
      sub-<site><NNN>/anat/sub-<site><NNN>_T1w.nii.gz   uint8 0..255, in the site's file orientation
      sub-<site><NNN>/anat/sub-<site><NNN>_T1w.json     the site's scanner fields (Manufacturer, timings in s, ...)
      derivatives/simulation/
        dataset_description.json     DatasetType derivative
        dseg.tsv                     the 15 classes of the label maps
        sub-<site><NNN>/anat/sub-<site><NNN>_desc-brain_mask.nii.gz (+ .json)
        sub-<site><NNN>/anat/sub-<site><NNN>_dseg.nii.gz (+ .json)

A participant's label is the site's name without its non-alphanumeric characters and the subject's number
(``mprage-3t`` -> ``sub-mprage3t001``): BIDS labels are alphanumeric. ``participants.tsv`` keeps the site's own
name in ``site`` (what ``hflow fit --site`` takes) and the simulator's split in ``split``, which
:func:`~harmonizing_flows.data.datasets.read_bids` reads back. The voxels are those of the default layout for the
same seed, and so is the split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harmonizing_flows import __version__
from harmonizing_flows.data.labels import CLASS_NAMES
from harmonizing_flows.errors import InputError
from harmonizing_flows.simulate.sites import Site

__all__ = [
    "BIDS_VERSION",
    "DERIVATIVE",
    "participant_labels",
    "scan_paths",
    "t1w_sidecar",
    "write_bids_files",
    "write_scan_sidecars",
]

BIDS_VERSION = "1.9.0"
DERIVATIVE = "simulation"
"""The derivatives dataset's folder name: ``derivatives/simulation/``."""

_PULSE_SEQUENCE = {"mprage": "MPRAGE", "spgr": "spoiled gradient echo", "spin_echo": "spin echo"}


def participant_labels(sites: Sequence[Site], subjects_per_site: int) -> dict[str, list[str]]:
    """Site name -> the BIDS participant labels (without ``sub-``) of its subjects, in order.

    Raises:
        InputError: A site's name has no letter or digit, or two sites' names give the same label.
    """
    width = max(3, len(str(subjects_per_site)))
    prefixes: dict[str, str] = {}
    for site in sites:
        prefix = re.sub(r"[^A-Za-z0-9]", "", site.name)
        if not prefix:
            raise InputError(None, f"site {site.name!r} has no letter or digit to make a BIDS participant label of")
        clash = next((other for other, p in prefixes.items() if p == prefix), None)
        if clash is not None:
            raise InputError(
                None, f"sites {clash!r} and {site.name!r} both give BIDS participant labels sub-{prefix}NNN; rename one"
            )
        prefixes[site.name] = prefix
    return {name: [f"{p}{i + 1:0{width}d}" for i in range(subjects_per_site)] for name, p in prefixes.items()}


def scan_paths(folder: Path, label: str) -> dict[str, Path]:
    """Where a participant's image, brain mask and label map go (``T1w``, ``mask``, ``labels``)."""
    sub = f"sub-{label}"
    derivative = folder / "derivatives" / DERIVATIVE / sub / "anat"
    return {
        "T1w": folder / sub / "anat" / f"{sub}_T1w.nii.gz",
        "mask": derivative / f"{sub}_desc-brain_mask.nii.gz",
        "labels": derivative / f"{sub}_dseg.nii.gz",
    }


def t1w_sidecar(site: Site) -> dict[str, Any]:
    """The T1w sidecar of a site's scans: its scanner and, where its sequence has them, the sequence's timings in
    seconds and flip angle in degrees (BIDS units)."""
    sidecar: dict[str, Any] = {}
    if site.manufacturer:
        sidecar["Manufacturer"] = site.manufacturer
    if site.model:
        sidecar["ManufacturersModelName"] = site.model
    sidecar["MagneticFieldStrength"] = site.field_strength
    sidecar["PulseSequenceType"] = _PULSE_SEQUENCE[site.sequence]
    sidecar["RepetitionTime"] = _seconds(site.tr_ms)  # MPRAGE: inversion to inversion, as dcm2niix writes it
    if site.sequence == "mprage":
        sidecar["InversionTime"] = _seconds(site.ti_ms)
        sidecar["RepetitionTimeExcitation"] = _seconds(site.echo_spacing_ms)
    sidecar["EchoTime"] = _seconds(site.te_ms)
    if site.sequence != "spin_echo":  # the spin echo's signal model has no flip angle (90 degrees)
        sidecar["FlipAngle"] = site.flip_deg
    return sidecar


def _seconds(ms: float) -> float:
    return round(ms / 1000.0, 9)


def write_scan_sidecars(paths: Mapping[str, Path], site: Site) -> None:
    """The JSON sidecars of one participant's image, mask and label map (their folders exist)."""
    _write_json(_sidecar(paths["T1w"]), t1w_sidecar(site))
    _write_json(
        _sidecar(paths["mask"]), {"Type": "Brain", "Description": "The simulation's brain mask, on the T1w's grid."}
    )
    _write_json(
        _sidecar(paths["labels"]),
        {"Description": "The simulation's exact label map (15 classes, see dseg.tsv), on the T1w's grid."},
    )


def _sidecar(image: Path) -> Path:
    """``sub-01_T1w.nii.gz`` -> ``sub-01_T1w.json``."""
    return image.with_name(image.name.removesuffix(".gz").removesuffix(".nii") + ".json")


def write_bids_files(
    folder: Path, sites: Sequence[Site], participants: Sequence[tuple[str, str, str]], description: str
) -> None:
    """The dataset-level files of the raw dataset and of its derivatives dataset.

    Args:
        folder: The dataset's root.
        sites: The simulated sites.
        participants: ``(label, site name, split)`` of every participant, in order.
        description: What made the data set (the command and its settings), for ``GeneratedBy``.
    """
    generated_by = [{"Name": "harmonizing-flows", "Version": __version__, "Description": description}]
    _write_json(
        folder / "dataset_description.json",
        {"Name": "hflow simulate: simulated multi-site T1w", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
         "GeneratedBy": generated_by},
    )  # fmt: skip
    rows = ["participant_id\tsite\tsplit", *(f"sub-{label}\t{site}\t{split}" for label, site, split in participants)]
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    _write_json(
        folder / "participants.json",
        {
            "participant_id": {"Description": "Simulated subject: the site's name (letters and digits) and a number"},
            "site": {
                "Description": "The simulated scanner site (hflow sites lists them)",
                "Levels": {s.name: s.description or s.name for s in sites},
            },
            "split": {
                "Description": "The subject's split for fitting and evaluation, drawn per site by the simulator",
                "Levels": {"train": "training", "val": "validation", "test": "test"},
            },
        },
    )
    (folder / ".bidsignore").write_text("simulation.json\nmontage.png\n", encoding="utf-8")
    (folder / "README.md").write_text(_readme(sites), encoding="utf-8")
    derivative = folder / "derivatives" / DERIVATIVE
    derivative.mkdir(parents=True, exist_ok=True)
    _write_json(
        derivative / "dataset_description.json",
        {"Name": "hflow simulate: brain masks and label maps", "BIDSVersion": BIDS_VERSION,
         "DatasetType": "derivative", "GeneratedBy": generated_by},
    )  # fmt: skip
    lines = ["index\tname", *(f"{i}\t{name}" for i, name in enumerate(CLASS_NAMES))]
    (derivative / "dseg.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _readme(sites: Sequence[Site]) -> str:
    listed = "\n".join(f"- `{s.name}`: {s.description or s.name}" for s in sites)
    return (
        "# Simulated multi-site T1-weighted MRI\n\n"
        "Made by `hflow simulate --layout bids` (harmonizing-flows): random deformations of one real brain, imaged "
        "by simulated scanners. Not data of any person.\n\n"
        f"Sites (the `site` column of participants.tsv):\n\n{listed}\n\n"
        "The sidecars' Manufacturer and ManufacturersModelName are illustrative: a vendor that typically runs the "
        "site's protocol. Brain masks and exact label maps are in `derivatives/simulation/`; every setting and "
        "random draw is in `simulation.json`.\n"
    )


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
