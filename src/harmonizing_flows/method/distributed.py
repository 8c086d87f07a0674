"""Running on one device or, under ``torchrun``, on several processes with DistributedDataParallel.

Every process holds the whole (small, uint8) training set and draws the same global batch and the same random
augmentations from a generator seeded by (seed, epoch, step); each then computes the loss of its share of the
batch, normalised by the global counts and multiplied by the world size. DDP averages the gradients, so a step
on ``n`` processes equals a step on one, up to the order of floating-point sums.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from harmonizing_flows.errors import ConfigError

__all__ = ["Context", "channels_last", "resolve_device", "setup", "stable_seed"]


def resolve_device(device: str | None = None) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise the named device, checked."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, ...)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, the same on every machine and process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank, the number of processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This process's rows of a global batch of ``n`` (``n`` must be divisible by the world size)."""
        if n % self.world:
            raise ConfigError(f"a batch of {n} cannot be shared by {self.world} processes; use a multiple")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a (detached) tensor over processes."""
        value = value.detach()
        if self.world == 1:
            return value
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str | None = None) -> Context:
    """The context of this process; under torchrun, joins the process group (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, device=resolved)


def channels_last(module: nn.Module) -> nn.Module:
    """Store ``module``'s convolution weights channels-last (NHWC), in place, and return it.

    Why: oneDNN's convolutions and the channel layer norm run about a quarter faster in NHWC on CPU (see
    ``benchmarks/RESULTS.md``), and GPUs prefer it too. Results are the same up to float rounding; saved weights
    are made contiguous, so model files do not depend on it.
    """
    return module.to(memory_format=torch.channels_last)
