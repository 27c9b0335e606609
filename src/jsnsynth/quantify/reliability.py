"""Reliability of a registration: residual maps, a noise estimate, a score and a mismatch flag.

The registration paper showed clinicians the masked residual of each bone before and after
alignment ("loss visualisation"); :func:`residual_maps` computes those maps on the raw (not
pre-smoothed) images and :func:`save_residual_figure` draws them. :func:`assess_reliability`
turns them into numbers:

- ``residual_ratio``: RMS residual after alignment over the expected noise of a difference of
  two images, ``sqrt(sigma_b^2 + sigma_f^2 + floor^2)``, where the sigmas are estimated from
  each image (Immerkaer's Laplacian estimator) and ``floor`` allows for model error (soft
  tissue that does not move with the bone, display nonlinearity), in proportion to the
  baseline's contrast in the bone regions (``RESIDUAL_FLOOR_FRACTION``); all in the follow-up's
  intensity units (the baseline's terms times the ratio of the two images' contrasts over the
  bones), as the residual is, so that visits stored at different scales (12 and 16 significant
  bits) are judged alike. About 1 for a good fit.
- ``explained``: the share of the aligned follow-up's variance in a bone region that a quadratic
  of the baseline's intensities explains. The residual ratio cannot tell a follow-up that holds
  nothing of the baseline (noise, another image): its own noise estimate then grows with it.
- ``clipped``: the share of a bone region where a display window clipped either image.
- convergence of Gauss-Newton, condition of the geometric Hessian, plausibility of the scale,
  and the disagreement between the coarse and the fine transform.

score = exp(-max(0, worst ratio - 1.5) / 2) x 0.5 if a bone did not converge; a pair is flagged
as a mismatch when a ratio exceeds ``MISMATCH_RATIO``, a bone did not converge, the Hessian is
singular, the scale is implausible, coarse and fine disagree by more than ``MISMATCH_JUMP_PX`` (in
proportion on pictures larger than 256 px),
a display window clipped more than ``MAX_CLIPPED_FRACTION`` of a bone region, or the baseline
explains less than ``MIN_EXPLAINED`` of a bone region's follow-up (score 0 for ill-posed fits and
for the last).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from jsnsynth.errors import InputError, OutputError
from jsnsynth.figures import figure_bytes, new_figure
from jsnsynth.quantify.register import (
    clipped_pixels,
    every_other_pixel,
    mask_centroid,
    photometric_basis,
    region_pixels,
    solve_least_squares,
)
from jsnsynth.quantify.warp import sample_spline_values, spline_coefficients, warp_positions

#: Model-error allowance added to the noise when judging residuals, as a fraction of the
#: baseline's intensity SD over the bone regions: 0.01 at the median SD of the benchmark's
#: 16-bit phantoms (0.118) and of the real 8-bit crops (0.113). Relative, so that the same
#: picture stored with 12 or 10 significant bits in a 16-bit container (its values 16 or 64 times
#: smaller) is judged alike: with an absolute floor its residual ratios fell 10-40 fold and no
#: pair could be flagged.
RESIDUAL_FLOOR_FRACTION = 0.087
#: Residual ratio above which a pair is a mismatch.
MISMATCH_RATIO = 6.0
#: Coarse/fine disagreement of a bone's displacement at its region's centroid (px) above which a
#: pair is a mismatch, on the reference crops and coarser ones; in proportion on finer ones
#: (:func:`~jsnsynth.quantify.register.limit_scale`).
MISMATCH_JUMP_PX = 3.0
#: Condition number of the normalised geometric Hessian above which the fit is ill-posed.
MAX_CONDITION = 1e7
#: A fit that stopped at the iteration cap still counts as converged if its last step was below this (px).
MAX_LAST_STEP_PX = 0.05
#: Plausible per-bone scale between visits.
SCALE_RANGE = (0.75, 1.33)
#: Share of a bone region that a display window may clip, in either image, before the pair is a
#: mismatch: a clipped bone has no edge profile left to align, and follow-ups whose window clipped
#: 13-32 % of the bone regions read 0.07-0.57 px wide of the truth, unflagged, 10 x their
#: standard error. The benchmark's real-layer images: at most 3 %.
MAX_CLIPPED_FRACTION = 0.1
#: Share of a bone region's aligned follow-up variance that the baseline must explain (see the
#: module docstring). Legitimate pairs: at least 0.92 on synthetic pairs at 2-3 thousand photons
#: per pixel and 0.60 on the real visit pairs of 15 series (median 0.88); a follow-up of noise: 0.00.
MIN_EXPLAINED = 0.3


@dataclass
class ReliabilityReport:
    """Numbers behind the reliability score (see the module docstring)."""

    score: float
    mismatch: bool
    flags: list[str] = field(default_factory=list)
    noise_std: float = float("nan")
    residual_ratio: dict[str, float] = field(default_factory=dict)
    condition: dict[str, float] = field(default_factory=dict)
    disagreement_px: dict[str, float] = field(default_factory=dict)


def noise_std_estimate(image: np.ndarray, region: np.ndarray | None = None) -> float:
    """Immerkaer's fast noise estimate: ``sqrt(pi/2)/6 * mean |I * N|`` with N the 3x3 Laplacian difference.

    Restricted to ``region`` when given. Overestimates a little on strongly curved structures.
    """
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = np.abs(cv2.filter2D(np.asarray(image, dtype=np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT))
    inner = np.ones(response.shape, dtype=bool)
    inner[:1, :] = inner[-1:, :] = inner[:, :1] = inner[:, -1:] = False
    if region is not None:
        inner &= region
    if not inner.any():
        return float("nan")
    return float(math.sqrt(math.pi / 2.0) / 6.0 * np.mean(response[inner]))


def _photometric_residual(base_values: np.ndarray, values: np.ndarray, basis: np.ndarray,
                          fitted: np.ndarray | slice = slice(None)) -> np.ndarray:
    """``values - base_values`` less its least-squares fit on ``basis`` (the intensity
    polynomial), fitted on the ``fitted`` pixels (all by default)."""
    difference = values - base_values
    return difference - basis @ solve_least_squares(basis[fitted], difference[fitted])


def residual_maps(
    base: np.ndarray,
    follow: np.ndarray,
    regions: dict[str, np.ndarray],
    params: dict[str, np.ndarray],
    center_xy: tuple[float, float],
    photometric_order: int = 2,
    keep_maps: bool = True,
    follow_coef: np.ndarray | None = None,
    clipping: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Per-bone residuals of the raw images before (identity) and after (fitted) alignment.

    Args:
        base, follow: float32 intensity images.
        regions: bone name -> bool region of baseline pixels.
        params: bone name -> ``(a, b, tx, ty)`` about ``center_xy``.
        center_xy: centre of the transforms.
        photometric_order: intensity polynomial removed before taking residuals.
        keep_maps: return full-frame maps (NaN outside the region); else an empty dict.
        follow_coef: the follow-up's spline coefficients, when already computed.
        clipping: the baseline's and the follow-up's display clipping levels
            (:func:`~jsnsynth.quantify.register.clipping_levels`), for the ``clipped`` statistic.

    Returns:
        ``(maps, stats)``: maps ``"<bone>_before"``/``"<bone>_after"``; stats per bone with
        ``rms_before``, ``rms_after``, ``explained`` (the share of the aligned follow-up's
        variance that the intensity polynomial of the baseline explains) and ``clipped`` (the
        share of the region where either image sits at a clipping level; 0 without
        ``clipping``).
    """
    coef = spline_coefficients(follow) if follow_coef is None else follow_coef
    cx, cy = center_xy
    maps: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name, region in regions.items():
        # the statistics come from the pixels on a checkerboard (half of them, as precise for an
        # RMS of thousands), the same whether or not the maps are kept; the maps show them all
        index, xs64, ys64 = region_pixels(region if keep_maps else every_other_pixel(region))
        counted = every_other_pixel(region)[region] if keep_maps else slice(None)
        base_values = base.ravel().take(index).astype(np.float64)
        wx, wy = warp_positions(params[name], cx, cy, xs64, ys64)
        value = sample_spline_values(coef, wx, wy).astype(np.float64)
        # column-major: the least-squares fits' dot products run over contiguous columns
        photo = photometric_basis(base_values, photometric_order).astype(np.float64, order="F")
        before = _photometric_residual(base_values, follow.ravel().take(index).astype(np.float64), photo, counted)
        after = _photometric_residual(base_values, value, photo, counted)
        mean_square_after = float(np.mean(after[counted] ** 2))
        clipped = 0.0
        if clipping is not None:
            clipped = float(np.mean(clipped_pixels(base_values[counted], value[counted], *clipping)))
        stats[name] = {"rms_before": float(np.sqrt(np.mean(before[counted] ** 2))),
                       "rms_after": math.sqrt(mean_square_after),
                       # a follow-up flat over the region holds nothing of the baseline
                       "explained": _explained_share(mean_square_after, float(np.var(value[counted]))),
                       "clipped": clipped}
        if keep_maps:
            for key, values in (("before", before), ("after", after)):
                frame = np.full(base.shape, np.nan, dtype=np.float32)
                frame[region] = values
                maps[f"{name}_{key}"] = frame
    return maps, stats


