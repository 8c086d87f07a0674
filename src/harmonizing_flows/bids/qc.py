"""Per-scan quality control from the flow itself: how likely the source site's model finds a scan, before and
after harmonization, against the source site's own validation scans.

A scan's score is its bits per brain pixel under the frozen flow, averaged over its brain slices, with fixed
dequantization noise (as adaptation's curve measures a site): lower is more source-like. The reference is the same
score of the source site's validation scans through the fitted (pre-trained) harmonizer, which is what a source
scan looks like after the tool; its mean and standard deviation turn every score into a z-score.

A harmonized scan is flagged when

* its z-score after harmonization exceeds :data:`Z_FLAG` (3: the three-sigma outlier rule, fixed before any scan
  was scored; with the three or more validation scans the app requires, the standard deviation is rough, so the
  flag is a prompt to look at the scan in the report, not a verdict),
* adaptation to its site ended on a guard (the harmonizer's contrast or intensity collapsed, so an earlier step
  was kept), or
* the raw scan is an outlier among its own site's scans in noise or bias field
  (:mod:`~harmonizing_flows.bids.image_quality`): faults the harmonizer can hide from the flow.

The flag is derived from a row's own (rounded) values by one function, so the table, the sidecars and the reports
agree, and anyone can recompute it from the TSV. The within-site scores change when a site gains scans, so every
``participant`` call recomputes them over all the scans harmonized so far.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonizing_flows.bids.image_quality import MEASURES, SITE_Z_FLAG, ImageQuality, site_z_scores
from harmonizing_flows.data.outputs import write_text
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.figures import level_counts
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.distributed import stable_seed
from harmonizing_flows.method.flow import Flow
from harmonizing_flows.method.harmonizer import Harmonizer

__all__ = [
    "QC_COLUMNS",
    "Z_FLAG",
    "Reference",
    "ScanScores",
    "flag_reasons",
    "qc_row",
    "score_scan",
    "site_outliers",
    "write_qc_table",
]

Z_FLAG = 3.0
"""A harmonized scan whose bpd lies more than this many source standard deviations above the source mean is
flagged (see the module docstring)."""

QUANTILES = (0.05, 0.5, 0.95)
"""The brain-intensity quantiles reported before and after harmonization."""

QC_COLUMNS = (
    "participant_id", "session_id", "scan", "site", "source_site", "bpd_before", "bpd_after", "z_before", "z_after",
    "alpha_mean", "alpha_sd", "beta_mean", "beta_sd", "p05_before", "p50_before", "p95_before", "p05_after",
    "p50_after", "p95_after", "noise_ratio", "bias_spread", "noise_ratio_z", "bias_spread_z", "kept_step", "guard",
    "flagged", "flag_reasons",
)  # fmt: skip
"""The columns of ``group_T1w_qc.tsv``, in order (documented in ``docs/bids.md``)."""


@dataclass(frozen=True)
class ScanScores:
    """What the flow and the harmonizer make of one scan (bpd in bits per brain pixel, intensities on 0..255)."""

    bpd_before: float
    bpd_after: float
    alpha_mean: float
    alpha_sd: float
    beta_mean: float
    beta_sd: float
    quantiles_before: tuple[float, ...]
    quantiles_after: tuple[float, ...]
    counts_before: np.ndarray
    """Brain voxels per intensity level 0..255 before harmonization (on the model's grid)."""
    counts_after: np.ndarray
    harmonized: np.ndarray
    """The harmonized slices, float32 ``(N, H, W)`` on 0..255 (zero outside the brain), for the report's mosaic."""


@dataclass(frozen=True)
class Reference:
    """The source validation scans' scores: what a z-score is measured against."""

    mean: float
    sd: float
    scans: tuple[str, ...]
    bpd: tuple[float, ...]
    z_flag: float = Z_FLAG

    @classmethod
    def from_scores(cls, scans: Sequence[str], bpd: Sequence[float]) -> Reference:
        if len(bpd) < 2:
            raise ValueError("a reference needs two scores at least")
        values = np.asarray(bpd, dtype=np.float64)
        return cls(float(values.mean()), float(values.std(ddof=1)), tuple(scans), tuple(float(b) for b in bpd))

    def z(self, bpd: float) -> float:
        if self.sd > 0:
            return (bpd - self.mean) / self.sd
        return 0.0 if bpd == self.mean else math.copysign(math.inf, bpd - self.mean)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scans": list(self.scans), "bpd": list(self.bpd)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Reference:
        return cls(float(document["mean"]), float(document["sd"]), tuple(document["scans"]),
                   tuple(document["bpd"]), float(document.get("z_flag", Z_FLAG)))  # fmt: skip


@torch.no_grad()
def score_scan(
    harmonizer: Harmonizer | CurveHarmonizer,
    flow: Flow,
    sliced: Slices,
    device: torch.device,
    *,
    seed: int = 0,
    batch_size: int = 32,
) -> ScanScores:
    """Score one scan's brain slices before and after ``harmonizer`` (both in evaluation mode, on ``device``)."""
    rows = sliced.brain_rows()
    generator = torch.Generator().manual_seed(stable_seed(seed, "qc"))
    before = after = 0.0
    alphas, beta_sum, beta_sq, brain = [], 0.0, 0.0, 0.0
    harmonized = np.zeros(sliced.images.shape, dtype=np.float32)
    prepared = harmonizer.prepare(sliced)  # as the harmonizer takes it (the curve harmonizer: matched)
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        x, m = sliced.batch(index, device)
        noise = torch.randn(x.shape, generator=generator).to(device)
        xp = prepared.batch(index, device)[0] if prepared is not sliced else x
        alpha, beta = harmonizer.parts(xp, m)
        y = Harmonizer.apply(alpha[:, None, None, None], beta, xp, m)
        before += float(flow.bpd(x, m, noise=noise, brain_only=True).sum())
        after += float(flow.bpd(y, m, noise=noise, brain_only=True).sum())
        alphas.append(alpha.float().cpu())
        beta_sum += float((beta * m).sum())
        beta_sq += float((beta.square() * m).sum())
        brain += float(m.sum())
        harmonized[index] = y[:, 0].float().cpu().numpy()
    mask = sliced.mask.astype(bool)
    x_brain, y_brain = sliced.images[mask].astype(np.float32), harmonized[mask]
    alpha_all = torch.cat(alphas).double()
    beta_mean = beta_sum / max(brain, 1.0)
    return ScanScores(
        bpd_before=before / len(rows),
        bpd_after=after / len(rows),
        alpha_mean=float(alpha_all.mean()),
        alpha_sd=float(alpha_all.std(unbiased=False)),
        beta_mean=beta_mean,
        beta_sd=math.sqrt(max(beta_sq / max(brain, 1.0) - beta_mean**2, 0.0)),
        quantiles_before=tuple(float(q) for q in np.quantile(x_brain, QUANTILES)),
        quantiles_after=tuple(float(q) for q in np.quantile(y_brain, QUANTILES)),
        counts_before=level_counts(x_brain),
        counts_after=level_counts(y_brain),
        harmonized=harmonized,
    )


def qc_row(
    scan: Mapping[str, str],
    scores: ScanScores,
    reference: Reference,
    quality: ImageQuality,
    *,
    kept_step: int | None,
    guard: str | None,
) -> dict[str, Any]:
    """One QC table row: ``scan`` (participant_id, session_id, scan, site, source_site), the scores, the z-scores,
    the image quality measures and the flag with its reasons. The within-site z-scores are left empty: they need
    the site's other scans (:func:`site_outliers`)."""
    z_before, z_after = reference.z(scores.bpd_before), reference.z(scores.bpd_after)
    quantiles = {f"p{round(q * 100):02d}_{when}": _finite(v, 2)
                 for when, values in (("before", scores.quantiles_before), ("after", scores.quantiles_after))
                 for q, v in zip(QUANTILES, values, strict=True)}  # fmt: skip
    row = {
        **scan,
        "bpd_before": _finite(scores.bpd_before, 4),
        "bpd_after": _finite(scores.bpd_after, 4),
        "z_before": _finite(z_before, 2),
        "z_after": _finite(z_after, 2),
        "alpha_mean": _finite(scores.alpha_mean, 4),
        "alpha_sd": _finite(scores.alpha_sd, 4),
        "beta_mean": _finite(scores.beta_mean, 2),
        "beta_sd": _finite(scores.beta_sd, 2),
        **quantiles,
        "noise_ratio": _finite(quality.noise_ratio, 5),
        "bias_spread": _finite(quality.bias_spread, 4),
        "noise_ratio_z": None,
        "bias_spread_z": None,
        "kept_step": kept_step,
        "guard": guard or "",
    }
    reasons = flag_reasons(row, reference.z_flag)
    return {**row, "flagged": bool(reasons), "flag_reasons": "; ".join(reasons)}


def flag_reasons(row: Mapping[str, Any], z_flag: float) -> list[str]:
    """Why a QC row is flagged (empty: it is not), from the row's own values; ``z_flag`` is the reference's."""
    reasons = []
    z_after = row.get("z_after")
    if z_after is None or not z_after <= z_flag:  # a score that cannot be read is no pass
        shown = "unreadable" if z_after is None else f"{z_after:.1f} source SDs above the source mean"
        reasons.append(f"bpd after harmonization {shown} (limit {z_flag:g})")
    if row.get("guard"):
        reasons.append(f"adaptation ended on a guard: {row['guard']}")
    for measure, what in zip(MEASURES, ("noise", "bias field"), strict=True):
        z = row.get(f"{measure}_z")
        if z is not None and z > SITE_Z_FLAG:
            reasons.append(f"{what}: {measure} is an outlier among the site's scans (modified z {z:.1f}, limit "
                           f"{SITE_Z_FLAG:g})")  # fmt: skip
    return reasons


def site_outliers(rows: Sequence[Mapping[str, Any]], z_flag: float) -> list[dict[str, Any]]:
    """``rows`` (QC rows of every scan harmonized so far) with their within-site z-scores and flags recomputed
    over each site's scans; columns in :data:`QC_COLUMNS` order."""
    scores = {m: site_z_scores(rows, m) for m in MEASURES}
    updated = []
    for i, row in enumerate(rows):
        new = {c: row.get(c) for c in QC_COLUMNS}
        for measure in MEASURES:
            new[f"{measure}_z"] = _finite(scores[measure][i], 2) if scores[measure][i] is not None else None
        reasons = flag_reasons(new, z_flag)
        new["flagged"], new["flag_reasons"] = bool(reasons), "; ".join(reasons)
        updated.append(new)
    return updated


def _finite(value: float, digits: int) -> float | None:
    """``value`` rounded, or None (JSON null, ``n/a`` in the table) when it is not a finite number."""
    return round(value, digits) if math.isfinite(value) else None


def write_qc_table(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write the QC rows as a BIDS-style TSV (``n/a`` for missing values), atomically."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(QC_COLUMNS)
    for row in rows:
        writer.writerow(["n/a" if row.get(c) in (None, "") else _cell(row[c]) for c in QC_COLUMNS])
    return write_text(path, text.getvalue())


def _cell(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
