"""The app's reports: ``OUT_DIR/sub-X.html`` per participant and ``OUT_DIR/report.html`` for the group.

Each is one HTML file with its figures embedded as PNG data, so it opens offline, can be mailed, and keeps
working when the folder moves. They are rebuilt from the sidecars, the QC reference and the adapted models at
the end of every ``participant`` run, so the group report always covers every scan harmonized so far.

Per target site: the brain-intensity histograms of its scans before and after harmonization against the source
site's validation scans, and the adaptation curve (bpd and gain per step, the kept step). Per scan: a mosaic of
slices before and after, and its QC row. The QC table highlights flagged scans and says why.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harmonizing_flows import __version__
from harmonizing_flows.bids.image_quality import SITE_Z_FLAG
from harmonizing_flows.bids.qc import QC_COLUMNS, Z_FLAG
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.figures import histogram_panels, slice_table

__all__ = ["mosaic_figure", "write_reports"]

MOSAIC_SLICES = 5
"""Slices per scan in a mosaic, evenly spaced over the brain."""
_SHOWN = ("scan", "site", "z_before", "z_after", "p50_before", "p50_after", "noise_ratio_z", "bias_spread_z",
          "kept_step", "flagged")  # fmt: skip
"""The QC table's columns in the reports; a flagged scan's reasons follow on a row of their own."""

_CELL_CLASS = {"flagged": "text flag", "scan": "text", "site": "text"}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.0em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
tr.flagged td { background: #ffe3e0; } tr.flagged td.flag { color: #a40000; font-weight: bold; }
.wide { overflow-x: auto; }
img { max-width: 100%; height: auto; } .note { color: #555; font-size: 0.88em; }
.summary { display: flex; gap: 2em; } .summary div { background: #f6f6f6; padding: 0.5em 1em; border-radius: 4px; }
"""


def mosaic_figure(sliced: Slices, harmonized: np.ndarray, path: Path, *, title: str, plane: str) -> Path:
    """Evenly spaced brain slices of a scan as the model sees it (top) and harmonized (bottom), on 0..255."""
    rows = sliced.brain_rows()
    picks = rows[np.linspace(0, len(rows) - 1, min(MOSAIC_SLICES, len(rows))).round().astype(int)]
    table = {
        "input": {f"slice {k}": sliced.images[k].astype(np.float32) for k in picks},
        "harmonized": {f"slice {k}": harmonized[k] for k in picks},
    }
    return slice_table(table, path, title=title, plane=plane)


def write_reports(
    root: Path,
    sidecars: Mapping[Path, dict[str, Any]],
    participants: Sequence[str],
    source_site: str | None,
    reference: Mapping[str, Any],
) -> list[Path]:
    """Write ``sub-X.html`` for each of ``participants`` and ``report.html`` over every scan of ``sidecars``
    (path -> sidecar of each harmonized scan to show; ``reference``: ``models/qc_reference.json``)."""
    source_counts = np.asarray(reference["source_counts"])
    source = f"source ({source_site})"
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        figures = _Figures(Path(tmp))
        sites = sorted({s["TargetSite"] for s in sidecars.values()})
        site_sections = {site: _site_section(root, site, sidecars, source_counts, source, figures) for site in sites}
        for label in participants:
            own = {p: s for p, s in sidecars.items() if s["QC"]["participant_id"] == f"sub-{label}"}
            body = [_table(own, links=False)]
            body.extend(site_sections[site] for site in sorted({s["TargetSite"] for s in own.values()}))
            body.extend(_scan_section(p, s) for p, s in own.items())
            written.append(_page(root / f"sub-{label}.html", f"sub-{label}", source_site, reference, body))
        body = [_summary(sidecars), _table(sidecars, links=True), *site_sections.values(), "<h2>Every scan</h2>"]
        body.extend(_scan_section(p, s) for p, s in sidecars.items())
        written.append(_page(root / "report.html", "all participants", source_site, reference, body))
    return written


