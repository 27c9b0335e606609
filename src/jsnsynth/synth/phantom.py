"""Analytic finger-joint phantom: exact soft-tissue, upper-bone and lower-bone attenuation layers.

Every layer is the line integral ``a = ∫ mu dz`` of a 3-D solid along parallel rays (the ``z``
direction, perpendicular to the image), evaluated in closed form at each pixel centre:

* Solids are stacks of elliptical cross-sections centred on ``z = 0``, so the chord through a solid
  at an image point is ``2 d sqrt(1 - ...)`` and chords of unions / intersections of such solids
  are the ``max`` / ``min`` of their chords, exactly.
* A **bone shaft** is an elliptical "cylinder" whose half-width and half-depth flare smoothly
  towards the joint (metaphysis). One bone ends in a convex **head** (a rounded box,
  :func:`_cap_chord`, ellipsoidal on the bone axis); the other in a **base**: a rounded block minus
  a cup-shaped cavity ``depth < g(s) - k z^2`` whose bottom ``g(s) = cup - c (s / w)^2`` rises at
  the sides (a slightly concave articular outline) and whose volar and dorsal walls (the lips)
  reach over the head as thin crescents. By default (``head_bone="lower"``) the head is on the
  lower bone, as in PA hand radiographs with the fingers pointing up and in the real crops.
* Each bone is an outer solid (cortical density ``mu_cortical``) around an inner solid (trabecular
  density ``mu_trabecular``): ``a = mu_c (L_outer - L_inner) + mu_t L_inner rho``. The cortical
  shell is thick along the shaft, thin at the sides of head and base, and forms the subchondral
  plate at the joint.
* The trabecular **texture** ``rho`` is a function of smooth random fields defined in continuous
  bone-local millimetres (sums of random plane waves drawn from ``texture_seed``), so it moves
  with the bone.
* Every outline's ``sqrt`` edge is rounded over ``_EDGE_MM`` (:func:`_rounded_sqrt`), the
  detector's pre-sampling unsharpness, so point-sampled edges hardly alias.
* **Soft tissue** is an elliptical cylinder along the joint axis that tapers distally, plus a constant ``background_attenuation`` that stands for everything
  outside the finger (cassette, scatter), so air is grey like in the real crops.

Frames. The joint frame has its origin at the joint centre, ``u`` across and ``v`` along the
joint axis (upper -> lower bone), in millimetres; image pixels map to it through
``joint_axis_deg`` and ``pixel_spacing_mm`` (:mod:`jsnsynth.synth.geometry` conventions). Each bone
has its own frame ``(s, t)``: origin at its joint-surface point on the axis, tilted by a small
``*_tilt_deg`` about that point (and turned by 180 degrees where needed, so that a head always
lies at ``t < 0`` and a base at ``t > 0`` of its own frame).

Joint space width. ``jsw_mm`` is the distance along the joint axis line, through the joint centre,
from the last point of the upper bone's support on that line (at ``v = -jsw/2``) to the first
point of the lower bone's support (at ``v = +jsw/2``): the head's apex and the reach of the
base's lips on the axis (found by :func:`_base_onset_mm`). It is
positive for a gap, 0 for touching bones and negative when the bones overlap in projection along
the axis. The joint centre is the middle of that gap (``v = 0``).

Poses. :func:`render_phantom` takes one :class:`~jsnsynth.synth.geometry.Similarity` per layer
(baseline -> follow-up, in image pixels). The layer under pose ``T`` is the baseline layer moved by
``T``: ``L_T(p) = L(T^{-1} p)``, evaluated analytically at the pixel centres, texture included
(line integrals do not change with in-plane magnification, so values are not rescaled).
Layers are point samples of the continuous analytic scene at pixel centres (no pixel-area
integration); the imaging chain's detector blur smooths them.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM, PIXEL_SPACING_RANGE_MM, JointLayers
from jsnsynth.synth.limits import MAX_CROP_FIELD_MM, MAX_SIDE_PX

JOINT_TYPES = ("mcp", "pip", "dip")

#: Length over which chord edges are rounded (see _rounded_sqrt), millimetres.
_EDGE_MM = 0.15
#: Number of plane waves in a bone's texture field (more: closer to a Gaussian field, slower).
_N_WAVES = 32
#: Half-width (1/e) of the trabecular lines in mm, the lines' mean and std
#: (measured over many seeds, so the pattern is about zero-mean, unit-variance), and their share.
_LINE_HALF_WIDTH_MM = 0.13
_GRADIENT_FLOOR = 0.7
#: Width of the smooth ramp that keeps the trabecular density positive.
_DENSITY_RAMP = 0.3
_LINE_MEAN = 0.39
_LINE_STD = 0.37
_LINE_SHARE = 0.7


#: Smallest phantom crop (px): smaller bones are too few pixels for a JSN measurement to mean anything
#: (a registration needs a few hundred pixels of each bone).
MIN_SIZE_PX = 64


@dataclass(frozen=True)
class PhantomParams:
    """Every parameter of one phantom (lengths in millimetres, attenuation in 1/mm).

    Attributes:
        joint_type: ``"mcp"``, ``"pip"`` or ``"dip"`` (the proportions it was drawn from).
        size_px: crop height and width, pixels.
        pixel_spacing_mm: pixel size, millimetres.
        center_x_px: x of the joint centre (middle of the joint space on the axis), pixels.
        center_y_px: y of the joint centre, pixels.
        joint_axis_deg: in-plane rotation of the joint axis from +y (Similarity sign convention).
        jsw_mm: joint space width along the axis through the joint centre (negative: overlap).
        head_bone: which bone carries the convex head, ``"lower"`` (default: fingers pointing up, as
            in PA hand radiographs and the real crops, where the upper bone is the distal bone's
            concave base and the lower bone the proximal bone's head) or ``"upper"``.
        upper_tilt_deg: tilt of the upper bone about its joint point on the axis, relative to the axis.
        lower_tilt_deg: tilt of the lower bone about its joint point on the axis.
        head_shaft_half_width_mm: half-width of the head bone's shaft far from the joint.
        head_shaft_half_depth_mm: half-depth (along the rays) of that shaft.
        head_half_width_mm: half-width of the head cap.
        head_half_length_mm: half-length of the head along the bone axis.
        head_half_depth_mm: half-depth of the head.
        head_squareness: 0 for an ellipsoidal head, towards 1 for a boxier one (see _cap_chord).
        head_flare_length_mm: length over which the shaft flares into the head.
        base_shaft_half_width_mm: half-width of the base bone's shaft far from the joint.
        base_shaft_half_depth_mm: half-depth of that shaft.
        base_half_width_mm: half-width of the base block.
        base_half_length_mm: half-length of the base block along the bone axis.
        base_half_depth_mm: half-depth of the base block.
        base_squareness: the same as head_squareness for the base block.
        base_flare_length_mm: length over which the shaft flares into the base.
        base_concavity_mm: rise of the articular surface at the base's sides (``c`` of ``g(s)``).
        base_cup_mm: depth of the articular cup on the axis, from the top of the base block (the
            reach of the volar and dorsal lips) to the bottom of the cavity.
        base_cup_width: half-depth (along the rays) of the cavity at the block top, as a fraction
            of the base half-depth; smaller values make the lips reach further over the head.
        cortical_shaft_mm: cortical thickness along the shafts.
        cortical_head_mm: cortical thickness at the sides of the head and base.
        subchondral_mm: thickness of the subchondral plate at the joint surfaces.
        mu_cortical: linear attenuation of cortical bone, 1/mm.
        mu_trabecular: mean linear attenuation of the trabecular interior, 1/mm.
        texture_scale_mm: typical size of the trabecular pattern.
        texture_contrast: relative standard deviation of the trabecular attenuation.
        texture_anisotropy: elongation of the pattern along the bone axis (1 = isotropic).
        texture_seed: seed of the texture fields (one per bone and the soft tissue).
        soft_half_width_mm: half-width of the finger at the joint.
        soft_depth_ratio: half-depth / half-width of the finger cross-section.
        soft_offset_mm: sideways offset of the finger axis from the joint axis.
        soft_taper_per_mm: relative narrowing of the finger per mm towards its tip (the base bone).
        mu_soft: linear attenuation of soft tissue, 1/mm.
        soft_variation: relative amplitude of slow soft-tissue density variations.
        background_attenuation: constant attenuation everywhere (cassette, scatter).
    """

    joint_type: str = "pip"
    size_px: int = 256
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
    center_x_px: float = 127.5
    center_y_px: float = 122.4
    joint_axis_deg: float = 0.0
    jsw_mm: float = 1.5
    head_bone: str = "lower"
    upper_tilt_deg: float = 0.0
    lower_tilt_deg: float = 0.0
    head_shaft_half_width_mm: float = 11.0
    head_shaft_half_depth_mm: float = 8.5
    head_half_width_mm: float = 16.0
    head_half_length_mm: float = 12.0
    head_half_depth_mm: float = 11.0
    head_squareness: float = 0.15
    head_flare_length_mm: float = 16.0
    base_shaft_half_width_mm: float = 8.0
    base_shaft_half_depth_mm: float = 6.5
    base_half_width_mm: float = 16.5
    base_half_length_mm: float = 10.5
    base_half_depth_mm: float = 10.0
    base_squareness: float = 0.45
    base_flare_length_mm: float = 11.5
    base_concavity_mm: float = 0.65
    base_cup_mm: float = 1.7
    base_cup_width: float = 0.6
    cortical_shaft_mm: float = 1.4
    cortical_head_mm: float = 0.9
    subchondral_mm: float = 1.0
    mu_cortical: float = 0.155
    mu_trabecular: float = 0.01
    texture_scale_mm: float = 1.75
    texture_contrast: float = 1.0
    texture_anisotropy: float = 1.6
    texture_seed: int = 0
    soft_half_width_mm: float = 44.0
    soft_depth_ratio: float = 0.7
    soft_offset_mm: float = 0.0
    soft_taper_per_mm: float = 0.003
    mu_soft: float = 0.0055
    soft_variation: float = 0.05
    background_attenuation: float = 0.04

    def __post_init__(self) -> None:
        check_phantom_params(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-ready dict."""
        # flat fields: cheaper than dataclasses.asdict (called for every rendered layer set)
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "PhantomParams":
        """Rebuild parameters from :meth:`to_dict` output (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise InputError(f"unknown phantom parameter(s): {', '.join(unknown)}")
        return cls(**record)

    @property
    def joint_center_xy(self) -> tuple[float, float]:
        """``(x, y)`` of the joint centre, pixels."""
        return (float(self.center_x_px), float(self.center_y_px))


def check_phantom_size(size_px: float) -> None:
    """Raise :class:`InputError` unless ``size_px`` is a whole number of pixels from
    :data:`MIN_SIZE_PX` to :data:`MAX_SIDE_PX`."""
    if not MIN_SIZE_PX <= size_px <= MAX_SIDE_PX or int(size_px) != size_px:  # NaN fails the range first
        raise InputError(f"phantom size must be a whole number of {MIN_SIZE_PX} to {MAX_SIDE_PX} pixels, got {size_px}")


#: Smallest field of view (mm) of a phantom crop, size x pixel spacing: 64 px at 0.02 mm/px
#: (1.3 mm) had no upper bone in the picture in half the draws.
MIN_PHANTOM_FIELD_MM = 3.0

#: Smallest field of view (mm) of a phantom crop measured without trouble. The phantom's
#: millimetres are those of the nominal 0.175 mm/px, about twice anatomy's (phantom.md): its
#: wider bone is 26-41 mm across. Narrower, the picture's edges cut both bones' sides and
#: leave bands without lateral edges, along which a registration can slide: an outside probe
#: measured 8 of about 1,200 noise-free 256 px pairs at 0.08-0.10 mm/px (20-26 mm) 0.3-2 px off,
#: 2 of them unflagged, none at 0.11 mm/px; 128 px at 0.175 mm/px (22 mm) 0.012-0.016 px RMSE.
MIN_PHANTOM_CROP_FIELD_MM = 30.0


def widest_bone_range_mm() -> tuple[float, float]:
    """The least and the greatest width (mm) of a phantom joint's wider bone over all joint types
    (:data:`_PROPORTIONS`: the head's width times the base's ratio to it, when larger)."""
    widths = [(2 * prop["head_w"][0] * max(1.0, prop["base_ratio"][0]),
               2 * prop["head_w"][1] * max(1.0, prop["base_ratio"][1])) for prop in _PROPORTIONS.values()]
    return min(low for low, _ in widths), max(high for _, high in widths)


def check_phantom_field(size_px: int, pixel_spacing_mm: float) -> None:
    """Refuse a phantom field of view (``size_px`` x ``pixel_spacing_mm``) too small to show both
    bones, and warn about one far wider than a joint's crop (``--size 4096`` at the default
    spacing frames 717 mm: for more pixels of the same joint, a finer spacing) or narrower than
    the phantom's joint (:data:`MIN_PHANTOM_CROP_FIELD_MM`; ``--size 128`` at the default spacing
    frames 22 mm: for fewer pixels of the whole joint, a coarser spacing).

    Raises:
        InputError: a field below :data:`MIN_PHANTOM_FIELD_MM`.
    """
    field_mm = size_px * pixel_spacing_mm
    if field_mm < MIN_PHANTOM_FIELD_MM:
        raise InputError(f"a phantom of {size_px} px at {pixel_spacing_mm:g} mm/px frames {field_mm:.1f} mm, "
                         f"too little of a joint to show both bones (at least {MIN_PHANTOM_FIELD_MM:g} mm)")
    if field_mm > MAX_CROP_FIELD_MM:
        # the spacing that frames what 256 px at the default do, or the finest one taken
        finer_mm = DEFAULT_PIXEL_SPACING_MM * 256 / size_px
        finest_mm = PIXEL_SPACING_RANGE_MM[0]
        advice = (f"{finer_mm:.4g} mm/px frames what 256 px at the default do" if finer_mm >= finest_mm else
                  f"{finest_mm:g} mm/px, the finest taken, frames {size_px * finest_mm:.0f} mm")
        warnings.warn(
            f"a phantom of {size_px} px at {pixel_spacing_mm:g} mm/px frames {field_mm:.0f} mm, more than a joint's "
            f"crop (up to {MAX_CROP_FIELD_MM:g} mm): the model's shafts and finger fill the picture; for more "
            f"pixels of the same joint give a finer spacing ({advice})",
            stacklevel=2,
        )
    elif field_mm < MIN_PHANTOM_CROP_FIELD_MM:
        # the spacing at which this size frames what 256 px at the default do
        coarser_mm = DEFAULT_PIXEL_SPACING_MM * 256 / size_px
        narrowest, widest = widest_bone_range_mm()
        warnings.warn(
            f"a phantom of {size_px} px at {pixel_spacing_mm:g} mm/px frames {field_mm:.1f} mm, under "
            f"{MIN_PHANTOM_CROP_FIELD_MM:g} mm: its bones, {narrowest:.0f}-{widest:.0f} mm across in the phantom's "
            f"millimetres (those of the nominal {DEFAULT_PIXEL_SPACING_MM:g} mm/px), run off the picture's sides, "
            "and a quantifier measures such pairs less well; for fewer pixels of the whole joint give a coarser "
            f"spacing ({coarser_mm:.4g} mm/px frames what 256 px at the default do), for a finer sampling more pixels",
            stacklevel=2,
        )


def check_phantom_params(params: PhantomParams) -> None:
    """Raise :class:`InputError` naming the first inconsistent parameter of ``params``."""
    if params.head_bone not in ("upper", "lower"):
        raise InputError(f"head_bone must be 'upper' or 'lower', got {params.head_bone!r}")
    if params.joint_type not in JOINT_TYPES:
        raise InputError(f"joint_type must be one of {', '.join(JOINT_TYPES)}, got {params.joint_type!r}")
    check_phantom_size(params.size_px)
    for f in fields(params):
        value = getattr(params, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"phantom parameter {f.name} must be finite, got {value}")
    if not params.pixel_spacing_mm > 0:
        raise InputError(f"pixel spacing must be > 0 mm, got {params.pixel_spacing_mm}")
    positive = [
        "head_shaft_half_width_mm", "head_shaft_half_depth_mm", "head_half_width_mm",
        "head_half_length_mm", "head_half_depth_mm", "head_flare_length_mm",
        "base_shaft_half_width_mm", "base_shaft_half_depth_mm", "base_half_width_mm",
        "base_half_length_mm", "base_half_depth_mm", "base_flare_length_mm",
        "base_cup_mm", "cortical_shaft_mm", "cortical_head_mm", "subchondral_mm",
        "mu_cortical", "texture_scale_mm", "texture_anisotropy", "soft_half_width_mm", "soft_depth_ratio",
    ]
    for name in positive:
        if not getattr(params, name) > 0:
            raise InputError(f"phantom parameter {name} must be > 0, got {getattr(params, name)}")
    for name in ("mu_trabecular", "mu_soft", "texture_contrast", "soft_variation", "background_attenuation",
                 "base_concavity_mm", "soft_taper_per_mm"):
        if getattr(params, name) < 0:
            raise InputError(f"phantom parameter {name} must be >= 0, got {getattr(params, name)}")
    for name in ("head_squareness", "base_squareness"):
        if not 0 <= getattr(params, name) < 1:
            raise InputError(f"phantom parameter {name} must be in [0, 1), got {getattr(params, name)}")
    # The shell must leave a non-empty interior, and the shaft must fit inside the head/base so
    # that their union is continuous where the shaft ends.
    if params.cortical_shaft_mm >= min(params.head_shaft_half_width_mm, params.head_shaft_half_depth_mm,
                                       params.base_shaft_half_width_mm, params.base_shaft_half_depth_mm):
        raise InputError("cortical_shaft_mm must be thinner than every shaft half-width and half-depth")
    head_min = min(params.head_half_width_mm, params.head_half_depth_mm,
                   params.base_half_width_mm, params.base_half_depth_mm)
    if params.cortical_head_mm >= head_min:
        raise InputError("cortical_head_mm must be thinner than the head and base half-sizes")
    if params.subchondral_mm >= min(params.head_half_length_mm, params.base_half_length_mm):
        raise InputError("subchondral_mm must be shorter than the head and base half-lengths")
    if not 0 < params.base_cup_width <= 1:
        raise InputError(f"phantom parameter base_cup_width must be in (0, 1], got {params.base_cup_width}")
    # The cup (with its subchondral plate) must end above the block centre, where the shaft starts.
    if params.base_half_length_mm <= params.base_cup_mm + params.subchondral_mm + params.base_concavity_mm:
        raise InputError("base too short for its cup: need base_half_length_mm > "
                         "base_cup_mm + subchondral_mm + base_concavity_mm")


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

#: Proportions per joint type: (head half-width range mm, shaft/head width ratio range,
#: head length/width ratio range, base/head width ratio range). Calibrated so that at the nominal
#: 0.175 mm/px a 256 px crop frames the joint like the real finger-joint crops do. Those crops
#: were resampled (a 30 mm wide phalanx is not anatomical), so these "millimetres" are about 2x
#: adult anatomy: millimetres at the project's nominal spacing, the same scale on which JSW and
#: JSN of the real crops are reported.
_PROPORTIONS = {
    "mcp": {"head_w": (16.5, 19.0), "shaft_ratio": (0.62, 0.76), "head_len": (0.70, 0.90), "base_ratio": (0.95, 1.08)},
    "pip": {"head_w": (15.0, 17.5), "shaft_ratio": (0.60, 0.74), "head_len": (0.65, 0.85), "base_ratio": (0.98, 1.12)},
    "dip": {"head_w": (13.0, 16.0), "shaft_ratio": (0.58, 0.72), "head_len": (0.60, 0.80), "base_ratio": (1.0, 1.15)},
}


@dataclass(frozen=True)
class PhantomRanges:
    """Ranges (low, high) of the non-anatomical draws of :func:`sample_phantom_params`.

    Attributes:
        jsw_mm: joint space width range for gaps, mm.
        p_touching: probability of touching bones (jsw = 0 exactly).
        p_overlap: probability of overlapping bones.
        overlap_mm: range of the overlap depth (jsw = -overlap), mm.
        joint_axis_deg: in-plane rotation range, degrees.
        tilt_deg: per-bone tilt range about its joint-surface point, degrees.
        center_offset_frac: joint-centre offset from the crop centre, fraction of the crop size.
    """

    jsw_mm: tuple[float, float] = (0.0, 3.0)
    p_touching: float = 0.05
    p_overlap: float = 0.08
    overlap_mm: tuple[float, float] = (0.0, 0.6)
    joint_axis_deg: tuple[float, float] = (-8.0, 8.0)
    tilt_deg: tuple[float, float] = (-4.0, 4.0)
    center_offset_frac: tuple[float, float] = (-0.06, 0.06)


def sample_phantom_params(
    rng: np.random.Generator | int, ranges: PhantomRanges = PhantomRanges(), **overrides: Any
) -> PhantomParams:
    """Draw one random phantom.

    The same draws are consumed whatever the overrides, so overriding one field leaves the other
    draws unchanged. ``joint_type``, ``size_px`` and ``pixel_spacing_mm`` overrides are used while
    drawing (anatomy follows the joint type; the joint centre is placed in the crop); every other
    override simply replaces the drawn value. ``joint_type="random"`` draws the type.

    Args:
        rng: the generator to draw from (use one per sample, e.g. from
            ``SeedSequence([seed, index])``), or a seed for one.
        ranges: ranges of the non-anatomical draws.
        **overrides: fixed values for any :class:`PhantomParams` field.

    Returns:
        The drawn parameters.

    Raises:
        InputError: an override names no field or makes the parameters inconsistent.
    """
    known = {f.name for f in fields(PhantomParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown phantom parameter(s): {', '.join(unknown)}")
    rng = np.random.default_rng(rng)  # a Generator comes back as it is
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731  (one short alias keeps the table readable)

    drawn_type = JOINT_TYPES[int(rng.integers(0, len(JOINT_TYPES)))]
    joint_type = overrides.get("joint_type", "random")
    joint_type = drawn_type if joint_type in (None, "random") else str(joint_type)
    if joint_type not in JOINT_TYPES:
        raise InputError(f"joint_type must be one of {', '.join(JOINT_TYPES)} or random, got {joint_type!r}")
    size_px = int(overrides.get("size_px", PhantomParams.size_px))
    spacing = float(overrides.get("pixel_spacing_mm", PhantomParams.pixel_spacing_mm))
    prop = _PROPORTIONS[joint_type]

    # Joint space: a gap most of the time, sometimes touching or overlapping bones.
    kind = rng.uniform()
    gap = u(*ranges.jsw_mm)
    overlap = u(*ranges.overlap_mm)
    if kind < ranges.p_touching:
        jsw = 0.0
    elif kind < ranges.p_touching + ranges.p_overlap:
        jsw = -overlap
    else:
        jsw = gap

    head_w = u(*prop["head_w"])
    head_d = head_w * u(0.62, 0.76)
    base_w = head_w * u(*prop["base_ratio"])
    base_d = base_w * u(0.55, 0.68)
    params = dict(
        joint_type=joint_type,
        size_px=size_px,
        pixel_spacing_mm=spacing,
        center_x_px=(size_px - 1) / 2.0 + size_px * u(*ranges.center_offset_frac),
        center_y_px=(size_px - 1) / 2.0 + size_px * (u(*ranges.center_offset_frac) - 0.02),
        joint_axis_deg=u(*ranges.joint_axis_deg),
        jsw_mm=jsw,
        head_bone="lower",
        upper_tilt_deg=u(*ranges.tilt_deg),
        lower_tilt_deg=u(*ranges.tilt_deg),
        head_shaft_half_width_mm=head_w * u(*prop["shaft_ratio"]),
        head_shaft_half_depth_mm=head_d * u(0.70, 0.82),
        head_half_width_mm=head_w,
        head_half_length_mm=head_w * u(*prop["head_len"]),
        head_half_depth_mm=head_d,
        head_squareness=u(0.0, 0.3),
        head_flare_length_mm=head_w * u(0.8, 1.2),
        base_shaft_half_width_mm=base_w * u(0.42, 0.55),
        base_shaft_half_depth_mm=base_d * u(0.60, 0.72),
        base_half_width_mm=base_w,
        base_half_length_mm=base_w * u(0.55, 0.70),
        base_half_depth_mm=base_d,
        base_squareness=u(0.2, 0.7),
        base_flare_length_mm=base_w * u(0.55, 0.85),
        base_concavity_mm=base_w * u(0.02, 0.06),
        base_cup_mm=u(1.2, 2.2),
        base_cup_width=u(0.45, 0.75),
        cortical_shaft_mm=u(0.9, 1.6),
        cortical_head_mm=u(0.7, 1.1),
        subchondral_mm=u(1.0, 1.6),
        mu_cortical=u(0.17, 0.24),
        mu_trabecular=u(0.005, 0.009),
        texture_scale_mm=u(1.6, 2.6),
        texture_contrast=u(1.3, 1.9),
        texture_anisotropy=u(1.2, 2.0),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        soft_half_width_mm=head_w * u(2.4, 3.2),
        soft_depth_ratio=u(0.6, 0.8),
        soft_offset_mm=u(-1.5, 1.5),
        soft_taper_per_mm=u(0.0, 0.006),
        mu_soft=u(0.0035, 0.0065),
        soft_variation=u(0.02, 0.08),
        background_attenuation=u(0.0, 0.05),
    )
    params.update({k: v for k, v in overrides.items() if k != "joint_type"})
    return PhantomParams(**params)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _geometry(params: PhantomParams, bone: str) -> str:
    """``"head"`` or ``"base"``: the geometry of the upper or lower bone."""
    return "head" if bone == params.head_bone else "base"


def _bone_origin_and_angle(params: PhantomParams, bone: str) -> tuple[np.ndarray, float]:
    """Image position (px) of a bone's joint point on the axis, and the angle of its frame.

    In its frame the head geometry lies at ``t < 0`` (apex at ``t = 0``) and the base geometry at
    ``t > 0``; a head on the lower bone (or a base on the upper one) is turned by 180 degrees.
    """
    centre = np.array([params.center_x_px, params.center_y_px])
    half_gap_px = 0.5 * params.jsw_mm / params.pixel_spacing_mm
    axis = axis_vector(params.joint_axis_deg)
    turn = 0.0 if params.head_bone == "upper" else 180.0
    if bone == "upper":
        return centre - half_gap_px * axis, params.joint_axis_deg + params.upper_tilt_deg + turn
    return centre + half_gap_px * axis, params.joint_axis_deg + params.lower_tilt_deg + turn


def _frame_map(origin_xy: np.ndarray, angle_deg: float, spacing_mm: float, pose: Similarity | None) -> np.ndarray:
    """2x3 affine ``A`` mapping image pixels ``(x, y, 1)`` of the posed layer to frame mm ``(s, t)``.

    The frame's ``s`` axis is ``R(angle) (1, 0)`` and its ``t`` axis ``R(angle) (0, 1)``; a pose
    ``T`` is undone first (``q = T^{-1} p``) so the layer is the baseline moved by ``T``.
    """
    a = math.radians(angle_deg)
    rot_t = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # R(angle)^T
    lin = rot_t * spacing_mm
    offset = -lin @ origin_xy
    frame = np.hstack([lin, offset[:, None]])
    if pose is None:
        return frame
    inv = pose.inverse().matrix()
    return np.hstack([frame[:, :2] @ inv[:, :2], (frame[:, :2] @ inv[:, 2] + frame[:, 2])[:, None]])


def _bbox_of_frame_box(frame_map: np.ndarray, s_range: tuple[float, float], t_range: tuple[float, float],
                       size_px: int) -> tuple[int, int, int, int] | None:
    """Pixel bounding box ``(x0, x1, y0, y1)`` (exclusive ends) of a frame rectangle, clipped."""
    inv = np.linalg.inv(np.vstack([frame_map, [0.0, 0.0, 1.0]]))
    corners = np.array([[s, t, 1.0] for s in s_range for t in t_range])
    xy = corners @ inv[:2].T
    x0 = max(int(math.floor(xy[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(xy[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(xy[:, 0].max())) + 2, size_px)
    y1 = min(int(math.ceil(xy[:, 1].max())) + 2, size_px)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, x1, y0, y1


def _frame_coords(frame_map: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frame coordinates ``(s, t)`` (float32, mm) of the pixel centres inside ``box``.

    The row and column terms are computed in float64 and only their sum is rounded to float32
    (about 1e-5 px at crop scale).
    """
    x0, x1, y0, y1 = box
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)
    coords = []
    for row in frame_map:
        col_term = (row[0] * xs + row[2]).astype(np.float32)
        row_term = (row[1] * ys).astype(np.float32)
        coords.append(np.add.outer(row_term, col_term))
    return coords[0], coords[1]


