"""Profiles: every setting of the method in one :class:`Profile`, three named presets, and overrides.

* ``paper``: the paper's method at the paper's settings (224x224 coronal slices of 1 mm data, full-size
  networks and schedules; its harmonizer adapted with the source-bpd rule). Meant for a GPU: on two CPU cores
  one flow step takes seconds and the schedule weeks. It keeps the intensity guard, which only ever stops
  adaptation early; ``adapt.intensity_guard=0`` gives the paper's procedure exactly, and
  ``flow.margin_mode=absolute`` with ``flow.weighting=samples`` its Eq. 4 as written (the default measures the
  margin from the source bpd and weighs the two terms alike, see :class:`~harmonizing_flows.config.FlowConfig`).
  ``--set adapt.harmonizer=curve --set adapt.stop=steps --set adapt.steps=100`` runs the tool's default method
  on it (not yet validated at this scale).
* ``fast``: the CPU default. 80x80 slices of 2 mm data (``hflow simulate --voxel-size 2``), narrower networks,
  fewer couplings and short schedules; see ``benchmarks/RESULTS.md`` for what each step costs. Adapts with the
  tool's default method (the curve harmonizer, see :class:`~harmonizing_flows.config.AdaptConfig`).
* ``smoke``: tiny networks and a few steps, for tests: seconds, and no claim of quality.

Any field can be overridden from a TOML file (tables named like the fields: ``[flow]``, ``[adapt]``, ...) or with
``section.field=value`` strings, as ``hflow fit --set flow.margin=2.0`` does.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from harmonizing_flows.config import (
    AdaptConfig,
    AugmentConfig,
    EvaluationConfig,
    FlowConfig,
    HarmonizerConfig,
    NegativeConfig,
    RestorationConfig,
    SegmenterConfig,
    SliceConfig,
    TrainConfig,
)
from harmonizing_flows.errors import ConfigError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PROFILES",
    "Profile",
    "apply_overrides",
    "load_profile",
    "profile_from_dict",
    "profile_to_dict",
    "update_profile",
]


@dataclass(frozen=True)
class Profile:
    """All settings of fitting, adapting and harmonizing."""

    name: str = "custom"
    seed: int = 0
    slices: SliceConfig = field(default_factory=SliceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    negatives: NegativeConfig = field(default_factory=NegativeConfig)
    harmonizer: HarmonizerConfig = field(default_factory=HarmonizerConfig)
    harmonizer_training: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=200, batch_size=32, lr=1e-3, halve_every=30)
    )
    flow: FlowConfig = field(default_factory=FlowConfig)
    flow_training: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=1600,
            batch_size=32,
            lr=1e-3,
            halve_every=200,
            checkpoint_every=50,
            clip_grad_norm=1.0,
            keep="best",
        )
    )
    restoration: RestorationConfig = field(default_factory=RestorationConfig)
    restoration_training: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=20, batch_size=16, lr=1e-3, halve_every=10, checkpoint_every=5)
    )
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    segmenter_training: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=200, batch_size=32, lr=4e-3, halve_every=30)
    )
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        for name in ("harmonizer_training", "restoration_training", "segmenter_training"):
            if getattr(self, name).keep != "last":
                raise ConfigError(f"{name}.keep must be last: only the flow has a validation score to choose an "
                                  "epoch by (flow_training.keep)")  # fmt: skip


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper", adapt=AdaptConfig(harmonizer="paper", stop="source-bpd", steps=2000, brain_only=False)
    ),
    "fast": Profile(
        name="fast",
        slices=SliceConfig(image_size=(80, 80), voxel_size=2.0),
        harmonizer=HarmonizerConfig(widths=(8, 16, 24, 32, 32), blocks=2),
        harmonizer_training=TrainConfig(epochs=12, batch_size=8, lr=1e-3, halve_every=5, checkpoint_every=2),
        flow=FlowConfig(
            dequantization_couplings=2, couplings=(2, 3, 3), widths=(8, 16, 32), dequantization_widths=(8, 16)
        ),
        # the last epoch: the one with the lowest held-out brain bpd was an early one that told source from
        # augmented slices worse, and the curve it steered lost Dice on validation volumes (benchmarks/RESULTS.md)
        flow_training=TrainConfig(epochs=8, batch_size=16, lr=2e-3, halve_every=4, checkpoint_every=2, keep="last"),
        # its training error flattens after a few epochs (benchmarks/explore_restoration.py)
        restoration_training=TrainConfig(epochs=6, batch_size=16, lr=1e-3, halve_every=3, checkpoint_every=2),
        # lr: the paper's harmonizer network's (adapt.harmonizer=paper), whose every practical rule kept a step
        # near 100 or earlier in the benchmark (benchmarks/RESULTS.md); 100 steps suit the default curve too.
        adapt=AdaptConfig(lr=2e-5, batch_size=16, steps=100, eval_every=10, monitor_slices=48),
        segmenter=SegmenterConfig(channels=(16, 32, 64, 128)),
        segmenter_training=TrainConfig(epochs=40, batch_size=32, lr=4e-3, halve_every=15, checkpoint_every=5),
    ),
    "smoke": Profile(
        name="smoke",
        slices=SliceConfig(image_size=(48, 48), voxel_size=4.0),
        harmonizer=HarmonizerConfig(widths=(4, 8, 8), blocks=1),
        harmonizer_training=TrainConfig(epochs=2, batch_size=8, lr=3e-3, halve_every=1, checkpoint_every=1),
        flow=FlowConfig(dequantization_couplings=1, couplings=(1, 1, 1), widths=(4, 8), dequantization_widths=(4,)),
        flow_training=TrainConfig(epochs=2, batch_size=8, lr=3e-3, halve_every=1, checkpoint_every=1, keep="best"),
        restoration=RestorationConfig(channels=8, layers=3),
        restoration_training=TrainConfig(epochs=2, batch_size=8, lr=3e-3, halve_every=1, checkpoint_every=1),
        adapt=AdaptConfig(lr=1e-4, batch_size=8, steps=20, eval_every=5, monitor_slices=16),
        segmenter=SegmenterConfig(channels=(4, 8, 8), res_units=1),
        segmenter_training=TrainConfig(epochs=3, batch_size=8, lr=4e-3, halve_every=2, checkpoint_every=1),
        evaluation=EvaluationConfig(tent_steps=4, tent_batch_size=8, curve_slice_stride=2),
    ),
}
"""The named profiles (see the module docstring)."""


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """A JSON-ready dict of every setting (tuples become lists)."""
    return dataclasses.asdict(profile)


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} is a table of settings, not {value!r}")
            kwargs[name] = _build(hint, value, key)  # type: ignore[arg-type]
        elif hint in (int, float) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        elif hint is int:
            if not float(value).is_integer():
                raise ConfigError(f"{key} must be a whole number, not {value!r}")
            kwargs[name] = int(value)  # 5.0 from an older file, numpy integers
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def profile_from_dict(values: Mapping[str, Any]) -> Profile:
    """The inverse of :func:`profile_to_dict` (raises ValueError on unknown or invalid settings).

    A dict written before ``slices.voxel_size`` existed takes it from the named profile it came from.
    """
    slices = values.get("slices")
    preset = PROFILES.get(str(values.get("name")))
    if isinstance(slices, Mapping) and "voxel_size" not in slices and preset is not None:
        values = {**values, "slices": {**slices, "voxel_size": preset.slices.voxel_size}}
    return _build(Profile, values, "")


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word, such as a stopping rule's name


def apply_overrides(profile: Profile, overrides: Sequence[str]) -> Profile:
    """Apply ``section.field=value`` overrides (values in TOML syntax: ``2.0``, ``[64, 64]``, ``true``)."""
    update: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        target = update
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _parse_value(text.strip())
    return profile_from_dict(_merge(profile_to_dict(profile), update))


def load_profile(name: str = "fast", file: str | Path | None = None, overrides: Sequence[str] = ()) -> Profile:
    """A named profile, then a TOML file's settings, then ``section.field=value`` overrides.

    Raises:
        InputError: An unknown profile, an unreadable or invalid TOML file, or an invalid setting.
    """
    if name not in PROFILES:
        raise InputError(None, f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return update_profile(PROFILES[name], file, overrides)


def read_settings(path: str | Path) -> dict[str, Any]:
    """The tables and values of a TOML settings file.

    Raises:
        InputError: The file is missing or not valid TOML.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "settings file does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"invalid settings ({exc})") from exc


