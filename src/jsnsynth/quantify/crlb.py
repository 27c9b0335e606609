"""Cramér-Rao lower bound of a JSN estimate under a pair's recorded noise model.

Model: inside bone ``k``'s region ``R_k`` (its baseline mask grown by a few pixels, the other
bone kept out, as the bundled quantifier uses) the follow-up is the baseline moved by the bone's
similarity ``T_k`` plus an unknown intensity bias; both images carry independent zero-mean
Gaussian noise of known per-pixel variance. For a translation between two noisy copies of an
unknown signal, the Fisher information is that of a known signal observed once with the summed
variance ``sigma_b^2 + sigma_f^2`` (high-SNR limit), so for bone ``k``

    I_k = sum_{p in R_k} J_k(p)^T J_k(p) / (sigma_b^2(p) + sigma_f^2(T_k p)),
    J_k(p) = d F(T_k p) / d(a, b, tx, ty, bias)

and the bound of ``JSN = g(theta_upper, theta_lower)`` is ``grad g^T diag(I_u^-1, I_l^-1) grad g``
with the bias profiled out. The per-pixel display-noise standard deviation comes from the clean
display image and :class:`~jsnsynth.synth.xray.ImagingParams` (:func:`display_noise_std_from_clean`),
plus the quantisation noise of the stored bit depth.
"""

from __future__ import annotations

import math

import numpy as np

from jsnsynth.quantify.register import BORDER_PX, RegistrationSettings, bone_region, profile_out
from jsnsynth.quantify.warp import params_from_similarity, sample_spline, spline_coefficients, warp_positions
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.xray import ImagingParams


def display_noise_std_from_clean(clean_display: np.ndarray, params: ImagingParams) -> np.ndarray:
    """Per-pixel noise std of a rendered radiograph, computed from its noise-free display image.

    Inverts the display mapping (gamma, then window) to the blurred transmission ``T`` that
    :func:`jsnsynth.synth.xray.display_noise_std` would compute from the attenuation, then
    propagates ``sqrt(T / photons + electronic^2)`` through the mapping's slope. Clipped
    pixels (display 0 or 1) carry no information: std 0 there, and they must get zero weight.
    """
    display = np.clip(np.asarray(clean_display, dtype=np.float64), 0.0, 1.0)
    scaled = display ** (1.0 / params.gamma)
    width = params.window_high - params.window_low
    transmission = np.clip(1.0 - (params.window_low + width * scaled), 0.0, 1.0)
    photons = 0.0 if math.isinf(params.photons_per_px) else transmission / params.photons_per_px
    std_t = np.sqrt(photons + params.electronic_noise**2)
    inside = (scaled > 0) & (scaled < 1)
    slope = np.where(inside, params.gamma * np.clip(scaled, 1e-12, 1.0) ** (params.gamma - 1.0) / width, 0.0)
    return std_t * slope


def quantisation_variance(bit_depth: int) -> float:
    """Variance of rounding to ``bit_depth`` bits on a [0, 1] scale: ``(1 / (2^b - 1))^2 / 12``."""
    return (1.0 / ((1 << bit_depth) - 1)) ** 2 / 12.0


def fisher_information(jacobian: np.ndarray, noise_variance: np.ndarray) -> np.ndarray:
    """``J^T diag(1 / var) J`` over the pixels with finite, positive variance."""
    jacobian = np.asarray(jacobian, dtype=np.float64)
    variance = np.asarray(noise_variance, dtype=np.float64)
    ok = np.isfinite(variance) & (variance > 0)
    weighted = jacobian[ok] / variance[ok, None]
    return weighted.T @ jacobian[ok]


