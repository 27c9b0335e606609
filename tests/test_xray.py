"""The X-ray forward model: recombination, inverse, blur, display, noise and quantisation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from jsnsynth.errors import InputError
from jsnsynth.synth import xray


def test_intensity_attenuation_round_trip() -> None:
    attenuation = np.linspace(0.0, 6.0, 1001)
    intensity = xray.attenuation_to_intensity(attenuation)
    assert intensity.min() >= 0.0 and intensity.max() < 1.0
    np.testing.assert_allclose(xray.intensity_to_attenuation(intensity), attenuation, rtol=0, atol=1e-9)


def test_saturated_intensity_maps_to_finite_attenuation() -> None:
    assert np.isfinite(xray.intensity_to_attenuation(np.array([1.0, 1.5]))).all()


def test_layer_sum_is_the_multiplicative_recombination_of_the_lsn_paper() -> None:
    rng = np.random.default_rng(0)
    soft, upper, lower = rng.uniform(0, 2, (3, 16, 16))
    s, u, low = (xray.attenuation_to_intensity(x) for x in (soft, upper, lower))
    expected = 1.0 - (1.0 - u) * (1.0 - low) * (1.0 - s)
    np.testing.assert_allclose(xray.attenuation_to_intensity(soft + upper + lower), expected, atol=1e-12)


def test_noise_free_identity_chain_is_exact() -> None:
    attenuation = np.random.default_rng(1).uniform(0, 3, (20, 30))
    params = xray.ImagingParams(blur_sigma_px=0.0)
    np.testing.assert_allclose(
        xray.render_radiograph(attenuation, params), xray.attenuation_to_intensity(attenuation), atol=1e-12
    )


def test_blur_preserves_a_flat_field_and_smooths_an_edge() -> None:
    flat = np.full((32, 32), 0.7)
    np.testing.assert_allclose(xray.detector_blur(flat, 1.0), flat, atol=1e-12)
    edge = np.zeros((32, 32))
    edge[:, 16:] = 1.0
    blurred = xray.detector_blur(edge, 1.0)
    assert 0.0 < blurred[0, 15] < 0.5 < blurred[0, 16] < 1.0


@pytest.mark.parametrize("sigma_px", [0.5, 0.8, 1.2])
def test_blur_is_the_gaussian_it_records_at_every_frequency(sigma_px: float) -> None:
    """The recorded sigma is the blur the image gets: a sinusoid keeps exp(-2 pi^2 sigma^2 f^2) of
    its amplitude (a sampled 0.5 px kernel keeps 0.79 instead of 0.73 at 0.25 cycles/px), along
    rows, columns and diagonals, on an odd-sized image (the packed spectrum stores the first and
    last columns' frequencies differently from the others), in float64 and float32."""
    y, x = np.mgrid[0:97, 0:96].astype(np.float64)
    inner = (slice(24, 72), slice(24, 72))
    for direction_deg in (0.0, 90.0, 35.0):
        along = x * math.cos(math.radians(direction_deg)) + y * math.sin(math.radians(direction_deg))
        for frequency in (0.05, 0.125, 0.25, 0.4):
            wave = np.cos(2.0 * np.pi * frequency * along + 0.3)
            expected = math.exp(-2.0 * (math.pi * sigma_px * frequency) ** 2)
            for dtype in (np.float64, np.float32):
                blurred = xray.detector_blur(0.5 + 0.2 * wave, sigma_px, dtype)
                assert blurred.dtype == dtype
                gain = float(np.sum((blurred[inner] - 0.5) * wave[inner]) / np.sum(0.2 * wave[inner] ** 2))
                assert gain == pytest.approx(expected, abs=2e-3), (direction_deg, frequency, dtype)


@pytest.mark.parametrize("covariance_px2", [(2.0, 0.5, 0.7), (0.3, 1.2, -0.5), (0.375, 1.125, 0.6495)])
@pytest.mark.parametrize("width", [96, 97])
def test_a_blur_by_covariance_is_its_gaussian_in_every_direction(covariance_px2, width) -> None:
    """A Gaussian of covariance C keeps exp(-2 pi^2 f^2 u^T C u) of a sinusoid's amplitude along
    direction u: rows, columns and both diagonals (the cross term's sign), on even and odd widths
    (the packed spectrum's first and last columns), for a line blur (the last covariance, of rank
    one) too. The isotropic case is :meth:`BlurSpectrum.blurred` to rounding."""
    cxx, cyy, cxy = covariance_px2
    y, x = np.mgrid[0:97, 0:width].astype(np.float64)
    inner = (slice(24, 72), slice(24, 72))
    for direction_deg in (0.0, 90.0, 35.0, -35.0):
        u = (math.cos(math.radians(direction_deg)), math.sin(math.radians(direction_deg)))
        along = x * u[0] + y * u[1]
        spread = cxx * u[0] ** 2 + cyy * u[1] ** 2 + 2.0 * cxy * u[0] * u[1]
        for frequency in (0.05, 0.125, 0.25):
            wave = np.cos(2.0 * np.pi * frequency * along + 0.3)
            blurred = xray.BlurSpectrum(0.5 + 0.2 * wave, 16).blurred_by_covariance(covariance_px2)
            gain = float(np.sum((blurred[inner] - 0.5) * wave[inner]) / np.sum(0.2 * wave[inner] ** 2))
            expected = math.exp(-2.0 * math.pi**2 * frequency**2 * spread)
            assert gain == pytest.approx(expected, abs=2e-3), (direction_deg, frequency)
    image = np.random.default_rng(0).random((40, width))
    spectrum = xray.BlurSpectrum(image, 16)
    np.testing.assert_allclose(spectrum.blurred_by_covariance((1.44, 1.44, 0.0)), spectrum.blurred(1.2), atol=1e-12)
    assert spectrum.blurred_by_covariance((0.0, 0.0, 0.0)) is spectrum.image
    with pytest.raises(ValueError, match="positive semi-definite"):
        spectrum.blurred_by_covariance((1.0, 1.0, 1.5))


def test_display_mapping_window_and_gamma() -> None:
    params = xray.ImagingParams(window_low=0.2, window_high=0.6, gamma=2.0)
    out = xray.display_mapping(np.array([0.0, 0.2, 0.4, 0.6, 0.9]), params)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 1.0, 1.0])


