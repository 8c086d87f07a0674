"""Every bijection inverts, and its log-determinant equals log |det| of the autograd Jacobian."""

from __future__ import annotations

import pytest
import torch

from harmonizing_flows.method.flow.dequantization import Dequantization
from harmonizing_flows.method.flow.layers import Coupling, Squeeze, checkerboard


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Move parameters away from the identity initialisation, so the tests see a non-trivial map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log |det J| per sample of fn applied to each sample of x separately."""
    out = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].reshape(-1), x[i])
        out.append(torch.linalg.slogdet(jac.reshape(x[i].numel(), x[i].numel()))[1])
    return torch.stack(out)


@pytest.mark.parametrize(
    ("channels", "mask", "parity", "condition"),
    [
        (1, "checkerboard", 0, 0),
        (1, "checkerboard", 1, 1),
        (4, "checkerboard", 0, 0),
        (4, "channel", 0, 0),
        (4, "channel", 1, 0),
        (3, "channel", 0, 1),
        (3, "channel", 1, 2),
    ],
)
def test_coupling_inverts_and_logdet_matches_jacobian(channels, mask, parity, condition):
    torch.manual_seed(0)
    layer = Coupling(channels, (4, 6), mask, parity=parity, condition_channels=condition).double()
    _randomize(layer)
    z = torch.randn(2, channels, 4, 4, dtype=torch.float64)
    cond = torch.randn(2, condition, 4, 4, dtype=torch.float64) if condition else None
    y, logdet = layer(z, cond)
    assert logdet.shape == (2, 4, 4)
    assert not torch.allclose(y, z)  # the test must see a non-trivial map
    torch.testing.assert_close(layer.inverse(y, cond), z, rtol=1e-10, atol=1e-10)

    def fn(v):
        return layer(v, None if cond is None else cond[: v.shape[0]])[0]

    for i in range(2):
        c = None if cond is None else cond[i : i + 1]
        expected = _jacobian_logdet(lambda v, c=c: layer(v, c)[0], z[i : i + 1])
        torch.testing.assert_close(logdet[i].sum(), expected[0], rtol=1e-9, atol=1e-9)


def test_coupling_starts_as_the_identity():
    layer = Coupling(4, (4, 4), "channel")
    z = torch.randn(2, 4, 8, 8)
    y, logdet = layer(z)
    torch.testing.assert_close(y, z)
    assert torch.count_nonzero(logdet) == 0


def test_checkerboard_coupling_keeps_its_a_pixels():
    layer = Coupling(1, (4,), "checkerboard", parity=1)
    _randomize(layer)
    z = torch.randn(1, 1, 6, 6)
    y, _ = layer(z)
    kept = checkerboard(6, 6, 1).bool()
    assert torch.equal(y[kept.expand_as(y)], z[kept.expand_as(z)])
    assert not torch.allclose(y[~kept.expand_as(y)], z[~kept.expand_as(z)])


def test_squeeze_inverts_and_is_volume_preserving():
    z = torch.randn(2, 3, 8, 6)
    squeeze = Squeeze()
    y, logdet = squeeze(z)
    assert y.shape == (2, 12, 4, 3) and torch.count_nonzero(logdet) == 0
    torch.testing.assert_close(squeeze.inverse(y), z)
    assert torch.equal(y.flatten().sort().values, z.flatten().sort().values)  # a permutation of the values


def test_dequantization_density_matches_jacobian():
    torch.manual_seed(1)
    deq = Dequantization(2, (4, 4)).double()
    _randomize(deq, seed=3)
    x = torch.randint(0, 256, (2, 1, 4, 4)).double()
    eps = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    u, log_q = deq(x, eps)
    assert u.min() > 0 and u.max() < 1 and log_q.shape == (2, 4, 4)
    normal = torch.distributions.Normal(0.0, 1.0)
    for i in range(2):
        logdet = _jacobian_logdet(lambda e, i=i: deq(x[i : i + 1], e)[0], eps[i : i + 1])[0]
        expected = normal.log_prob(eps[i]).sum() - logdet  # q(u) = N(eps) / |du/deps|
        torch.testing.assert_close(log_q[i].sum(), expected, rtol=1e-9, atol=1e-9)


def test_a_mask_first_made_in_inference_mode_still_serves_training():
    with torch.inference_mode():
        checkerboard(6, 10, 1, torch.device("cpu"))  # a size no other test uses: this call fills the cache
    layer = Coupling(1, (4,), "checkerboard", parity=1)
    _randomize(layer)
    z = torch.randn(2, 1, 6, 10, requires_grad=True)
    y, logdet = layer(z)
    (y.sum() + logdet.sum()).backward()  # autograd refuses inference tensors saved for backward
    assert z.grad is not None