def bone_design(
    follow_coef: np.ndarray,
    region: np.ndarray,
    transform: Similarity,
    center_xy: tuple[float, float],
    base_variance: np.ndarray,
    follow_variance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The rows of one bone's Fisher information: ``(J, variance, samples)``.

    ``J`` holds, per pixel of ``region``, the follow-up's derivatives with respect to the bone's
    ``(a, b, tx, ty)`` about ``center_xy`` and its intensity bias; ``variance`` the summed noise
    variance of the two images there (infinite where the moved pixel leaves the follow-up);
    ``samples`` the pixels (``ys``, ``xs``), where they land (``wx``, ``wy``) and the follow-up's
    value there (``value``), for columns of other unknowns.
    """
    cx, cy = center_xy
    params = params_from_similarity(transform, cx, cy)
    ys, xs = np.nonzero(region)
    xs64, ys64 = xs.astype(np.float64), ys.astype(np.float64)
    wx, wy = warp_positions(params, cx, cy, xs64, ys64)
    h, w = follow_coef.shape
    inside = (wx >= 1) & (wx <= w - 2) & (wy >= 1) & (wy <= h - 2)
    value, fx, fy = (v.astype(np.float64) for v in sample_spline(follow_coef, wx, wy))
    ux, uy = xs64 - cx, ys64 - cy
    jac = np.stack([fx * ux + fy * uy, fy * ux - fx * uy, fx, fy, -np.ones_like(fx)], axis=1)
    fvar = np.asarray(follow_variance, dtype=np.float64)[
        np.clip(np.rint(wy), 0, h - 1).astype(int), np.clip(np.rint(wx), 0, w - 1).astype(int)
    ]
    variance = np.asarray(base_variance, dtype=np.float64)[ys, xs] + fvar
    variance = np.where(inside, variance, np.inf)
    return jac, variance, {"ys": ys, "xs": xs, "wx": wx, "wy": wy, "value": value}


def bone_fisher(
    follow_clean: np.ndarray,
    region: np.ndarray,
    transform: Similarity,
    center_xy: tuple[float, float],
    base_variance: np.ndarray,
    follow_variance: np.ndarray,
) -> np.ndarray:
    """4x4 Fisher information of one bone's ``(a, b, tx, ty)`` about ``center_xy`` (bias profiled out)."""
    jac, variance, _ = bone_design(spline_coefficients(follow_clean), region, transform, center_xy,
                                   base_variance, follow_variance)
    return profile_out(fisher_information(jac, variance), 4)


def jsn_crlb_px(
    follow_clean: np.ndarray,
    upper_mask: np.ndarray,
    lower_mask: np.ndarray,
    upper: Similarity,
    lower: Similarity,
    center_xy: tuple[float, float],
    axis_deg: float,
    base_noise_std: np.ndarray,
    follow_noise_std: np.ndarray,
    bit_depth: int = 16,
    dilate_px: int = 4,
    exclude_px: int = 1,
    border_px: int = BORDER_PX,
    thin_overlap_px: int = RegistrationSettings.thin_overlap_px,
) -> float:
    """Cramér-Rao lower bound (standard deviation, px) of the JSN of one pair.

    Args:
        follow_clean: noise-free follow-up display image.
        upper_mask, lower_mask: baseline bone masks.
        upper, lower: true baseline -> follow-up similarities of the bones.
        center_xy: joint centre; axis_deg: baseline joint axis.
        base_noise_std, follow_noise_std: per-pixel display noise std of each image
            (:func:`display_noise_std_from_clean`).
        bit_depth: stored bit depth (adds quantisation noise).
        dilate_px, exclude_px, border_px, thin_overlap_px: the bone regions (as the quantifier's:
            :func:`~jsnsynth.quantify.register.bone_region`).

    Returns:
        ``sqrt(CRLB)`` in pixels (0 only for an exactly noise-free, unquantised pair).
    """
    from jsnsynth.quantify.quantifier import jsn_gradient  # late: quantifier imports this module's users

    quant = quantisation_variance(bit_depth)
    base_var = np.asarray(base_noise_std, dtype=np.float64) ** 2 + quant
    follow_var = np.asarray(follow_noise_std, dtype=np.float64) ** 2 + quant
    cx, cy = center_xy
    information = {}
    for name, mask, other, transform in (("upper", upper_mask, lower_mask, upper), ("lower", lower_mask, upper_mask, lower)):
        region = bone_region(np.asarray(mask, bool), np.asarray(other, bool), dilate_px, exclude_px, border_px,
                             thin_overlap_px=thin_overlap_px)
        information[name] = bone_fisher(follow_clean, region, transform, center_xy, base_var, follow_var)
    grad = jsn_gradient(params_from_similarity(upper, cx, cy), params_from_similarity(lower, cx, cy), axis_deg)
    variance = 0.0
    for k, name in enumerate(("upper", "lower")):
        g = grad[4 * k: 4 * k + 4]
        try:
            variance += float(g @ np.linalg.solve(information[name], g))
        except np.linalg.LinAlgError:
            return float("inf")
    return math.sqrt(max(variance, 0.0))
