"""Harmonizing Flows: unsupervised, source-free MRI harmonization with normalizing flows.

The package reads and writes brain MRI volumes (:mod:`~harmonizing_flows.data.volume`), organizes them into per-site
datasets (:mod:`~harmonizing_flows.data.datasets`), maps FreeSurfer labels to the paper's 15 classes
(:mod:`~harmonizing_flows.data.labels`), and simulates multi-site data from real anatomy
(:mod:`~harmonizing_flows.simulate`).

References:
    | Harmonizing Flows: Unsupervised MR harmonization based on normalizing flows (Beizaee et al., 2023)
    | https://arxiv.org/abs/2301.11551
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
