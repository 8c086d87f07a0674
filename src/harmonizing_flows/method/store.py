"""Model folders: weights as safetensors, settings and metadata as JSON; loading never unpickles.

A model folder::

    MODEL/
      model.json               format, package version, profile (every setting), source site, image size,
                               intensity scaling, source validation bpd, training history, adaptation (if any)
      harmonizer.safetensors   the harmonizer's weights (the paper's network, or a curve harmonizer when
                               ``model.json``'s ``harmonizer`` says ``curve``: an adapted model of that family)
      flow.safetensors         the flow's weights
      restorer.safetensors     the restoration network's weights, when ``restoration.enabled``: every harmonized
                               image passes through it (:class:`~harmonizing_flows.method.restoration.Restored`)

Folders are written to a temporary sibling and renamed into place, so a crash never leaves half a model. Loading
checks that every file is there, readable and matches the architecture that ``model.json`` describes, and says
which file is wrong otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harmonizing_flows import __version__
from harmonizing_flows.errors import InputError
from harmonizing_flows.method.curve_harmonizer import CurveHarmonizer
from harmonizing_flows.method.flow import Flow
from harmonizing_flows.method.folders import load_weights, read_document, save_weights, write_document, write_folder
from harmonizing_flows.method.harmonizer import Harmonizer
from harmonizing_flows.method.restoration import Restored, Restorer
from harmonizing_flows.profiles import Profile

__all__ = ["FORMAT", "Model", "load_harmonizer", "load_model", "new_harmonizer", "save_model"]

FORMAT = "harmonizing-flows model"


@dataclass
class Model:
    """A fitted (and maybe adapted) model: its settings, networks and metadata."""

    profile: Profile
    harmonizer: Harmonizer | CurveHarmonizer
    flow: Flow
    metadata: dict[str, Any] = field(default_factory=dict)
    restorer: Restorer | None = None

    @classmethod
    def create(cls, profile: Profile, metadata: Mapping[str, Any] | None = None) -> Model:
        return cls(profile, Harmonizer(profile.harmonizer), Flow(profile.flow), dict(metadata or {}))

    @property
    def source_site(self) -> str | None:
        return self.metadata.get("source_site")

    def to(self, device: torch.device | str) -> Model:
        self.harmonizer.to(device)
        self.flow.to(device)
        if self.restorer is not None:
            self.restorer.to(device)
        return self

    def output(self, harmonizer: Harmonizer | CurveHarmonizer | None = None) -> Harmonizer | CurveHarmonizer | Restored:
        """What harmonizes images: ``harmonizer`` (the model's own by default), then the restorer if the model has
        one."""
        harmonizer = self.harmonizer if harmonizer is None else harmonizer
        return harmonizer if self.restorer is None else Restored(harmonizer, self.restorer)


def save_model(
    model: Model, out: str | Path, *, overwrite: bool = False, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` as a model folder (see the module docstring).

    ``extra`` maps file names to JSON-ready content, or to a callable that writes the file at the path it is given;
    they are written inside the same atomic step as the model.
    """

    if (model.restorer is not None) != model.profile.restoration.enabled:
        raise ValueError("a model has a restorer exactly when its profile's restoration.enabled is true")

    def write(folder: Path) -> None:
        meta = {"version": __version__}
        save_weights(model.harmonizer, folder / "harmonizer.safetensors", meta)
        save_weights(model.flow, folder / "flow.safetensors", meta)
        if model.restorer is not None:
            save_weights(model.restorer, folder / "restorer.safetensors", meta)
        write_document(folder, FORMAT, model.profile, model.metadata)
        for name, content in (extra or {}).items():
            if callable(content):  # a writer, such as a figure
                content(folder / name)
            else:
                (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

    return write_folder(Path(out), overwrite, write, FORMAT)


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> Model:
    """Read a model folder written by :func:`save_model`.

    Raises:
        InputError: The folder or a file is missing, ``model.json`` is not a model description, or the weights do
            not match it.
    """
    folder = Path(folder)
    profile, metadata = read_document(folder, FORMAT, "model folder", "fit one with `hflow fit`")
    model = Model.create(profile, metadata)
    model.harmonizer = new_harmonizer(profile, metadata)
    load_weights(model.harmonizer, folder / "harmonizer.safetensors")
    load_weights(model.flow, folder / "flow.safetensors")
    model.restorer = _load_restorer(folder, profile)
    return model.to(device)


def _load_restorer(folder: Path, profile: Profile) -> Restorer | None:
    if not profile.restoration.enabled:
        return None
    restorer = Restorer(profile.restoration)
    load_weights(restorer, folder / "restorer.safetensors")
    return restorer.eval()


def load_harmonizer(folder: str | Path) -> tuple[Harmonizer | CurveHarmonizer | Restored, Profile, dict[str, Any]]:
    """What harmonizes with a model folder (its harmonizer, followed by its restorer if it has one) with its
    settings and metadata, without reading the flow (harmonizing needs only these; the paper's flow is much the
    larger).

    Raises:
        InputError: As :func:`load_model`, for ``model.json`` and the harmonizer's weights; a model whose
            harmonizer network was never pre-trained and that was not adapted (it would harmonize nothing).
    """
    folder = Path(folder)
    profile, metadata = read_document(folder, FORMAT, "model folder", "fit one with `hflow fit`")
    if metadata.get("harmonizer", "paper") == "paper" and not metadata.get("pretrained_harmonizer", True):
        raise InputError(folder, "was fitted for the curve harmonizer alone and has no harmonizer to apply yet: "
                                 "adapt it to a site first (`hflow adapt`)")  # fmt: skip
    harmonizer = new_harmonizer(profile, metadata)
    load_weights(harmonizer, folder / "harmonizer.safetensors")
    restorer = _load_restorer(folder, profile)
    return (harmonizer if restorer is None else Restored(harmonizer, restorer)), profile, metadata


def new_harmonizer(profile: Profile, metadata: Mapping[str, Any]) -> Harmonizer | CurveHarmonizer:
    """An untrained harmonizer of the family ``metadata`` names (``harmonizer``: ``paper``, the default, or
    ``curve``), to load weights into."""
    if metadata.get("harmonizer", "paper") == "curve":
        return CurveHarmonizer(metadata["source_histogram"])
    return Harmonizer(profile.harmonizer)
