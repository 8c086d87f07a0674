"""The BIDS app's two analysis levels.

``group`` fits the model on the source site's scans (80 % to train, the rest, three at least, to validate: the
source bpd that adaptation aims for and the QC reference), under ``OUT_DIR/models/source``. ``participant``
adapts the model once per target site, on every T1w scan of that site in the dataset, and keeps the adapted model
under ``OUT_DIR/models/site-<site>``: later calls, and new scans of a known site, reuse it. Then it harmonizes
every T1w scan of the chosen participants (a source-site scan with the fitted harmonizer), scores each
(:mod:`.qc`), and writes the derivatives, the QC table and the reports.

Every input a call reads is checked before it writes anything. A scan is done when its image and its sidecar
exist (the sidecar written last, each atomically), so an interrupted ``participant`` run resumes where it stopped
and never leaves half a NIfTI; a scan harmonized by another model than the current one is done again, and until
then left out of the QC table and the reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonizing_flows import __version__
from harmonizing_flows.bids.image_quality import image_quality
from harmonizing_flows.bids.layout import Scan, check_locations, read_scans, select_participants
from harmonizing_flows.bids.qc import Reference, ScanScores, qc_row, score_scan, site_outliers, write_qc_table
from harmonizing_flows.config import SplitConfig
from harmonizing_flows.data.datasets import Subject, split_subjects, write_manifest
from harmonizing_flows.data.outputs import write_text
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.data.volume import Volume
from harmonizing_flows.errors import InputError, OutputExistsError, system_errors
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.store import Model
from harmonizing_flows.profiles import Profile

__all__ = ["MIN_SOURCE_PARTICIPANTS", "group", "participant"]

MIN_SOURCE_PARTICIPANTS = 6
"""Participants the source site needs: three to train on and three to validate (the QC reference's spread)."""
_VALIDATION_SHARE, _MIN_VALIDATION = 0.2, 3
BIDS_VERSION = "1.9.0"
Log = Callable[[str], None]


def site_folder(site: str) -> str:
    """A site's model folder name: ``site-<name>`` for a lowercase name of letters, digits, dots and dashes;
    otherwise a cleaned name plus a hash of the exact one, so that no name escapes ``models/`` and no two sites
    share a folder on a case-insensitive file system."""
    safe = re.sub(r"[^a-z0-9.-]+", "-", site.lower()).strip(".-") or "site"
    if safe != site:
        safe += "-" + hashlib.sha256(site.encode()).hexdigest()[:8]
    return f"site-{safe}"


@dataclass(frozen=True)
class Outputs:
    """Where the app keeps what it makes in ``OUT_DIR``."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def source_model(self) -> Path:
        return self.models / "source"

    @property
    def reference(self) -> Path:
        return self.models / "qc_reference.json"

    @property
    def settings(self) -> Path:
        """The group level's choices that the participant level must share (source site, site column)."""
        return self.models / "bids.json"

    def site_model(self, site: str) -> Path:
        return self.models / site_folder(site)

    def scans_list(self, name: str) -> Path:
        """Which scans a model was fitted or adapted on (a manifest)."""
        return self.models / "scans" / f"{name}.csv"

    @property
    def qc_table(self) -> Path:
        return self.root / "group_T1w_qc.tsv"


def _checksum(folder: Path) -> str:
    """The SHA-256 of a model folder's weights (every ``.safetensors`` file, by name): what its outputs and its
    QC reference depend on (``model.json`` is left out: the app notes the source model in it)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()


def _write_json(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(document, indent=2, default=_plain, allow_nan=False) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def write_description(out: Outputs, bids_dir: Path, command: str) -> None:
    """``dataset_description.json`` of the derivatives, with this command added to its GeneratedBy."""
    path = out.root / "dataset_description.json"
    document = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    generated = [g for g in document.get("GeneratedBy", []) if isinstance(g, dict)]
    entry = {"Name": "harmonizing-flows", "Version": __version__, "Description": command or "harmonizing-flows"}
    if entry not in generated:
        generated.append(entry)
    document.update(
        Name="harmonizing-flows: harmonized T1w images",
        BIDSVersion=BIDS_VERSION,
        DatasetType="derivative",
        GeneratedBy=generated,
        SourceDatasets=[{"URL": bids_dir.resolve().as_uri()}],
        DatasetLinks={"raw": bids_dir.resolve().as_uri()},
    )
    _write_json(path, document)


def _check_headers(scans: Sequence[Scan]) -> None:
    """Read every scan's header (cheap): a broken file stops the call before it writes anything."""
    from harmonizing_flows.data.volume import check_volume

    for scan in scans:
        check_volume(scan.subject.image, scan.subject.mask)


# --------------------------------------------------------------------------------------------- group


@system_errors
def group(
    bids_dir: str | Path,
    out_dir: str | Path,
    profile: Profile,
    *,
    source_site: str,
    site_column: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    log: Log = print,
) -> Path:
    """Fit the model on the source site's T1w scans and measure the QC reference; returns the model folder.

    A model of the same source site in ``OUT_DIR`` is kept (``overwrite`` refits it and removes the models
    adapted from the old one); an interrupted fit resumes from its checkpoints.

    Raises:
        InputError: Not a BIDS dataset, ``OUT_DIR`` inside it, no T1w scans, a scan without a site or unreadable,
            an unknown source site, or too few source participants.
        ConfigError: Adaptation settings the participant level cannot run (the entropy rule needs a segmenter).
        OutputExistsError: ``OUT_DIR`` holds a model of another source site and ``overwrite`` is not set.
    """
    from harmonizing_flows.method.adaptation import choose_settings
    from harmonizing_flows.method.store import load_model
    from harmonizing_flows.method.training import fit

    bids_dir, out = Path(bids_dir), Outputs(Path(out_dir))
    check_locations(bids_dir, out.root)
    source = _source_scans(read_scans(bids_dir, site_column), source_site, bids_dir)
    _check_headers(source)
    choose_settings(profile.adapt)  # refuses now what adaptation could not run later
    fitted = out.source_model / "model.json"
    if fitted.is_file() and not overwrite:
        site = json.loads(fitted.read_text(encoding="utf-8")).get("source_site")
        if site != source_site:
            raise OutputExistsError(
                out.source_model,
                f"holds a model of source site {site!r}; pass --overwrite to fit one on {source_site!r} (the models "
                "adapted from it are removed)",
            )
        log(f"source model of {source_site} already fitted: {out.source_model} (--overwrite refits it)")
    else:
        out.reference.unlink(missing_ok=True)  # measured on the model about to be replaced
        manifest = out.scans_list("source")
        manifest.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(_split(source), manifest)
        log(f"fitting on {len(source)} scans of {source_site} ...")
        fit(manifest, out.source_model, profile, site=source_site, device=device, resume=not overwrite,
            overwrite=overwrite, progress=progress)  # fmt: skip
        for folder in out.models.glob("site-*/"):  # adapted from the replaced model
            shutil.rmtree(folder)
    _write_json(out.settings, {"source_site": source_site, "site_column": site_column})
    checksum = _checksum(out.source_model)
    if not out.reference.is_file() or json.loads(out.reference.read_text(encoding="utf-8")).get("model") != checksum:
        _measure_reference(load_model(out.source_model), checksum, source, out, device, progress)
    write_description(out, bids_dir, command)
    return out.source_model


def _source_scans(scans: Sequence[Scan], source_site: str, bids_dir: Path) -> list[Scan]:
    sites = sorted({s.site for s in scans})
    if source_site not in sites:
        raise InputError(bids_dir, f"has no site {source_site!r} (sites: {', '.join(sites)})")
    source = [s for s in scans if s.site == source_site]
    people = {s.participant for s in source}
    if len(people) < MIN_SOURCE_PARTICIPANTS:
        raise InputError(
            bids_dir,
            f"source site {source_site!r} has T1w scans of {len(people)} participant(s); fitting needs "
            f"{MIN_SOURCE_PARTICIPANTS} at least (three to train on, three to validate)",
        )
    return source


def _split(source: Sequence[Scan]) -> list[Subject]:
    """The source scans split by participant into training and validation (no test split: the app uses all)."""
    n = len({s.participant for s in source})
    val = max(_MIN_VALIDATION, round(_VALIDATION_SHARE * n)) / n
    return split_subjects([s.subject for s in source], SplitConfig(fractions=(1.0 - val, val, 0.0)), keep=False)


def _measure_reference(
    model: Model, checksum: str, source: Sequence[Scan], out: Outputs, device: str | None, progress: bool
) -> None:
    """Score the source validation scans through the fitted harmonizer (and restorer): the QC reference."""
    from harmonizing_flows.method.distributed import resolve_device
    from harmonizing_flows.progress import progress_bar

    validation = set(model.metadata["source_subjects"]["val"])
    scans = [s for s in source if s.subject.subject in validation]
    resolved = resolve_device(device)
    harmonizer, flow = model.output().to(resolved).eval(), model.flow.to(resolved).eval()
    names, bpd, counts = [], [], np.zeros(256, dtype=np.int64)
    for scan in progress_bar(scans, desc="QC reference", unit="scan", enabled=progress):
        scores = score_scan(harmonizer, flow, _read(scan, model.profile)[1], resolved, seed=model.profile.seed)
        names.append(scan.subject.subject)
        bpd.append(scores.bpd_after)
        counts += scores.counts_before
    reference = Reference.from_scores(names, bpd)
    _write_json(out.reference, {**reference.to_json(), "source_site": model.source_site, "model": checksum,
                                "source_counts": counts})  # fmt: skip


def _read(scan: Scan, profile: Profile) -> tuple[Volume, Slices]:
    """A scan's volume (decoded once) and its slices on the model's grid; an empty brain is refused."""
    from harmonizing_flows.data.volume import load_volume, slice_volume

    volume = load_volume(scan.subject.image, scan.subject.mask)
    sliced = slice_volume(volume, profile.slices)
    if not len(sliced.brain_rows()):
        raise InputError(scan.subject.image, "has no brain voxels (its mask is empty)")
    return volume, sliced


# --------------------------------------------------------------------------------------------- participant


@dataclass
class _SiteModel:
    """The harmonizer used for one site's scans, and how it came to be."""

    folder: Path
    harmonizer: Harmonizer
    checksum: str
    kept_step: int | None
    reason: str
    guard: str | None


@system_errors
def participant(
    bids_dir: str | Path,
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    site_column: str | None = None,
    device: str | None = None,
    progress: bool = True,
    command: str = "",
    log: Log = print,
) -> list[Path]:
    """Adapt to each target site not adapted to yet, harmonize and score every T1w scan of the participants
    ``labels`` (all by default); returns the harmonized images written (not those done before).

    Raises:
        InputError: As :func:`group`, a participant label that does not exist, another site column than the
            group level's, or no current source model in ``OUT_DIR`` (run the group level first).
    """
    from harmonizing_flows.method.distributed import resolve_device
    from harmonizing_flows.method.store import load_model
    from harmonizing_flows.progress import progress_bar

    bids_dir, out = Path(bids_dir), Outputs(Path(out_dir))
    check_locations(bids_dir, out.root)
    settings = _group_settings(out, site_column)
    scans = read_scans(bids_dir, settings["site_column"] if settings else site_column)
    chosen = select_participants(scans, labels, bids_dir)  # the dataset's problems first, then the group level's
    if settings is None:
        raise InputError(out.root, "holds no fitted source model; run the group level first: "
                                   f"hflow bids {bids_dir} {out.root} group --source-site SITE")  # fmt: skip
    source_checksum = _checksum(out.source_model)
    reference = json.loads(out.reference.read_text(encoding="utf-8"))
    if reference.get("model") != source_checksum:
        raise InputError(out.reference, "was measured on another source model; run the group level again")
    to_adapt = [s for s in sorted({s.site for s in chosen}) if s != settings["source_site"]
                and not _adapted_from(out.site_model(s), s, source_checksum)]  # fmt: skip
    _check_headers([*chosen, *(s for s in scans if s.site in to_adapt and s not in chosen)])
    model = load_model(out.source_model)
    resolved = resolve_device(device)
    _remove_leftovers(out.root)
    write_description(out, bids_dir, command)
    models = {site: _site_model(site, model, source_checksum, scans, out, resolved, progress, log)
              for site in sorted({s.site for s in chosen})}  # fmt: skip
    flow = model.flow.to(resolved).eval()
    written = []
    for scan in progress_bar(chosen, desc="harmonizing", unit="scan", enabled=progress):
        if not _done(scan, out, models[scan.site].checksum):
            written.append(_harmonize_scan(scan, models[scan.site], flow, model, Reference.from_json(reference),
                                           out, resolved))  # fmt: skip
    sidecars = _with_site_outliers(current_sidecars(out, bids_dir, log), Reference.from_json(reference).z_flag)
    write_qc_table([s["QC"] for s in sidecars.values()], out.qc_table)
    from harmonizing_flows.bids.report import write_reports

    write_reports(out.root, sidecars, sorted({s.participant for s in chosen}), model.source_site, reference)
    flagged = sum(bool(s["QC"]["flagged"]) for s in sidecars.values())
    log(f"harmonized {len(written)} scan(s) ({len(chosen) - len(written)} done before); QC: {flagged} of "
        f"{len(sidecars)} scan(s) flagged; table {out.qc_table}")  # fmt: skip
    return written


def _group_settings(out: Outputs, site_column: str | None) -> dict[str, Any] | None:
    """The group level's choices (None before it ran); a site column other than its own is refused, since the
    sites would be named otherwise."""
    if not (out.source_model / "model.json").is_file() or not out.reference.is_file() or not out.settings.is_file():
        return None
    settings = json.loads(out.settings.read_text(encoding="utf-8"))
    if site_column is not None and site_column != settings["site_column"]:
        raise InputError(out.settings, f"the group level named sites by column {settings['site_column']!r}, not "
                                       f"{site_column!r}; give the same --site-column, or none")  # fmt: skip
    return settings


def _adapted_from(folder: Path, site: str, source_checksum: str) -> bool:
    """Whether ``folder`` holds a model adapted to ``site`` from the current source model."""
    try:
        adapted = json.loads((folder / "model.json").read_text(encoding="utf-8"))["adaptation"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return adapted.get("source_model") == source_checksum and adapted.get("target_site") == site


def _remove_leftovers(root: Path) -> None:
    """Delete the temporary files of an interrupted run (hidden files beside the outputs, never renamed)."""
    for path in root.glob("sub-*/**/.*"):
        if path.is_file() and path.name.endswith((".partial", ".nii.gz", ".nii", ".png")):
            path.unlink()


def _done(scan: Scan, out: Outputs, checksum: str) -> bool:
    """Whether the scan's image and sidecar exist, made by the model with ``checksum``."""
    sidecar = scan.output(out.root, "T1w.json")
    if not sidecar.is_file() or not scan.output(out.root, "T1w.nii.gz").is_file():
        return False
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("ModelChecksum") == checksum
    except (OSError, ValueError, AttributeError):
        return False


def _site_model(site: str, model: Model, source_checksum: str, scans: Sequence[Scan], out: Outputs,
                device: torch.device, progress: bool, log: Log) -> _SiteModel:  # fmt: skip
    """The harmonizer for ``site``'s scans: the fitted one for the source site; for another site the adapted one,
    adapting now (on all of the site's scans in the dataset) if no earlier call did."""
    from harmonizing_flows.method.adaptation import adapt, choose_settings
    from harmonizing_flows.method.store import load_harmonizer

    if site == model.source_site:
        return _SiteModel(out.source_model, model.output(), source_checksum, None, "source site: not adapted", None)
    folder = out.site_model(site)
    if _adapted_from(folder, site, source_checksum):
        log(f"site {site}: reusing the adapted model {folder}")
    else:
        members = [s.subject for s in scans if s.site == site]
        manifest = out.scans_list(folder.name)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(members, manifest)
        log(f"adapting to site {site} on its {len(members)} scan(s) ...")
        adapt(out.source_model, manifest, folder, config=choose_settings(model.profile.adapt), site=site,
              device=str(device), overwrite=folder.exists(), progress=progress)  # fmt: skip
        document = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        document["adaptation"]["source_model"] = source_checksum  # a refitted source model invalidates it
        write_text(folder / "model.json", json.dumps(document, indent=2) + "\n")
    adapted = json.loads((folder / "model.json").read_text(encoding="utf-8"))["adaptation"]
    harmonizer, _, _ = load_harmonizer(folder)
    return _SiteModel(folder, harmonizer, _checksum(folder), adapted.get("kept_step"),
                      adapted.get("reason", ""), adapted.get("guard"))  # fmt: skip


def _harmonize_scan(scan: Scan, site_model: _SiteModel, flow: torch.nn.Module, model: Model, reference: Reference,
                    out: Outputs, device: torch.device) -> Path:  # fmt: skip
    """Harmonize, score and write one scan: the mosaic, the image, then the sidecar (last: it marks it done)."""
    from harmonizing_flows.bids.report import mosaic_figure
    from harmonizing_flows.data.volume import save_nifti
    from harmonizing_flows.harmonize import harmonize_volume

    volume, sliced = _read(scan, model.profile)
    harmonizer = site_model.harmonizer.to(device).eval()
    scores = score_scan(harmonizer, flow, sliced, device, seed=model.profile.seed)
    session = scan.entities.get("ses")
    identity = {"participant_id": f"sub-{scan.participant}", "session_id": f"ses-{session}" if session else None,
                "scan": scan.relative.as_posix(), "site": scan.site, "source_site": model.source_site}  # fmt: skip
    row = qc_row(
        identity, scores, reference, image_quality(volume), kept_step=site_model.kept_step, guard=site_model.guard
    )
    figure = scan.figure(out.root)
    figure.parent.mkdir(parents=True, exist_ok=True)
    mosaic_figure(sliced, scores.harmonized, figure, title=f"{scan.relative.name}: {scan.site} -> "
                  f"{model.source_site}", plane=model.profile.slices.axis)  # fmt: skip
    image = harmonize_volume(harmonizer, volume, slices=model.profile.slices, device=device)
    image.header["descrip"] = f"harmonized by harmonizing-flows to {model.source_site}"[:79]
    path = scan.output(out.root, "T1w.nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(image, path, overwrite=True)  # an image without its sidecar is a leftover: replaced
    _write_json(scan.output(out.root, "T1w.json"), _sidecar(scan, site_model, model, row, scores, out))
    return path


def _sidecar(scan: Scan, site_model: _SiteModel, model: Model, row: dict, scores: ScanScores, out: Outputs) -> dict:
    return {
        "Description": "T1w image harmonized to the source site by harmonizing-flows (intensities on 0..255)",
        "Sources": [scan.bids_uri],
        "SourceSite": model.source_site,
        "TargetSite": scan.site,
        "Model": site_model.folder.relative_to(out.root).as_posix(),
        "ModelChecksum": site_model.checksum,
        "Adaptation": {"KeptStep": site_model.kept_step, "Reason": site_model.reason, "Guard": site_model.guard},
        "QC": row,
        "Histogram": {"before": scores.counts_before, "after": scores.counts_after},
        "Mosaic": Path(os.path.relpath(scan.figure(out.root), scan.output(out.root, "T1w.json").parent)).as_posix(),
    }


def _with_site_outliers(sidecars: dict[Path, dict[str, Any]], z_flag: float) -> dict[Path, dict[str, Any]]:
    """The sidecars with their QC rows' within-site scores recomputed over every current scan; a sidecar whose row
    changed is rewritten (atomically), so that it and the table agree."""
    rows = site_outliers([s["QC"] for s in sidecars.values()], z_flag)
    for (path, sidecar), row in zip(sidecars.items(), rows, strict=True):
        if row != sidecar["QC"]:
            sidecar["QC"] = row
            _write_json(path, sidecar)
    return sidecars


def current_sidecars(out: Outputs, bids_dir: Path, log: Log = print) -> dict[Path, dict[str, Any]]:
    """The sidecars of every scan harmonized by a current model whose raw scan still exists, in path order: what
    the QC table and the reports show. Sidecars of a replaced model or of a removed scan are left out (and
    counted in the log)."""
    models = [out.source_model, *out.models.glob("site-*/")]
    current = {_checksum(m) for m in models if (m / "harmonizer.safetensors").is_file()}
    found, stale = {}, 0
    for path in sorted(out.root.glob("sub-*/**/anat/*_desc-harmonized_T1w.json")):
        try:
            sidecar = json.loads(path.read_text(encoding="utf-8"))
            raw = bids_dir / sidecar["Sources"][0].removeprefix("bids:raw:")
            keep = sidecar["ModelChecksum"] in current and raw.is_file() and "QC" in sidecar
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise InputError(path, f"is not a sidecar this tool wrote ({exc}); remove it to redo its scan") from exc
        if keep:
            found[path] = sidecar
        else:
            stale += 1
    if stale:
        log(f"left out of the QC table and reports: {stale} scan(s) harmonized by a replaced model or removed from "
            "the dataset (run the participant level on them to redo them)")  # fmt: skip
    return found
