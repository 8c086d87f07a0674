"""Fitting on a simulated source site at the smoke profile: what is written, what is learned, resuming."""

from __future__ import annotations

import json

import pytest
import torch

from harmonizing_flows.config import NegativeConfig, TrainConfig
from harmonizing_flows.data.datasets import load_subjects
from harmonizing_flows.data.prepare import read_volumes
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import ConfigError, InputError, OutputExistsError, TrainingError
from harmonizing_flows.method.augment import FlowNegatives
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.distributed import Context
from harmonizing_flows.method.flow import Flow
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.loop import Validation, kept_epoch, prepare_checkpoints, run_training
from harmonizing_flows.method.store import load_model
from harmonizing_flows.method.training import (
    _FlowBpd,
    fit,
    fit_flow,
    fit_harmonizer,
    fit_model,
    flow_step,
    measure_bpd,
)
from harmonizing_flows.profiles import apply_overrides


def _slices(subjects, config, first: int | None = None) -> Slices:
    """The brain slices of some subjects (the first ``first`` of them)."""
    data = Slices.pool(read_volumes(subjects, config))
    return data if first is None else Slices(images=data.images[:first], mask=data.mask[:first])


def test_fit_writes_a_complete_model(fitted):
    doc = json.loads((fitted / "model.json").read_text())
    assert doc["source_site"] == "mprage-3t"
    assert doc["image_size"] == [48, 48]
    assert set(doc["source_bpd"]) == {"all_pixels", "brain_only"}
    assert len(doc["training"]["harmonizer"]) == 6 and len(doc["training"]["flow"]) == 6
    assert doc["training"]["flow"][-1]["bpd"] < doc["training"]["flow"][0]["bpd"]
    assert doc["training"]["harmonizer"][-1]["mse"] < doc["training"]["harmonizer"][0]["mse"]
    val = [r["val_brain_bpd"] for r in doc["training"]["flow"]]  # the flow is validated after every epoch
    assert doc["training"]["flow_kept_epoch"] == 1 + val.index(min(val))
    assert (fitted.parent / "model.checkpoints" / "flow.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in fitted.parent.iterdir())


def test_source_bpd_is_below_that_of_dissimilar_augmentations(fitted, simulated):
    model = load_model(fitted)
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "mprage-3t" and s.split == "val"]
    val = _slices(subjects, model.profile.slices)
    source = measure_bpd(model.flow, val, torch.device("cpu"))
    x, m = val.batch(torch.arange(len(val)), "cpu")
    negatives, origin = FlowNegatives(NegativeConfig(fraction=1.0))(x, m, torch.Generator().manual_seed(0))
    assert len(negatives) > 5
    augmented = Slices(images=negatives[:, 0].round().to(torch.uint8).numpy(), mask=val.mask[origin.numpy()])
    assert source < measure_bpd(model.flow, augmented, torch.device("cpu"))
    stored = json.loads((fitted / "model.json").read_text())["source_bpd"]["all_pixels"]
    # the stopping rule's reference is measured through the pre-trained harmonizer, as targets are
    through = measure_bpd(model.flow, val, torch.device("cpu"), harmonizer=model.harmonizer)
    assert stored == pytest.approx(through, rel=1e-5) and through != pytest.approx(source, rel=1e-3)
    # the curve's reference: through its start, the validation slices matched onto the source histogram
    curve = CurveHarmonizer(model.metadata["source_histogram"])
    matched = measure_bpd(model.flow, curve.prepare(val), torch.device("cpu"), harmonizer=curve)
    stored_curve = json.loads((fitted / "model.json").read_text())["source_bpd_curve"]["all_pixels"]
    assert stored_curve == pytest.approx(matched, rel=1e-5) and matched != pytest.approx(through, rel=1e-3)


