"""``hflow simulate``: a multi-site dataset with exact labels, written atomically.

Output folder::

    OUT/
      manifest.csv                   subject, site, image, mask, labels, split (paths relative to OUT)
      simulation.json                every setting and every parameter drawn, per subject
      montage.png                    one subject imaged at every site, and the sites' intensity histograms
      <site>/<subject>_T1w.nii.gz    uint8 image, 0..255, background 0, in the site's file orientation
      <site>/<subject>_mask.nii.gz   brain mask
      <site>/<subject>_labels.nii.gz the 15 classes of :mod:`harmonizing_flows.data.labels`

``layout="bids"`` (``hflow simulate --layout bids``) writes the same scans as a BIDS raw dataset instead, masks and
label maps as a derivatives dataset (see :mod:`harmonizing_flows.simulate.bids`).

Every random draw comes from a generator seeded by (seed, site, subject, purpose), so the same seed gives the same
bytes, and adding a site or subjects leaves the others unchanged. The montage's subject is a "travelling subject":
one extra anatomy imaged at every site, so that the panels differ only by scanner.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations

from harmonizing_flows import __version__
from harmonizing_flows.config import SimulationConfig, SplitConfig
from harmonizing_flows.data.datasets import Subject, split_counts, split_subjects, write_manifest
from harmonizing_flows.data.labels import to_classes
from harmonizing_flows.data.outputs import publish_folder
from harmonizing_flows.data.volume import save_nifti, to_plane
from harmonizing_flows.errors import ConfigError, InputError, OutputExistsError, system_errors
from harmonizing_flows.figures import site_montage
from harmonizing_flows.simulate import bids
from harmonizing_flows.simulate.anatomy import Anatomy, Grid, deform, load_anatomy, output_grid
from harmonizing_flows.simulate.scanner import acquire
from harmonizing_flows.simulate.sites import Site, resolve_sites, site_key

__all__ = ["LAYOUTS", "SimulationResult", "simulate"]

LAYOUTS = ("sites", "bids")
"""Output layouts: a folder per site with ``manifest.csv`` (the default), or a BIDS dataset."""

_ANATOMY, _IMAGING, _TRAVELLER = 0, 1, 2
_THALAMUS = (10, 49)


@dataclass(frozen=True)
class SimulationResult:
    """Where the simulation wrote its outputs.

    ``manifest`` is what the other commands take as data: ``manifest.csv``, or with the BIDS layout the dataset's
    root. ``subjects`` are the records that reading it gives (BIDS: ``sub-<label>``, the participant set).
    """

    folder: Path
    manifest: Path
    parameters: Path
    montage: Path
    subjects: list[Subject]
    layout: str = "sites"


def _rng(seed: int, site: str, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, site_key(site), index, purpose]))


def _oriented(data: np.ndarray, grid: Grid, codes: str) -> nib.Nifti1Image:
    """A NIfTI image of RAS-ordered ``data`` stored in the axis order ``codes`` (e.g. ``"LAS"``)."""
    ornt = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientations.axcodes2ornt(codes))
    array = np.ascontiguousarray(orientations.apply_orientation(data, ornt))
    affine = grid.affine @ orientations.inv_ornt_aff(ornt, data.shape)
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    return img


def _prepare_output(out: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(out, "already holds files; pass --overwrite to replace an earlier simulation")
        if not (out / "simulation.json").is_file():
            raise OutputExistsError(
                out, "holds files that are not an hflow simulation (no simulation.json); not replacing it"
            )
    resolved = out.resolve()
    for p in inputs:
        if resolved in p.resolve().parents:
            raise InputError(p, f"is inside the output folder {out}, which the simulation would replace")


def _montage_slice(labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The coronal slice through the middle of the thalamus (or of the brain), in display order."""
    planes = to_plane(np.isin(labels, _THALAMUS), "coronal")
    counts = planes.sum(axis=(1, 2))
    if counts.max() == 0:
        counts = to_plane(labels > 0, "coronal").sum(axis=(1, 2))
    index = int(np.flatnonzero(counts)[len(np.flatnonzero(counts)) // 2])
    return np.ascontiguousarray(to_plane(image, "coronal")[index])


@system_errors
def simulate(
    out: str | Path,
    *,
    sites: Sequence[str] | None = None,
    sites_file: str | Path | None = None,
    config: SimulationConfig | None = None,
    anatomy: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    layout: str = "sites",
) -> SimulationResult:
    """Simulate a multi-site dataset into ``out`` (see the module docstring for what is written).

    Args:
        out: Output folder; must not exist or be empty, or hold an earlier simulation and ``overwrite`` be set.
        sites: Site names (built-in or from ``sites_file``); default: the file's sites, else the built-in ones.
        sites_file: A TOML file of site definitions (see :mod:`harmonizing_flows.simulate.sites`).
        config: Simulation settings (subjects per site, voxel size, seed, ...).
        anatomy: An aseg-style label map to deform instead of fsaverage's.
        overwrite: Replace an earlier simulation in ``out`` (only once the new one is complete).
        progress: Show a progress bar.
        layout: ``"sites"``: a folder per site and ``manifest.csv``; ``"bids"``: a BIDS raw dataset with the masks
            and label maps under ``derivatives/simulation/`` (:mod:`harmonizing_flows.simulate.bids`).

    Raises:
        ConfigError: An unknown layout.
        InputError: Unknown sites, a bad site file or anatomy, too few subjects per site to split, site names that
            give no BIDS participant label or the same one.
        OutputExistsError: ``out`` holds files and ``overwrite`` is not set, or holds something else.
    """
    from harmonizing_flows.progress import progress_bar

    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    config = config or SimulationConfig()
    out = Path(out)
    inputs = [Path(p) for p in (sites_file, anatomy) if p is not None]
    _prepare_output(out, overwrite, inputs)
    chosen = resolve_sites(sites, sites_file)
    labels = bids.participant_labels(chosen, config.subjects_per_site) if layout == "bids" else None
    split_config = SplitConfig(fractions=config.split_fractions, seed=config.seed)
    if split_counts(config.subjects_per_site, split_config.fractions)[0] < 1:
        raise InputError(
            None,
            f"{config.subjects_per_site} subject(s) per site are too few to split into train/val/test; use at least 3",
        )
    reference = load_anatomy(anatomy, mask_dilation_mm=config.mask_dilation_mm)
    grid = output_grid(reference, config)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result = _simulate_into(tmp, chosen, config, reference, grid, split_config, progress, progress_bar, labels)
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    subjects = [
        replace(s, image=out / s.image.relative_to(tmp), mask=out / s.mask.relative_to(tmp),  # type: ignore[union-attr]
                labels=out / s.labels.relative_to(tmp))  # type: ignore[union-attr]
        for s in result
    ]  # fmt: skip
    data = out if layout == "bids" else out / "manifest.csv"
    return SimulationResult(out, data, out / "simulation.json", out / "montage.png", subjects, layout)


def _simulate_into(
    folder: Path,
    sites: Sequence[Site],
    config: SimulationConfig,
    reference: Anatomy,
    grid: Grid,
    split_config: SplitConfig,
    progress: bool,
    progress_bar: Any,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> list[Subject]:
    """Simulate into ``folder``; ``labels`` (site -> BIDS participant labels) asks for the BIDS layout."""
    subjects: list[Subject] = []
    records: list[dict[str, Any]] = []
    histograms = {s.name: np.zeros(256, dtype=np.int64) for s in sites}
    total = len(sites) * config.subjects_per_site + len(sites)
    with progress_bar(total=total, desc="simulating", unit="scan", enabled=progress) as bar:
        for site in sites:
            if labels is None:
                (folder / site.name).mkdir()
            for i in range(config.subjects_per_site):
                bar.set_postfix_str(site.name, refresh=False)
                name = f"{site.name}-{i + 1:03d}"
                aseg, mask, anatomy_draws = deform(reference, grid, config, _rng(config.seed, site.name, i, _ANATOMY))
                image, imaging_draws = acquire(aseg, mask, site, config, _rng(config.seed, site.name, i, _IMAGING))
                histograms[site.name] += np.bincount(image[mask], minlength=256)
                paths = _scan_paths(folder, site.name, name, None if labels is None else labels[site.name][i])
                save_nifti(_oriented(image, grid, site.orientation), paths["T1w"])
                save_nifti(_oriented(mask.astype(np.uint8), grid, site.orientation), paths["mask"])
                save_nifti(_oriented(to_classes(aseg, source="aseg"), grid, site.orientation), paths["labels"])
                subjects.append(Subject(name, site.name, paths["T1w"], paths["mask"], paths["labels"]))
                records.append({"subject": name, "site": site.name, "anatomy": anatomy_draws, "imaging": imaging_draws})
                if labels is not None:
                    bids.write_scan_sidecars(paths, site)
                    records[-1]["participant_id"] = f"sub-{labels[site.name][i]}"
                bar.update()

        # The travelling subject: one more anatomy, imaged at every site, for the montage.
        aseg, mask, traveller_draws = deform(reference, grid, config, _rng(config.seed, "travelling", 0, _ANATOMY))
        slices, captions, traveller_imaging = {}, {}, {}
        for site in sites:
            bar.set_postfix_str(f"montage {site.name}", refresh=False)
            image, draws = acquire(aseg, mask, site, config, _rng(config.seed, site.name, 0, _TRAVELLER))
            slices[site.name] = _montage_slice(aseg, image)
            captions[site.name] = f"{site.field_strength:g} T {site.sequence}, SNR {site.snr:g}"
            traveller_imaging[site.name] = draws
            bar.update()

    subjects = split_subjects(subjects, split_config)
    split_of = {s.subject: s.split for s in subjects}
    for r in records:
        r["split"] = split_of[r["subject"]]
    if labels is None:
        write_manifest(subjects, folder / "manifest.csv")
    else:
        ids = {r["subject"]: r["participant_id"] for r in records}
        subjects = _bids_records(folder, sites, config, subjects, ids)
    site_montage(
        slices, histograms, folder / "montage.png",
        title=(
            f"One subject at every site (coronal), and each site's histogram over {config.subjects_per_site} subjects"
        ),
        captions=captions,
    )  # fmt: skip
    parameters = {
        "generator": f"harmonizing-flows {__version__}, hflow simulate",
        "config": asdict(config),
        "split": asdict(split_config),
        "anatomy": reference.name,
        "grid": {"shape_ras": list(grid.shape), "affine_ras": grid.affine.tolist()},
        "sites": {s.name: _site_record(s, scanner=labels is not None) for s in sites},
        "subjects": records,
        "travelling_subject": {"anatomy": traveller_draws, "imaging": traveller_imaging},
    }
    if labels is not None:
        parameters["layout"] = "bids"
    (folder / "simulation.json").write_text(json.dumps(parameters, separators=(",", ":")) + "\n", encoding="utf-8")
    return subjects


def _scan_paths(folder: Path, site: str, name: str, label: str | None) -> dict[str, Path]:
    """Where one subject's image, mask and label map go: ``<site>/<name>_*.nii.gz``, or BIDS paths for ``label``."""
    if label is None:
        return {kind: folder / site / f"{name}_{kind}.nii.gz" for kind in ("T1w", "mask", "labels")}
    paths = bids.scan_paths(folder, label)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    return paths


def _site_record(site: Site, *, scanner: bool) -> dict[str, Any]:
    """A site's settings for simulation.json. The scanner's name (manufacturer, model) changes no voxel and is
    written only where the BIDS sidecars use it, so that the default layout's simulation.json stays as it was."""
    record = site.to_dict()
    if not scanner:
        del record["manufacturer"], record["model"]
    return record


def _bids_records(
    folder: Path,
    sites: Sequence[Site],
    config: SimulationConfig,
    subjects: Sequence[Subject],
    ids: Mapping[str, str],
) -> list[Subject]:
    """Write the BIDS dataset files; the subjects renamed as reading the dataset names them (``ids``: the
    simulator's name -> ``sub-<label>``)."""
    renamed = [replace(s, subject=ids[s.subject], participant=ids[s.subject]) for s in subjects]
    rows = [(s.subject.removeprefix("sub-"), s.site, s.split or "") for s in renamed]
    description = (
        f"hflow simulate --layout bids: {config.subjects_per_site} subjects per site at {config.voxel_size:g} mm, "
        f"seed {config.seed}"
    )
    bids.write_bids_files(folder, sites, sorted(rows), description)
    return renamed