def _explained_share(residual_mean_square: float, variance: float) -> float:
    """Share of a follow-up region's variance that the intensity polynomial of the baseline
    explains; 0 for a region without variance (flat: nothing of the baseline is in it)."""
    if not variance > 1e-20:
        return 0.0
    return 1.0 - residual_mean_square / variance


def _disagreement_px(p_a: np.ndarray, p_b: np.ndarray, region: np.ndarray, center_xy: tuple[float, float]) -> float:
    """How far apart two ``(a, b, tx, ty)`` transforms put the centroid of ``region`` (px).

    The centroid is where the coarse stage's per-bone phase correlation measures, so a large
    value means the fine fit left the coarse solution, not merely that the bone rotated.
    """
    px, py = mask_centroid(region)
    px, py = np.array([px]), np.array([py])
    ax, ay = warp_positions(p_a, center_xy[0], center_xy[1], px, py)
    bx, by = warp_positions(p_b, center_xy[0], center_xy[1], px, py)
    return float(np.hypot(ax - bx, ay - by)[0])


def assess_reliability(
    base: np.ndarray,
    follow: np.ndarray,
    regions: dict[str, np.ndarray],
    fits: dict[str, Any],
    coarse: dict[str, np.ndarray],
    stats: dict[str, dict[str, Any]],
    center_xy: tuple[float, float],
    pixel_limit_scale: float = 1.0,
) -> ReliabilityReport:
    """Score a registration and decide whether it is a mismatch (see the module docstring).

    ``pixel_limit_scale``: :func:`~jsnsynth.quantify.register.limit_scale` of the images'
    resolution, which scales the coarse/fine disagreement allowed (``MISMATCH_JUMP_PX``).

    ``fits`` are the bones' final fits (``params``, ``hessian``: the geometric Gauss-Newton
    Hessian per lever length with the photometric terms profiled out, ``converged``,
    ``last_step_px``); ``stats`` the :func:`residual_maps` statistics.
    """
    union = regions["upper"] | regions["lower"]
    # the residual is in the follow-up's intensity units, and so is what it is judged against:
    # the baseline's noise and contrast are taken there by the ratio of the two images' SDs over
    # the baseline's bone regions (the follow-up's unaligned: a contrast, which a second visit's
    # moves hardly change). A visit stored with 12 significant bits beside one with 16 had its
    # ratios scaled 16-fold: a sound pair flagged, or a follow-up of another joint passed with
    # reliability 1. A flat follow-up keeps the baseline's units; the 'explained' test names it.
    base_contrast, follow_contrast = float(np.std(base[union])), float(np.std(follow[union]))
    to_follow_units = follow_contrast / base_contrast if base_contrast > 0 and follow_contrast > 0 else 1.0
    noise = math.hypot(to_follow_units * noise_std_estimate(base, union), noise_std_estimate(follow, union))
    expected = math.hypot(noise, RESIDUAL_FLOOR_FRACTION * to_follow_units * base_contrast)
    flags: list[str] = []
    report = ReliabilityReport(score=1.0, mismatch=False, noise_std=noise)
    meaningless = False  # a fit whose numbers mean nothing: reliability 0
    max_jump_px = MISMATCH_JUMP_PX * pixel_limit_scale
    for name, fit in fits.items():
        ratio = stats[name]["rms_after"] / expected if expected > 0 else math.inf
        report.residual_ratio[name] = ratio
        try:
            condition = float(np.linalg.cond(fit.hessian))
        except np.linalg.LinAlgError:
            condition = float("inf")
        report.condition[name] = condition
        jump = _disagreement_px(coarse[name], fit.params, regions[name], center_xy)
        report.disagreement_px[name] = jump
        scale = math.hypot(fit.params[0], fit.params[1])
        if not fit.converged and not fit.last_step_px < MAX_LAST_STEP_PX:
            flags.append(f"{name}: not converged (last step {fit.last_step_px:.3f} px)")
        if ratio > MISMATCH_RATIO:
            flags.append(f"{name}: residual {ratio:.1f}x the noise")
        if not condition < MAX_CONDITION:
            flags.append(f"{name}: ill-conditioned fit")
            meaningless = True
        if jump > max_jump_px:
            flags.append(f"{name}: fine fit moved {jump:.1f} px from the coarse one")
        if not SCALE_RANGE[0] < scale < SCALE_RANGE[1]:
            flags.append(f"{name}: implausible scale {scale:.3f}")
            meaningless = True
        if stats[name]["clipped"] > MAX_CLIPPED_FRACTION:
            flags.append(f"{name}: {stats[name]['clipped']:.0%} of the region clipped by a display window")
        if not stats[name]["explained"] >= MIN_EXPLAINED:
            flags.append(f"{name}: the follow-up does not resemble the baseline there "
                         f"(the baseline explains {max(stats[name]['explained'], 0.0):.0%} of it)")
            meaningless = True
    worst = max(report.residual_ratio.values())
    score = math.exp(-max(0.0, worst - 1.5) / 2.0)
    if any(not fit.converged and not fit.last_step_px < MAX_LAST_STEP_PX for fit in fits.values()):
        score *= 0.5
    report.mismatch = bool(flags)
    report.score = 0.0 if meaningless else score
    report.flags = flags
    return report


