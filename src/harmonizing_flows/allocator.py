"""The process's memory allocator, tuned for training loops (standard library only, so the CLI stays quick)."""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of returning it to the system.

    Why: training allocates and frees activations of tens of megabytes at every step; by default glibc serves
    those from fresh ``mmap`` pages and returns them at once, so each step pays millions of page faults (a third
    of the CPU time of a paper-size flow step went to the kernel here). Process-wide, so only the CLI calls it.
    Returns whether it applied (Linux with glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False
