"""A tiny analytic two-bone joint rendered exactly under any per-bone pose.

Used by the quantifier's tests and examples where an exact ground truth is needed without the
full phantom: each bone is a smooth-edged capsule with a cortical rim and a trabecular-like
texture defined in bone-local continuous coordinates, so the bone rendered under a pose ``T``
is exactly the baseline bone moved by ``T``. It is not a realistic radiograph (see
:mod:`jsnsynth.synth.phantom` for that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.xray import ImagingParams, render_radiograph


@dataclass(frozen=True)
class ToyJoint:
    """Geometry of the toy joint (pixels)."""

    size_px: int = 96
    half_width_px: float = 14.0
    gap_px: float = 8.0
    edge_px: float = 0.6
    bone_attenuation: float = 0.6
    rim_attenuation: float = 0.35
    soft_attenuation: float = 0.5

    @property
    def center_xy(self) -> tuple[float, float]:
        """Joint centre: the middle of the gap between the two bone heads."""
        return (self.size_px / 2.0 - 0.3, self.size_px / 2.0 + 0.2)


def _capsule_distance(x: np.ndarray, y: np.ndarray, half_width: float, head_y: float, upward: bool) -> np.ndarray:
    """Signed distance to a half-infinite capsule whose round head is at ``head_y``."""
    centre_y = head_y - half_width if not upward else head_y + half_width
    beyond = (y > centre_y) if not upward else (y < centre_y)
    shaft = np.abs(x) - half_width
    head = np.hypot(x, y - centre_y) - half_width
    return np.where(beyond, head, shaft)


def _bone(joint: ToyJoint, x: np.ndarray, y: np.ndarray, upper: bool) -> tuple[np.ndarray, np.ndarray]:
    cx, cy = joint.center_xy
    lx, ly = x - cx, y - cy
    head = -joint.gap_px / 2.0 if upper else joint.gap_px / 2.0
    dist = _capsule_distance(lx, ly, joint.half_width_px, head, upward=not upper)
    inside = 1.0 / (1.0 + np.exp(dist / joint.edge_px))
    phase = 0.7 if upper else 2.1
    texture = 1.0 + 0.12 * np.sin(0.55 * lx + 0.31 * ly + phase) + 0.08 * np.cos(0.23 * lx - 0.61 * ly + 2 * phase)
    rim = joint.rim_attenuation * np.exp(-((dist + 1.5) / 1.3) ** 2)
    return (joint.bone_attenuation * texture * inside + rim * inside), dist < 0


def render_toy(
    joint: ToyJoint = ToyJoint(),
    upper_pose: Similarity | None = None,
    lower_pose: Similarity | None = None,
    soft_pose: Similarity | None = None,
) -> dict[str, np.ndarray]:
    """Render the toy joint's layers with each part moved by its pose (baseline -> follow-up).

    Returns:
        dict with float64 ``soft``, ``upper``, ``lower`` attenuation and bool ``upper_mask``,
        ``lower_mask`` (the moved supports).
    """
    n = joint.size_px
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for name, pose in (("upper", upper_pose), ("lower", lower_pose), ("soft", soft_pose)):
        if pose is None:
            px, py = xs, ys
        else:
            back = pose.inverse().apply(np.stack([xs, ys], axis=-1))
            px, py = back[..., 0], back[..., 1]
        if name == "soft":
            cx, cy = joint.center_xy
            out["soft"] = joint.soft_attenuation * np.exp(-(((px - cx) / (0.45 * n)) ** 2)) * (1 + 0.1 * np.sin(py / 9.0))
        else:
            values, mask = _bone(joint, px, py, upper=name == "upper")
            out[name], out[f"{name}_mask"] = values, mask
    return out


def toy_pair(
    jsn_px: float,
    global_pose: Similarity | None = None,
    upper_flexion_deg: float = 0.0,
    lower_flexion_deg: float = 0.0,
    baseline_imaging: ImagingParams = ImagingParams(),
    followup_imaging: ImagingParams = ImagingParams(),
    joint: ToyJoint = ToyJoint(),
) -> dict:
    """A toy baseline/follow-up pair with exactly known per-bone transforms (contract-3 truth).

    ``T_upper = G o shift(d) o flex_upper`` and ``T_lower = G o flex_lower`` about the joint
    centre, the soft tissue moved by ``G``.

    Returns:
        dict with ``baseline``, ``followup`` (float display images), ``upper_mask``,
        ``lower_mask``, ``followup_upper_mask``, ``followup_lower_mask``, ``upper``, ``lower``
        (true Similarity transforms), ``center_xy`` and ``jsn_px``.
    """
    cx, cy = joint.center_xy
    g = global_pose.about(cx, cy) if global_pose is not None else Similarity.identity(cx, cy)
    upper = Similarity(1.0, upper_flexion_deg, 0.0, jsn_px, cx, cy).then(g)
    lower = Similarity(1.0, lower_flexion_deg, 0.0, 0.0, cx, cy).then(g)
    base = render_toy(joint)
    follow = render_toy(joint, upper, lower, g)
    return {
        "baseline": render_radiograph(base["soft"] + base["upper"] + base["lower"], baseline_imaging),
        "followup": render_radiograph(follow["soft"] + follow["upper"] + follow["lower"], followup_imaging),
        "upper_mask": base["upper_mask"],
        "lower_mask": base["lower_mask"],
        "followup_upper_mask": follow["upper_mask"],
        "followup_lower_mask": follow["lower_mask"],
        "upper": upper,
        "lower": lower,
        "center_xy": (cx, cy),
        "jsn_px": jsn_px,
    }