def test_noise_std_matches_the_first_order_model() -> None:
    attenuation = np.full((256, 256), 0.8)
    params = xray.ImagingParams(
        blur_sigma_px=0.0, photons_per_px=5000.0, electronic_noise=2e-3, window_low=0.05, window_high=0.95, gamma=1.1
    )
    image = xray.render_radiograph(attenuation, params)
    predicted = xray.display_noise_std(attenuation, params)
    # 65536 samples: the empirical std is within ~1 % of the truth; the first-order model within ~0.1 %.
    assert image.std() == pytest.approx(predicted.mean(), rel=0.03)
    clean = xray.render_radiograph(attenuation, params.without_noise())
    assert abs(image.mean() - clean.mean()) < 3 * predicted.mean() / 256


def test_same_noise_seed_same_image_other_seed_other_image() -> None:
    attenuation = np.full((16, 16), 1.0)
    params = xray.ImagingParams(photons_per_px=1000.0, noise_seed=7)
    a = xray.render_radiograph(attenuation, params)
    b = xray.render_radiograph(attenuation, params)
    c = xray.render_radiograph(attenuation, xray.ImagingParams(photons_per_px=1000.0, noise_seed=8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sampling_is_deterministic_and_records_round_trip() -> None:
    first = xray.sample_imaging_params(np.random.default_rng(3))
    second = xray.sample_imaging_params(np.random.default_rng(3))
    assert first == second
    assert xray.ImagingParams.from_dict(first.to_dict()) == first
    noise_free = xray.sample_imaging_params(np.random.default_rng(3), noise=False)
    assert noise_free.noise_free and math.isinf(noise_free.photons_per_px)
    assert xray.ImagingParams.from_dict(noise_free.to_dict()) == noise_free


@pytest.mark.parametrize("angle_deg", [0.0, 90.0, 30.0, 225.0])
def test_heel_field_rises_by_its_gain_across_the_picture(angle_deg: float) -> None:
    params = xray.ImagingParams(heel_gain=0.04, heel_angle_deg=angle_deg)
    field = xray.heel_field((60, 80), params)
    assert field.mean() == pytest.approx(1.0, abs=1e-12)
    assert field.max() - field.min() == pytest.approx(0.04, rel=1e-12)  # corner to corner along the angle
    brightest = np.unravel_index(np.argmax(field), field.shape)
    direction = np.array([math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))])
    assert (np.array([brightest[1] - 39.5, brightest[0] - 29.5]) @ direction) > 0  # it rises along the angle
    # the detected transmission is the field times the blurred transmission; a flat beam is none
    attenuation = 0.5 + 0.1 * np.random.default_rng(0).standard_normal((60, 80))
    with_field = xray.render_radiograph(attenuation, params)
    without = xray.render_radiograph(attenuation, xray.ImagingParams(heel_angle_deg=angle_deg))
    np.testing.assert_allclose(1.0 - with_field, (1.0 - without) * field, rtol=1e-12, atol=1e-12)
    assert xray.heel_field((60, 80), xray.ImagingParams()) is None
    # more quanta where the beam is brighter: the noise model follows the field
    noisy = xray.ImagingParams(heel_gain=0.04, heel_angle_deg=angle_deg, photons_per_px=5000.0)
    expected = xray.display_noise_std(np.full((60, 80), 0.5), noisy)
    assert expected.max() / expected.min() == pytest.approx(math.sqrt(field.max() / field.min()), rel=1e-9)


