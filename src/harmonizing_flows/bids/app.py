"""The BIDS app's two analysis levels.

``group`` fits the model on the source site's scans (80 % to train, the rest, three at least, to validate: the
source bpd that adaptation aims for and the QC reference), under ``OUT_DIR/models/source``. ``participant``
adapts the model once per target site, on every T1w scan of that site in the dataset, and keeps the adapted model
under ``OUT_DIR/models/site-<site>``: later calls, and new scans of a known site, reuse it. Then it harmonizes
every T1w scan of the chosen participants (a source-site scan with the fitted harmonizer), scores each
(:mod:`.qc`), and writes the derivatives, the QC table and the reports.

Every input is checked before anything is written. A scan is done when its sidecar exists (written after its
image, each atomically), so an interrupted ``participant`` run resumes where it stopped and never leaves half a
NIfTI; a scan harmonized by another model than the current one is done again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonizing_flows import __version__
from harmonizing_flows.bids.layout import Scan, check_locations, read_scans, select_participants
from harmonizing_flows.bids.qc import Reference, ScanScores, qc_row, score_scan, write_qc_table
from harmonizing_flows.config import SplitConfig
from harmonizing_flows.data.datasets import split_subjects, write_manifest
from harmonizing_flows.data.outputs import write_text
from harmonizing_flows.errors import InputError, OutputExistsError, system_errors
from harmonizing_flows.profiles import Profile

__all__ = ["MIN_SOURCE_PARTICIPANTS", "group", "participant"]

MIN_SOURCE_PARTICIPANTS = 6
"""Participants the source site needs: three to train on and three to validate (the QC reference's spread)."""
_VALIDATION_SHARE, _MIN_VALIDATION = 0.2, 3
BIDS_VERSION = "1.9.0"


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

    def site_model(self, site: str) -> Path:
        return self.models / f"site-{site}"

    @property
    def qc_table(self) -> Path:
        return self.root / "group_T1w_qc.tsv"


def _checksum(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(document, indent=2, default=_plain) + "\n")


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
    log: Callable[[str], None] = print,
) -> Path:
    """Fit the model on the source site's T1w scans and measure the QC reference; returns the model folder.

    A model of the same source site in ``OUT_DIR`` is kept (``overwrite`` refits it); an interrupted fit resumes
    from its checkpoints.

    Raises:
        InputError: Not a BIDS dataset, ``OUT_DIR`` inside it, no T1w scans, a scan without a site, an unknown
            source site, or too few source participants.
        OutputExistsError: ``OUT_DIR`` holds a model of another source site and ``overwrite`` is not set.
    """
    from harmonizing_flows.method.store import load_model
    from harmonizing_flows.method.training import fit

    bids_dir, out = Path(bids_dir), Outputs(Path(out_dir))
    check_locations(bids_dir, out.root)
    scans = read_scans(bids_dir, site_column)
    source = _source_scans(scans, source_site, bids_dir)
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
        out.models.mkdir(parents=True, exist_ok=True)
        manifest = write_manifest(_split(source), out.models / "source_scans.csv")
        log(f"fitting on {len(source)} scans of {source_site} ...")
        fit(manifest, out.source_model, profile, site=source_site, device=device, resume=not overwrite,
            overwrite=overwrite, progress=progress)  # fmt: skip
        if overwrite:
            _forget_adapted(out)
        out.reference.unlink(missing_ok=True)
    if not out.reference.is_file():
        model = load_model(out.source_model)
        _measure_reference(model, source, out, device, progress)
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


def _split(source: Sequence[Scan]) -> list:
    """The source scans split by participant into training and validation (no test split: the app uses all)."""
    n = len({s.participant for s in source})
    val = max(_MIN_VALIDATION, round(_VALIDATION_SHARE * n)) / n
    return split_subjects([s.subject for s in source], SplitConfig(fractions=(1.0 - val, val, 0.0)), keep=False)


def _forget_adapted(out: Outputs) -> None:
    import shutil

    for folder in out.models.glob("site-*"):
        shutil.rmtree(folder)


