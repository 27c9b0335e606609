"""Longitudinal pairs: a baseline and a follow-up radiograph of one joint with exactly known JSN.

Truth (contract 3 of the design). With ``c`` the baseline joint centre and ``a`` the unit joint
axis (upper -> lower bone), each bone ``k`` moves from baseline to follow-up by ``T_k = G ∘ F_k``:

* ``F_lower`` = a small rotation (flexion) of the lower bone about ``c``;
* ``F_upper`` = a small rotation of the upper bone about ``c`` *followed by* a translation by
  ``d a``, so ``F_upper(c) = c + d a`` exactly;
* ``G`` = global repositioning of the whole hand: rotation, magnification and translation about
  ``c``.

The soft tissue moves with the bone that carries it: by ``T_upper`` above the joint line, by
``T_lower`` below it, blended across a band of ``soft_tissue_blend_mm`` on either side
(:mod:`jsnsynth.synth.soft_tissue`); with no flexion and no JSN change that is ``G``.

The joint frame (``c`` and ``a``) is
:func:`jsnsynth.synth.layers.joint_frame_from_masks` of the baseline masks, whatever the source
(a phantom's analytic centre stays in its metadata): a method given the baseline masks and no
centre recomputes exactly the frame in which the truth is stated.

``jsn_px = d`` (baseline pixels, positive = narrowing) and ``jsn_mm = d * pixel_spacing_mm``;
``(G^-1 T_upper(c) - G^-1 T_lower(c)) · a = d`` exactly. Both images then go through
:func:`jsnsynth.synth.xray.render_radiograph_and_clean` (float32) with their own independently drawn
:class:`~jsnsynth.synth.xray.ImagingParams` (blur, exposure/noise, display window, gamma, noise
seed): the nuisances of a second visit.

Sample, apply, record: :func:`sample_pair_params` draws a frozen :class:`PairParams`,
:func:`make_pair` applies it deterministically, and ``PairParams.to_dict`` records it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import math

import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.layers import JointLayers, check_pixel_spacing, joint_frame_from_masks
from jsnsynth.synth.limits import PAIR_OPTION_LIMITS
from jsnsynth.synth.soft_tissue import SOFT_TISSUE_BLEND_MM, warp_soft_tissue
from jsnsynth.synth.xray import ImagingParams, ImagingRanges, render_radiograph_and_clean, sample_imaging_params

#: ``render_with_poses(layers, upper_pose, lower_pose, soft_pose) -> JointLayers``
PoseRenderer = Callable[[JointLayers, Similarity, Similarity, Similarity], JointLayers]



@dataclass(frozen=True)
class PairConfig:
    """Ranges from which the nuisances and the JSN change of a pair are drawn (all uniform).

    Attributes:
        jsn_mm: ``(low, high)`` JSN change in millimetres (positive = narrowing).
        jsn_px: ``(low, high)`` JSN change in pixels; when set it replaces ``jsn_mm``.
        flexion_deg: largest rotation of each bone about the joint centre, drawn independently
            for both bones in ``[-flexion_deg, flexion_deg]``.
        rotation_deg: largest global rotation of the repositioned hand.
        magnification: ``(low, high)`` global magnification.
        translation_px: largest global translation along each of x and y.
        imaging: ranges of the imaging chain, drawn independently for both visits.
        noise: False renders noise-free ``baseline``/``followup`` images.
        soft_tissue_blend_mm: the soft tissue moves with the bone that carries it, passing from
            the upper bone's motion to the lower bone's across a band of this half-width about
            the joint line (:mod:`jsnsynth.synth.soft_tissue`).
    """

    jsn_mm: tuple[float, float] = (-0.5, 0.5)
    jsn_px: tuple[float, float] | None = None
    flexion_deg: float = 2.0
    rotation_deg: float = 3.0
    magnification: tuple[float, float] = (0.97, 1.03)
    translation_px: float = 5.0
    imaging: ImagingRanges = field(default_factory=ImagingRanges)
    noise: bool = True
    soft_tissue_blend_mm: float = SOFT_TISSUE_BLEND_MM

    def __post_init__(self) -> None:
        for name in ("jsn_mm", "jsn_px", "magnification"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not value[0] <= value[1]):
                raise InputError(f"pair option {name} must be a (low, high) range, got {value}")
        # beyond these a pair is no longer a follow-up of the same joint crop (bones leave the
        # crop or pass through each other), and the truth frame stops meaning anything
        for name, (low, high) in PAIR_OPTION_LIMITS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if value is not None and not all(math.isfinite(v) and low <= v <= high for v in values):
                raise InputError(f"pair option {name} must lie in [{low:g}, {high:g}], got {value}")
        if not (math.isfinite(self.soft_tissue_blend_mm) and self.soft_tissue_blend_mm > 0):
            raise InputError(f"soft-tissue blend must be a positive number of mm, got {self.soft_tissue_blend_mm}")
        if not isinstance(self.noise, (bool, np.bool_)):  # "no" is true: noisy pairs asked for as noise-free
            raise InputError(f"pair option noise must be True or False, got {self.noise!r}")

    def to_dict(self) -> dict:
        """JSON-ready record of every range (``jsn_mm`` null where ``jsn_px`` replaces it)."""
        record = asdict(self)
        record["imaging"] = asdict(self.imaging)
        if self.jsn_px is not None:
            record["jsn_mm"] = None
        return record


@dataclass(frozen=True)
class PairParams:
    """Everything drawn for one pair (apply with :func:`make_pair`).

    Attributes:
        jsn_px: commanded JSN change ``d``, baseline pixels along the joint axis; + = narrowing.
        jsn_mm: ``d`` in millimetres.
        upper_flexion_deg: rotation of the upper bone about the joint centre.
        lower_flexion_deg: rotation of the lower bone about the joint centre.
        global_angle_deg: rotation of the repositioning ``G`` about the joint centre.
        global_scale: magnification of ``G``.
        global_dx: translation of ``G`` along x, pixels.
        global_dy: translation of ``G`` along y, pixels.
        baseline_imaging: imaging chain of the baseline image.
        followup_imaging: imaging chain of the follow-up image.
    """

    jsn_px: float
    jsn_mm: float
    upper_flexion_deg: float
    lower_flexion_deg: float
    global_angle_deg: float
    global_scale: float
    global_dx: float
    global_dy: float
    baseline_imaging: ImagingParams
    followup_imaging: ImagingParams

    def to_dict(self) -> dict:
        """JSON-ready record (imaging parameters nested)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["baseline_imaging"] = self.baseline_imaging.to_dict()
        record["followup_imaging"] = self.followup_imaging.to_dict()
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "PairParams":
        """Rebuild from :meth:`to_dict` output."""
        values = {f.name: record[f.name] for f in fields(cls)}
        values["baseline_imaging"] = ImagingParams.from_dict(record["baseline_imaging"])
        values["followup_imaging"] = ImagingParams.from_dict(record["followup_imaging"])
        return cls(**values)


