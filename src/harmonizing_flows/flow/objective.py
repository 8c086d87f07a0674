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
from harmonizing_flows.flow.model import Flow

__all__ = ["guided_loss"]


def guided_loss(
    flow: Flow,
    positives: torch.Tensor,
    positive_mask: torch.Tensor,
    negatives: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    config: FlowConfig | None = None,
    *,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss and its parts (``bpd``: mean source bpd; ``negative_bpd``; ``negatives``: how many).

    ``noise`` is the dequantization noise of the positives then the negatives (drawn when not given). Training
    computes the same loss in a form that shards a batch over processes (``train.flow_step``, tested equal).
    """
    config = config or flow.config
    n = positives.shape[0]
    has_negatives = negatives is not None and negatives.shape[0] > 0
    if has_negatives:
        assert negatives is not None and negative_mask is not None
        x, m = torch.cat([positives, negatives]), torch.cat([positive_mask, negative_mask])
    else:
        x, m = positives, positive_mask
    bpd = flow.bpd(x, m, noise=noise)
    positive_bpd = bpd[:n].mean()
    loss = positive_bpd
    stats = {"bpd": float(positive_bpd.detach()), "negatives": float(x.shape[0] - n)}
    if has_negatives:
        negative_bpd = bpd[n:]
        c = config.margin if config.margin_mode == "absolute" else positive_bpd.detach() + config.margin
        hinge = torch.minimum(negative_bpd, torch.as_tensor(c, dtype=bpd.dtype))
        if config.weighting == "samples":
            loss = (bpd[:n].sum() - hinge.sum()) / x.shape[0]
        else:
            loss = loss - hinge.mean()
        stats["negative_bpd"] = float(negative_bpd.detach().mean())
    return loss, stats
