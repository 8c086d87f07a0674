"""The per-scan QC score: the reference's z-scores, the flag, the table, and scoring a scan."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from harmonizing_flows.bids.image_quality import SITE_Z_FLAG, ImageQuality
from harmonizing_flows.bids.qc import QC_COLUMNS, Z_FLAG, Reference, qc_row, score_scan, site_outliers, write_qc_table
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.method.flow import Flow
from harmonizing_flows.method.harmonizer import Harmonizer

IDENTITY = {"participant_id": "sub-01", "session_id": None, "scan": "sub-01/anat/sub-01_T1w.nii.gz", "site": "b",
            "source_site": "a"}  # fmt: skip
CLEAN = ImageQuality(noise_ratio=0.05, bias_spread=0.2)


def _scores(bpd_after: float, **changes):
    from harmonizing_flows.bids.qc import ScanScores

    values = dict(bpd_before=5.0, bpd_after=bpd_after, alpha_mean=0.9, alpha_sd=0.01, beta_mean=3.0, beta_sd=1.0,
                  quantiles_before=(10.0, 100.0, 200.0), quantiles_after=(12.0, 101.0, 199.0),
                  counts_before=np.zeros(256), counts_after=np.zeros(256), harmonized=np.zeros((1, 2, 2)))  # fmt: skip
    return ScanScores(**{**values, **changes})


def test_the_reference_turns_a_bpd_into_source_standard_deviations():
    reference = Reference.from_scores(["s1", "s2", "s3"], [4.0, 4.2, 4.4])
    assert reference.mean == pytest.approx(4.2) and reference.sd == pytest.approx(0.2)
    assert reference.z(4.8) == pytest.approx(3.0)
    assert Reference.from_json(reference.to_json()) == reference
    flat = Reference.from_scores(["s1", "s2"], [4.0, 4.0])
    assert flat.z(4.1) == math.inf and flat.z(3.9) == -math.inf and flat.z(4.0) == 0.0
    with pytest.raises(ValueError, match="two scores"):
        Reference.from_scores(["s1"], [4.0])


def test_a_scan_is_flagged_above_the_limit_or_after_a_guard_and_says_why():
    reference = Reference.from_scores(["s1", "s2", "s3"], [4.0, 4.2, 4.4])
    inside = qc_row(IDENTITY, _scores(4.2 + 0.2 * (Z_FLAG - 0.1)), reference, CLEAN, kept_step=30, guard=None)
    assert list(inside) == list(QC_COLUMNS)
    assert inside["flagged"] is False and inside["flag_reasons"] == "" and inside["kept_step"] == 30
    outside = qc_row(IDENTITY, _scores(4.2 + 0.2 * (Z_FLAG + 0.1)), reference, CLEAN, kept_step=30, guard=None)
    assert outside["flagged"] is True and "source SDs above the source mean" in outside["flag_reasons"]
    guarded = qc_row(IDENTITY, _scores(4.2), reference, CLEAN, kept_step=5, guard="contrast fell below 0.3")
    assert guarded["flagged"] is True and "guard: contrast fell" in guarded["flag_reasons"]
    assert (guarded["p05_before"], guarded["p50_after"]) == (10.0, 101.0)
    unreadable = qc_row(IDENTITY, _scores(math.nan), reference, CLEAN, kept_step=5, guard=None)
    assert unreadable["flagged"] is True and unreadable["bpd_after"] is None and unreadable["z_after"] is None


def test_the_qc_table_writes_n_a_for_missing_values_and_lowercase_booleans(tmp_path):
    reference = Reference.from_scores(["s1", "s2", "s3"], [4.0, 4.2, 4.4])
    rows = [qc_row(IDENTITY, _scores(b), reference, CLEAN, kept_step=None, guard=None) for b in (4.1, 9.0)]
    path = write_qc_table(rows, tmp_path / "group_T1w_qc.tsv")
    with path.open(newline="") as f:
        read = list(csv.DictReader(f, delimiter="\t"))
    assert [r["flagged"] for r in read] == ["false", "true"]
    assert read[0]["session_id"] == "n/a" and read[0]["kept_step"] == "n/a"
    assert list(tmp_path.iterdir()) == [path]  # nothing half-written beside it


def test_scoring_a_scan_is_deterministic_and_keeps_the_background_empty(smoke_profile):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = np.zeros((6, 48, 48), dtype=np.uint8)
    mask = np.zeros((6, 48, 48), dtype=np.uint8)
    mask[1:5, 10:38, 12:36] = 1
    images[mask.astype(bool)] = rng.integers(40, 220, int(mask.sum()))
    sliced = Slices(images=images, mask=mask)
    harmonizer, flow = Harmonizer(smoke_profile.harmonizer).eval(), Flow(smoke_profile.flow).eval()
    first = score_scan(harmonizer, flow, sliced, torch.device("cpu"))
    again = score_scan(harmonizer, flow, sliced, torch.device("cpu"))
    assert first.bpd_before == again.bpd_before and first.bpd_after == again.bpd_after
    assert np.isfinite([first.bpd_before, first.bpd_after]).all()
    assert first.counts_before.sum() == first.counts_after.sum() == mask.sum()
    assert not first.harmonized[~mask.astype(bool)].any()
    assert first.quantiles_before[0] <= first.quantiles_before[1] <= first.quantiles_before[2]
    # the score is the flow's own: a scan the flow finds likelier scores lower
    with torch.no_grad():
        direct = flow.bpd(*sliced.batch(sliced.brain_rows(), "cpu"), noise=_noise(sliced), brain_only=True)
    assert first.bpd_before == pytest.approx(float(direct.mean()), rel=1e-5)


def _noise(sliced: Slices) -> torch.Tensor:
    from harmonizing_flows.method.distributed import stable_seed

    generator = torch.Generator().manual_seed(stable_seed(0, "qc"))
    rows = sliced.brain_rows()
    return torch.randn((len(rows), 1, *sliced.images.shape[1:]), generator=generator)


def test_site_outliers_flag_a_noisy_or_biased_scan_among_its_sites_and_keep_the_row_consistent():
    reference = Reference.from_scores(["s1", "s2", "s3"], [4.0, 4.2, 4.4])
    rows = []
    for i, noise in enumerate([0.050, 0.051, 0.049, 0.052, 0.048, 0.050, 0.200]):  # the last: four times noisier
        identity = {**IDENTITY, "participant_id": f"sub-{i:02d}", "scan": f"sub-{i:02d}_T1w.nii.gz"}
        rows.append(qc_row(identity, _scores(4.2), reference, ImageQuality(noise, 0.2 + 0.001 * i), kept_step=3,
                           guard=None))  # fmt: skip
    assert not any(r["flagged"] for r in rows) and all(r["noise_ratio_z"] is None for r in rows)  # no site yet
    updated = site_outliers(rows, reference.z_flag)
    assert [list(r) for r in updated] == [list(QC_COLUMNS)] * len(rows)
    assert [r["flagged"] for r in updated] == [False] * 6 + [True]
    noisy = updated[-1]
    assert noisy["noise_ratio_z"] > SITE_Z_FLAG and "noise: noise_ratio is an outlier" in noisy["flag_reasons"]
    assert all(abs(r["bias_spread_z"]) <= SITE_Z_FLAG for r in updated)  # a small trend is no outlier
    assert site_outliers(updated, reference.z_flag) == updated  # recomputing changes nothing
    # a site of too few scans is not judged, and a scan flagged for its bpd stays flagged
    few = site_outliers([{**rows[-1], "site": "c"}, {**rows[0], "site": "c", "z_after": 9.0}], reference.z_flag)
    assert few[0]["noise_ratio_z"] is None and not few[0]["flagged"] and few[1]["flagged"]
