"""What lets a benchmark run resume: fitted networks and finished settings, stored with the key of what made them.

A stored result is reused only when its key matches: the source code that made it, torch's version, the settings
it depends on, the data files (by name, size and content) and the device. New code or new data is never
judged by a stale network or table. A setting's results depend on all of the package; the benchmark's segmenters
only on their own modules and what those import, so changing the method keeps them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from harmonizing_flows.data.datasets import Subject, file_fingerprint
from harmonizing_flows.evaluation.results import SettingResult
from harmonizing_flows.evaluation.variants import RULES
from harmonizing_flows.profiles import Profile, profile_to_dict

__all__ = ["fit_or_load", "key", "load_setting", "module_closure", "save_setting", "setting_key"]

T = TypeVar("T")


_PACKAGE = Path(__file__).parents[1]


def _module_files() -> dict[str, Path]:
    """The package's modules by dotted name (a package by its ``__init__.py``)."""
    found = {}
    for path in sorted(_PACKAGE.rglob("*.py")):
        parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


SETTINGS_MODULES = ("harmonizing_flows.config", "harmonizing_flows.profiles")
"""Modules that only define settings. A key over some modules leaves them out: it holds the settings' values,
so a new field or another profile's change does not invalidate what did not use them."""


def module_closure(roots: Sequence[str]) -> list[str]:
    """``roots`` and every module of the package they import, directly or through others, at the top of a module
    or inside a function (read from the source, so an import that only some calls run counts too), less
    :data:`SETTINGS_MODULES`."""
    files = _module_files()
    unknown = [r for r in roots if r not in files]
    if unknown:
        raise ValueError(f"not modules of the package: {unknown}")
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen or name in SETTINGS_MODULES:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(files[name].read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(_PACKAGE.name):
                for alias in node.names:  # ``from package import module`` names a module
                    full = f"{node.module}.{alias.name}"
                    pending.append(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                pending.extend(a.name for a in node.names if a.name in files)
    return sorted(m for m in seen if m in files)


@functools.cache
def _code_digest(roots: tuple[str, ...] = ()) -> str:
    """A hash of the package's source (of ``roots`` and what they import, when given): results computed by other
    code are never reused."""
    files = _module_files()
    digest = hashlib.sha256()
    for name in module_closure(roots) if roots else sorted(files):
        digest.update(name.encode())
        digest.update(files[name].read_bytes())
    return digest.hexdigest()


def key(*parts: Any, code: Sequence[str] = ()) -> str:
    """What a stored result was computed from, as one hash: the code (all of the package's, or only the modules
    ``code`` and what they import), torch's version and ``parts``."""
    parts = (_code_digest(tuple(code)), torch.__version__, *parts)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def setting_key(
    profile: Profile, variants: Sequence[str], source: str, subjects: Sequence[Subject], device: torch.device
) -> str:
    """The key of one setting's results: everything that changes them."""
    files = file_fingerprint([p for s in subjects for p in (s.image, s.mask, s.labels)])
    splits = sorted((s.site, s.subject, str(s.split)) for s in subjects)
    return key(profile_to_dict(profile), list(variants), RULES, source, files, splits, str(device))


def save_setting(folder: Path, letter: str, setting_key: str, result: SettingResult) -> None:
    """Keep a finished setting under ``folder`` (``LETTER.json`` + ``LETTER.npz``), so an interrupted run resumes.

    The JSON names its key and is written last, after any older JSON is removed, so a half-written pair (or a new
    ``.npz`` beside an older run's JSON) is never taken for a finished setting.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{letter}.json").unlink(missing_ok=True)
    arrays = {"source_example": result.source_example, "source_levels": result.source_levels}
    for target, images in result.examples.items():
        for name, image in images.items():
            arrays[f"examples/{target}/{name}"] = image
            arrays[f"levels/{target}/{name}"] = result.levels[target][name]
    document = {
        "key": setting_key,
        "examples": {t: list(images) for t, images in result.examples.items()},
        "result": result.to_json(),
    }
    for path, write in (
        (folder / f"{letter}.npz", lambda f: np.savez_compressed(f, **arrays)),
        (folder / f"{letter}.json", lambda f: f.write(json.dumps(document, default=float).encode())),
    ):
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "wb") as handle:
            write(handle)
        tmp.replace(path)


def load_setting(folder: Path, letter: str, setting_key: str) -> SettingResult | None:
    """A setting finished earlier with the same key, or None (also when its files are missing or damaged)."""
    try:
        document = json.loads((folder / f"{letter}.json").read_text(encoding="utf-8"))
        if document.get("key") != setting_key:
            return None
        result = SettingResult.from_json(document["result"])
        with np.load(folder / f"{letter}.npz", allow_pickle=False) as arrays:
            result.source_example = arrays["source_example"]
            result.source_levels = arrays["source_levels"]
            for kind in ("examples", "levels"):
                setattr(result, kind, {
                    target: {name: arrays[f"{kind}/{target}/{name}"] for name in names}
                    for target, names in document["examples"].items()
                })  # fmt: skip
    except Exception:  # a damaged cache (truncated zip, bad zlib stream, JSON of another shape) is recomputed
        return None
    return result


def fit_or_load(
    folder: Path,
    fit_key: str,
    build: Callable[[], T],
    save: Callable[[T, Path], Any],
    load: Callable[[Path], T],
    log: Callable[[str], None],
) -> T:
    """Fit once and keep the result in ``folder``, so that a benchmark run can be resumed: a stored network is
    reused only when its ``benchmark_key`` in ``model.json`` is ``fit_key``."""
    doc = folder / "model.json"
    try:
        stored = json.loads(doc.read_text(encoding="utf-8")).get("benchmark_key") if doc.is_file() else None
    except (OSError, ValueError, AttributeError):  # damaged: fitted again, and replaced
        stored = None
    if stored == fit_key:
        log(f"  {folder.name}: reusing {folder}")
        return load(folder)
    started = time.perf_counter()
    made = build()
    made.metadata["benchmark_key"] = fit_key  # type: ignore[attr-defined]
    save(made, folder)
    log(f"  {folder.name}: fitted in {time.perf_counter() - started:.0f} s")
    return made
