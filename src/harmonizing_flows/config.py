"""Configuration dataclasses: the one place where defaults live.

Every stage reads its settings from a dataclass defined here, never from a constant of its own, so that a
profile or a TOML file can change any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harmonizing_flows.errors import ConfigError

__all__ = [
    "AdaptConfig",
    "AugmentConfig",
    "EvaluationConfig",
    "FlowConfig",
    "HarmonizerConfig",
    "NegativeConfig",
    "RestorationConfig",
    "SegmenterConfig",
    "SimulationConfig",
    "SliceAxis",
    "SliceConfig",
    "SplitConfig",
    "TrainConfig",
]

SliceAxis = Literal["sagittal", "coronal", "axial"]


@dataclass(frozen=True)
class SliceConfig:
    """How a volume becomes 2D slices of a fixed size on the 0..255 scale.

    Attributes:
        axis: Slicing plane after reorientation to RAS; the paper uses coronal slices.
        image_size: In-plane size (height, width) that slices are padded or cropped to.
        percentile: Intensity percentile inside the brain mask that maps to 255. A high percentile rather than
            the maximum, so that a few bright voxels do not compress the whole range.
        levels: Number of intensity levels after quantization: 256, the only value the flow supports (its
            dequantization and bits per dimension, the augmentations and the harmonizer assume 8-bit images).
        voxel_size: The voxel size in mm that ``image_size`` is meant for (a 224x224 slice holds a 1 mm brain, an
            80x80 one a 2 mm brain). The demo simulates at it; with ``resample`` other data is resampled to it.
        resample: Resample a volume whose voxel size differs from ``voxel_size`` by more than 10 % along any axis
            to isotropic ``voxel_size`` voxels before slicing (the image linearly with anti-aliasing, the mask
            likewise and thresholded at one half, labels to the nearest voxel), so that 1 mm scans work with the
            2 mm fast profile. Harmonized volumes
            still come out on the input's own grid: the harmonizer's correction is carried back to it, not its
            coarse image. False slices every volume on its own grid.
        max_brain_outside: The largest share of a volume's brain that may fall outside the slice window when it
            is cropped. More means a brain larger than the window (or, with ``resample`` off, data finer than the
            profile expects: 1 mm data in the fast profile's 80x80 slices loses most of it), and slicing refuses
            the volume. The simulator's 2 mm brains
            lose at most 0.24 % to the fast profile's window.
    """

    axis: SliceAxis = "coronal"
    image_size: tuple[int, int] = (224, 224)
    percentile: float = 99.5
    levels: int = 256
    voxel_size: float = 1.0
    resample: bool = True
    max_brain_outside: float = 0.05

    def __post_init__(self) -> None:
        if self.axis not in ("sagittal", "coronal", "axial"):
            raise ConfigError(f"axis must be sagittal, coronal or axial, not {self.axis!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image_size must be two positive integers, not {self.image_size!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (0, 100], not {self.percentile}")
        if self.levels != 256:
            raise ConfigError(f"levels must be 256 (the flow models 8-bit images), not {self.levels}")
        if not self.voxel_size > 0:
            raise ConfigError(f"voxel_size must be positive, not {self.voxel_size}")
        if not 0.0 <= self.max_brain_outside <= 1.0:
            raise ConfigError(f"max_brain_outside must be in [0, 1], not {self.max_brain_outside}")


@dataclass(frozen=True)
class SplitConfig:
    """Subject-level split of each site into train / validation / test (the paper: 60 / 15 / 25)."""

    fractions: tuple[float, float, float] = (0.60, 0.15, 0.25)
    seed: int = 0
    names: tuple[str, str, str] = field(default=("train", "val", "test"))

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, not {self.fractions}")


@dataclass(frozen=True)
class SimulationConfig:
    """How the simulator makes subjects and images (site-independent settings; sites are in ``simulate.sites``).

    Attributes:
        subjects_per_site: Pseudo-subjects per site; each has its own anatomy.
        voxel_size: Output voxel size (mm, isotropic).
        seed: Seed of every random draw; the same seed gives the same bytes with the same number of threads
            (with another, PyTorch's float sums round differently: about 1 voxel in 10^5 moves one grey level).
        fov_mm: Field of view (R, A, S extent in mm), centred on the anatomy's brain.
        control_spacing_mm: Spacing of the control points of the random smooth deformation.
        deformation_mm: Standard deviation of each control point's displacement.
        rotation_deg: Standard deviation of the rotation about each axis.
        scale_std: Standard deviation of the per-axis scaling (a brain-size factor shared by all axes, plus a
            per-axis factor of half this size).
        translation_mm: Standard deviation of the translation along each axis.
        relaxation_jitter: Per-subject relative standard deviation of each base tissue's T1 and proton density.
        texture: Standard deviation of the within-tissue multiplicative texture.
        texture_mm: Correlation length (Gaussian sigma) of that texture.
        partial_volume_voxels: Gaussian sigma (in output voxels) that turns hard labels into partial volumes.
        percentile: Intensity percentile inside the brain that maps to the site's top of scale.
        mask_dilation_mm: How far the brain mask reaches past the labelled brain (sulcal and outer CSF).
        split_fractions: Train / validation / test shares of each site's subjects, written to the manifest.
    """

    subjects_per_site: int = 20
    voxel_size: float = 1.0
    seed: int = 0
    fov_mm: tuple[float, float, float] = (160.0, 200.0, 176.0)
    control_spacing_mm: float = 24.0
    deformation_mm: float = 2.5
    rotation_deg: float = 3.0
    scale_std: float = 0.04
    translation_mm: float = 2.0
    relaxation_jitter: float = 0.03
    texture: float = 0.03
    texture_mm: float = 1.5
    partial_volume_voxels: float = 0.5
    percentile: float = 99.5
    mask_dilation_mm: float = 2.0
    split_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)

    def __post_init__(self) -> None:
        SplitConfig(fractions=self.split_fractions)  # validates them
        if self.subjects_per_site < 1:
            raise ConfigError(f"subjects_per_site must be at least 1, not {self.subjects_per_site}")
        if not 0.25 <= self.voxel_size <= 8:
            raise ConfigError(f"voxel_size must be between 0.25 and 8 mm, not {self.voxel_size}")
        if min(self.fov_mm) <= 0:
            raise ConfigError(f"fov_mm must be positive, not {self.fov_mm}")


@dataclass(frozen=True)
class AugmentConfig:
    """Contrast augmentations that pre-train the harmonizer (paper Eq. 5; METHOD.md "Augmentations").

    Attributes:
        curve_margin: Each midpoint of the random monotonic curve is drawn from the central ``1 - 2 * margin`` of
            the range between its neighbours (0.2: the central 60 %).
        step_probability: Probability of each step of the contrast pipeline (add, multiply, gamma).
        shift: Range of the added constant (0..255 scale).
        factor: Range of the multiplying factor.
        gamma: Range of the gamma exponent (applied on the 0..1 scale).
        mix: Shares of samples that get the curve only, the pipeline only, the pipeline then the curve.
        bias_field: Not in the paper, 0 (off) by default: the largest peak-to-peak amplitude of a random smooth
            multiplicative field applied to every augmented image before its contrast changes (0.6: up to
            +-30 %), so that the pre-trained harmonizer also undoes smooth spatial intensity changes, such as
            two sites' different receive coils, which a grey-level map cannot. Not yet measured.
    """

    curve_margin: float = 0.2
    step_probability: float = 0.75
    shift: tuple[float, float] = (-30.0, 30.0)
    factor: tuple[float, float] = (0.5, 2.0)
    gamma: tuple[float, float] = (0.5, 1.5)
    mix: tuple[float, float, float] = (0.4, 0.4, 0.2)
    bias_field: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.bias_field < 2:
            raise ConfigError(f"bias_field must be in [0, 2), not {self.bias_field}")
        if not 0 <= self.curve_margin < 0.5:
            raise ConfigError(f"curve_margin must be in [0, 0.5), not {self.curve_margin}")
        if not 0 <= self.step_probability <= 1:
            raise ConfigError(f"step_probability must be in [0, 1], not {self.step_probability}")
        for name in ("shift", "factor", "gamma"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"{name} range must be (low, high), not {(lo, hi)}")
        if self.factor[0] <= 0 or self.gamma[0] <= 0:
            raise ConfigError("factor and gamma ranges must be positive")
        if len(self.mix) != 3 or min(self.mix) < 0 or abs(sum(self.mix) - 1) > 1e-6:
            raise ConfigError(f"mix must be three non-negative shares summing to 1, not {self.mix}")


@dataclass(frozen=True)
class RestorationConfig:
    """A blind restoration network and the degradations it learns to undo on the source's slices (not in the
    paper; :mod:`harmonizing_flows.method.restoration`), fitted with the model when ``enabled``; every harmonized
    image then passes through it (adaptation moves the harmonizer alone). Off in every profile until chosen on
    validation volumes; the benchmark's variant ``curve+restoration`` turns it on.

    Attributes:
        enabled: Fit the network with the model and apply it after the harmonizer.
        channels: Width of the network's convolutions.
        layers: 3x3 convolutions in the network (the last one starts at zero: the network starts as the identity).
        max_noise: Largest standard deviation of the Rician noise, in grey levels (0..255), drawn uniformly.
        max_blur: Largest in-plane Gaussian width in pixels, drawn uniformly.
        thick_share: Share of images whose first in-plane axis is blurred more (a thicker slice seen in-plane).
        max_thick: Largest extra width along that axis, in pixels.
        bias_field: Largest peak-to-peak amplitude of a smooth multiplicative field (0.3: +-15 %).
        clean_share: Share of images left as they are, so that a clean image is left clean.
    """

    enabled: bool = False
    channels: int = 32
    layers: int = 5
    max_noise: float = 14.0
    max_blur: float = 0.8
    thick_share: float = 0.3
    max_thick: float = 0.6
    bias_field: float = 0.3
    clean_share: float = 0.15

    def __post_init__(self) -> None:
        if self.channels < 1 or self.layers < 2:
            raise ConfigError(f"restoration needs channels >= 1 and layers >= 2, not {self.channels}, {self.layers}")
        if min(self.max_noise, self.max_blur, self.max_thick) < 0:
            raise ConfigError("max_noise, max_blur and max_thick must not be negative")
        if not 0 <= self.bias_field < 2:
            raise ConfigError(f"bias_field must be in [0, 2), not {self.bias_field}")
        for name in ("thick_share", "clean_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], not {getattr(self, name)}")


@dataclass(frozen=True)
class NegativeConfig:
    """The flow's guiding negatives (paper Eq. 4): dissimilar augmentations, optionally collapse modes too.

    Attributes:
        fraction: Share of each training batch that is augmented into candidate negatives.
        augment: The augmentation of candidates (the paper: milder factor range, each step with probability 0.6).
        curve_share: Share of candidates made with the monotonic curve (the rest with the contrast pipeline).
        min_dissimilarity: A candidate is kept when ``mean|d| + 2 std(d)`` inside the brain exceeds this (0..255).
        collapse_modes: Guard: also use darkened, blurred, constant and contrast-inverted images as negatives,
            the ways a harmonizer collapses when adaptation is pushed too far.
    """

    fraction: float = 0.2
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(step_probability=0.6, factor=(0.5, 1.5), mix=(0.0, 1.0, 0.0))
    )
    curve_share: float = 0.5
    min_dissimilarity: float = 20.0
    collapse_modes: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1 or not 0 <= self.curve_share <= 1:
            raise ConfigError("fraction and curve_share must be in [0, 1]")


@dataclass(frozen=True)
class HarmonizerConfig:
    """The harmonizer network ``h(x) = alpha * x + beta`` (paper section 3.2).

    Attributes:
        widths: Channels per U-Net level (the paper: 16, 32, 48, 64, 64).
        blocks: concat-ELU convolutions per level and side (the paper: 2).
        positive_alpha: Guard: ``alpha = exp(a)`` instead of the paper's unconstrained linear ``alpha``, so that
            adaptation cannot invert the contrast. Off by default (the paper's harmonizer): in the benchmark the
            linear alpha adapted as well with the guarded entropy rule, better with the source-bpd rule, and never
            collapsed unguarded, where the positive alpha drove the brain black (benchmarks/RESULTS.md, Table 2).
    """

    widths: tuple[int, ...] = (16, 32, 48, 64, 64)
    blocks: int = 2
    positive_alpha: bool = False

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1 or self.blocks < 1:
            raise ConfigError(f"harmonizer widths and blocks must be positive, not {self.widths}, {self.blocks}")


@dataclass(frozen=True)
class FlowConfig:
    """The normalizing flow and its guided objective (paper sections 3.1 and 4.1).

    Attributes:
        dequantization_couplings: Checkerboard couplings of the variational dequantization (the paper: 4).
        couplings: Couplings at each scale: checkerboard at full resolution, then channel-mask couplings after the
            first and after the second squeeze (the paper: 4, 4, 4).
        widths: Channels per level of each coupling's U-Net conditioner (the authors: 16, 32, 48, 64).
        dequantization_widths: The same for the dequantization's conditioners.
        logit_alpha: The logit transform's squeeze away from 0 and 1.
        margin: The guiding hinge ``c`` in bits per dimension (the paper: 1.2).
        margin_mode: ``"absolute"``: negatives are pushed up to ``c`` bpd, as in the paper's Eq. 4. ``"relative"``:
            up to the batch's source bpd plus ``c``. Brain slices sit above 1.2 bpd, where the absolute hinge is
            always saturated and gives no gradient, so relative is the default (METHOD.md leaves this to the data).
        brain_only: Guard: count only the brain's pixels in the likelihood (each term weighted by the share of
            brain in the pixels it covers), so that a background-like brain is not rewarded.
        weighting: How Eq. 4's two terms are weighed. ``"samples"``, the paper's: a negative takes the place of
            the image it came from, and every image of the batch weighs the same (the loss is a sum over images,
            here divided by their number). ``"terms"``: the mean bpd of all source images minus the mean hinge of
            the negatives, so that the negatives, a fifth of the batch, weigh as much as the positives together;
            the default, being the one measured on the simulator.
    """

    dequantization_couplings: int = 4
    couplings: tuple[int, int, int] = (4, 4, 4)
    widths: tuple[int, ...] = (16, 32, 48, 64)
    dequantization_widths: tuple[int, ...] = (16, 32, 48, 64)
    logit_alpha: float = 1e-5
    margin: float = 1.2
    margin_mode: Literal["absolute", "relative"] = "relative"
    brain_only: bool = False
    weighting: Literal["terms", "samples"] = "terms"

    def __post_init__(self) -> None:
        if self.weighting not in ("terms", "samples"):
            raise ConfigError(f"weighting must be terms or samples, not {self.weighting!r}")
        if len(self.couplings) != 3 or min(self.couplings) < 0 or self.dequantization_couplings < 0:
            raise ConfigError(f"couplings must be three non-negative counts, not {self.couplings}")
        if not self.widths or not self.dequantization_widths:
            raise ConfigError("conditioner widths must not be empty")
        if self.margin_mode not in ("absolute", "relative"):
            raise ConfigError(f"margin_mode must be absolute or relative, not {self.margin_mode!r}")
        if not 0 < self.logit_alpha < 0.5:
            raise ConfigError(f"logit_alpha must be in (0, 0.5), not {self.logit_alpha}")


@dataclass(frozen=True)
class TrainConfig:
    """One network's training schedule (Adam, learning rate halved every ``halve_every`` epochs).

    Attributes:
        epochs: Passes over the training slices.
        batch_size: Slices per step, over all processes together (each of ``n`` processes takes ``1/n``).
        lr: Initial learning rate.
        halve_every: Epochs between halvings of the learning rate.
        checkpoint_every: Epochs between checkpoints (0: only at the end).
        max_steps_per_epoch: Cap on steps per epoch (0: no cap), to bound an epoch on large data sets.
        clip_grad_norm: Largest norm of all the gradients together before a step; larger ones are scaled down
            (0: no clipping). The authors clip the flow's at 1.0.
        keep: Which weights training ends with: the ``"last"`` epoch's, or the ``"best"`` epoch's on the
            validation score (lower is better; only for a network that has one, the flow: its validation bpd
            over the brain), so that a schedule longer than the data supports cannot end overfitted.
    """

    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    halve_every: int = 30
    checkpoint_every: int = 10
    max_steps_per_epoch: int = 0
    clip_grad_norm: float = 0.0
    keep: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.halve_every < 1:
            raise ConfigError(f"epochs, batch_size, lr and halve_every must be positive: {self}")
        if self.clip_grad_norm < 0:
            raise ConfigError(f"clip_grad_norm must be 0 (off) or positive, not {self.clip_grad_norm}")
        if self.keep not in ("last", "best"):
            raise ConfigError(f"keep must be last or best, not {self.keep!r}")


StopRule = Literal["source-bpd", "entropy", "steps"]
HarmonizerFamily = Literal["paper", "curve"]


@dataclass(frozen=True)
class AdaptConfig:
    """Test-time adaptation of the harmonizer to one target site (paper Eq. 6).

    The default is the tool's method: the curve harmonizer (histogram matching, then one monotone curve for the
    site) adapted for ``steps`` steps, the last kept (chosen over the paper's harmonizer and its stopping rules
    on validation volumes; benchmarks/RESULTS.md, issue 20). ``harmonizer="paper"`` with ``stop="source-bpd"``
    is the paper's method (the ``paper`` profile's).

    Attributes:
        lr: Adam learning rate of the paper's harmonizer network. The authors used 4e-6, but on a network that
            takes and returns 0..255 values; this harmonizer sees ``x / 255`` and scales its offset by 255, so the
            same number is not the same step (Adam moves each weight by about ``lr``: the first layer moves 255x
            less, the last 255x more).
        curve_lr: Adam learning rate of the curve harmonizer's knots (free parameters of order 1, not a
            network's weights, hence a rate far above ``lr``).
        batch_size: Target slices per step (the authors: 16).
        steps: Most steps to take.
        eval_every: Steps between evaluations of the stopping rule (target bpd on a fixed monitoring set).
        monitor_slices: Slices of the target kept aside, with fixed dequantization noise, to measure the bpd.
        stop: ``"source-bpd"``: stop once the target bpd reaches the source validation bpd stored with the flow;
            ``"entropy"``: keep the step with the lowest mean entropy of a segmenter's predictions (needs one);
            ``"steps"``: take all ``steps`` and keep the last.
        patience: With ``"entropy"``, evaluations without improvement before stopping.
        alpha_guard: Guard: stop, and keep the best step so far, when the mean alpha falls below this fraction of
            its starting value (0 disables). A collapsing harmonizer drives alpha down before the image goes dark.
        intensity_guard: Guard: stop, and keep the best step so far, when the harmonized brain's mean intensity on
            the monitoring slices moves by more than this fraction of its starting value (the pre-trained
            harmonizer's output), or its standard deviation falls by more than it (0 disables). Pushed too far,
            the flow drives the brain dark and flat (the demo at 300 steps: mean 135 -> 0, Dice -> 0, while alpha
            stayed above half its start, so the alpha guard at 0.5 never saw it). A collapse is gradual, and the
            entropy rule favours its early steps (a darkening brain gives confident background). Healthy
            adaptation moved the mean by at most about a quarter and cut the spread by at most about a third, so
            the default, 0.3, lets it run and stops a collapse (benchmarks/HISTORY.md).
            On in every profile: it only ever stops a run earlier (0 gives the paper's exact procedure).
        brain_only: Measure the likelihood over the brain mask only (see ``FlowConfig.brain_only``): on by default,
            as the curve harmonizer was validated; for the paper's harmonizer a guard (its Eq. 6 counts every
            pixel: ``false``, as the ``paper`` profile sets).
        jacobian_weight: Weight of the change-of-variables term: the loss becomes ``bpd(h(x)) - w log2 |h'(x)|``
            per pixel, so that flattening the contrast is no longer rewarded (0: the paper's Eq. 6). The paper's
            harmonizer contributes ``log2 |alpha|`` (the offset map's own dependence on ``x`` left out); the curve
            harmonizer its curve's exact log-derivative.
        harmonizer: What adaptation moves. ``"curve"`` (the default): a curve harmonizer
            (:mod:`harmonizing_flows.method.curve_harmonizer`): each volume's histogram matched onto the source's
            stored one, then one monotone curve for the site, starting at the identity (step 0 is histogram
            matching). ``"paper"``: the fitted harmonizer network (Eq. 6).
    """

    lr: float = 4e-6
    curve_lr: float = 0.02
    batch_size: int = 16
    steps: int = 100
    eval_every: int = 10
    monitor_slices: int = 64
    stop: StopRule = "steps"
    patience: int = 10
    alpha_guard: float = 0.0
    intensity_guard: float = 0.3
    brain_only: bool = True
    jacobian_weight: float = 0.0
    harmonizer: HarmonizerFamily = "curve"

    def __post_init__(self) -> None:
        if self.stop not in ("source-bpd", "entropy", "steps"):
            raise ConfigError(f"stop must be source-bpd, entropy or steps, not {self.stop!r}")
        if self.lr <= 0 or self.curve_lr <= 0 or self.batch_size < 1 or self.steps < 0 or self.eval_every < 1:
            raise ConfigError(
                f"lr, curve_lr, batch_size and eval_every must be positive and steps non-negative: {self}"
            )
        if not 0 <= self.alpha_guard < 1:
            raise ConfigError(f"alpha_guard must be in [0, 1), not {self.alpha_guard}")
        if not 0 <= self.intensity_guard < 1:
            raise ConfigError(f"intensity_guard must be in [0, 1), not {self.intensity_guard}")
        if self.harmonizer not in ("paper", "curve"):
            raise ConfigError(f"adapt.harmonizer must be paper or curve, not {self.harmonizer!r}")
        if not self.jacobian_weight >= 0:
            raise ConfigError(f"jacobian_weight must be zero or positive, not {self.jacobian_weight}")


@dataclass(frozen=True)
class SegmenterConfig:
    """The frozen segmenter that judges harmonization (paper section 4): a 2D MONAI U-Net over the 15 classes.

    Attributes:
        channels: Channels per level (each level after the first halves the image).
        res_units: Residual units per level.
        dropout: Dropout inside the units.
        dice_weight: Weight of the soft Dice term added to the cross-entropy (0: cross-entropy only).
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    res_units: int = 2
    dropout: float = 0.0
    dice_weight: float = 1.0

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or min(self.channels) < 1 or self.res_units < 0:
            raise ConfigError(f"segmenter needs at least two positive channel counts, not {self.channels}")

    @property
    def factor(self) -> int:
        """Image height and width must be multiples of this."""
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True)
class EvaluationConfig:
    """The evaluation protocol's own settings (``hflow benchmark``).

    Attributes:
        tent_lr: Adam learning rate of TENT on the segmenter's batch-norm affine parameters.
        tent_steps: TENT steps on the target's slices.
        tent_batch_size: Target slices per TENT step (the batch whose statistics TENT adapts with).
        curve_slice_stride: The Dice curve during adaptation is measured on every this-many test slices (the
            tables use every slice of every test volume).
        combat_min_share: ComBat runs voxel-wise on the voxels that are brain in at least this share of the
            volumes; the rest of each brain follows that volume's own fitted intensity map.
    """

    tent_lr: float = 1e-3
    tent_steps: int = 50
    tent_batch_size: int = 16
    curve_slice_stride: int = 3
    combat_min_share: float = 1.0

    def __post_init__(self) -> None:
        if self.tent_lr <= 0 or self.tent_steps < 0 or self.tent_batch_size < 2 or self.curve_slice_stride < 1:
            raise ConfigError(f"invalid evaluation settings: {self}")
        if not 0 < self.combat_min_share <= 1:
            raise ConfigError(f"combat_min_share must be in (0, 1], not {self.combat_min_share}")
