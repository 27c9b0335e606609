"""The data model: a finger-joint crop as three attenuation layers with masks and geometry.

Attenuation is the dimensionless line integral ``a = ∫ mu dl`` along each ray; layers add in the
attenuation domain (see :mod:`jsnsynth.synth.xray` for the mapping to a radiograph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import axis_vector

#: Nominal pixel spacing of the finger-joint crops (the registration paper's 0.175 mm/px).
DEFAULT_PIXEL_SPACING_MM = 0.175
#: Pixel sizes (mm) accepted wherever a spacing is given or read (an option, a DICOM header):
#: from high-resolution detectors to coarse scans. One range for every command, so a spacing
#: that one command takes is never refused by the next.
PIXEL_SPACING_RANGE_MM = (0.02, 1.0)


def check_pixel_spacing(pixel_spacing_mm: float, name: str = "image") -> float:
    """Refuse a pixel size that no hand radiograph has; return it as a float.

    Args:
        pixel_spacing_mm: the spacing, mm/px.
        name: what it belongs to (a file, an option), for the message.

    Raises:
        InputError: not a number in :data:`PIXEL_SPACING_RANGE_MM`, naming ``name``.
    """
    low, high = PIXEL_SPACING_RANGE_MM
    try:
        value = float(pixel_spacing_mm)
    except (TypeError, ValueError):
        raise InputError(f"{name}: pixel spacing {pixel_spacing_mm!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise InputError(f"{name}: pixel spacing {pixel_spacing_mm} mm is not a radiograph's ({low}-{high} mm)")
    return value


@dataclass
class JointLayers:
    """One joint crop as soft-tissue, upper-bone and lower-bone attenuation layers.

    Attributes:
        soft: ``(H, W)`` float32 soft-tissue attenuation, >= 0.
        upper: ``(H, W)`` float32 attenuation of the upper bone, the distal one (e.g. proximal phalanx base), >= 0,
            zero outside ``upper_mask``.
        lower: ``(H, W)`` float32 attenuation of the lower bone, the proximal one (e.g. metacarpal head).
        upper_mask: ``(H, W)`` bool support of the upper bone.
        lower_mask: ``(H, W)`` bool support of the lower bone.
        pixel_spacing_mm: pixel size in millimetres (square pixels).
        joint_center_xy: ``(x, y)`` of the joint centre in pixels: the middle of the joint space
            on the joint axis.
        joint_axis_deg: angle of the joint axis (upper -> lower bone) from +y, degrees, with the
            sign of :class:`~jsnsynth.synth.geometry.Similarity`; 0 for the stored orientation.
        metadata: free JSON-serialisable record (source, sampled parameters, provenance).
    """

    soft: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    upper_mask: np.ndarray
    lower_mask: np.ndarray
    pixel_spacing_mm: float = DEFAULT_PIXEL_SPACING_MM
    joint_center_xy: tuple[float, float] = (0.0, 0.0)
    joint_axis_deg: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.soft = np.asarray(self.soft, dtype=np.float32)
        self.upper = np.asarray(self.upper, dtype=np.float32)
        self.lower = np.asarray(self.lower, dtype=np.float32)
        self.upper_mask = np.asarray(self.upper_mask, dtype=bool)
        self.lower_mask = np.asarray(self.lower_mask, dtype=bool)
        self.joint_center_xy = (float(self.joint_center_xy[0]), float(self.joint_center_xy[1]))
        self.pixel_spacing_mm = float(self.pixel_spacing_mm)
        self.joint_axis_deg = float(self.joint_axis_deg)
        validate_layers(self)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of every array."""
        return self.soft.shape  # type: ignore[return-value]

    @property
    def axis_xy(self) -> np.ndarray:
        """Unit vector of the joint axis, pointing from the upper to the lower bone."""
        return axis_vector(self.joint_axis_deg)

    def attenuation(self) -> np.ndarray:
        """Total attenuation ``a_soft + a_upper + a_lower`` as float32."""
        return self.soft + self.upper + self.lower

    def replace(self, **changes: Any) -> "JointLayers":
        """Return a copy with some fields replaced (validated again)."""
        return replace(self, **changes)


