"""Per-bone sub-pixel similarity registration: the numerical core of the JSN quantifier.

Two stages per pair (docs/quantify.md summarises the design, docs/quantify-method.md details it):

1. **Coarse, cannot be fooled by large moves.** The whole joint (both bone masks, generously
   dilated) is aligned first: at the coarsest pyramid level a small set of rotations is tried,
   each followed by Hann-windowed phase correlation for the translation, the best one refined by
   Gauss-Newton on a 4-parameter similarity. Each bone then gets its own windowed phase
   correlation on top of that global alignment.
2. **Fine, reaching the noise limit.** Gauss-Newton on each bone's similarity
   ``(a, b, tx, ty)`` plus an intensity bias at the pyramid levels above full resolution, over
   the baseline bone mask dilated by a few pixels so the cortical edges are inside, with the
   neighbouring bone excluded; then the two visits' detector blur (:class:`BlurMatcher`),
   display gammas (:func:`display_gamma_ratio`) and intensities (:func:`fit_intensity_mapping`)
   are matched, and
   :func:`shared_scale_gauss_newton` fits both bones at full resolution with one common
   magnification and a smooth intensity shading per bone.

Everything is float32 on pixel lists (no full-image warps inside the loops), sampled through
the cubic B-spline interpolant of :mod:`jsnsynth.quantify.warp` (exact sub-pixel positions).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import cv2
import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.quantify.warp import sample_spline, sample_spline_values, spline_coefficients, warp_offsets, warp_positions
from jsnsynth.synth.xray import BlurSpectrum

#: Length (px) that normalises the rotation/scale columns of the Jacobian, for conditioning.
LEVER_PX = 64.0
#: First Levenberg-Marquardt damping (on the unit diagonal) of a plain shared-scale step after
#: one that put a part off the follow-up; ten times more after each further one, a tenth after
#: each step kept (none below this). Such a step is a gross failure (a blob's tail sent one
#: 1e13 px away): 0.01 barely shortened the retries (1e126, 1e102, 1e55 px).
MIN_DAMPING = 1.0
#: Largest magnification (and smallest, its inverse) the shared-scale fit takes for a point on
#: the follow-up: beyond it a step counts as leaving the follow-up (no visit is magnified 4
#: times; a scale of exp(1000) overflowed).
MAX_FIT_SCALE = 4.0
#: Band along the crop border (or the edge of a padded crop's picture, :func:`~jsnsynth.picture.content_box`) left
#: out of the bone regions: a repositioned follow-up shows there what the baseline did not (or,
#: in simulated pairs, edge padding), which no similarity explains.
BORDER_PX = 12
#: Largest lag (px, per axis) of the residual autocovariance behind a fit's standard error
#: (:func:`autocovariance_energy`): twice the reach of the smoothing and blur-matching kernels
#: that correlate the images' noise between neighbouring pixels (under 4 px).
RESIDUAL_LAG_PX = 8
#: Blur variance (px^2) added to both images while their blur difference is searched. The
#: search blurs one image by a trial variance and regresses on a centre-less Laplacian of it; a
#: blurred image's noise is correlated with its neighbours', so the image that was blurred, and
#: only that one, put a noise term into its regression. Blurring both (and more than the
#: correlation of a resampled follow-up) makes the terms alike in the two directions, where the
#: half-difference cancels them. At 2-3 thousand photons per pixel the one-sided blur made the
#: estimate 0.15 px^2 too low (SD 0.19) and the JSN error 2.6 x the CRLB; with 0.5 px^2, 0.01
#: (SD 0.08) and 1.2 x (48 phantom pairs).
COMMON_BLUR_VARIANCE_PX2 = 0.5
#: Largest blur difference (px^2 of variance) the blur search goes to, either way.
MAX_BLUR_DIFFERENCE_PX2 = 4.0


@dataclass(frozen=True)
class RegistrationSettings:
    """Tuning of the registration; the defaults are what the benchmark reports.

    Attributes:
        smooth_sigma_px: Gaussian pre-smoothing of both images at full resolution (gradients).
        levels: pyramid levels used by the fine stage (0 = full resolution only). One: the
            coarse stage already aligns at quarter resolution, and per-bone fits there changed
            no benchmark RMSE (nor any result of a 64-pair stress set with wider ranges) for
            2 % of the time.
        dilate_px: how far the baseline bone mask is grown to take in the cortical edges.
        global_dilate_px: growth of the union of both masks for the global (coarse) stage.
        exclude_px: minimum gap kept from the other bone's mask. Masks drawn on real radiographs
            sit inside the bones' blurred edges, whose tails reach 8-11 px beyond them (see
            :mod:`jsnsynth.synth.fingerjoints`): a tail of the neighbour inside a region does not
            move with the region's bone.
        thin_overlap_px: widest overlap of the two masks (px across) taken as outlines that
            cross at the joint line; a broader one is kept out of both regions
            (:func:`bone_region`).
        coarse_angles_deg: rotations tried by the coarse global search.
        coarse_scales: magnifications it tries besides 1 (at no rotation). Without them a
            follow-up magnified by 10-12 % (the edge of the documented repositioning and
            beyond) was out of the fits' reach: 2 of 64 pairs of a stress set failed.
        wide_search_below_ncc: when the coarse search's best start, refined, correlates less
            than this with the baseline, it is searched again over every pair of
            ``wide_angles_deg`` and ``wide_scales``, and the better start of the two searches is
            kept. The narrow starts
            reach turns of up to about 20 deg and magnifications of 0.84-1.15; beyond, they
            ended at correlations of 0.16-0.62 on phantoms (0.80 on a real-layer pair magnified
            1.38 times) and the pairs read JSNs off by pixels to thousands of pixels, flagged.
            Right starts correlate at 0.85-1.0 on 210 of the 211 consecutive visit pairs of 80
            real series (the other 0.849) and 0.91-1.0 on noisy phantoms (down to 0.74 with 64
            px of translation, where a quarter of the joint leaves the crop), so ordinary pairs
            seldom pay for the search (about 20 ms).
        wide_angles_deg, wide_scales: the wide search's rotations and magnifications (every
            combination): turns of up to 45 deg, the most `jsnsynth dataset` draws, and
            magnifications of 0.66-1.52 (it draws 0.5-2, but beyond 0.75-1.33 a pair is flagged
            for its scale), spaced as closely as the narrow starts reach.
        max_iterations: Gauss-Newton iterations per level of the fine stage.
        tolerance_px: stop when the update moves no region pixel by more than this (the update
            is still applied). The fit converges fast enough that from 5e-3 px, 3e-3 moved the
            JSNs of fourteen 48-64-pair sets by at most 4e-4 px RMS (1.6e-3 px on one pair),
            no set's RMSE by more than 1e-4 px and the real series not at all, for 4 % more time.
        photometric_order: per-bone intensity polynomial in the fine fit: 0 bias only (default;
            a free gain is nearly collinear with the scale of a bright bone), 1 adds a gain.
        match_blur: equalise the two images' detector blur before the full-resolution fit.
        intensity_mapping_order: degree of the global follow-up -> baseline intensity mapping
            fitted once after the coarse alignment (0 disables it).
        mapping_denoise_sigma_px: Gaussian smoothing of both images before the intensity mapping
            is fitted (see :func:`fit_intensity_mapping`).
        robust_k: Huber threshold of the pyramid levels' per-bone fits, in units of the
            residual's robust sigma (0 disables it).
        shading_order: per-bone intensity polynomial over the image plane in the full-resolution
            fit (see :func:`shared_scale_gauss_newton`).
        fine_robust_k: Huber limit of the full-resolution fit in robust SDs of each bone's
            starting residual (0: least squares). Content beside a bone that moves on its own
            (a sesamoid, soft tissue that slides under a flexed bone) otherwise pulls the bone;
            at 3 SDs noise alone is left its full weight.
        robust_smoothing_px: the Huber weights of the full-resolution fit judge each pixel by
            the residual averaged over a Gaussian of this SD around it (within the region; 0:
            the pixel's own residual). Such content leaves a residual of one sign over an
            area, which the average keeps while it averages the noise away; pixel by pixel it
            drowned in the noise, so the limit grew with the noise and the bias with it (real
            layers at low noise +0.0070 px). A misaligned edge leaves a residual of both
            signs a pixel apart, which the average cancels: edges keep their weight.
        match_blur_anisotropy: with ``match_blur``, match a blur difference that differs by
            direction too (a patient's motion during one exposure), where it reaches
            ``min_blur_anisotropy_px2`` and both bones read it alike
            (:meth:`BlurMatcher.with_anisotropy`); the isotropic match alone leaves it to bias the JSN.
        min_blur_anisotropy_px2: the smallest direction-dependent blur difference matched (the
            eigenvalue of its traceless part). Pairs without one read 0.01-0.21 px^2 on the
            synthetic benchmark sets (their blurs differ alike in every direction; the larger
            values on real layers at high noise; 0.22 at 800 photons per pixel), so none of them
            is touched; at 0.25 px^2 a motion across the joint biases the JSN by about 0.02 px.
        equalise_display_gamma: once the blurs are first matched (``match_blur``, ``levels > 0``),
            raise the two images to the powers that give their displays one gamma
            (:func:`display_gamma_ratio`); the intensity mapping, the blur search after it and
            the full-resolution fit then run on them. A detector blur acts before the display,
            so across displays of different gammas a blur difference is no Gaussian blur, and
            the intensities are related by a power law that the quadratic mapping only
            approximates (JSN RMSE of the benchmark's 48 noise-free pairs: real layers 0.0066 ->
            0.0037 px, phantoms 0.0086 -> 0.0072 px).
        rematch_jsn_px: the visits are matched (blurs, gammas, intensity mapping) with the
            bones where the half-resolution fits left them; where the full-resolution fit then
            moves the JSN by more than this and by more than ``rematch_noise_se`` of its
            standard errors, but by no more than ``rematch_max_jsn_px``, they are matched
            again where it ended and it runs again from there, up to ``max_match_passes``
            times in all (each time judged by the move from the fit before; a fit that moved
            farther than the one before it did is dropped for that one: the moves of a match
            that takes out a share shrink, by about four times a round). A blur large against
            the picture spreads the bones' edges, and a match made before the bones were in
            place took part of their relative move for contrast: JSNs 1-2 % of their change
            short, unflagged, on an outside probe's phantoms blurred by 1-2.4 px (at 256 px).
            Every pair matched again would cost half a pair's time again. At 0.06 px 0-6 % of
            the benchmark's sets are; at 0.03 px a quarter of its noise-free phantoms
            were (RMSE 0.0073 -> 0.0070 px, the blurred phantoms of the ranges table 0.0201 ->
            0.0131 px instead of 0.0176), which took the speed table's noise-free phantoms to
            19.1 pairs/s, below the 20 of the target.
        rematch_max_jsn_px: see ``rematch_jsn_px``: a fit that moved the JSN by more than this
            disagrees with the half-resolution answer for another reason than the match (visits
            that differ in 3-D pose), which a second match does not mend. The share of the
            bones' relative move a match can hold is a few per cent of it (the outside probe's
            largest move: 0.5 px); 25 of the 1,435 real visit pairs of the folder moved by 2-14
            px, all flagged, and matched again they moved by 0.05-11 px more (the whole
            folder's transitivity 0.238 -> 0.263 mm).
        rematch_noise_se: see ``rematch_jsn_px``. Noise moves the half-resolution answer too,
            and a second match of noisy visits gained nothing: at 8 standard errors, 8 of the
            benchmark's 48 phantom pairs at medium noise were matched again, their JSNs moved
            by up to a standard error, and the set's RMSE rose from 0.0099 to 0.0103 px.
        max_match_passes: the most times the visits are matched for the full-resolution fit
            (1: once, as before the fit; see ``rematch_jsn_px``).
        border_px: band along the picture's edge left out of the bone regions (:data:`BORDER_PX`).
        clipped_margin_px: band around clipped pixels (a display window's saturation) left out
            of the intensity fits: the mapping's 2 px smoothing and the blur matching spread the
            clipping's kink about that far.
        window_margin_px: how far the bone windows of the blur and intensity fits reach beyond
            the regions (:func:`aligned_windows`).
        common_blur_variance_px2: :data:`COMMON_BLUR_VARIANCE_PX2`.
        max_blur_difference_px2: :data:`MAX_BLUR_DIFFERENCE_PX2`.
        residual_lag_px: :data:`RESIDUAL_LAG_PX`.

    Every length is set for the 256 x 256 joint crops of the field; :meth:`for_resolution`
    gives the settings for a larger or smaller picture.
    """

    smooth_sigma_px: float = 0.5
    levels: int = 1
    dilate_px: int = 4
    global_dilate_px: int = 8
    exclude_px: int = 8
    thin_overlap_px: int = 4
    coarse_angles_deg: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    coarse_scales: tuple[float, ...] = (0.92, 1.08)
    wide_search_below_ncc: float = 0.85
    wide_angles_deg: tuple[float, ...] = tuple(float(angle) for angle in range(-40, 50, 10))
    wide_scales: tuple[float, ...] = (0.66, 0.76, 0.87, 1.0, 1.15, 1.32, 1.52)
    max_iterations: int = 12
    tolerance_px: float = 5e-3
    photometric_order: int = 0
    match_blur: bool = True
    shared_scale: bool = True
    intensity_mapping_order: int = 2
    mapping_denoise_sigma_px: float = 2.0
    shading_order: int = 2
    robust_k: float = 0.0
    fine_robust_k: float = 3.0
    robust_smoothing_px: float = 2.0
    equalise_display_gamma: bool = True
    match_blur_anisotropy: bool = True
    min_blur_anisotropy_px2: float = 0.25
    rematch_jsn_px: float = 0.06
    rematch_noise_se: float = 12.0
    rematch_max_jsn_px: float = 1.0
    max_match_passes: int = 3
    border_px: int = BORDER_PX
    clipped_margin_px: int = 4
    window_margin_px: int = 12
    common_blur_variance_px2: float = COMMON_BLUR_VARIANCE_PX2
    max_blur_difference_px2: float = MAX_BLUR_DIFFERENCE_PX2
    residual_lag_px: int = RESIDUAL_LAG_PX

    def for_resolution(self, scale: float) -> RegistrationSettings:
        """These settings for a picture ``scale`` times finer than the reference crops
        (:func:`resolution_scale`); the settings themselves at 1.

        The lengths of the anatomy are times ``scale``: the regions' bands, the edge border and
        the margin around clipped pixels (whole pixels, at least 1), and the smoothing lengths.
        What the blur search needs (its variances, times ``scale^2``; the fit windows' margin
        and the residual lag, which must reach as far as its kernels) and the pyramid (one more
        level per octave, :func:`extra_octaves`) grow on finer pictures only: a sampled Gaussian
        narrower than the common blur is no Gaussian, and with no level above full resolution
        the blurs are not matched at all.

        A finer crop of the same joint spreads the same anatomy, blur and repositioning over
        more pixels. With the lengths kept at their 256 px values, 24 real visit pairs upsampled
        x 2 read JSN 0.0125 mm lower on average (up to 2.6 standard errors apart), and halved to
        128 px 0.030 mm lower (up to 4.0); scaled, within 0.62 and 1.4 standard errors
        (``benchmarks/bench_quantify_resolution.py``). ``quantify_pair`` applies this to the settings it is
        given, which are therefore those of 256 px crops."""
        if scale == 1.0:
            return self
        up = limit_scale(scale)
        return replace(
            self,
            levels=self.levels + extra_octaves(scale) if self.levels > 0 else 0,
            smooth_sigma_px=self.smooth_sigma_px * scale,
            dilate_px=scaled_length(self.dilate_px, scale),
            global_dilate_px=scaled_length(self.global_dilate_px, scale),
            exclude_px=scaled_length(self.exclude_px, scale),
            thin_overlap_px=scaled_length(self.thin_overlap_px, scale),
            mapping_denoise_sigma_px=self.mapping_denoise_sigma_px * scale,
            robust_smoothing_px=self.robust_smoothing_px * scale,
            rematch_jsn_px=self.rematch_jsn_px * scale,
            rematch_max_jsn_px=self.rematch_max_jsn_px * scale,
            border_px=scaled_length(self.border_px, scale),
            clipped_margin_px=scaled_length(self.clipped_margin_px, scale),
            window_margin_px=scaled_length(self.window_margin_px, up),
            common_blur_variance_px2=self.common_blur_variance_px2 * up**2,
            max_blur_difference_px2=self.max_blur_difference_px2 * up**2,
            min_blur_anisotropy_px2=self.min_blur_anisotropy_px2 * up**2,
            residual_lag_px=scaled_length(self.residual_lag_px, up),
        )


def disk(radius_px: int) -> np.ndarray:
    """Circular structuring element of the given radius (uint8)."""
    size = 2 * radius_px + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def dilate(mask: np.ndarray, radius_px: int, step: int = 1) -> np.ndarray:
    """Binary dilation by a disk (radius 0 returns the mask), sampled at every ``step``-th pixel:
    ``dilate(mask, r)[::step, ::step]``.

    With ``step > 1`` each of the ``step^2`` polyphase components of the mask is dilated by its
    share of the disk, a ``step^2`` smaller image with a ``step^2`` smaller kernel: the same
    pixels exactly, several times faster than dilating at full size and subsampling.
    """
    if radius_px <= 0:
        return mask[::step, ::step].astype(bool)
    if step == 1:
        return cv2.dilate(mask.astype(np.uint8), disk(radius_px)).astype(bool)
    source = mask.astype(np.uint8)
    out_shape = (-(-mask.shape[0] // step), -(-mask.shape[1] // step))
    out = np.zeros(out_shape, dtype=bool)
    for p in range(step):
        for q in range(step):
            # output (i, j) sees mask pixel (step i + dy, step j + dx), which is pixel
            # (i + a, j + b) of component (p, q) for dy = step a + p, dx = step b + q
            kernel, anchor = _polyphase_kernel(radius_px, step, p, q)
            if not kernel.any():  # no point of a small disk in this phase (cv2 would keep the source)
                continue
            component = np.zeros(out_shape, dtype=np.uint8)
            part = source[p::step, q::step]
            component[: part.shape[0], : part.shape[1]] = part  # rows/columns past the image stay empty
            out |= cv2.dilate(component, kernel, anchor=anchor).astype(bool)
    return out


@functools.lru_cache(maxsize=32)
def _polyphase_kernel(radius_px: int, step: int, p: int, q: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The offsets ``(a, b)`` of the disk's points ``(step a + p, step b + q)`` as a kernel and
    its anchor for ``cv2.dilate`` (see :func:`dilate`)."""
    dy, dx = np.nonzero(disk(radius_px))
    dy, dx = dy - radius_px, dx - radius_px
    reach = radius_px // step + 1
    kernel = np.zeros((2 * reach + 1, 2 * reach + 1), dtype=np.uint8)
    keep = (dy % step == p) & (dx % step == q)
    kernel[dy[keep] // step + reach, dx[keep] // step + reach] = 1
    kernel.flags.writeable = False
    return kernel, (reach, reach)


def mask_centroid(mask: np.ndarray) -> np.ndarray:
    """``(x, y)`` mean of a non-empty mask's pixels, from its row and column counts (exact
    integer sums, the same value as averaging ``np.nonzero`` and many times faster)."""
    columns = np.count_nonzero(mask, axis=0)
    rows = np.count_nonzero(mask, axis=1)
    count = int(columns.sum())
    return np.array([int(columns @ np.arange(columns.size)) / count, int(rows @ np.arange(rows.size)) / count])


#: Larger side (px) of the crops the quantifier's lengths and limits in pixels were set on: the
#: 256 x 256 joint crops of the field (:func:`resolution_scale`).
REFERENCE_PICTURE_PX = 256


def resolution_scale(shape: tuple[int, int]) -> float:
    """How many times finer than the reference crops a picture of ``shape`` samples its joint,
    taken as its larger side over :data:`REFERENCE_PICTURE_PX`: joint crops frame one joint.

    Not the pixel spacing: it would say the resolution only where it is known and the images'
    blur scales with it, which it does not in jsnsynth's own phantoms (blur set in pixels; at
    0.1 and 0.25 mm/px they measured as well or better with the 256 px settings). A crop that
    frames more than the joint is taken for a finer one: phantoms of 512 and 768 px at
    0.175 mm/px measured as well so as with the settings of 256 px crops
    (``benchmarks/bench_quantify_resolution.py``)."""
    return max(shape) / REFERENCE_PICTURE_PX


def limit_scale(scale: float) -> float:
    """Factor for the limits in pixels (a bone's phase-correlation reach, the coarse/fine
    disagreement allowed) at :func:`resolution_scale` ``scale``: they grow on finer pictures
    and are never stricter than on the reference crops."""
    return max(1.0, scale)


def scaled_length(length_px: int, scale: float) -> int:
    """A length in whole pixels of the reference crops at :func:`resolution_scale` ``scale``:
    rounded, and at least 1 px unless it is 0."""
    return max(1, int(round(length_px * scale))) if length_px > 0 else 0


def extra_octaves(scale: float) -> int:
    """Pyramid levels a picture at :func:`resolution_scale` ``scale`` adds above the reference
    crops' (``scale`` rounded to a power of two; none for coarser pictures)."""
    return max(0, int(round(math.log2(scale))))


def bone_region(
    mask: np.ndarray, other_mask: np.ndarray, dilate_px: int, exclude_px: int, border_px: int = BORDER_PX,
    step: int = 1, content: tuple[int, int, int, int] | None = None, keep_out: np.ndarray | None = None,
    thin_overlap_px: int = RegistrationSettings.thin_overlap_px,
) -> np.ndarray:
    """Pixels that belong to one bone for registration: its mask grown, the other bone kept
    ``exclude_px`` away (its own pixels, and where the masks overlap over more than
    ``thin_overlap_px`` across, the overlap), ``border_px`` away from the edge of the picture
    (``content``, the :func:`~jsnsynth.picture.content_box`; default the whole array) and
    outside ``keep_out`` (full resolution; a fill and its band), sampled at every ``step``-th
    pixel: ``bone_region(...)[::step, ::step]``."""
    region = dilate(mask, dilate_px, step) & ~dilate(other_mask & ~mask, exclude_px, step)
    # where the masks overlap broadly both bones project (a collapsed or flexed joint), and that
    # sum of two layers moves with neither bone: kept in, it read a joint whose masks overlapped
    # by a fifth 0.36 px off, unflagged (LSN-layer pairs: docs/quantify-history.md, session 31)
    broad = broad_overlap(mask, other_mask, thin_overlap_px)
    if broad is not None:
        region &= ~dilate(broad, exclude_px + overlap_core_radius(thin_overlap_px), step)
    if keep_out is not None:
        region &= ~keep_out[::step, ::step]
    return region & within_content(mask.shape, content, border_px, step)


def broad_overlap(mask: np.ndarray, other_mask: np.ndarray, thin_overlap_px: int) -> np.ndarray | None:
    """The core of the masks' overlap where it is more than ``thin_overlap_px`` across (where it
    holds a disk of the least odd diameter above that, 5 px for 4: eroded by a disk of
    :func:`overlap_core_radius`), or None where there is none. A narrower strip is two
    outlines drawn across each other at the joint line: the band about the other bone's own
    pixels keeps it out of a region already, and growing it too took joint surface (high-noise
    real-layer pairs 0.0277 -> 0.0287 px)."""
    shared = np.asarray(mask, dtype=bool) & np.asarray(other_mask, dtype=bool)
    if not shared.any():
        return None
    core = cv2.erode(shared.astype(np.uint8), disk(overlap_core_radius(thin_overlap_px))).astype(bool)
    return core if core.any() else None


def overlap_core_radius(thin_overlap_px: int) -> int:
    """Radius of the disk an overlap must hold to be broad: ``2 r + 1 > thin_overlap_px``, at least 1
    (a radius of 0 would take any pixel two outlines share, as at the small pictures' scaled 1 px)."""
    return max(1, (int(thin_overlap_px) + 1) // 2)


def within_content(
    shape: tuple[int, int], content: tuple[int, int, int, int] | None, margin_px: int, step: int = 1
) -> np.ndarray:
    """Pixels at least ``margin_px`` inside the ``content`` box (default the whole array), sampled
    at every ``step``-th pixel; the margin is in full-resolution pixels."""
    top, bottom, left, right = content or (0, shape[0], 0, shape[1])
    rows = np.arange(0, shape[0], step)
    cols = np.arange(0, shape[1], step)
    inside_rows = (rows >= top + margin_px) & (rows < bottom - margin_px)
    inside_cols = (cols >= left + margin_px) & (cols < right - margin_px)
    return inside_rows[:, None] & inside_cols[None, :]


def build_pyramid(image: np.ndarray, levels: int, smooth_sigma_px: float) -> list[np.ndarray]:
    """Smoothed image and its ``cv2.pyrDown`` reductions (level L samples pixel ``2^L i``)."""
    base = np.asarray(image, dtype=np.float32)
    if smooth_sigma_px > 0:
        base = cv2.GaussianBlur(base, (0, 0), smooth_sigma_px, borderType=cv2.BORDER_REPLICATE)
    pyramid = [base]
    for _ in range(levels):
        pyramid.append(cv2.pyrDown(pyramid[-1], borderType=cv2.BORDER_REPLICATE))
    return pyramid


def scale_params(params: np.ndarray, factor: float) -> np.ndarray:
    """Re-express ``(a, b, tx, ty)`` for coordinates multiplied by ``factor`` (same centre point)."""
    return np.array([params[0], params[1], params[2] * factor, params[3] * factor])


def solve_least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares ``x`` with ``design @ x ~ target`` through the column-scaled normal equations.

    For the tall, few-column designs of the quantifier (thousands of pixels, 3-5 smooth columns)
    this is several times faster than SVD-based ``numpy.linalg.lstsq`` and as accurate in
    float64; a singular system falls back to ``lstsq``.
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    solution = solve_normal_equations(_gram(design), design.T @ target)
    if solution is None:
        solution = np.linalg.lstsq(design, target, rcond=None)[0]
    return solution


def tall_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.T @ b`` of two tall matrices (many rows, few columns), ``b`` taken four columns at a
    time where it has more than six: for 8-10 columns and some 18,000 rows OpenBLAS's gemm picks
    a path several times slower than its blocks (10 float32 columns: 0.22 against 0.05 ms)."""
    if b.ndim < 2 or b.shape[1] <= 6:
        return a.T @ b
    out = np.empty((a.shape[1], b.shape[1]), dtype=np.result_type(a, b))
    for start in range(0, b.shape[1], 4):
        out[:, start:start + 4] = a.T @ b[:, start:start + 4]
    return out


def _gram(design: np.ndarray) -> np.ndarray:
    """``design^T design`` of a tall design. With up to three columns as column dot products:
    OpenBLAS's ``syrk`` is slow for such thin matrices (17 000 x 3: 115 us, the dot products
    30-50 us)."""
    k = design.shape[1]
    if k > 3:
        return tall_product(design, design)
    out = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            out[i, j] = out[j, i] = design[:, i] @ design[:, j]
    return out


def solve_normal_equations(normal: np.ndarray, rhs: np.ndarray) -> np.ndarray | None:
    """``normal^-1 rhs`` after scaling to a unit diagonal; None if singular or not finite."""
    scale = np.sqrt(np.maximum(np.diag(normal), 1e-300))
    try:
        solution = np.linalg.solve(normal / np.outer(scale, scale), rhs / scale) / scale
    except np.linalg.LinAlgError:
        return None
    return solution if np.all(np.isfinite(solution)) else None


def profile_out(fisher: np.ndarray, n_keep: int) -> np.ndarray:
    """Information (or Gauss-Newton normal matrix) of the first ``n_keep`` parameters with the
    rest as nuisance: the Schur complement. Raises ``LinAlgError`` if the nuisance block is singular."""
    a = fisher[:n_keep, :n_keep]
    b = fisher[:n_keep, n_keep:]
    c = fisher[n_keep:, n_keep:]
    if c.size == 0:
        return a
    return a - b @ np.linalg.solve(c, b.T)


def photometric_basis(values: np.ndarray, order: int) -> np.ndarray:
    """Columns ``1, (B - 0.5), (B - 0.5)^2`` up to ``order``: the intensity polynomial's basis.

    Absolute (not standardised) so that coefficients carry over between pyramid levels.
    """
    z = np.asarray(values, dtype=np.float32) - 0.5
    columns = [np.ones_like(z), z, z * z][: order + 1]
    return np.stack(columns, axis=1)


def sampled_inside(wx: np.ndarray, wy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Positions at least one pixel inside an image of ``shape`` (where the spline sampler has
    all its taps). A fit's positions nearly always all are: four reductions decide that, and
    the elementwise test runs only when they are not."""
    h, w = shape
    if wx.min() >= 1.0 and wx.max() <= w - 2.0 and wy.min() >= 1.0 and wy.max() <= h - 2.0:
        return np.ones(wx.shape, dtype=bool)
    return (wx >= 1.0) & (wx <= w - 2.0) & (wy >= 1.0) & (wy <= h - 2.0)


@dataclass
class _Fit:
    params: np.ndarray
    photometric: np.ndarray
    iterations: int
    converged: bool
    rms: float
    hessian: np.ndarray
    n_pixels: int
    residual: np.ndarray
    valid: np.ndarray
    last_step_px: float = 0.0


def gauss_newton(
    follow_coef: np.ndarray,
    base_values: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    params: np.ndarray,
    center_xy: tuple[float, float],
    *,
    photometric_order: int,
    max_iterations: int,
    tolerance_px: float,
    robust_k: float = 0.0,
    lever_px: float = LEVER_PX,
) -> _Fit:
    """Fit ``F(W(p)) = P(B(p))`` over a pixel list by Gauss-Newton.

    Args:
        follow_coef: follow-up B-spline coefficients (:func:`~jsnsynth.quantify.warp.spline_coefficients`).
        base_values: baseline values at the listed pixels.
        xs, ys: float64 pixel positions (baseline frame) of the region.
        params: initial ``(a, b, tx, ty)`` about ``center_xy``.
        center_xy: the centre of the similarity.
        photometric_order: degree of the intensity polynomial ``P``.
        max_iterations: iteration cap.
        tolerance_px: stop when the geometric update moves every pixel by less than this.
        robust_k: Huber threshold in robust sigmas, 0 for plain least squares.
        lever_px: normalising length of the rotation/scale columns.

    Returns:
        The fit, with the geometric Hessian ``J^T J`` (unit noise) of the last iteration.
    """
    return gauss_newton_parts(
        follow_coef, [(base_values, xs, ys, params)], center_xy, photometric_order=photometric_order,
        max_iterations=max_iterations, tolerance_px=tolerance_px, robust_k=robust_k, lever_px=lever_px,
    )[0]


def gauss_newton_parts(
    follow_coef: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    center_xy: tuple[float, float],
    *,
    photometric_order: int,
    max_iterations: int,
    tolerance_px: float,
    robust_k: float = 0.0,
    lever_px: float = LEVER_PX,
) -> list[_Fit]:
    """:func:`gauss_newton` of several independent pixel lists ``(base_values, xs, ys, params)``
    at once: each part iterates exactly as it would alone, but every iteration samples all the
    parts still running with one call (the fits of the coarse levels are small, so the
    sampler's per-call cost was a large share of them)."""
    states = [
        _GaussNewtonPart(follow_coef.shape, base_values, xs, ys, params, center_xy, photometric_order,
                         tolerance_px, robust_k, lever_px)
        for base_values, xs, ys, params in parts
    ]
    active = list(states)
    for iteration in range(1, max_iterations + 1):
        if not active:
            break
        positions = [state.positions() for state in active]
        if len(active) == 1:
            samples = [sample_spline(follow_coef, *positions[0])]
        else:
            sampled = sample_spline(follow_coef, *(np.concatenate(axis) for axis in zip(*positions)))
            splits = np.cumsum([wx.size for wx, _ in positions])[:-1]
            samples = list(zip(*(np.split(values, splits) for values in sampled)))
        for state, (wx, wy), (fv, fx, fy) in zip(active, positions, samples):
            state.iterations = iteration
            state.update(wx, wy, fv, fx, fy)
        active = [state for state in active if not state.done]
    return [state.result() for state in states]


class _GaussNewtonPart:
    """The state of one pixel list's Gauss-Newton fit (see :func:`gauss_newton_parts`)."""

    def __init__(self, shape, base_values, xs, ys, params, center_xy, photometric_order, tolerance_px, robust_k,
                 lever_px) -> None:
        self.shape, self.base_values, self.center_xy = shape, base_values, center_xy
        self.tolerance_px, self.robust_k = tolerance_px, robust_k
        cx, cy = center_xy
        self.ux = ((xs - cx) / lever_px).astype(np.float32)
        self.uy = ((ys - cy) / lever_px).astype(np.float32)
        self.basis = photometric_basis(base_values, photometric_order)
        self.n_free = self.basis.shape[1]
        self.photometric = None  # started by least squares at the initial geometry
        self.params = np.asarray(params, dtype=np.float64).copy()
        self.reach = float(np.max(np.abs(np.concatenate([self.ux, self.uy])))) * lever_px + 1.0
        self.converged = self.done = False
        self.moved = float("inf")
        self.iterations = 0
        self.residual = np.zeros_like(base_values)
        self.valid = np.ones(base_values.shape, dtype=bool)
        self.offsets = (xs - cx, ys - cy)
        self.normal = None  # of the last solved iteration: its Hessian is the one reported
        # the photometric columns of the Jacobian do not change: filled once (column-major, so
        # the geometric columns fill contiguously)
        self.jac = np.empty((xs.size, 4 + self.n_free), dtype=np.float32, order="F")
        self.jac[:, 4:] = -self.basis
        self.per_lever = np.array([1.0 / lever_px, 1.0 / lever_px, 1.0, 1.0])

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the follow-up is sampled for the current parameters."""
        return warp_offsets(self.params, *self.center_xy, *self.offsets)

    def update(self, wx: np.ndarray, wy: np.ndarray, fv: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> None:
        """One iteration from the follow-up sampled at :meth:`positions`; ``done`` once converged
        or singular."""
        base_values, basis, jac, ux, uy = self.base_values, self.basis, self.jac, self.ux, self.uy
        valid = self.valid = sampled_inside(wx, wy, self.shape)
        if self.photometric is None:
            every = valid.all()  # then no copies of the pixel lists
            self.photometric = solve_least_squares(basis if every else basis[valid],
                                                   fv - base_values if every else fv[valid] - base_values[valid])
        photometric = np.asarray(self.photometric, dtype=np.float64)
        residual = self.residual = fv - base_values - basis @ photometric.astype(np.float32)
        weights = None if valid.all() else valid.astype(np.float32)
        if self.robust_k > 0:
            weights = valid.astype(np.float32) if weights is None else weights
            scale = 1.4826 * float(np.median(np.abs(residual[valid]))) + 1e-12
            ratio = np.abs(residual) / (self.robust_k * scale)
            weights = weights * np.where(ratio > 1.0, 1.0 / np.maximum(ratio, 1e-12), 1.0).astype(np.float32)
        jac[:, 0] = fx * ux + fy * uy
        jac[:, 1] = fy * ux - fx * uy
        jac[:, 2] = fx
        jac[:, 3] = fy
        weighted = jac if weights is None else jac * weights[:, None]  # unit weights: no copy
        system = (weighted.T @ jac).astype(np.float64)
        gradient = (weighted.T @ residual).astype(np.float64)
        diag = np.sqrt(np.maximum(np.diag(system), 1e-20))
        try:
            step = -np.linalg.solve(system / np.outer(diag, diag), gradient / diag) / diag
        except np.linalg.LinAlgError:
            step = None
        if step is None or not np.all(np.isfinite(step)):  # singular: nothing more to learn here
            self.photometric = photometric
            self.done = True
            return
        self.normal = system
        step_geo = step[:4] * self.per_lever
        self.params = self.params + step_geo
        self.photometric = photometric + step[4:]
        self.moved = math.hypot(step_geo[2], step_geo[3]) + self.reach * math.hypot(step_geo[0], step_geo[1])
        if self.moved < self.tolerance_px:
            self.converged = self.done = True

    def result(self) -> _Fit:
        """The fit, with the geometric Hessian of the last solved iteration (identity if none)."""
        hessian = np.eye(4)
        if self.normal is not None:  # the geometric block with the photometric terms profiled out
            hessian = profile_out(self.normal, 4)
        valid, residual = self.valid, self.residual
        rms = float(np.sqrt(np.mean(residual[valid] ** 2))) if valid.any() else float("nan")
        return _Fit(self.params, self.photometric, self.iterations, self.converged, rms, hessian, int(valid.sum()),
                    residual, valid, self.moved)


@functools.lru_cache(maxsize=8)
def _checkerboard(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.indices(shape)
    return (rows + cols) % 2 == 0


def every_other_pixel(region: np.ndarray) -> np.ndarray:
    """A region's pixels on a checkerboard (half of them): enough to fit a handful of global
    parameters, or to bring a fit within reach of the next level, at half the cost."""
    return region & _checkerboard(region.shape)


def _every_other_index(region: np.ndarray) -> np.ndarray:
    """Flat indices of :func:`every_other_pixel`."""
    return np.flatnonzero(every_other_pixel(region))


def _every_fourth_index(region: np.ndarray) -> np.ndarray:
    """Flat indices of a region's pixels in even rows and even columns (a quarter of them)."""
    sparse = np.zeros_like(region, dtype=bool)
    sparse[::2, ::2] = region[::2, ::2]
    return np.flatnonzero(sparse)


def region_pixels(region: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mask's pixels in row-major order: flat indices (read images there with ``take``) and
    float64 columns and rows. Several times faster than ``np.nonzero`` of a 2-D mask plus
    boolean indexing, which the per-pixel fits did again and again."""
    index = np.flatnonzero(region)
    position = index.astype(np.float64)
    width = region.shape[1]
    ys = np.floor(position / width)  # exact: integers far below 2^53, x / width < 1 - 1 / width
    xs = position - ys * width
    return index, xs, ys


#: Additive recurrence of the R2 low-discrepancy sequence (the plastic number's inverse powers):
#: ``(n g1, n g2) mod 1`` fills the unit square evenly for consecutive ``n``.
_R2_STEPS = (0.7548776662466927, 0.5698402909980532)


def dithered_positions(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sample point inside each pixel ``(xs, ys)``: the pixel plus an offset in ``[0, 1)^2``
    that the pixels spread evenly over the unit square (R2 sequence of the pixel's row-major
    rank within its bounding box, so an integer shift of the image shifts the points with it).

    The interpolated follow-up's noise variance depends on where a point falls between pixels
    (largest on a pixel; for the cubic spline after a 0.5 px smoothing a seventh less half-way,
    per axis), so
    a cost summed where every point falls at the same fraction (a follow-up neither rotated nor
    magnified) is pulled toward half-pixel moves: 0.1-0.24 px of JSN at 2,500 photons per pixel.
    Spread evenly, the fractions' noise variance sums to the same whatever the move.
    """
    x0, y0 = np.floor(xs.min()), np.floor(ys.min())
    rank = (ys - y0) * (np.floor(xs.max()) - x0 + 1.0) + (xs - x0)  # exact: integers below 2^53
    points = []
    for position, step in zip((xs, ys), _R2_STEPS):
        phase = rank * step
        points.append(position + (phase - np.floor(phase)))  # the fraction (np.mod is slower)
    return points[0], points[1]


def apply_polynomial(image: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``sum_k c_k image^k`` as float32 (coefficients in increasing degree)."""
    return _polyval(coefficients, np.asarray(image, dtype=np.float64)).astype(np.float32)


def _polyval(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_k c_k x^k`` (coefficients in increasing degree) by Horner's rule, float64."""
    out = np.full(np.shape(x), float(coefficients[-1]))
    for coef in coefficients[-2::-1]:
        out *= x
        out += coef
    return out


#: Share of an image's pixels that must sit exactly at its lowest or highest value for that value
#: to be read as a display window's clipping level (a few noise extremes are not).
CLIPPED_MIN_FRACTION = 5e-4


def clipping_levels(image: np.ndarray) -> tuple[float, float]:
    """The levels at which a display window clipped ``image``: its lowest and highest values when
    at least :data:`CLIPPED_MIN_FRACTION` of the pixels sit exactly there, else -inf / +inf."""
    values = np.asarray(image)
    least = int(math.ceil(CLIPPED_MIN_FRACTION * values.size))
    low, high = float(values.min()), float(values.max())
    return (low if np.count_nonzero(values == low) >= least else -math.inf,
            high if np.count_nonzero(values == high) >= least else math.inf)


def unclipped_regions(
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    base_levels: tuple[float, float],
    follow_levels: tuple[float, float],
    margin_px: int,
) -> list[np.ndarray]:
    """The regions of :func:`aligned_windows` without the pixels where either image is clipped
    (:func:`clipping_levels`) and ``margin_px`` around them.

    A clipped pixel only says that the intensity lies beyond the window: where one visit's
    window clips and the other's does not, the two intensities are not related by any smooth
    mapping, and a polynomial fitted through that kink bends elsewhere (:func:`clipped_pixels`).
    """
    regions = []
    for base, follow, region in windows:
        clipped = clipped_pixels(base, follow, base_levels, follow_levels)
        regions.append(region & ~dilate(clipped, margin_px) if clipped.any() else region)
    return regions


def clipped_pixels(
    base: np.ndarray, follow: np.ndarray, base_levels: tuple[float, float], follow_levels: tuple[float, float]
) -> np.ndarray:
    """Where either of two aligned images sits at a level a display window clipped it to
    (:func:`clipping_levels`); the follow-up's values are interpolated, so they count as clipped
    within 1e-4 of its level."""
    return ((base <= base_levels[0]) | (base >= base_levels[1])
            | (follow <= follow_levels[0] + 1e-4) | (follow >= follow_levels[1] - 1e-4))


@dataclass
class FlatSamples:
    """What the intensity fits between two aligned visits read: both images' values at a quarter
    of the regions' pixels (every other row and column), and weights that keep edges out.

    Attributes:
        base: the baseline's values (float64).
        follow: the follow-up's values there.
        weights: ``1 / (1 + |grad B|^2 / tau^2)``, ``tau^2`` the median of ``|grad B|^2``: a
            residual misalignment, or a blur left between the visits, lives at the edges.
        plane: columns ``1, x, y`` of the samples' places in the picture (centred, divided by
            their spread, at least 1 px): the smooth field by which the visits' intensities may differ besides
            their mapping (:func:`fit_intensity_mapping`).
    """

    base: np.ndarray
    follow: np.ndarray
    weights: np.ndarray
    plane: np.ndarray


def flat_samples(
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    denoise_sigma_px: float = 0.0,
    blur_difference_px2: float = 0.0,
    offsets: list[tuple[int, int]] | None = None,
) -> FlatSamples:
    """The :class:`FlatSamples` of aligned windows.

    Args:
        windows: per part ``(baseline window, follow-up warped into it, region mask)`` from
            :func:`aligned_windows`: one part for a global mapping, one per bone once the bones
            are aligned separately.
        denoise_sigma_px: Gaussian smoothing of both windows first. The follow-up's values are
            the regressor of :func:`fit_intensity_mapping`, so their noise would flatten the
            fitted mapping (regression dilution: at 2-3 thousand photons per pixel the follow-up
            came out a few per cent low in contrast, which the registration then paid for in
            edge position); on the flat pixels that carry the fits the smoothing changes the
            signal by almost nothing.
        blur_difference_px2: a detector-blur difference to take out as well (as
            :meth:`BlurMatcher.variance_difference` gives it): ``> 0`` blurs the baseline, ``< 0``
            the follow-up, by a Gaussian of that variance (px^2), in one Gaussian with the
            smoothing (variances add).
        offsets: each window's place in the picture (:func:`window_offsets`), for the samples'
            :attr:`FlatSamples.plane`; None places the window at the picture's corner, which is
            right for one window only (its own pixels are then the picture's).

    Raises:
        ValueError: several windows and no offsets (their planes would not be one plane).
    """
    if offsets is None and len(windows) > 1:
        raise ValueError("flat_samples of several windows needs their offsets (window_offsets)")
    sigma_b = math.sqrt(denoise_sigma_px**2 + max(blur_difference_px2, 0.0))
    sigma_f = math.sqrt(denoise_sigma_px**2 + max(-blur_difference_px2, 0.0))
    values_list, target_list, grad_list, row_list, col_list = [], [], [], [], []
    for k, (base, follow, region) in enumerate(windows):
        base = np.asarray(base, dtype=np.float32)
        follow = np.asarray(follow, dtype=np.float32)
        if sigma_b > 0:
            base = cv2.GaussianBlur(base, (0, 0), sigma_b, borderType=cv2.BORDER_REPLICATE)
        if sigma_f > 0:
            follow = cv2.GaussianBlur(follow, (0, 0), sigma_f, borderType=cv2.BORDER_REPLICATE)
        gx = cv2.Sobel(base, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(base, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        # a quarter of the pixels: three coefficients need no more (half of them, as earlier
        # rounds took, moved no JSN RMSE of seven 48-pair sets by more than 1e-4 px, for 2 %)
        index = _every_fourth_index(region)
        values_list.append(follow.ravel().take(index).astype(np.float64))
        target_list.append(base.ravel().take(index).astype(np.float64))
        gxs, gys = gx.ravel().take(index), gy.ravel().take(index)
        grad_list.append((gxs**2 + gys**2).astype(np.float64))
        rows, cols = np.divmod(index, region.shape[1])
        top, left = offsets[k] if offsets is not None else (0, 0)
        row_list.append(rows + top)
        col_list.append(cols + left)
    follow_values, base_values, grad2, rows, cols = (
        np.concatenate(v) for v in (values_list, target_list, grad_list, row_list, col_list))
    weights = 1.0 / (1.0 + grad2 / max(float(np.median(grad2)), 1e-10)) if grad2.size else grad2
    plane = np.ones((rows.size, 3))
    for column, position in ((1, cols), (2, rows)):
        if position.size:
            plane[:, column] = (position - position.mean()) / max(float(position.std()), 1.0)
    return FlatSamples(base_values, follow_values, weights, plane)


#: Largest share of the intensities' weighted variance that a plane over the picture may explain
#: for :func:`fit_intensity_mapping` to fit one beside its polynomial: windows whose intensities
#: are (nearly) a ramp leave the slope to what the plane cannot explain, and identical ramps were
#: mapped with a gain of 0.92 instead of 1. Bone windows stay well below it (the largest share of
#: 20 real visit pairs 0.50, of 24 real-layer pairs 0.65, of 24 phantom pairs 0.15).
MAX_PLANE_SHARE = 0.9


def _plane_shares(plane: np.ndarray, weights: np.ndarray, *values: np.ndarray) -> list[float]:
    """For each of ``values``, the share of its weighted variance that a weighted least-squares
    fit on ``plane`` (whose first column is constant) explains; 1 for constant values. The
    plane's normal matrix is formed once for all of them."""
    weighted_plane = plane * weights[:, None]
    inverse = np.linalg.pinv(plane.T @ weighted_plane)
    total_weight = float(weights.sum())
    shares = []
    for v in values:
        weighted_sum = float(weights @ v)
        mean_square = weighted_sum * weighted_sum / total_weight
        total = float(weights @ (v * v)) - mean_square
        projection = weighted_plane.T @ v
        shares.append((float(projection @ inverse @ projection) - mean_square) / total if total > 0 else 1.0)
    return shares


def fit_intensity_mapping(samples: FlatSamples, order: int) -> np.ndarray:
    """Polynomial ``q`` with ``base(p) ~ q(follow(W_k(p)))``, fitted on the flat pixels of aligned
    windows (:func:`flat_samples`).

    The result is the mean of this weighted regression and the inverse of the reverse one
    (follow-up on baseline), which cancels the errors-in-variables flattening of either (see
    the body). Both are fitted with a plane over the picture beside the polynomial
    (:attr:`FlatSamples.plane`; its weighted mean over the samples is the polynomial's
    constant; none where the intensities are nearly a plane, :data:`MAX_PLANE_SHARE`): a
    smooth field that one visit has and the other not (a heel effect that changed)
    correlates with the intensities wherever they vary along it. Fitted without the plane, the
    mapping took part of such a field for contrast, which the registration paid for in scale:
    a follow-up 1 % brighter at the bottom of the crop than at its top, and no other change,
    read 0.06-0.09 px of narrowing on the benchmark's pairs.

    Args:
        samples: the windows' :class:`FlatSamples`.
        order: degree of ``q``.

    Returns:
        Coefficients in increasing degree (identity ``[0, 1, 0, ...]`` if the fit is degenerate).

    Raises:
        ValueError: ``order`` below 1 (a mapping of degree 0 would be a constant image; the
            settings' order 0 means no mapping, and this is not called).
    """
    if order < 1:
        raise ValueError(f"an intensity mapping needs degree 1 or more, not {order}")
    values, target, weights = samples.follow, samples.base, samples.weights
    identity = np.zeros(order + 1)
    identity[1] = 1.0
    if values.size < 10 * (order + 1) or values.std() == 0:
        return identity
    root_w = np.sqrt(weights)
    # intensities (nearly) a plane over the picture: their contrast would go into the plane
    plane = samples.plane if max(_plane_shares(samples.plane, weights, values, target)) <= MAX_PLANE_SHARE else None

    def fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, plane: np.ndarray | None = None) -> np.ndarray:
        if plane is None:
            return solve_least_squares(np.stack([x**k for k in range(order + 1)], axis=1) * w[:, None], y * w)
        design = np.concatenate([np.stack([x**k for k in range(1, order + 1)], axis=1), plane], axis=1)
        coef = solve_least_squares(design * w[:, None], y * w)
        constant = np.average(plane @ coef[order:], weights=w * w)
        return np.concatenate([[constant], coef[:order]])

    forward = fit(values, target, root_w, plane)
    if not np.all(np.isfinite(forward)):
        return identity
    # Regressing the baseline on the follow-up's values attenuates the mapping's slope: whatever
    # the two visits do not share (noise, anatomy and 3-D pose changes, residual misalignment)
    # sits in the regressor (errors in variables). On real visits the forward slope came out
    # 2-5 % below the inverse of the reverse one, so the mapped follow-up lost contrast in *each*
    # direction, and a follow-up that lacks contrast reads as narrowing (about 0.3 px per 10 % on
    # real crops). The reverse regression (follow-up on baseline) is attenuated the other way:
    # the mean of the forward mapping and the inverse of the reverse one cancels both to first order.
    reverse = fit(target, values, root_w, plane)
    grid = np.linspace(*np.percentile(target, [0.5, 99.5]), 256)
    reverse_on_grid = _polyval(reverse, grid)
    if not (np.all(np.isfinite(reverse)) and np.all(np.diff(reverse_on_grid) > 0)):
        return forward  # the reverse mapping is not invertible on the data's range
    use = (values >= reverse_on_grid[0]) & (values <= reverse_on_grid[-1])
    if np.count_nonzero(use) < 10 * (order + 1):
        return forward
    x = values[use]
    middle = 0.5 * (_polyval(forward, x) + np.interp(x, reverse_on_grid, grid))
    coef = fit(x, middle, root_w[use])
    return coef if np.all(np.isfinite(coef)) else forward


#: Largest ``|ln r|`` :func:`display_gamma_ratio` searches: gamma ratios 0.55-1.82 between visits.
MAX_LOG_GAMMA_RATIO = 0.6


def display_gamma_ratio(samples: FlatSamples, max_log_ratio: float = MAX_LOG_GAMMA_RATIO) -> float:
    """Ratio ``r = gamma_b / gamma_f`` of the two visits' display gammas, from aligned bone windows.

    A display shows ``((I - low) / width)^gamma`` of the detected intensity ``I`` (a window, then
    a gamma), so the same anatomy in two visits gives ``B^(1/gamma_b)`` affine in
    ``F^(1/gamma_f)``. Only the ratio of the exponents is read from the intensities: ``r`` is
    the ratio at which ``B^(r^-1/2)`` and ``F^(r^1/2)`` are most nearly affine, the largest
    weighted correlation over the samples (edges, where a residual misalignment lives, count
    little). Those powers are the true ones times a common ``sqrt(gamma_b gamma_f)``, under which
    the two sides stay affine only if the windows' black levels agree or that product is 1;
    otherwise the ratio is off by a little (phantom displays with black levels 0.03 and 0, gammas 0.85 and 1.2: under 1 %;
    1.3 and 1.5: 2 %). Swapping the visits gives ``1 / r`` up to the weights (the baseline's
    gradient) and the search's tolerance.

    Args:
        samples: :func:`flat_samples` of the windows without clipped pixels
            (:func:`unclipped_regions`), with the blurs matched: a blur difference bends the
            relation at the edges (phantom displays blurred by 0.6 and 1.1 px gave ratios 3-5 %
            off).
        max_log_ratio: the search covers ``exp(+-max_log_ratio)``.

    Returns:
        ``r``; 1.0 when the samples are too few or too flat to tell, or when the best ratio is
        at the end of the search: no power law within it relates the visits' intensities
        (displays whose gammas differ more, or a relation of another kind), and the images are
        better left as they are than bent by the search's largest power.
    """
    if samples.base.size < 50 or np.ptp(samples.base) < 1e-3 or np.ptp(samples.follow) < 1e-3:
        return 1.0
    # powers as exp(p ln x): the logarithms once, each trial exponent one product
    log_b = np.log(np.maximum(samples.base, 1e-6))
    log_f = np.log(np.maximum(samples.follow, 1e-6))
    weights = samples.weights / samples.weights.sum()

    def decorrelation(log_ratio: float) -> float:
        u = np.exp(math.exp(-0.5 * log_ratio) * log_b)
        v = np.exp(math.exp(0.5 * log_ratio) * log_f)
        u -= weights @ u
        v -= weights @ v
        return 1.0 - (weights @ (u * v)) ** 2 / ((weights @ (u * u)) * (weights @ (v * v)))

    from scipy.optimize import minimize_scalar  # imported here: scipy.optimize costs ~0.2 s at start-up

    tolerance = 1e-3
    best = minimize_scalar(decorrelation, bounds=(-max_log_ratio, max_log_ratio), method="bounded",
                           options={"xatol": tolerance})
    if abs(best.x) > max_log_ratio - 2 * tolerance:
        return 1.0
    return float(math.exp(best.x))


def raise_to(image: np.ndarray, exponent: float) -> np.ndarray:
    """``image ** exponent`` (float32; negative values count as 0)."""
    return cv2.pow(np.maximum(np.asarray(image, dtype=np.float32), 0.0), float(exponent))


@dataclass
class BlurDesign:
    """Where and with what :func:`blur_difference` regresses one window.

    Attributes:
        index: flat indices (into the window) of the sample pixels.
        values: the window there (float64).
        design: the columns ``1, B, B^2, laplacian(B) / 2`` (float64), then, for a window
            whose place in the picture is given, ``x, y, x B, y B`` (the plane of
            :func:`blur_design`).
        gram: ``design^T design``, kept because every trial blur of the other side reuses it.
    """

    index: np.ndarray
    values: np.ndarray
    design: np.ndarray
    gram: np.ndarray


def blur_plane(shape: tuple[int, int], index: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """The ``(n, 2)`` columns ``x, y`` of :func:`blur_design`'s plane at the flat ``index`` of a
    window of ``shape`` whose first pixel ``(row, column)`` lies at ``origin`` from a point common
    to all windows (px, per :data:`LEVER_PX`)."""
    rows, cols = np.divmod(index, shape[1])
    plane = np.empty((index.size, 2), order="F")  # as the design's columns are
    plane[:, 0] = (cols + origin[1]) / LEVER_PX
    plane[:, 1] = (rows + origin[0]) / LEVER_PX
    return plane


def blur_design(base: np.ndarray, region: np.ndarray, index: np.ndarray | None = None,
                plane: np.ndarray | None = None) -> BlurDesign:
    """The :class:`BlurDesign` of one baseline window, sampled at every other pixel of the region
    (or at the flat ``index`` when given).

    ``plane``: the window's :func:`blur_plane` at those pixels. With it the design holds a plane
    over the picture and the plane times ``B``: a field by which one visit's beam differs from
    the other's (a heel effect that changed) multiplies the transmitted signal, so it adds both
    to ``F - B``, and left out of the regression it read as a blur difference (phantom pairs with
    heel effects of 5 % and no blur difference: -0.05 to -0.08 px^2, then JSN errors of 0.01 px)."""
    # the regressor must not see the baseline pixel's own noise, which is also in F - B: a
    # difference of Gaussians (proportional to a smoothed Laplacian) with its centre tap removed
    lap = cv2.filter2D(np.asarray(base, dtype=np.float32), cv2.CV_32F, _ring_laplacian(), borderType=cv2.BORDER_REPLICATE)
    index = _every_other_index(region) if index is None else index
    bv = base.ravel().take(index).astype(np.float64)
    # column-major: the columns fill contiguously
    design = np.empty((bv.size, 4 if plane is None else 8), order="F")
    design[:, 0] = 1.0
    design[:, 1] = bv
    np.multiply(bv, bv, out=design[:, 2])
    design[:, 3] = 0.5 * lap.ravel().take(index)
    if plane is not None:
        design[:, 4:6] = plane
        np.multiply(plane[:, 0], bv, out=design[:, 6])
        np.multiply(plane[:, 1], bv, out=design[:, 7])
    return BlurDesign(index, bv, design, _gram(design))


def blur_difference(
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    designs: list[BlurDesign] | None = None,
) -> float:
    """Estimate ``sigma_f^2 - sigma_b^2`` (px^2), the follow-up's extra Gaussian blur.

    Gaussian blur obeys the heat equation, ``dI / d(sigma^2) = laplacian(I) / 2``, so over the
    aligned bone regions ``F(W_k p) - B(p) ~ c0 + c1 B + c2 B^2 + delta * laplacian(B) / 2``
    (plus a plane and the plane times ``B`` where the designs place the windows: :func:`blur_design`).

    Args:
        windows: per bone ``(baseline window, follow-up warped into it, region mask)``.
        designs: the windows' :func:`blur_design`, when already computed (:class:`BlurMatcher`
            keeps them per side and trial blur).
    """
    if designs is None:
        designs = [blur_design(base, region) for base, _, region in windows]
    if sum(d.values.size for d in designs) < 20:
        return 0.0
    # the normal equations summed over the windows: the same solution as one stacked regression
    targets = [follow.ravel().take(d.index).astype(np.float64) - d.values for (_, follow, _), d in zip(windows, designs)]
    normal = sum(d.gram for d in designs)
    rhs = sum(d.design.T @ t for d, t in zip(designs, targets))
    solution = solve_normal_equations(normal, rhs)
    if solution is None:
        solution = np.linalg.lstsq(np.concatenate([d.design for d in designs]), np.concatenate(targets), rcond=None)[0]
    return float(solution[3]) if np.isfinite(solution[3]) else 0.0


@functools.lru_cache(maxsize=1)
def _anisotropy_taps(sigma_px: float = 1.25, radius_px: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Gaussian taps and their first and second derivatives (sigma as the ring Laplacian's
    smoothing, :func:`_ring_laplacian`), made exact on polynomials: ``g0`` sums to 1, ``g1`` maps
    ``x`` to 1, ``g2`` maps 1 to 0 and ``x^2`` to 2.

    Smoothed ``d2/dx2 - d2/dy2`` is then ``g2(x) g0(y) - g0(x) g2(y)`` and ``d2/dxdy``
    ``g1(x) g1(y)``: separable, and both vanish at their centre (the smoothing is isotropic),
    so, like the ring Laplacian, they do not see the pixel's own noise, which is also in the
    regression's target.
    """
    r = np.arange(-radius_px, radius_px + 1, dtype=np.float64)
    g = np.exp(-r * r / (2.0 * sigma_px**2))
    g0 = g / g.sum()
    g1 = r * g
    g1 /= float(np.sum(g1 * r))
    g2 = (r * r / sigma_px**2 - 1.0) * g
    g2 -= g0 * g2.sum()  # zero sum: a constant has no curvature
    g2 *= 2.0 / float(np.sum(g2 * r * r))
    taps = tuple(t.astype(np.float32) for t in (g0, g1, g2))
    for t in taps:
        t.flags.writeable = False  # shared by every call (cached)
    return taps


def anisotropy_columns(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed ``(d2/dx2 - d2/dy2) I`` and ``d2/dxdy I`` of an image (float32, replicated
    border; :func:`_anisotropy_taps`)."""
    image = np.asarray(image, dtype=np.float32)
    g0, g1, g2 = _anisotropy_taps()
    border = cv2.BORDER_REPLICATE
    plus = cv2.sepFilter2D(image, cv2.CV_32F, g2, g0, borderType=border)
    plus -= cv2.sepFilter2D(image, cv2.CV_32F, g0, g2, borderType=border)
    return plus, cv2.sepFilter2D(image, cv2.CV_32F, g1, g1, borderType=border)


def blur_covariance_difference(
    windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], designs: list[BlurDesign] | None = None
) -> tuple[float, float, float]:
    """Estimate the follow-up's extra blur covariance, direction-dependent part included, to
    first order.

    A Gaussian blur of covariance ``C`` obeys ``dI / dC_ij = d_i d_j I / 2``, so with the
    follow-up's extra covariance ``d I + [[alpha, beta], [beta, -alpha]]`` over the aligned bone
    regions ``F - B ~ c0 + c1 B + c2 B^2 + d lap(B) / 2 + alpha (B_xx - B_yy) / 2 + beta B_xy``
    (the isotropic columns of :func:`blur_difference`, which keep ``d`` from leaking into the
    others on bones whose edges run mostly one way, and the designs' plane where they have one).

    Returns:
        ``(d, alpha, beta)`` (px^2); zeros with too few pixels.
    """
    if designs is None:
        designs = [blur_design(base, region) for base, _, region in windows]
    if sum(d.values.size for d in designs) < 20:
        return 0.0, 0.0, 0.0
    m = designs[0].design.shape[1]  # the isotropic columns (and the plane, where placed)
    normal, rhs = np.zeros((m + 2, m + 2)), np.zeros(m + 2)
    for (base, follow, _), d in zip(windows, designs):
        plus, cross = anisotropy_columns(base)
        extra = np.empty((d.values.size, 2))
        extra[:, 0] = 0.5 * plus.ravel().take(d.index)
        extra[:, 1] = cross.ravel().take(d.index)
        target = np.asarray(follow).ravel().take(d.index).astype(np.float64) - d.values
        # the isotropic columns' block is the design's kept Gram matrix
        normal[:m, :m] += d.gram
        normal[:m, m:] += d.design.T @ extra
        normal[m:, m:] += extra.T @ extra
        rhs[:m] += d.design.T @ target
        rhs[m:] += extra.T @ target
    normal[m:, :m] = normal[:m, m:].T
    solution = solve_normal_equations(normal, rhs)
    if solution is None or not np.all(np.isfinite(solution[[3, m, m + 1]])):
        return 0.0, 0.0, 0.0
    return float(solution[3]), float(solution[m]), float(solution[m + 1])


def anisotropy_axis(alpha_px2: float, beta_px2: float) -> tuple[float, float]:
    """``(lam, angle)`` of the traceless ``[[alpha, beta], [beta, -alpha]]``: its eigenvalue
    ``lam = hypot(alpha, beta)`` (px^2) and the direction (radians from +x toward +y) of the
    eigenvector that has it, ``e1``."""
    return math.hypot(alpha_px2, beta_px2), 0.5 * math.atan2(beta_px2, alpha_px2)


def line_blurs(alpha_px2: float, beta_px2: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The two line blurs that match a direction-dependent blur difference.

    The follow-up's extra covariance ``[[alpha, beta], [beta, -alpha]]`` has the eigenvalues
    ``+-lam``, ``lam = hypot(alpha, beta)``: the follow-up is blurred ``lam`` px^2 more along
    ``e1``, the baseline as much more along ``e2``, at right angles. Adding ``lam e1 e1^T`` to
    the baseline and ``lam e2 e2^T`` to the follow-up leaves both with one covariance.

    Returns:
        ``(baseline's, follow-up's)`` covariances ``(cxx, cyy, cxy)`` (px^2).
    """
    lam, angle = anisotropy_axis(alpha_px2, beta_px2)
    if lam == 0.0:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    c, s = math.cos(angle), math.sin(angle)
    return (lam * c * c, lam * s * s, lam * c * s), (lam * s * s, lam * c * c, -lam * c * s)


def aligned_windows(
    base: np.ndarray,
    follow: np.ndarray,
    regions: dict[str, np.ndarray],
    params: dict[str, np.ndarray],
    center_xy: tuple[float, float],
    margin_px: int = 12,
    follow_coef: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per bone: the baseline window around its region, the follow-up warped into that window
    with the bone's transform, and the region inside the window (follow-up samples outside the
    image are left out of the region). ``follow_coef`` saves computing the spline again."""
    h, w = base.shape
    coef = spline_coefficients(follow) if follow_coef is None else follow_coef
    windows = []
    for name, region in regions.items():
        y0, y1, x0, x1 = _window_box(region, margin_px)
        # the window's rows and columns broadcast against each other: no coordinate grids
        gy = np.arange(y0, y1, dtype=np.float64)[:, None]
        gx = np.arange(x0, x1, dtype=np.float64)[None, :]
        wx, wy = warp_positions(params[name], center_xy[0], center_xy[1], gx, gy)
        warped = sample_spline_values(coef, wx, wy)
        inside = sampled_inside(wx, wy, (h, w))
        windows.append((base[y0:y1, x0:x1], warped, region[y0:y1, x0:x1] & inside))
    return windows


def window_offsets(regions: dict[str, np.ndarray], margin_px: int = 12) -> list[tuple[int, int]]:
    """The row and column in the picture of each window's first pixel, for the windows
    :func:`aligned_windows` cuts around ``regions`` with ``margin_px``."""
    return [_window_box(region, margin_px)[::2] for region in regions.values()]


def _window_box(region: np.ndarray, margin_px: int) -> tuple[int, int, int, int]:
    """First row, row past the last, first column and column past the last of the window around
    a region, ``margin_px`` beyond it and within the array."""
    (ymin, ymax), (xmin, xmax) = _bounding_box(region)
    height, width = region.shape
    return (max(ymin - margin_px, 0), min(ymax + margin_px + 1, height),
            max(xmin - margin_px, 0), min(xmax + margin_px + 1, width))


def _bounding_box(region: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """First and last row, first and last column of a non-empty mask (from its row and column
    projections, without listing its pixels)."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


@functools.lru_cache(maxsize=4)
def _ring_laplacian(radius_px: int = 4) -> np.ndarray:
    """Difference-of-Gaussians kernel (sigma 1.5 minus 1.0, about 0.6 x Laplacian) with a zero centre and zero sum."""
    r = np.arange(-radius_px, radius_px + 1, dtype=np.float64)
    r2 = r[:, None] ** 2 + r[None, :] ** 2

    def gauss(sigma: float) -> np.ndarray:
        g = np.exp(-r2 / (2 * sigma**2))
        return g / g.sum()

    kernel = gauss(1.5) - gauss(1.0)
    kernel[radius_px, radius_px] = 0.0
    others = np.ones_like(kernel, dtype=bool)
    others[radius_px, radius_px] = False
    kernel[others] -= kernel[others].mean()
    kernel = (kernel / 0.625).astype(np.float32)
    kernel.flags.writeable = False  # shared by every call (cached)
    return kernel


#: Blurs narrower than this (px) are left out in the quantifier: a variance of 4e-4 px^2 moves
#: nothing it measures, and each blur costs a Fourier round trip.
MIN_BLUR_SIGMA_PX = 0.02


def gaussian_blur(image: np.ndarray, sigma_px: float, pad_px: int = 16) -> np.ndarray:
    """Gaussian blur with exactly the variance ``sigma_px^2``, float32 (see
    :class:`jsnsynth.synth.xray.BlurSpectrum`); the image as it is below
    :data:`MIN_BLUR_SIGMA_PX` (without a transform)."""
    image = np.asarray(image, dtype=np.float32)
    if sigma_px < MIN_BLUR_SIGMA_PX:
        return image
    return BlurSpectrum(image, pad_px).blurred(sigma_px)


def turned_covariance(covariance_px2: tuple[float, float, float], params: np.ndarray) -> tuple[float, float, float]:
    """A blur covariance ``(cxx, cyy, cxy)`` given in the baseline's frame, in the follow-up's:
    ``M C M^T`` with ``M = [[a, -b], [b, a]]`` the similarity's linear part (``params``'
    ``a, b``), which maps baseline offsets to follow-up ones."""
    a, b = float(params[0]), float(params[1])
    m = np.array([[a, -b], [b, a]])
    cxx, cyy, cxy = covariance_px2
    out = m @ np.array([[cxx, cxy], [cxy, cyy]]) @ m.T
    return float(out[0, 0]), float(out[1, 1]), float(0.5 * (out[0, 1] + out[1, 0]))


def line_blurred(image: np.ndarray, covariance_px2: tuple[float, float, float], pad_px: int = 16) -> np.ndarray:
    """``image`` blurred by a Gaussian of covariance ``(cxx, cyy, cxy)`` (px^2; a line blur of
    :func:`line_blurs`), float32; the image itself for a zero covariance."""
    image = np.asarray(image, dtype=np.float32)
    if not any(covariance_px2):
        return image
    return BlurSpectrum(image, pad_px).blurred_by_covariance(covariance_px2)


#: Smallest blur (px) :func:`sampled_gaussian_blur` is used for: the search blurs by at least
#: the common variance (sigma 0.71 px), where a sampled kernel's variance is 0.001 px^2 short of
#: sigma^2 (the sampling's aliasing, e^(-2 pi^2 sigma^2)); at 0.6 px it would be 0.008 short.
MIN_SAMPLED_SIGMA_PX = 0.7


@functools.lru_cache(maxsize=64)
def _sampled_gaussian(sigma_px: float) -> np.ndarray:
    """Normalised Gaussian taps to 5 sigma (float32; kept: the search revisits its variances)."""
    radius = int(math.ceil(5.0 * sigma_px))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    taps.flags.writeable = False
    return taps


def sampled_gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur by a sampled separable kernel (float32, reflected border), for
    ``sigma_px >= MIN_SAMPLED_SIGMA_PX``: in the blur search, where two blurs are compared and
    both are at least the common one, 40-90 us on a bone window against the 115 us of
    :func:`gaussian_blur`'s transforms.
    The bone windows reach 12 px beyond their regions (:func:`aligned_windows`), so the
    regression's pixels and their Laplacian taps see the reflected border only through taps
    beyond 3.7 sigma at the largest blur searched (4.5 px^2)."""
    if sigma_px < MIN_SAMPLED_SIGMA_PX:
        raise ValueError(f"a sampled Gaussian of {sigma_px:.3f} px is short in variance; use gaussian_blur")
    taps = _sampled_gaussian(float(sigma_px))
    return cv2.sepFilter2D(np.asarray(image, dtype=np.float32), cv2.CV_32F, taps, taps, borderType=cv2.BORDER_REFLECT)


#: Step of the finite differences of :meth:`BlurMatcher.with_anisotropy`'s Jacobian (px^2).
JACOBIAN_STEP_PX2 = 0.25
#: How far (a fraction of the joint estimate's size) each bone's reading of a direction-dependent
#: blur difference may lie from the joint one for :meth:`BlurMatcher.with_anisotropy` to take
#: it as one blur of the whole picture. Noise-free phantom and real-layer pairs whose follow-up
#: was blurred by 2.25-4 px^2 along one direction: 0.005-0.11 (median 0.03). Real visit pairs,
#: whose 3-D pose differences read as such blurs, different by bone: 65 of 103 consecutive pairs
#: of the bundled folder read 0.25 px^2 or more, at 0.2-5 (median 1.0); two are within this.
ANISOTROPY_AGREEMENT = 0.3


class BlurMatch(NamedTuple):
    """The blur difference :meth:`BlurMatcher.with_anisotropy` found (px^2).

    Attributes:
        x: isotropic variance to add to the baseline (``> 0``) or the follow-up (``< 0``).
        alpha, beta: the follow-up's extra direction-dependent blur ``[[alpha, beta], [beta,
            -alpha]]`` (:func:`line_blurs`); zeros where none is matched.
        unmatched_px2: the size of a direction-dependent difference that passed the tests for
            one blur of the whole picture but could not be matched (beyond the search's reach,
            or no convergence; the eigenvalue ``hypot(alpha, beta)``, half a one-visit motion's
            variance): it biases the JSN, and ``quantify_pair`` makes the pair a mismatch; 0
            otherwise.
    """

    x: float
    alpha: float = 0.0
    beta: float = 0.0
    unmatched_px2: float = 0.0


class BlurMatcher:
    """Finds the detector-blur difference between fixed baseline windows and follow-up windows.

    Blurs commute with the (nearly rigid) warps, so the search runs on the follow-up warped once
    into each bone's baseline window (:func:`aligned_windows`); only the final images are blurred
    in full (:func:`gaussian_blur`). The windows are blurred by sampled kernels
    (:func:`sampled_gaussian_blur`); the baseline's blurred windows and regression designs are
    kept, so a second search (after the intensity mapping) costs only the follow-up's side.

    Args:
        windows: per bone ``(baseline window, follow-up warped into it, region mask)``; the
            follow-up windows are those of the first search.
        common_variance_px2: blur variance added to *both* images while the difference is
            searched (see :data:`COMMON_BLUR_VARIANCE_PX2`); the images themselves are only
            ever blurred by the difference.
        max_difference_px2: the search stays within this difference either way.
        offsets: each window's place in the picture (:func:`window_offsets`): the regressions
            then take a plane over the picture, and the plane times the intensities, as well
            (:func:`blur_design`); None: windows whose places are not known, without them.
    """

    def __init__(
        self, windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        common_variance_px2: float = COMMON_BLUR_VARIANCE_PX2, max_difference_px2: float = MAX_BLUR_DIFFERENCE_PX2,
        offsets: list[tuple[int, int]] | None = None,
    ) -> None:
        self.common_variance_px2 = common_variance_px2
        self.max_difference_px2 = max_difference_px2
        self.base = [np.asarray(b, dtype=np.float32) for b, _, _ in windows]
        self.regions = [r for _, _, r in windows]
        self.points = [_every_other_index(r) for r in self.regions]
        self.planes: list[np.ndarray | None] = [None] * len(windows)
        if offsets is not None:
            # from the windows' mean centre: the plane's columns then stay small beside the others
            centres = [(top + r.shape[0] / 2, left + r.shape[1] / 2) for (top, left), r in zip(offsets, self.regions)]
            cy, cx = np.mean(centres, axis=0)
            self.planes = [blur_plane(r.shape, p, (top - cy, left - cx))
                           for (top, left), r, p in zip(offsets, self.regions, self.points)]
        self._base_blurred: dict[float, tuple[list, list]] = {}
        #: the last trial of :meth:`variance_difference`: its variance, then the baseline's and
        #: the follow-up's blurred windows and designs (:meth:`with_anisotropy` starts there)
        self._last_trial: tuple | None = None

    def _blurred(self, images: list[np.ndarray], sigma: float, cache: dict) -> tuple[list, list]:
        """The windows blurred by ``sigma`` and their regression designs, kept per sigma: while
        one side is searched the other stays at the common blur."""
        if sigma not in cache:
            blurred = [sampled_gaussian_blur(image, sigma) for image in images]
            cache[sigma] = (blurred, [blur_design(im, r, p, plane)
                                      for im, r, p, plane in zip(blurred, self.regions, self.points, self.planes)])
        return cache[sigma]

    def variance_difference(
        self, follow_windows: list[np.ndarray], rounds: int = 3, initial: float = 0.0
    ) -> float:
        """Variance ``x`` (px^2) to add to the baseline (``x > 0``) or the follow-up (``x < 0``)
        so that both have the same blur (see :func:`blur_difference`).

        The linearised estimate is refined by a secant search over ``rounds`` trial variances
        (its fixed point is zero remaining difference, whatever the scale of the regressor);
        ``initial`` warm-starts it.
        """
        follow = [np.asarray(f, dtype=np.float32) for f in follow_windows]
        follow_blurred: dict[float, tuple[list, list]] = {}

        def remaining(extra: float) -> float:
            # extra > 0 blurs the baseline, < 0 the follow-up, by |extra| px^2 of variance, on
            # top of the common blur
            sb = math.sqrt(self.common_variance_px2 + max(extra, 0.0))
            sf = math.sqrt(self.common_variance_px2 + max(-extra, 0.0))
            bases, base_designs = self._blurred(self.base, sb, self._base_blurred)
            follows, follow_designs = self._blurred(follow, sf, follow_blurred)
            forward = blur_difference(list(zip(bases, follows, self.regions)), base_designs)
            # Estimated one way only, whatever the two visits do not share (local anatomical and
            # 3-D pose differences, residual misalignment: on average a misaligned copy *is* a
            # blurred one) reads as extra blur of the image compared with the other one's
            # Laplacian. On real visits that was +1 to +3 px^2 for the follow-up in *both*
            # directions, and the baseline was blurred by as much. With the roles swapped that
            # term keeps its sign while the true difference changes its sign, so the
            # half-difference keeps only the latter.
            reverse = blur_difference(list(zip(follows, bases, self.regions)), follow_designs)
            self._last_trial = (extra, bases, base_designs, follows, follow_designs)
            return 0.5 * (forward - reverse)

        # secant iteration on the remaining difference: the linearised estimate overshoots (its
        # regressor is a smoothed Laplacian), but its zero is where the two blurs match
        x_prev = initial
        r_prev = remaining(x_prev)
        x = float(np.clip(x_prev + r_prev, -self.max_difference_px2, self.max_difference_px2))
        for _ in range(rounds - 1):
            if abs(x - x_prev) < 1e-3:
                break
            r = remaining(x)
            slope = (r - r_prev) / (x - x_prev)
            x_next = x - r / slope if slope < -1e-3 else x + r
            x_prev, r_prev, x = x, r, float(np.clip(x_next, -self.max_difference_px2, self.max_difference_px2))
        return x

    def with_anisotropy(
        self, follow_windows: list[np.ndarray], variance_difference_px2: float, min_anisotropy_px2: float,
        rounds: int = 2,
    ) -> BlurMatch:
        """The blur difference refined for direction (:class:`BlurMatch`): the isotropic part
        as :meth:`variance_difference` gives it (``x > 0`` blurs the baseline) and the
        follow-up's extra ``[[alpha, beta], [beta, -alpha]]`` (:func:`line_blurs`).

        A patient who moves during an exposure blurs the picture along the motion: a blur
        difference that the isotropic search meets only in its mean, leaving one image
        sharper across the motion and the other along it, which the registration reads as a
        move of the bones' edges. The direction-dependent part is first estimated at the
        isotropic match (:func:`blur_covariance_difference`), for the bones together and for
        each apart. The isotropic match stands, and ``(x, 0, 0)`` is returned, unless that
        part reaches ``min_anisotropy_px2`` and every bone reads it within
        :data:`ANISOTROPY_AGREEMENT` of the joint estimate: a motion blurs the whole picture
        alike, while what real visits do not share (3-D pose, the bones' own change) reads
        as direction-dependent blurs of up to 2.4 px^2 that differ from bone to bone. Otherwise
        all three are refined by Newton's method on a Jacobian of finite
        differences, each evaluation blurring the windows by the estimate so far (Fourier,
        :class:`BlurSpectrum`). The isotropic and direction-dependent columns are far from
        orthogonal on bones whose edges run mostly across the finger (only the blur across
        them is well determined), so the one gain the isotropic search's secant takes left
        the estimate swinging between two states. A refinement that does not converge
        (a remaining difference larger than the first, or a blur beyond the search's reach,
        ``max_difference_px2``: a motion of more than about twice that in one visit) is dropped
        for the isotropic match, and the first reading's size is returned as
        :attr:`BlurMatch.unmatched_px2`.
        """
        x = variance_difference_px2
        if self._last_trial is None:
            raise RuntimeError("with_anisotropy starts from a variance_difference search of the same matcher")
        # read at the search's last trial, whose windows are blurred already: the isotropic
        # column takes up what is left of the isotropic difference there
        trial_x, bases, base_designs, follows, follow_designs = self._last_trial
        # one way round first, which is half the work: the symmetric reading is half the
        # difference of the two ways, so with this way below half the limit it reaches the
        # limit only where the other way reads 1.5 times the limit or more
        forward = np.array(blur_covariance_difference(list(zip(bases, follows, self.regions)), base_designs))
        if math.hypot(forward[1], forward[2]) < 0.5 * min_anisotropy_px2:
            return BlurMatch(x)
        reverse = np.array(blur_covariance_difference(list(zip(follows, bases, self.regions)), follow_designs))
        first = 0.5 * (forward - reverse)
        first[0] += trial_x - x  # the isotropic part, from x on
        size = math.hypot(first[1], first[2])
        if size < min_anisotropy_px2:
            return BlurMatch(x)
        for k in range(len(bases)):
            own = self._symmetric_difference(bases[k:k + 1], follows[k:k + 1], base_designs[k:k + 1],
                                             follow_designs[k:k + 1], k)
            if math.hypot(own[1] - first[1], own[2] - first[2]) > ANISOTROPY_AGREEMENT * size:
                return BlurMatch(x)
        base_spectra = [BlurSpectrum(b) for b in self.base]
        follow_spectra = [BlurSpectrum(np.asarray(f, dtype=np.float32)) for f in follow_windows]
        common = self.common_variance_px2

        def remaining(estimate: np.ndarray) -> np.ndarray:
            x, alpha, beta = (float(v) for v in estimate)
            line_b, line_f = line_blurs(alpha, beta)
            cov_b = (common + max(x, 0.0) + line_b[0], common + max(x, 0.0) + line_b[1], line_b[2])
            cov_f = (common + max(-x, 0.0) + line_f[0], common + max(-x, 0.0) + line_f[1], line_f[2])
            b_now = [spectrum.blurred_by_covariance(cov_b) for spectrum in base_spectra]
            f_now = [spectrum.blurred_by_covariance(cov_f) for spectrum in follow_spectra]
            return self._symmetric_difference(b_now, f_now)

        estimate = np.array([x, 0.0, 0.0]) + first  # the plain step off the isotropic match
        residual = remaining(estimate)
        jacobian = np.empty((3, 3))
        for axis in range(3):
            probe = estimate.copy()
            probe[axis] += JACOBIAN_STEP_PX2
            jacobian[:, axis] = (remaining(probe) - residual) / JACOBIAN_STEP_PX2
        try:
            for _ in range(rounds):
                estimate = estimate - np.linalg.solve(jacobian, residual)
                if not (np.all(np.isfinite(estimate)) and np.max(np.abs(estimate)) <= self.max_difference_px2):
                    return BlurMatch(x, unmatched_px2=size)
                residual = remaining(estimate)
        except np.linalg.LinAlgError:
            return BlurMatch(x, unmatched_px2=size)
        if np.linalg.norm(residual) > np.linalg.norm(first):
            return BlurMatch(x, unmatched_px2=size)
        return BlurMatch(float(estimate[0]), float(estimate[1]), float(estimate[2]))

    def _symmetric_difference(
        self, bases: list[np.ndarray], follows: list[np.ndarray], base_designs: list[BlurDesign] | None = None,
        follow_designs: list[BlurDesign] | None = None, window: int | None = None,
    ) -> np.ndarray:
        """``(d, alpha, beta)`` of :func:`blur_covariance_difference`, half the difference of
        the two ways round (as in :meth:`variance_difference`: what the visits do not share
        keeps its sign when the roles are swapped, a blur difference changes it); of every
        window, or of the one numbered ``window`` only."""
        chosen = slice(None) if window is None else slice(window, window + 1)
        regions, points, planes = self.regions[chosen], self.points[chosen], self.planes[chosen]
        if base_designs is None:
            base_designs = [blur_design(b, r, p, plane) for b, r, p, plane in zip(bases, regions, points, planes)]
        if follow_designs is None:
            follow_designs = [blur_design(f, r, p, plane) for f, r, p, plane in zip(follows, regions, points, planes)]
        forward = blur_covariance_difference(list(zip(bases, follows, regions)), base_designs)
        reverse = blur_covariance_difference(list(zip(follows, bases, regions)), follow_designs)
        return 0.5 * (np.array(forward) - np.array(reverse))


def phase_correlation_shift(
    reference: np.ndarray, moving: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, float]:
    """Translation ``d`` with ``moving(x) ~ reference(x - d)`` by windowed phase correlation.

    Returns:
        ``(d_xy, response)``; the response (peak energy) is high for a confident match.

    Raises:
        InputError: a window with no pixel of half weight (the region lies along the picture's
            border, where the Hann window vanishes, or is a line a pixel thick): nothing to
            correlate, and the mean below would be NaN.
    """
    inside = window > 0.5
    if not inside.any():
        raise InputError("the bone masks leave too few usable pixels away from the picture's border (masks along "
                         "the edge, in a corner, or a line one pixel thick): nothing to register")
    ref = (reference - float(np.mean(reference[inside]))) * window
    mov = (moving - float(np.mean(moving[inside]))) * window
    shift, response = cv2.phaseCorrelate(ref.astype(np.float32), mov.astype(np.float32))
    return np.array(shift), float(response)


def tapered_window(region: np.ndarray, taper_px: float, *, content: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A soft window: the region blurred, times a Hann window of the picture (the ``content``
    box, :func:`~jsnsynth.picture.content_box`; default the whole image): over a padded crop's whole array it
    would weigh the bones by where the padding put them."""
    soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(taper_px, 0.5))
    top, bottom, left, right = content or (0, region.shape[0], 0, region.shape[1])
    hann = np.zeros(region.shape, dtype=np.float32)
    if bottom - top > 1 and right - left > 1:
        hann[top:bottom, left:right] = cv2.createHanningWindow((right - left, bottom - top), cv2.CV_32F)
    return soft * hann


def warp_into_baseline(image: np.ndarray, params: np.ndarray, center_xy: tuple[float, float]) -> np.ndarray:
    """Resample ``image`` at ``W(p)`` for every pixel ``p`` (the follow-up in the baseline frame)."""
    h, w = image.shape
    # rows and columns broadcast against each other: no coordinate grids
    wx, wy = warp_positions(params, center_xy[0], center_xy[1], np.arange(w, dtype=np.float64)[None, :],
                            np.arange(h, dtype=np.float64)[:, None])
    return cv2.remap(
        image.astype(np.float32), wx.astype(np.float32), wy.astype(np.float32), cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def coarse_global(
    base: np.ndarray,
    follow: np.ndarray,
    region: np.ndarray,
    center_xy: tuple[float, float],
    poses: list[tuple[float, float]],
    extra_candidates: list[np.ndarray] | None = None,
    refine_best: int = 2,
) -> tuple[np.ndarray, float]:
    """Best rough similarity of the whole joint at one (coarse) pyramid level.

    Every candidate ``(angle_deg, scale)`` of ``poses`` is followed by windowed phase
    correlation for the translation;
    the ``refine_best`` candidates with the highest normalised cross-correlation over ``region``
    are refined by a few Gauss-Newton steps and the best refined one wins.

    Returns:
        ``(params, ncc)`` about ``center_xy`` at this level.
    """
    cx, cy = center_xy
    window = tapered_window(region, 2.0)
    candidates = list(extra_candidates or [])
    for angle, scale in poses:
        rad = math.radians(angle)
        a, b = scale * math.cos(rad), scale * math.sin(rad)
        rotated = warp_into_baseline(follow, np.array([a, b, 0.0, 0.0]), center_xy)
        shift, _ = phase_correlation_shift(base, rotated, window)
        # rotated(p + shift) ~ base(p)  =>  W(p) = s R (p + shift - c) + c
        candidates.append(np.array([a, b, a * shift[0] - b * shift[1], b * shift[0] + a * shift[1]]))
    # half the pixels: a rough alignment and the choice between starts need no more
    index, xs, ys = region_pixels(every_other_pixel(region))
    base_values = base.ravel().take(index).astype(np.float32)
    coef = spline_coefficients(follow)
    # the baseline side of the correlation is the same for every candidate
    base_centred = base_values.astype(np.float64)
    base_centred -= base_centred.mean()
    base_norm = math.sqrt(float(base_centred @ base_centred))

    def nccs_at(starts: list[np.ndarray]) -> list[float]:
        # all the starts in one sampler call: at this level its fixed cost was most of each
        positions = [warp_positions(params, cx, cy, xs, ys) for params in starts]
        sampled = sample_spline_values(coef, np.concatenate([wx for wx, _ in positions]),
                                       np.concatenate([wy for _, wy in positions]))
        scores = []
        for values in np.split(sampled.astype(np.float64), len(starts)):
            values -= values.mean()
            norm = math.sqrt(float(values @ values)) * base_norm
            scores.append(float(values @ base_centred) / norm if norm > 0 else -1.0)
        return scores

    # only the most promising starts are refined: a wrong rotation is already far behind here
    scores = nccs_at(candidates)
    order = sorted(range(len(candidates)), key=scores.__getitem__, reverse=True)
    ranked = [candidates[i] for i in order[:refine_best]]
    best, best_ncc = ranked[0], -np.inf
    fits = gauss_newton_parts(coef, [(base_values, xs, ys, params) for params in ranked], center_xy,
                              photometric_order=1, max_iterations=6, tolerance_px=0.1)
    refined = [fit.params for fit in fits
               if np.all(np.isfinite(fit.params)) and 0.5 < math.hypot(fit.params[0], fit.params[1]) < 2.0]
    for params, ncc in zip(refined, nccs_at(refined) if refined else []):
        if ncc > best_ncc:
            best, best_ncc = params, ncc
    return best, best_ncc


def coarse_level_for(shape: tuple[int, int], target_px: int = 80) -> int:
    """Pyramid level whose larger side is about ``target_px`` (at least 0)."""
    return max(0, int(round(math.log2(max(shape) / target_px))))


def shading_basis(ux: np.ndarray, uy: np.ndarray, order: int) -> np.ndarray:
    """Columns of a 2-D intensity polynomial of ``order`` (0: bias, 1: plane, 2: quadratic) in
    lever-normalised coordinates: the smooth field a part's intensity may change by."""
    terms = [np.ones_like(ux), ux, uy, ux * ux, ux * uy, uy * uy]
    count = {0: 1, 1: 3, 2: 6}.get(order)
    if count is None:
        raise ValueError(f"shading order must be 0, 1 or 2, got {order}")
    return np.stack(terms[:count], axis=1)


@dataclass
class SharedScaleFit:
    """Outcome of :func:`shared_scale_gauss_newton`, with what the variance of an estimate made
    from its parameters needs (:meth:`variance`)."""

    params: list[np.ndarray]  # (a, b, tx, ty) per part
    converged: bool
    iterations: int
    last_step_px: float
    step_matrix: np.ndarray = field(repr=False)  # B: the cross matrix, or J_fᵀ J_f after a fallback
    params_from_unknowns: np.ndarray = field(repr=False)  # T: d (a, b, tx, ty per part) / d unknowns
    jacobians: list[np.ndarray] = field(repr=False)  # J_f per part, last iteration
    unknowns: list[np.ndarray] = field(repr=False)  # each part's columns of the joint system
    residuals: list[np.ndarray] = field(repr=False)  # r per part, last iteration; NaN where not sampled
    pixels: list[tuple[np.ndarray, np.ndarray]] = field(repr=False)  # integer (x, y) of each part's pixels
    #: per part, the coefficients of its intensity shading (:func:`shading_basis` about the
    #: centre, per lever length): what the follow-up's intensity exceeds the baseline's by
    shading: list[np.ndarray] = field(default_factory=list)

    def geometric_hessian(self, part: int) -> np.ndarray:
        """``J_fᵀ J_f`` of one part's scale, rotation and translation columns (per lever length,
        unit noise, last iteration) with its shading columns profiled out: what the condition
        of its fit is judged on (NaN where the shading block is singular)."""
        jacobian = self.jacobians[part].astype(np.float64)
        normal = tall_product(jacobian, jacobian)
        try:
            return profile_out(normal, 4)
        except np.linalg.LinAlgError:
            return np.full((4, 4), np.nan)

    def variance(self, gradient: np.ndarray, max_lag_px: int = RESIDUAL_LAG_PX) -> float:
        """Variance of ``gradient · params`` (all parts' ``(a, b, tx, ty)``, part after part).

        The fit's answer moves with the gradient ``J_fᵀ r``, so the variance is ``wᵀ Var(J_fᵀ r) w``
        with ``w = B⁻¹ Tᵀ gradient``: per part ``Var(zᵀ r)`` of the pixel vector ``z = J_f w``,
        taken from the residual's own autocovariance (:func:`autocovariance_energy`). That
        covers the images' noise whatever its spectrum and whatever smoothing and blur matching
        it went through, and the part of the visits' difference the model does not explain.
        ``(J_fᵀ J_f)⁻¹`` times the residual's variance would understate it under noise by the
        ratio that slowed the steps down (see ``base_gradients``) and by the residual's
        correlation between neighbouring pixels.
        """
        try:
            if not np.all(np.linalg.eigvalsh(self.step_matrix) > 0):
                return float("inf")
            w = np.linalg.solve(self.step_matrix, self.params_from_unknowns.T @ gradient)
        except np.linalg.LinAlgError:
            return float("inf")
        total = 0.0
        for jacobian, columns, residual, (xs, ys) in zip(self.jacobians, self.unknowns, self.residuals, self.pixels):
            z = jacobian @ w[columns].astype(np.float32)  # float32 as the tables are: no copy of the Jacobian
            total += autocovariance_energy(xs, ys, z, residual, max_lag_px)
        return total


def _flat_top(lag: np.ndarray, max_lag: int) -> np.ndarray:
    """Trapezoidal lag window: 1 up to half of ``max_lag + 1``, then down to 0 at ``max_lag + 1``."""
    return np.clip(2.0 * (1.0 - lag / (max_lag + 1.0)), 0.0, 1.0)


def autocovariance_energy(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, residual: np.ndarray,
                          max_lag_px: int) -> float:
    """``Var(zᵀ r)`` of a pixel vector ``z`` (``values``) against a stationary residual ``r``,
    both at the integer pixels ``(xs, ys)``, from ``r``'s own spatial autocovariance.

    ``Var(zᵀ r) = Σ_lag R(lag) C_z(lag)``: ``R`` is the residual's autocovariance, averaged over
    the pixel pairs that lie ``lag`` apart, ``C_z`` the autocorrelation of ``z``. Lags run to
    ``max_lag_px`` along each axis under a flat-top (trapezoidal) window: the lags that carry
    most of a smoothed noise's covariance get full weight, where a Bartlett window (Newey-West)
    would understate a 1 px-correlated residual's variance by a fifth. Such a window can make
    the sum negative in principle; it is floored at 0. Pixels where ``r`` is NaN (not sampled)
    count in neither.
    """
    valid = np.isfinite(residual)
    x0, y0 = int(xs.min()), int(ys.min())
    h, w = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
    # residual, coverage and z on the region's box, zero-padded by at least the largest lag so
    # that the transforms' wrap-around reaches no lag of the tables
    shape = (cv2.getOptimalDFTSize(h + max_lag_px), cv2.getOptimalDFTSize(w + max_lag_px))
    flat = (ys.astype(np.intp) - y0) * shape[1] + (xs.astype(np.intp) - x0)
    if not valid.all():
        flat, values, residual = flat[valid], values[valid], residual[valid]
    images = np.zeros((3,) + shape, np.float32)
    images[0].ravel()[flat] = residual
    images[1].ravel()[flat] = 1.0
    images[2].ravel()[flat] = values
    products, pairs, z_correlation = (_lag_table(image, max_lag_px) for image in images)
    window = _flat_top(np.abs(np.arange(-max_lag_px, max_lag_px + 1)), max_lag_px)
    kernel = np.outer(window, window) * products / np.maximum(pairs, 1.0)
    return max(float(np.sum(kernel * z_correlation)), 0.0)


def _lag_table(image: np.ndarray, max_lag_px: int) -> np.ndarray:
    """``Σ_p x(p) x(p + lag)`` for lags up to ``max_lag_px`` along each axis, a
    ``(2 max_lag + 1)`` square table (float64), through the transform of the zero-padded image:
    the three tables by transforms cost two thirds of template matching and filtering."""
    spectrum = cv2.dft(image)
    power = cv2.mulSpectrums(spectrum, spectrum, 0, conjB=True)
    correlation = cv2.dft(power, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    lags = np.arange(-max_lag_px, max_lag_px + 1)
    return correlation[np.ix_(lags % image.shape[0], lags % image.shape[1])].astype(np.float64)


class RegionSmoother:
    """Gaussian average of values given on a region's pixels, normalised over the region.

    ``smooth(v)[i] = sum_j g(p_i - p_j) v_j / sum_j g(p_i - p_j)`` over the region's pixels
    ``p_j``: pixels outside the region count neither as zeros nor at all. Holds a canvas of the
    region's bounding box, reused call after call (only region pixels are ever written to it).
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, sigma_px: float) -> None:
        x0, y0 = int(xs.min()), int(ys.min())
        height, width = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
        self.sigma_px = float(sigma_px)
        self.index = ((ys - y0) * width + (xs - x0)).astype(np.intp)
        self.canvas = np.zeros((height, width), dtype=np.float32)
        self.canvas.ravel()[self.index] = 1.0
        self.inverse_weight = 1.0 / self._blurred()
        self.canvas.fill(0.0)

    def _blurred(self) -> np.ndarray:
        return cv2.GaussianBlur(self.canvas, (0, 0), self.sigma_px, borderType=cv2.BORDER_CONSTANT).ravel()[self.index]

    def smooth(self, values: np.ndarray) -> np.ndarray:
        """The region-normalised Gaussian average of ``values`` (one per region pixel), float32."""
        self.canvas.ravel()[self.index] = values
        out = self._blurred()
        out *= self.inverse_weight
        return out


def shared_scale_gauss_newton(
    follow_coef: np.ndarray,
    components: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    center_xy: tuple[float, float],
    *,
    max_iterations: int,
    tolerance_px: float,
    shading_order: int = 2,
    lever_px: float = LEVER_PX,
    base_gradients: list[tuple[np.ndarray, np.ndarray]] | None = None,
    robust_k: float = 0.0,
    robust_smoothing_px: float = 0.0,
) -> SharedScaleFit:
    """Joint fit of several rigid parts that share one magnification.

    A repositioned follow-up is magnified as a whole while the bones stay rigid, so both bones
    have the scale of the repositioning. Each part ``k`` gets its own rotation, translation and
    intensity shading (:func:`shading_basis`); the log-scale is common. Fitting the scale from all parts together makes it
    several times more precise than per bone, which matters because a scale error ``e`` shifts
    each bone's displacement at the joint centre by ``e`` times the distance of its region.

    Args:
        follow_coef: follow-up spline coefficients.
        components: per part ``(base_values, xs, ys, params)``, params ``(a, b, tx, ty)``.
        center_xy: centre of all transforms.
        max_iterations: iteration cap (one more evaluation follows a step taken back at the
            last, so that the point returned is one evaluated).
        tolerance_px: stop when no part moves by more than this.
        shading_order: degree of each part's intensity polynomial over the image plane. The soft
            tissue moves with the hand, not with each bone, so under a flexed bone its slope
            (the finger's rounded profile) slides: seen from the bone, a smooth change of
            brightness that a bias alone leaves to the rotation and scale to absorb.
        lever_px: normalising length of the rotation and scale columns.
        base_gradients: per part, the baseline's x and y gradients at its pixels. With them the
            normal matrix is the symmetric part of ``J_bᵀ J_f`` (baseline and follow-up
            gradients) instead of ``J_fᵀ J_f``. The two images' noises are independent, so its
            expectation is the noise-free Gram, while ``J_fᵀ J_f`` adds the follow-up gradient
            noise's Gram, which the cost's curvature does not have: every step fell short by
            the ratio, and under noise the fit crawled (9-14 iterations at 2500 photons per
            pixel instead of 4-5) and stopped ten times farther from its minimum. The gradient
            ``J_fᵀ r`` is unchanged, so is the minimum. A step that raises the cost (visits that
            differ by more than noise, or a step that puts a part off the follow-up: a real
            visit pair shifted by the real-series protocol had its lower bone sent 13,000 px
            away, where the fit stopped) is taken back and the fit goes on with ``J_fᵀ J_f``.
            A plain step that puts a part off the follow-up is taken back and tried again
            damped (Levenberg-Marquardt). A plain step that only raises the cost is kept, as
            ever: the cost of a reweighted fit is not the one it minimises, and taking back
            its rises near the end (up to 0.13 %) stopped noise-free phantoms 0.005 px short.
            A pixel moved off the follow-up costs as one at the Huber limit (without
            ``robust_k``, as the mean squared residual at the start): left out, a step that
            moved a bone's pixels off the follow-up lowered the cost by their share of it, and
            a real pair's bone was magnified nine times.
        robust_k: Huber limit in robust SDs of each part's starting residual (1.4826 x its
            median absolute value), 0 for least squares.
        robust_smoothing_px: with ``robust_k``, each pixel's weight follows the residual
            averaged around it (:class:`RegionSmoother`, Gaussian SD in px; 0: its own
            residual), and so does the limit. The fit is then iteratively reweighted least
            squares rather than the minimum of a cost; the cost it compares between iterations
            (Huber's, ``2 psi r - psi^2``, with these weights) only decides when a step of the
            cross matrix is taken back.

    Returns:
        The parameters per part, convergence, and what their variance needs
        (:meth:`SharedScaleFit.variance`).
    """
    cx, cy = center_xy
    h, w = follow_coef.shape
    n = len(components)
    # lever-normalised positions, shading columns and the Jacobian's shading block depend only
    # on the baseline pixels: built once per part (column-major, so columns fill contiguously)
    levers, shadings, jacobians = [], [], []
    offsets = [(xs - cx, ys - cy) for _, xs, ys, _ in components]
    for _, xs, ys, _ in components:
        ux = ((xs - cx) / lever_px).astype(np.float32)
        uy = ((ys - cy) / lever_px).astype(np.float32)
        shading = shading_basis(ux, uy, shading_order)
        jac = np.zeros((xs.size, 4 + shading.shape[1]), dtype=np.float32, order="F")  # zeros: see off_image
        jac[:, 4:] = -shading
        levers.append((ux, uy))
        shadings.append(shading)
        jacobians.append(jac)
    # the cross matrix's geometric columns (its shading ones are the follow-up Jacobian's)
    cross_jacobians = ([np.empty((xs.size, 4), dtype=np.float32, order="F") for _, xs, _, _ in components]
                       if base_gradients is not None else [])
    n_shade = shadings[0].shape[1]
    per = 3 + n_shade  # unknowns of one part: rotation, translation, shading
    size = 1 + per * n
    # the unknowns, rotation and log-scale per lever length: [log s, (theta, tx, ty, shading) per part]
    state = np.zeros(size)
    state[0] = lever_px * float(np.mean([math.log(math.hypot(p[0], p[1])) for *_, p in components]))
    for k, (*_, p) in enumerate(components):
        state[1 + per * k: 4 + per * k] = (lever_px * math.atan2(p[1], p[0]), p[2], p[3])
    # the farthest pixel from the squared distances: np.hypot is several times slower
    reach = math.sqrt(max(float(np.max(ox * ox + oy * oy)) for ox, oy in offsets)) + 1.0
    # each part's unknowns in the joint system: the shared log-scale, then its own
    unknowns = [np.array([0] + list(range(1 + per * k, 1 + per * (k + 1)))) for k in range(n)]
    blocks = [np.ix_(idx, idx) for idx in unknowns]

    def pixel_move(step: np.ndarray) -> float:
        """Largest move of a region pixel that ``step`` makes (px)."""
        scale_move = reach * abs(step[0]) / lever_px
        return max(
            math.hypot(step[2 + per * k], step[3 + per * k]) + reach * abs(step[1 + per * k]) / lever_px + scale_move
            for k in range(n)
        )

    def transforms(x: np.ndarray) -> list[np.ndarray]:
        scale = math.exp(x[0] / lever_px)
        return [
            np.array([scale * math.cos(x[1 + per * k] / lever_px), scale * math.sin(x[1 + per * k] / lever_px),
                      x[2 + per * k], x[3 + per * k]])
            for k in range(n)
        ]

    def plausible(x: np.ndarray) -> bool:
        """Numbers, and a magnification some visit could have (``MAX_FIT_SCALE``)."""
        return bool(np.all(np.isfinite(x))) and abs(x[0]) < lever_px * math.log(MAX_FIT_SCALE)

    def scaled_solve(matrix: np.ndarray, rhs: np.ndarray, damping: float = 0.0) -> np.ndarray:
        """Gauss-Newton step, solved on the unit-diagonal matrix (the columns' scales differ),
        with ``damping`` added to that diagonal (Levenberg-Marquardt)."""
        diag = np.sqrt(np.maximum(np.diag(matrix), 1e-20))
        unit = matrix / np.outer(diag, diag)
        if damping:
            unit[np.diag_indices_from(unit)] += damping
        return -np.linalg.solve(unit, rhs / diag) / diag

    use_cross = base_gradients is not None
    accepted = None  # (state, cost, Gauss-Newton normal matrix, gradient) of the last accepted point
    residuals: list[np.ndarray] = [np.zeros(0)] * n  # of the last evaluated point, for the variance
    limits: list[np.float32 | None] = [None] * n  # Huber limit per part
    off_costs: list[float | None] = [None] * n  # the cost of a pixel off the follow-up, per part
    # the pixel each sample point lies in (the points may sit anywhere inside it)
    pixels = [(np.floor(xs), np.floor(ys)) for _, xs, ys, _ in components]
    smoothers = ([RegionSmoother(xs, ys, robust_smoothing_px) for xs, ys in pixels]
                 if robust_k > 0 and robust_smoothing_px > 0 else None)
    converged, moved, iterations = False, float("inf"), 0
    damping = 0.0  # Levenberg-Marquardt's, on the unit diagonal: 0 until a plain step leaves the image
    last_pass = max_iterations  # one more after a step taken back at the last (below)
    while iterations < last_pass:
        iterations += 1
        taken_back = False
        normal = np.zeros((size, size))
        cross_normal = np.zeros((size, size))
        off_image = not plausible(state)  # as a step off the follow-up
        gradient = np.zeros(size)
        cost = 0.0
        for k, ((base_values, *_), params) in enumerate(zip(components, [] if off_image else transforms(state))):
            a, b = float(params[0]), float(params[1])  # Python floats: the lever terms stay float32
            wx, wy = warp_offsets(params, cx, cy, *offsets[k])
            fv, fx, fy = sample_spline(follow_coef, wx, wy)
            valid = sampled_inside(wx, wy, (h, w))
            if not valid.any():
                # a part wholly off the follow-up: a start a coarse stage led astray (nothing
                # to fit: the fit stops unconverged, with a singular Hessian), or a step that
                # overshot (taken back below)
                off_image = True
                residuals[k] = np.full(valid.shape, np.nan, dtype=np.float32)
                break
            ux, uy = levers[k]
            rx, ry = a * ux - b * uy, b * ux + a * uy  # R s u: d p' / d log s (per lever)
            jac = jacobians[k]
            jac[:, 0] = fx * rx + fy * ry
            jac[:, 1] = fy * rx - fx * ry
            jac[:, 2] = fx
            jac[:, 3] = fy
            residual = fv - base_values - shadings[k] @ state[4 + per * k: 1 + per * (k + 1)].astype(np.float32)
            if robust_k > 0:
                if smoothers is None:
                    magnitude = np.abs(residual)
                else:  # off-image pixels (zero weight below) add nothing to their neighbours' averages
                    kept = residual if valid.all() else np.where(valid, residual, np.float32(0))
                    magnitude = np.abs(smoothers[k].smooth(kept))
                if limits[k] is None:  # fixed at the start, so that the costs of all iterations compare
                    limits[k] = np.float32(robust_k * 1.4826 * max(float(np.median(magnitude[valid])), 1e-9))
                weights = limits[k] / np.maximum(magnitude, limits[k])  # 1 within the limit, limit / |r| beyond
                if not valid.all():
                    weights *= valid
                weighted = jac * weights[:, None]
                # the fit's gradient is J^T psi(r), psi(r) = w r: the variance follows psi(r), not r
                influence = weights * residual
                # Huber's cost, r^2 within the limit and 2 L |r| - L^2 beyond, is 2 psi r - psi^2
                cost += 2.0 * float(np.dot(influence, residual)) - float(np.dot(influence, influence))
                residuals[k] = influence if valid.all() else np.where(valid, influence, np.float32(np.nan))
            else:
                weighted = jac if valid.all() else jac * valid[:, None].astype(np.float32)
                kept = residual if valid.all() else residual[valid]
                cost += float(np.dot(kept, kept))
                residuals[k] = residual if valid.all() else np.where(valid, residual, np.float32(np.nan))
            if off_costs[k] is None:  # fixed at the start, as the limit
                off_costs[k] = (float(limits[k]) ** 2 if robust_k > 0
                                else float(np.mean(np.square(residual[valid], dtype=np.float64))))
            if not valid.all():
                # a pixel moved off the follow-up costs an outlier's worth: else a step that
                # moves a bone's worst pixels off the image lowers the cost and is kept (a real
                # visit pair's cross step of 600 px, to a magnification of 9)
                cost += off_costs[k] * float(valid.size - np.count_nonzero(valid))
            block = tall_product(weighted, jac)
            normal[blocks[k]] += block
            gradient[unknowns[k]] += weighted.T @ residual
            if use_cross:
                # the baseline's gradient carried into the follow-up frame: A^-T grad b, A = s R
                bx, by = base_gradients[k]
                inv = 1.0 / (a * a + b * b)
                gx, gy = inv * (a * bx - b * by), inv * (b * bx + a * by)
                jb = cross_jacobians[k]
                jb[:, 0] = gx * rx + gy * ry
                jb[:, 1] = gy * rx - gx * ry
                jb[:, 2] = gx
                jb[:, 3] = gy
                # the shading columns are the same in both Jacobians: only the geometric ones differ
                cross = block.copy()
                cross[:, :4] = weighted.T @ jb
                cross_normal[blocks[k]] += 0.5 * (cross + cross.T)
        if off_image:
            if accepted is None:
                break
            off_image, cost = False, math.inf
        if accepted is not None and (not math.isfinite(cost) or (use_cross and cost > accepted[1] * (1.0 + 1e-5))):
            # the step overshot. With the cross matrix, it fell below the cost's curvature (or is
            # nearly singular here): back to the last point, and plain Gauss-Newton from there
            # on. A plain step off the follow-up: back, and a shorter step nearer steepest descent
            state, cost, normal, gradient = accepted
            if use_cross:
                use_cross = False
            else:
                damping = max(10.0 * damping, MIN_DAMPING)
            taken_back = True
            if iterations >= max_iterations:
                # the Jacobians and residuals at hand are the rejected point's: one more pass
                # evaluates the point kept, which the fit returns, so that its variance is that
                # point's (no further step: it could be taken back as well)
                last_pass = iterations + 1
                continue
        else:
            accepted = (state, cost, normal, gradient)
            damping = 0.0 if damping < 2.0 * MIN_DAMPING else 0.1 * damping
            if iterations > max_iterations:
                break  # that extra pass: the point evaluated is the one returned
        step = None
        if use_cross:
            try:
                step = scaled_solve(cross_normal, gradient)
            except np.linalg.LinAlgError:
                pass
            if step is None or float(gradient @ step) >= 0.0:  # singular, or not a descent direction
                step, use_cross = None, False
        if step is None:
            try:
                step = scaled_solve(normal, gradient, damping)
            except np.linalg.LinAlgError:
                break
        if not np.all(np.isfinite(step)):
            break
        state = state + step
        moved = pixel_move(step)
        # after a step taken back, the Jacobians and residuals at hand are the rejected point's:
        # the fit evaluates once more, so that the variance uses those of the point it returns;
        # and a damped step is short for the damping, not for the fit's being done
        if moved < tolerance_px and not taken_back and not damping:
            converged = True
            break
    if not converged and accepted is not None and not (plausible(state) and all(
            sampled_inside(*warp_offsets(params, cx, cy, *offsets[k]), (h, w)).any()
            for k, params in enumerate(transforms(state)))):
        # the last step, not evaluated, left the follow-up (or went where none is taken): the
        # point it left, whose residuals and Jacobians are the ones at hand (a converged fit's
        # last step is below the tolerance)
        state = accepted[0]
    if damping:
        moved = math.inf  # a damped last step is short for the damping: no sign of convergence
    return SharedScaleFit(
        transforms(state), converged, iterations, moved,
        step_matrix=cross_normal if use_cross else normal,
        params_from_unknowns=params_from_unknowns(state, n, per, lever_px),
        jacobians=jacobians, unknowns=unknowns,  # this call's own buffers, done with
        residuals=residuals, pixels=pixels,
        shading=[state[4 + per * k: 1 + per * (k + 1)].copy() for k in range(n)],
    )


def params_from_unknowns(state: np.ndarray, n: int, per: int, lever_px: float) -> np.ndarray:
    """Derivative of the parts' ``(a, b, tx, ty)`` with respect to the unknowns of
    :func:`shared_scale_gauss_newton` (log-scale and angles per lever length, translations)."""
    jac = np.zeros((4 * n, len(state)))
    scale = math.exp(state[0] / lever_px)
    for k in range(n):
        angle = state[1 + per * k] / lever_px
        a, b = scale * math.cos(angle), scale * math.sin(angle)
        rows = slice(4 * k, 4 * k + 4)
        jac[rows, 0] = (a / lever_px, b / lever_px, 0.0, 0.0)  # d/d log-scale
        jac[rows, 1 + per * k] = (-b / lever_px, a / lever_px, 0.0, 0.0)  # d/d angle
        jac[4 * k + 2, 2 + per * k] = 1.0
        jac[4 * k + 3, 3 + per * k] = 1.0
    return jac

