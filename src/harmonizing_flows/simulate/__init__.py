"""A multi-site brain MRI simulator on real anatomy, with exact labels.

Pseudo-subjects are random smooth deformations of FreeSurfer's fsaverage labels (:mod:`.anatomy`); each site images
them with its own physics (:mod:`.tissues`, :mod:`.sequences`, :mod:`.scanner`): relaxation times at its field
strength, its sequence's signal equation, partial volume, texture, bias field, Rician noise, resolution and export
scale. :func:`simulate` writes a whole dataset; sites are built in or defined in a TOML file (:mod:`.sites`).
"""

from __future__ import annotations

from harmonizing_flows.simulate.run import SimulationResult, simulate
from harmonizing_flows.simulate.sites import BUILTIN_SITES, Site, load_sites, resolve_sites

__all__ = ["BUILTIN_SITES", "SimulationResult", "Site", "load_sites", "resolve_sites", "simulate"]
