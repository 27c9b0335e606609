"""X-ray forward model: attenuation layers -> detected radiograph, and back.

The physics (DESIGN.md): attenuation line integrals add, transmission multiplies,

    T = exp(-a),   I = 1 - T = 1 - exp(-a)   (display intensity in [0, 1), bone bright)

which is the layer separation paper's recombination ``I = 1 - (1-U)(1-L)(1-S)`` with every layer
mapped by the same function. The imaging chain applied to a recomposed attenuation map is:

1. detector blur: a Gaussian point spread on the transmitted signal ``T`` (with a patient's
   motion during the exposure, ``motion_blur_px2`` more variance along its direction, 0 by
   default), then the beam's field:
   ``T`` times a plane that rises by ``heel_gain`` across the picture (the anode heel effect, 0
   by default: :func:`heel_field`);
2. noise on ``T``: quantum (Poisson, variance ``T / photons_per_px``) plus electronic (constant
   standard deviation ``electronic_noise``), drawn from ``noise_seed``;
3. ``I = 1 - T`` and the display mapping: window ``[window_low, window_high]`` then ``gamma``;
4. quantisation to ``bit_depth`` bits (:func:`quantize`).

Every parameter lives in :class:`ImagingParams`: sampled by :func:`sample_imaging_params`,
applied by :func:`render_radiograph`, recorded with :meth:`ImagingParams.to_dict`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np

from jsnsynth.errors import InputError
from jsnsynth.synth.limits import MAX_HEEL_GAIN, MAX_MOTION_BLUR_PX2

#: Reflected border (px) around an image blurred in the Fourier domain, beyond the 4-sigma reach:
#: keeps the wrap-around of the periodic transform away from the crop.
BLUR_PAD_PX = 16
#: Largest intensity the inverse mapping accepts; keeps ``-log(1 - I)`` finite.
MAX_INTENSITY = 1.0 - 1.0 / 65536.0


def attenuation_to_intensity(attenuation: np.ndarray) -> np.ndarray:
    """Map attenuation ``a >= 0`` to display intensity ``I = 1 - exp(-a)`` in ``[0, 1)``."""
    return -np.expm1(-np.asarray(attenuation))


def intensity_to_attenuation(intensity: np.ndarray) -> np.ndarray:
    """Inverse of :func:`attenuation_to_intensity`: ``a = -log(1 - I)``.

    Intensities are clipped to ``[0, MAX_INTENSITY]`` first, so a saturated pixel maps to a
    large finite attenuation instead of infinity.
    """
    clipped = np.clip(np.asarray(intensity), 0.0, MAX_INTENSITY)
    return -np.log1p(-clipped)


@dataclass(frozen=True)
class ImagingParams:
    """Every parameter of the imaging chain of one radiograph.

    Attributes:
        blur_sigma_px: standard deviation of the Gaussian detector blur, pixels (0 for none).
        photons_per_px: incident quanta per pixel; quantum noise variance is
            ``T / photons_per_px``. ``inf`` for no quantum noise.
        electronic_noise: standard deviation of the additive electronic noise, in transmission
            units.
        window_low: intensity ``I`` shown as black.
        window_high: intensity ``I`` shown as white.
        gamma: display gamma applied after windowing.
        noise_seed: seed of the noise realisation, so a noisy image can be replayed exactly.
        heel_gain: how much the beam's intensity rises across the picture, from one side to the
            other along ``heel_angle_deg``, as a share of its mean (the anode heel effect; 0 for
            a flat beam). Two visits with different fields differ by a smooth field.
        heel_angle_deg: the direction in which it rises, degrees from +x toward +y (90: down
            the picture).
        motion_blur_px2: extra blur variance along one direction (px^2; 0 for none): a
            patient's motion during the exposure, on top of the detector blur (a steady motion
            of ``L`` px adds ``L^2 / 12``). The blur is then the Gaussian of covariance
            ``blur_sigma_px^2 I + motion_blur_px2 u u^T`` (:func:`blur_covariance_px2`).
        motion_angle_deg: the motion's direction ``u``, degrees from +x toward +y.
    """

    blur_sigma_px: float = 0.7
    photons_per_px: float = math.inf
    electronic_noise: float = 0.0
    window_low: float = 0.0
    window_high: float = 1.0
    gamma: float = 1.0
    noise_seed: int = 0
    heel_gain: float = 0.0
    heel_angle_deg: float = 90.0
    motion_blur_px2: float = 0.0
    motion_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if not self.window_high > self.window_low:
            raise InputError(
                f"display window must have window_high > window_low, got "
                f"[{self.window_low}, {self.window_high}]"
            )
        if self.blur_sigma_px < 0 or self.electronic_noise < 0 or self.gamma <= 0:
            raise InputError("blur, electronic noise must be >= 0 and gamma > 0")
        if not self.photons_per_px > 0:
            raise InputError(f"photons_per_px must be > 0, got {self.photons_per_px}")
        if not (0.0 <= self.heel_gain <= MAX_HEEL_GAIN and math.isfinite(self.heel_angle_deg)):
            raise InputError(f"heel_gain must lie in [0, {MAX_HEEL_GAIN:g}] and heel_angle_deg be finite, got "
                             f"{self.heel_gain:g} and {self.heel_angle_deg:g}")
        if not (0.0 <= self.motion_blur_px2 <= MAX_MOTION_BLUR_PX2 and math.isfinite(self.motion_angle_deg)):
            raise InputError(f"motion_blur_px2 must lie in [0, {MAX_MOTION_BLUR_PX2:g}] and motion_angle_deg be "
                             f"finite, got {self.motion_blur_px2:g} and {self.motion_angle_deg:g}")

    @property
    def noise_free(self) -> bool:
        """True when the chain adds no noise."""
        return math.isinf(self.photons_per_px) and self.electronic_noise == 0.0

    def without_noise(self) -> "ImagingParams":
        """The same chain with both noise sources switched off."""
        return replace(self, photons_per_px=math.inf, electronic_noise=0.0)

    def to_dict(self) -> dict:
        """JSON-ready record; an infinite photon count is written as ``None``."""
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}  # flat: no asdict
        if math.isinf(record["photons_per_px"]):
            record["photons_per_px"] = None
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "ImagingParams":
        """Rebuild parameters from :meth:`to_dict` output."""
        known = {f.name for f in fields(cls)}
        # a null is a parameter not recorded (a column of a later schema): its default, but for
        # the photon count, whose null is the noise-free chain's infinity
        values = {k: v for k, v in record.items() if k in known and (v is not None or k == "photons_per_px")}
        if values.get("photons_per_px") is None:
            values["photons_per_px"] = math.inf
        return cls(**values)


@dataclass(frozen=True)
class ImagingRanges:
    """Ranges from which :func:`sample_imaging_params` draws, each ``(low, high)``.

    The photon count is drawn log-uniformly; everything else uniformly. Defaults span what the
    real finger-joint crops show: smooth at the pixel scale (blur 0.5-1.2 px) and little pixel
    noise (the 8-bit crops measure ~0.4 grey levels of 255 with Immerkaer's estimator; these ranges
    give ~0.6 on phantoms, see docs/phantom.md), i.e. about 0.1-0.4 % in transmission.
    """

    blur_sigma_px: tuple[float, float] = (0.5, 1.2)
    photons_per_px: tuple[float, float] = (5.0e4, 1.0e6)
    electronic_noise: tuple[float, float] = (1.0e-4, 1.0e-3)
    window_low: tuple[float, float] = (0.0, 0.08)
    window_high: tuple[float, float] = (0.92, 1.0)
    gamma: tuple[float, float] = (0.85, 1.2)
    heel_gain: tuple[float, float] = (0.0, 0.0)
    motion_blur_px2: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for item in fields(self):
            low, high = getattr(self, item.name)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise InputError(f"imaging range {item.name} must be a finite (low, high) range, got {low:g} {high:g}")
        if not self.photons_per_px[0] > 0:  # drawn log-uniformly
            raise InputError(f"imaging range photons_per_px must be positive, got {self.photons_per_px[0]:g}")
        if not (0.0 <= self.heel_gain[0] and self.heel_gain[1] <= MAX_HEEL_GAIN):
            raise InputError(f"imaging range heel_gain must lie within [0, {MAX_HEEL_GAIN:g}], got "
                             f"{self.heel_gain[0]:g} {self.heel_gain[1]:g}")
        if not (0.0 <= self.motion_blur_px2[0] and self.motion_blur_px2[1] <= MAX_MOTION_BLUR_PX2):
            raise InputError(f"imaging range motion_blur_px2 must lie within [0, {MAX_MOTION_BLUR_PX2:g}], got "
                             f"{self.motion_blur_px2[0]:g} {self.motion_blur_px2[1]:g}")


def sample_imaging_params(
    rng: np.random.Generator, ranges: ImagingRanges = ImagingRanges(), noise: bool = True
) -> ImagingParams:
    """Draw one :class:`ImagingParams` from ``ranges`` (``noise=False`` draws a noise-free chain).

    A heel field is drawn (its gain from ``ranges.heel_gain``, its direction uniformly) only
    where that range reaches above 0, after everything else: without one the draws, and so
    every dataset made without one, are what they were before the field existed. A motion blur
    (``ranges.motion_blur_px2``, its direction uniformly) is drawn the same way, after the heel."""
    lo, hi = ranges.photons_per_px
    photons = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    params = ImagingParams(
        blur_sigma_px=float(rng.uniform(*ranges.blur_sigma_px)),
        photons_per_px=photons,
        electronic_noise=float(rng.uniform(*ranges.electronic_noise)),
        window_low=float(rng.uniform(*ranges.window_low)),
        window_high=float(rng.uniform(*ranges.window_high)),
        gamma=float(rng.uniform(*ranges.gamma)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )
    if ranges.heel_gain[1] > 0.0:
        params = replace(params, heel_gain=float(rng.uniform(*ranges.heel_gain)),
                         heel_angle_deg=float(rng.uniform(0.0, 360.0)))
    if ranges.motion_blur_px2[1] > 0.0:
        params = replace(params, motion_blur_px2=float(rng.uniform(*ranges.motion_blur_px2)),
                         motion_angle_deg=float(rng.uniform(0.0, 180.0)))
    return params if noise else params.without_noise()


def blur_covariance_px2(sigma_px: float, motion_px2: float, motion_angle_deg: float) -> tuple[float, float, float]:
    """The covariance ``(cxx, cyy, cxy)`` (px^2) of a whole blur, ``sigma^2 I + m u u^T``: the
    detector's (``blur_sigma_px``), alike in every direction, and a motion's (``motion_blur_px2``)
    along ``u`` at ``motion_angle_deg``. Any size: the supersampled chain's is four times the
    image's, beyond what :class:`ImagingParams` may hold."""
    variance = sigma_px**2
    angle = math.radians(motion_angle_deg)
    c, s = math.cos(angle), math.sin(angle)
    return variance + motion_px2 * c * c, variance + motion_px2 * s * s, motion_px2 * c * s


