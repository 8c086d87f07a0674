"""Progress of long work: a live bar in a terminal, a readable line every tenth of the way in a log file.

tqdm redraws its bar with carriage returns, which a terminal folds into one line but a log file keeps: a fit piped
to a file would hold thousands of redraws. Outside a terminal, :func:`progress_bar` prints one plain line at each
tenth of the work (and at the end) instead, with the same numbers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["LineProgress", "progress_bar"]

T = TypeVar("T")


class LineProgress(Generic[T]):
    """The part of tqdm's interface this package uses, printing a line per tenth of ``total`` to ``stream``."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        stream: Any = None,
        every: float = 0.1,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.postfix: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.next_mark = self._mark_after(initial)
        self.closed = False

    def _mark_after(self, n: int) -> int:
        if not self.total:
            return 0
        step = max(1, round(self.total * self.every))
        return (n // step + 1) * step

    def _line(self) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        elapsed = time.perf_counter() - self.started
        print(f"{self.desc}: {done} {self.unit}{share}, {elapsed:.0f} s{extra}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n >= self.next_mark and self.n < self.total:
            self._line()
            self.next_mark = self._mark_after(self.n)

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = False, **kwargs: Any) -> None:
        self.postfix = {**(values or {}), **kwargs}

    def set_postfix_str(self, text: str = "", refresh: bool = False) -> None:
        self.postfix = {"at": text} if text else {}

    def close(self) -> None:
        if not self.closed and self.n:
            self._line()
        self.closed = True

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    enabled: bool = True,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    leave: bool = True,
) -> Any:
    """A tqdm bar in a terminal or a notebook; :class:`LineProgress` when standard error is neither (a log file);
    silent when not ``enabled``."""
    from tqdm.auto import tqdm

    if enabled and not _is_terminal(sys.stderr) and "ipykernel" not in sys.modules:
        return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, leave=leave)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