def sample_pair_params(
    rng: np.random.Generator | int, pixel_spacing_mm: float, config: PairConfig = PairConfig()
) -> PairParams:
    """Draw the JSN change, the nuisances and both imaging chains of one pair.

    Args:
        rng: the generator to draw from (or a seed for one).
        pixel_spacing_mm: the joint's pixel size, which turns a JSN range in mm into pixels.
        config: the ranges to draw from.

    Returns:
        The drawn parameters, to apply with :func:`make_pair`.

    Raises:
        InputError: a pixel spacing no radiograph has, or ``config.jsn_mm`` reaching beyond the
            pixel limit at ``pixel_spacing_mm``.
    """
    # a negative spacing gave the truth's jsn_px and jsn_mm opposite signs
    pixel_spacing_mm = check_pixel_spacing(pixel_spacing_mm, "a pair's joint")
    rng = np.random.default_rng(rng)  # a Generator comes back as it is
    jsn_reach_px(config, pixel_spacing_mm)
    if config.jsn_px is not None:
        jsn_px = float(rng.uniform(*config.jsn_px))
    else:
        jsn_px = float(rng.uniform(*config.jsn_mm)) / pixel_spacing_mm
    flex = rng.uniform(-config.flexion_deg, config.flexion_deg, size=2)
    angle = float(rng.uniform(-config.rotation_deg, config.rotation_deg))
    scale = float(rng.uniform(*config.magnification))
    shift = rng.uniform(-config.translation_px, config.translation_px, size=2)
    baseline = sample_imaging_params(rng, config.imaging, noise=config.noise)
    followup = sample_imaging_params(rng, config.imaging, noise=config.noise)
    return PairParams(
        jsn_px=jsn_px,
        jsn_mm=jsn_px * pixel_spacing_mm,
        upper_flexion_deg=float(flex[0]),
        lower_flexion_deg=float(flex[1]),
        global_angle_deg=angle,
        global_scale=scale,
        global_dx=float(shift[0]),
        global_dy=float(shift[1]),
        baseline_imaging=baseline,
        followup_imaging=followup,
    )


