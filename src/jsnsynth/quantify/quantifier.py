"""The bundled JSN quantifier: per-bone registration -> JSN progression with reliability.

Sign convention (DESIGN.md): JSN progression is the displacement of the upper bone relative to
the lower bone along the baseline joint axis (upper -> lower) at the joint centre, in pixels;
positive means narrowing. Because a follow-up is also repositioned and magnified as a whole,
the common (mean) similarity of the two bones is removed first:

    M = mean similarity (geometric-mean scale, mean angle, mean translation at the centre c)
    JSN = (M^-1 T_upper(c) - M^-1 T_lower(c)) . axis = (R(-theta_M) (t_upper - t_lower) / s_M) . axis

which for the dataset truth ``T_k = G o F_k`` is ``d cos(mean flexion)`` (contract 3).
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.picture import (
    content_box,
    fill_from_picture,
    find_fill,
    grown,
    looks_like_a_picture,
    two_values_only,
    without_fixed_pattern,
)
from jsnsynth.quantify import register as reg
from jsnsynth.quantify.reliability import (
    ReliabilityReport,
    assess_reliability,
    residual_maps,
)
from jsnsynth.quantify.warp import (
    params_from_similarity,
    sample_spline_values,
    similarity_from_params,
    spline_coefficients,
    spline_gradients,
)
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.io import strict_json_value
from jsnsynth.synth.layers import (
    DEFAULT_PIXEL_SPACING_MM,
    BonesNotStackedError,
    check_pixel_spacing,
    centroid_axis_deg,
    frame_coordinates,
    joint_axis_from_masks,
    joint_center_from_masks,
    joint_extent,
    mask_overlap_share,
)
from jsnsynth.synth.limits import MAX_MASK_OVERLAP, MAX_SIDE_PX, MIN_LONG_SIDE_PX, MIN_SIDE_PX

#: Version of the JSON record written by :meth:`JsnResult.to_dict` (bump on a key change).
RESULT_VERSION = "1.2"
#: Fewest pixels of a bone mask, and of the region registered for it: below this a fit has
#: nothing to hold on to (a bone crossed by a few tens of pixels gave 0.4 px errors, unflagged).
MIN_BONE_PX = 100
#: Intensity standard deviation below which an image has no structure to register.
MIN_CONTRAST = 1e-4
#: Share of each bone mask that must lie in the picture of a padded crop for the default joint
#: frame to be the picture's (``resolve_joint_frame``): a few pixels drawn into the padding are
#: strays; a mask mostly there says the box is not the picture.
MIN_MASK_IN_PICTURE = 0.9
#: Largest per-bone phase-correlation shift (px, on top of the global alignment) taken as the
#: bone's own on the reference crops, in proportion on finer ones (``register.limit_scale``):
#: repositioning, flexion and JSN change move a bone by a few pixels; a larger peak is another
#: structure's.
BONE_PEAK_MAX_PX = 8.0
#: Convergence threshold (px of that level) of the pyramid levels above full resolution: they
#: only start the next level, which needs nothing finer than a few hundredths of a pixel.
COARSE_LEVEL_TOLERANCE_PX = 0.01


#: Heap that glibc keeps instead of returning it to the system, and the size from which it maps
#: allocations separately (bytes); see :func:`keep_freed_heap`.
HEAP_RETAIN_BYTES = 32 * 1024 * 1024


@functools.cache
def keep_freed_heap() -> None:
    """Ask glibc to keep freed memory up to :data:`HEAP_RETAIN_BYTES` for reuse (once per process).

    A pair allocates thousands of numpy temporaries of 0.1-1 MB. With glibc's defaults each one is
    mapped and unmapped, or the heap top is trimmed and regrown, so every call page-faulted its
    buffers in afresh: about 20 % of a pair's CPU time was the kernel zeroing pages (300 000
    minor faults on 16 pairs; 19 000 with this), and pairs run about 15 % faster with it. It is
    a setting of the whole process (freed memory below 32 MB stays with it), so the library does
    not make it on its own: the ``quantify``, ``validate`` and ``validate-real`` commands and the
    benchmarks call it, and a Python program measuring many pairs may. No effect on other C
    libraries (musl, macOS, Windows).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_trim_threshold, HEAP_RETAIN_BYTES)
        libc.mallopt(m_mmap_threshold, HEAP_RETAIN_BYTES)
    except (OSError, AttributeError):  # not glibc (musl, ...): keep its defaults
        pass


@dataclass
class JsnResult:
    """JSN progression between a baseline and a follow-up, with everything needed to trust it.

    Attributes:
        jsn_px: JSN progression along the baseline joint axis, pixels, positive = narrowing.
        jsn_mm: ``jsn_px * pixel_spacing_mm``.
        pixel_spacing_mm: pixel size used for ``jsn_mm``.
        pixel_spacing_source: where the spacing came from ("dicom", "option", "nominal", ...).
        joint_center_xy: centre of the transforms and of the JSN measurement (baseline pixels).
        joint_axis_deg: baseline joint axis angle (0 = straight down).
        upper: upper-bone similarity baseline -> follow-up about the joint centre.
        lower: lower-bone similarity baseline -> follow-up about the joint centre.
        reliability: score in [0, 1]; 1 = residuals at the noise level, converged, well-posed.
        mismatch: True when the fit cannot be trusted (see ``flags``).
        flags: short reasons behind a low score or a mismatch.
        jsn_se_px: standard error of ``jsn_px`` from the full-resolution fit's matrices and the
            spatial autocovariance of its residual: image noise and what the model leaves
            unexplained between the visits (docs/quantify.md, *Reliability*).
        bones: per-bone diagnostics (iterations, convergence, residual RMS before/after, ...).
        timings_s: seconds spent per stage.
        residuals: per-bone residual maps ``{"upper_before", "upper_after", ...}`` (NaN outside
            the bone region); not part of :meth:`to_dict`.
        method: name of the method that produced the result.
    """

    jsn_px: float
    jsn_mm: float
    pixel_spacing_mm: float
    pixel_spacing_source: str
    joint_center_xy: tuple[float, float]
    joint_axis_deg: float
    upper: Similarity
    lower: Similarity
    reliability: float = 1.0
    mismatch: bool = False
    flags: list[str] = field(default_factory=list)
    jsn_se_px: float = float("nan")
    bones: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    method: str = "jsnsynth.register"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record with stable keys (documented in docs/quantify.md)."""

        def transform(t: Similarity) -> dict[str, float]:
            return {"scale": t.scale, "angle_deg": t.angle_deg, "dx": t.dx, "dy": t.dy}

        return {
            "version": RESULT_VERSION,
            "method": self.method,
            "jsn_px": strict_json_value(self.jsn_px),
            "jsn_mm": strict_json_value(self.jsn_mm),
            "jsn_se_px": strict_json_value(self.jsn_se_px),
            "jsn_se_mm": strict_json_value(self.jsn_se_px * self.pixel_spacing_mm),
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "pixel_spacing_source": self.pixel_spacing_source,
            "sign_convention": "positive = narrowing (upper bone moved toward the lower bone)",
            "joint_center_xy": [float(self.joint_center_xy[0]), float(self.joint_center_xy[1])],
            "joint_axis_deg": float(self.joint_axis_deg),
            "upper": transform(self.upper),
            "lower": transform(self.lower),
            "reliability": float(self.reliability),
            "mismatch": bool(self.mismatch),
            "flags": list(self.flags),
            "bones": strict_json_value(self.bones),
            "timings_s": {k: float(v) for k, v in self.timings_s.items()},
        }


def as_intensity(image: np.ndarray, name: str) -> np.ndarray:
    """Convert a uint8/uint16 image or a float image in ``[0, 1]`` to float32 intensity.

    Raises:
        InputError: not 2-D, too small or too large (:data:`~jsnsynth.synth.limits.MAX_SIDE_PX`),
            NaN, out of range or an unsupported dtype.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{name} must be a 2-D greyscale image, got shape {image.shape}")
    check_image_size(image.shape, name)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise InputError(f"{name} contains NaN or infinite values")
        if image.min() < -1e-6 or image.max() > 1 + 1e-6:
            raise InputError(f"{name}: float images must hold intensities in [0, 1]")
        # the rounding overshoots allowed are taken as the range's ends: a turn's bicubic
        # undershoot to -1e-7 beside a black fill at 0 had made the fill no longer the lowest value
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    raise InputError(f"{name} has unsupported pixel type {image.dtype} (uint8, uint16 or float in [0, 1])")