class _Figures:
    """Figures drawn into a temporary folder and embedded as data URIs."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0

    def path(self) -> Path:
        self.count += 1
        return self.folder / f"figure-{self.count}.png"


def _embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _site_section(
    root: Path, site: str, sidecars: Mapping[Path, dict], source_counts: np.ndarray, source: str, figures: _Figures
) -> str:
    members = [s for s in sidecars.values() if s["TargetSite"] == site]
    before = np.sum([s["Histogram"]["before"] for s in members], axis=0)
    after = np.sum([s["Histogram"]["after"] for s in members], axis=0)
    path = histogram_panels(
        {"before harmonization": {site: before, source: source_counts},
         "after harmonization": {site: after, source: source_counts}},
        figures.path(), title=f"Site {site}: brain intensities of its {len(members)} harmonized scan(s)",
        reference=source, columns=2,
    )  # fmt: skip
    parts = [f"<h2>Site {html.escape(site)}</h2>", _embed(path, f"intensity histograms of site {site}")]
    adaptation = members[0]["Adaptation"]
    curve = root / members[0]["Model"] / "adaptation.png"
    if curve.is_file():
        parts.append(f'<p class="note">Adaptation: kept step {adaptation["KeptStep"]}. '
                     f'{html.escape(adaptation["Reason"] or "")}</p>')  # fmt: skip
        parts.append(_embed(curve, f"adaptation curve of site {site}"))
    else:
        parts.append(f'<p class="note">{html.escape(adaptation["Reason"] or "")}</p>')
    return "\n".join(parts)


def _scan_section(path: Path, sidecar: dict) -> str:
    qc = sidecar["QC"]
    mosaic = (path.parent / sidecar["Mosaic"]).resolve()
    flagged = ' <span style="color:#a40000">(flagged)</span>' if qc["flagged"] else ""
    parts = [f"<h3>{html.escape(qc['scan'])}{flagged}</h3>"]
    if qc["flagged"]:
        parts.append(f'<p class="note">{html.escape(qc["flag_reasons"])}</p>')
    if mosaic.is_file():
        parts.append(_embed(mosaic, f"slices of {qc['scan']} before and after"))
    return "\n".join(parts)


def _summary(sidecars: Mapping[Path, dict]) -> str:
    rows = [s["QC"] for s in sidecars.values()]
    flagged = sum(bool(r["flagged"]) for r in rows)
    sites = sorted({r["site"] for r in rows})
    return (
        f'<div class="summary"><div><b>{len(rows)}</b> scans</div><div><b>{len(sites)}</b> site(s): '
        f"{html.escape(', '.join(sites))}</div><div><b>{flagged}</b> flagged</div></div>"
    )


def _table(sidecars: Mapping[Path, dict], *, links: bool) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _SHOWN)
    lines = [f'<h2>Quality control</h2><div class="wide"><table><tr>{head}</tr>']
    for sidecar in sidecars.values():
        qc = sidecar["QC"]
        cells = []
        for column in _SHOWN:
            value = qc.get(column)
            text = html.escape("" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
            if column == "scan":  # the file's name; the path is in the TSV
                text = html.escape(Path(str(value)).name)
                if links:
                    text = f'<a href="{html.escape(qc["participant_id"])}.html">{text}</a>'
            kind = _CELL_CLASS.get(column, "")
            cells.append(f'<td class="{kind}">{text}</td>')
        lines.append(f'<tr class="{"flagged" if qc["flagged"] else ""}">{"".join(cells)}</tr>')
        if qc["flagged"]:
            reasons = html.escape(qc["flag_reasons"] or "")
            lines.append(f'<tr class="flagged"><td class="text flag" colspan="{len(_SHOWN)}">{reasons}</td></tr>')
    lines.append("</table></div>")
    lines.append(
        f'<p class="note">z: the bits per brain pixel (bpd) under the source model\'s flow (lower is more '
        f"source-like) as the distance from the source validation scans' mean in their standard deviations; "
        f"p50: the median brain intensity (0..255); noise_ratio_z and "
        f"bias_spread_z: the raw scan's noise and bias field as modified z-scores among its own site's scans. A "
        f"scan is flagged when z after exceeds {Z_FLAG:g}, its site's adaptation ended on a guard, or its noise "
        f"or bias z exceeds {SITE_Z_FLAG:g}. All columns "
        f"({', '.join(QC_COLUMNS)}) are in group_T1w_qc.tsv.</p>"
    )
    return "\n".join(lines)


def _page(path: Path, who: str, source_site: str | None, reference: Mapping[str, Any], body: Sequence[str]) -> Path:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>harmonizing-flows: {html.escape(who)}</title>
<style>{_STYLE}</style></head><body>
<h1>Harmonization report: {html.escape(who)}</h1>
<p class="note">harmonizing-flows {__version__}, {made}. Source site: <b>{html.escape(source_site or "?")}</b>;
QC reference: {len(reference["bpd"])} source validation scans, bpd {reference["mean"]:.3f} &plusmn;
{reference["sd"]:.3f}.</p>
{chr(10).join(body)}
</body></html>
"""
    from harmonizing_flows.data.outputs import write_text

    return write_text(path, text)