def _rounded_sqrt(q: np.ndarray, grad: np.ndarray | float) -> np.ndarray:
    """``sqrt(q)`` with the edge of its support rounded over ``_EDGE_MM``.

    ``q`` is an implicit function of a solid's outline (``q > 0`` inside) and ``grad`` its gradient
    magnitude per mm, so ``q / grad`` is the distance to the outline. The result is
    ``sqrt(q + e) - sqrt(e)`` with ``e = _EDGE_MM * grad``: zero outside (the support is
    unchanged), ``sqrt(q)`` deep inside (where ``grad -> 0`` or ``q >> e``), and near the outline a
    rise over about ``_EDGE_MM`` in every direction instead of the infinite slope of a sqrt.

    Why: the chord of a big solid jumps by millimetres within a fraction of a pixel of its edge,
    so a point-sampled edge aliases and a sub-pixel move of the analytic object would not look
    like a sub-pixel shift of the pixels. The rounding acts as the pre-sampling unsharpness of a
    real detector. (Any non-negative ``h`` is the chord of the solid ``|z| <= h / 2``, so the layer
    is still an exact line integral.)
    """
    eps = np.float32(_EDGE_MM) * grad
    out = np.maximum(q, np.float32(0.0))
    out += eps
    np.sqrt(out, out=out)
    # Outside (q <= 0) this is sqrt(eps) - sqrt(eps) = 0 exactly, and sqrt is monotonic in floating
    # point, so the result is never negative.
    out -= np.sqrt(eps)
    return out