def _measure_reference(model: Any, source: Sequence[Scan], out: Outputs, device: str | None, progress: bool) -> None:
    """Score the source validation scans through the fitted harmonizer: the QC reference."""
    from harmonizing_flows.method.distributed import resolve_device
    from harmonizing_flows.progress import progress_bar

    validation = set(model.metadata["source_subjects"]["val"])
    scans = [s for s in source if s.subject.subject in validation]
    resolved = resolve_device(device)
    harmonizer, flow = model.harmonizer.to(resolved).eval(), model.flow.to(resolved).eval()
    names, bpd, counts = [], [], np.zeros(256, dtype=np.int64)
    for scan in progress_bar(scans, desc="QC reference", unit="scan", enabled=progress):
        sliced = _slices(scan, model.profile)
        scores = score_scan(harmonizer, flow, sliced, resolved, seed=model.profile.seed)
        names.append(scan.subject.subject)
        bpd.append(scores.bpd_after)
        counts += scores.counts_before
    reference = Reference.from_scores(names, bpd)
    _write_json(out.reference, {**reference.to_json(), "source_site": model.source_site,
                                "model": _checksum(out.source_model / "harmonizer.safetensors"),
                                "source_counts": counts})  # fmt: skip


def _slices(scan: Scan, profile: Profile):
    from harmonizing_flows.data.volume import load_volume, slice_volume

    return slice_volume(load_volume(scan.subject.image, scan.subject.mask), profile.slices)


# --------------------------------------------------------------------------------------------- participant


