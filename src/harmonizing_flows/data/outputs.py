"""Writing result folders atomically: built in a temporary sibling, then moved into place in one step."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["check_location", "publish_folder", "usual_mode", "write_file", "write_text"]


def check_location(out: str | Path) -> None:
    """Refuse an output whose nearest existing ancestor is a file rather than a folder, before any work is done.

    Raises:
        OutputExistsError: Naming that file.
    """
    from harmonizing_flows.errors import OutputExistsError

    for parent in Path(out).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(parent, f"is a file, so {out} cannot be made inside it")
            return


def usual_mode(path: str | Path, *, folder: bool = False) -> None:
    """Give ``path`` the permissions of a file (or folder) created the usual way under the current umask.

    Why: ``tempfile`` creates private files (0600) and folders (0700), and renaming keeps that, so results built
    in a temporary place and moved into position would be unreadable to the rest of a shared lab server.
    """
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _umask() -> int:
    try:  # Linux: read it, since setting it to learn it would race with other threads creating files
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def publish_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``; an earlier ``out`` is replaced only now, never half-way.

    Everything in it gets the usual permissions first (some writers, safetensors among them, make files private).
    """
    usual_mode(tmp, folder=True)
    for path in tmp.rglob("*"):
        usual_mode(path, folder=path.is_dir())
    if out.is_dir():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_file(path: str | Path, write: Callable[[str], object], *, suffix: str = ".partial") -> Path:
    """Write a file atomically: ``write(tmp)`` fills a hidden temporary sibling (named ``.NAME.*SUFFIX``), which
    gets the usual permissions and is then renamed into place; on any failure it is removed."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(name)
        usual_mode(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (see :func:`write_file`)."""
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