def validate_layers(layers: JointLayers) -> None:
    """Raise :class:`InputError` naming the problem if ``layers`` is not a consistent record."""
    shape = layers.soft.shape
    if layers.soft.ndim != 2 or min(shape) < 1:
        raise InputError(f"layers must be non-empty 2-D arrays, got soft layer of shape {shape}")
    for name in ("upper", "lower", "upper_mask", "lower_mask"):
        if getattr(layers, name).shape != shape:
            raise InputError(
                f"layer '{name}' has shape {getattr(layers, name).shape}, expected {shape}"
            )
    for name in ("soft", "upper", "lower"):
        values = getattr(layers, name)
        if not np.all(np.isfinite(values)):
            raise InputError(f"layer '{name}' contains NaN or infinite values")
        if values.min() < 0:
            raise InputError(f"layer '{name}' has negative attenuation ({values.min():.3g})")
    if not (np.isfinite(layers.pixel_spacing_mm) and layers.pixel_spacing_mm > 0):
        raise InputError(f"pixel spacing must be a positive number, got {layers.pixel_spacing_mm}")


def frame_coordinates(x, y, axis_deg: float):
    """Across-axis ``s`` and along-axis ``t`` coordinates of image points ``(x, y)`` (numbers or
    arrays) in the joint frame of axis ``axis_deg``: ``(x, y) = s * across + t * axis``, with
    ``across`` the +x direction turned like the axis."""
    axis = axis_vector(axis_deg)
    across = np.array([axis[1], -axis[0]])
    return x * across[0] + y * across[1], x * axis[0] + y * axis[1]


