"""Metrics of a separation against reference layers (used by the benchmark and the tests).

Layers are compared as images: each attenuation layer ``a_k`` is shown as ``1 - exp(-a_k)`` in
``[0, 1]`` (what the layer would look like as a radiograph on its own), and PSNR / SSIM are
computed on those images with a data range of 1. The reconstruction compares
``1 - exp(-(soft + upper + lower))`` with the input crop.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from jsnsynth.synth.xray import attenuation_to_intensity


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(estimate, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(reference: np.ndarray, estimate: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) with an 11x11 Gaussian window."""
    x = np.asarray(reference, np.float64)
    y = np.asarray(estimate, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (11, 11), sigma, sigma, cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def dice(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Dice overlap of two bool masks (1 when both are empty)."""
    reference = np.asarray(reference, bool)
    estimate = np.asarray(estimate, bool)
    total = reference.sum() + estimate.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(reference, estimate).sum() / total)


def layer_image(attenuation: np.ndarray) -> np.ndarray:
    """A layer shown as a radiograph on its own: ``1 - exp(-a)``."""
    return attenuation_to_intensity(np.asarray(attenuation, np.float64))


def separation_metrics(
    intensity: np.ndarray,
    estimate: tuple[np.ndarray, ...],
    reference: tuple[np.ndarray, ...],
) -> dict:
    """Every metric of one crop.

    Args:
        intensity: the input crop, ``[0, 1]``.
        estimate: ``(soft, upper, lower, upper_mask, lower_mask)`` of the separation.
        reference: the same five arrays of the reference.

    Returns:
        ``psnr_soft/upper/lower``, ``ssim_soft/upper/lower``, ``dice_upper/lower`` and
        ``psnr_reconstruction`` (recomposition vs input).
    """
    metrics = {}
    for k, name in enumerate(("soft", "upper", "lower")):
        ref, est = layer_image(reference[k]), layer_image(estimate[k])
        metrics[f"psnr_{name}"] = psnr(ref, est)
        metrics[f"ssim_{name}"] = ssim(ref, est)
    metrics["dice_upper"] = dice(reference[3], estimate[3])
    metrics["dice_lower"] = dice(reference[4], estimate[4])
    recomposed = layer_image(estimate[0].astype(np.float64) + estimate[1] + estimate[2])
    metrics["psnr_reconstruction"] = psnr(intensity, recomposed)
    return metrics