def jsn_reach_px(config: PairConfig, pixel_spacing_mm: float) -> float:
    """The largest JSN change, in pixels at ``pixel_spacing_mm``, that ``config`` draws.

    Raises:
        InputError: a range in millimetres that reaches beyond the ``jsn_px`` limit in pixels:
            checked on the pixels, as the crop holds them (5 mm at 0.02 mm/px moved the bone
            250 px, out of a 256 px crop, and the label said so).
    """
    if config.jsn_px is not None:
        return max(abs(v) for v in config.jsn_px)
    reach_px = max(abs(v) for v in config.jsn_mm) / pixel_spacing_mm
    low, high = PAIR_OPTION_LIMITS["jsn_px"]
    if not low <= reach_px <= high:
        raise InputError(
            f"a JSN change of up to {max(abs(v) for v in config.jsn_mm):g} mm is {reach_px:.1f} px at "
            f"{pixel_spacing_mm:g} mm/px, beyond the {high:g} px a crop can hold: give a smaller JSN range"
        )
    return reach_px


#: Share of the way from an image's centre to its nearest edge that the pair options may move
#: the joint: the limit depends on the image's size alone, so that it holds for every joint of a
#: source whose joints sit differently (each phantom's centre lies elsewhere: checked against the
#: joint's own position, a run stopped at whichever joint came first too near the edge).
JOINT_REACH_FRACTION = 0.75


def check_followup_joint_in_image(
    config: PairConfig, pixel_spacing_mm: float, joint_center_xy: tuple[float, float], shape: tuple[int, int]
) -> None:
    """Check that every pair ``config`` can draw keeps the follow-up's joint well in the image.

    The joint centre moves by the hand's translation (up to ``translation_px`` along x and y),
    and the upper bone's joint end by the JSN change as well, magnified; turns, flexion and
    magnification are about the centre. The ranges' limits are in pixels whatever the crop's size:
    the reach must stay within :data:`JOINT_REACH_FRACTION` of half the image's shorter side, and
    within the joint centre's own distance to the edge.

    Raises:
        InputError: the joint can leave the image (a 64 px crop translated by 64 px).
    """
    jsn_px = jsn_reach_px(config, pixel_spacing_mm)
    reach_px = math.sqrt(2.0) * config.translation_px + config.magnification[1] * jsn_px
    x, y = joint_center_xy
    height, width = shape
    room_px = min(JOINT_REACH_FRACTION * min(height, width) / 2.0, x, y, width - 1 - x, height - 1 - y)
    if reach_px > room_px:
        raise InputError(
            f"the pair options move the joint up to {reach_px:.0f} px (translation up to {config.translation_px:g} px "
            f"along x and y, JSN change up to {jsn_px:.1f} px), more than the "
            f"{max(room_px, 0.0):.0f} px it may move in the {width}x{height} image (three quarters of the way to the "
            "edge): the follow-up's joint would leave it; give a smaller translation or JSN range, or larger images"
        )


@dataclass(frozen=True)
class PairPoses:
    """Baseline -> follow-up similarity of each part, all about the baseline joint centre.

    ``soft`` is the hand's pose ``G``; the soft tissue itself follows the bones
    (:func:`jsnsynth.synth.soft_tissue.soft_tissue_sources`).
    """

    upper: Similarity
    lower: Similarity
    soft: Similarity


def pair_poses(params: PairParams, joint_center_xy: tuple[float, float], joint_axis_deg: float) -> PairPoses:
    """Compose ``T_upper = G ∘ shift(d) ∘ flex_upper``, ``T_lower = G ∘ flex_lower`` and the hand's ``G``."""
    cx, cy = joint_center_xy
    axis = axis_vector(joint_axis_deg)
    flex_upper = Similarity(1.0, params.upper_flexion_deg, params.jsn_px * axis[0], params.jsn_px * axis[1], cx, cy)
    flex_lower = Similarity(1.0, params.lower_flexion_deg, 0.0, 0.0, cx, cy)
    repositioning = Similarity(params.global_scale, params.global_angle_deg, params.global_dx, params.global_dy, cx, cy)
    return PairPoses(
        upper=flex_upper.then(repositioning),
        lower=flex_lower.then(repositioning),
        soft=repositioning,
    )


@dataclass
class Pair:
    """One simulated pair: layers, images (display intensity in [0, 1]) and its truth."""

    baseline_layers: JointLayers
    followup_layers: JointLayers
    params: PairParams
    poses: PairPoses
    baseline: np.ndarray
    followup: np.ndarray
    baseline_clean: np.ndarray
    followup_clean: np.ndarray

    @property
    def jsn_px(self) -> float:
        """Truth: JSN progression in baseline pixels (+ = narrowing)."""
        return self.params.jsn_px

    @property
    def jsn_mm(self) -> float:
        """Truth: JSN progression in millimetres."""
        return self.params.jsn_mm


