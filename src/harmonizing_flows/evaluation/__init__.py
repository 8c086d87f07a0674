"""Evaluation: the paper's protocol as a tool (:mod:`.protocol`), scored by a frozen source segmenter
(:mod:`.segmenter`) with :mod:`.metrics`, against :mod:`.baselines`, written out by :mod:`.report`.

Needs the ``eval`` extra (MONAI, intensity-normalization, neuroCombat, pandas).
"""

from __future__ import annotations

import importlib.util

from harmonizing_flows.errors import MissingExtraError

__all__ = ["EVAL_PACKAGES", "require_eval_extra"]

EVAL_PACKAGES = {"monai": "monai", "intensity_normalization": "intensity-normalization",
                 "neuroCombat": "neuroCombat", "pandas": "pandas"}  # fmt: skip
"""The ``eval`` extra: import name -> distribution name."""


def require_eval_extra(what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``what`` when a package of the ``eval`` extra is missing."""
    missing = [dist for module, dist in EVAL_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtraError(what, "eval", missing)