def mask_pixels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a 2-D mask's pixels in row-major order: ``np.nonzero``'s answer, from
    the flat indices (a third of its time: the quantifier checks its masks on every pair)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _frame_coordinates(mask: np.ndarray, axis_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Across-axis ``s`` and along-axis ``t`` coordinates of a mask's pixels."""
    rows, cols = mask_pixels(mask)
    return frame_coordinates(cols, rows, axis_deg)


def _check_masks(upper_mask: np.ndarray, lower_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    upper_mask = np.asarray(upper_mask, dtype=bool)
    lower_mask = np.asarray(lower_mask, dtype=bool)
    if not upper_mask.any():
        raise InputError("the upper-bone mask is empty")
    if not lower_mask.any():
        raise InputError("the lower-bone mask is empty")
    return upper_mask, lower_mask


def _facing_profiles(
    upper_mask: np.ndarray, lower_mask: np.ndarray, axis_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 1-px bin across the axis: the upper bone's lowest and the lower bone's highest edge.

    Returns the bin positions crossed by both bones, and the two edge positions along the axis
    (pixel extents, so a pixel's edge is half a pixel beyond its centre).
    """
    s_up, t_up = _frame_coordinates(upper_mask, axis_deg)
    s_lo, t_lo = _frame_coordinates(lower_mask, axis_deg)
    offset = int(np.floor(min(s_up.min(), s_lo.min()))) - 1
    bins_up = np.rint(s_up - offset).astype(int)
    bins_lo = np.rint(s_lo - offset).astype(int)
    size = max(bins_up.max(), bins_lo.max()) + 1
    upper_edge = np.full(size, -np.inf)
    lower_edge = np.full(size, np.inf)
    np.maximum.at(upper_edge, bins_up, t_up + 0.5)
    np.minimum.at(lower_edge, bins_lo, t_lo - 0.5)
    shared = np.flatnonzero(np.isfinite(upper_edge) & np.isfinite(lower_edge))
    if shared.size == 0:
        raise InputError("the upper and lower bone masks share no column: cannot place the joint")
    return shared + offset, upper_edge[shared], lower_edge[shared]


def joint_extent(
    upper_mask: np.ndarray, lower_mask: np.ndarray, axis_deg: float
) -> tuple[tuple[float, float], float]:
    """Where the joint lies in its own frame (``s`` across the axis, ``t`` along it, as
    ``x = s * across + t * axis`` with ``across`` the axis turned to +x): the range across the
    axis that both bones cross, and the joint line along it (the median, over the middle half of
    that range, of the middle of the joint space; toward the range's ends a bone's edge is its
    side, not its articular end).

    Raises:
        InputError: a mask is empty, or the bones share no range across the axis.
    """
    upper_mask, lower_mask = _check_masks(upper_mask, lower_mask)
    s, upper_edge, lower_edge = _facing_profiles(upper_mask, lower_mask, axis_deg)
    quarter = (s[-1] - s[0]) / 4.0
    middle = (s >= s[0] + quarter) & (s <= s[-1] - quarter)
    line = np.median(((upper_edge + lower_edge) / 2.0)[middle if middle.any() else slice(None)])
    return (float(s[0]), float(s[-1])), float(line)


#: Crops are stored with the joint axis vertical; masks whose bones lie further apart sideways
#: than this are swapped or side by side, not a joint.
MAX_AXIS_TILT_DEG = 45.0


def centroid_axis_deg(upper_mask: np.ndarray, lower_mask: np.ndarray) -> float:
    """Angle (degrees, 0 = straight down, in (-180, 180]) of the line from the upper bone's
    centroid to the lower bone's, in the convention of the joint axis.

    Raises:
        InputError: an empty mask, or masks of different sizes.
    """
    upper_mask, lower_mask = _check_masks(upper_mask, lower_mask)
    rows_u, cols_u = mask_pixels(upper_mask)
    rows_l, cols_l = mask_pixels(lower_mask)
    dx, dy = cols_l.mean() - cols_u.mean(), rows_l.mean() - rows_u.mean()
    return math.degrees(math.atan2(-dx, dy))


class BonesNotStackedError(InputError):
    """Two bone masks that are not one above the other (:func:`check_joint_masks`)."""


def mask_overlap_share(upper_mask: np.ndarray, lower_mask: np.ndarray) -> float:
    """Share of the smaller of two non-empty masks that the other covers too (past
    ``limits.MAX_MASK_OVERLAP`` they are not two bones)."""
    return np.count_nonzero(upper_mask & lower_mask) / min(np.count_nonzero(upper_mask), np.count_nonzero(lower_mask))


def check_joint_masks(upper_mask: np.ndarray, lower_mask: np.ndarray) -> float:
    """Check that two masks can be a stored joint; return the angle of the line between centroids.

    Raises:
        InputError: an empty mask; :class:`BonesNotStackedError` for bones not one above the
            other (the line through their centroids tilts more than ``MAX_AXIS_TILT_DEG`` from
            vertical: swapped or side by side).
    """
    angle_deg = centroid_axis_deg(upper_mask, lower_mask)
    if abs(angle_deg) > 180.0 - MAX_AXIS_TILT_DEG:
        # the usual cause is the two masks given in each other's place, not a crop upside down
        raise BonesNotStackedError(
            f"the upper-bone mask lies below the lower-bone mask (joint axis {angle_deg:.0f} deg from vertical): "
            "are the two masks swapped? Else store crops with the upper bone on top"
        )
    if abs(angle_deg) > MAX_AXIS_TILT_DEG:
        raise BonesNotStackedError(
            f"the lower-bone mask is not below the upper-bone mask (joint axis {angle_deg:.0f} deg from "
            f"vertical): store crops with the upper bone on top"
        )
    return angle_deg


#: Least share of a bone's length (rows along the axis) whose cross-sections must be whole for
#: :func:`joint_axis_from_masks` to refine the axis on the bones' medial line.
MEDIAL_MIN_FRACTION = 0.25


def _medial_points(
    mask: np.ndarray, axis_deg: float, picture: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Mid-points of a bone's cross-sections across the axis, in a frame turned so the axis is vertical.

    Returns ``(t, s, rows)``: the row along the axis and the mid-point across it, and how many
    rows the bone spans. Rows where the bone touches the image border (after turning), or what
    is not ``picture`` (a fill), are left out: there the crop, not the bone, ends it.
    """
    height, width = mask.shape
    axis = axis_vector(axis_deg)
    across = np.array([axis[1], -axis[0]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    to_frame = np.array(
        [[across[0], across[1], centre[0] - centre @ across], [axis[0], axis[1], centre[1] - centre @ axis]]
    )
    turned = cv2.warpAffine(mask.astype(np.uint8), to_frame, (width, height), flags=cv2.INTER_NEAREST,
                            borderValue=0) > 0
    inside = cv2.warpAffine(np.ones_like(mask, np.uint8) if picture is None else picture.astype(np.uint8), to_frame,
                            (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
    outside = cv2.dilate((inside == 0).astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                         borderValue=1) > 0
    rows = np.flatnonzero(turned.any(axis=1) & ~(turned & outside).any(axis=1))
    first = np.argmax(turned[rows], axis=1)
    last = width - 1 - np.argmax(turned[rows, ::-1], axis=1)
    wide = last - first >= 4
    return rows[wide].astype(float), (first[wide] + last[wide]) / 2.0, int(np.count_nonzero(turned.any(axis=1)))


def joint_axis_from_masks(
    upper_mask: np.ndarray, lower_mask: np.ndarray, iterations: int = 3, picture: np.ndarray | None = None
) -> float:
    """Estimate the joint axis angle (degrees, 0 = straight down) from the two bone masks.

    Starts from the line through the two bones' centroids, then refines it as the straight line
    fitted to the mid-points of both bones' cross-sections (their medial line), measured across
    the current axis estimate. Cross-sections that touch the image border are left out: a crop
    cuts bones along the image edges, not across the joint axis; so are those that touch what is
    not ``picture`` (default: the whole array is), the fill of a crop turned upright, which cuts
    them along its own edges (:func:`jsnsynth.picture.find_fill`). Where that leaves less than
    :data:`MEDIAL_MIN_FRACTION` of either bone's length (bones as wide as the crop: only their
    rounded ends remain, whose mid-points say little about the axis), the centroid line is kept.

    Raises:
        InputError: an empty mask, or bones not one above the other (see :func:`check_joint_masks`).
    """
    axis_deg = check_joint_masks(upper_mask, lower_mask)
    upper_mask = np.asarray(upper_mask, dtype=bool)
    lower_mask = np.asarray(lower_mask, dtype=bool)
    for _ in range(iterations):
        points = [_medial_points(mask, axis_deg, picture) for mask in (upper_mask, lower_mask)]
        if any(t.size < MEDIAL_MIN_FRACTION * rows for t, _, rows in points):
            break
        t_all = np.concatenate([p[0] for p in points])
        s_all = np.concatenate([p[1] for p in points])
        if t_all.size < 8:
            break
        slope = np.polyfit(t_all, s_all, 1)[0]  # s drifts along t: the axis is turned by atan(slope)
        axis_deg -= math.degrees(math.atan(slope))
    return float(axis_deg)


def joint_center_from_masks(
    upper_mask: np.ndarray, lower_mask: np.ndarray, axis_deg: float = 0.0
) -> tuple[float, float]:
    """Locate the joint centre from the two bone masks, given the joint axis.

    Working across the axis (for ``axis_deg = 0``: column by column), the joint space runs from
    the lowest upper-bone pixel edge to the highest lower-bone pixel edge. The centre lies in the
    middle of the range crossed by both bones, in the middle of the joint space there (averaged
    over the three central 1-px bins). This needs no assumption on which bone carries the convex
    head: on the real crops the upper bone ends in a concave base whose lips reach past its
    middle, so "the deepest point of the upper bone" would land on a lip.

    Args:
        upper_mask: ``(H, W)`` bool mask of the upper bone.
        lower_mask: ``(H, W)`` bool mask of the lower bone.
        axis_deg: joint axis angle (degrees, 0 = straight down).

    Returns:
        ``(x, y)`` of the joint centre in pixels.

    Raises:
        InputError: if a mask is empty or the bones share no column.
    """
    upper_mask, lower_mask = _check_masks(upper_mask, lower_mask)
    s, upper_edge, lower_edge = _facing_profiles(upper_mask, lower_mask, axis_deg)
    s_centre = 0.5 * (s[0] + s[-1])
    near = np.abs(s - s_centre) <= 1.0
    if not near.any():  # the shared range has a hole in its middle: take the nearest bins
        near = np.abs(s - s_centre) <= np.abs(s - s_centre).min() + 1.0
    t_centre = float(np.mean((upper_edge[near] + lower_edge[near]) / 2))
    axis = axis_vector(axis_deg)
    across = np.array([axis[1], -axis[0]])
    x, y = s_centre * across + t_centre * axis
    return float(x), float(y)


def joint_frame_from_masks(
    upper_mask: np.ndarray, lower_mask: np.ndarray, picture: np.ndarray | None = None
) -> tuple[tuple[float, float], float]:
    """The joint frame of a crop from its two bone masks: ``((x, y) centre, axis angle in degrees)``.

    The axis comes from :func:`joint_axis_from_masks`, the centre from
    :func:`joint_center_from_masks` across that axis. This is the one definition of the joint
    frame that ground truth and measurement share: pairs record their JSN at this centre along
    this axis of the baseline masks, and the quantifier uses the same function when it is given
    no centre, so anyone holding the baseline masks can recompute the frame exactly. ``picture``
    (default: the whole array) is what of the crop is picture, for a crop with a fill
    (:func:`joint_axis_from_masks`).
    """
    axis_deg = joint_axis_from_masks(upper_mask, lower_mask, picture=picture)
    return joint_center_from_masks(upper_mask, lower_mask, axis_deg), axis_deg
