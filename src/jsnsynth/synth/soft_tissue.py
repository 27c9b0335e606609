"""How the soft tissue of a finger moves between visits: with the bones that carry it.

A finger's soft tissue envelops its phalanges: when a bone flexes or slides, the tissue around
it goes with it; only across the joint does the tissue deform. Moving the soft tissue with the
hand's global pose alone would leave a flexed bone rotating inside a static envelope (at 6 deg,
a bone end 100 px from the joint centre would move 10 px through its own soft tissue).
"""

from __future__ import annotations

import cv2
import numpy as np

from jsnsynth.synth.geometry import Similarity, axis_vector

#: Default half-width (mm) of the band across the joint line in which the soft tissue passes from
#: the upper bone's motion to the lower bone's (about the length of the joint's capsule).
SOFT_TISSUE_BLEND_MM = 2.0


def soft_tissue_sources(
    shape: tuple[int, int],
    upper_pose: Similarity,
    lower_pose: Similarity,
    hand_pose: Similarity,
    joint_center_xy: tuple[float, float],
    joint_axis_deg: float,
    blend_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline position ``(x, y)`` of the soft tissue seen at every follow-up pixel.

    The soft tissue of a finger is carried by its phalanges: above the joint line it moves with
    the upper bone, below it with the lower one, and across the joint it passes smoothly from
    one to the other (raised cosine over ``+-blend_px`` along the joint axis). The band is placed
    in the hand's frame: a follow-up pixel ``q`` is taken back to the baseline by
    ``w T_upper^-1(q) + (1 - w) T_lower^-1(q)`` with ``w`` the upper weight at ``hand_pose^-1(q)``.
    When both bones share the hand's pose this is that pose exactly; a bone flexed inside a
    soft tissue that stays put would instead leave its own soft-tissue envelope behind.
    """
    h, w = shape
    # every map here is affine in the follow-up pixel (x, y): each is built from one row and one
    # column by broadcasting, never from a full coordinate grid
    xs = np.arange(w, dtype=np.float64)[None, :]
    ys = np.arange(h, dtype=np.float64)[:, None]
    hand = hand_pose.inverse().matrix()
    normal = axis_vector(joint_axis_deg) @ hand  # (along-axis coordinate in the hand's frame) = normal . (x, y, 1)
    normal[2] -= float(np.asarray(joint_center_xy, dtype=np.float64) @ axis_vector(joint_axis_deg))
    ramp = np.clip(((normal[0] * xs + normal[1] * ys + normal[2]) + blend_px) / (2.0 * blend_px), 0.0, 1.0)
    upper_weight = 0.5 + 0.5 * np.cos(np.pi * ramp)  # 1 above the band, 0 below
    upper, lower = upper_pose.inverse().matrix(), lower_pose.inverse().matrix()
    sources = []
    for row in range(2):
        from_lower = lower[row, 0] * xs + lower[row, 1] * ys + lower[row, 2]
        from_upper = upper[row, 0] * xs + upper[row, 1] * ys + upper[row, 2]
        sources.append(from_lower + upper_weight * (from_upper - from_lower))
    return sources[0], sources[1]


def warp_soft_tissue(
    soft: np.ndarray,
    upper_pose: Similarity,
    lower_pose: Similarity,
    hand_pose: Similarity,
    joint_center_xy: tuple[float, float],
    joint_axis_deg: float,
    blend_px: float,
) -> np.ndarray:
    """The soft-tissue layer moved with the bones that carry it (:func:`soft_tissue_sources`), float32.

    Resampled with OpenCV's bicubic ``remap`` and edge extension: the soft tissue carries no
    truth, so its 1/32-px position table is harmless (a smooth layer's error stays far below the
    image noise), and it keeps scipy out of the phantom workers.
    """
    xs, ys = soft_tissue_sources(soft.shape, upper_pose, lower_pose, hand_pose, joint_center_xy, joint_axis_deg, blend_px)
    moved = cv2.remap(np.asarray(soft, dtype=np.float32), xs.astype(np.float32), ys.astype(np.float32),
                      interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return np.maximum(moved, 0.0)  # the bicubic kernel can overshoot below 0 at a step