def heel_field(shape: tuple[int, int], params: ImagingParams, dtype: type = np.float64) -> np.ndarray | None:
    """The beam's relative intensity over a picture of ``shape``: ``1 + heel_gain * u``, ``u`` the
    place along ``heel_angle_deg`` from -1/2 at one side of the picture to +1/2 at the other
    (its mean 1); None for a flat beam."""
    if params.heel_gain == 0.0:
        return None
    height, width = shape
    angle = math.radians(params.heel_angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    extent = abs(cos) * (width - 1) + abs(sin) * (height - 1)
    if extent == 0.0:
        return None
    cols = (np.arange(width, dtype=np.float64) - 0.5 * (width - 1)) * (cos / extent)
    rows = (np.arange(height, dtype=np.float64) - 0.5 * (height - 1)) * (sin / extent)
    return (1.0 + params.heel_gain * (rows[:, None] + cols[None, :])).astype(dtype)


def detector_blur(image: np.ndarray, sigma_px: float, dtype: type = np.float64,
                  motion: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Gaussian detector blur of standard deviation ``sigma_px`` (identity for ``sigma_px == 0``).

    Applied as the Gaussian's transfer function on the spectrum of the image (:class:`BlurSpectrum`),
    with reflected borders: the exact discrete counterpart of a continuous Gaussian point spread
    acting on a band-limited image, so the recorded ``blur_sigma_px`` is the blur the image has.
    A sampled spatial kernel is not: at ``sigma = 0.5`` px its variance is 0.21 px^2, not 0.25, and
    it passes twice the Gaussian's response at the Nyquist frequency. ``dtype`` is the precision
    of the result (float64, or float32 for the fast dataset path). ``motion`` is
    ``(motion_blur_px2, motion_angle_deg)`` (:class:`ImagingParams`): with a variance above 0 the
    blur is the Gaussian of :func:`blur_covariance_px2`, applied the same way.
    """
    image = np.asarray(image, dtype=dtype)
    motion_px2, motion_angle_deg = motion
    if motion_px2 > 0:
        covariance = blur_covariance_px2(sigma_px, motion_px2, motion_angle_deg)
        reach_px = math.sqrt(sigma_px**2 + motion_px2)
        return BlurSpectrum(image, BLUR_PAD_PX + int(math.ceil(4.0 * reach_px))).blurred_by_covariance(covariance)
    if sigma_px <= 0:
        return image
    return BlurSpectrum(image, BLUR_PAD_PX + int(math.ceil(4.0 * sigma_px))).blurred(sigma_px)


def _packed_frequencies(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The frequencies (cycles per pixel) of OpenCV's packed ("CCS") spectrum of a real image of
    ``shape``: ``(fx, fy, fy_signed, packed)``, ``fx`` per column, ``fy`` per entry, ``fy_signed``
    per row as the interior columns hold it, and the packed columns.

    Interior column pairs ``(2k - 1, 2k)`` hold the real and imaginary parts of horizontal
    frequency ``k`` at every vertical frequency; column 0 (and the last one for an even width,
    frequency ``W / 2``) are themselves packed along the rows: row 0 is vertical frequency 0,
    rows ``(2m - 1, 2m)`` are frequency ``m``.
    """
    h, w = shape
    columns = np.arange(w)
    fx = ((columns + 1) // 2) / w
    packed = (columns == 0) | ((w % 2 == 0) & (columns == w - 1))
    fy_signed = np.fft.fftfreq(h)
    fy_packed = ((np.arange(h) + 1) // 2) / h
    fy = np.where(packed[None, :], fy_packed[:, None], fy_signed[:, None])
    return fx, fy, fy_signed, packed


@functools.lru_cache(maxsize=32)
def _squared_frequencies(shape: tuple[int, int]) -> np.ndarray:
    """``|f|^2`` (cycles per pixel) of every entry of the packed spectrum of a real image of
    ``shape`` (:func:`_packed_frequencies`), float64."""
    fx, fy, _, _ = _packed_frequencies(shape)
    squared = fx[None, :] ** 2 + fy**2
    squared.flags.writeable = False  # cached
    return squared


@functools.lru_cache(maxsize=4)  # three arrays a shape, for the seldom blurs that differ by direction
def _frequency_products(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fx^2, fy^2, fx fy)`` of every entry of the packed spectrum of a real image of ``shape``
    (:func:`_packed_frequencies`), float64.

    A packed column's entry holds the vertical frequencies ``m`` and ``-m`` at once, which a
    transfer odd in ``fx fy`` cannot treat apart: their cross product is left at zero (exact at
    horizontal frequency 0, and at ``W / 2`` a Nyquist column that a blur all but removes).
    """
    fx, fy, fy_signed, packed = _packed_frequencies(shape)
    products = (np.repeat(fx[None, :] ** 2, shape[0], axis=0), fy**2,
                np.where(packed[None, :], 0.0, fx[None, :] * fy_signed[:, None]))
    for array in products:
        array.flags.writeable = False  # cached
    return products


def _covariance_transfer(shape: tuple[int, int], covariance_px2: tuple[float, float, float], dtype: type) -> np.ndarray:
    """Fourier transfer ``exp(-2 pi^2 f^T C f)`` of a Gaussian of covariance
    ``C = [[cxx, cxy], [cxy, cyy]]`` (``covariance_px2 = (cxx, cyy, cxy)``, px^2) on the packed
    spectrum of ``shape`` (not kept: covariances are drawn, or searched, and seldom recur)."""
    cxx, cyy, cxy = covariance_px2
    fx2, fy2, cross = _frequency_products(shape)
    return np.exp(-2.0 * math.pi**2 * (cxx * fx2 + cyy * fy2 + 2.0 * cxy * cross)).astype(dtype)


@functools.lru_cache(maxsize=16)
def _gaussian_transfer(shape: tuple[int, int], sigma_px: float, dtype: type) -> np.ndarray:
    """Fourier transfer ``exp(-2 pi^2 sigma^2 |f|^2)`` on the packed spectrum of ``shape`` (kept:
    the quantifier's blur search reuses shapes and variances)."""
    squared = _squared_frequencies(shape).astype(dtype)
    transfer = np.exp(dtype(-2.0 * (math.pi * sigma_px) ** 2) * squared)
    transfer.flags.writeable = False
    return transfer


class BlurSpectrum:
    """An image's padded spectrum, kept so that it can be blurred by many variances cheaply.

    Gaussian blur with exactly the variance ``sigma^2`` (Fourier domain, reflected padding):
    sampled spatial kernels are wrong in variance for sigma below about 1 px, which matters when
    a recorded blur must be the image's blur, or when the blurs of two images are matched to a
    few hundredths of a pixel squared (the quantifier's blur search).

    Each side is padded by at least ``pad_px``, the far ends by more, up to a length with small
    prime factors (``cv2.getOptimalDFTSize``): bone windows are arbitrary sizes, and a prime
    length (223, 227, 251 px were common) made every transform several times slower. OpenCV's
    real DFT (packed spectrum, :func:`_squared_frequencies`) is a fifth faster than
    ``scipy.fft``'s at these sizes and half the work of a complex one.

    Args:
        image: 2-D float32 or float64 image; the blurred images keep its precision.
        pad_px: reflected border; the periodic transform wraps around beyond it.
    """

    def __init__(self, image: np.ndarray, pad_px: int = BLUR_PAD_PX) -> None:
        image = np.asarray(image)
        self.image = image if image.dtype in (np.float32, np.float64) else image.astype(np.float64)
        self.pad_px = pad_px
        h, w = self.image.shape
        fast = (cv2.getOptimalDFTSize(h + 2 * pad_px), cv2.getOptimalDFTSize(w + 2 * pad_px))
        # OpenCV's BORDER_REFLECT is numpy's "symmetric" padding, several times faster; the extra
        # rows/columns of a fast DFT size go to the bottom/right, far from the image after wrap-around
        padded = cv2.copyMakeBorder(self.image, pad_px, fast[0] - h - pad_px, pad_px, fast[1] - w - pad_px, cv2.BORDER_REFLECT)
        self.padded_shape = padded.shape
        self.spectrum = cv2.dft(padded)

    def blurred(self, sigma_px: float) -> np.ndarray:
        """The image blurred by a Gaussian of standard deviation ``sigma_px`` (the image itself at 0)."""
        if sigma_px <= 0:
            return self.image
        spectrum = self.spectrum * _gaussian_transfer(self.padded_shape, sigma_px, self.image.dtype.type)
        out = cv2.dft(spectrum, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
        p = self.pad_px
        h, w = self.image.shape
        return np.ascontiguousarray(out[p:p + h, p:p + w])

    def blurred_by_covariance(self, covariance_px2: tuple[float, float, float]) -> np.ndarray:
        """The image blurred by a Gaussian of covariance ``[[cxx, cxy], [cxy, cyy]]``
        (``covariance_px2 = (cxx, cyy, cxy)``, px^2, positive semi-definite; a line blur has one
        zero eigenvalue): a blur that differs by direction, as a patient's motion during the
        exposure gives. :meth:`blurred` is the isotropic case."""
        cxx, cyy, cxy = (float(c) for c in covariance_px2)
        if cxx < 0 or cyy < 0 or cxy * cxy > cxx * cyy * (1.0 + 1e-9) + 1e-12:
            raise ValueError(f"a blur covariance must be positive semi-definite, got {covariance_px2}")
        if cxx == 0 and cyy == 0:
            return self.image
        transfer = _covariance_transfer(self.padded_shape, (cxx, cyy, cxy), self.image.dtype.type)
        out = cv2.dft(self.spectrum * transfer, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
        p = self.pad_px
        h, w = self.image.shape
        return np.ascontiguousarray(out[p:p + h, p:p + w])


def display_mapping(intensity: np.ndarray, params: ImagingParams) -> np.ndarray:
    """Window and gamma: ``clip((I - low) / (high - low), 0, 1) ** gamma`` (keeps a float32 input float32)."""
    intensity = np.asarray(intensity)
    dtype = np.float32 if intensity.dtype == np.float32 else np.float64
    width = params.window_high - params.window_low
    scaled = intensity.astype(dtype, copy=True)
    scaled -= dtype(params.window_low)
    scaled *= dtype(1.0 / width)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if params.gamma == 1.0:
        return scaled
    if dtype == np.float32:
        # cv2.pow is several times faster than numpy's float pow; 0 ** gamma = 0 stays exact
        return cv2.pow(scaled, params.gamma)
    return scaled**params.gamma


def _transmission(attenuation: np.ndarray, params: ImagingParams, dtype: type, supersampled: bool = False) -> np.ndarray:
    """Detected transmission ``heel_field * blur(exp(-a))`` in ``dtype``; rejects NaN and infinities.

    ``supersampled`` takes ``exp`` on the band-limited interpolant of ``a`` at twice the
    resolution (:func:`supersampled_transmission`), else on the pixels themselves.
    """
    attenuation = np.asarray(attenuation, dtype=dtype)
    if not np.isfinite(attenuation).all():
        raise InputError("attenuation contains NaN or infinite values")
    motion = (params.motion_blur_px2, params.motion_angle_deg)
    if supersampled:
        transmission = supersampled_transmission(attenuation, params.blur_sigma_px, motion)
    else:
        transmission = detector_blur(np.exp(-attenuation), params.blur_sigma_px, dtype, motion)
    field = heel_field(transmission.shape, params, transmission.dtype)
    if field is not None:
        transmission *= field
    return transmission


def supersampled_transmission(attenuation: np.ndarray, sigma_px: float,
                              motion: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``blur_sigma(exp(-a))`` sampled at the pixels, with ``exp`` taken at twice the resolution.

    Why: a raster layer is read as the band-limited interpolant of its samples (the model under
    which :mod:`jsnsynth.synth.shift` moves it exactly), and ``exp`` of that interpolant carries
    harmonics up to twice the Nyquist frequency. Taken on the pixels, those harmonics alias, by an
    amount that depends on where the content sits between pixels: a follow-up whose bones were
    moved by a sub-pixel amount was then not the moved image of the baseline, and on real-layer
    pairs the bones looked closer by 0.001 px on average. Here ``a`` is interpolated to the
    half-pixel grid (its spectrum zero-padded), ``exp`` taken there, blurred there by the exact
    Gaussian (:func:`detector_blur`, reflected borders) and sampled back at the pixels. Without
    blur that is ``exp(-a)`` on the pixels exactly.

    Args:
        attenuation: ``(H, W)`` float32 or float64 attenuation.
        sigma_px: detector blur in pixels of the image.
        motion: ``(motion_blur_px2, motion_angle_deg)`` in pixels of the image (see
            :func:`detector_blur`).

    Returns:
        ``(H, W)`` transmission of the input's precision.
    """
    attenuation = np.asarray(attenuation)
    dtype = np.float32 if attenuation.dtype == np.float32 else np.float64
    if sigma_px <= 0 and motion[0] <= 0:  # the finer grid's even samples are the pixels themselves
        return np.exp(-attenuation.astype(dtype, copy=False))
    import scipy.fft  # here: phantom workers never need it, and it costs ~0.5 s at their start

    h, w = attenuation.shape
    pad = BLUR_PAD_PX
    rows, cols = (2 * cv2.getOptimalDFTSize((n + 2 * pad + 1) // 2) for n in (h, w))  # even, fast halves
    padded = cv2.copyMakeBorder(attenuation.astype(dtype, copy=False), pad, rows - h - pad, pad, cols - w - pad, cv2.BORDER_REFLECT)
    spectrum = scipy.fft.rfft2(padded, workers=1)
    half_rows, half_cols = rows // 2, cols // 2
    # rows of the finer grid's spectrum (irfft2 zero-pads the columns itself): every frequency of
    # the pixel grid keeps its place; the Nyquist row and column, shared by +f and -f on the
    # pixel grid, are split evenly between them
    fine = np.zeros((2 * rows, half_cols + 1), dtype=spectrum.dtype)
    fine[:half_rows] = spectrum[:half_rows]
    fine[-half_rows + 1:] = spectrum[-half_rows + 1:]
    fine[half_rows] = fine[-half_rows] = 0.5 * spectrum[half_rows]
    fine[:, half_cols] *= 0.5
    fine *= 4.0
    transmission = np.exp(-scipy.fft.irfft2(fine, s=(2 * rows, 2 * cols), workers=1))
    blurred = detector_blur(transmission, 2.0 * sigma_px, dtype, (4.0 * motion[0], motion[1]))
    return np.ascontiguousarray(blurred[2 * pad:2 * (pad + h):2, 2 * pad:2 * (pad + w):2])


def _noisy_transmission(transmission: np.ndarray, params: ImagingParams) -> np.ndarray:
    """``T + sqrt(T / photons + e^2) * n`` with ``n`` standard normal drawn from ``noise_seed``.

    The normal deviates are drawn in the precision of ``transmission`` (numpy's float32 and
    float64 streams differ, each deterministic for a seed).
    """
    dtype = transmission.dtype.type
    rng = np.random.default_rng(params.noise_seed)
    std = transmission * dtype(1.0 / params.photons_per_px)
    std += dtype(params.electronic_noise**2)
    np.sqrt(std, out=std)
    std *= rng.standard_normal(transmission.shape, dtype=dtype)
    std += transmission
    return std


def render_radiograph(attenuation: np.ndarray, params: ImagingParams, dtype: type = np.float64) -> np.ndarray:
    """Apply the imaging chain to an attenuation map.

    Args:
        attenuation: ``(H, W)`` total attenuation, >= 0.
        params: the imaging chain, noise included (use ``params.without_noise()`` for the
            noise-free image that defines ground truth).
        dtype: working precision and type of the result: float64, or float32 (several times
            faster, ~1e-7 relative error, far below a 16-bit grey level; its noise realisation
            differs from float64's for the same seed).

    Returns:
        ``(H, W)`` display image in ``[0, 1]`` of ``dtype``, bone bright.
    """
    return render_radiograph_and_clean(attenuation, params, dtype)[0]


def render_radiograph_and_clean(
    attenuation: np.ndarray, params: ImagingParams, dtype: type = np.float32, supersampled: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The radiograph of :func:`render_radiograph` and its noise-free twin, sharing the blur.

    ``supersampled`` takes ``exp(-a)`` at twice the resolution (:func:`supersampled_transmission`),
    as raster layers moved by a sub-pixel amount need; otherwise on the pixels, as
    :func:`render_radiograph` does.

    Returns:
        ``(image, clean)``: ``clean`` is the same chain without noise; for a noise-free chain
        both are the same array.
    """
    transmission = _transmission(attenuation, params, dtype, supersampled)
    if params.noise_free:
        clean = display_mapping(np.subtract(dtype(1.0), transmission, out=transmission), params)
        return clean, clean
    noisy = _noisy_transmission(transmission, params)
    clean_intensity = np.subtract(dtype(1.0), transmission, out=transmission)
    np.subtract(dtype(1.0), noisy, out=noisy)
    return display_mapping(noisy, params), display_mapping(clean_intensity, params)


def display_noise_std(attenuation: np.ndarray, params: ImagingParams) -> np.ndarray:
    """Per-pixel noise standard deviation of :func:`render_radiograph` output, to first order.

    The transmission-domain standard deviation propagated through the display mapping's slope.
    This is the noise model a Cramér-Rao bound of a registration estimate needs. Quantisation
    noise is not included (``1/sqrt(12)`` of a grey level, negligible at 16 bits).
    """
    transmission = _transmission(attenuation, params, np.float64)
    photons_term = 0.0 if math.isinf(params.photons_per_px) else transmission / params.photons_per_px
    std_t = np.sqrt(photons_term + params.electronic_noise**2)
    width = params.window_high - params.window_low
    scaled = (1.0 - transmission - params.window_low) / width
    inside = (scaled > 0) & (scaled < 1)
    slope = np.where(inside, params.gamma * np.clip(scaled, 1e-12, 1.0) ** (params.gamma - 1.0) / width, 0.0)
    return std_t * slope


def quantize(display: np.ndarray, bit_depth: int = 16) -> np.ndarray:
    """Quantise a ``[0, 1]`` image to unsigned integers of ``bit_depth`` bits (8 or 16).

    Uses ``round(D * (2**bits - 1))``, so :func:`dequantize` inverts it to half a grey level.
    """
    if bit_depth not in (8, 16):
        raise InputError(f"bit depth must be 8 or 16, got {bit_depth}")
    levels = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    display = np.asarray(display)
    if display.dtype != np.float32:
        display = display.astype(np.float64)
    # float32 holds every integer up to 2**24, so scaling and rounding in float32 is exact enough
    scaled = np.clip(display, 0.0, 1.0) * display.dtype.type(levels)
    return np.rint(scaled, out=scaled).astype(dtype)


def dequantize(pixels: np.ndarray, max_value: int | None = None) -> np.ndarray:
    """Map integer pixels to ``[0, 1]`` float64 by dividing by ``max_value``.

    ``max_value`` defaults to the full range of the dtype (255 for uint8, 65535 for uint16).
    """
    pixels = np.asarray(pixels)
    if max_value is None:
        if not np.issubdtype(pixels.dtype, np.integer):
            raise InputError(f"dequantize needs integer pixels or max_value, got {pixels.dtype}")
        max_value = int(np.iinfo(pixels.dtype).max)
    return pixels.astype(np.float64) / float(max_value)
