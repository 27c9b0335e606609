"""The analytic phantom: determinism, exact joint space width, masks, and exact pose moves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.shift import measure_translation_px, periodic_fourier_shift
from jsnsynth.synth.phantom import (
    JOINT_TYPES,
    PhantomParams,
    render_phantom,
    render_with_poses,
    sample_phantom_params,
)


def _params(seed: int, **overrides) -> PhantomParams:
    return sample_phantom_params(np.random.default_rng(np.random.SeedSequence([seed, 7])), **overrides)


# Several anatomies, joint types and rotations, including touching and overlapping bones.
JSW_CASES = [
    (1, {}),
    (2, {"joint_type": "mcp"}),
    (3, {"joint_type": "dip"}),
    (4, {"jsw_mm": 0.0}),
    (5, {"jsw_mm": -0.35}),
    (6, {"jsw_mm": 3.0, "joint_type": "pip"}),
    (7, {"jsw_mm": 0.05, "joint_axis_deg": -8.0}),
    (8, {"head_bone": "upper", "jsw_mm": 1.1}),
    (9, {"head_bone": "upper", "jsw_mm": -0.2, "joint_axis_deg": 6.0}),
]


def test_params_round_trip_and_overrides() -> None:
    params = _params(0)
    assert PhantomParams.from_dict(params.to_dict()) == params
    fixed = _params(0, jsw_mm=1.25, joint_type="dip")
    assert fixed.jsw_mm == 1.25 and fixed.joint_type == "dip"
    # Overriding one field leaves the non-anatomical draws of the others unchanged.
    assert _params(0, jsw_mm=1.25).joint_axis_deg == params.joint_axis_deg
    for joint_type in JOINT_TYPES:
        assert _params(1, joint_type=joint_type).joint_type == joint_type


def test_bad_params_raise_input_error() -> None:
    with pytest.raises(InputError, match="unknown phantom parameter"):
        _params(0, not_a_field=1.0)
    with pytest.raises(InputError, match="joint_type"):
        _params(0, joint_type="knee")
    with pytest.raises(InputError, match="pixel spacing"):
        _params(0, pixel_spacing_mm=0.0)
    with pytest.raises(InputError, match="finite"):
        _params(0, jsw_mm=float("nan"))
    with pytest.raises(InputError, match="head_bone"):
        _params(0, head_bone="middle")
    with pytest.raises(InputError, match="unknown phantom parameter"):
        PhantomParams.from_dict({**_params(0).to_dict(), "extra": 1})


def test_same_seed_same_layers_and_different_seed_differs() -> None:
    first = render_phantom(_params(11))
    second = render_phantom(_params(11))
    for name in ("soft", "upper", "lower", "upper_mask", "lower_mask"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert first.metadata == second.metadata
    assert not np.array_equal(first.upper, render_phantom(_params(12)).upper)


def test_layers_record_metadata_and_geometry() -> None:
    params = _params(3)
    layers = render_phantom(params)
    assert layers.shape == (params.size_px, params.size_px)
    assert layers.metadata["source"] == "phantom"
    assert layers.metadata["jsw_mm"] == params.jsw_mm
    assert PhantomParams.from_dict(layers.metadata["phantom_params"]) == params
    assert layers.joint_center_xy == params.joint_center_xy
    assert layers.joint_axis_deg == params.joint_axis_deg
    assert layers.pixel_spacing_mm == params.pixel_spacing_mm
    for layer in (layers.soft, layers.upper, layers.lower):
        assert layer.dtype == np.float32 and np.all(np.isfinite(layer)) and layer.min() >= 0
    # Soft tissue (plus background) covers the whole crop, like in the real crops.
    assert layers.soft.min() > 0


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_masks_are_exactly_the_support_of_the_bone_layers(seed: int) -> None:
    layers = render_phantom(_params(seed))
    assert np.array_equal(layers.upper_mask, layers.upper > 0)
    assert np.array_equal(layers.lower_mask, layers.lower > 0)
    assert layers.upper_mask.sum() > 1000 and layers.lower_mask.sum() > 1000


def _aligning_pose(params: PhantomParams) -> tuple[Similarity, int]:
    """Rotate the joint upright about its centre and move the centre onto a pixel column."""
    cx, cy = params.joint_center_xy
    column = int(round(cx))
    return Similarity(1.0, -params.joint_axis_deg, column - cx, 0.0, cx, cy), column


def _edge_row(params: PhantomParams, bone: str) -> float:
    """Sub-pixel row where a bone's rendered support starts/ends on the (upright) axis column.

    Only the rendered layers are used: the pixel just outside the support becomes part of it when
    the bone is moved along the axis by ``tau``; bisection on ``tau`` (renders with a pose)
    locates that switch, and with it the edge, to 1e-4 px.
    """
    align, column = _aligning_pose(params)

    def layer(tau: float) -> np.ndarray:
        pose = align.then(Similarity(1.0, 0.0, 0.0, tau, 0.0, 0.0))
        rendered = render_phantom(params, upper_pose=pose, lower_pose=pose, soft_pose=align)
        return getattr(rendered, bone)[:, column]

    cy = params.center_y_px
    rows = np.arange(params.size_px)
    near = np.abs(rows - cy) < 40  # the joint region of the axis
    inside = np.flatnonzero((layer(0.0) > 0) & near)
    if bone == "upper":
        target, sign = inside.max() + 1, 1.0  # first row below the head: moving down fills it
    else:
        target, sign = inside.min() - 1, -1.0  # last row above the base: moving up fills it
    lo, hi = 0.0, 1.0
    assert layer(sign * lo)[target] == 0 and layer(sign * hi)[target] > 0
    while hi - lo > 1e-4:
        mid = 0.5 * (lo + hi)
        if layer(sign * mid)[target] > 0:
            hi = mid
        else:
            lo = mid
    return target - sign * 0.5 * (lo + hi)


@pytest.mark.parametrize("seed, overrides", JSW_CASES)
def test_recorded_jsw_equals_gap_between_rendered_bones_on_the_axis(seed: int, overrides: dict) -> None:
    params = _params(seed, **overrides)
    jsw_px = params.jsw_mm / params.pixel_spacing_mm
    upper_edge = _edge_row(params, "upper")
    lower_edge = _edge_row(params, "lower")
    # The gap (negative: overlap) along the axis through the joint centre, to 0.05 px ...
    assert abs((lower_edge - upper_edge) - jsw_px) < 0.05
    # ... and the joint centre is its middle.
    assert abs(0.5 * (upper_edge + lower_edge) - params.center_y_px) < 0.05


def test_in_plane_rotation_matches_joint_axis_deg() -> None:
    """A phantom drawn at angle a equals the upright one rotated by a about the joint centre."""
    angle = 7.5
    tilted = _params(21, joint_axis_deg=angle)
    upright = _params(21, joint_axis_deg=0.0)
    cx, cy = upright.joint_center_xy
    turn = Similarity(1.0, angle, 0.0, 0.0, cx, cy)
    a = render_phantom(tilted)
    b = render_phantom(upright, upper_pose=turn, lower_pose=turn, soft_pose=turn)
    for name in ("soft", "upper", "lower"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=2e-5)
    # The axis points from the upper bone to the lower bone: check it with the mask centroids
    # inside a disc about the joint centre (clipping by the crop does not bias them there).
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 60**2
    upper_c = np.array([xx[a.upper_mask & disc].mean(), yy[a.upper_mask & disc].mean()])
    lower_c = np.array([xx[a.lower_mask & disc].mean(), yy[a.lower_mask & disc].mean()])
    direction = (lower_c - upper_c) / np.linalg.norm(lower_c - upper_c)
    assert math.degrees(math.acos(float(direction @ axis_vector(a.joint_axis_deg)))) < 3.0


def test_integer_translation_moves_layers_exactly() -> None:
    params = _params(31)
    base = render_phantom(params)
    moved = render_phantom(params, upper_pose=Similarity(1.0, 0.0, 3.0, -2.0, 50.0, 60.0),
                           lower_pose=Similarity(1.0, 0.0, -1.0, 2.0, 0.0, 0.0))
    # moved(x, y) = base(x - dx, y - dy) wherever both are inside the crop (float32 rounding only).
    np.testing.assert_allclose(moved.upper[:-2, 3:], base.upper[2:, :-3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(moved.lower[2:, :-1], base.lower[:-2, 1:], rtol=0, atol=1e-5)
    assert np.array_equal(moved.soft, base.soft)
    # Poses never change the recorded baseline geometry.
    assert moved.joint_center_xy == base.joint_center_xy and moved.joint_axis_deg == base.joint_axis_deg


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_subpixel_translation_is_the_baseline_shifted(seed: int) -> None:
    """The upper bone rendered under a pure translation d equals the baseline shifted by d.

    Compared after a Gaussian blur (sigma 1.5 px, standing for the detector) on the region more
    than 24 px from the crop border: the blurred layer matches the Fourier-shifted blurred
    baseline to 3 % of its peak and the realised shift equals d to 0.01 px (texture included).
    """
    params = _params(seed)
    shift = np.random.default_rng(seed).uniform(-3.0, 3.0, size=2)
    pose = Similarity(1.0, 0.0, float(shift[0]), float(shift[1]), 17.0, -5.0)
    base = ndimage.gaussian_filter(render_phantom(params).upper.astype(np.float64), 1.5)
    moved = ndimage.gaussian_filter(render_phantom(params, upper_pose=pose).upper.astype(np.float64), 1.5)
    region = (slice(24, -24), slice(24, -24))
    mismatch = np.abs(periodic_fourier_shift(base, shift) - moved)[region].max() / base.max()
    assert mismatch < 0.03
    np.testing.assert_allclose(measure_translation_px(base, moved, region), shift, atol=0.01)


def test_rotation_pose_moves_the_bone_about_its_centre() -> None:
    params = _params(51, joint_axis_deg=0.0)
    cx, cy = params.joint_center_xy
    pose = Similarity(1.0, 4.0, 0.6, -0.4, cx, cy)
    base = render_phantom(params)
    moved = render_phantom(params, upper_pose=pose)
    yy, xx = np.mgrid[: base.shape[0], : base.shape[1]]
    # The disc is invariant under the rotation about the centre; shift it with the translation.
    radius = 70.0
    disc_before = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
    disc_after = (xx - cx - 0.6) ** 2 + (yy - cy + 0.4) ** 2 < radius**2
    before = np.array([xx[base.upper_mask & disc_before].mean(), yy[base.upper_mask & disc_before].mean()])
    after = np.array([xx[moved.upper_mask & disc_after].mean(), yy[moved.upper_mask & disc_after].mean()])
    np.testing.assert_allclose(after, pose.apply(before), atol=0.15)
    # The lower bone did not move.
    assert np.array_equal(moved.lower, base.lower)


def test_render_with_poses_needs_a_phantom() -> None:
    layers = render_phantom(_params(61))
    pose = Similarity(1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    again = render_with_poses(layers, upper_pose=pose)
    np.testing.assert_array_equal(again.upper, render_phantom(_params(61), upper_pose=pose).upper)
    with pytest.raises(InputError, match="phantom_params"):
        render_with_poses(layers.replace(metadata={}), upper_pose=pose)


def test_small_crop_and_other_spacing_render() -> None:
    params = _params(71, size_px=64, pixel_spacing_mm=0.5)
    layers = render_phantom(params)
    assert layers.shape == (64, 64)
    assert layers.upper_mask.any() and layers.lower_mask.any()


@pytest.mark.parametrize("overrides", [{"jsw_mm": 100.0}, {"center_x_px": -500.0}])
def test_overrides_that_put_a_bone_off_the_picture_are_refused_up_front(overrides):
    """Such a phantom rendered empty masks, and a dataset of it failed at its first pair with
    'the upper-bone mask is empty', naming neither the joint nor the override (an outside probe)."""
    from jsnsynth.synth.sources import PhantomSource

    with pytest.raises(InputError, match="bone lies outside its 256 px picture"):
        render_phantom(sample_phantom_params(np.random.default_rng(0), **overrides))
    with pytest.raises(InputError, match="check overrides of the joint's place and size, or frame more of it"):
        PhantomSource(**overrides)
