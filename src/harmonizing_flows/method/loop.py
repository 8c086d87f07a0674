"""The training loop every network shares: Adam with step decay, a checkpoint to resume from, NaN stops, and the
guard that binds a checkpoints folder to the fit that wrote it.

It is its own module so that the evaluation's segmenters depend on the loop alone, not on the flow and the
harmonizer: the benchmark keys a stored segmenter on the code it was trained with, and method changes then leave
it valid.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harmonizing_flows.config import TrainConfig
from harmonizing_flows.data.datasets import Subject, file_fingerprint
from harmonizing_flows.errors import ConfigError, InputError, TrainingError
from harmonizing_flows.method.distributed import Context, channels_last, stable_seed
from harmonizing_flows.profiles import Profile, profile_to_dict

__all__ = ["StepFn", "Validation", "kept_epoch", "prepare_checkpoints", "run_training"]

StepFn = Callable[[nn.Module, torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


class Validation(NamedTuple):
    """A score measured after every epoch (lower is better), recorded in the history under ``name``; with
    ``TrainConfig.keep = "best"`` training ends with the weights of the epoch that scored lowest."""

    name: str
    score: Callable[[], float]


def kept_epoch(history: Sequence[dict[str, float]], config: TrainConfig, name: str | None) -> int:
    """The epoch whose weights a training with this ``history`` ended with (1-based)."""
    scores = [(r[name], int(r["epoch"])) for r in history if name and math.isfinite(r.get(name, math.nan))]
    if config.keep == "best" and scores:
        return min(scores)[1]
    return int(history[-1]["epoch"]) if history else 0


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"state.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, json.dumps(state["param_groups"])


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def _save_checkpoint(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list,
    best: dict[str, torch.Tensor] | None,
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tensors.update({f"best.{k}": v.contiguous() for k, v in (best or {}).items()})
    opt, groups = _optimizer_state(optimizer)
    tensors.update({f"optim.{k}": v for k, v in opt.items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"epoch": str(epoch), "param_groups": groups, "history": json.dumps(history)})
    tmp.replace(path)


def _load_checkpoint(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, list, dict[str, torch.Tensor] | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(
            optimizer, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}, meta["param_groups"]
        )
    except Exception as exc:  # any damage to the checkpoint is the same problem for the user
        raise InputError(path, f"cannot resume from this checkpoint ({exc})") from exc
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return int(meta["epoch"]), json.loads(meta["history"]), best or None


def prepare_checkpoints(
    folder: Path,
    profile: Profile,
    subjects: Sequence[Subject],
    *,
    resume: bool,
    main: bool,
    overwrite: bool = False,
) -> None:
    """Bind a checkpoints folder to the settings and data files of its fit, so that a resume never continues
    another fit's weights (after a change of settings, seed, site or data) and a new fit never mixes with old
    checkpoints. A new fit deletes earlier checkpoints only with ``overwrite``: they may be hours of training.

    Raises:
        InputError: ``resume`` and the folder holds checkpoints of another fit (or of an older version); or
            neither ``resume`` nor ``overwrite`` and the folder holds checkpoints.
    """
    import hashlib

    files = file_fingerprint(p for s in subjects for p in (s.image, s.mask, s.labels))
    key = hashlib.sha256(json.dumps([profile_to_dict(profile), files]).encode()).hexdigest()
    doc = folder / "fit.json"
    saved = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if resume and saved:
        stored = json.loads(doc.read_text(encoding="utf-8")).get("key") if doc.is_file() else None
        if stored != key:
            raise InputError(
                folder,
                "holds checkpoints of a fit with other settings, seed or training data; fit with --overwrite "
                "instead of --resume (which starts over and deletes them) or remove this folder",
            )
    if not resume and saved and not overwrite:
        raise InputError(
            folder,
            f"holds checkpoints of an earlier fit ({', '.join(p.name for p in saved)}); pass --resume to continue "
            "it, or --overwrite to start over and delete them",
        )
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            for path in saved:
                path.unlink(missing_ok=True)
        tmp = doc.with_name(doc.name + ".tmp")
        tmp.write_text(json.dumps({"key": key}) + "\n", encoding="utf-8")
        tmp.replace(doc)


def _diverged(what: str, name: str, epoch: int, step: int, lr: float) -> TrainingError:
    return TrainingError(
        f"{name}: {what} became NaN or infinite at epoch {epoch}, step {step} (learning rate {lr:g}); "
        f"lower {name}_training.lr or check the input slices"
    )


def _train_epoch(
    module: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: StepFn,
    order: torch.Tensor,
    batch: int,
    steps: int,
    config: TrainConfig,
    where: tuple[str, int, int],
    ctx: Context,
    bar: Any,
) -> dict[str, float]:
    """One epoch's steps; returns the sums of the step stats. ``where`` is (name, seed, epoch); ``bar`` is a
    :func:`~harmonizing_flows.progress.progress_bar`."""
    name, seed, epoch = where
    sums: dict[str, float] = {}
    for k in range(steps):
        index = order[k * batch : (k + 1) * batch]
        generator = torch.Generator().manual_seed(stable_seed(seed, name, epoch, k))
        loss, stats = step(model, index, generator)
        place = (name, epoch + 1, k + 1, optimizer.param_groups[0]["lr"])
        # Stop before the optimizer spreads a NaN to every weight. Every process takes the same decision
        # (the loss's flag is summed over processes, the gradients are already), so none waits alone.
        if ctx.all_sum((~torch.isfinite(loss.detach())).float()).item():
            raise _diverged("the loss", *place)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads and not torch.stack([g.norm() for g in grads]).isfinite().all():
            raise _diverged("the gradients", *place)
        if config.clip_grad_norm > 0:  # after DDP's all-reduce: every process clips the same gradients
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.clip_grad_norm)
        optimizer.step()
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix({key: f"{value:.3g}" for key, value in stats.items()}, refresh=False)
        bar.update()
    return sums


def run_training(
    module: nn.Module,
    step: StepFn,
    n_items: int,
    config: TrainConfig,
    *,
    name: str,
    seed: int,
    ctx: Context,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    validation: Validation | None = None,
) -> list[dict[str, float]]:
    """Adam with the learning rate halved every ``config.halve_every`` epochs; returns per-epoch means of the stats.

    ``step(model, index, generator)`` gets the global batch's row indices and the step's generator, and returns
    this process's loss and the stats to report. ``validation`` is scored after every epoch (on every process,
    averaged over them, so that all keep the same weights) and, with ``config.keep = "best"``, decides which
    epoch's weights training ends with (:func:`kept_epoch`).

    Raises:
        ConfigError: ``config.keep = "best"`` without a ``validation``.
    """
    from harmonizing_flows.progress import progress_bar

    if config.keep == "best" and validation is None:
        raise ConfigError(f"{name}_training.keep=best needs a validation score, and {name} training has none")
    channels_last(module.to(ctx.device))
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    start, history, best = 0, [], None
    if resume and checkpoint is not None and checkpoint.is_file():
        start, history, best = _load_checkpoint(checkpoint, module, optimizer)
    model: nn.Module = DistributedDataParallel(module) if ctx.world > 1 else module
    batch = min(config.batch_size, n_items - n_items % ctx.world) if n_items >= ctx.world else n_items
    steps = max(n_items // batch, 1)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    bar = progress_bar(
        total=config.epochs * steps, initial=start * steps, desc=name, unit="step", enabled=progress and ctx.main
    )
    try:
        for epoch in range(start, config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * 0.5 ** (epoch // config.halve_every)
            order = torch.randperm(n_items, generator=torch.Generator().manual_seed(stable_seed(seed, name, epoch)))
            started = time.perf_counter()
            sums = _train_epoch(
                module, model, optimizer, step, order, batch, steps, config, (name, seed, epoch), ctx, bar
            )
            record = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            record.update({key: value / steps for key, value in sums.items()})
            if validation is not None:
                training = module.training
                # averaged over processes, so that all keep the same epoch even if their kernels round apart
                score = torch.tensor(float(validation.score()), device=ctx.device)
                record[validation.name] = float(ctx.all_sum(score)) / ctx.world
                module.train(training)
                if config.keep == "best" and kept_epoch([*history, record], config, validation.name) == epoch + 1:
                    best = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            history.append(record)
            last = epoch + 1 == config.epochs
            if (
                checkpoint is not None
                and ctx.main
                and (last or (config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0))
            ):
                _save_checkpoint(checkpoint, module, optimizer, epoch + 1, history, best)
            ctx.barrier()
    finally:
        bar.close()
    if config.keep == "best" and best is not None:
        module.load_state_dict(best)
    return history
