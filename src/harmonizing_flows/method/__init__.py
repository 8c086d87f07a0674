"""The method: the harmonizer, the flow, their objectives, training on the source and adaptation to a target.

* :mod:`.harmonizer` (on :mod:`.unet`) and :mod:`.flow`: the two networks;
* :mod:`.augment`: the harmonizer's pre-training augmentations and the flow's guiding negatives;
* :mod:`.training`: fitting on the source site (paper Eqs. 4 and 5), :mod:`.adaptation`: test-time adaptation
  (Eq. 6) with its stopping policy;
* :mod:`.store`: model folders; :mod:`.distributed`: devices and ``torchrun``.
"""

from __future__ import annotations

__all__: list[str] = []