def _cap_chord(s: np.ndarray, t: np.ndarray, half_w: float, half_l: float, half_d: float,
               squareness: float) -> np.ndarray:
    """Chord ``2 d sqrt(q)`` through a rounded box, ``q = 1 - x^2 - y^2 + c x^2 y^2`` (x = s/w, y = t/l).

    ``c = 0`` is an ellipsoid; as ``c -> 1`` the outline tends to the rectangle
    ``(1 - x^2)(1 - y^2) = 0``. Polynomial, so cheaper than a superellipsoid; on the bone axis
    (``x = 0``) it is exactly the ellipsoid's ``1 - y^2``.
    """
    x = s * np.float32(1.0 / half_w)
    y = t * np.float32(1.0 / half_l)
    x2, y2 = np.square(x), np.square(y)
    c = np.float32(squareness)
    # |grad q| per mm: dq/ds = -2 x (1 - c y^2) / w, dq/dt = -2 y (1 - c x^2) / l.
    gx = (np.float32(1.0) - c * y2) * x * np.float32(2.0 / half_w)
    gy = (np.float32(1.0) - c * x2) * y * np.float32(2.0 / half_l)
    grad = np.hypot(gx, gy)
    q = c * x2 * y2
    q += np.float32(1.0)
    q -= x2
    q -= y2
    chord = _rounded_sqrt(q, grad)
    chord *= np.float32(2.0 * half_d)
    return chord