def check_image_size(shape: tuple[int, int], name: str) -> None:
    """Refuse an image smaller than :data:`~jsnsynth.synth.limits.MIN_SIDE_PX` or larger than
    :data:`~jsnsynth.synth.limits.MAX_SIDE_PX` a side.

    Raises:
        InputError: naming the image (``name``: its role, or its file and role) and its size.
    """
    if min(shape) < MIN_SIDE_PX:
        raise InputError(f"{name} is {shape[1]}x{shape[0]}, at least {MIN_SIDE_PX}x{MIN_SIDE_PX} needed")
    if max(shape) > MAX_SIDE_PX:
        raise InputError(f"{name} is {shape[1]}x{shape[0]}, at most {MAX_SIDE_PX} px a side: "
                         "quantify measures joint crops; crop the images around the joint")


def as_mask(mask: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Validate a bone mask: same size as the image and not empty; returns bool.

    A bool mask is taken as it is; any other is inside from halfway between its least and its
    largest value up: a drawn mask's two values (0/1, 0/255, a DICOM's -1024/1000), a label image
    of 0/1/2 (the union, as :func:`~jsnsynth.synth.io.read_mask` reads a mask file), and a mask
    that was blurred, resampled or stored as JPEG (weights, interpolation and ringing in between)
    alike. A float mask of 0..1 was inside wherever above 0 and the same mask times 255 from half
    its maximum: masks blurred by 3 px read the JSN 0.034 px apart, unflagged (an outside probe).
    """
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputError(f"{name} mask has shape {mask.shape}, image has {tuple(shape)}")
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.number) or np.issubdtype(mask.dtype, np.complexfloating):
            raise InputError(f"{name} mask must hold real numbers, got {mask.dtype}")
        if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
            raise InputError(f"{name} mask holds NaN or infinite values")
        if looks_like_a_picture(mask):  # an image given in a mask's place was half inside
            raise InputError(f"{name} mask is a picture, not a mask (most of its pixels are greys between its "
                             "least and largest value): give each bone's mask")
        low, high = float(mask.min()), float(mask.max())
        mask = mask >= (low + high) / 2 if high > low else np.full(mask.shape, high != 0)
    if not mask.any():
        raise InputError(f"{name} mask is empty")
    pixels = np.count_nonzero(mask)
    if pixels < MIN_BONE_PX:
        raise InputError(f"{name} mask has {pixels} pixels, at least {MIN_BONE_PX} needed")
    return mask


def real_number(value: Any) -> float:
    """``value`` as a float when it is a real number (a Python, numpy or torch scalar).

    Raises:
        TypeError: text (even text that reads as a number: "99" as a centre was read as (9, 9)),
            a boolean, a complex number, or anything ``float`` refuses.
    """
    # booleans, text and complex numbers, also as numpy or torch scalars (named by their dtype)
    dtype = str(getattr(value, "dtype", ""))
    if not isinstance(value, (str, bytes, bytearray, bool, complex)) and not any(
            word in dtype for word in ("bool", "complex", "str", "<U", "|S")):
        try:
            return float(value)
        except Exception:  # noqa: BLE001  (whatever a third-party scalar raises when it is not one)
            pass
    raise TypeError(f"not a real number: {value!r}")


def check_joint_frame(joint_center_xy: tuple[float, float] | None, joint_axis_deg: float | None,
                      shape: tuple[int, int]) -> tuple[tuple[float, float] | None, float | None]:
    """Reject a given joint centre that is not a point of the image, or an axis that is not a
    number; return both as floats (None where not given)."""
    if joint_center_xy is not None:
        try:
            if isinstance(joint_center_xy, (str, bytes, Mapping)):  # "99" was read as (9, 9)
                raise TypeError
            x, y = (real_number(v) for v in joint_center_xy)
        except (TypeError, ValueError):  # one number, three, or text
            raise InputError(f"joint centre must be two numbers (x, y), got {joint_center_xy!r}") from None
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= shape[1] - 1 and 0 <= y <= shape[0] - 1):
            raise InputError(f"joint centre ({x}, {y}) is not inside the {shape[1]}x{shape[0]} image")
        joint_center_xy = (x, y)
    if joint_axis_deg is not None:
        try:
            joint_axis_deg = real_number(joint_axis_deg)
        except (TypeError, ValueError):
            raise InputError(f"joint axis must be a finite angle in degrees, got {joint_axis_deg!r}") from None
        if not math.isfinite(joint_axis_deg):
            raise InputError(f"joint axis must be a finite angle in degrees, got {joint_axis_deg}")
    return joint_center_xy, joint_axis_deg


def check_contrast(image: np.ndarray, name: str, where: np.ndarray | None = None) -> None:
    """Reject an image that is constant where it is to be registered (blank, saturated, 1-bit):
    inside ``where``, or anywhere when it is None."""
    values = image if where is None else image[where]
    if float(np.std(values)) < MIN_CONTRAST:
        raise InputError(f"{name} is constant{'' if where is None else ' inside the bone masks'}: nothing to register")


def check_not_a_mask(image: np.ndarray, name: str) -> None:
    """Reject an image of two values only: a mask given where a radiograph belongs (swapped
    arguments) would otherwise be read as a picture padded to size, or registered as one."""
    if two_values_only(image):  # a constant one is check_contrast's
        # the values are not named: these are intensities in [0, 1], not the file's (0 and 255)
        raise InputError(f"{name} holds two values only, as a mask does: give the radiographs as the images and "
                         "the masks as masks")


def check_masks_apart(upper: np.ndarray, lower: np.ndarray, label: str) -> None:
    """Reject masks that overlap mostly: not two bones (two drawings of one, or one drawn twice)."""
    overlap = mask_overlap_share(upper, lower)
    if overlap > MAX_MASK_OVERLAP:
        # one label image given as both masks is the usual cause: every non-zero pixel is inside
        raise InputError(f"{label} upper and lower masks overlap by {overlap:.0%}: not two separate bones "
                         "(a label image given as both is read as the union of its labels: give each bone its own "
                         "mask)")


def check_bone_order(upper: np.ndarray, lower: np.ndarray, axis_deg: float, label: str) -> None:
    """Reject masks whose upper bone is not above the lower one along the joint axis."""
    axis = axis_vector(axis_deg)
    if float((reg.mask_centroid(lower) - reg.mask_centroid(upper)) @ axis) <= 0:
        raise InputError(f"{label} upper-bone mask is not above the lower-bone mask along the joint axis (swapped?)")


def check_mask_pair(upper: np.ndarray, lower: np.ndarray, axis_deg: float, label: str) -> None:
    """Reject masks that overlap mostly (:func:`check_masks_apart`) or whose upper bone is not
    above the lower one (:func:`check_bone_order`)."""
    check_masks_apart(upper, lower, label)
    check_bone_order(upper, lower, axis_deg, label)


def mean_similarity(upper: Similarity, lower: Similarity, cx: float, cy: float) -> Similarity:
    """Common motion of the two bones about ``(cx, cy)``: geometric-mean scale, mean angle and shift."""
    u, low = upper.about(cx, cy), lower.about(cx, cy)
    return Similarity(
        math.sqrt(u.scale * low.scale),
        0.5 * (u.angle_deg + low.angle_deg),
        0.5 * (u.dx + low.dx),
        0.5 * (u.dy + low.dy),
        cx,
        cy,
    )


def jsn_from_transforms(
    upper: Similarity, lower: Similarity, center_xy: tuple[float, float], axis_deg: float = 0.0
) -> float:
    """JSN progression (px, + = narrowing) from the two bones' baseline -> follow-up transforms.

    Removes the bones' common similarity and returns the relative displacement of the joint
    centre along the baseline axis (see the module docstring).
    """
    cx, cy = center_xy
    return _jsn_from_params(params_from_similarity(upper, cx, cy), params_from_similarity(lower, cx, cy), axis_deg)


def _jsn_from_params(pu: np.ndarray, pl: np.ndarray, axis_deg: float) -> float:
    """:func:`jsn_from_transforms` for ``(a, b, tx, ty)`` about the joint centre: the bones'
    relative translation, turned back by their mean angle and divided by their geometric-mean
    scale (the mean similarity), along the axis."""
    theta = 0.5 * (math.atan2(pu[1], pu[0]) + math.atan2(pl[1], pl[0]))
    scale = math.sqrt(math.hypot(pu[0], pu[1]) * math.hypot(pl[0], pl[1]))
    rx, ry = pu[2] - pl[2], pu[3] - pl[3]
    axis = axis_vector(axis_deg)
    back_x = (math.cos(theta) * rx + math.sin(theta) * ry) / scale
    back_y = (-math.sin(theta) * rx + math.cos(theta) * ry) / scale
    return float(back_x * axis[0] + back_y * axis[1])


def jsn_gradient(pu: np.ndarray, pl: np.ndarray, axis_deg: float) -> np.ndarray:
    """Numerical gradient of the JSN with respect to ``(a, b, tx, ty)`` of both bones (8 values),
    the parameters expressed about the joint centre."""
    grad = np.zeros(8)
    for i in range(8):
        step = 1e-6 if i % 4 < 2 else 1e-4
        hi_u, hi_l, lo_u, lo_l = pu.copy(), pl.copy(), pu.copy(), pl.copy()
        if i < 4:
            hi_u[i] += step
            lo_u[i] -= step
        else:
            hi_l[i - 4] += step
            lo_l[i - 4] -= step
        grad[i] = (_jsn_from_params(hi_u, hi_l, axis_deg) - _jsn_from_params(lo_u, lo_l, axis_deg)) / (2 * step)
    return grad


def picture_of(
    upper: np.ndarray, lower: np.ndarray, content: tuple[int, int, int, int] | None
) -> tuple[int, int, int, int] | None:
    """The picture of a crop padded to size: ``content`` (the images'
    :func:`~jsnsynth.picture.content_box`) when it is smaller than the array and each
    bone mask lies in it (:data:`MIN_MASK_IN_PICTURE`; a few pixels drawn into the padding are
    strays), else None: no padding, or a box that is not the picture."""
    if content is None or content == (0, upper.shape[0], 0, upper.shape[1]):
        return None
    top, bottom, left, right = content
    kept = min(np.count_nonzero(mask[top:bottom, left:right]) / max(np.count_nonzero(mask), 1) for mask in (upper, lower))
    return content if kept >= MIN_MASK_IN_PICTURE else None


#: A given joint axis may turn this far from the line between the bones' centroids.
MAX_AXIS_OFF_CENTROID_LINE_DEG = 45.0


def check_given_axis(upper: np.ndarray, lower: np.ndarray, joint_axis_deg: float) -> None:
    """Refuse a joint axis that does not run from the upper bone to the lower one.

    An axis measured from +x, or pointing from the lower bone to the upper, gives a plausible
    number of the wrong size or sign, unflagged (80 deg on an upright joint read -0.81 px against
    +0.41 px).

    Raises:
        InputError: the axis is more than :data:`MAX_AXIS_OFF_CENTROID_LINE_DEG` from the line
            between the masks' centroids.
    """
    line_deg = centroid_axis_deg(upper, lower)
    off_deg = abs((float(joint_axis_deg) - line_deg + 180.0) % 360.0 - 180.0)
    if off_deg > MAX_AXIS_OFF_CENTROID_LINE_DEG:
        raise InputError(
            f"joint axis {joint_axis_deg:g} deg is {off_deg:.0f} deg off the line from the upper bone to the lower "
            f"one ({line_deg:.0f} deg); the axis angle is measured from +y (straight down the image), upper -> lower"
        )


def resolve_joint_frame(
    upper: np.ndarray,
    lower: np.ndarray,
    joint_center_xy: tuple[float, float] | None,
    joint_axis_deg: float | None,
    content: tuple[int, int, int, int] | None = None,
    fill: np.ndarray | None = None,
) -> tuple[tuple[float, float], float]:
    """Fill in a missing joint axis and centre from the baseline masks.

    Missing both gives :func:`~jsnsynth.synth.layers.joint_frame_from_masks`, the frame in which
    jsnsynth datasets state their truth (with the ``fill`` as what is not picture). Of a crop padded to size (``content``, the images'
    :func:`~jsnsynth.picture.content_box`, smaller than the array), it is the frame of
    the picture: computed on the masks cut to that box and moved back, so that padding does not
    move it (:func:`picture_of`). The axis leaves out bone cross-sections cut by the picture's
    edge, which padding moves inside the array: 40 rows of it under real joints turned their axes
    by up to 6 degrees and moved their JSN by up to 0.4 px. A ``fill`` (the baseline's
    :func:`~jsnsynth.picture.find_fill`, over the array) cuts them as well: the masks of crops
    turned upright on an enlarged canvas, cut by its corners, turned the axis by up to 19 degrees.

    Raises:
        InputError: masks that mostly overlap (:func:`check_masks_apart`, checked first: one bone
            drawn twice is no frame, and was refused as a joint stored turned), bones not one
            above the other, a given axis across the joint (:func:`check_given_axis`), or a given
            centre away from the joint (:func:`check_given_center`).
    """
    check_masks_apart(upper, lower, "baseline")
    top, left = 0, 0
    picture = picture_of(upper, lower, content)
    if picture is not None:
        top, bottom, left, right = picture
        upper, lower = upper[top:bottom, left:right], lower[top:bottom, left:right]
        fill = fill[top:bottom, left:right] if fill is not None else None
    if joint_axis_deg is None:
        try:
            joint_axis_deg = joint_axis_from_masks(upper, lower, picture=~fill if fill is not None and fill.any() else None)
        except BonesNotStackedError as exc:  # a joint stored turned is measured once its axis is given
            raise InputError(f"{exc}, or give the joint axis of a joint stored turned (joint_axis_deg; "
                             "--joint-axis-deg on the command line)") from None
    else:
        check_given_axis(upper, lower, joint_axis_deg)
    if joint_center_xy is None:
        x, y = joint_center_from_masks(upper, lower, joint_axis_deg)
        joint_center_xy = (x + left, y + top)
    else:
        check_given_center(joint_center_xy, upper, lower, joint_axis_deg, (left, top))
    return (float(joint_center_xy[0]), float(joint_center_xy[1])), float(joint_axis_deg)


#: How far beyond the joint a given centre may lie, in units of the joint's width across the axis:
#: a quarter of it to either side, and half of it above and below the joint line.
CENTER_MARGIN_ACROSS = 0.25
CENTER_MARGIN_ALONG = 0.5


def check_given_center(center_xy: tuple[float, float], upper: np.ndarray, lower: np.ndarray, axis_deg: float,
                       offset_xy: tuple[int, int] = (0, 0)) -> None:
    """Reject a given joint centre that is not at the joint the masks show: in the joint's frame
    (:func:`~jsnsynth.synth.layers.joint_extent`; the masks cut at ``offset_xy`` of the array),
    across the axis within the range both bones cross, widened by :data:`CENTER_MARGIN_ACROSS`
    of it on each side, and along it within :data:`CENTER_MARGIN_ALONG` of that width of the
    joint line. JSN read elsewhere is the bones' relative motion at a point of neither joint nor
    margin (a real crop's corner read a JSN of the other sign, unflagged). Bones that share no
    range across the given axis have no joint to compare with: the centre is left as given."""
    try:
        (s_low, s_high), t_line = joint_extent(upper, lower, axis_deg)
    except InputError:
        return
    s, t = frame_coordinates(center_xy[0] - offset_xy[0], center_xy[1] - offset_xy[1], axis_deg)
    width = max(s_high - s_low, 1.0)
    if not (s_low - CENTER_MARGIN_ACROSS * width <= s <= s_high + CENTER_MARGIN_ACROSS * width
            and abs(t - t_line) <= CENTER_MARGIN_ALONG * width):
        raise InputError(f"joint centre ({center_xy[0]:g}, {center_xy[1]:g}) is not at the joint the masks show "
                         f"(across the joint axis {s - s_low:+.0f} px from where the bones' shared {width:.0f} px begin, "
                         f"along it {t - t_line:+.0f} px from the joint line): give a point of the joint")


def quantify_pair(
    baseline: np.ndarray,
    followup: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    pixel_spacing_mm: float | None = None,
    followup_upper_mask: np.ndarray | None = None,
    followup_lower_mask: np.ndarray | None = None,
    joint_center_xy: tuple[float, float] | None = None,
    joint_axis_deg: float | None = None,
    *,
    settings: reg.RegistrationSettings = reg.RegistrationSettings(),
    pixel_spacing_source: str | None = None,
    keep_residuals: bool = False,
) -> JsnResult:
    """Measure JSN progression between a baseline and a follow-up radiograph of one joint.

    Args:
        baseline: ``(H, W)`` uint8/uint16 or float ``[0, 1]`` radiograph, bone bright.
        followup: the follow-up radiograph, same size and orientation.
        upper_mask: baseline upper-bone mask (bool, or numbers: see :func:`as_mask`).
        lower_mask: baseline lower-bone mask.
        pixel_spacing_mm: pixel size for ``jsn_mm``; None means the nominal 0.175 mm.
        followup_upper_mask: follow-up upper-bone mask, when known (extra coarse candidate).
        followup_lower_mask: follow-up lower-bone mask, when known.
        joint_center_xy: centre of the measurement; default
            :func:`~jsnsynth.synth.layers.joint_center_from_masks` of the baseline masks across
            the axis (with both defaults, the frame of
            :func:`~jsnsynth.synth.layers.joint_frame_from_masks`: the one in which jsnsynth
            datasets state their truth). Of a padded crop, the picture's frame
            (:func:`resolve_joint_frame`).
        joint_axis_deg: baseline joint axis (0 = upper bone on top, axis straight down);
            default :func:`~jsnsynth.synth.layers.joint_axis_from_masks` of the baseline masks.
        settings: registration tuning, for 256 px crops; a larger or smaller picture is
            registered with their
            :meth:`~jsnsynth.quantify.register.RegistrationSettings.for_resolution` at its
            :func:`~jsnsynth.quantify.register.resolution_scale`.
        pixel_spacing_source: label recorded with the spacing (default "option" for a spacing
            given, "nominal" without one).
        keep_residuals: keep the residual maps on the result, for
            :func:`~jsnsynth.quantify.reliability.save_residual_figure` (four full-frame maps; off
            by default: a validation run has no use for them, and they cost 6 % of a pair's time).

    Returns:
        A :class:`JsnResult`.

    Raises:
        InputError: unreadable arrays, size mismatch, empty/overlapping/swapped masks.
    """
    start = time.perf_counter()
    base = as_intensity(baseline, "baseline")
    follow = as_intensity(followup, "follow-up")
    if follow.shape != base.shape:
        raise InputError(f"follow-up is {follow.shape[1]}x{follow.shape[0]}, baseline is {base.shape[1]}x{base.shape[0]}")
    upper = as_mask(upper_mask, "upper-bone", base.shape)
    lower = as_mask(lower_mask, "lower-bone", base.shape)
    joint_center_xy, joint_axis_deg = check_joint_frame(joint_center_xy, joint_axis_deg, base.shape)
    check_not_a_mask(base, "baseline")
    check_not_a_mask(follow, "follow-up")
    check_contrast(base, "baseline", upper | lower)
    check_contrast(follow, "follow-up")  # its bones are not where the baseline masks say
    # a crop padded to size: the picture's edge stays put while the joint moves under it, and a
    # fill's jump would spread through the smoothing into the bone regions
    content = content_box(base, follow)
    top, bottom, left, right = content
    padded = content != (0, base.shape[0], 0, base.shape[1])
    # the picture registered: the whole images, or a padded crop's picture (its sides were checked
    # against MIN_SIDE_PX with the images)
    if max(bottom - top, right - left) < MIN_LONG_SIDE_PX or (padded and min(bottom - top, right - left) < MIN_SIDE_PX):
        what = ("the images' rows or columns repeat exactly (read as padding): the picture left is" if padded
                else "the images are")
        raise InputError(f"{what} {right - left}x{bottom - top}, at least {MIN_SIDE_PX}x{MIN_SIDE_PX} and "
                         f"{MIN_LONG_SIDE_PX} px on the longer side needed")
    picture = picture_of(upper, lower, content)
    # the corners a crop turned upright keeps stay put while the joint moves under them: with
    # them black, crops turned by 15 deg read up to 1.2 px off (phantom and real-layer pairs, where
    # mirrored corners cost 0.01 px). Found in the picture registered; the baseline's cuts its
    # bones for the joint frame as the array's edge does
    cut = (slice(top, bottom), slice(left, right)) if picture is not None else (slice(None), slice(None))
    fills = tuple(find_fill(image[cut], any_level=True, masks=(upper[cut], lower[cut])) for image in (base, follow))
    baseline_fill = np.zeros(base.shape, dtype=bool)
    baseline_fill[cut] = fills[0]
    center, joint_axis_deg = resolve_joint_frame(upper, lower, joint_center_xy, joint_axis_deg, content,
                                                 baseline_fill)
    check_bone_order(upper, lower, joint_axis_deg, "baseline")
    follow_masks = None
    if (followup_upper_mask is None) != (followup_lower_mask is None):
        raise InputError("give both follow-up masks or neither")
    notes: list[str] = []
    if followup_upper_mask is not None:
        follow_masks = (
            as_mask(followup_upper_mask, "follow-up upper-bone", base.shape),
            as_mask(followup_lower_mask, "follow-up lower-bone", base.shape),
        )
        try:
            check_mask_pair(*follow_masks, joint_axis_deg, "follow-up")
        except InputError as exc:  # optional hints only: a bad delineation is ignored, not fatal
            follow_masks = None
            notes.append(f"follow-up masks ignored ({exc})")
    if pixel_spacing_mm is None:
        pixel_spacing_mm, source = DEFAULT_PIXEL_SPACING_MM, "nominal"
    else:
        source = pixel_spacing_source or "option"
    pixel_spacing_mm = check_pixel_spacing(pixel_spacing_mm, "pixel_spacing_mm")
    shape = base.shape
    local_center = center  # in the pixels of the picture that is registered
    if picture is not None:
        # a padded crop is registered as its picture alone: what it holds beyond (the padding, or
        # the padding's edge), where its array ends and how its pyramid levels sample it must not
        # enter the fit. With them, padding by 7-101 px moved real visit pairs by up to 0.16 px
        notes.append(f"padding recognised: picture rows {top}-{bottom - 1}, columns {left}-{right - 1}")
        base, follow, upper, lower = base[cut], follow[cut], upper[cut], lower[cut]
        if follow_masks is not None:
            follow_masks = (follow_masks[0][cut], follow_masks[1][cut])
            if not (follow_masks[0].any() and follow_masks[1].any()):
                follow_masks = None
        local_center = (center[0] - left, center[1] - top)
    # lengths set on 256 px crops, for the picture registered (of a padded crop, its picture:
    # it is measured as the picture would be alone)
    scale = reg.resolution_scale(base.shape)
    settings = settings.for_resolution(scale)
    clipping = (reg.clipping_levels(base), reg.clipping_levels(follow))
    # a fill is replaced by the picture mirrored and kept out of every region with the band kept
    # from the picture's edge
    keep_out = None
    if fills[0].any() or fills[1].any():
        keep_out = grown(fills[0] | fills[1], settings.border_px)
        notes.append(f"fill recognised: {np.count_nonzero(fills[0])} px of the baseline and "
                     f"{np.count_nonzero(fills[1])} of the follow-up, left out with a {settings.border_px} px band")
        base, follow = fill_from_picture(base, fills[0]), fill_from_picture(follow, fills[1])
    # a pattern fixed to the detector (an anti-scatter grid's lines) is in both visits where the
    # anatomy is not: left in, it pulls the registration toward no motion
    (cleaned_base, cleaned_follow), patterns = without_fixed_pattern(base, follow)
    if patterns:
        # pixels a display window clipped stay at their level, where the clipping tests find them
        for cleaned, image, (low, high) in ((cleaned_base, base, clipping[0]), (cleaned_follow, follow, clipping[1])):
            clipped = (image <= low) | (image >= high)
            cleaned[clipped] = image[clipped]
        base, follow = cleaned_base, cleaned_follow
        periods = ", ".join(f"{1.0 / math.hypot(fy, fx):.1f}" for fy, fx in patterns)
        notes.append(f"fixed pattern removed: {len(patterns)} sinusoid(s) both images hold, periods {periods} px "
                     "(an anti-scatter grid's lines?)")
    try:
        fits, coarse, bones_info, variance, t_coarse, t_fine, follow_coef = _register_bones(
            base, follow, upper, lower, local_center, joint_axis_deg, follow_masks, settings, clipping, scale, keep_out)
    except np.linalg.LinAlgError:  # a degenerate least-squares problem: nothing to register
        raise InputError("registration failed: the images hold too little structure in the bone regions") from None
    pu, pl = fits["upper"].params, fits["lower"].params
    t_upper = similarity_from_params(pu, *center)
    t_lower = similarity_from_params(pl, *center)
    jsn_px = jsn_from_transforms(t_upper, t_lower, center, joint_axis_deg)

    t0 = time.perf_counter()
    regions = {"upper": bones_info["upper"]["region"], "lower": bones_info["lower"]["region"]}
    if bones_info["wide_start"] is not None:
        # a note, not a flag: such pairs are measured (method step 1), if less closely than
        # ordinary ones, and their standard errors understate it
        angle_deg, magnification = bones_info["wide_start"]
        notes.append(f"repositioned beyond the usual: the follow-up is turned by about {angle_deg:.0f} deg and "
                     f"magnified about {magnification:.2f} times against the baseline (coarse wide search)")
    if bones_info["blur_anisotropy"] is not None:
        # a note, not a flag: the blurs are matched (method step 3)
        lam_px2, along = reg.anisotropy_axis(*bones_info["blur_anisotropy"])
        along_deg = round(math.degrees(along)) % 180  # an axis: 0-179
        # twice the eigenvalue: the variance a motion in one visit adds along its axis
        notes.append(f"blur differs by direction: relative to the baseline, the follow-up is blurred more along "
                     f"{along_deg} deg from the baseline's x axis (y down) than across it, by "
                     f"{2.0 * lam_px2:.2f} px^2 of variance (a motion during an exposure: the "
                     "follow-up's along that axis, or the baseline's across it); matched")
    unmatched_px2 = 2.0 * bones_info["blur_anisotropy_unmatched_px2"]
    if unmatched_px2:
        notes.append(f"blur differs by direction by about {unmatched_px2:.1f} px^2 of variance (a motion during an "
                     f"exposure?), beyond what the blur match reaches (about {2.0 * settings.max_blur_difference_px2:.0f} "
                     "px^2 at this picture's size): the JSN is not to be trusted")
    if reg.broad_overlap(upper, lower, settings.thin_overlap_px) is not None:
        # a note, not a flag: the rest of each bone is measured (method step 2), and the
        # standard error counts the pixels left out; the user learns the masks were read so
        notes.append(f"the bone masks overlap over {np.count_nonzero(upper & lower)} px: both bones project there, and "
                     "the overlap is kept out of both bones' regions")
    relative_deg = (t_upper.angle_deg - t_lower.angle_deg + 180.0) % 360.0 - 180.0
    if abs(relative_deg) > FLEXION_NOTE_DEG:
        # a note, not a flag: the measurement is right at its point, but another point gives
        # another JSN, and masks drawn otherwise (an LSN's against a hand's) move the point
        notes.append(f"the bones turned by {relative_deg:+.1f} deg relative to each other: the JSN depends on where it "
                     f"is read, by {abs(math.radians(relative_deg)):.2f} px per px across the joint axis from the joint "
                     f"centre ({center[0]:.1f}, {center[1]:.1f}; the baseline masks' unless given, so masks drawn "
                     "otherwise move it)")
    blur_px2, reach_px2 = bones_info["blur_difference_px2"], settings.max_blur_difference_px2
    if bones_info["blur_at_limit"] and not unmatched_px2:  # (a motion beyond reach has its note)
        # a mismatch: beyond the reach the difference is matched only in part, and the error grows
        # fast (phantom pairs whose follow-up was blurred by 6 and 9 px^2 read 0.2 and 0.5 px off,
        # 20 standard errors, unflagged)
        notes.append(f"the visits' blurs differ by more than the blur match reaches ({reach_px2:.0f} px^2 of variance at "
                     "this picture's size): the JSN is not to be trusted")
    elif blur_px2 is not None and not unmatched_px2 and abs(blur_px2) > BLUR_NOTE_SHARE * reach_px2:
        # a note, not a flag: matched, but the error it leaves grows with the difference
        # (docs/quantify.md, Reliability)
        blurrier = "follow-up" if blur_px2 > 0 else "baseline"
        notes.append(f"the visits' blurs differ by {abs(blur_px2):.1f} px^2 of variance (the {blurrier} the blurrier; "
                     "matched): the JSN's error grows with the difference, beyond its standard error")
    # residuals judged after removing a per-bone quadratic intensity mapping (exposure/gamma)
    maps, raw_stats = residual_maps(base, follow, regions, {"upper": pu, "lower": pl}, local_center,
                                    photometric_order=2, keep_maps=keep_residuals, follow_coef=follow_coef,
                                    clipping=clipping)
    if picture is not None:  # full-frame maps, as the figure draws them over the crop
        for key, picture_map in maps.items():
            maps[key] = np.full(shape, np.nan, dtype=picture_map.dtype)
            maps[key][cut] = picture_map
    report: ReliabilityReport = assess_reliability(base, follow, regions, fits, coarse, raw_stats, local_center,
                                                   pixel_limit_scale=reg.limit_scale(scale))
    t_rel = time.perf_counter() - t0

    bones = {}
    for name in ("upper", "lower"):
        fit = fits[name]
        bones[name] = {
            "iterations": fit.iterations,
            "converged": fit.converged,
            "n_pixels": fit.n_pixels,
            "rms_before": raw_stats[name]["rms_before"],
            "rms_after": raw_stats[name]["rms_after"],
            "explained": raw_stats[name]["explained"],
            "clipped_fraction": raw_stats[name]["clipped"],
            "noise_std": report.noise_std,
            "residual_ratio": report.residual_ratio[name],
            "hessian_condition": report.condition[name],
            "coarse_fine_disagreement_px": report.disagreement_px[name],
            "photometric": [float(v) for v in fit.photometric],
        }
    return JsnResult(
        jsn_px=jsn_px,
        jsn_mm=jsn_px * pixel_spacing_mm,
        pixel_spacing_mm=float(pixel_spacing_mm),
        pixel_spacing_source=source,
        joint_center_xy=center,
        joint_axis_deg=float(joint_axis_deg),
        upper=t_upper,
        lower=t_lower,
        reliability=report.score,
        mismatch=report.mismatch or bool(unmatched_px2) or bones_info["blur_at_limit"],
        flags=report.flags + notes,
        jsn_se_px=math.sqrt(max(variance, 0.0)),
        bones=bones,
        timings_s={"coarse": t_coarse, "fine": t_fine, "reliability": t_rel, "total": time.perf_counter() - start},
        residuals=maps,
    )


def _register_bones(base, follow, upper, lower, center, joint_axis_deg, follow_masks, settings, clipping, scale,
                    keep_out=None):
    """Coarse global + per-bone coarse + multi-scale fine fit of two pictures (a padded crop cut
    to its picture; ``clipping``: both images' :func:`~jsnsynth.quantify.register.clipping_levels`;
    ``settings`` for their :func:`~jsnsynth.quantify.register.resolution_scale` ``scale``;
    ``keep_out``: pixels no region may hold, a fill and its band, or None; ``joint_axis_deg``:
    the axis the JSN is read along); returns the fits, diagnostics, and the JSN's variance."""
    t0 = time.perf_counter()
    coarse_level = reg.coarse_level_for(base.shape)
    n_levels = max(settings.levels, coarse_level)
    # the per-bone phase correlations' level: half resolution of a reference crop on larger
    # pictures, half the picture's on smaller ones
    pc_level = min(1 + reg.extra_octaves(scale), n_levels)
    pyr_b = reg.build_pyramid(base, n_levels, settings.smooth_sigma_px)
    pyr_f = reg.build_pyramid(follow, n_levels, settings.smooth_sigma_px)
    follow_coef = spline_coefficients(follow)  # the raw follow-up's interpolant, shared by every stage below
    factor = 2**coarse_level
    # the coarse stage's region, at its level
    union = reg.dilate(upper | lower, settings.global_dilate_px, step=factor)
    if keep_out is not None:
        union &= ~keep_out[::factor, ::factor]
    if np.count_nonzero(union) < MIN_BONE_PX // factor**2:
        raise InputError("the bone masks lie (nearly) all in the images' padding or fill: nothing left to register")
    extra = []
    if follow_masks is not None:
        shift = (reg.mask_centroid(follow_masks[0] | follow_masks[1]) - reg.mask_centroid(upper | lower)) / factor
        extra.append(np.array([1.0, 0.0, shift[0], shift[1]]))
    c_coarse = (center[0] / factor, center[1] / factor)
    poses = [(angle, 1.0) for angle in settings.coarse_angles_deg] + [(0.0, s) for s in settings.coarse_scales]
    wide_start = None  # (angle_deg, scale) of a start only the wide search found
    global_params, ncc = reg.coarse_global(pyr_b[coarse_level], pyr_f[coarse_level], union, c_coarse, poses, extra)
    if ncc < settings.wide_search_below_ncc:
        # turned or magnified beyond the narrow starts' reach (method step 1)
        wide = [(angle, s) for angle in settings.wide_angles_deg for s in settings.wide_scales]
        wide_params, wide_ncc = reg.coarse_global(pyr_b[coarse_level], pyr_f[coarse_level], union, c_coarse, wide,
                                                  extra + [global_params], refine_best=3)
        if wide_ncc > ncc:
            global_params = wide_params
            turn = similarity_from_params(wide_params, *c_coarse)
            # named only when beyond the narrow starts' span: a pair whose bones moved apart by
            # many pixels also correlates poorly, and was noted as 'turned by about 0 deg and
            # magnified about 1.00 times'
            scales = (1.0, *settings.coarse_scales)  # the angle starts' scale is 1
            if (abs(turn.angle_deg) > max((abs(angle) for angle in settings.coarse_angles_deg), default=0.0)
                    or not min(scales) <= turn.scale <= max(scales)):
                wide_start = (turn.angle_deg, turn.scale)
    global_params = reg.scale_params(global_params, factor)

    # one intensity mapping for the whole image (exposure, window, gamma), fitted on flat pixels
    # of the globally aligned pair, so the per-bone fits need only a bias (see gauss_newton)
    if settings.intensity_mapping_order > 0:
        # at the coarse stage's level (half resolution at least): it only starts the
        # half-resolution fits, and the per-bone mapping replaces it. Fitted at half resolution,
        # as earlier rounds did, it moved no benchmark RMSE by more than 2e-4 px and cost 2-4 %.
        map_level = max(coarse_level, min(1, n_levels))
        f_map = 2**map_level
        # a loose region around the joint, grown at its own level (a fraction of the cost of
        # growing the full-resolution masks, and only its edge differs, by a pixel or so)
        joint = reg.dilate((upper | lower)[::f_map, ::f_map], 3 * settings.global_dilate_px // f_map)
        if not joint.any():  # masks thinner than the level's step fell between its samples
            joint = reg.dilate(upper | lower, 3 * settings.global_dilate_px, step=f_map)
        if keep_out is not None:
            joint &= ~keep_out[::f_map, ::f_map]
        joint_window = reg.aligned_windows(
            pyr_b[map_level], pyr_f[map_level], {"joint": joint}, {"joint": reg.scale_params(global_params, 1.0 / f_map)},
            (center[0] / f_map, center[1] / f_map),
        )
        mapping = reg.fit_intensity_mapping(
            reg.flat_samples(joint_window, settings.mapping_denoise_sigma_px / f_map), settings.intensity_mapping_order
        )
        # the coarse stage is done: only the levels still to come are rebuilt
        pyr_f = reg.build_pyramid(reg.apply_polynomial(follow, mapping), min(max(settings.levels, pc_level), n_levels),
                                  settings.smooth_sigma_px)
    # full resolution is prepared separately below when the blurs are matched
    first_fine = 1 if settings.match_blur and settings.levels > 0 else 0
    stacks_f = [None] * first_fine + [spline_coefficients(level) for level in pyr_f[first_fine:settings.levels + 1]]

    # per-bone windowed phase correlation on top of the global alignment
    f_pc = 2**pc_level
    c_pc = (center[0] / f_pc, center[1] / f_pc)
    warped = reg.warp_into_baseline(pyr_f[pc_level], reg.scale_params(global_params, 1.0 / f_pc), c_pc)
    shifts = {}
    for name, mask, other in (("upper", upper, lower), ("lower", lower, upper)):
        region = reg.bone_region(mask, other, settings.dilate_px + reg.scaled_length(2, scale), settings.exclude_px,
                                 settings.border_px, f_pc, keep_out=keep_out, thin_overlap_px=settings.thin_overlap_px)
        window = reg.tapered_window(region, 2.0)
        shift, _ = reg.phase_correlation_shift(pyr_b[pc_level], warped, window)
        shifts[name] = shift * f_pc
    # a finer crop of the same joint moves by more pixels: at 512 px with the 256 px limit,
    # real bones' own moves were cut off and the fine fits moved 4-5 px from the coarse ones
    reach_px = BONE_PEAK_MAX_PX * reg.limit_scale(scale)
    # both bones' peaks where the other's is: the global alignment is what was off, not the bones
    # (bones wider than the picture, bands whose texture the coarse level blurs away, were
    # aligned 9 px along the joint line off, and the bone whose peak said so past the reach
    # slid there: 0.8 px of JSN off, unflagged); within twice the reach, for a pattern common to
    # both windows cannot pull both bones far
    agree = bool(np.hypot(*(shifts["upper"] - shifts["lower"])) < reach_px / 2
                 and max(np.hypot(*shifts["upper"]), np.hypot(*shifts["lower"])) < 2 * reach_px)
    coarse = {}
    for name in ("upper", "lower"):
        params = global_params.copy()
        if agree or np.hypot(*shifts[name]) < reach_px:
            a, b = params[0], params[1]
            params[2] += a * shifts[name][0] - b * shifts[name][1]
            params[3] += b * shifts[name][0] + a * shifts[name][1]
        coarse[name] = params
    t_coarse = time.perf_counter() - t0

    # the bones' relative move decides how far from the other bone each region must stay
    relative_px = float(np.hypot(*(coarse["upper"][2:] - coarse["lower"][2:])))
    exclude_px = settings.exclude_px + int(math.ceil(relative_px))
    t1 = time.perf_counter()
    regions = {}
    for name, mask, other in (("upper", upper, lower), ("lower", lower, upper)):
        regions[name] = reg.bone_region(mask, other, settings.dilate_px, exclude_px, settings.border_px,
                                        keep_out=keep_out, thin_overlap_px=settings.thin_overlap_px)
        if np.count_nonzero(regions[name]) < MIN_BONE_PX:
            raise InputError(f"the {name}-bone mask leaves fewer than {MIN_BONE_PX} pixels to register")
    params = dict(coarse)
    fits = {}
    matched = None  # the visits matched for the full-resolution fit (_MatchedVisits)
    for level in range(settings.levels, -1, -1):
        f = 2**level
        if level == 0 and settings.levels > 0 and settings.match_blur:
            matched = _match_visits(base, follow, regions, params, center, follow_coef, clipping, settings)
            pyr_b[0], stacks_f[0] = matched.base, matched.follow_coef
        if level == 0 and settings.shared_scale and settings.levels > 0:
            break  # the joint shared-scale fit below is the full-resolution stage
        # the two bones' fits are independent; run together, they share the sampler's calls
        parts = []
        for name in ("upper", "lower"):
            # the levels only bring the fit within reach of full resolution, which half the
            # pixels do as well: the same iterations there and the same RMSEs
            region = regions[name][::f, ::f]
            index, xs, ys = reg.region_pixels(reg.every_other_pixel(region) if level > 0 else region)
            parts.append((pyr_b[level].ravel().take(index), xs, ys, reg.scale_params(params[name], 1.0 / f)))
        level_fits = reg.gauss_newton_parts(
            stacks_f[level],
            parts,
            (center[0] / f, center[1] / f),
            photometric_order=settings.photometric_order,
            max_iterations=settings.max_iterations,
            tolerance_px=COARSE_LEVEL_TOLERANCE_PX if level else settings.tolerance_px,
            robust_k=settings.robust_k,
        )
        for name, fit in zip(("upper", "lower"), level_fits):
            params[name] = reg.scale_params(fit.params, f)
            fit.params = params[name]
            fits[name] = fit
    if settings.shared_scale:
        # both bones take the follow-up's single magnification (see shared_scale_gauss_newton)
        names = ("upper", "lower")
        joint = _shared_scale_fit(pyr_b[0], stacks_f[0], regions, params, center, settings)
        iterations = joint.iterations
        jsn_variance = joint.variance(jsn_gradient(*joint.params, joint_axis_deg), max_lag_px=settings.residual_lag_px)
        # the visits were matched (blurs, gammas, intensity mapping) with the bones where the
        # half-resolution fits left them; a full-resolution fit that then moved the JSN further
        # than noise explains, and not by so much that it disagrees with them for another
        # reason, may owe part of its answer to that match (a blur large against the picture
        # spreads the bones' edges, and the mapping took part of their relative move for
        # contrast), so the visits are matched again where it ended and it runs again from
        # there (RegistrationSettings.rematch_jsn_px)
        start_jsn_px = _jsn_from_params(params["upper"], params["lower"], joint_axis_deg)
        fit_jsn_px = _jsn_from_params(*joint.params, joint_axis_deg)
        for _ in range(settings.max_match_passes - 1):
            moved_px = abs(fit_jsn_px - start_jsn_px)
            if (matched is None or not math.isfinite(jsn_variance)
                    or not (max(settings.rematch_jsn_px, settings.rematch_noise_se * math.sqrt(jsn_variance))
                            < moved_px <= settings.rematch_max_jsn_px)):
                break
            params = dict(zip(names, joint.params))
            matched = _match_visits(base, follow, regions, params, center, follow_coef, clipping, settings)
            again = _shared_scale_fit(matched.base, matched.follow_coef, regions, params, center, settings)
            iterations += again.iterations
            again_jsn_px = _jsn_from_params(*again.params, joint_axis_deg)
            # each match leaves a fraction of the share the one before held, so the fits'
            # moves shrink; a fit that moved farther than the one before it went astray, and
            # that one is kept
            if not abs(again_jsn_px - fit_jsn_px) <= moved_px:
                break
            joint, start_jsn_px, fit_jsn_px = again, fit_jsn_px, again_jsn_px
            jsn_variance = joint.variance(jsn_gradient(*joint.params, joint_axis_deg),
                                          max_lag_px=settings.residual_lag_px)
        for k, (name, p) in enumerate(zip(names, joint.params)):
            fits[name].params = params[name] = p
            fits[name].hessian = joint.geometric_hessian(k)
            fits[name].converged = joint.converged
            fits[name].iterations += iterations
            fits[name].last_step_px = joint.last_step_px
            fits[name].n_pixels = int(np.count_nonzero(regions[name]))
            fits[name].photometric = joint.shading[k]
    else:  # the bones' own full-resolution fits, independent of each other: white residual noise
        covariance = np.zeros((8, 8))
        for k, name in enumerate(("upper", "lower")):
            covariance[4 * k: 4 * k + 4, 4 * k: 4 * k + 4] = fits[name].rms ** 2 * np.linalg.inv(fits[name].hessian)
        gradient = jsn_gradient(fits["upper"].params, fits["lower"].params, joint_axis_deg)
        jsn_variance = float(gradient @ covariance @ gradient)
    info = {name: {"region": regions[name]} for name in regions}
    info["wide_start"] = wide_start
    info["blur_anisotropy"] = matched.anisotropy_px2 if matched else None
    info["blur_anisotropy_unmatched_px2"] = matched.anisotropy_unmatched_px2 if matched else 0.0
    info["blur_difference_px2"] = matched.difference_px2 if matched else None
    info["blur_at_limit"] = matched.at_limit if matched else False
    t_fine = time.perf_counter() - t1
    return fits, coarse, info, jsn_variance, t_coarse, t_fine, follow_coef


class _MatchedVisits(NamedTuple):
    """The two visits made alike for the full-resolution fit (:func:`_match_visits`)."""

    #: the baseline, blurred to the follow-up's detector blur where that is the blurrier
    base: np.ndarray
    #: spline coefficients of the follow-up, blurred likewise and mapped onto the baseline's intensities
    follow_coef: np.ndarray
    #: the isotropic blur difference matched (> 0: the follow-up the blurrier)
    difference_px2: float
    #: a search ended at its reach: the difference may be larger
    at_limit: bool
    #: the direction-dependent blur difference matched, (alpha, beta) px^2, or None
    anisotropy_px2: tuple[float, float] | None
    #: the size of one that could not be matched
    anisotropy_unmatched_px2: float


def _match_visits(base, follow, regions, params, center, follow_coef, clipping, settings) -> _MatchedVisits:
    """The two visits made alike for the full-resolution fit, with each bone at ``params`` (its
    nearly final place): their detector blurs equalised, their displays put on one gamma, and the
    intensity mapping refitted (method step 3); ``follow_coef``: the raw follow-up's spline
    coefficients."""
    blur_anisotropy = None
    blur_anisotropy_unmatched_px2 = 0.0
    # a blur or contrast difference left in the images can only be absorbed by the fit as a
    # change of each bone's scale, which the lever arm to the joint centre amplifies
    windows = reg.aligned_windows(base, follow, regions, params, center, settings.window_margin_px,
                                  follow_coef=follow_coef)
    # clipped pixels (a display window's saturation) are left out of the intensity fits
    unclipped = reg.unclipped_regions(windows, *clipping, settings.clipped_margin_px)
    offsets = reg.window_offsets(regions, settings.window_margin_px)
    matcher = reg.BlurMatcher(windows, settings.common_blur_variance_px2, settings.max_blur_difference_px2,
                              offsets)
    blur_x = matcher.variance_difference([fw for _, fw, _ in windows])
    blur_at_limit = _at_reach(blur_x, settings.max_blur_difference_px2)
    if settings.match_blur_anisotropy:
        blur_x, alpha, beta, blur_anisotropy_unmatched_px2 = matcher.with_anisotropy(
            [fw for _, fw, _ in windows], blur_x, settings.min_blur_anisotropy_px2)
        if alpha or beta:
            # a blur that differs by direction (a patient's motion) is matched first,
            # by a line blur of each image, so that everything after (the displays'
            # gammas, the intensity mapping, the isotropic search) sees images whose
            # blurs differ alike in every direction: the intensity mapping fitted
            # across the unmatched part bent the mapping and biased the JSN by as much
            # as the blur itself
            line_b, line_f = reg.line_blurs(alpha, beta)
            # the follow-up's own frame is turned and magnified against the baseline's,
            # in which the windows and the estimate are
            turn = 0.5 * (params["upper"][:2] + params["lower"][:2])
            base, follow = reg.line_blurred(base, line_b), reg.line_blurred(follow, reg.turned_covariance(line_f, turn))
            blur_anisotropy = (alpha, beta)
            windows = [(reg.line_blurred(bw, line_b), reg.line_blurred(fw, line_f), r) for bw, fw, r in windows]
            matcher = reg.BlurMatcher(windows, settings.common_blur_variance_px2,
                                      settings.max_blur_difference_px2, offsets)
    # the intensity fits read the windows' unclipped flat pixels with the blurs matched
    # (blurs commute with the nearly rigid warps)
    fit_windows = [(bw, fw, r) for (bw, fw, _), r in zip(windows, unclipped)]
    samples = reg.flat_samples(fit_windows, settings.mapping_denoise_sigma_px, blur_x, offsets)
    if settings.equalise_display_gamma:
        # both visits onto one display gamma: blurs are then matched, and intensities
        # mapped, between images whose displays bend alike (docs/quantify-method.md, step 3)
        ratio = reg.display_gamma_ratio(samples)
        if ratio != 1.0:
            exponent_b, exponent_f = ratio**-0.5, ratio**0.5
            base, follow = reg.raise_to(base, exponent_b), reg.raise_to(follow, exponent_f)
            windows = [(reg.raise_to(bw, exponent_b), reg.raise_to(fw, exponent_f), r) for bw, fw, r in windows]
            fit_windows = [(bw, fw, r) for (bw, fw, _), r in zip(windows, unclipped)]
            samples = reg.flat_samples(fit_windows, settings.mapping_denoise_sigma_px, blur_x, offsets)
            matcher = reg.BlurMatcher(windows, settings.common_blur_variance_px2,
                                      settings.max_blur_difference_px2, offsets)
            if settings.intensity_mapping_order == 0:  # else the search after the mapping
                blur_x = matcher.variance_difference([fw for _, fw, _ in windows], rounds=1, initial=blur_x)
    mapping = None
    if settings.intensity_mapping_order > 0:
        # the blurs are matched again on the mapped windows (the display mapping acts
        # after the blur). That second search maps before it blurs; estimating it in the
        # final image's order (blur, then map) made no difference (within 1e-4 px
        # RMSE), so it keeps the cheaper order.
        mapping = reg.fit_intensity_mapping(samples, settings.intensity_mapping_order)
        # one linearised step from the first estimate: more secant rounds here, or a
        # fourth in the first search, moved the benchmark's RMSEs by 1e-4 px at most.
        # After the gammas changed the images the step can overshoot (the first estimate
        # is another domain's); converging it there helped the toy joint and cost
        # phantoms 0.0005-0.0009 px (docs/quantify-history.md, tried and dropped)
        blur_x = matcher.variance_difference(
            [reg.apply_polynomial(fw, mapping) for _, fw, _ in windows], rounds=1, initial=blur_x
        )
    blur_at_limit = blur_at_limit or _at_reach(blur_x, settings.max_blur_difference_px2)
    base0 = reg.gaussian_blur(base, math.sqrt(max(blur_x, 0.0)))
    # a sharper follow-up is blurred *before* it is mapped, as the mapping was fitted: on
    # blurred windows. The mapping stands for the two displays, which act after the
    # detector blur; blurring the mapped image instead blurs through a display
    # nonlinearity the baseline never went through (docs/quantify-method.md, step 3)
    mapped = reg.gaussian_blur(follow, math.sqrt(max(-blur_x, 0.0)))
    if mapping is not None:
        mapped = reg.apply_polynomial(mapped, mapping)
    return _MatchedVisits(
        reg.build_pyramid(base0, 0, settings.smooth_sigma_px)[0],
        spline_coefficients(reg.build_pyramid(mapped, 0, settings.smooth_sigma_px)[0]),
        blur_x, blur_at_limit, blur_anisotropy, blur_anisotropy_unmatched_px2,
    )


def _shared_scale_fit(base, follow_coef, regions, params, center, settings) -> reg.SharedScaleFit:
    """The full-resolution fit of both bones with one magnification
    (:func:`~jsnsynth.quantify.register.shared_scale_gauss_newton`) from ``params``, on the
    baseline ``base`` and the follow-up's spline coefficients ``follow_coef``."""
    components, base_gradients = [], []
    # the baseline interpolant's gradient: with the follow-up's, it gives a normal matrix
    # free of the noise that slows Gauss-Newton down (see shared_scale_gauss_newton)
    base_coef = spline_coefficients(base)
    base_gx, base_gy = spline_gradients(base_coef)
    for name in ("upper", "lower"):
        _, xs, ys = reg.region_pixels(regions[name])
        # both images are sampled at points spread evenly between the pixel centres
        # (register.dithered_positions): on the pixels themselves, a follow-up that is only
        # translated would have its interpolated noise pull the fit toward half-pixel moves
        xs, ys = reg.dithered_positions(xs, ys)
        # the baseline's gradient only sizes the steps: the nearest pixel centre's will do
        # (the regions keep settings.border_px from the picture's edge, so that pixel is inside)
        nearest = (np.rint(ys) * base_coef.shape[1] + np.rint(xs)).astype(np.intp)
        components.append((sample_spline_values(base_coef, xs, ys), xs, ys, params[name]))
        base_gradients.append((base_gx.ravel().take(nearest), base_gy.ravel().take(nearest)))
    return reg.shared_scale_gauss_newton(
        follow_coef, components, center, max_iterations=settings.max_iterations, tolerance_px=settings.tolerance_px,
        shading_order=settings.shading_order, base_gradients=base_gradients, robust_k=settings.fine_robust_k,
        robust_smoothing_px=settings.robust_smoothing_px,
    )


def _at_reach(variance_px2: float, reach_px2: float) -> bool:
    """Whether a blur search ended at its reach (a reach of 0 matches nothing and reaches nothing)."""
    return 0.0 < reach_px2 * (1.0 - 1e-9) <= abs(variance_px2)


#: Relative turn of the two bones (degrees) beyond which a note says how much the JSN depends on
#: the point where it is read: the turn in radians per pixel across the joint axis (0.09 px per px
#: at 5 deg). An outside review read real visit pairs that flexed by 6-10 deg with the LSN's masks
#: and with the drawn ones: joint centres 2-4 px apart, JSNs up to 9 standard errors apart (both
#: right at their own centres).
FLEXION_NOTE_DEG = 5.0


#: Share of the blur search's reach (:attr:`RegistrationSettings.max_blur_difference_px2`) beyond
#: which a matched blur difference gets a note: on noise-free phantom pairs whose follow-up was
#: blurred further, the JSN's RMSE went from 0.009 px to 0.023 px at 2 px^2 and 0.060 px at 4.
BLUR_NOTE_SHARE = 0.5


#: Headers whose spacings differ by less than this (relative) state one spacing.
SPACING_AGREEMENT = 0.01


def _pair_pixel_spacing(option_mm: float | None, baseline_mm: float | None, followup_mm: float | None,
                        baseline_path: str, followup_path: str) -> tuple[float, str]:
    """The spacing of the baseline's pixels, in which the JSN is measured, and where it came from:
    the option, else the baseline's DICOM header, else the follow-up's (the same crop size of the
    same joint; better than the nominal one), else the nominal 0.175 mm/px. Headers that disagree
    are a warning: the quantifier takes the difference for a magnification, and the millimetres
    follow the baseline's."""
    from jsnsynth.synth.layers import PIXEL_SPACING_RANGE_MM, check_pixel_spacing

    if option_mm is not None:
        return check_pixel_spacing(option_mm, "--pixel-spacing"), "option"
    # the header used is checked first: a spacing of 0 was compared with the other visit's in a
    # warning, and then refused, two lines for one problem
    low, high = PIXEL_SPACING_RANGE_MM
    if baseline_mm is not None and followup_mm is not None and low <= baseline_mm <= high \
            and abs(followup_mm - baseline_mm) > SPACING_AGREEMENT * baseline_mm:
        unused = "" if low <= followup_mm <= high else ", which is not a radiograph's and is not used"
        warnings.warn(f"the visits' DICOM pixel spacings differ ({baseline_path}: {baseline_mm:g} mm, {followup_path}: "
                      f"{followup_mm:g} mm{unused}); the JSN is in the baseline's pixels and millimetres", stacklevel=3)
    for path, header_mm, label in ((baseline_path, baseline_mm, "dicom"),
                                   (followup_path, followup_mm, "dicom (the follow-up's; the baseline has none)")):
        if header_mm is not None:
            return check_pixel_spacing(header_mm, f"{path} (DICOM header; give --pixel-spacing to override)"), label
    return DEFAULT_PIXEL_SPACING_MM, "nominal (0.175 mm/px; the images have no spacing)"


def quantify_files(
    baseline_path: str,
    followup_path: str,
    upper_mask_path: str,
    lower_mask_path: str,
    followup_upper_mask_path: str | None = None,
    followup_lower_mask_path: str | None = None,
    pixel_spacing_mm: float | None = None,
    residual_figure: str | None = None,
    json_out: str | None = None,
    joint_center_xy: tuple[float, float] | None = None,
    joint_axis_deg: float | None = None,
) -> dict[str, Any]:
    """Read a pair from disk, quantify it, and write the optional figure and JSON record.

    Pixel spacing: the option when given, else the baseline's DICOM header, else the
    follow-up's, else the nominal 0.175 mm/px; ``pixel_spacing_source`` in the record says which
    (headers that disagree by more than 1 % are a warning). The joint frame defaults to
    the baseline masks' (see :func:`quantify_pair`).

    The figure and the JSON record are written together, at the end, or not at all.

    Returns:
        The JSON record (:meth:`JsnResult.to_dict`) plus ``inputs`` and ``outputs``.

    Raises:
        InputError: unreadable images or masks, size mismatch, empty/overlapping masks, a pixel
            spacing outside :data:`~jsnsynth.synth.layers.PIXEL_SPACING_RANGE_MM`.
        OutputError: an output that cannot be written, or that would overwrite an input or the
            other output (checked before the work).
    """
    from jsnsynth.quantify.reliability import figure_format, residual_figure_bytes
    from jsnsynth.synth.io import check_outputs_apart, check_writable, json_text, write_files_atomic
    from jsnsynth.synth.io import read_mask, read_radiograph

    # every output checked before the work: writable, and overwriting neither an input nor the
    # other output
    inputs = [p for p in (baseline_path, followup_path, upper_mask_path, lower_mask_path,
                          followup_upper_mask_path, followup_lower_mask_path) if p is not None]
    outputs = [p for p in (residual_figure, json_out) if p]
    check_outputs_apart(outputs, inputs)
    for out_path in outputs:
        check_writable(out_path)
    if residual_figure:
        figure_format(residual_figure)
    base = read_radiograph(baseline_path)
    check_image_size(base.intensity.shape, f"{baseline_path}: baseline")
    follow = read_radiograph(followup_path)
    check_image_size(follow.intensity.shape, f"{followup_path}: follow-up")
    shape = base.intensity.shape
    if follow.intensity.shape != shape:
        raise InputError(f"{followup_path}: follow-up is {follow.intensity.shape[1]}x{follow.intensity.shape[0]}, baseline is {shape[1]}x{shape[0]}")
    masks = [read_mask(upper_mask_path, shape), read_mask(lower_mask_path, shape)]
    follow_masks = [None, None]
    if (followup_upper_mask_path is None) != (followup_lower_mask_path is None):
        raise InputError("give both --followup-upper-mask and --followup-lower-mask, or neither")
    if followup_upper_mask_path is not None:
        follow_masks = [read_mask(followup_upper_mask_path, shape), read_mask(followup_lower_mask_path, shape)]
    spacing, source = _pair_pixel_spacing(pixel_spacing_mm, base.pixel_spacing_mm, follow.pixel_spacing_mm,
                                          baseline_path, followup_path)
    result = quantify_pair(
        base.intensity.astype(np.float32), follow.intensity.astype(np.float32), masks[0], masks[1],
        pixel_spacing_mm=spacing, followup_upper_mask=follow_masks[0], followup_lower_mask=follow_masks[1],
        pixel_spacing_source=source, joint_center_xy=joint_center_xy, joint_axis_deg=joint_axis_deg,
        keep_residuals=bool(residual_figure),
    )
    record = result.to_dict()
    # the masks too: a record that names only the images cannot say which drawing was measured
    masks = {"upper_mask": upper_mask_path, "lower_mask": lower_mask_path,
             "followup_upper_mask": followup_upper_mask_path, "followup_lower_mask": followup_lower_mask_path}
    record["inputs"] = {"baseline": str(baseline_path), "followup": str(followup_path),
                        "baseline_bit_depth": base.bit_depth, "followup_bit_depth": follow.bit_depth,
                        **{name: None if path is None else str(path) for name, path in masks.items()}}
    record["outputs"] = {}
    files: dict[str, bytes] = {}
    if residual_figure:
        record["outputs"]["residual_figure"] = str(residual_figure)
        files[str(residual_figure)] = residual_figure_bytes(result, base.intensity, figure_format(residual_figure))
    if json_out:
        record["outputs"]["json"] = str(json_out)
        files[str(json_out)] = (json_text(record) + "\n").encode()
    # both or neither: a figure without its record (or the reverse) would pass for a finished run
    write_files_atomic(files)
    return record
