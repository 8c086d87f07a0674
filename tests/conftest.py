"""Shared fixtures: small synthetic volumes and one tiny simulated dataset per test session."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harmonizing_flows.config import SimulationConfig


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` as NIfTI or MGZ (by suffix) and return the path."""
    affine = np.eye(4) if affine is None else affine
    if path.name.endswith(".mgz"):
        nib.save(nib.MGHImage(data, affine), path)
    else:
        nib.save(nib.Nifti1Image(data, affine), path)
    return path


def brain_phantom(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ellipsoid 'brain' with three tissues, its mask and aseg-coded labels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    mask = r < 0.8
    right = grid[0] > 0
    labels = np.select([r < 0.3, r < 0.6, mask], [4, np.where(right, 41, 2), np.where(right, 42, 3)], 0)
    image = np.select([labels == 4, np.isin(labels, (2, 41)), mask], [30.0, 110.0, 70.0], 0.0)
    image = (image + rng.normal(0, 3, shape) * mask).clip(0).astype(np.float32)
    return image, mask.astype(np.uint8), labels.astype(np.int16)


@pytest.fixture(scope="session")
def tiny_config() -> SimulationConfig:
    """4 mm voxels and 3 subjects per site: a whole simulation in seconds."""
    return SimulationConfig(subjects_per_site=3, voxel_size=4.0, seed=7)


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory, tiny_config: SimulationConfig):
    """One tiny four-site simulation shared by the tests that only read it."""
    from harmonizing_flows.simulate import simulate

    return simulate(tmp_path_factory.mktemp("sim") / "out", config=tiny_config, progress=False)


@pytest.fixture(scope="session")
def smoke_profile():
    """The smoke profile, trained a little longer so that its flow has learned something."""
    from harmonizing_flows.profiles import load_profile

    return load_profile("smoke", overrides=["flow_training.epochs=6", "harmonizer_training.epochs=6"])


@pytest.fixture(scope="session")
def fitted(tmp_path_factory: pytest.TempPathFactory, simulated, smoke_profile):
    """A model fitted on the tiny simulation's mprage-3t site at the smoke profile."""
    from harmonizing_flows.method.training import fit

    out = tmp_path_factory.mktemp("models") / "model"
    return fit(simulated.manifest, out, smoke_profile, site="mprage-3t", device="cpu", progress=False)
