"""Controlled shift and raster warps: the realised shift is the commanded one (0.005 px).

The realised shift is measured independently of the implementation: the layers are sampled from an
analytic, (nearly) band-limited function ``f`` (an erf-edged rod that runs off the top of the crop),
and the shift ``r`` that best explains the output, ``argmin_r ||out - f(., . - r)||``, is found
by Gauss-Newton on the analytic function (not on the implementation's FFT).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.layers import JointLayers
from jsnsynth.synth.pairs import mask_dice
from jsnsynth.synth.shift import (
    fourier_rotate_scale,
    fourier_translate,
    periodic_sinc_weights,
    shift_upper,
    warp_layer,
    warp_layers,
    warp_mask,
)

SIZE = 96
EDGE_SIGMA_PX = 1.0  # detector-like edge blur: keeps the analytic layer nearly band-limited
TOLERANCE_PX = 0.005
MASK_LEVEL = 0.1  # masks are the layers above this attenuation


def rod(dx: float = 0.0, dy: float = 0.0, angle_deg: float = 0.0, centre=(48.0, 60.0), size: int = SIZE) -> np.ndarray:
    """Analytic upper bone: a rod from above the crop ending in a round head, moved by a rigid map.

    The map rotates by ``angle_deg`` about ``centre`` then translates by ``(dx, dy)``; the value at
    pixel ``p`` is the unmoved rod at the inverse-mapped point.
    """
    y, x = np.mgrid[:size, :size].astype(np.float64)
    a = np.radians(angle_deg)
    px, py = x - centre[0] - dx, y - centre[1] - dy
    u = np.cos(a) * px + np.sin(a) * py + centre[0]
    v = -np.sin(a) * px + np.cos(a) * py + centre[1]
    head_y, radius = 45.0, 18.0
    dist = np.where(v < head_y, np.abs(u - 48.0), np.hypot(u - 48.0, v - head_y))
    texture = 1.0 + 0.15 * np.sin(u / 4.0) * np.cos(v / 5.0)
    return 0.6 * texture * 0.5 * (1.0 + erf((radius - dist) / (np.sqrt(2.0) * EDGE_SIGMA_PX)))


def realised_translation(out: np.ndarray, start: tuple[float, float], angle_deg: float = 0.0, steps: int = 6) -> np.ndarray:
    """Gauss-Newton fit of the translation ``(dx, dy)`` of the analytic rod to ``out``."""
    t = np.array(start, dtype=np.float64)
    eps = 1e-4
    crop = (slice(4, -4), slice(4, -4))
    for _ in range(steps):
        model = rod(*t, angle_deg)[crop]
        jac = np.stack(
            [
                (rod(t[0] + eps, t[1], angle_deg) - rod(t[0] - eps, t[1], angle_deg))[crop] / (2 * eps),
                (rod(t[0], t[1] + eps, angle_deg) - rod(t[0], t[1] - eps, angle_deg))[crop] / (2 * eps),
            ],
            axis=-1,
        ).reshape(-1, 2)
        step, *_ = np.linalg.lstsq(jac, (out[crop] - model).reshape(-1), rcond=None)
        t = t + step
    return t


def rod_layers(gap_px: float = 2.0) -> JointLayers:
    """Joint layers with the analytic rod as upper bone and a flat-topped lower bone ``gap_px`` below."""
    upper = rod()
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    top = 63.0 + gap_px
    lower = 0.5 * 0.5 * (1 + erf((y - top) / (np.sqrt(2) * EDGE_SIGMA_PX))) * 0.5 * (1 + erf((20 - np.abs(x - 48)) / np.sqrt(2)))
    soft = 0.3 + 0.05 * np.cos(x / 30.0)
    return JointLayers(
        soft=soft,
        upper=upper,
        lower=lower,
        upper_mask=upper > MASK_LEVEL,
        lower_mask=lower > MASK_LEVEL,
        joint_center_xy=(48.0, 63.0 + gap_px / 2),
        joint_axis_deg=0.0,
    )


@pytest.mark.parametrize("shift_px", [-3.0, -2.37, -0.5, 0.25, 0.5, 1.71, 3.0])
def test_fourier_translate_realises_the_commanded_shift(shift_px: float) -> None:
    out = fourier_translate(rod(), (0.0, shift_px))
    measured = realised_translation(out, (0.0, 0.0))
    assert abs(measured[1] - shift_px) < TOLERANCE_PX
    assert abs(measured[0]) < TOLERANCE_PX
    # and pixel-wise it is the analytic rod at its new place (away from the rows that the edge
    # extension fills, where the analytic rod would continue differently)
    inner = slice(int(np.ceil(abs(shift_px))) + 3, SIZE - int(np.ceil(abs(shift_px))) - 3)
    assert np.abs(out - rod(0.0, shift_px))[inner].max() < 2e-3


def test_oblique_sub_pixel_translation() -> None:
    out = fourier_translate(rod(), (1.37, -2.21))
    assert np.allclose(realised_translation(out, (0.0, 0.0)), (1.37, -2.21), atol=TOLERANCE_PX)


@pytest.mark.parametrize("shift_px", [-3.0, -1.3, 0.7, 2.0, 3.0])
def test_shift_upper_with_and_without_overlap(shift_px: float) -> None:
    """Gap 2 px: shifts >= 2 px make the bones overlap; the realised shift stays exact."""
    layers = rod_layers(gap_px=2.0)
    moved = shift_upper(layers, shift_px)
    # the moved bone is the upper layer plus any ringing lobe that was settled into the soft layer
    moved_bone = moved.upper + (moved.soft - layers.soft)
    assert abs(realised_translation(moved_bone, (0.0, 0.0))[1] - shift_px) < TOLERANCE_PX
    # lower bone untouched, soft tissue at most takes sub-1e-3 lobes, geometry unchanged
    assert np.array_equal(moved.lower, layers.lower) and np.allclose(moved.soft, layers.soft, atol=1e-3)
    assert moved.joint_center_xy == layers.joint_center_xy
    if shift_px >= 2.5:
        assert (moved.upper_mask & moved.lower_mask).any()  # the bones overlap now
    # the total attenuation is the analytic sum: overlap is rendered by addition
    expected = rod(0.0, shift_px) + layers.lower + layers.soft
    inner = slice(6, SIZE - 6)
    assert np.abs(moved.attenuation() - expected)[inner].max() < 3e-3


def test_bone_running_off_the_edge_is_extended_not_emptied() -> None:
    layers = rod_layers()
    moved = shift_upper(layers, 3.0)
    top_rows = moved.upper[:3, 40:57]
    assert top_rows.min() > 0.5 * layers.upper[0, 40:57].min()
    assert moved.upper_mask[:3, 45:52].all()
    assert np.abs(moved.upper[:3] - layers.upper[:3]).max() < 0.03  # edge-replicated content


def test_positive_shift_moves_the_upper_bone_down_along_a_tilted_axis() -> None:
    layers = rod_layers().replace(joint_axis_deg=30.0)
    moved = shift_upper(layers, 2.0)
    axis = layers.axis_xy  # (-sin 30, cos 30): down and to the left
    measured = realised_translation(moved.upper, (0.0, 0.0))
    assert np.allclose(measured, 2.0 * axis, atol=TOLERANCE_PX)


def test_rotation_then_translation_is_realised() -> None:
    """Rotation about the joint centre + Fourier translation: translation exact to 0.005 px."""
    transform = Similarity(1.0, 1.5, 0.83, -1.41, 48.0, 60.0)
    out = warp_layer(rod(), transform)
    measured = realised_translation(out, (0.0, 0.0), angle_deg=1.5)
    assert np.allclose(measured, (0.83, -1.41), atol=TOLERANCE_PX)


def _blobs(scale: float = 1.0, angle_deg: float = 0.0, centre=(70.0, 60.0), shape=(128, 160)) -> np.ndarray:
    """Gaussian blobs (nearly band-limited) moved by a similarity about ``centre``, analytically."""
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    a = np.radians(angle_deg)
    dx, dy = x - centre[0], y - centre[1]
    u = centre[0] + (np.cos(a) * dx + np.sin(a) * dy) / scale
    v = centre[1] + (-np.sin(a) * dx + np.cos(a) * dy) / scale
    blobs = [(50, 40, 2.0), (90, 70, 1.5), (70, 60, 3.0), (30, 90, 1.2)]
    return sum(np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (2 * s * s)) for bx, by, s in blobs)


@pytest.mark.parametrize("scale, angle_deg", [(1.0, 2.0), (1.03, 2.5), (0.97, 0.0), (0.9, -8.0), (0.6, 30.0), (1.8, 45.0)])
def test_rotation_and_magnification_match_the_analytic_warp(scale: float, angle_deg: float) -> None:
    """Up to the option limits (45 deg, 0.5-2): a shrunk picture is rotated before it is shrunk."""
    out = fourier_rotate_scale(_blobs(), Similarity(scale, angle_deg, 0.0, 0.0, 70.0, 60.0))
    assert np.abs(out - _blobs(scale, angle_deg))[10:-10, 10:-10].max() < 2e-3


def test_rotation_about_a_centre_off_the_picture_keeps_its_margin() -> None:
    """The padding follows the picture's distance from the centre, not only its size: the result
    is the one an ample margin gives (a margin from the size alone was off by 1.3 here)."""
    y, x = np.mgrid[:96, :128].astype(np.float64)
    picture = np.sin(x / 9.0) + np.cos(y / 7.0) + 0.01 * x  # content up to the picture's edges
    transform = Similarity(1.0, 10.0, 0.0, 0.0, -1000.0, 60.0)
    ample = fourier_rotate_scale(picture, transform, margin_px=1200)
    assert np.abs(fourier_rotate_scale(picture, transform) - ample)[10:-10, 10:-10].max() < 1e-4


@pytest.mark.parametrize("scale, angle_deg", [(1.0, 2.0), (1.03, -1.0)])
def test_rotation_keeps_the_pixel_scale_texture_a_spline_would_smooth(scale: float, angle_deg: float) -> None:
    """The power of white texture survives (a cubic B-spline keeps ~76 % of it, less where a
    point falls half-way between pixels: a sub-pixel-dependent blur that the images then carry)."""
    texture = np.random.default_rng(3).standard_normal((96, 96))
    out = fourier_rotate_scale(texture, Similarity(scale, angle_deg, 0.0, 0.0, 48.0, 50.0))
    inner = (slice(20, -20), slice(20, -20))
    assert 0.97 < out[inner].var() / texture[inner].var() < 1.03


def test_periodic_sinc_weights_interpolate_the_samples_and_a_band_limited_signal() -> None:
    for length in (40, 41):
        assert np.allclose(periodic_sinc_weights(np.arange(length, dtype=float), length), np.eye(length), atol=1e-12)
        n = np.arange(length)
        signal = np.cos(2 * np.pi * 3 * n / length + 0.4)
        positions = np.array([0.25, 7.5, 19.9, length - 1.3])
        expected = np.cos(2 * np.pi * 3 * positions / length + 0.4)
        assert np.allclose(periodic_sinc_weights(positions, length) @ signal, expected, atol=1e-12)
        # a hair from a sample the weights are still exact: the row is that sample's, and sums to 1
        near = periodic_sinc_weights(np.array([5.0 + 1e-8, 9.0 - 3e-7]), length)
        assert np.allclose(near.sum(axis=1), 1.0, atol=1e-12)
        assert abs(near[0, 5] - 1.0) < 1e-12 and abs(near[1, 9] - 1.0) < 1e-11


def test_each_bone_transform_maps_its_baseline_mask_onto_the_followup_mask() -> None:
    layers = rod_layers()
    centre = layers.joint_center_xy
    upper = Similarity(1.02, 1.8, 0.4, 2.3, *centre)
    lower = Similarity(1.02, -1.2, 0.4, 0.1, *centre)
    soft = Similarity(1.02, 0.5, 0.4, 0.1, *centre)
    moved = warp_layers(layers, upper, lower, soft)
    # analytic follow-up upper mask: the rod moved by the same similarity, thresholded like the baseline
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    src = upper.inverse().apply(np.stack([x, y], axis=-1))
    analytic_upper = _rod_at(src[..., 0], src[..., 1]) > MASK_LEVEL
    assert mask_dice(moved.upper_mask, analytic_upper) >= 0.98
    assert mask_dice(moved.upper_mask, warp_mask(layers.upper_mask, upper)) >= 0.98
    assert mask_dice(moved.lower_mask, warp_mask(layers.lower_mask, lower)) >= 0.98
    # the mismatch is confined to the boundary (within one pixel of the analytic edge)
    ring = analytic_upper ^ moved.upper_mask
    boundary = analytic_upper ^ _dilate(analytic_upper) | analytic_upper ^ _erode(analytic_upper)
    assert not (ring & ~boundary).any()


def _rod_at(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    head_y, radius = 45.0, 18.0
    dist = np.where(v < head_y, np.abs(u - 48.0), np.hypot(u - 48.0, v - head_y))
    texture = 1.0 + 0.15 * np.sin(u / 4.0) * np.cos(v / 5.0)
    return 0.6 * texture * 0.5 * (1.0 + erf((radius - dist) / (np.sqrt(2.0) * EDGE_SIGMA_PX)))


def _dilate(mask: np.ndarray) -> np.ndarray:
    import scipy.ndimage

    return scipy.ndimage.binary_dilation(mask)


def _erode(mask: np.ndarray) -> np.ndarray:
    import scipy.ndimage

    return scipy.ndimage.binary_erosion(mask, border_value=1)


def test_identity_leaves_layers_untouched_and_bad_shift_is_an_input_error() -> None:
    from jsnsynth.errors import InputError

    layers = rod_layers()
    same = warp_layers(layers)
    assert np.allclose(same.upper, layers.upper, atol=1e-6)
    with pytest.raises(InputError):
        shift_upper(layers, float("nan"))


def test_sharp_mask_edges_keep_the_total_attenuation_exact() -> None:
    """A mask-cut layer (a step, like real mask-based layers) rings when moved; the negative lobes
    go into the soft layer, so every layer is >= 0 and the imaged sum is the exact moved sum."""
    layers = rod_layers()
    cut = np.where(layers.upper_mask, layers.upper + 0.4, 0.0)  # a 0.4+ step at the mask edge
    layers = layers.replace(upper=cut)
    moved = shift_upper(layers, 1.5)
    exact = layers.soft + layers.lower + fourier_translate(cut, (0.0, 1.5))
    assert fourier_translate(cut, (0.0, 1.5)).min() < -0.01  # it does ring
    assert min(moved.upper.min(), moved.soft.min()) >= 0
    assert np.abs(moved.attenuation() - exact).max() < 1e-5
