"""The flow's adequacy measures: per-slice bpd, the AUROC, and the verdict stored by ``hflow fit``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harmonizing_flows.config import AugmentConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.method import adequacy
from harmonizing_flows.method.adequacy import auroc, flow_adequacy, slice_bpd
from harmonizing_flows.method.flow import Flow


def _slices() -> Slices:
    rng = np.random.default_rng(0)
    images = np.zeros((5, 32, 32), dtype=np.uint8)
    mask = np.zeros((5, 32, 32), dtype=np.uint8)
    mask[1:, 6:26, 8:24] = 1  # the first slice holds no brain
    images[mask.astype(bool)] = rng.integers(60, 200, int(mask.sum()))
    return Slices(images=images, mask=mask)


def test_auroc_is_the_chance_that_a_negative_scores_a_higher_bpd():
    low, high = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0])
    assert auroc(low, high) == 1.0 and auroc(high, low) == 0.0
    assert auroc(low, low) == 0.5
    assert auroc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5  # one of two pairs ordered


def test_slice_bpd_scores_each_brain_slice_under_the_flow(smoke_profile):
    torch.manual_seed(0)
    flow, data = Flow(smoke_profile.flow).eval(), _slices()
    plain = slice_bpd(flow, data, torch.device("cpu"))
    assert plain.shape == (4,) and np.isfinite(plain).all()  # brain slices only
    assert np.array_equal(plain, slice_bpd(flow, data, torch.device("cpu")))  # fixed noise: reproducible
    from harmonizing_flows.method.distributed import stable_seed

    generator = torch.Generator().manual_seed(stable_seed(0, "adequacy-noise"))
    x, m = data.batch(data.brain_rows(), "cpu")
    with torch.no_grad():
        direct = flow.bpd(x, m, noise=torch.randn(x.shape, generator=generator), brain_only=True)
    assert plain == pytest.approx(direct.double().numpy(), rel=1e-5)
    augmented = slice_bpd(flow, data, torch.device("cpu"), augmentation=AugmentConfig(), seed=1)
    assert augmented.shape == plain.shape and not np.allclose(augmented, plain)


def test_the_verdict_names_each_limit_a_flow_fails(smoke_profile, monkeypatch):
    torch.manual_seed(0)
    flow, data = Flow(smoke_profile.flow).eval(), _slices()
    measured = flow_adequacy(flow, data, AugmentConfig(), torch.device("cpu"))
    source = slice_bpd(flow, data, torch.device("cpu"))
    assert measured.brain_bpd == pytest.approx(source.mean(), abs=1e-4) and measured.slices == 4
    monkeypatch.setattr(adequacy, "MAX_BRAIN_BPD", 0.0)
    monkeypatch.setattr(adequacy, "MIN_AUROC", 1.01)
    failing = flow_adequacy(flow, data, AugmentConfig(), torch.device("cpu"))
    assert not failing.adequate and len(failing.problems) == 2
    assert "over the brain" in failing.problems[0] and "AUROC" in failing.problems[1]
    monkeypatch.setattr(adequacy, "MAX_BRAIN_BPD", 100.0)
    monkeypatch.setattr(adequacy, "MIN_AUROC", 0.0)
    passing = flow_adequacy(flow, data, AugmentConfig(), torch.device("cpu"))
    assert passing.adequate and passing.to_json()["adequate"] is True


def test_fit_stores_the_flow_adequacy(fitted):
    stored = json.loads((fitted / "model.json").read_text())["flow_adequacy"]
    assert stored["slices"] > 0 and 0.0 <= stored["auroc_augmented"] <= 1.0 and stored["brain_bpd"] > 0
    assert stored["adequate"] == (not stored["problems"])
