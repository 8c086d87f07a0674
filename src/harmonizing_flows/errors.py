"""Errors that tell the user which file is wrong and why."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HflowError", "InputError", "OutputExistsError", "TrainingError"]


class HflowError(Exception):
    """Base class of the errors this package raises on purpose; the CLI prints them without a traceback."""


class InputError(HflowError, ValueError):
    """An input file or folder is unusable. The message starts with the path, then says what is wrong."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class OutputExistsError(HflowError, FileExistsError):
    """The output location already holds results and the caller did not ask to overwrite them."""

    def __init__(self, path: str | Path, problem: str = "already exists; pass --overwrite to replace it") -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


class TrainingError(HflowError, RuntimeError):
    """Training went numerically wrong (a loss that is NaN or infinite); the message names the network, the epoch
    and the step, and what to change."""
