"""Similarity transforms in image coordinates, the one geometric convention of the toolkit.

Coordinates are ``(x, y) = (column, row)`` in pixels, the centre of the top-left pixel at
``(0, 0)``, ``y`` pointing down. A :class:`Similarity` about a centre ``c`` maps a point ``p`` to

    p' = c + scale * R(angle) (p - c) + (dx, dy),   R(a) = [[cos a, -sin a], [sin a, cos a]]

so a positive angle turns +x towards +y (clockwise on screen, because y points down), and
``(dx, dy)`` is exactly the displacement of the centre itself. Per-bone transforms from a
baseline to a follow-up are recorded in this form about the joint centre, so ``dy`` is the
displacement of the joint centre along a vertical joint axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """A 2-D similarity transform (scale, rotation, translation) about a fixed centre.

    Attributes:
        scale: isotropic magnification, 1 for none.
        angle_deg: rotation in degrees, positive turns +x towards +y (clockwise on screen).
        dx: displacement of the centre along x, pixels.
        dy: displacement of the centre along y, pixels.
        cx: x of the centre of rotation and scaling, pixels.
        cy: y of the centre of rotation and scaling, pixels.
    """

    scale: float = 1.0
    angle_deg: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0

    def matrix(self) -> np.ndarray:
        """Return the 2x3 forward affine matrix ``A`` with ``p' = A @ [x, y, 1]``."""
        a = math.radians(self.angle_deg)
        c, s = math.cos(a), math.sin(a)
        lin = self.scale * np.array([[c, -s], [s, c]])
        centre = np.array([self.cx, self.cy])
        offset = centre - lin @ centre + np.array([self.dx, self.dy])
        return np.hstack([lin, offset[:, None]])

    def apply(self, points_xy: np.ndarray) -> np.ndarray:
        """Map an ``(..., 2)`` array of ``(x, y)`` points through the transform."""
        pts = np.asarray(points_xy, dtype=np.float64)
        m = self.matrix()
        return pts @ m[:, :2].T + m[:, 2]

    def inverse(self) -> "Similarity":
        """Return the inverse transform, expressed about the image of the centre."""
        new_cx, new_cy = self.cx + self.dx, self.cy + self.dy
        return Similarity(
            scale=1.0 / self.scale,
            angle_deg=-self.angle_deg,
            dx=self.cx - new_cx,
            dy=self.cy - new_cy,
            cx=new_cx,
            cy=new_cy,
        )

    def then(self, other: "Similarity") -> "Similarity":
        """Return the transform ``other ∘ self`` (apply ``self`` first), about ``self``'s centre."""
        moved_centre = other.apply(np.array([self.cx + self.dx, self.cy + self.dy]))
        return Similarity(
            scale=self.scale * other.scale,
            angle_deg=self.angle_deg + other.angle_deg,
            dx=float(moved_centre[0] - self.cx),
            dy=float(moved_centre[1] - self.cy),
            cx=self.cx,
            cy=self.cy,
        )

    def about(self, cx: float, cy: float) -> "Similarity":
        """Return the same mapping re-expressed about another centre ``(cx, cy)``."""
        moved = self.apply(np.array([cx, cy]))
        return Similarity(self.scale, self.angle_deg, float(moved[0] - cx), float(moved[1] - cy), cx, cy)

    def to_dict(self) -> dict:
        """Return the parameters as a plain dict of floats (for JSON records)."""
        # flat fields: a comprehension is ~10x cheaper than dataclasses.asdict's recursive deep copy
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, record: dict) -> "Similarity":
        """Build a transform from :meth:`to_dict` output."""
        return cls(**{k: float(record[k]) for k in ("scale", "angle_deg", "dx", "dy", "cx", "cy")})

    @classmethod
    def identity(cls, cx: float = 0.0, cy: float = 0.0) -> "Similarity":
        """Return the identity about ``(cx, cy)``."""
        return cls(1.0, 0.0, 0.0, 0.0, cx, cy)


def axis_vector(axis_angle_deg: float) -> np.ndarray:
    """Unit ``(x, y)`` vector of a joint axis given its angle from +y (the same sign as Similarity).

    An angle of 0 is the stored orientation: the axis points straight down, from the upper bone to
    the lower bone.
    """
    a = math.radians(axis_angle_deg)
    return np.array([-math.sin(a), math.cos(a)])


def frame_under_affine(
    matrix: np.ndarray, center_xy: tuple[float, float], axis_angle_deg: float
) -> tuple[tuple[float, float], float]:
    """A joint frame (centre, axis angle as :func:`axis_vector` takes it) carried by the ``2x3``
    pixel-coordinate affine ``matrix`` that moved its image (``cv2.warpAffine``'s, as
    ``cv2.getRotationMatrix2D`` gives it): where a crop turned upright has its joint centre and
    axis, so that JSN is read there as it was before the turn."""
    matrix = np.asarray(matrix, dtype=np.float64)
    center = matrix[:, :2] @ np.asarray(center_xy, dtype=np.float64) + matrix[:, 2]
    axis = matrix[:, :2] @ axis_vector(axis_angle_deg)
    return (float(center[0]), float(center[1])), math.degrees(math.atan2(-axis[0], axis[1]))
