"""Sub-pixel warping and the 4-parameter similarity used by the registration quantifier.

Sampling uses the cubic B-spline interpolant (:func:`sample_spline`), with its exact
derivatives, instead of OpenCV's ``remap``: ``remap`` rounds positions to a 1/32-pixel table and
its bicubic kernel (a = -0.75) is only first-order accurate, which biases a registration by
several hundredths of a pixel on detector-blurred images; the B-spline interpolant is accurate
to about 1e-5 of the signal on the same images.

The similarity is parameterised linearly about a centre ``c``::

    p' = c + [[a, -b], [b, a]] (p - c) + (tx, ty),   a = s cos(theta), b = s sin(theta)

so its Jacobian with respect to ``(a, b, tx, ty)`` does not depend on the parameters.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from scipy import ndimage

from jsnsynth.synth.geometry import Similarity

def params_from_similarity(transform: Similarity, cx: float, cy: float) -> np.ndarray:
    """Return ``(a, b, tx, ty)`` of ``transform`` re-expressed about ``(cx, cy)``."""
    about = transform.about(cx, cy)
    theta = math.radians(about.angle_deg)
    return np.array(
        [about.scale * math.cos(theta), about.scale * math.sin(theta), about.dx, about.dy], dtype=np.float64
    )


def similarity_from_params(params: np.ndarray, cx: float, cy: float) -> Similarity:
    """Inverse of :func:`params_from_similarity`: a :class:`Similarity` about ``(cx, cy)``."""
    a, b, tx, ty = (float(v) for v in params)
    return Similarity(math.hypot(a, b), math.degrees(math.atan2(b, a)), tx, ty, cx, cy)


def warp_positions(params: np.ndarray, cx: float, cy: float, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map baseline positions ``(xs, ys)`` to follow-up positions with the linear similarity."""
    return warp_offsets(params, cx, cy, xs - cx, ys - cy)


