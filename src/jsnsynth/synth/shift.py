"""Moving raster layers: the controlled JSN shift and the similarity warps of a follow-up visit.

Why this interpolation. The JSN truth of a pair is a *translation* (``d`` along the joint axis,
plus the translation part of repositioning). A translation is applied with a Fourier phase ramp,
which moves every frequency by exactly the commanded amount, so the realised shift equals the
commanded one for band-limited content (measured: < 1e-3 px; see tests/test_shift.py). Cubic
convolution (``cv2.INTER_CUBIC``) and Lanczos-4 were measured to bias a sub-pixel shift of a
blurred bone edge by 0.01-0.04 px, and a cubic B-spline by ~0.005 px, which is why none of them
carries the truth. The Fourier ramp needs a periodic signal, so every layer is first
*edge-padded* (a bone that runs off the crop continues, instead of being emptied when it moves
in), then the outer part of the padding is blended with a raised cosine to the mean of the two
opposite edges, so the wrap-around is smooth and does not ring back into the crop.

Rotation and magnification about the joint centre (flexion, repositioning) move the joint centre
by nothing; they are applied first, only when they are not the identity, under the same
band-limited model (:func:`fourier_rotate_scale`: the magnification a separable periodic-sinc
resampling, the rotation three shears, each a phase ramp per line). Any
:class:`~jsnsynth.synth.geometry.Similarity` ``T`` is split as ``T = translate(dx, dy) ∘ L`` with
``L`` the rotation/scale about ``T``'s centre. A cubic B-spline for ``L``, as earlier versions
used, blurs pixel-scale texture by an amount that depends on each point's sub-pixel position
(it keeps ~76 % of white texture's power); real crops carry such texture, and their pairs read
0.001 px of narrowing that was not there. The imaging chain of moved raster layers takes
``exp(-a)`` at twice the resolution for the same reason
(:func:`jsnsynth.synth.xray.supersampled_transmission`).

Masks are warped as float images with bilinear interpolation under the full transform and
thresholded at 0.5: a bilinear step crosses 0.5 exactly where the transformed edge lies, so a
bone's recorded transform maps its baseline mask onto its follow-up mask (tests: Dice >= 0.98).
Ringing at sharp layer edges (the mask edge of mask-based real layers) dips below zero; those
negative lobes are moved into the soft layer (:func:`settle_negative_lobes`) rather than clipped,
so the total attenuation, which is what is imaged, is exactly the moved layers' sum.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import scipy.fft
import scipy.ndimage

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.layers import JointLayers
from jsnsynth.synth.soft_tissue import warp_soft_tissue

#: Rows/columns of raised-cosine blending added beyond the edge padding.
TAPER_PX = 24
#: Edge-padding margin beyond the largest shift, so the crop only pulls edge-replicated values.
MARGIN_PX = 4


def _taper_axis(padded: np.ndarray, axis: int, taper_px: int) -> np.ndarray:
    """Blend the outer ``taper_px`` of the padding on ``axis`` to the mean of both edge values."""
    n = padded.shape[axis]
    first = np.take(padded, [taper_px], axis=axis)
    last = np.take(padded, [n - 1 - taper_px], axis=axis)
    middle = 0.5 * (first + last)
    # weight 1 at the outermost sample (wrap point), 0 where the edge padding proper begins
    i = np.arange(taper_px)
    weight = 0.5 * (1.0 + np.cos(np.pi * i / taper_px))
    shape = [1] * padded.ndim
    shape[axis] = taper_px
    weight = weight.reshape(shape)
    head = [slice(None)] * padded.ndim
    head[axis] = slice(0, taper_px)
    tail = [slice(None)] * padded.ndim
    tail[axis] = slice(n - taper_px, n)
    padded[tuple(head)] = weight * middle + (1 - weight) * first
    padded[tuple(tail)] = np.flip(weight, axis=axis) * middle + (1 - np.flip(weight, axis=axis)) * last
    return padded


def fourier_translate(images: np.ndarray, shifts_xy: np.ndarray) -> np.ndarray:
    """Translate each image of a stack by its own sub-pixel ``(dx, dy)`` with a Fourier phase ramp.

    Content moves by ``+shift``: ``out(x, y) = in(x - dx, y - dy)``. Images are edge-padded
    (bones that leave the crop continue) with a smooth raised-cosine wrap beyond the padding.

    Args:
        images: ``(H, W)`` or ``(N, H, W)`` float array.
        shifts_xy: ``(2,)`` or ``(N, 2)`` shifts in pixels.

    Returns:
        array of the input's shape; float32 input stays float32 (single-precision FFT, about
        twice as fast, ~1e-7 relative error), anything else float64.
    """
    images = np.asarray(images)
    images = images.astype(np.float32 if images.dtype == np.float32 else np.float64, copy=False)
    complex_type = np.complex64 if images.dtype == np.float32 else np.complex128
    single = images.ndim == 2
    stack = images[None] if single else images
    shifts = np.atleast_2d(np.asarray(shifts_xy, dtype=np.float64))
    if shifts.shape != (stack.shape[0], 2) or not np.all(np.isfinite(shifts)):
        raise InputError(f"need one finite (dx, dy) per image, got shifts of shape {shifts.shape}")
    if not np.any(shifts):
        return images.copy()
    h, w = stack.shape[1:]
    edge_px = int(math.ceil(np.abs(shifts).max())) + MARGIN_PX
    padded, top = _pad_axis(stack, 1, edge_px)
    padded, left = _pad_axis(padded, 2, edge_px)
    hp, wp = padded.shape[1:]
    spectrum = scipy.fft.rfft2(padded, axes=(1, 2))
    ky = scipy.fft.fftfreq(hp)[None, :, None]
    kx = scipy.fft.rfftfreq(wp)[None, None, :]
    # the ramp is separable: two small complex exponentials instead of one per frequency
    spectrum *= np.exp(-2j * np.pi * ky * shifts[:, 1, None, None]).astype(complex_type)
    spectrum *= np.exp(-2j * np.pi * kx * shifts[:, 0, None, None]).astype(complex_type)
    moved = scipy.fft.irfft2(spectrum, s=(hp, wp), axes=(1, 2))
    out = moved[:, top : top + h, left : left + w]
    return out[0] if single else out


def _pad_for(n: int, edge_px: int) -> tuple[int, int]:
    """Padding (before, after) of edge + taper, rounded up to a fast FFT length."""
    total = scipy.fft.next_fast_len(n + 2 * (edge_px + TAPER_PX), real=True)
    before = (total - n) // 2
    return before, total - n - before


def split_similarity(transform: Similarity) -> tuple[Similarity, tuple[float, float]]:
    """Split ``T`` into its rotation/scale ``L`` about ``T``'s centre and a translation.

    ``T(p) = L(p) + (dx, dy)`` with ``L = Similarity(scale, angle, 0, 0, cx, cy)``.
    """
    linear = Similarity(transform.scale, transform.angle_deg, 0.0, 0.0, transform.cx, transform.cy)
    return linear, (transform.dx, transform.dy)


def is_identity(transform: Similarity, tol: float = 1e-12) -> bool:
    """True when ``transform`` moves no point by more than floating-point noise."""
    return (
        abs(transform.scale - 1.0) < tol
        and abs(transform.angle_deg) < tol
        and abs(transform.dx) < tol
        and abs(transform.dy) < tol
    )


def _pad_axis(image: np.ndarray, axis: int, edge_px: int) -> tuple[np.ndarray, int]:
    """Edge-pad ``image`` along ``axis`` (plus a raised-cosine wrap) to a fast FFT length.

    Returns the padded array and the number of samples added before the first one.
    """
    n = image.shape[axis]
    before, after = _pad_for(n, edge_px)
    widths = [(0, 0)] * image.ndim
    widths[axis] = (before, after)
    padded = _taper_axis(np.pad(image, widths, mode="edge"), axis, min(TAPER_PX, before))
    return padded, before


def _shift_lines(image: np.ndarray, axis: int, shifts_px: np.ndarray) -> np.ndarray:
    """Move every line along ``axis`` by its own amount with a Fourier phase ramp.

    ``shifts_px`` holds one shift per index of the other axis; content moves by ``+shift``:
    ``out[..., i] = line(i - shift)``, the line's band-limited interpolant.
    """
    if not np.any(shifts_px):
        return image
    padded, before = _pad_axis(image, axis, int(math.ceil(np.abs(shifts_px).max())) + MARGIN_PX)
    n = padded.shape[axis]
    spectrum = scipy.fft.rfft(padded, axis=axis)
    phase = (-2.0 * np.pi) * np.multiply.outer(shifts_px, scipy.fft.rfftfreq(n))  # (lines, frequencies)
    real_type = np.float32 if spectrum.dtype == np.complex64 else np.float64
    ramp = np.empty(phase.shape, dtype=spectrum.dtype)
    ramp.real = np.cos(phase, dtype=real_type)
    ramp.imag = np.sin(phase, dtype=real_type)
    spectrum *= ramp if axis == 1 else ramp.T
    moved = scipy.fft.irfft(spectrum, n=n, axis=axis)
    return np.take(moved, np.arange(before, before + image.shape[axis]), axis=axis)


def periodic_sinc_weights(positions: np.ndarray, length: int) -> np.ndarray:
    """Weights ``(len(positions), length)`` of the band-limited periodic interpolant of ``length``
    samples at ``positions`` (for an even length the Nyquist term split evenly, as ``irfft`` does):
    ``sin(pi t) / (N tan(pi t / N))`` (``N sin(pi t / N)`` for odd ``N``), ``t = position - n``."""
    positions = np.asarray(positions, dtype=np.float64)
    samples = np.arange(length, dtype=np.float64)
    # sin(pi t) = (-1)^n sin(pi p), and the angle difference from outer products: the trigonometry
    # of a (positions x length) matrix would cost several times the resampling itself
    numerator = np.multiply.outer(np.sin(np.pi * positions), np.where(samples % 2 == 0, 1.0, -1.0))
    alpha, beta = np.pi * positions / length, np.pi * samples / length
    sin_difference = np.multiply.outer(np.sin(alpha), np.cos(beta)) - np.multiply.outer(np.cos(alpha), np.sin(beta))
    if length % 2 == 0:  # 1 / tan = cos / sin
        numerator *= np.multiply.outer(np.cos(alpha), np.cos(beta)) + np.multiply.outer(np.sin(alpha), np.sin(beta))
    weights = numerator / np.where(sin_difference == 0.0, 1.0, length * sin_difference)
    # next to a sample the products above cancel to a few 1e-16 and the quotient loses digits:
    # there (at most two entries a row) the kernel is evaluated from the difference itself
    rows, columns = np.nonzero(np.abs(np.subtract.outer(positions, samples)) < 1e-3)
    t = positions[rows] - samples[columns]
    turn_near = np.tan if length % 2 == 0 else np.sin
    with np.errstate(invalid="ignore", divide="ignore"):
        near = np.sin(np.pi * t) / (length * turn_near(np.pi * t / length))
    weights[rows, columns] = np.where(t == 0.0, 1.0, near)
    return weights


def _scale_lines(image: np.ndarray, axis: int, scale: float, centre: float) -> np.ndarray:
    """Magnify every line along ``axis`` by ``scale`` about ``centre``: ``out[i] = line(centre + (i - centre) / scale)``."""
    n_out = image.shape[axis]
    reach = abs(1.0 / scale - 1.0) * max(centre, n_out - 1 - centre)
    padded, before = _pad_axis(image, axis, int(math.ceil(reach)) + MARGIN_PX)
    weights = _magnification_weights(n_out, padded.shape[axis], before + centre, before, scale, image.dtype.type)
    return weights @ padded if axis == 0 else padded @ weights.T


@functools.lru_cache(maxsize=4)
def _magnification_weights(n_out: int, length: int, centre: float, before: int, scale: float, dtype: type) -> np.ndarray:
    """:func:`periodic_sinc_weights` of the positions ``centre + (i - centre + before) / scale``
    (cached: both bones of a follow-up share the repositioning's magnification about the joint)."""
    positions = centre + (np.arange(n_out) + before - centre) / scale
    weights = periodic_sinc_weights(positions, length).astype(dtype)
    weights.flags.writeable = False
    return weights


def rotate_scale_margin(shape: tuple[int, int], transform: Similarity) -> int:
    """Edge padding (px) that :func:`fourier_rotate_scale` needs around an image of ``shape``: the
    farthest its shears and magnification reach outside the picture, plus a few pixels."""
    h, w = shape
    # the farthest a pixel of the picture lies from the centre along either axis
    extent = max(abs(transform.cx), abs(w - 1 - transform.cx), abs(transform.cy), abs(h - 1 - transform.cy))
    theta = math.radians(transform.angle_deg)
    shears = 2.0 * abs(math.tan(theta / 2.0)) + abs(math.sin(theta))
    reach = abs(1.0 / transform.scale - 1.0) + shears / min(transform.scale, 1.0)
    return int(math.ceil(reach * extent)) + MARGIN_PX


def fourier_rotate_scale(image: np.ndarray, transform: Similarity, margin_px: int | None = None) -> np.ndarray:
    """Rotate and magnify ``image`` about ``transform``'s centre, exactly for band-limited content
    (shrinking, ``scale < 1``: for content band-limited to ``scale`` times the Nyquist frequency;
    finer content aliases, as it would on a detector).

    ``out(T(p)) = in(p)`` for the rotation/magnification part of ``T`` (its translation is ignored;
    :func:`warp_layer_stack` applies it with :func:`fourier_translate`). The image is read as the
    band-limited interpolant of its samples, the model under which the Fourier translation is
    exact, so a rotated or magnified layer and a translated one follow the same model: the
    rotation is three shears (x, y, x), each a Fourier phase ramp per line, the magnification
    then a separable resampling with the periodic sinc. A cubic B-spline instead smooths content near
    the Nyquist frequency by an amount that depends on each pixel's sub-pixel position; on
    real-layer pairs that made the bones look closer by 0.001 px on average (flexion or rotation
    alone; see docs/dataset.md). Lines are edge-extended, as everywhere in this module.

    Args:
        image: ``(H, W)`` float image (float32 stays float32).
        transform: the similarity; its centre is the fixed point.
        margin_px: edge padding, at least :func:`rotate_scale_margin`'s; one margin for all the
            layers of a follow-up lets them share the magnification's resampling weights.
    """
    image = np.asarray(image)
    dtype = np.float32 if image.dtype == np.float32 else np.float64
    h, w = image.shape
    theta = math.radians(transform.angle_deg)
    # out(q) = in(c + R(-theta) (q - c) / s), R(-theta) = Sx(a) Sy(b) Sx(a)
    a, b = math.tan(theta / 2.0), -math.sin(theta)
    margin = max(margin_px or 0, rotate_scale_margin((h, w), transform))
    out = np.pad(image.astype(dtype, copy=False), margin, mode="edge")
    cx, cy = transform.cx + margin, transform.cy + margin
    # rotation first: the two commute about one centre, and a shrunk picture holds content that
    # is no longer band-limited on its grid, which the shears would then smear
    if theta != 0.0:
        rows = np.arange(out.shape[0]) - cy
        columns = np.arange(out.shape[1]) - cx
        # sampling at x + a (y - cy) moves row y's content by -a (y - cy)
        out = _shift_lines(out, 1, -a * rows)
        out = _shift_lines(out, 0, -b * columns)
        out = _shift_lines(out, 1, -a * rows)
    if transform.scale != 1.0:
        out = _scale_lines(out, 1, transform.scale, cx)
        out = _scale_lines(out, 0, transform.scale, cy)
    return np.ascontiguousarray(out[margin:margin + h, margin:margin + w], dtype=dtype)


def warp_layer(image: np.ndarray, transform: Similarity) -> np.ndarray:
    """Move a raster layer by a similarity: band-limited rotation/scale, then Fourier translation.

    Returns float64 (float32 for float32 input), *not* clipped: interpolation that is exact for band-limited content rings
    (dips below zero) next to sharp layer edges. :func:`warp_layers` moves those dips into the soft
    layer so the total attenuation stays exact.
    """
    return warp_layer_stack(np.asarray(image)[None], [transform])[0]


def warp_layer_stack(images: np.ndarray, transforms: list[Similarity]) -> np.ndarray:
    """:func:`warp_layer` for a ``(N, H, W)`` stack with one transform each (one batched FFT).

    A float32 stack (the layers) is moved in float32, a twice cheaper FFT; anything else in float64.
    """
    images = np.asarray(images)
    images = images.astype(np.float32 if images.dtype == np.float32 else np.float64, copy=False)
    rotated = np.empty_like(images)
    shifts = np.zeros((len(transforms), 2))
    margin_px = max(rotate_scale_margin(images.shape[1:], transform) for transform in transforms)
    for k, transform in enumerate(transforms):
        linear, shifts[k] = split_similarity(transform)
        rotated[k] = images[k] if is_identity(linear) else fourier_rotate_scale(images[k], linear, margin_px)
    return fourier_translate(rotated, shifts)


def settle_negative_lobes(soft: np.ndarray, bones: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Make moved bone layers non-negative without changing the total attenuation.

    Mask-based bone layers of real crops end in a step at the mask edge; any shift that is exact
    for band-limited content rings there (Gibbs), with lobes below zero. Clipping them would add
    attenuation just outside the moved edge and bias the realised shift (about 0.03 px for a sharp
    step), so the negative part of each bone layer is moved into the soft layer instead: the sum of
    the layers, which is what is imaged, is exactly the moved layers' sum. Only where that would
    make the soft layer negative (not seen on the real crops, whose soft tissue is >= 0.2) is it
    clipped.

    Returns:
        ``(soft, bones)`` as float32, all >= 0.
    """
    soft = np.asarray(soft, dtype=np.float64).copy()
    settled = []
    for bone in bones:
        bone = np.asarray(bone, dtype=np.float64)
        soft += np.minimum(bone, 0.0)
        settled.append(np.maximum(bone, 0.0).astype(np.float32))
    return np.maximum(soft, 0.0).astype(np.float32), settled


def warp_mask(mask: np.ndarray, transform: Similarity) -> np.ndarray:
    """Move a bool mask by ``transform``: bilinear warp of the float mask, threshold at 0.5.

    Edge pixels are replicated, so a bone that runs off the crop stays there after moving.
    """
    mask = np.asarray(mask)
    if is_identity(transform):
        return mask.astype(bool)
    h, w = mask.shape
    moved = cv2.warpAffine(
        mask.astype(np.float32),
        transform.matrix(),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return moved >= 0.5


def warp_layers(
    layers: JointLayers,
    upper_pose: Similarity | None = None,
    lower_pose: Similarity | None = None,
    soft_pose: Similarity | None = None,
    soft_blend_px: float | None = None,
) -> JointLayers:
    """Move each part of raster layers by its own pose (baseline -> follow-up).

    The raster counterpart of the phantom's ``render_phantom(params, poses)``: the returned
    layers keep the *baseline* ``joint_center_xy`` and ``joint_axis_deg`` (the truth is defined
    in the baseline frame) and the same metadata.

    Args:
        layers: baseline layers.
        upper_pose, lower_pose, soft_pose: similarity of each part; None leaves it in place.
        soft_blend_px: None moves the soft tissue rigidly by ``soft_pose``; a number makes it
            follow the bones instead (:func:`warp_soft_tissue`, ``soft_pose`` being the hand's
            pose and this the half-width of the band across the joint line).
    """
    centre = layers.joint_center_xy
    poses = [p if p is not None else Similarity.identity(*centre) for p in (soft_pose, upper_pose, lower_pose)]
    if soft_blend_px is None:
        moved = warp_layer_stack(np.stack([layers.soft, layers.upper, layers.lower]), poses)
        moved_soft, moved_bones = moved[0], [moved[1], moved[2]]
    else:
        moved_bones = list(warp_layer_stack(np.stack([layers.upper, layers.lower]), poses[1:]))
        moved_soft = warp_soft_tissue(layers.soft, poses[1], poses[2], poses[0], centre, layers.joint_axis_deg, soft_blend_px)
    soft, (upper, lower) = settle_negative_lobes(moved_soft, moved_bones)
    return layers.replace(
        soft=soft,
        upper=upper,
        lower=lower,
        upper_mask=warp_mask(layers.upper_mask, poses[1]),
        lower_mask=warp_mask(layers.lower_mask, poses[2]),
    )


def axis_translation(layers: JointLayers, shift_px: float) -> Similarity:
    """The translation by ``shift_px`` along the joint axis, expressed about the joint centre."""
    axis = layers.axis_xy
    cx, cy = layers.joint_center_xy
    return Similarity(1.0, 0.0, float(shift_px * axis[0]), float(shift_px * axis[1]), cx, cy)


def shift_upper(layers: JointLayers, shift_px: float) -> JointLayers:
    """Move the upper bone layer and its mask by ``shift_px`` along the joint axis.

    ``shift_px > 0`` moves the upper bone toward the lower one (narrowing, positive JSN
    progression); negative widens. Large shifts make the bones overlap, which the additive
    attenuation model renders correctly. The soft tissue and the lower bone stay in place.
    """
    if not math.isfinite(shift_px):
        raise InputError(f"shift must be a finite number of pixels, got {shift_px}")
    transform = axis_translation(layers, shift_px)
    moved = fourier_translate(layers.upper, np.array([transform.dx, transform.dy]))
    soft, (upper,) = settle_negative_lobes(layers.soft, [moved])
    return layers.replace(
        soft=soft,
        upper=upper,
        upper_mask=warp_mask(layers.upper_mask, transform),
    )


def periodic_fourier_shift(image: np.ndarray, shift_xy: np.ndarray) -> np.ndarray:
    """``image`` moved by ``shift_xy = (dx, dy)`` px with the Fourier shift theorem (periodic borders).

    The plain band-limited shift, with no padding: the model of :func:`measure_translation_px`.
    """
    spectrum = scipy.ndimage.fourier_shift(np.fft.fft2(image), (shift_xy[1], shift_xy[0]))
    return np.fft.ifft2(spectrum).real


def measure_translation_px(
    before: np.ndarray, after: np.ndarray, region: tuple[slice, slice], iterations: int = 6
) -> np.ndarray:
    """Measure the translation ``d = (dx, dy)`` with ``after(p) = before(p - d)`` inside ``region``.

    Gauss-Newton on the band-limited model ``periodic_fourier_shift(before, d)``: on noise-free,
    smooth images this is the "perfect estimator" against which commanded shifts are checked
    (keep ``region`` away from the borders, where the periodic model wraps around).
    """
    shift = np.zeros(2)
    for _ in range(iterations):
        model = periodic_fourier_shift(before, shift)
        grad_y, grad_x = np.gradient(model)
        jacobian = -np.stack([grad_x[region].ravel(), grad_y[region].ravel()], axis=1)
        shift += np.linalg.lstsq(jacobian, (after - model)[region].ravel(), rcond=None)[0]
    return shift