#: Figure formats by file suffix.
FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}


def figure_format(path: str | Path) -> str:
    """The figure format a path asks for by its suffix (PNG without one).

    Raises:
        OutputError: an unknown suffix.
    """
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "png"
    if suffix not in FIGURE_FORMATS:
        raise OutputError(f"{path}: figures are written as {', '.join(sorted(FIGURE_FORMATS))}, not {suffix}")
    return FIGURE_FORMATS[suffix]


def save_residual_figure(result: Any, baseline: np.ndarray, path: str | Path) -> Path:
    """Draw each bone's residual before and after alignment next to the baseline.

    Args:
        result: a :class:`~jsnsynth.quantify.quantifier.JsnResult` with residual maps.
        baseline: the baseline image (any accepted dtype) for the left column.
        path: output file, written atomically, in the format of its suffix
            (:data:`FIGURE_FORMATS`; PNG when it has none).

    Raises:
        OutputError: a suffix that is not a figure format.
        InputError: a baseline that is not an image the quantifier takes, or not the size of the
            result's residual maps.
        ValueError: a result without residual maps (``keep_residuals=False``).
    """
    from jsnsynth.synth.io import write_bytes_atomic

    data = residual_figure_bytes(result, baseline, figure_format(path))
    path = Path(path)
    write_bytes_atomic(path, data)
    return path


