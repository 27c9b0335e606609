"""What of a stored crop is picture: padding along its edges and a fill of other shape.

Groups store joint crops padded to a size, or turned upright with the corners the turn leaves.
Neither padding nor fill is anatomy, and both stay where the array is while a second visit's
joint moves under them: the quantifier keeps its regions away from them, and the LSN, which
never saw them around a joint, separates the picture alone (docs/quantify-method.md, step 2;
docs/lsn.md, *Input and output contract*).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np


def leading_padding(image: np.ndarray) -> int:
    """How many rows at the top of ``image`` are padding rather than picture.

    Recognised, by exact equality (what ``np.pad``, ``cv2.copyMakeBorder`` and lossless files
    leave): a constant fill (every row equal and flat), the edge row replicated, and the picture
    mirrored about its edge row (``reflect``) or beyond it (``symmetric``). At most half the rows.
    """
    rows = np.asarray(image)
    limit = rows.shape[0] // 2
    # the rows identical to the top one (its first pixel rules out nearly all rows cheaply)
    twins = np.flatnonzero(rows[:, 0] == rows[0, 0])
    if twins.size > 1:
        twins = twins[(rows[twins] == rows[0]).all(axis=1)]
    leading = twins == np.arange(twins.size)
    run = twins.size if leading.all() else int(np.argmin(leading))
    flat = bool((rows[0] == rows[0, 0]).all())
    # a constant fill is all padding; of a replicated edge the last copy is the picture's own row
    padding = run if flat else run - 1
    # a mirror about row p puts row 0's twin at 2p (reflect) or 2p - 1 (symmetric)
    for twin in twins[run:][::-1]:
        p = (int(twin) + 1) // 2
        if p <= padding or p > limit:
            continue
        start = p + 1 if twin % 2 == 0 else p
        if np.array_equal(rows[:p], rows[start:start + p][::-1]):
            padding = p
            break
    return min(padding, limit)


def content_box(*images: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``, half-open, of the part of every image that is picture:
    rows and columns of padding along the array edges (:func:`leading_padding`) left out.

    A crop padded to size has, inside the array, an edge that stays put while a repositioned
    follow-up moves under it: registration must keep as far from it as from the array border.
    """
    top = max(leading_padding(image) for image in images)
    bottom = max(leading_padding(image[::-1]) for image in images)
    left = max(leading_padding(image.T) for image in images)
    right = max(leading_padding(image.T[::-1]) for image in images)
    height, width = images[0].shape
    return top, height - bottom, left, width - right


