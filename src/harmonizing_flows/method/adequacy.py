"""Is the flow good enough to steer adaptation? Two measures taken after fitting and stored in ``model.json``.

Adaptation trusts the flow's likelihood to say which images look like the source site. That holds only if the flow
has learnt the source's brains (its bits per brain pixel are clearly below the 8 bits of a uniform model of 8-bit
images) and if its per-slice likelihood separates source slices from slices of other contrasts. The second is
measured as the AUROC of the per-slice brain bpd: the source validation slices against the same slices under the
harmonizer's pre-training augmentations (the shifts adaptation must undo), rounded to integers as the source
slices are, so that the flow compares like with like. 0.5 means the flow cannot tell them apart.

A flow that fails either limit (:data:`MAX_BRAIN_BPD`, :data:`MIN_AUROC`) is not refused; ``hflow fit`` warns, and
the measures let a benchmark relate adaptation's results to the flow it had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from harmonizing_flows.config import AugmentConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.method.augment import HarmonizerAugmentation
from harmonizing_flows.method.distributed import stable_seed
from harmonizing_flows.method.flow import Flow

__all__ = ["MAX_BRAIN_BPD", "MIN_AUROC", "FlowAdequacy", "auroc", "flow_adequacy", "slice_bpd"]

MAX_BRAIN_BPD = 7.0
"""A flow whose source validation bpd over the brain is above this has learnt little beyond a uniform 8-bit model."""

MIN_AUROC = 0.75
"""A flow whose per-slice bpd separates source from augmented slices worse than this cannot steer adaptation."""


@dataclass(frozen=True)
class FlowAdequacy:
    """The measures and the verdict (``problems`` empty when adequate)."""

    brain_bpd: float
    auroc_augmented: float
    slices: int
    problems: tuple[str, ...]

    @property
    def adequate(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "problems": list(self.problems), "adequate": self.adequate,
                "limits": {"brain_bpd": MAX_BRAIN_BPD, "auroc": MIN_AUROC}}  # fmt: skip


@torch.no_grad()
def slice_bpd(
    flow: Flow,
    data: Slices,
    device: torch.device,
    *,
    augmentation: AugmentConfig | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> np.ndarray:
    """Each brain slice's bpd over its brain pixels (fixed dequantization noise), optionally after the
    augmentation ``augmentation`` (drawn from ``seed``, rounded to integers)."""
    flow.eval()
    rows = data.brain_rows()
    noise_generator = torch.Generator().manual_seed(stable_seed(seed, "adequacy-noise"))
    augment_generator = torch.Generator().manual_seed(stable_seed(seed, "adequacy-augment"))
    augment = HarmonizerAugmentation(augmentation) if augmentation is not None else None
    values = []
    for start in range(0, len(rows), batch_size):
        x, m = data.batch(rows[start : start + batch_size], device)
        noise = torch.randn(x.shape, generator=noise_generator).to(device)
        if augment is not None:
            params = augment.draw(x.shape[0], augment_generator)
            x = augment.apply(x, m, params).round().clamp(0, 255) * m
        values.append(flow.bpd(x, m, noise=noise, brain_only=True).double().cpu())
    return torch.cat(values).numpy()


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The probability that a random ``negative`` scores a higher bpd than a random ``positive`` (ties count half):
    1 separates perfectly, 0.5 not at all."""
    return float(mannwhitneyu(negative, positive).statistic) / (len(positive) * len(negative))


def flow_adequacy(
    flow: Flow, val: Slices, augmentation: AugmentConfig, device: torch.device, *, seed: int = 0
) -> FlowAdequacy:
    """Measure ``flow`` on the source validation slices ``val`` against their augmented copies."""
    source = slice_bpd(flow, val, device, seed=seed)
    augmented = slice_bpd(flow, val, device, augmentation=augmentation, seed=seed)
    brain_bpd, separation = float(source.mean()), auroc(source, augmented)
    problems = []
    if not brain_bpd <= MAX_BRAIN_BPD:
        problems.append(f"the source validation bpd over the brain is {brain_bpd:.2f} (limit {MAX_BRAIN_BPD:g}; a "
                        "uniform model of 8-bit images scores 8): it has learnt little of the source")  # fmt: skip
    if not separation >= MIN_AUROC:
        problems.append(f"its bpd tells source slices from augmented ones with an AUROC of {separation:.2f} (limit "
                        f"{MIN_AUROC:g}; 0.5 is chance): its likelihood cannot steer adaptation")  # fmt: skip
    return FlowAdequacy(round(brain_bpd, 4), round(separation, 4), len(source), tuple(problems))