def test_a_heel_range_is_drawn_after_the_rest_of_the_chain() -> None:
    """Without a heel range the draws are what they were before the heel existed, so datasets made
    without one keep their bytes; with one, the rest of the chain is drawn as without it."""
    plain = xray.sample_imaging_params(np.random.default_rng(5))
    assert plain.heel_gain == 0.0 and plain.heel_angle_deg == 90.0
    heeled = xray.sample_imaging_params(np.random.default_rng(5), xray.ImagingRanges(heel_gain=(0.01, 0.03)))
    assert 0.01 <= heeled.heel_gain <= 0.03 and 0.0 <= heeled.heel_angle_deg < 360.0
    assert dataclasses.replace(heeled, heel_gain=0.0, heel_angle_deg=90.0) == plain
    assert xray.ImagingParams.from_dict(heeled.to_dict()) == heeled
    for bad in ((0.0, 0.6), (0.03, 0.01), (-0.01, 0.01)):
        with pytest.raises(InputError, match="heel_gain"):
            xray.ImagingRanges(heel_gain=bad)
    with pytest.raises(InputError, match="heel_gain"):
        xray.ImagingParams(heel_gain=0.8)


def test_a_motion_range_is_drawn_after_the_heel() -> None:
    """Without a motion range the draws are what they were before motion blur existed (datasets
    keep their bytes); with one, the rest of the chain, heel included, is drawn as without it."""
    ranges = xray.ImagingRanges(heel_gain=(0.01, 0.03))
    plain = xray.sample_imaging_params(np.random.default_rng(5), ranges)
    assert plain.motion_blur_px2 == 0.0 and plain.motion_angle_deg == 0.0
    moved = xray.sample_imaging_params(np.random.default_rng(5), dataclasses.replace(ranges, motion_blur_px2=(1.0, 3.0)))
    assert 1.0 <= moved.motion_blur_px2 <= 3.0 and 0.0 <= moved.motion_angle_deg < 180.0
    assert dataclasses.replace(moved, motion_blur_px2=0.0, motion_angle_deg=0.0) == plain
    assert xray.ImagingParams.from_dict(moved.to_dict()) == moved
    # a record whose motion is null (not recorded) is the chain without motion, not a TypeError
    assert xray.ImagingParams.from_dict({**moved.to_dict(), "motion_blur_px2": None, "motion_angle_deg": None}) == \
        dataclasses.replace(moved, motion_blur_px2=0.0, motion_angle_deg=0.0)
    for bad in ((0.0, 17.0), (3.0, 1.0), (-1.0, 1.0)):
        with pytest.raises(InputError, match="motion_blur_px2"):
            xray.ImagingRanges(motion_blur_px2=bad)
    with pytest.raises(InputError, match="motion_blur_px2"):
        xray.ImagingParams(motion_blur_px2=-0.5)


def test_the_largest_motion_blur_is_rendered_through_the_supersampled_chain() -> None:
    """At the limit (16 px^2) the supersampled chain blurs by four times that on its finer grid,
    past what an image's own parameters may hold: it must render it, as the pixels' chain does
    (raster sources of the dataset builder take the supersampled chain)."""
    attenuation = 0.5 + 0.1 * np.random.default_rng(0).standard_normal((64, 64))
    attenuation = xray.detector_blur(attenuation, 2.0)  # band-limited: both chains then agree
    params = xray.ImagingParams(blur_sigma_px=0.7, motion_blur_px2=xray.MAX_MOTION_BLUR_PX2, motion_angle_deg=60.0)
    supersampled = xray._transmission(attenuation, params, np.float64, supersampled=True)
    on_pixels = xray._transmission(attenuation, params, np.float64)
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(supersampled - on_pixels)[inner].max() < 1e-3