def residual_figure_bytes(result: Any, baseline: np.ndarray, fmt: str = "png") -> bytes:
    """The figure of :func:`save_residual_figure` as the bytes of a ``fmt`` file (a format of
    :data:`FIGURE_FORMATS`), for a caller that writes it together with other outputs.

    Raises:
        InputError: see :func:`save_residual_figure`.
        ValueError: a result without residual maps (``keep_residuals=False``).
    """
    from jsnsynth.quantify.quantifier import as_intensity  # the quantifier imports this module

    if not result.residuals:
        raise ValueError("the result holds no residual maps: quantify the pair with keep_residuals=True")
    base = as_intensity(baseline, "baseline")
    maps = result.residuals
    shape = next(iter(maps.values())).shape
    if base.shape != shape:  # another image's: it was drawn cropped, or blank, without a word
        raise InputError(f"baseline is {base.shape[1]}x{base.shape[0]}, the result's residual maps "
                         f"{shape[1]}x{shape[0]}: give the baseline the pair was measured on")
    # one colour scale per column: the after-alignment residual is often 10x smaller than before
    limits = {
        key: max([float(np.nanpercentile(np.abs(maps[k]), 99)) for k in maps if k.endswith(key)] + [1e-6])
        for key in ("before", "after")
    }
    fig = new_figure(figsize=(10.5, 6.4), constrained_layout=True)
    axes = fig.subplots(2, 3)
    handles = {}
    for row, name in enumerate(("upper", "lower")):
        axes[row, 0].imshow(base, cmap="gray", vmin=0, vmax=1)
        if f"{name}_before" in maps:
            axes[row, 0].contour(np.isfinite(maps[f"{name}_before"]), levels=[0.5], colors="orange", linewidths=0.8)
        axes[row, 0].plot(*result.joint_center_xy, "c+", ms=10)
        axes[row, 0].set_title(f"baseline, {name} region", fontsize=9)
        for col, key in ((1, "before"), (2, "after")):
            image = maps.get(f"{name}_{key}")
            if image is None:
                continue
            rms = float(np.sqrt(np.nanmean(image**2)))
            handles[key] = axes[row, col].imshow(image, cmap="coolwarm", vmin=-limits[key], vmax=limits[key])
            axes[row, col].set_title(f"{name}: {key} alignment, RMS {rms:.4f}", fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for col, key in ((1, "before"), (2, "after")):
        if key in handles:
            fig.colorbar(handles[key], ax=axes[:, col], shrink=0.7, label=f"residual {key} (intensity)")
    status = "MISMATCH" if result.mismatch else "ok"
    fig.suptitle(
        f"JSN {result.jsn_px:+.3f} px = {result.jsn_mm:+.4f} mm (+ = narrowing); "
        f"reliability {result.reliability:.2f} [{status}]",
        fontsize=10,
    )
    return figure_bytes(fig, fmt)
