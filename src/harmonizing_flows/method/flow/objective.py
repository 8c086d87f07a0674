"""The guided objective (paper Eq. 4): likely source slices, unlikely dissimilar augmentations.

``L = E_pos[bpd(x)] - E_neg[min(c, bpd(x_neg))]``: the flow lowers the bits per dimension of source slices and
raises those of the guiding negatives until they reach the margin ``c``. With ``margin_mode="relative"`` the
margin is the batch's mean source bpd plus ``c`` (see :class:`~harmonizing_flows.config.FlowConfig`).

How the terms are weighed is ``FlowConfig.weighting``. ``"samples"`` is Eq. 4 as written: the negatives take
the places of the images they came from (the caller leaves those out of ``positives``) and the loss sums over
the images, divided here by their number, as the authors' code averages ``bpd * label`` over such a batch.
``"terms"``, the default, is the difference of two means, each weighted one: a negative weighs about
``1 / negative_fraction`` times a positive (5x at the default 0.2), and the originals stay among the positives.
"""

from __future__ import annotations

import torch

from harmonizing_flows.config import FlowConfig

__all__ = ["guided_loss"]


def guided_loss(
    positive_bpd: torch.Tensor,
    negative_bpd: torch.Tensor,
    config: FlowConfig,
    *,
    n_positive: int,
    n_negative: int,
    mean_positive: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """Eq. 4 on a batch of ``n_positive`` source slices and ``n_negative`` negatives, of which this call sees the bpd
    of a share (all of them in one process).

    Args:
        positive_bpd, negative_bpd: The bpd of this share's positives and negatives.
        n_positive, n_negative: Their numbers in the whole batch.
        mean_positive: The whole batch's mean positive bpd, detached: the relative margin's base.
        scale: Multiplies the loss: the number of processes under DDP, which averages their gradients.

    Returns:
        This share's part of the loss; summed over the shares (and divided by ``scale``) it is the batch's loss.
    """
    by_samples = config.weighting == "samples"
    loss = positive_bpd.sum() * scale / (n_positive + n_negative if by_samples else n_positive)
    if n_negative:
        if config.margin_mode == "relative":
            c = mean_positive + config.margin
        else:
            c = torch.tensor(config.margin, device=negative_bpd.device)
        hinge = torch.minimum(negative_bpd, c).sum()
        loss = loss - hinge * scale / (n_positive + n_negative if by_samples else n_negative)
    return loss