def test_resuming_continues_exactly(simulated, smoke_profile):
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    data = _slices(subjects, smoke_profile.slices, 24)
    ctx = Context()

    def run(epochs, checkpoint=None, resume=False, flow=None):
        profile = apply_overrides(smoke_profile, [f"flow_training.epochs={epochs}", "flow_training.checkpoint_every=1"])
        torch.manual_seed(0)
        flow = flow or Flow(profile.flow)
        fit_flow(flow, data, profile, ctx, val=data.spread(8), checkpoint=checkpoint, resume=resume, progress=False)
        return flow

    straight = run(3)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "flow.safetensors"
        run(2, ckpt)
        torch.manual_seed(0)
        resumed = run(3, ckpt, resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fit_refuses_existing_output_and_ambiguous_sites(simulated, smoke_profile, tmp_path, fitted):
    with pytest.raises(OutputExistsError):
        fit(simulated.manifest, fitted, smoke_profile, site="mprage-3t", progress=False)
    with pytest.raises(InputError, match=r"several sites .*choose one with --site"):
        fit(simulated.manifest, tmp_path / "m", smoke_profile, progress=False)
    with pytest.raises(InputError, match="has no site 'nowhere'"):
        fit(simulated.manifest, tmp_path / "m", smoke_profile, site="nowhere", progress=False)
    bad = apply_overrides(smoke_profile, ["slices.image_size=[44, 44]"])
    with pytest.raises(ValueError, match="multiples of"):
        fit(simulated.manifest, tmp_path / "m", bad, site="mprage-3t", progress=False)
    assert not (tmp_path / "m").exists()


def test_fit_without_validation_subjects_warns_that_the_source_bpd_is_measured_on_training(
    simulated, smoke_profile, tmp_path
):
    from dataclasses import replace

    from harmonizing_flows.data.datasets import write_manifest

    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "mprage-3t"]
    given = [replace(s, split="test" if k == len(subjects) - 1 else "train") for k, s in enumerate(subjects)]
    manifest = write_manifest(given, tmp_path / "manifest.csv")
    quick = apply_overrides(smoke_profile, ["flow_training.epochs=1", "harmonizer_training.epochs=1"])
    with pytest.warns(UserWarning, match=r"mprage-3t has no subject in the validation split.*training slices"):
        fit(manifest, tmp_path / "m", quick, progress=False)
    assert load_model(tmp_path / "m").metadata["source_subjects"]["val"] == [s.subject for s in given[:-1]]


def test_fit_model_depends_on_the_seed_not_on_earlier_draws(simulated, smoke_profile):
    # The demo simulates in the same process before fitting; a benchmark fits one setting after another.
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    data = _slices(subjects, smoke_profile.slices, 16)
    profile = apply_overrides(smoke_profile, ["harmonizer_training.epochs=1", "flow_training.epochs=1"])
    models = []
    for earlier in (1, 2):
        torch.manual_seed(earlier)
        torch.rand(100)
        models.append(fit_model(data, data, profile, Context(), progress=False))
    for net in ("harmonizer", "flow"):
        first, second = (getattr(m, net).state_dict() for m in models)
        assert all(torch.equal(first[k], second[k]) for k in first), net


def test_a_model_for_the_curve_alone_skips_the_harmonizer_network_and_keeps_the_same_flow(simulated, smoke_profile):
    # The demo runs the curve alone and skips pre-training the network it would never use.
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    data = _slices(subjects, smoke_profile.slices, 16)
    profile = apply_overrides(smoke_profile, ["harmonizer_training.epochs=1", "flow_training.epochs=1"])
    whole = fit_model(data, data, profile, Context(), progress=False)
    curve_only = fit_model(data, data, profile, Context(), progress=False, pretrain_harmonizer=False)
    assert whole is not None and curve_only is not None
    assert all(torch.equal(v, curve_only.flow.state_dict()[k]) for k, v in whole.flow.state_dict().items())
    assert whole.metadata["pretrained_harmonizer"] and not curve_only.metadata["pretrained_harmonizer"]
    assert curve_only.metadata["training"]["harmonizer"] is None and curve_only.metadata["source_bpd"] is None
    assert curve_only.metadata["source_bpd_curve"] == whole.metadata["source_bpd_curve"]
    torch.manual_seed(profile.seed)  # the network is left as initialised
    untrained = Harmonizer(profile.harmonizer).state_dict()
    assert all(torch.equal(v, untrained[k]) for k, v in curve_only.harmonizer.state_dict().items())


