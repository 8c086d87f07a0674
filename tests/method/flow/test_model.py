"""The whole flow: exact change of variables, invertibility, batch-order invariance, masks, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from harmonizing_flows.config import FlowConfig
from harmonizing_flows.method.flow import Flow, guided_loss

TINY = FlowConfig(dequantization_couplings=2, couplings=(2, 2, 2), widths=(4,), dequantization_widths=(4,))


def _flow(config: FlowConfig = TINY, seed: int = 0) -> Flow:
    torch.manual_seed(seed)
    flow = Flow(config).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def test_log_prob_is_the_exact_change_of_variables():
    flow = _flow()
    x = torch.randint(0, 256, (2, 1, 4, 4)).double()
    eps = torch.randn_like(x)
    got = flow.log_prob(x, noise=eps)
    u, log_q = flow.dequantization(x, eps)
    a = flow.config.logit_alpha

    def to_prior(v):  # v = x + u on 0..256 -> z
        y = a + (1 - 2 * a) * v / 256
        return flow.transform(torch.log(y) - torch.log1p(-y))[0]

    for i in range(2):
        v = x[i : i + 1] + u[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda w: to_prior(w).reshape(-1), v).reshape(16, 16)
        z = to_prior(v)
        log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum()
        expected = log_pz + torch.linalg.slogdet(jac)[1] - log_q[i].sum()
        torch.testing.assert_close(got[i], expected, rtol=1e-9, atol=1e-8)


def test_a_float_image_is_scored_as_its_rounded_levels_with_a_straight_through_gradient():
    flow = _flow()
    x = torch.randint(1, 255, (2, 1, 4, 4)).double()
    eps = torch.randn_like(x)
    shifted = (x + torch.empty_like(x).uniform_(-0.45, 0.45)).requires_grad_(True)
    log_p = flow.log_prob(shifted, noise=eps)
    torch.testing.assert_close(log_p, flow.log_prob(x, noise=eps))
    log_p.sum().backward()  # a harmonizer upstream still gets a gradient: d round(x) / dx is taken as 1
    assert shifted.grad is not None and shifted.grad.abs().sum() > 0


def test_transform_inverts():
    flow = _flow()
    v = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    z, _ = flow.transform(v)
    assert z.shape == (3, 16, 2, 2)
    torch.testing.assert_close(flow.inverse(z), v, rtol=1e-9, atol=1e-9)


def test_log_prob_does_not_depend_on_batch_order():
    flow = _flow().float()
    x = torch.randint(0, 256, (6, 1, 8, 8)).float()
    eps = torch.randn_like(x)
    perm = torch.randperm(6)
    torch.testing.assert_close(flow.log_prob(x[perm], noise=eps[perm]), flow.log_prob(x, noise=eps)[perm])
    torch.testing.assert_close(flow.log_prob(x[:1], noise=eps[:1]), flow.log_prob(x, noise=eps)[:1])


def test_brain_only_likelihood():
    x = torch.randint(0, 256, (2, 1, 8, 8)).double()
    eps = torch.randn_like(x)
    full, masked = _flow(), _flow(FlowConfig(**{**TINY.__dict__, "brain_only": True}))
    masked.load_state_dict(full.state_dict())
    ones = torch.ones_like(x)
    torch.testing.assert_close(masked.bpd(x, ones, noise=eps), full.bpd(x, ones, noise=eps))
    torch.testing.assert_close(full.bpd(x, ones, noise=eps), full.bpd(x, None, noise=eps))
    half = ones.clone()
    half[..., 4:] = 0
    # With identity couplings every term is local, so pixels outside the mask do not count at all; a trained flow's
    # conditioners still see them (the mask weights terms, it does not hide context).
    local_full, local_masked = Flow(TINY).double(), Flow(FlowConfig(**{**TINY.__dict__, "brain_only": True})).double()
    x2 = x.clone()
    x2[..., 4:] = 255 - x2[..., 4:]
    torch.testing.assert_close(local_masked.bpd(x, half, noise=eps), local_masked.bpd(x2, half, noise=eps))
    assert not torch.allclose(local_full.bpd(x, half, noise=eps), local_full.bpd(x2, half, noise=eps))
    # Per brain pixel: the masked bpd of the left half equals the unmasked bpd of that half alone.
    torch.testing.assert_close(
        local_masked.bpd(x, half, noise=eps), local_full.bpd(x[..., :4].contiguous(), noise=eps[..., :4].contiguous())
    )


def test_bpd_of_uniform_noise_with_an_untrained_flow_is_near_the_prior_bound():
    flow = Flow(TINY)  # identity couplings
    x = torch.randint(0, 256, (4, 1, 8, 8)).float()
    bpd = flow.bpd(x)
    assert torch.all((bpd > 7.0) & (bpd < 12.0))


def test_sizes_must_fit_the_flows_down_sampling():
    flow = Flow(FlowConfig(couplings=(1, 1, 1), dequantization_couplings=1, widths=(4, 4), dequantization_widths=(4,)))
    assert flow.factor == 8
    with pytest.raises(ValueError, match="multiples of 8"):
        flow.bpd(torch.zeros(1, 1, 12, 16))


def _loss(pos, neg, config, **counts):
    n_pos, n_neg = counts.get("n_positive", len(pos)), counts.get("n_negative", len(neg))
    return guided_loss(pos, neg, config, n_positive=n_pos, n_negative=n_neg, mean_positive=pos.mean().detach(),
                       scale=counts.get("scale", 1.0))  # fmt: skip


def test_guided_loss_is_eq_4_with_its_hinge_and_weighting():
    pos = torch.tensor([3.0, 4.0, 5.0, 6.0], requires_grad=True)
    neg = torch.tensor([2.0, 9.0], requires_grad=True)
    terms = FlowConfig(**{**TINY.__dict__, "margin": 1.0, "margin_mode": "relative", "weighting": "terms"})
    # mean source bpd 4.5, margin 4.5 + 1 = 5.5: the negative at 2 counts, the one at 9 is clipped to 5.5
    loss = _loss(pos, neg, terms)
    assert loss.item() == pytest.approx(4.5 - (2.0 + 5.5) / 2)
    pos_grad, neg_grad = torch.autograd.grad(loss, [pos, neg])
    assert torch.equal(pos_grad, torch.full((4,), 0.25))
    assert torch.equal(neg_grad, torch.tensor([-0.5, 0.0]))  # a negative above the margin is left alone
    samples = FlowConfig(**{**terms.__dict__, "weighting": "samples", "margin_mode": "absolute", "margin": 8.0})
    assert _loss(pos, neg, samples).item() == pytest.approx((18.0 - (2.0 + 8.0)) / 6)
    assert _loss(pos, neg[:0], terms, n_negative=0).item() == pytest.approx(4.5)  # no negatives: the mean bpd


def test_guided_loss_of_shards_sums_to_the_whole_batchs():
    pos, neg = torch.tensor([3.0, 4.0, 5.0, 6.0]), torch.tensor([2.0, 9.0, 4.0])
    config = FlowConfig(**{**TINY.__dict__, "margin": 0.5})
    whole = _loss(pos, neg, config)
    mean = pos.mean()
    shards = [
        guided_loss(pos[:2], neg[:1], config, n_positive=4, n_negative=3, mean_positive=mean, scale=2.0),
        guided_loss(pos[2:], neg[1:], config, n_positive=4, n_negative=3, mean_positive=mean, scale=2.0),
    ]
    # DDP averages the processes' gradients: each process's loss is scaled by their number
    assert (sum(shards) / 2).item() == pytest.approx(whole.item())
