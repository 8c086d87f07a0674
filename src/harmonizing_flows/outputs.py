"""Writing result folders atomically: built in a temporary sibling, then moved into place in one step."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["publish_folder"]


def publish_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``; an earlier ``out`` is replaced only now, never half-way."""
    if out.is_dir():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