def test_the_restorer_is_fitted_with_the_model_and_alone_alike(simulated, smoke_profile, tmp_path):
    # The benchmark's curve+restoration variant fits the restorer alone onto a shared model: the same network.
    from harmonizing_flows.method.restoration import Restored, Restorer
    from harmonizing_flows.method.store import load_harmonizer, save_model
    from harmonizing_flows.method.training import fit_restorer

    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    data = _slices(subjects, smoke_profile.slices, 16)
    profile = apply_overrides(smoke_profile, ["harmonizer_training.epochs=1", "flow_training.epochs=1"])
    plain = fit_model(data, data, profile, Context(), progress=False)
    restoring = apply_overrides(profile, ["restoration.enabled=true"])
    model = fit_model(data, data, restoring, Context(), progress=False)
    assert plain is not None and model is not None and plain.restorer is None and model.restorer is not None
    assert all(torch.equal(v, model.flow.state_dict()[k]) for k, v in plain.flow.state_dict().items())
    history = model.metadata["training"]["restoration"]
    assert len(history) == restoring.restoration_training.epochs and all(h["mse"] > 0 for h in history)
    assert model.restorer.net[-1].weight.abs().sum() > 0  # trained away from its identity start
    torch.manual_seed(restoring.seed)
    alone = Restorer(restoring.restoration)
    fit_restorer(alone, data, restoring, Context(), progress=False)
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in model.restorer.state_dict().items())
    folder = save_model(model, tmp_path / "model")
    assert (folder / "restorer.safetensors").is_file()
    loaded = load_model(folder)
    assert loaded.restorer is not None
    assert all(torch.equal(v, loaded.restorer.state_dict()[k]) for k, v in model.restorer.state_dict().items())
    assert isinstance(load_harmonizer(folder)[0], Restored)
    (folder / "restorer.safetensors").unlink()
    with pytest.raises(InputError, match=r"restorer\.safetensors"):
        load_model(folder)


def test_a_validation_brain_that_cannot_be_matched_is_refused_before_training(simulated, smoke_profile, tmp_path):
    import numpy as np

    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    data = _slices(subjects, smoke_profile.slices, 16)
    mask = np.zeros_like(data.mask)
    mask[:, 20:24, 20:24] = 1  # 16 slices x 16 brain pixels: no histogram worth matching
    tiny = Slices(images=data.images, mask=mask)
    profile = apply_overrides(smoke_profile, ["harmonizer_training.epochs=1", "flow_training.epochs=1"])
    with pytest.raises(InputError, match="the source validation slices: has 256 brain pixels"):
        fit_model(data, tiny, profile, Context(), progress=False, checkpoints=tmp_path / "checkpoints")
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


def test_alpha_parametrization_changes_only_the_harmonizer(simulated, smoke_profile):
    # The benchmark fits the positive-alpha variant whole and counts on its flow being the paper-faithful one,
    # and on its harmonizer being what a refit from the seed alone gives.
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    data = _slices(subjects, smoke_profile.slices, 16)
    short = ["harmonizer_training.epochs=1", "flow_training.epochs=1"]
    profiles = [apply_overrides(smoke_profile, [*short, f"harmonizer.positive_alpha={f}"]) for f in ("false", "true")]
    paper, positive = (fit_model(data, data, p, Context(), progress=False) for p in profiles)
    assert paper is not None and positive is not None
    assert all(torch.equal(v, positive.flow.state_dict()[k]) for k, v in paper.flow.state_dict().items())
    assert not torch.equal(paper.harmonizer.alpha_head.bias, positive.harmonizer.alpha_head.bias)
    torch.manual_seed(positive.profile.seed)
    refit = Harmonizer(positive.profile.harmonizer)
    fit_harmonizer(refit, data, positive.profile, Context(), progress=False)
    refit_state = refit.state_dict()
    assert all(torch.equal(v, refit_state[k]) for k, v in positive.harmonizer.state_dict().items())


def test_a_non_finite_loss_stops_training_before_the_weights_change():
    module = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    calls = []

    def step(model, index, generator):
        calls.append(len(calls))
        out = model(torch.ones(len(index), 2)).sum()
        return out * (float("nan") if len(calls) == 3 else 0.0), {}

    config = TrainConfig(epochs=2, batch_size=2, lr=1e-2, halve_every=1)
    with pytest.raises(TrainingError, match=r"the loss became NaN or infinite at epoch 2, step 1 .*demo_training\.lr"):
        run_training(module, step, 4, config, name="demo", seed=0, ctx=Context(), progress=False)
    assert len(calls) == 3  # epoch 2, step 1: nothing after it ran
    for key, value in module.state_dict().items():  # zero losses never moved the weights; the NaN did not either
        assert torch.equal(value, before[key])


def test_non_finite_gradients_stop_training_before_the_weights_change():
    module = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in module.state_dict().items()}

    def step(model, index, generator):  # a finite loss whose gradient is not: d sqrt(x)/dx at 0
        return torch.sqrt(model(torch.zeros(len(index), 2)).sum() * 0.0), {}

    config = TrainConfig(epochs=1, batch_size=2, lr=1e-2, halve_every=1)
    with pytest.raises(TrainingError, match=r"the gradients became NaN or infinite at epoch 1, step 1"):
        run_training(module, step, 4, config, name="demo", seed=0, ctx=Context(), progress=False)
    assert all(torch.equal(value, before[key]) for key, value in module.state_dict().items())