@dataclass
class _SiteModel:
    """The harmonizer used for one site's scans, and how it came to be."""

    folder: Path
    harmonizer: Any
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
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Adapt to each target site not adapted to yet, harmonize and score every T1w scan of the participants
    ``labels`` (all by default); returns the harmonized images written (not those done before).

    Raises:
        InputError: As :func:`group`, a participant label that does not exist, an unreadable scan, or no source
            model in ``OUT_DIR`` (run the group level first).
    """
    from harmonizing_flows.data.volume import check_volume
    from harmonizing_flows.method.distributed import resolve_device
    from harmonizing_flows.method.store import load_model

    bids_dir, out = Path(bids_dir), Outputs(Path(out_dir))
    check_locations(bids_dir, out.root)
    scans = read_scans(bids_dir, site_column)
    chosen = select_participants(scans, labels, bids_dir)
    if not (out.source_model / "model.json").is_file() or not out.reference.is_file():
        raise InputError(out.root, "holds no fitted source model; run the group level first: "
                                   f"hflow bids {bids_dir} {out.root} group --source-site SITE")  # fmt: skip
    for scan in chosen:  # every header before anything is written
        check_volume(scan.subject.image, scan.subject.mask)
    model = load_model(out.source_model)
    reference = Reference.from_json(json.loads(out.reference.read_text(encoding="utf-8")))
    resolved = resolve_device(device)
    write_description(out, bids_dir, command)
    models = {site: _site_model(site, model, scans, out, resolved, progress, log)
              for site in sorted({s.site for s in chosen})}  # fmt: skip
    flow = model.flow.to(resolved).eval()
    written = []
    from harmonizing_flows.progress import progress_bar

    for scan in progress_bar(chosen, desc="harmonizing", unit="scan", enabled=progress):
        site_model = models[scan.site]
        sidecar = scan.output(out.root, "T1w.json")
        if sidecar.is_file() and _done_with(sidecar, site_model.checksum):
            continue
        written.append(_harmonize_scan(scan, site_model, flow, model, reference, out, resolved))
    rows = collect_rows(out.root)
    write_qc_table(rows, out.qc_table)
    from harmonizing_flows.bids.report import write_reports

    write_reports(out.root, sorted({s.participant for s in chosen}), model.source_site)
    flagged = sum(bool(r["flagged"]) for r in rows)
    log(f"harmonized {len(written)} scan(s) ({len(chosen) - len(written)} done before); QC: {flagged} of "
        f"{len(rows)} scan(s) flagged; table {out.qc_table}")  # fmt: skip
    return written


def _done_with(sidecar: Path, checksum: str) -> bool:
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("ModelChecksum") == checksum
    except (OSError, ValueError, AttributeError):
        return False


def _site_model(site: str, model: Any, scans: Sequence[Scan], out: Outputs, device, progress: bool, log) -> _SiteModel:
    """The harmonizer for ``site``'s scans: the fitted one for the source site; for another site the adapted one,
    adapting now (on all of the site's scans in the dataset) if no earlier call did."""
    from harmonizing_flows.method.adaptation import adapt, choose_settings
    from harmonizing_flows.method.store import load_harmonizer

    source_checksum = _checksum(out.source_model / "harmonizer.safetensors")
    if site == model.source_site:
        return _SiteModel(out.source_model, model.harmonizer, source_checksum, None, "source site: not adapted", None)
    folder = out.site_model(site)
    document = folder / "model.json"
    adapted = json.loads(document.read_text(encoding="utf-8")).get("adaptation", {}) if document.is_file() else {}
    if adapted.get("source_model") != source_checksum or adapted.get("target_site") != site:
        members = [s.subject for s in scans if s.site == site]
        manifest = write_manifest(members, out.models / f"site-{site}_scans.csv")
        log(f"adapting to site {site} on its {len(members)} scan(s) ...")
        settings = choose_settings(model.profile.adapt)
        adapt(out.source_model, manifest, folder, config=settings, site=site, device=str(device),
              overwrite=folder.exists(), progress=progress)  # fmt: skip
        _stamp_source(folder, source_checksum)
        adapted = json.loads(document.read_text(encoding="utf-8"))["adaptation"]
    else:
        log(f"site {site}: reusing the adapted model {folder}")
    harmonizer, _, _ = load_harmonizer(folder)
    return _SiteModel(folder, harmonizer, _checksum(folder / "harmonizer.safetensors"), adapted.get("kept_step"),
                      adapted.get("reason", ""), adapted.get("guard"))  # fmt: skip


def _stamp_source(folder: Path, checksum: str) -> None:
    """Record in the adapted model which source model it came from, so a refitted source invalidates it."""
    document = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    document["adaptation"]["source_model"] = checksum
    write_text(folder / "model.json", json.dumps(document, indent=2) + "\n")


def _harmonize_scan(
    scan: Scan, site_model: _SiteModel, flow: Any, model: Any, reference: Reference, out: Outputs, device
) -> Path:
    """Harmonize, score and write one scan: the mosaic, the image, then the sidecar (last: it marks it done)."""
    from harmonizing_flows.bids.report import mosaic_figure
    from harmonizing_flows.data.volume import load_volume, save_nifti, slice_volume
    from harmonizing_flows.harmonize import harmonize_volume

    volume = load_volume(scan.subject.image, scan.subject.mask)
    sliced = slice_volume(volume, model.profile.slices)
    harmonizer = site_model.harmonizer.to(device).eval()
    scores = score_scan(harmonizer, flow, sliced, device, seed=model.profile.seed)
    session = next((p.removeprefix("ses-") for p in scan.relative.parts if p.startswith("ses-")), None)
    identity = {"participant_id": f"sub-{scan.participant}", "session_id": f"ses-{session}" if session else None,
                "scan": scan.relative.as_posix(), "site": scan.site, "source_site": model.source_site}  # fmt: skip
    row = qc_row(identity, scores, reference, kept_step=site_model.kept_step, guard=site_model.guard)
    figure = scan.figure(out.root)
    figure.parent.mkdir(parents=True, exist_ok=True)
    mosaic_figure(sliced, scores.harmonized, figure, title=f"{scan.relative.name}: {scan.site} -> "
                  f"{model.source_site}", plane=model.profile.slices.axis)  # fmt: skip
    image = harmonize_volume(harmonizer, volume, slices=model.profile.slices, device=device)
    image.header["descrip"] = f"harmonized by harmonizing-flows to {model.source_site}"[:79]
    path = scan.output(out.root, "T1w.nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(image, path, overwrite=True)  # a leftover of an interrupted run has no sidecar: replace it
    _write_json(scan.output(out.root, "T1w.json"), _sidecar(scan, site_model, model, row, scores, out))
    return path


def _sidecar(scan: Scan, site_model: _SiteModel, model: Any, row: dict, scores: ScanScores, out: Outputs) -> dict:
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


def collect_rows(root: Path) -> list[dict[str, Any]]:
    """The QC rows of every harmonized scan in ``OUT_DIR`` (from the sidecars), in path order."""
    rows = []
    for sidecar in sorted(root.glob("sub-*/**/anat/*_desc-harmonized_T1w.json")):
        try:
            rows.append(json.loads(sidecar.read_text(encoding="utf-8"))["QC"])
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(sidecar, f"is not a sidecar this tool wrote ({exc}); remove it to redo its scan") from exc
    return rows
