"""Test-time adaptation (paper Eq. 6): the flow is frozen, the harmonizer moves so that its outputs on unlabeled
target slices become likely under the flow; a stopping rule picks which step to keep.

Pushed too far, this collapses: the flow finds a dark, flat or blurred brain very likely, so the harmonizer drifts
there (METHOD.md, "What a small CPU trial showed"). The stopping rule is therefore part of the method, and
adaptation never returns the last step of a run that went wrong:

* ``source-bpd``: stop when the target bpd on a fixed monitoring set reaches the source validation bpd stored
  with the flow; keep that step (or, if never reached, the step with the lowest target bpd).
* ``entropy``: keep the step whose harmonized slices give the lowest mean entropy of a segmenter's predictions;
  stop after ``patience`` evaluations without improvement.
* ``steps``: take every step and keep the last.

Guards, each a named option: ``harmonizer.positive_alpha`` (alpha cannot turn negative), ``adapt.alpha_guard``
(stop when alpha falls below a share of its start, keeping the best step before), ``adapt.intensity_guard`` (the
same when the harmonized brain's mean intensity drifts or its spread shrinks), ``negatives.collapse_modes``
(the flow learns that collapsed images are unlikely), ``adapt.brain_only`` (the likelihood counts brain pixels).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from harmonizing_flows.config import AdaptConfig
from harmonizing_flows.data.slices import Slices
from harmonizing_flows.errors import ConfigError, system_errors
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.distributed import channels_last, resolve_device, stable_seed
from harmonizing_flows.method.folders import check_output_folder
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.store import FORMAT, Model, load_model, save_model

__all__ = [
    "HM_START",
    "PRETRAINED_START",
    "AdaptationResult",
    "Decision",
    "adapt",
    "adapt_harmonizer",
    "adaptation_loss",
    "choose_settings",
    "decide",
    "prediction_entropy",
    "starting_harmonizer",
]

HM_START = "histogram matching onto the source histogram"
PRETRAINED_START = "the pre-trained harmonizer"
"""What an adaptation started from (its summary's ``started_as``): step 0 of the curve and of the paper's
harmonizer."""

Segmenter = Callable[[torch.Tensor], torch.Tensor]
"""Images ``(B, 1, H, W)`` on 0..255 -> class logits ``(B, C, H, W)``."""


@dataclass
class AdaptationResult:
    """The kept harmonizer, the whole curve, and why that step was kept."""

    harmonizer: Harmonizer | CurveHarmonizer
    curve: list[dict[str, float]]
    chosen_step: int
    reason: str
    guard: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    preview: dict[str, Any] = field(default_factory=dict)
    """A monitoring slice as it was, after the pre-trained harmonizer, and after the kept step (0..255)."""


@torch.no_grad()
def prediction_entropy(segmenter: Segmenter, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of the segmenter's per-pixel class distribution over the brain."""
    logits = segmenter(images)
    log_p = torch.log_softmax(logits.float(), dim=1)
    entropy = -(log_p.exp() * log_p).sum(1, keepdim=True)
    return float((entropy * masks).sum() / masks.sum().clamp_min(1.0))


@dataclass(frozen=True)
class Decision:
    """What a stopping rule makes of an adaptation curve so far."""

    index: int
    """The curve record (and so the harmonizer state) to keep."""
    stop: bool
    """Whether adaptation should stop now."""
    reason: str
    guard: str | None = None
    """The guard that stopped it, if one did."""


def decide(
    curve: Sequence[Mapping[str, float]], config: AdaptConfig, source_bpd: float, *, final: bool = False
) -> Decision:
    """Apply ``config.stop`` and the guards to the evaluations so far (``curve[0]`` is the start).

    A pure function of the curve's records, so the same rule can be replayed on a recorded curve: the benchmark
    runs adaptation once and asks each rule which step it would have kept. ``final`` marks the last evaluation.
    """
    rule = config.stop

    def score(record: Mapping[str, float]) -> float:
        if rule == "entropy":
            return record["entropy"]
        if rule == "source-bpd":
            return record["target_bpd"]
        return -record["step"]

    if rule == "source-bpd" and curve[0]["target_bpd"] <= source_bpd:
        start = HM_START if config.harmonizer == "curve" else PRETRAINED_START
        return Decision(0, True, f"{start} already reaches the source bpd ({source_bpd:.3f})")
    best, stale = 0, 0
    for i in range(1, len(curve)):
        record = curve[i]
        guard = _guard(curve[0], record, config)
        if guard:
            return Decision(best, True, f"stopped by the {guard}; kept the best step before it", guard)
        if score(record) < score(curve[best]):
            best, stale = i, 0
        else:
            stale += 1
        if rule == "source-bpd" and record["target_bpd"] <= source_bpd:
            return Decision(
                i, True, f"the target bpd {record['target_bpd']:.3f} reached the source bpd {source_bpd:.3f}"
            )
        if rule == "entropy" and stale >= config.patience:
            return Decision(best, True, f"the entropy did not improve for {config.patience} evaluations")
    if not final:
        return Decision(best, False, "")
    steps = int(curve[-1]["step"])
    reason = {
        "source-bpd": f"the target bpd never reached the source bpd {source_bpd:.3f} in {steps} steps; "
        "kept the step with the lowest target bpd",
        "entropy": f"took all {steps} steps; kept the step with the lowest entropy",
        "steps": f"took all {steps} steps",
    }[rule]
    return Decision(best, True, reason)


def _guard(start: Mapping[str, float], record: Mapping[str, float], config: AdaptConfig) -> str | None:
    """Which guard, if any, this evaluation trips (see ``AdaptConfig.alpha_guard`` and ``intensity_guard``)."""
    at = f"at step {int(record['step'])}"
    # Written so that a NaN (a diverged harmonizer) trips the guards rather than slipping past them.
    if config.alpha_guard and not record["alpha"] >= config.alpha_guard * start["alpha"]:
        return (
            f"alpha guard (alpha fell to {record['alpha']:.3f}, below {config.alpha_guard:g} of its start "
            f"{start['alpha']:.3f}, {at})"
        )
    tolerance = config.intensity_guard
    if tolerance:
        mean0, mean = start["brain_mean"], record["brain_mean"]
        if not abs(mean - mean0) <= tolerance * mean0:
            return (
                f"intensity guard (the brain's mean intensity moved from {mean0:.1f} to {mean:.1f}, more than "
                f"{tolerance:.0%}, {at})"
            )
        std0, std = start.get("brain_std"), record.get("brain_std")
        if std0 is not None and std is not None and not std >= (1 - tolerance) * std0:
            return (
                f"intensity guard (the brain's intensity spread fell from {std0:.1f} to {std:.1f}, more than "
                f"{tolerance:.0%}, {at})"
            )
    return None


def choose_settings(
    config: AdaptConfig,
    *,
    stop: str | None = None,
    steps: int | None = None,
    with_segmenter: bool = False,
    stop_chosen: bool = False,
) -> AdaptConfig:
    """The adaptation settings of a run: ``config`` with the caller's stopping rule and steps.

    With a segmenter and no rule chosen (neither ``stop`` nor ``stop_chosen``, which says that a settings file or
    an override named one), the rule is ``entropy``, for either harmonizer: chosen on validation volumes, where the
    fixed steps could end below their start (benchmarks/RESULTS.md). Without a segmenter the entropy rule cannot
    run.

    Raises:
        ConfigError: The entropy rule without a segmenter.
    """
    if stop is not None:
        config = replace(config, stop=stop)
    elif with_segmenter and not stop_chosen:
        config = replace(config, stop="entropy")
    if config.stop == "entropy" and not with_segmenter:
        raise ConfigError("the entropy rule needs a segmenter: pass --segmenter (see `hflow fit-segmenter`)")
    if steps is not None:
        config = replace(config, steps=steps)
    return config


def starting_harmonizer(model: Model, config: AdaptConfig) -> Harmonizer | CurveHarmonizer:
    """What adaptation starts from: the model's harmonizer, or with ``config.harmonizer == "curve"`` a curve
    harmonizer at histogram matching onto the model's stored source histogram. Target slices go in prepared by it
    (:meth:`~harmonizing_flows.method.curve_harmonizer.CurveHarmonizer.prepare`, volume by volume).

    Raises:
        ConfigError: A curve harmonizer for a model without a stored source histogram; the paper's harmonizer for
            a model fitted without pre-training it.
    """
    if isinstance(model.harmonizer, CurveHarmonizer):
        return model.harmonizer
    if config.harmonizer != "curve":
        if not model.metadata.get("pretrained_harmonizer", True):
            raise ConfigError("this model's harmonizer network was not pre-trained (fitted for the curve harmonizer "
                              "only): adapt it with adapt.harmonizer=curve, or fit it again")  # fmt: skip
        return model.harmonizer
    histogram = model.metadata.get("source_histogram")
    if histogram is None:
        raise ConfigError("this model stores no source histogram (fitted by an older version): fit it again to "
                          "adapt a curve harmonizer")  # fmt: skip
    return CurveHarmonizer(histogram)


def adaptation_loss(
    flow: torch.nn.Module,
    harmonizer: Harmonizer | CurveHarmonizer,
    x: torch.Tensor,
    mask: torch.Tensor,
    noise: torch.Tensor,
    config: AdaptConfig,
) -> torch.Tensor:
    """Eq. 6: the flow's mean bpd of ``h(x)``, minus ``config.jacobian_weight`` times ``log2 |h'(x)|`` per pixel
    that the bpd counts (the change-of-variables term; none by default)."""
    loss = flow.bpd(harmonizer(x, mask), mask, noise=noise, brain_only=config.brain_only).mean()
    if config.jacobian_weight:
        pixels = mask.sum((1, 2, 3)).clamp_min(1.0) if config.brain_only else float(mask[0].numel())
        loss = loss - config.jacobian_weight * (harmonizer.log_jacobian(x, mask) / pixels).mean()
    return loss


def adapt_harmonizer(
    model: Model,
    target: Slices,
    config: AdaptConfig,
    *,
    device: torch.device | str = "cpu",
    segmenter: Segmenter | None = None,
    seed: int = 0,
    progress: bool = True,
    observer: Callable[[Harmonizer, int], dict[str, float]] | None = None,
) -> AdaptationResult:
    """Adapt a copy of :func:`starting_harmonizer` to the ``target`` slices (see the module docstring; prepared by
    it); ``model`` itself is left as it was.

    Args:
        observer: Called at each evaluation with the harmonizer and the step; its values join the curve. For
            analysis only (the oracle's Dice, say); it never influences which step is kept.
    """
    from harmonizing_flows.progress import progress_bar

    start = starting_harmonizer(model, config)
    source_bpd = _stopping_reference(model, config, segmenter, curve=isinstance(start, CurveHarmonizer))
    device = torch.device(device)
    if isinstance(segmenter, torch.nn.Module):
        segmenter = segmenter.to(device).eval()  # a loaded segmenter is on the CPU
    # a copy, frozen: the caller's flow keeps its device and its trainable parameters
    flow = channels_last(copy.deepcopy(model.flow).to(device)).eval().requires_grad_(False)
    harmonizer = channels_last(copy.deepcopy(start).to(device)).train()
    lr = config.curve_lr if isinstance(start, CurveHarmonizer) else config.lr
    optimizer = torch.optim.Adam(harmonizer.parameters(), lr=lr)

    n = len(target)
    monitor_index = torch.linspace(0, n - 1, min(config.monitor_slices, n)).round().long().unique()
    mx, mm = target.batch(monitor_index, device)
    monitor_noise = torch.randn(mx.shape, generator=torch.Generator().manual_seed(stable_seed(seed, "monitor"))).to(
        device
    )

    def evaluate(step: int, started: float) -> dict[str, float]:
        harmonizer.eval()
        with torch.no_grad():
            y, alpha = harmonizer.harmonize(mx, mm)
            pixels = mm.sum().clamp_min(1.0)
            brain_mean = float((y * mm).sum() / pixels)
            record = {
                "step": step,
                "target_bpd": float(flow.bpd(y, mm, noise=monitor_noise, brain_only=config.brain_only).mean()),
                "alpha": float(alpha.mean()),
                "brain_mean": brain_mean,
                "brain_std": float((((y - brain_mean) ** 2 * mm).sum() / pixels).sqrt()),
                "seconds": round(time.perf_counter() - started, 3),
            }
            if segmenter is not None:
                record["entropy"] = prediction_entropy(segmenter, y, mm)
        if observer is not None:
            record.update(observer(harmonizer, step))
        harmonizer.train()
        return record

    started = time.perf_counter()
    curve = [evaluate(0, started)]
    best_state = copy.deepcopy(harmonizer.state_dict())
    decision = decide(curve, config, source_bpd, final=config.steps == 0)
    bar = progress_bar(total=config.steps, desc="adapting", unit="step", enabled=progress)
    batch = min(config.batch_size, n)
    try:
        step = 0
        while not decision.stop and step < config.steps:
            step += 1
            g = torch.Generator().manual_seed(stable_seed(seed, "adapt", step))
            index = torch.randperm(n, generator=g)[:batch]
            x, m = target.batch(index, device)
            noise = torch.randn(x.shape, generator=g).to(device)
            loss = adaptation_loss(flow, harmonizer, x, m, noise, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
            if step % config.eval_every and step != config.steps:
                continue
            curve.append(evaluate(step, started))
            last = curve[-1]  # the curve has no alpha: its brain mean shows what moves
            moved = ({"brain_mean": f"{last['brain_mean']:.1f}"} if isinstance(harmonizer, CurveHarmonizer)
                     else {"alpha": f"{last['alpha']:.3f}"})  # fmt: skip
            bar.set_postfix(bpd=f"{last['target_bpd']:.3f}", **moved, refresh=False)
            decision = decide(curve, config, source_bpd, final=step >= config.steps)
            if decision.index == len(curve) - 1:
                best_state = copy.deepcopy(harmonizer.state_dict())
    finally:
        bar.close()
    best = curve[decision.index]
    reason, guard = decision.reason, decision.guard
    harmonizer.load_state_dict(best_state)
    preview = _preview(start, harmonizer.eval(), mx, mm, int(best["step"]), model.restorer)
    harmonizer.cpu()
    summary = {"source_bpd": source_bpd, "start": curve[0], "kept": best, "steps_taken": curve[-1]["step"],
               "started_as": HM_START if isinstance(start, CurveHarmonizer) else PRETRAINED_START}  # fmt: skip
    return AdaptationResult(harmonizer, curve, int(best["step"]), reason, guard, summary, preview)


def _stopping_reference(model: Model, config: AdaptConfig, segmenter: Segmenter | None, *, curve: bool) -> float:
    """The model's stored source bpd for the harmonizer family adapted (``curve`` or the paper's) and the configured
    likelihood (NaN when it has none), after checking that the stopping rule has what it needs: the curve's
    reference was measured through histogram matching, the paper harmonizer's through the pre-trained network
    (``training.source_references``)."""
    if config.stop == "entropy" and segmenter is None:
        raise ConfigError("the entropy stopping rule needs a segmenter")
    bpd_key = "brain_only" if config.brain_only else "all_pixels"
    family = "source_bpd_curve" if curve else "source_bpd"
    source_bpd = float((model.metadata.get(family) or {}).get(bpd_key, float("nan")))
    if config.stop == "source-bpd" and not source_bpd == source_bpd:  # NaN: the model has no stored source bpd
        family = "curve" if curve else "paper"
        raise ConfigError(f"this model stores no source bpd for the {family} harmonizer (fitted by an older "
                          "version?); fit it again with `hflow fit` or use another stopping rule")  # fmt: skip
    return source_bpd


@torch.no_grad()
def _preview(
    start: Harmonizer | CurveHarmonizer, adapted: Harmonizer | CurveHarmonizer, x: torch.Tensor, mask: torch.Tensor,
    step: int, restorer: torch.nn.Module | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The monitoring slice with the most brain as it was, after the starting and after the adapted harmonizer
    (0..255; then the model's restorer, if it has one: what the adapted model outputs), for the figure. A curve
    harmonizer's slices come matched already: that is its start."""
    k = int(mask.flatten(1).sum(1).argmax())
    one, one_mask = x[k : k + 1], mask[k : k + 1]
    y = adapted(one, one_mask)
    if restorer is not None:
        y = copy.deepcopy(restorer).to(x.device).eval()(y, one_mask)
    kept = {f"adapted (step {step}){', restored' if restorer is not None else ''}": y[0, 0].cpu().numpy()}
    if isinstance(start, CurveHarmonizer):
        return {"histogram matching": x[k, 0].cpu().numpy(), **kept}
    before = channels_last(copy.deepcopy(start).to(x.device)).eval()(one, one_mask)
    return {"target": x[k, 0].cpu().numpy(), "pre-trained harmonizer": before[0, 0].cpu().numpy(), **kept}


@system_errors
def adapt(
    model_dir: str | Path,
    target: str | Path,
    out: str | Path,
    *,
    config: AdaptConfig | None = None,
    site: str | None = None,
    splits: tuple[str, ...] | None = None,
    device: str | None = None,
    segmenter: Segmenter | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, AdaptationResult]:
    """Adapt a fitted model to the target data's site and write the adapted model folder ``out``.

    Args:
        model_dir: A model folder from :func:`harmonizing_flows.method.training.fit`.
        target: The target site's data (manifest, site folders or BIDS; images only, labels are not read).
        out: The adapted model folder (the flow is copied unchanged; the harmonizer is the kept step's).
        config: Adaptation settings; by default the model's profile's.
        site: The target site when ``target`` holds several.
        splits: Only these splits of the target (default: all its subjects; no labels are used).
        seed: Seed of the batches and the noise (default: the model's profile's).
    """
    from harmonizing_flows.data.prepare import read_site
    from harmonizing_flows.errors import OutputExistsError

    out = Path(out)
    if out.resolve() == Path(model_dir).resolve():
        raise OutputExistsError(out, "is the input model; choose another output folder")
    check_output_folder(out, overwrite, FORMAT)
    resolved = resolve_device(device)
    model = load_model(model_dir)
    config = config or model.profile.adapt
    data = read_site(target, model.profile.slices, site=site, splits=splits, split=False, progress=progress,
                     desc="reading target volumes")  # fmt: skip
    if len(data.volumes) == 1:
        warnings.warn(
            f"{target}: adapting to site {data.name} from a single scan; the harmonizer then fits that scan rather "
            "than the site (give all of the site's scans when you have them)",
            stacklevel=2,
        )
    subjects = [v.subject for v in data.volumes if v.subject is not None]
    target_site = data.name
    start = starting_harmonizer(model, config)
    slices = Slices.pool([start.prepare(v) for v in data.volumes])
    del data  # the pooled brain slices are all that adaptation needs
    seed = model.profile.seed if seed is None else seed
    result = adapt_harmonizer(model, slices, config, device=resolved, segmenter=segmenter, seed=seed, progress=progress)
    model.harmonizer = result.harmonizer
    model.metadata["harmonizer"] = "curve" if isinstance(result.harmonizer, CurveHarmonizer) else "paper"
    model.metadata["adaptation"] = {
        "target_site": target_site,
        "target_data": str(Path(target).resolve()),
        "target_subjects": [s.subject for s in subjects],
        "settings": asdict(config),
        "seed": seed,
        "stop": config.stop,
        "kept_step": result.chosen_step,
        "reason": result.reason,
        "guard": result.guard,
        "summary": result.summary,
    }
    from harmonizing_flows.figures import adaptation_figure

    def figure(path: Path) -> None:
        title = f"{model.source_site} -> {target_site}: {result.reason}"  # the figure wraps it
        adaptation_figure(result.curve, result.preview, path, kept_step=result.chosen_step,
                          source_bpd=result.summary["source_bpd"], title=title,
                          plane=model.profile.slices.axis)  # fmt: skip

    extra = {"adaptation.json": {"curve": result.curve, "reason": result.reason}, "adaptation.png": figure}
    folder = save_model(model, out, overwrite=overwrite, extra=extra)
    return folder, result
