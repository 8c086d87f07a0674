"""What lets a benchmark run resume: fitted networks and finished settings, stored with the key of what made them.

A stored result is reused only when its key matches: the package's source code, torch's version, every setting,
the data files (path, size and modification time) and the device. New code or new data is never judged by a stale
network or table.
"""

from __future__ import annotations

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

__all__ = ["fit_or_load", "key", "load_setting", "save_setting", "setting_key"]

T = TypeVar("T")


@functools.cache
def _code_digest() -> str:
    """A hash of this package's source: results computed by other code are never reused."""
    package = Path(__file__).parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def key(*parts: Any) -> str:
    """What a stored result was computed from, as one hash: the code, torch's version and ``parts``."""
    parts = (_code_digest(), torch.__version__, *parts)
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
    arrays = {"source_example": result.source_example, "source_mask": result.source_mask}
    for target, images in result.examples.items():
        for name, image in images.items():
            arrays[f"examples/{target}/{name}"] = image
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
            result.source_mask = arrays["source_mask"]
            result.examples = {
                target: {name: arrays[f"examples/{target}/{name}"] for name in names}
                for target, names in document["examples"].items()
            }
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
