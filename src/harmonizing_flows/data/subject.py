"""One scan's record in a dataset: its files, its site, its split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Subject"]


@dataclass(frozen=True)
class Subject:
    """One scan's files and where it belongs.

    ``subject`` names the scan; ``participant`` the person when one person has several scans (BIDS sessions and
    runs), so that splits keep a person's scans together. Without it the scan is its own participant.
    """

    subject: str
    site: str
    image: Path
    mask: Path | None = None
    labels: Path | None = None
    split: str | None = None
    participant: str | None = None