@pytest.mark.parametrize("supersampled", [False, True])
def test_a_motion_blurs_the_picture_along_its_direction_only(supersampled: bool) -> None:
    """A radiograph whose chain has a motion of 2 px^2 at 30 deg on a detector blur of 0.7 px: a
    faint sinusoid of transmission keeps exp(-2 pi^2 f^2 (sigma^2 + m cos^2(angle between them)))
    of its amplitude along the motion, across it and at 45 deg, on the pixels and through the
    supersampled exp (``supersampled=True``, as moved raster layers take it)."""
    params = xray.ImagingParams(blur_sigma_px=0.7, motion_blur_px2=2.0, motion_angle_deg=30.0)
    assert xray.blur_covariance_px2(params.blur_sigma_px, params.motion_blur_px2, params.motion_angle_deg) == pytest.approx(
        (0.49 + 2.0 * 0.75, 0.49 + 2.0 * 0.25, 2.0 * math.sqrt(3.0) / 4.0))
    y, x = np.mgrid[0:96, 0:96].astype(np.float64)
    inner = (slice(24, 72), slice(24, 72))
    for direction_deg in (30.0, 120.0, 75.0):
        u = (math.cos(math.radians(direction_deg)), math.sin(math.radians(direction_deg)))
        wave = np.cos(2.0 * np.pi * 0.1 * (x * u[0] + y * u[1]))
        attenuation = 0.5 - 0.01 * wave  # exp(-a) is then exp(-0.5) (1 + 0.01 wave) to 5e-5
        if supersampled:
            transmission = xray.supersampled_transmission(attenuation, params.blur_sigma_px, (2.0, 30.0))
        else:
            transmission = xray._transmission(attenuation, params, np.float64)
        gain = float(np.sum((transmission[inner] / math.exp(-0.5) - 1.0) * wave[inner]) / np.sum(0.01 * wave[inner] ** 2))
        along = math.cos(math.radians(direction_deg - 30.0)) ** 2
        assert gain == pytest.approx(math.exp(-2.0 * (math.pi * 0.1) ** 2 * (0.49 + 2.0 * along)), abs=2e-3), direction_deg


@pytest.mark.parametrize("bits", [8, 16])
def test_quantize_dequantize_within_half_a_grey_level(bits: int) -> None:
    display = np.linspace(0.0, 1.0, 4097)
    pixels = xray.quantize(display, bits)
    assert pixels.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.abs(xray.dequantize(pixels) - display).max() <= 0.5 / ((1 << bits) - 1) + 1e-15


def test_bad_parameters_and_nan_are_rejected() -> None:
    with pytest.raises(InputError):
        xray.ImagingParams(window_low=0.5, window_high=0.5)
    with pytest.raises(InputError):
        xray.render_radiograph(np.array([[np.nan]]), xray.ImagingParams())
    with pytest.raises(InputError):
        xray.quantize(np.zeros((2, 2)), 12)


def _textured_attenuation(seed: int = 3, size: int = 96) -> np.ndarray:
    """Attenuation with pixel-scale texture, as real crops carry (their noise and trabeculae)."""
    return 0.8 + 0.1 * np.random.default_rng(seed).standard_normal((size, size))


def test_supersampled_transmission_moves_with_the_attenuation() -> None:
    """exp(-a) taken at twice the resolution commutes with a sub-pixel move of ``a`` (here six
    times better than on the pixels; asserted: four), where its harmonics alias differently at
    each sub-pixel position."""
    from jsnsynth.synth.shift import fourier_translate

    attenuation = _textured_attenuation()
    inner = (slice(20, -20), slice(20, -20))

    def commutation_rms(chain) -> float:
        moved_first = chain(fourier_translate(attenuation, (0.5, 0.0)))
        moved_after = fourier_translate(chain(attenuation), (0.5, 0.0))
        return float(np.sqrt(np.mean((moved_first - moved_after)[inner] ** 2)))

    supersampled = commutation_rms(lambda a: xray.supersampled_transmission(a, 0.6))
    on_pixels = commutation_rms(lambda a: xray.detector_blur(np.exp(-a), 0.6))
    assert supersampled < 3e-4 and supersampled < on_pixels / 4


def test_supersampled_transmission_of_smooth_attenuation_is_the_plain_chain() -> None:
    """Where exp(-a) is itself band-limited the finer grid changes nothing; float32 stays float32."""
    import scipy.ndimage

    smooth = 3.0 * scipy.ndimage.gaussian_filter(np.random.default_rng(4).random((90, 101)), 4.0)
    plain = xray.detector_blur(np.exp(-smooth), 0.7)
    assert np.abs(xray.supersampled_transmission(smooth, 0.7) - plain)[10:-10, 10:-10].max() < 1e-5
    single = xray.supersampled_transmission(smooth.astype(np.float32), 0.7)
    assert single.dtype == np.float32 and np.abs(single - plain)[10:-10, 10:-10].max() < 1e-5


def test_supersampled_transmission_without_blur_is_exp_on_the_pixels() -> None:
    attenuation = _textured_attenuation()
    assert np.array_equal(xray.supersampled_transmission(attenuation, 0.0), np.exp(-attenuation))