def with_noise_draw(params: PairParams, photons_per_px: float, draw: int, electronic_noise: float = 3e-4) -> PairParams:
    """``params`` with both visits imaged at ``photons_per_px`` and noise realisation ``draw``:
    the same pair under independent noise draws (the baseline's and the follow-up's differ), for
    Monte-Carlo checks of an estimator's spread (``benchmarks/bench_quantify_se.py``).

    ``draw`` is the seed itself: pairs of one size given the same ``draw`` get the same noise
    field. Pooling pairs, give each its own draws (e.g. ``pair_index * draws + k``), or the one
    field's pull on every joint reads as a bias of the estimator.

    Raises:
        InputError: ``draw`` outside 0-3999 (the visits' seeds are ``1000 + draw`` and ``5000 + draw``).
    """
    if not 0 <= draw < 4000:
        raise InputError(f"noise draw must be in 0-3999, got {draw}")

    def noisy(imaging: ImagingParams, seed: int) -> ImagingParams:
        return replace(imaging, photons_per_px=photons_per_px, electronic_noise=electronic_noise, noise_seed=seed)

    return replace(params, baseline_imaging=noisy(params.baseline_imaging, 1000 + draw),
                   followup_imaging=noisy(params.followup_imaging, 5000 + draw))


def make_pair(
    layers: JointLayers,
    params: PairParams,
    render_with_poses: PoseRenderer | None = None,
    soft_tissue_blend_mm: float = SOFT_TISSUE_BLEND_MM,
    joint_frame: tuple[tuple[float, float], float] | None = None,
) -> Pair:
    """Apply ``params`` to baseline ``layers``: move the parts, then image both visits.

    Args:
        layers: the baseline layers.
        params: drawn by :func:`sample_pair_params`.
        render_with_poses: exact re-rendering of a pose-moved joint (the phantom's); None warps
            the raster layers with :func:`jsnsynth.synth.shift.warp_layers`.
        soft_tissue_blend_mm: half-width of the band across the joint line in which the soft
            tissue passes from the upper bone's motion to the lower bone's
            (:func:`jsnsynth.synth.soft_tissue.warp_soft_tissue`).
        joint_frame: ``joint_frame_from_masks`` of ``layers``' masks where the caller has it
            already (a few ms a pair).
    """
    # Truth is recorded in the frame that anyone holding the baseline masks can recompute.
    if joint_frame is None:
        joint_frame = joint_frame_from_masks(layers.upper_mask, layers.lower_mask)
    center_xy, axis_deg = joint_frame
    layers = layers.replace(joint_center_xy=center_xy, joint_axis_deg=axis_deg)
    poses = pair_poses(params, layers.joint_center_xy, layers.joint_axis_deg)
    blend_px = soft_tissue_blend_mm / layers.pixel_spacing_mm
    if render_with_poses is not None:
        # the bones re-rendered exactly; the soft tissue (no truth in it) resampled with them
        followup_layers = render_with_poses(layers, poses.upper, poses.lower, poses.soft)
        soft = warp_soft_tissue(layers.soft, poses.upper, poses.lower, poses.soft, center_xy, axis_deg, blend_px)
        followup_layers = followup_layers.replace(soft=soft)
    else:
        # imported here: scipy.fft/ndimage cost ~0.5 s at every worker start, and phantom
        # pairs never need them
        from jsnsynth.synth.shift import warp_layers

        followup_layers = warp_layers(layers, poses.upper, poses.lower, poses.soft, soft_blend_px=blend_px)
    # raster layers are band-limited samples, moved as such: exp(-a) of their interpolant is taken
    # at twice the resolution, or its aliasing would differ between the visits' sub-pixel positions
    # (xray.supersampled_transmission); the analytic phantom is sampled exactly at both poses
    supersampled = render_with_poses is None
    images = {}
    for role, lay, imaging in (
        ("baseline", layers, params.baseline_imaging),
        ("followup", followup_layers, params.followup_imaging),
    ):
        # float32 imaging: the images are stored as 16-bit PNG, far coarser than float32 rounding
        images[role], images[f"{role}_clean"] = render_radiograph_and_clean(
            lay.attenuation(), imaging, np.float32, supersampled
        )
    return Pair(layers, followup_layers, params, poses, **images)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks (1 for two empty masks)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def realised_jsn_px(poses: PairPoses, joint_center_xy: tuple[float, float], joint_axis_deg: float) -> float:
    """``(G^-1 T_upper(c) - G^-1 T_lower(c)) · axis`` from recorded poses: equals ``d`` exactly."""
    centre = np.array(joint_center_xy, dtype=np.float64)
    undo = poses.soft.inverse()
    upper = undo.apply(poses.upper.apply(centre))
    lower = undo.apply(poses.lower.apply(centre))
    return float((upper - lower) @ axis_vector(joint_axis_deg))


__all__ = [
    "PairConfig",
    "PairParams",
    "PairPoses",
    "Pair",
    "sample_pair_params",
    "pair_poses",
    "make_pair",
    "mask_dice",
    "realised_jsn_px",
]
