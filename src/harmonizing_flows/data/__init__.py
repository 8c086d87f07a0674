"""Data: everything between files on disk and the 2D slices the networks see.

* :mod:`.volume`: NIfTI/MGZ in and out, and the one round trip volume -> slices -> volume
  (:class:`~.volume.SlicedVolume` with its :class:`~.volume.SliceGrid`);
* :mod:`.slices`: the one slice container (:class:`~.slices.Slices`);
* :mod:`.prepare`: the one way every command reads its data (load -> select site -> split -> slice);
* :mod:`.datasets` and :mod:`.subject`: subjects from a manifest, site folders, BIDS or FreeSurfer, and splits;
* :mod:`.resample`, :mod:`.labels`, :mod:`.outputs`: resampling, the 15 label classes, atomic writes.
"""

from __future__ import annotations

__all__: list[str] = []
