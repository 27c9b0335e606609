"""Two reference JSN methods behind the quantifier's interface, for side-by-side tables.

- :func:`poc_quantify`: sub-pixel phase-only correlation per bone, in the spirit of Ou et al.
  (IEEE JBHI 2023): each bone's masked, tapered window of the baseline and the follow-up is
  phase-correlated (translation only, sub-pixel peak); JSN = the difference of the two bones'
  translations along the joint axis. Blind to rotation and magnification.
- :func:`ecc_quantify`: OpenCV's ``findTransformECC`` per bone with ``MOTION_EUCLIDEAN``
  (rotation + translation, no scale), masked by the dilated bone mask, initialised by global
  phase correlation (a fit that runs off the bone is reset to that start and flagged); JSN from
  the two rigid transforms as for the bundled quantifier.

Both take the arguments of :func:`~jsnsynth.quantify.quantifier.quantify_pair` and return a
:class:`~jsnsynth.quantify.quantifier.JsnResult` (no residual maps, reliability 1 unless the
method failed).
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from jsnsynth.picture import content_box, replicate_picture_edge
from jsnsynth.quantify.quantifier import (
    JsnResult,
    as_intensity,
    as_mask,
    check_bone_order,
    check_joint_frame,
    jsn_from_transforms,
    resolve_joint_frame,
)
from jsnsynth.quantify.register import bone_region, dilate, tapered_window, within_content
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM


def _prepare(baseline, followup, upper_mask, lower_mask, joint_center_xy, joint_axis_deg):
    base = as_intensity(baseline, "baseline")
    follow = as_intensity(followup, "follow-up")
    if base.shape != follow.shape:
        from jsnsynth.errors import InputError

        raise InputError(f"follow-up is {follow.shape}, baseline is {base.shape}")
    joint_center_xy, joint_axis_deg = check_joint_frame(joint_center_xy, joint_axis_deg, base.shape)
    upper = as_mask(upper_mask, "upper-bone", base.shape)
    lower = as_mask(lower_mask, "lower-bone", base.shape)
    # a crop padded to size: refilled and kept clear of, as the bundled quantifier does
    content = content_box(base, follow)
    center, joint_axis_deg = resolve_joint_frame(upper, lower, joint_center_xy, joint_axis_deg, content)
    check_bone_order(upper, lower, joint_axis_deg, "baseline")
    base, follow = replicate_picture_edge(base, content), replicate_picture_edge(follow, content)
    return base, follow, upper, lower, center, joint_axis_deg, content


def _result(jsn_px, pixel_spacing_mm, center, axis_deg, upper, lower, method, elapsed, ok=True):
    spacing = DEFAULT_PIXEL_SPACING_MM if pixel_spacing_mm is None else float(pixel_spacing_mm)
    return JsnResult(
        jsn_px=jsn_px,
        jsn_mm=jsn_px * spacing,
        pixel_spacing_mm=spacing,
        pixel_spacing_source="nominal" if pixel_spacing_mm is None else "option",
        joint_center_xy=center,
        joint_axis_deg=float(axis_deg),
        upper=upper,
        lower=lower,
        reliability=1.0 if ok else 0.0,
        mismatch=not ok,
        flags=[] if ok else ["method failed"],
        timings_s={"total": elapsed},
        method=method,
    )


def poc_quantify(
    baseline: np.ndarray,
    followup: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    pixel_spacing_mm: float | None = DEFAULT_PIXEL_SPACING_MM,
    followup_upper_mask: np.ndarray | None = None,
    followup_lower_mask: np.ndarray | None = None,
    joint_center_xy: tuple[float, float] | None = None,
    joint_axis_deg: float | None = None,
    dilate_px: int = 6,
) -> JsnResult:
    """JSN by per-bone sub-pixel phase-only correlation (translation per bone; see module doc)."""
    start = time.perf_counter()
    base, follow, upper, lower, center, joint_axis_deg, content = _prepare(
        baseline, followup, upper_mask, lower_mask, joint_center_xy, joint_axis_deg
    )
    shifts = {}
    for name, mask, other in (("upper", upper, lower), ("lower", lower, upper)):
        # a region keeps where the masks overlap, as these reference points always did (the
        # bundled method keeps a broad overlap out of both, bone_region): the other's own pixels
        window = tapered_window(bone_region(mask, other & ~mask, dilate_px, 1, content=content), 3.0, content=content)
        ref = (base - float(base[window > 0.5].mean())) * window
        mov = (follow - float(follow[window > 0.5].mean())) * window
        shift, _ = cv2.phaseCorrelate(ref.astype(np.float64), mov.astype(np.float64))
        shifts[name] = np.array(shift)
    cx, cy = center
    t_upper = Similarity(1.0, 0.0, float(shifts["upper"][0]), float(shifts["upper"][1]), cx, cy)
    t_lower = Similarity(1.0, 0.0, float(shifts["lower"][0]), float(shifts["lower"][1]), cx, cy)
    jsn_px = float((shifts["upper"] - shifts["lower"]) @ axis_vector(joint_axis_deg))
    return _result(jsn_px, pixel_spacing_mm, center, joint_axis_deg, t_upper, t_lower, "reference.poc",
                   time.perf_counter() - start)


#: Largest move (px) of a bone's mask centroid that ECC may make away from its global
#: phase-correlation start: past it the fit has left the bone (hundreds of pixels on a few
#: benchmark pairs), while repositioning, flexion and JSN change move a centroid by under 10 px.
ECC_MAX_MOVE_PX = 20.0


def _moved_px(warp: np.ndarray, start: np.ndarray, mask: np.ndarray) -> float:
    """Distance between where two 2x3 warps put the centroid of ``mask``."""
    ys, xs = np.nonzero(mask)
    centroid = np.array([xs.mean(), ys.mean(), 1.0])
    difference = (np.asarray(warp, np.float64) - np.asarray(start, np.float64)) @ centroid
    return float(np.hypot(difference[0], difference[1]))


def ecc_quantify(
    baseline: np.ndarray,
    followup: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    pixel_spacing_mm: float | None = DEFAULT_PIXEL_SPACING_MM,
    followup_upper_mask: np.ndarray | None = None,
    followup_lower_mask: np.ndarray | None = None,
    joint_center_xy: tuple[float, float] | None = None,
    joint_axis_deg: float | None = None,
    dilate_px: int = 4,
) -> JsnResult:
    """JSN by OpenCV ECC per bone, ``MOTION_EUCLIDEAN`` (rigid per bone; see module doc)."""
    start = time.perf_counter()
    base, follow, upper, lower, center, joint_axis_deg, content = _prepare(
        baseline, followup, upper_mask, lower_mask, joint_center_xy, joint_axis_deg
    )
    hann = cv2.createHanningWindow(base.shape[::-1], cv2.CV_32F)
    union = (dilate(upper | lower, 8) & within_content(base.shape, content, 0)).astype(np.float32)
    global_shift, _ = cv2.phaseCorrelate((base * hann * union).astype(np.float64), (follow * hann * union).astype(np.float64))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
    transforms = {}
    ok = True
    cx, cy = center
    for name, mask, other in (("upper", upper, lower), ("lower", lower, upper)):
        region = bone_region(mask, other & ~mask, dilate_px, 1, content=content).astype(np.uint8)  # as in poc_quantify
        warp = np.array([[1, 0, global_shift[0]], [0, 1, global_shift[1]]], dtype=np.float32)
        start_warp = warp.copy()
        try:
            # template = baseline, input = follow-up: input(warp(x)) ~ template(x)
            _, warp = cv2.findTransformECC(base, follow, warp, cv2.MOTION_EUCLIDEAN, criteria, region, 5)
        except cv2.error:
            ok = False
        if _moved_px(warp, start_warp, mask) > ECC_MAX_MOVE_PX:
            # diverged (hundreds of pixels on a few benchmark pairs): keep the start, flag the pair
            warp, ok = start_warp, False
        angle = math.degrees(math.atan2(float(warp[1, 0]), float(warp[0, 0])))
        moved = warp[:, :2].astype(np.float64) @ np.array([cx, cy]) + warp[:, 2]
        transforms[name] = Similarity(1.0, angle, float(moved[0] - cx), float(moved[1] - cy), cx, cy)
    jsn_px = jsn_from_transforms(transforms["upper"], transforms["lower"], center, joint_axis_deg)
    return _result(jsn_px, pixel_spacing_mm, center, joint_axis_deg, transforms["upper"], transforms["lower"],
                   "reference.ecc", time.perf_counter() - start, ok)
