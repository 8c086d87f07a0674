"""Errors that tell the user which file is wrong and why."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "ConfigError",
    "HflowError",
    "InputError",
    "MissingExtraError",
    "OutputExistsError",
    "TrainingError",
    "system_errors",
]


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


class ConfigError(HflowError, ValueError):
    """A setting, option or combination of them is invalid; the message names the setting and what it accepts."""


class MissingExtraError(HflowError, ImportError):
    """A command needs packages of an optional extra that are not installed; the message says how to install them."""

    def __init__(self, what: str, extra: str, missing: list[str]) -> None:
        self.extra = extra
        verb = "is" if len(missing) == 1 else "are"
        super().__init__(
            f"{what} needs the {extra!r} extra ({', '.join(missing)} {verb} not installed): "
            f"pip install 'harmonizing-flows[{extra}]'"
        )


def system_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Let ``function`` raise the operating system's errors about a file (permission denied, disk full) as an
    :class:`InputError` naming that file, so that every failure a user can fix is an :class:`HflowError`.
    Errors without a file name are left as they are: they are not about the user's paths."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except HflowError:
            raise
        except OSError as exc:
            if exc.filename is None:
                raise
            error = InputError(exc.filename, (exc.strerror or str(exc)).lower())
            for note in getattr(exc, "__notes__", ()):
                error.add_note(note)
            raise error from exc

    return wrapper