def _drifting_training(scores, keep, tmp_path=None, epochs=None, resume=False):
    """A one-weight module that Adam moves by about 1 per epoch (one step of lr 1), validated by
    ``scores[epoch - 1]`` read off the weight itself, so that a resumed run scores the same epochs alike."""
    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(module.weight)

    def step(model, index, generator):
        return -model.weight.sum(), {}

    def score():
        return scores[round(float(module.weight.detach())) - 1]

    config = TrainConfig(epochs=epochs or len(scores), batch_size=1, lr=1.0, halve_every=100, keep=keep,
                         checkpoint_every=1)  # fmt: skip
    checkpoint = tmp_path / "demo.safetensors" if tmp_path is not None else None
    history = run_training(module, step, 1, config, name="demo", seed=0, ctx=Context(), progress=False,
                           validation=Validation("val", score), checkpoint=checkpoint, resume=resume)  # fmt: skip
    return module, history


def test_keep_best_ends_with_the_lowest_validation_epochs_weights(tmp_path):
    scores = [5.0, 3.0, 4.0, 6.0]
    last, history = _drifting_training(scores, "last")
    best, _ = _drifting_training(scores, "best")
    assert [r["val"] for r in history] == scores
    assert kept_epoch(history, TrainConfig(keep="best"), "val") == 2
    assert kept_epoch(history, TrainConfig(keep="last"), "val") == 4
    # the weight counts the epochs: it tells which epoch's weights each run ended with
    w_last, w_best = float(last.weight.detach()), float(best.weight.detach())
    assert w_best == pytest.approx(2.0, abs=0.05) and w_last == pytest.approx(4.0, abs=0.05)


def test_keep_best_survives_a_resume(tmp_path):
    scores = [5.0, 3.0, 4.0, 6.0]
    straight, _ = _drifting_training(scores, "best")
    _drifting_training(scores, "best", tmp_path, epochs=3)  # stopped after epoch 3, the best (2) in the checkpoint
    resumed, history = _drifting_training(scores, "best", tmp_path, resume=True)
    assert [r["val"] for r in history] == scores
    assert torch.equal(straight.weight, resumed.weight)


def test_keep_best_needs_a_validation_score():
    config = TrainConfig(epochs=1, batch_size=1, lr=1.0, keep="best")
    with pytest.raises(ConfigError, match=r"demo_training\.keep=best needs a validation"):
        run_training(torch.nn.Linear(1, 1), lambda m, i, g: (m.weight.sum(), {}), 1, config, name="demo",
                     seed=0, ctx=Context(), progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="keep must be last or best"):
        TrainConfig(keep="first")


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_gradients_are_clipped_to_the_configured_norm(clip):
    module = torch.nn.Linear(2, 1)

    def step(model, index, generator):  # a steep loss: gradient norms in the thousands
        return 1e3 * model(torch.ones(len(index), 2)).sum(), {}

    config = TrainConfig(epochs=1, batch_size=2, lr=1e-2, halve_every=1, clip_grad_norm=clip)
    run_training(module, step, 4, config, name="demo", seed=0, ctx=Context(), progress=False)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    # the last step's gradients, as the optimizer used them
    assert norm <= clip * (1 + 1e-5) if clip else norm > 1e3


def test_a_resume_never_continues_another_fit(simulated, smoke_profile, tmp_path, fitted):
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    folder = tmp_path / "m.checkpoints"
    prepare_checkpoints(folder, smoke_profile, subjects, resume=False, main=True)
    (folder / "flow.safetensors").write_bytes(b"weights of this fit")
    prepare_checkpoints(folder, smoke_profile, subjects, resume=True, main=True)  # same settings and data
    assert (folder / "flow.safetensors").read_bytes() == b"weights of this fit"
    other_seed = apply_overrides(smoke_profile, ["seed=1"])
    with pytest.raises(InputError, match=r"m\.checkpoints: holds checkpoints of a fit with other settings"):
        prepare_checkpoints(folder, other_seed, subjects, resume=True, main=True)
    with pytest.raises(InputError, match="other settings, seed or training data"):
        prepare_checkpoints(folder, smoke_profile, subjects[:-1], resume=True, main=True)
    # a new fit never deletes an earlier fit's checkpoints unasked: they may be hours of training
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier fit \(flow\.safetensors\); pass --resume"):
        prepare_checkpoints(folder, other_seed, subjects, resume=False, main=True)
    assert (folder / "flow.safetensors").read_bytes() == b"weights of this fit"
    prepare_checkpoints(folder, other_seed, subjects, resume=False, main=True, overwrite=True)  # starts clean
    assert not (folder / "flow.safetensors").exists()
    # a finished model is never replaced by a resume without --overwrite
    with pytest.raises(OutputExistsError):
        fit(simulated.manifest, fitted, smoke_profile, site="mprage-3t", resume=True, progress=False)


