"""A network's folder on disk: weights as safetensors, settings and metadata in ``model.json``, written atomically
and checked when read. Models (:mod:`.store`) and the evaluation's segmenters are such folders; this module knows
nothing of what network a folder holds, so the segmenters do not depend on the flow or the harmonizer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from harmonizing_flows import __version__
from harmonizing_flows.data.outputs import check_location, publish_folder
from harmonizing_flows.errors import InputError, OutputExistsError
from harmonizing_flows.profiles import Profile, profile_from_dict, profile_to_dict

__all__ = ["check_output_folder", "load_weights", "read_document", "save_weights", "write_document", "write_folder"]

FORMAT_VERSION = 1
"""The version of ``model.json``'s layout: a reader refuses a newer one."""


def save_weights(module: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=dict(metadata or {}))


def load_weights(module: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``module``; a missing, damaged or mismatched file is an InputError."""
    if not path.is_file():
        raise InputError(path, "weights file is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"is not a readable safetensors file (truncated or damaged?): {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        if wrong:
            k = wrong[0]
            details.append(f"{k} has shape {tuple(state[k].shape)}, the model expects {tuple(expected[k].shape)}")
        raise InputError(path, "weights do not match the architecture in model.json: " + "; ".join(details))
    module.load_state_dict(state)


def check_output_folder(out: str | Path, overwrite: bool, format: str) -> None:
    """Refuse ``out`` before any work is done: it exists and ``overwrite`` is not set, or it is not a folder of
    this ``format`` (a folder of other files, or a segmenter where a model goes), which is never replaced.

    Raises:
        OutputExistsError: Naming the folder and why.
    """
    out = Path(out)
    if not out.exists():
        check_location(out)
        return
    if not overwrite:
        raise OutputExistsError(out)
    try:
        found = json.loads((out / "model.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != format:
        what = f"a {found}" if isinstance(found, str) else "not a harmonizing-flows folder"
        raise OutputExistsError(out, f"exists and is {what}, not a {format}; not replacing it")


def write_folder(out: Path, overwrite: bool, write: Any, format: str) -> Path:
    """Create ``out`` atomically: ``write(tmp)`` fills a temporary sibling, which then replaces ``out``."""
    out = Path(out)
    check_output_folder(out, overwrite, format)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write(tmp)
        publish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_document(folder: Path, format: str, profile: Profile, metadata: Mapping[str, Any]) -> None:
    """Write ``folder/model.json``: the format, its version, the package version, every setting and metadata."""
    document = {
        "format": format,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "profile": profile_to_dict(profile),
        **metadata,
    }
    (folder / "model.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def read_document(folder: Path, format: str, kind: str, hint: str) -> tuple[Profile, dict[str, Any]]:
    """Read and check ``folder/model.json`` of the given ``format``: its settings and the rest of its metadata.

    Raises:
        InputError: naming the folder or the file: missing, not JSON, another format (``kind`` and ``hint`` say
            what was expected and how to make one), a newer format version, or invalid settings.
    """
    if not folder.is_dir():
        raise InputError(folder, f"{kind} does not exist")
    doc_path = folder / "model.json"
    if not doc_path.is_file():
        raise InputError(folder, f"is not a {kind} (no model.json)")
    try:
        document = json.loads(doc_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(doc_path, f"is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise InputError(doc_path, f"cannot be read ({exc.strerror or exc})") from exc
    found = document.get("format") if isinstance(document, dict) else None
    if found != format:
        raise InputError(doc_path, f"is not a {format} description (format {found!r}); {hint}")
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(doc_path, "was written by a newer harmonizing-flows; upgrade to read it")
    settings = document.get("profile")
    if not isinstance(settings, dict) or not settings:  # defaults in their place would blame the weights later
        raise InputError(doc_path, 'holds no settings (its "profile" is missing or empty)')
    try:
        profile = profile_from_dict(settings)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(doc_path, f"holds invalid settings ({exc})") from exc
    return profile, {k: v for k, v in document.items() if k not in ("format", "format_version", "profile")}
