"""The data model: a finger-joint crop as three attenuation layers with masks and geometry.

Attenuation is the dimensionless line integral ``a = ∫ mu dl`` along each ray; layers add in the
attenuation domain (see :mod:`jsnsynth.synth.xray` for the mapping to a radiograph).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import axis_vector

#: Nominal pixel spacing of the finger-joint crops (the registration paper's 0.175 mm/px).
DEFAULT_PIXEL_SPACING_MM = 0.175


@dataclass
class JointLayers:
    """One joint crop as soft-tissue, upper-bone and lower-bone attenuation layers.

    Attributes:
        soft: ``(H, W)`` float32 soft-tissue attenuation, >= 0.
        upper: ``(H, W)`` float32 attenuation of the upper bone (e.g. metacarpal head), >= 0,
            zero outside ``upper_mask``.
        lower: ``(H, W)`` float32 attenuation of the lower bone (e.g. proximal phalanx base).
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


def joint_center_from_masks(upper_mask: np.ndarray, lower_mask: np.ndarray) -> tuple[float, float]:
    """Locate the joint centre of a vertically stored joint from its two bone masks.

    The centre's x is the middle of the range of columns crossed by both bones; its y is the
    middle of the joint space there (lowest upper-bone pixel to highest lower-bone pixel,
    averaged over the five central columns). This needs no assumption on which bone carries the
    convex head: on the real crops the upper bone ends in a concave base whose lips reach lower
    than its middle, so "the deepest point of the upper bone" would land on a lip.

    Args:
        upper_mask: ``(H, W)`` bool mask of the upper bone.
        lower_mask: ``(H, W)`` bool mask of the lower bone.

    Returns:
        ``(x, y)`` of the joint centre in pixels.

    Raises:
        InputError: if a mask is empty or the bones share no column.
    """
    upper_mask = np.asarray(upper_mask, dtype=bool)
    lower_mask = np.asarray(lower_mask, dtype=bool)
    if not upper_mask.any():
        raise InputError("the upper-bone mask is empty")
    if not lower_mask.any():
        raise InputError("the lower-bone mask is empty")
    rows = np.arange(upper_mask.shape[0])[:, None]
    upper_bottom = np.where(upper_mask, rows, -1).max(axis=0)
    lower_top = np.where(lower_mask, rows, upper_mask.shape[0]).min(axis=0)
    both = (upper_bottom >= 0) & (lower_top < upper_mask.shape[0])
    if not both.any():
        raise InputError("the upper and lower bone masks share no column: cannot place the joint")
    cols = np.flatnonzero(both)
    x = 0.5 * (cols[0] + cols[-1])
    central = cols[np.abs(cols - x) <= 2.0]
    if central.size == 0:  # the shared range has a hole in its middle: take the nearest columns
        central = cols[np.abs(cols - x) <= np.abs(cols - x).min() + 2.0]
    y = float(np.mean((upper_bottom[central] + 0.5 + lower_top[central] - 0.5) / 2.0))
    return float(x), y