def replicate_picture_edge(image: np.ndarray, content: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` with everything outside the ``content`` box replaced by the picture's edge
    rows and columns replicated: a fill's jump (zero padding against bright bone) would
    otherwise spread, through the pyramid and the spline prefilter, past any band kept from it."""
    top, bottom, left, right = content
    height, width = image.shape
    if (top, bottom, left, right) == (0, height, 0, width):
        return image
    picture = np.ascontiguousarray(image[top:bottom, left:right])
    return cv2.copyMakeBorder(picture, top, height - bottom, left, width - right, cv2.BORDER_REPLICATE)


#: A fill (:func:`find_fill`) covers at least this share of the picture: a crop turned by 1 deg
#: leaves 0.85 % in its corners, in wedges under 3 px wide that the quantifier's band along the
#: edge covers anyway. No real development crop (stored as JPEG) holds more than 0.28 % of its
#: lowest value connected to its edge.
MIN_FILL_FRACTION = 0.01
#: Reach (px) of the interpolation that turned a crop: bicubic blends the fill into the picture
#: over 2 px (a line of dark pixels along the corners otherwise stays in the picture).
FILL_BLEND_PX = 2
#: A fill stored lossily (JPEG) rings: beside its exactly black core, pixels up to this share of
#: the image's range above its lowest value, connected to the core and within
#: :data:`FILL_RINGING_PX` of it, are fill as well.
FILL_TOLERANCE = 0.05
#: How far from a fill's exactly black core a lossy format rings: JPEG's 8 px blocks. Farther,
#: dark pixels are picture (a phantom's soft tissue, windowed dark, reached the bone masks).
FILL_RINGING_PX = 8
#: Of a fill of any level (``find_fill(..., any_level=True)``), a level taken by at least this
#: share of the array's edge pixels is a candidate: the fill of a turned crop runs along it.
MIN_FILL_EDGE_SHARE = 0.02
#: A fill is a spike in the image's histogram: its value at least this many times as common as
#: the nearest value below and above it present in the image. Smooth soft tissue stored with 8
#: bits is made of bands of one value, each more than 1 % of the crop along its edge, but its
#: neighbouring values are about as common (0.4-1.4 times, and 0.5-1.4 for the dark air of the
#: real JPEG crops); the corners of a crop turned upright, white or grey, 116 times and more.
MIN_FILL_SPIKE = 10.0


def two_values_only(image: np.ndarray) -> bool:
    """Whether ``image`` holds exactly two values, as a drawn mask does (a radiograph never)."""
    low, high = image.min(), image.max()
    return bool(low < high and not np.any((image != low) & (image != high)))


#: Share of an image's pixels in the middle of its range past which it is a picture, not a mask.
PICTURE_GREY_SHARE = 0.5


def looks_like_a_picture(image: np.ndarray) -> bool:
    """Whether ``image``, given as a mask, is a picture (a radiograph given in a mask's place):
    more than :data:`PICTURE_GREY_SHARE` of its pixels lie in the middle 80 % of its range, among
    more than 16 values. A drawn mask's pixels sit at its two values; a blurred, resampled or
    JPEG one's near them but along its edges; a label image of a few values has few values."""
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return False
    middle = np.count_nonzero((values > low + 0.1 * (high - low)) & (values < high - 0.1 * (high - low)))
    return middle > PICTURE_GREY_SHARE * values.size and np.unique(values).size > 16


def grown(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """``mask`` and every pixel within ``radius_px`` of it (Euclidean, to OpenCV's 5x5 chamfer:
    within 2 %), at any radius for the cost of one distance transform (a third of the exact
    transform's). For a fill and its band, whose edge need not be exact; the bone regions keep
    :func:`jsnsynth.quantify.register.dilate`, an exact disk sampled at a pyramid level's step
    (a 96 px disk on a 2048 px fill took 1.8 s where this takes 0.06 s)."""
    if radius_px <= 0 or not mask.any():
        return mask.copy()
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    return distance <= radius_px


def _is_spike(values: np.ndarray, level: float, count: int) -> bool:
    """Whether ``count`` pixels of ``level`` are :data:`MIN_FILL_SPIKE` times as many as those of
    the nearest value below and above it in ``values``."""
    below, above = values[values < level], values[values > level]
    nearest = ([below.max()] if below.size else []) + ([above.min()] if above.size else [])
    return count >= MIN_FILL_SPIKE * max((np.count_nonzero(values == value) for value in nearest), default=0)


def _components_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` connected (4-neighbours, through ``mask``) to a pixel of ``seeds``."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    kept = np.zeros(count, dtype=bool)
    kept[labels[seeds]] = True
    kept[0] = False  # the background
    return kept[labels]


def _edge_connected(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` connected to the array's edge through ``mask``."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    return _components_touching(mask, edge)


#: A fill, before the :data:`FILL_BLEND_PX` around it, may hold at most this share of a bone mask
#: given to :func:`find_fill` (a turned crop's: none); a level that holds more is not fill: bone
#: a display window saturated (its outline moves with the bone), or an image dark over the bones
#: (a follow-up not of this joint, or not exposed there).
MAX_FILL_IN_MASK = 0.02


def find_fill(image: np.ndarray, any_level: bool = False, masks: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """Pixels of ``image`` that are fill rather than picture; none when there is no fill.

    A fill's core is the pixels of exactly one value connected to the array's edge through that
    value, when they make up at least :data:`MIN_FILL_FRACTION` of the image and the value is a
    spike in its histogram (:data:`MIN_FILL_SPIKE`): the image's lowest value, or with
    ``any_level`` any value along :data:`MIN_FILL_EDGE_SHARE` of the edge. Of the
    lowest, the pixels within :data:`FILL_TOLERANCE` of it connected to the core and within
    :data:`FILL_RINGING_PX` of it (a lossy format's ringing) are fill too, and
    :data:`FILL_BLEND_PX` around every core (what the turn's interpolation blended).

    The corners that ``cv2.warpAffine`` or ``scipy.ndimage.rotate`` leave around a crop turned
    upright are such a fill, so is padding of one value turned with the crop, and so is air
    saturated by a display window beside the finger. None holds structure but its edge, which is
    static (a fill stays where the array is while the joint moves) or the skin's: neither says
    where a bone went. A bright level is also what a window makes of bone where it saturates it
    at the crop's edge, whose outline moves with the bone: ``any_level`` is for a caller that can
    tell the two by the bone ``masks`` (the quantifier: a level that holds more than
    :data:`MAX_FILL_IN_MASK` of a mask is not fill); without them (the LSN) only the lowest level
    is a fill. Rectangular padding of any value is :func:`content_box`'s.
    """
    values = np.asarray(image)
    least = int(np.ceil(MIN_FILL_FRACTION * values.size))
    lowest, highest = values.min(), values.max()
    levels = [lowest]
    if any_level:
        edge = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
        candidates, counts = np.unique(edge, return_counts=True)
        levels += [level for level in candidates[counts >= MIN_FILL_EDGE_SHARE * edge.size] if level != lowest]
    fill = np.zeros(values.shape, dtype=bool)
    for level in levels:
        at_level = values == level
        if np.count_nonzero(at_level) < least or not _is_spike(values, level, np.count_nonzero(at_level)):
            continue
        core = _edge_connected(at_level)
        if np.count_nonzero(core) < least:
            continue
        if level == lowest:
            near = (values <= lowest + FILL_TOLERANCE * (float(highest) - float(lowest))) & grown(core, FILL_RINGING_PX)
            core = _components_touching(near, core)
        if any(np.count_nonzero(core & mask) > MAX_FILL_IN_MASK * np.count_nonzero(mask) for mask in masks):
            continue
        fill |= core
    return grown(fill, FILL_BLEND_PX) if fill.any() else fill


def fill_from_picture(image: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``image`` with its ``fill`` pixels replaced by the picture mirrored about the nearest
    picture pixel (that pixel itself where the mirror falls outside the picture): the fill's jump
    against the picture would otherwise spread through smoothing and interpolation, and a
    network sees a mirrored picture as picture (real crops turned by 15 deg separate well with
    their corners mirrored, not with them black)."""
    if not fill.any() or fill.all():  # nothing to fill, or no picture to fill it from
        return image
    # each picture pixel its own label, numbered in raster order: a fill pixel's label is its
    # nearest picture pixel's (within a fraction of a pixel: OpenCV's precise mask)
    _, nearest = cv2.distanceTransformWithLabels(fill.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    picture_y, picture_x = np.nonzero(~fill)
    ys, xs = np.nonzero(fill)
    qy, qx = picture_y[nearest[ys, xs] - 1], picture_x[nearest[ys, xs] - 1]
    my, mx = 2 * qy - ys, 2 * qx - xs
    height, width = fill.shape
    inside = (my >= 0) & (my < height) & (mx >= 0) & (mx < width)
    mirrored = inside.copy()
    mirrored[inside] = ~fill[my[inside], mx[inside]]
    source_y, source_x = np.where(mirrored, my, qy), np.where(mirrored, mx, qx)
    filled = np.array(image, copy=True)
    filled[ys, xs] = image[source_y, source_x]
    return filled


#: A spectral peak that both images hold at least this many times above the power around it may be
#: a fixed pattern (an anti-scatter grid's lines, a detector's stripes): a few bins of power where
#: the anatomy's is spread.
FIXED_PATTERN_RATIO = 100.0
#: Patterns of periods above 2 px (the Nyquist bins left out) up to this are looked for; slower
#: ones are the anatomy's band.
FIXED_PATTERN_MAX_PERIOD_PX = 16.0
#: ... and of at least this many periods across the picture along the pattern's direction (bins
#: from the spectrum's centre): a pattern is a sharp peak only among many bins, and in a
#: spectrum's first bins the anatomy's own power is peaked (64 px phantom crops had "patterns"
#: of 10-16 px found in their bones and fitted out, which moved pairs by up to 0.66 px; an outside
#: probe's, up to 1.4 px).
FIXED_PATTERN_MIN_CYCLES = 16
#: What makes a peak a pattern fixed to the detector rather than a periodic texture that moves with
#: a bone (whose power stays where it was): the same phase in every image, within this many
#: degrees, and amplitudes within this factor of each other (the visits' displays differ).
FIXED_PATTERN_MAX_PHASE_DEG = 20.0
FIXED_PATTERN_MAX_GAIN = 2.0
#: Gaussian width (frequency bins) of the power around a peak.
_BACKGROUND_SIGMA_BINS = 3.0
#: A detector's pattern is a few sinusoids (an anti-scatter grid's lines and their harmonics),
#: weak against the picture: more of them, or more of an image's variance than this share, is
#: the picture's own structure (rows that repeat, a texture), and is left as it is.
MAX_FIXED_PATTERN_SINUSOIDS = 6
MAX_FIXED_PATTERN_SHARE = 0.1


@functools.lru_cache(maxsize=8)
def _spectrum_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For ``(h, w)`` images: the Hann window, each bin's ``fy`` and ``fx`` (cycles per px, zero
    frequency at ``(h // 2, w // 2)``), and the bins where a pattern is looked for: one half of
    the plane (a real image's spectrum is symmetric, each pattern shows twice), periods from 2 to
    :data:`FIXED_PATTERN_MAX_PERIOD_PX` px and :data:`FIXED_PATTERN_MIN_CYCLES` of them across
    the picture along the pattern's direction, and not the first row or column (of an even size,
    the Nyquist frequency, whose peak cannot be refined there)."""
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    fy = (np.arange(h) - h // 2)[:, None] / h
    fx = (np.arange(w) - w // 2)[None, :] / w
    half = (fx > 0) | ((fx == 0) & (fy > 0))
    cycles = np.hypot(fy * h, fx * w)  # periods across the picture: the bin's distance from the centre
    wanted = half & (np.hypot(fy, fx) >= 1.0 / FIXED_PATTERN_MAX_PERIOD_PX) & (cycles >= FIXED_PATTERN_MIN_CYCLES)
    wanted[0, :] = False
    wanted[:, 0] = False
    return window, fy, fx, wanted


def _log_power(image: np.ndarray) -> np.ndarray:
    """Log power spectrum of ``image``, zero frequency at ``(h // 2, w // 2)`` (float32; the
    image's mean removed and a Hann window applied: a crop's edges would otherwise put a cross of
    power through the spectrum)."""
    values = np.asarray(image, dtype=np.float32)
    windowed = (values - values.mean()) * _spectrum_grid(*values.shape)[0]
    spectrum = cv2.dft(windowed, flags=cv2.DFT_COMPLEX_OUTPUT)
    power = cv2.magnitude(spectrum[..., 0], spectrum[..., 1])
    return np.fft.fftshift(2.0 * cv2.log(power + np.float32(1e-10)))


def _peak_excess(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image's log power spectrum and its excess over the Gaussian average around each bin."""
    power = _log_power(image)
    return power, power - cv2.GaussianBlur(power, (0, 0), _BACKGROUND_SIGMA_BINS, borderType=cv2.BORDER_REFLECT)


def spectral_peaks(*images: np.ndarray) -> list[tuple[float, float]]:
    """Frequencies ``(fy, fx)`` (cycles per px, each once) at which every image holds a sharp peak
    of power: where each image's log power exceeds its own Gaussian average around the bin by
    ``log(FIXED_PATTERN_RATIO)``, at a period of 2 to :data:`FIXED_PATTERN_MAX_PERIOD_PX` px
    (:data:`FIXED_PATTERN_MIN_CYCLES` of them across the picture),
    the largest of its 3 x 3 neighbours; each frequency refined to a fraction of a bin on the
    first image's spectrum (a parabola through the peak's log power and its neighbours: the
    window's main lobe is nearly Gaussian). Power alone does not tell a pattern fixed to the
    detector from a periodic texture that moves: :func:`without_fixed_pattern` asks their phases.
    """
    h, w = images[0].shape
    _, fy, fx, wanted = _spectrum_grid(h, w)
    threshold = math.log(FIXED_PATTERN_RATIO)
    first_power, excess = _peak_excess(images[0])
    candidate = wanted & (excess > threshold)
    for image in images[1:]:
        if not candidate.any():  # the usual case: no peak in the first image, the others not looked at
            return []
        candidate &= _peak_excess(image)[1] > threshold
    candidate &= excess >= cv2.dilate(excess, np.ones((3, 3), np.uint8))
    found = []
    for y, x in zip(*np.nonzero(candidate)):  # never in the first row or column (wanted)
        dy = _parabola_offset(first_power, y, x, 0) if y < h - 1 else 0.0
        dx = _parabola_offset(first_power, y, x, 1) if x < w - 1 else 0.0
        found.append((float(fy[y, 0] + dy / h), float(fx[0, x] + dx / w)))
    return found


def _parabola_offset(power: np.ndarray, y: int, x: int, axis: int) -> float:
    """Sub-bin offset of a peak along ``axis`` from its log power and its two neighbours."""
    step = (1, 0) if axis == 0 else (0, 1)
    minus, centre, plus = (float(power[y + k * step[0], x + k * step[1]]) for k in (-1, 0, 1))
    curvature = minus - 2.0 * centre + plus
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0


def _sinusoids(shape: tuple[int, int], frequencies: list[tuple[float, float]]) -> list[np.ndarray]:
    """Per frequency, the ``(h * w, 2)`` design of its cosine and sine over the image."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    designs = []
    for fy, fx in frequencies:
        phase = 2.0 * np.pi * (fx * xx + fy * yy)
        designs.append(np.stack([np.cos(phase).ravel(), np.sin(phase).ravel()], axis=1))
    return designs


def sinusoid_amplitudes(image: np.ndarray, designs: list[np.ndarray]) -> list[complex]:
    """Least-squares amplitude of each sinusoid (:func:`_sinusoids`) in ``image``, as ``a + ib``
    of ``a cos + b sin``; its angle is the sinusoid's phase in the image (each fitted alone: at
    distinct frequencies they are nearly orthogonal, and the anatomy, far weaker at a peak's
    frequency, barely enters)."""
    values = np.asarray(image, dtype=np.float64).ravel()
    values = values - values.mean()
    amplitudes = []
    for design in designs:
        (a, b), *_ = np.linalg.lstsq(design, values, rcond=None)
        amplitudes.append(complex(a, b))
    return amplitudes


def without_fixed_pattern(*images: np.ndarray) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """The images less the pattern they all hold fixed to the detector, and its frequencies.

    A pattern fixed to the detector (an anti-scatter grid's lines, a moiré of them) is in every
    visit where the array is, while the joint moves under it, and pulls a registration toward no
    motion (lines of 2 % at a period of 4 px moved phantom pairs by up to 0.87 px, unflagged). It
    is a sharp peak of power at the same frequency in every image (:func:`spectral_peaks`) *and*
    at the same phase, within :data:`FIXED_PATTERN_MAX_PHASE_DEG` and amplitudes within
    :data:`FIXED_PATTERN_MAX_GAIN` of each other: a periodic texture that moves with a bone keeps
    its power where it was but not its phase (such a texture, fitted out, moved phantom pairs by
    0.07-0.10 px). Each such sinusoid, fitted by least squares over each image, is subtracted
    (a notch of the spectrum instead left a tenth of a pattern whose period falls between the
    frequency bins). The images come back themselves, with no frequency, where there is none,
    or where the patterns are more than :data:`MAX_FIXED_PATTERN_SINUSOIDS` sinusoids or more
    than :data:`MAX_FIXED_PATTERN_SHARE` of an image's variance (images whose rows all repeat
    made ten "patterns" of their whole content); otherwise in their own types (integers rounded
    and clipped to their range).
    """
    peaks = spectral_peaks(*images)
    if not peaks:
        return list(images), []
    designs = _sinusoids(np.shape(images[0]), peaks)
    amplitudes = [sinusoid_amplitudes(image, designs) for image in images]
    fixed = []
    for k in range(len(peaks)):
        first = amplitudes[0][k]
        if abs(first) == 0.0:
            continue
        same = all(abs(math.degrees(np.angle(other[k] / first))) <= FIXED_PATTERN_MAX_PHASE_DEG
                   and 1.0 / FIXED_PATTERN_MAX_GAIN <= abs(other[k]) / abs(first) <= FIXED_PATTERN_MAX_GAIN
                   for other in amplitudes[1:])
        if same:
            fixed.append(k)
    if not fixed or len(fixed) > MAX_FIXED_PATTERN_SINUSOIDS:
        return list(images), []
    cleaned = []
    for image, image_amplitudes in zip(images, amplitudes):
        values = np.asarray(image, dtype=np.float64)
        pattern = sum(designs[k] @ np.array([image_amplitudes[k].real, image_amplitudes[k].imag]) for k in fixed)
        pattern = pattern.reshape(values.shape)
        if float(np.var(pattern)) > MAX_FIXED_PATTERN_SHARE * float(np.var(values)):
            return list(images), []
        clean = values - pattern
        dtype = np.asarray(image).dtype
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            clean = np.clip(np.rint(clean), info.min, info.max)
        cleaned.append(clean.astype(dtype))
    return cleaned, [peaks[k] for k in fixed]