def _shaft_chords(s: np.ndarray, dist: np.ndarray, p: PhantomParams, shaft_w: float, shaft_d: float,
                  end_w: float, end_d: float, flare_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Outer and inner chords through an elliptical shaft with a cortical shell.

    The half-axes flare from ``(shaft_w, shaft_d)`` far from the joint to ``(end_w, end_d)`` at the
    shaft's end (a Gaussian of ``dist / flare_mm``); the cortex thins along the same profile from
    ``cortical_shaft_mm`` to ``cortical_head_mm``. ``dist`` >= 0 is the distance from the shaft's
    end into the shaft; there is no shaft where it is negative.
    """
    flare = np.square(dist * np.float32(1.0 / flare_mm))
    np.negative(flare, out=flare)
    np.exp(flare, out=flare)
    half_w = np.float32(shaft_w) + np.float32(end_w - shaft_w) * flare
    half_d = np.float32(shaft_d) + np.float32(end_d - shaft_d) * flare
    shell = np.float32(p.cortical_shaft_mm) + np.float32(p.cortical_head_mm - p.cortical_shaft_mm) * flare
    beyond_end = dist < 0
    chords = []
    for w, d in ((half_w, half_d), (half_w - shell, half_d - shell)):
        ratio = s / w
        grad = np.abs(ratio)
        grad *= np.float32(2.0) / w
        q = np.square(ratio)
        np.subtract(np.float32(1.0), q, out=q)
        np.copyto(q, np.float32(0.0), where=beyond_end)  # cheaper than boolean indexing
        chord = _rounded_sqrt(q, grad)
        chord *= np.float32(2.0) * d
        chords.append(chord)
    return chords[0], chords[1]


def _shaft_chords_on(region: tuple[slice, slice] | None, s: np.ndarray, dist: np.ndarray, p: PhantomParams,
                     shaft_w: float, shaft_d: float, end_w: float, end_d: float, flare_mm: float,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_shaft_chords` evaluated only on ``region`` (slices of the bone box), zero elsewhere.

    ``region`` covers every pixel where the shaft exists (``dist >= 0``, conservative box), so the
    result equals the full evaluation exactly: outside it the chords are 0 anyway.
    """
    outer = np.zeros_like(s)
    inner = np.zeros_like(s)
    if region is not None:
        outer[region], inner[region] = _shaft_chords(s[region], dist[region], p, shaft_w, shaft_d,
                                                     end_w, end_d, flare_mm)
    return outer, inner


def _reach_mm(p: PhantomParams) -> float:
    """Distance from a bone's joint point that covers the crop diagonal plus room for poses, mm."""
    return 1.5 * p.size_px * p.pixel_spacing_mm


def _bone_extent(p: PhantomParams, geometry: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Frame rectangle ``(s_range, t_range)`` in mm that contains the bone's part within reach."""
    reach_mm = _reach_mm(p)
    if geometry == "head":
        half_w = max(p.head_half_width_mm, p.head_shaft_half_width_mm)
        return (-half_w, half_w), (-reach_mm, 0.0)
    half_w = max(p.base_half_width_mm, p.base_shaft_half_width_mm)
    return (-half_w, half_w), (-_base_onset_mm(p) - 0.1, reach_mm)


def _plane_waves(p: PhantomParams, stream: int, n_waves: int, scale_mm: float, anisotropy: float,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random wave vectors (rad/mm, ``(K, 2)`` over ``(s, t)``) and phases of a band-pass field.

    Wavelengths spread log-normally around ``scale_mm``; orientations cluster around the ``s``
    direction (crests along the bone axis ``t``) with a spread that shrinks with ``anisotropy``,
    plus a uniform third so that the pattern also has transverse struts.
    """
    return _plane_waves_of_seed(int(p.texture_seed), stream, n_waves, float(scale_mm), float(anisotropy))


@functools.lru_cache(maxsize=64)
def _plane_waves_of_seed(seed: int, stream: int, n_waves: int, scale_mm: float, anisotropy: float,
                         ) -> tuple[np.ndarray, np.ndarray]:
    # Cached: a pair renders the same phantom twice (baseline and follow-up), and building a
    # SeedSequence generator costs as much as a small layer. The arrays are made read-only.
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    wavelength = scale_mm * np.exp(rng.normal(0.0, 0.35, n_waves))
    along = rng.normal(0.0, 0.9 / anisotropy, n_waves)
    anywhere = rng.uniform(-np.pi / 2, np.pi / 2, n_waves)
    theta = np.where(rng.uniform(size=n_waves) < 0.33, anywhere, along)
    k = (2 * np.pi / wavelength)[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    phase = rng.uniform(0.0, 2 * np.pi, n_waves)
    k.setflags(write=False)
    phase.setflags(write=False)
    return k, phase


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 matrix product through OpenCV instead of numpy's BLAS.

    Why: numpy's OpenBLAS runs these small products (256 x 64 x 256) on all cores and its idle
    threads then spin, which made a render ~10x slower (80-110 ms instead of 9 ms) in any process
    that does not pin BLAS to one thread, on a loaded machine. cv2.gemm is as fast single-threaded
    and its result does not depend on the thread count (checked bit for bit), so bytes stay
    the same for any number of workers.
    """
    return cv2.gemm(a, b, 1.0, None, 0.0)


def _wave_field(frame: np.ndarray, box: tuple[int, int, int, int], k: np.ndarray, phase: np.ndarray,
                gradient: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``n = sqrt(2/K) sum_j cos(k_j . (s, t) + phase_j)`` at the pixel centres in ``box`` (float32).

    The frame coordinates are affine in the pixel ``(x, y)``, so every wave factorises into a row
    and a column phasor and the whole sum is a few small matrix products: exact at any point (so it
    moves exactly with a pose) and cheap.

    Returns:
        ``(n, |grad n|)`` with the gradient magnitude in 1/mm over ``(s, t)`` when ``gradient``,
        else ``(n, None)``.
    """
    x0, x1, y0, y1 = box
    k_xy = k @ frame[:, :2]  # rad per pixel along x and y, (K, 2)
    k_0 = k @ frame[:, 2] + phase
    ang_y = np.outer(np.arange(y0, y1, dtype=np.float64), k_xy[:, 1]) + k_0  # (H, K)
    ang_x = np.outer(k_xy[:, 0], np.arange(x0, x1, dtype=np.float64))  # (K, W)
    amplitude = math.sqrt(2.0 / len(phase))
    # cos(a + b) = cos a cos b - sin a sin b: one product of [cos_y, sin_y] (H, 2K) with
    # amplitude * [cos_x; -sin_x] (2K, W).
    rows = np.hstack([np.cos(ang_y), np.sin(ang_y)]).astype(np.float32)
    cos_x, sin_x = np.cos(ang_x), np.sin(ang_x)
    field = _matmul(rows, (amplitude * np.vstack([cos_x, -sin_x])).astype(np.float32))
    if not gradient:
        return field, None
    # d/d(s,t) cos(k . x + phase) = -k sin(...), and sin(a + b) = sin a cos b + cos a sin b:
    # the products with [sin_x; cos_x] weighted by each component of k give the gradient.
    grad_sq = None
    for component in (0, 1):
        weight = (k[:, component] * amplitude)[:, None]
        d = _matmul(rows, np.vstack([weight * sin_x, weight * cos_x]).astype(np.float32))
        np.square(d, out=d)
        grad_sq = d if grad_sq is None else np.add(grad_sq, d, out=grad_sq)
    return field, np.sqrt(grad_sq, out=grad_sq)


def _trabecular_pattern(p: PhantomParams, bone: str, frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """About zero-mean, unit-variance trabecular modulation of a bone on ``box``.

    A band-pass random field ``n`` (a sum of plane waves in bone-local mm) is mapped pointwise to
    ``exp(-(n / (w |grad n|))^2)``: bright within ``w`` mm of the zero contours of ``n``, a closed
    network of curved lines of constant width, elongated along the bone like trabeculae. A share
    of ``n`` itself is added so that the marrow spaces vary too. Everything is a pointwise
    function of analytic fields of the bone-local coordinates, so the texture moves exactly with
    the bone; the lines are kept about a pixel wide so that they do not alias.
    """
    k, phase = _plane_waves(p, 0 if bone == "upper" else 1, _N_WAVES, p.texture_scale_mm, p.texture_anisotropy)
    field, grad = _wave_field(frame, box, k, phase, gradient=True)
    # A floor on the gradient (a fraction of its typical value 2 pi / scale) keeps n / |grad n|
    # smooth near the field's critical points, where two zero contours can pinch together.
    floor = np.float32(_GRADIENT_FLOOR * 2.0 * math.pi / p.texture_scale_mm)
    grad = np.sqrt(np.square(grad) + floor * floor)
    grad *= np.float32(_LINE_HALF_WIDTH_MM)
    lines = np.exp(-np.square(field / grad))
    lines -= np.float32(_LINE_MEAN)
    lines *= np.float32(_LINE_SHARE / _LINE_STD)
    lines += np.float32(1.0 - _LINE_SHARE) * field
    return lines


def _sub_box(frame: np.ndarray, s_range: tuple[float, float], t_range: tuple[float, float],
             box: tuple[int, int, int, int]) -> tuple[slice, slice] | None:
    """Slices into the arrays of ``box`` that cover a smaller frame rectangle."""
    inner = _bbox_of_frame_box(frame, s_range, t_range, 1 << 30)
    if inner is None:
        return None
    x0, x1, y0, y1 = box
    ix0, ix1 = max(inner[0], x0) - x0, min(inner[1], x1) - x0
    iy0, iy1 = max(inner[2], y0) - y0, min(inner[3], y1) - y0
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return slice(iy0, iy1), slice(ix0, ix1)


def _head_chords(s: np.ndarray, t: np.ndarray, p: PhantomParams, frame: np.ndarray,
                 box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Outer and inner chords (mm) of the head bone in its frame (apex at t = 0, bone at t < 0)."""
    hl, hw = p.head_half_length_mm, p.head_half_width_mm
    tc = t + np.float32(hl)  # relative to the head centre
    dist = -tc  # into the shaft, from the head centre
    end_w, end_d = 0.97 * hw, 0.97 * p.head_half_depth_mm
    # The shaft only exists where dist >= 0 (t <= -hl): evaluate it there only.
    shaft = _sub_box(frame, (-hw, hw), (-_reach_mm(p), -hl), box)
    outer, inner = _shaft_chords_on(shaft, s, dist, p, p.head_shaft_half_width_mm, p.head_shaft_half_depth_mm,
                                    end_w, end_d, p.head_flare_length_mm)
    # The head only exists within one half-length of its centre: evaluate it there only.
    head = _sub_box(frame, (-hw, hw), (-2 * hl, 0.0), box)
    if head is not None:
        sh, th = s[head], tc[head]
        ch = p.cortical_head_mm
        head_o = _cap_chord(sh, th, hw, hl, p.head_half_depth_mm, p.head_squareness)
        head_i = _cap_chord(sh, th, hw - ch, hl - p.subchondral_mm, p.head_half_depth_mm - ch,
                            p.head_squareness)
        np.maximum(outer[head], head_o, out=outer[head])
        np.maximum(inner[head], head_i, out=inner[head])
    return outer, inner


def _cup_profile(s: np.ndarray, depth: np.ndarray, p: PhantomParams, deeper_mm: float) -> np.ndarray:
    """Chord (mm) of the articular cavity at lateral ``s`` and depth ``depth`` below the block top.

    The cavity is ``depth < g(s) + deeper_mm - k z^2`` with ``g(s) = cup - c (s/w)^2`` (the cup
    bottom rises towards the sides) and ``k = cup / (f d)^2``, so its chord is
    ``2 sqrt((g + deeper - depth) / k)`` (edge rounded like every outline).
    """
    rise = np.float32(p.base_cup_mm + deeper_mm) - depth
    rise -= np.float32(p.base_concavity_mm) * np.square(s * np.float32(1.0 / p.base_half_width_mm))
    scale = np.float32(2.0 * p.base_cup_width * p.base_half_depth_mm / math.sqrt(p.base_cup_mm))
    chord = _rounded_sqrt(rise, np.float32(1.0))
    chord *= scale
    return chord


def _base_onset_mm(p: PhantomParams) -> float:
    """Depth below the block top where the base bone begins on its axis (the lips' reach).

    On the axis the bone chord is ``block - cavity`` (both centred on ``z = 0``); it turns
    positive where the two chords cross, found here in float64 with the same formulas the
    renderer uses, so the rendered support starts at the recorded joint point.
    """
    return _base_onset_of(p.base_half_length_mm, p.base_half_depth_mm, p.base_cup_mm, p.base_cup_width)


@functools.lru_cache(maxsize=64)
def _base_onset_of(bl: float, d: float, cup_mm: float, cup_width: float) -> float:
    # cached: the root is needed for every render of the same phantom (and by its extent)
    from scipy.optimize import brentq  # imported here: scipy.optimize costs ~0.2 s at worker start-up

    def bone_chord(depth: float) -> float:
        y = (depth - bl) / bl
        q, grad = 1.0 - y * y, 2.0 * abs(y) / bl
        block = 2.0 * d * (math.sqrt(max(q, 0.0) + _EDGE_MM * grad) - math.sqrt(_EDGE_MM * grad))
        rise = cup_mm - depth
        cavity = (2.0 * cup_width * d / math.sqrt(cup_mm)) * (
            math.sqrt(max(rise, 0.0) + _EDGE_MM) - math.sqrt(_EDGE_MM))
        return block - cavity

    return float(brentq(bone_chord, 0.0, cup_mm, xtol=1e-12, rtol=4 * np.finfo(float).eps))


def _base_chords(s: np.ndarray, t: np.ndarray, p: PhantomParams, frame: np.ndarray,
                 box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Outer and inner chords (mm) of the base bone in its frame (joint point at t = 0, bone at t > 0).

    The base is a rounded block minus a cup-shaped cavity centred on ``z = 0``: the chord is
    ``max(block - cavity, 0)``. The cavity's volar and dorsal walls (the lips) reach beyond the
    cavity bottom, so they project over the neighbouring head as thin cortical crescents, and the
    bone starts on the axis where block and cavity chords cross (:func:`_base_onset_mm`).
    """
    bl, bw = p.base_half_length_mm, p.base_half_width_mm
    onset = _base_onset_mm(p)
    depth = t + np.float32(onset)  # depth below the block top
    tc = depth - np.float32(bl)  # relative to the block centre
    end_w, end_d = 0.97 * bw, 0.97 * p.base_half_depth_mm
    # The shaft only exists where tc >= 0 (t >= bl - onset): evaluate it there only.
    shaft = _sub_box(frame, (-bw, bw), (bl - onset, _reach_mm(p)), box)
    outer, inner = _shaft_chords_on(shaft, s, tc, p, p.base_shaft_half_width_mm, p.base_shaft_half_depth_mm,
                                    end_w, end_d, p.base_flare_length_mm)
    base = _sub_box(frame, (-bw, bw), (-onset, 2 * bl - onset), box)
    if base is not None:
        sb, tb, db = s[base], tc[base], depth[base]
        ch = p.cortical_head_mm
        block_o = _cap_chord(sb, tb, bw, bl, p.base_half_depth_mm, p.base_squareness)
        block_i = _cap_chord(sb, tb, bw - ch, bl - ch, p.base_half_depth_mm - ch, p.base_squareness)
        cup_o = _cup_profile(sb, db, p, 0.0)
        cup_i = _cup_profile(sb, db, p, p.subchondral_mm)
        block_o -= cup_o
        block_i -= cup_i
        np.maximum(outer[base], block_o, out=outer[base])
        np.maximum(inner[base], block_i, out=inner[base])
    return outer, inner


def _render_bone(p: PhantomParams, bone: str, pose: Similarity | None) -> np.ndarray:
    """The bone layer (float32 attenuation) on the full crop."""
    layer = np.zeros((p.size_px, p.size_px), dtype=np.float32)
    origin, angle = _bone_origin_and_angle(p, bone)
    frame = _frame_map(origin, angle, p.pixel_spacing_mm, pose)
    geometry = _geometry(p, bone)
    s_range, t_range = _bone_extent(p, geometry)
    box = _bbox_of_frame_box(frame, s_range, t_range, p.size_px)
    if box is None:
        return layer
    s, t = _frame_coords(frame, box)
    outer, inner = (_head_chords if geometry == "head" else _base_chords)(s, t, p, frame, box)
    x0, x1, y0, y1 = box
    shell = np.maximum(outer - inner, np.float32(0.0))  # the rounded inner edge may poke out by an ulp
    values = np.float32(p.mu_cortical) * shell
    # The texture only matters where the trabecular chord is positive: evaluate it on that box.
    rows = np.flatnonzero(inner.any(axis=1))
    cols = np.flatnonzero(inner.any(axis=0))
    if rows.size == 0:
        layer[y0:y1, x0:x1] = values
        return layer
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    inner = inner[r0:r1, c0:c1]
    pattern = _trabecular_pattern(p, bone, frame, (x0 + c0, x0 + c1, y0 + r0, y0 + r1))
    # Trabecular density 1 + c P made positive by a smooth ramp (x + sqrt(x^2 + r^2)) / 2, which is
    # x for x >> r and r^2 / (4 |x|) > 0 for x << -r: no kinks, so no aliasing from clipping.
    density = pattern
    density *= np.float32(p.texture_contrast)
    density += np.float32(1.0)
    ramp = np.square(density)
    ramp += np.float32(_DENSITY_RAMP**2)
    np.sqrt(ramp, out=ramp)
    density += ramp
    density *= np.float32(0.5 * p.mu_trabecular)
    density *= inner
    values[r0:r1, c0:c1] += density
    layer[y0:y1, x0:x1] = values
    return layer


def _render_soft(p: PhantomParams, pose: Similarity | None) -> np.ndarray:
    """The soft-tissue layer: background plus an elliptical finger cylinder along the joint axis."""
    frame = _frame_map(np.array([p.center_x_px, p.center_y_px]), p.joint_axis_deg, p.pixel_spacing_mm, pose)
    box = (0, p.size_px, 0, p.size_px)
    u, v = _frame_coords(frame, box)
    u -= np.float32(p.soft_offset_mm)
    # The finger narrows linearly towards its tip: up the image when the head is on the lower bone.
    distal_sign = -1.0 if p.head_bone == "lower" else 1.0
    half_w = v * np.float32(-p.soft_taper_per_mm * distal_sign * p.soft_half_width_mm)
    half_w += np.float32(p.soft_half_width_mm)
    np.maximum(half_w, np.float32(0.3 * p.soft_half_width_mm), out=half_w)
    ratio = u
    ratio /= half_w
    np.square(ratio, out=ratio)
    np.subtract(np.float32(1.0), ratio, out=ratio)
    # The skin line is mostly outside the crop: round it with the gradient at the outline,
    # 2 / half-width, taken constant (the rounding only matters near the outline).
    chord = _rounded_sqrt(ratio, np.float32(2.0 / p.soft_half_width_mm))
    chord *= half_w
    # Slow density variations (fat, skin folds): a few long plane waves in the joint frame.
    k, phase = _plane_waves(p, 2, 4, 40.0, 1.0)
    variation, _ = _wave_field(frame, box, k, phase)
    variation *= np.float32(p.soft_variation)
    variation += np.float32(1.0)
    chord *= variation
    chord *= np.float32(2.0 * p.soft_depth_ratio * p.mu_soft)
    chord += np.float32(p.background_attenuation)
    return chord


def render_phantom(
    params: PhantomParams,
    upper_pose: Similarity | None = None,
    lower_pose: Similarity | None = None,
    soft_pose: Similarity | None = None,
) -> JointLayers:
    """Render the exact attenuation layers of a phantom, optionally with each layer moved by a pose.

    Args:
        params: the phantom.
        upper_pose: baseline -> follow-up similarity (pixels, any centre) of the upper bone; None
            for the baseline position. The layer is ``L(T^{-1} p)``, texture included.
        lower_pose: the same for the lower bone.
        soft_pose: the same for the soft tissue (background included).

    Returns:
        :class:`JointLayers` with masks equal to the support of the bone layers (``layer > 0``),
        ``joint_center_xy``/``joint_axis_deg`` of the *baseline* geometry and ``metadata`` with
        ``source="phantom"``, ``phantom_params`` (the record), ``jsw_mm`` and the poses.
    """
    soft = _render_soft(params, soft_pose)
    upper = _render_bone(params, "upper", upper_pose)
    lower = _render_bone(params, "lower", lower_pose)
    if upper_pose is None and lower_pose is None:
        for name, layer in (("upper", upper), ("lower", lower)):
            if not layer.any():  # a pair of it failed later, vaguely
                x, y = params.joint_center_xy
                raise InputError(f"the phantom's {name} bone lies outside its {params.size_px} px picture (joint "
                                 f"centre ({x:.0f}, {y:.0f}) px, joint space {params.jsw_mm:g} mm, field "
                                 f"{params.size_px * params.pixel_spacing_mm:.1f} mm): check overrides of the "
                                 "joint's place and size, or frame more of it")
    poses = {name: (pose.to_dict() if pose is not None else None)
             for name, pose in (("upper", upper_pose), ("lower", lower_pose), ("soft", soft_pose))}
    metadata = {
        "source": "phantom",
        "phantom_params": params.to_dict(),
        "jsw_mm": float(params.jsw_mm),
        "jsw_px": float(params.jsw_mm / params.pixel_spacing_mm),
        "poses": poses,
    }
    return JointLayers(
        soft=soft,
        upper=upper,
        lower=lower,
        upper_mask=upper > 0,
        lower_mask=lower > 0,
        pixel_spacing_mm=params.pixel_spacing_mm,
        joint_center_xy=params.joint_center_xy,
        joint_axis_deg=params.joint_axis_deg,
        metadata=metadata,
    )


def render_with_poses(
    layers: JointLayers,
    upper_pose: Similarity | None = None,
    lower_pose: Similarity | None = None,
    soft_pose: Similarity | None = None,
) -> JointLayers:
    """Re-render the phantom that produced ``layers`` with poses (the sources' callable).

    Raises:
        InputError: ``layers`` did not come from :func:`render_phantom`.
    """
    record = layers.metadata.get("phantom_params") if layers.metadata else None
    if record is None:
        raise InputError("these layers carry no phantom_params: only phantoms can be re-rendered with poses")
    return render_phantom(PhantomParams.from_dict(record), upper_pose, lower_pose, soft_pose)