def update_profile(
    profile: Profile,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    only: Sequence[str] | None = None,
) -> Profile:
    """``profile`` with a TOML file's settings, then ``section.field=value`` overrides.

    Args:
        only: The top-level names that may change (``["adapt", "seed"]`` for a fitted model, whose networks fix
            the rest); by default any.

    Raises:
        InputError: An unreadable or invalid TOML file, an invalid setting, or one outside ``only``.
    """

    def check(names: Sequence[str], where: Path | None) -> None:
        outside = sorted({n for n in names if only is not None and n not in only})
        if outside:
            raise InputError(
                where, f"cannot change {', '.join(outside)} here: only {', '.join(only or [])} (the rest is fixed)"
            )

    if file is not None:
        path = Path(file)
        values = read_settings(path)
        check(list(values), path)
        try:
            profile = profile_from_dict(_merge(profile_to_dict(profile), values))
        except (ValueError, TypeError) as exc:
            raise InputError(path, f"invalid settings ({exc})") from exc
    check([item.partition("=")[0].strip().split(".")[0] for item in overrides], None)
    try:
        profile = apply_overrides(profile, overrides)
    except (ValueError, TypeError) as exc:
        raise InputError(None, f"invalid override: {exc}") from exc
    return replace(profile, name=profile.name)