@pytest.mark.parametrize(
    ("margin_mode", "weighting"), [("relative", "terms"), ("absolute", "terms"), ("relative", "samples")]
)
def test_the_training_step_computes_the_guided_objective(simulated, smoke_profile, margin_mode, weighting):
    subjects = [s for s in load_subjects(simulated.manifest) if s.site == "spgr-15t" and s.split == "train"]
    overrides = ["negatives.fraction=0.5", f"flow.margin_mode='{margin_mode}'", f"flow.weighting='{weighting}'"]
    profile = apply_overrides(smoke_profile, overrides)
    data = _slices(subjects, profile.slices)
    index = torch.arange(8)
    # the draws of the step, in its order, for the reference objective
    generator = torch.Generator().manual_seed(3)
    x, m = data.batch(index, torch.device("cpu"))
    negatives, origin = FlowNegatives(profile.negatives)(x, m, generator)
    noise = torch.randn(len(x) + len(negatives), *x.shape[1:], generator=generator)
    torch.manual_seed(0)
    flow = Flow(profile.flow)
    # a margin among the negatives' bpd, so that the hinge clips some of them and not others
    with torch.no_grad():
        bpd = flow.bpd(torch.cat([x, negatives]), torch.cat([m, m[origin]]), noise=noise)
    c = bpd[len(x) :].median()
    assert (bpd[len(x) :] < c).any() and (bpd[len(x) :] > c).any()
    # with the paper's weighting the negatives take their originals' places among the positives
    positive = torch.ones(len(x), dtype=torch.bool)
    if weighting == "samples":
        positive[origin] = False
        assert 0 < positive.sum() < len(x)
    margin = float(c) if margin_mode == "absolute" else float(c - bpd[: len(x)][positive].mean())
    profile = apply_overrides(profile, [f"flow.margin={margin}"])

    loss, stats = flow_step(profile, data, Context())(_FlowBpd(flow), index, torch.Generator().manual_seed(3))
    # Eq. 4 over the whole batch, written out: mean positive bpd minus the mean (or, weighing samples, the sum over
    # all images) of the negatives' bpd clipped at the margin
    noise = torch.cat([noise[: len(x)][positive], noise[len(x) :]])
    bpd = flow.bpd(torch.cat([x[positive], negatives]), torch.cat([m[positive], m[origin]]), noise=noise)
    pos, neg = bpd[: int(positive.sum())], bpd[int(positive.sum()) :]
    c = margin if margin_mode == "absolute" else pos.mean().detach() + margin
    hinge = torch.minimum(neg, torch.as_tensor(c))
    expected = (pos.sum() - hinge.sum()) / len(bpd) if weighting == "samples" else pos.mean() - hinge.mean()
    parts = {"bpd": float(pos.detach().mean()), "negative_bpd": float(neg.detach().mean())}
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(
        torch.autograd.grad(loss, list(flow.parameters())),
        torch.autograd.grad(expected, list(flow.parameters())),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert stats["bpd"] == pytest.approx(parts["bpd"], rel=1e-5)
    assert stats["negative_bpd"] == pytest.approx(parts["negative_bpd"], rel=1e-5)


def test_fit_stores_the_source_histogram_of_its_training_slices(fitted, simulated, smoke_profile):
    import numpy as np

    from harmonizing_flows.data.prepare import read_site

    stored = json.loads((fitted / "model.json").read_text())
    histogram = np.asarray(stored["source_histogram"])
    train = read_site(simulated.manifest, smoke_profile.slices, site="mprage-3t", splits=("train",))
    pooled = Slices.pool(train.volumes)
    assert histogram.shape == (256,) and np.array_equal(histogram, pooled.brain_counts())
    assert histogram.sum() == pooled.mask.astype(bool).sum() and histogram[0] < histogram.sum()