def warp_offsets(params: np.ndarray, cx: float, cy: float, ux: np.ndarray, uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`warp_positions` of the positions ``(cx + ux, cy + uy)``, for loops that keep the
    offsets from the centre."""
    a, b, tx, ty = params
    # the centre and translation added as one number, in place: the sampler's positions on
    # every iteration, where five whole-array operations per axis took a tenth of its time
    x = a * ux - b * uy
    x += cx + tx
    y = b * ux + a * uy
    y += cy + ty
    return x, y


#: Half-length of the FIR that computes the spline coefficients: the prefilter's impulse
#: response decays as ``|z|^k`` with ``z = sqrt(3) - 2``, below 1e-8 of its peak at 15 taps.
_PREFILTER_RADIUS = 15


@functools.lru_cache(maxsize=1)
def _prefilter_kernel() -> np.ndarray:
    """Impulse response of the cubic B-spline prefilter ``6 / (z^-1 + 4 + z)``, truncated, float32."""
    pole = math.sqrt(3.0) - 2.0
    k = np.abs(np.arange(-_PREFILTER_RADIUS, _PREFILTER_RADIUS + 1))
    return (-6.0 * pole / (1.0 - pole * pole) * pole**k).astype(np.float32)


def spline_coefficients(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of an image (mirror boundary), float32, for :func:`sample_spline`.

    The prefilter is applied as a separable FIR with whole-sample mirroring (OpenCV's
    ``BORDER_REFLECT_101``, ``scipy.ndimage``'s "mirror"): the same coefficients as
    ``ndimage.spline_filter`` to float32 rounding (about 1e-7 of the signal), four times faster.
    """
    image = np.asarray(image, dtype=np.float32)
    if min(image.shape) <= _PREFILTER_RADIUS:  # too small to mirror the whole FIR once
        return ndimage.spline_filter(image.astype(np.float64), order=3, mode="mirror").astype(np.float32)
    kernel = _prefilter_kernel()
    return cv2.sepFilter2D(image, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)


def spline_gradients(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact x and y derivatives of the cubic B-spline interpolant at the pixel centres (float32).

    At integer positions the cubic B-spline's taps are ``(1, 4, 1) / 6`` and its slope's
    ``(-1, 0, 1) / 2``: two separable filters of the coefficients, the same values as
    :func:`sample_spline` there (to float32 rounding) at a fraction of its cost.
    """
    smooth = np.array([1 / 6, 2 / 3, 1 / 6], dtype=np.float32)
    slope = np.array([-0.5, 0.0, 0.5], dtype=np.float32)
    coef = np.asarray(coef, dtype=np.float32)
    gx = cv2.sepFilter2D(coef, cv2.CV_32F, slope, smooth, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.sepFilter2D(coef, cv2.CV_32F, smooth, slope, borderType=cv2.BORDER_REFLECT_101)
    return gx, gy


def sample_spline_values(coef: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Value of the cubic B-spline interpolant at float positions (float32), without derivatives.

    The same interpolant as :func:`sample_spline` at about two thirds of its cost, where no
    Jacobian is needed (positions are clamped the same way).
    """
    first, weights = _spline_taps(coef, x, y, slopes=False)
    taps = _gather_taps(coef, first)
    along = _combine(weights[0:4, 0], taps)
    return (weights[0:4, 1] * along).sum(axis=0)


def _spline_taps(coef: np.ndarray, x: np.ndarray, y: np.ndarray, slopes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flat index of each position's first tap and the cubic weights.

    Returns ``(first, weights)``; ``weights[k, axis]`` is the weight of tap ``k`` (0-3) along x
    (axis 0) or y (axis 1), and ``weights[4 + k, axis]`` its derivative (with ``slopes``).
    """
    h, w = coef.shape
    x = np.clip(x, 1.0, w - 2.000001)
    y = np.clip(y, 1.0, h - 2.000001)
    ix = np.floor(x)
    iy = np.floor(y)
    first = ((iy - 1.0) * w + (ix - 1.0)).astype(np.intp)  # exact: integers far below 2^53
    # both axes' fractions in one array: their weights are one matrix product
    fractions = np.empty((2,) + np.shape(x), dtype=np.float32)
    np.subtract(x, ix, out=fractions[0], casting="same_kind")
    np.subtract(y, iy, out=fractions[1], casting="same_kind")
    return first, _cubic_weights(fractions, slopes)


def _gather_taps(coef: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The 4 x 4 taps of every position as ``taps[column, row]`` (float32).

    Each tap is gathered through an offset view of the coefficients with the same index array
    (no index arithmetic per tap; ``take`` is about a quarter faster than fancy indexing, and
    into a preallocated block, whose rows the weights then combine a column at a time).
    """
    w = coef.shape[1]
    flat = coef.ravel()
    taps = np.empty((4, 4) + first.shape, dtype=np.float32)
    for row in range(4):
        for column in range(4):
            flat[row * w + column:].take(first, out=taps[column, row], mode="clip")
    return taps


def _combine(weights: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """``sum_k weights[k] * taps[k]`` summed left to right, with one temporary."""
    out = weights[0] * taps[0]
    scratch = np.empty_like(out)
    for k in range(1, 4):
        out += np.multiply(weights[k], taps[k], out=scratch)
    return out


#: Cubic B-spline weights of the taps at -1, 0, 1, 2 (rows 0-3) and their derivatives (rows
#: 4-7) as polynomials in the fraction ``t``: coefficients of ``1, t, t^2, t^3``.
_WEIGHT_POLYNOMIALS = np.array(
    [
        [1 / 6, -1 / 2, 1 / 2, -1 / 6],
        [2 / 3, 0.0, -1.0, 1 / 2],
        [1 / 6, 1 / 2, 1 / 2, -1 / 2],
        [0.0, 0.0, 0.0, 1 / 6],
        [-1 / 2, 1.0, -1 / 2, 0.0],
        [0.0, -2.0, 3 / 2, 0.0],
        [1 / 2, 1.0, -3 / 2, 0.0],
        [0.0, 0.0, 1 / 2, 0.0],
    ],
    dtype=np.float32,
)


def _cubic_weights(t: np.ndarray, slopes: bool = True) -> np.ndarray:
    """Cubic B-spline weights (rows 0-3) and, with ``slopes``, their derivatives (rows 4-7) for
    the taps at -1, 0, 1, 2, shape ``(rows,) + t.shape``.

    All of them at once as one small matrix product with the powers of ``t`` (a few times
    faster than evaluating eight polynomials elementwise; float32 rounding of about 1e-7).
    """
    powers = np.empty((4, t.size), dtype=np.float32)
    powers[0] = 1.0
    powers[1] = t.ravel()
    np.multiply(powers[1], powers[1], out=powers[2])
    np.multiply(powers[2], powers[1], out=powers[3])
    rows = 8 if slopes else 4
    return (_WEIGHT_POLYNOMIALS[:rows] @ powers).reshape((rows,) + t.shape)


def sample_spline(coef: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value and exact x/y derivatives of the cubic B-spline interpolant at float positions.

    Args:
        coef: ``(H, W)`` coefficients from :func:`spline_coefficients`.
        x, y: 1-D float64 positions (pixel centres at integers). Positions closer than one
            pixel to the border are clamped (callers mask them out).

    Returns:
        ``(value, d/dx, d/dy)`` as float32 arrays of the positions' shape.
    """
    first, weights = _spline_taps(coef, x, y)
    taps = _gather_taps(coef, first)
    # separable: combine each row's four taps along x (weights and slopes), then the rows along y
    along = _combine(weights[0:4, 0], taps)
    slope = _combine(weights[4:8, 0], taps)
    wy, dy = weights[0:4, 1], weights[4:8, 1]
    return (wy * along).sum(axis=0), (wy * slope).sum(axis=0), (dy * along).sum(axis=0)
