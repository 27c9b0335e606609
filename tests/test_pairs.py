"""Longitudinal pairs: truth by construction, recorded transforms match the masks, replayable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import axis_vector
from jsnsynth.synth.pairs import (
    PairConfig,
    PairParams,
    make_pair,
    mask_dice,
    pair_poses,
    realised_jsn_px,
    sample_pair_params,
    with_noise_draw,
)
from jsnsynth.synth.shift import warp_mask
from jsnsynth.synth.soft_tissue import SOFT_TISSUE_BLEND_MM, soft_tissue_sources
from jsnsynth.synth.sources import PhantomSource
from test_shift import rod_layers


@pytest.mark.parametrize("seed", range(20))
def test_recorded_poses_encode_the_jsn_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    params = sample_pair_params(rng, 0.175, PairConfig(jsn_px=(-3, 3)))
    centre = tuple(rng.uniform(40, 200, size=2))
    axis_deg = float(rng.uniform(-10, 10))
    poses = pair_poses(params, centre, axis_deg)
    # F_upper(c) = c + d * axis exactly, so G^-1 T_upper(c) - G^-1 T_lower(c) = d * axis
    assert realised_jsn_px(poses, centre, axis_deg) == pytest.approx(params.jsn_px, abs=1e-9)
    undone = poses.soft.inverse().apply(poses.upper.apply(np.array(centre)))
    assert np.allclose(undone, np.array(centre) + params.jsn_px * axis_vector(axis_deg), atol=1e-9)
    # the recorded transforms are about the joint centre: (dx, dy) is the centre's displacement
    assert (poses.upper.cx, poses.upper.cy) == pytest.approx(centre)
    assert poses.upper.apply(np.array(centre)) == pytest.approx(np.array(centre) + (poses.upper.dx, poses.upper.dy))
    # a quantifier undoing the mean similarity of both bones recovers d to second order
    mean_angle = math.radians((poses.upper.angle_deg + poses.lower.angle_deg) / 2)
    delta = np.array([poses.upper.dx - poses.lower.dx, poses.upper.dy - poses.lower.dy]) / poses.upper.scale
    rot = np.array([[math.cos(mean_angle), math.sin(mean_angle)], [-math.sin(mean_angle), math.cos(mean_angle)]])
    assert float(rot @ delta @ axis_vector(axis_deg)) == pytest.approx(params.jsn_px, abs=1e-3)


def test_default_ranges_and_record_round_trip() -> None:
    config = PairConfig()
    for seed in range(50):
        params = sample_pair_params(np.random.default_rng(seed), 0.175, config)
        assert -0.5 <= params.jsn_mm <= 0.5 and params.jsn_mm == pytest.approx(params.jsn_px * 0.175)
        assert abs(params.upper_flexion_deg) <= 2 and abs(params.lower_flexion_deg) <= 2
        assert abs(params.global_angle_deg) <= 3 and 0.97 <= params.global_scale <= 1.03
        assert max(abs(params.global_dx), abs(params.global_dy)) <= 5
        assert params.baseline_imaging.noise_seed != params.followup_imaging.noise_seed
        assert PairParams.from_dict(params.to_dict()) == params
    with pytest.raises(InputError):
        PairConfig(magnification=(1.1, 0.9))
    with pytest.raises(InputError):
        PairConfig(flexion_deg=-1)


def test_raster_pair_masks_follow_the_recorded_transforms() -> None:
    layers = rod_layers()
    params = sample_pair_params(np.random.default_rng(5), layers.pixel_spacing_mm, PairConfig(jsn_px=(2, 3)))
    pair = make_pair(layers, params)
    for bone in ("upper", "lower"):
        pose = getattr(pair.poses, bone)
        expected = warp_mask(getattr(layers, f"{bone}_mask"), pose)
        assert mask_dice(expected, getattr(pair.followup_layers, f"{bone}_mask")) >= 0.98
    assert pair.followup_layers.joint_center_xy == pair.baseline_layers.joint_center_xy  # truth in the baseline frame
    # ... which is the frame anyone can recompute from the baseline masks alone.
    from jsnsynth.synth.layers import joint_frame_from_masks

    centre, axis = joint_frame_from_masks(layers.upper_mask, layers.lower_mask)
    assert pair.baseline_layers.joint_center_xy == centre and pair.baseline_layers.joint_axis_deg == axis
    for name in ("baseline", "followup", "baseline_clean", "followup_clean"):
        image = getattr(pair, name)
        assert image.shape == layers.shape and 0 <= image.min() and image.max() <= 1
    assert not np.allclose(pair.baseline, pair.baseline_clean)  # fresh noise on both visits
    assert not np.allclose(pair.followup - pair.followup_clean, pair.baseline - pair.baseline_clean)


def test_phantom_pair_masks_follow_the_recorded_transforms() -> None:
    source = PhantomSource(n_joints=1, size_px=96)
    rng = np.random.default_rng(11)
    layers = source.load("phantom-000000", rng)
    params = sample_pair_params(rng, layers.pixel_spacing_mm, PairConfig(jsn_px=(-3, 3)))
    pair = make_pair(layers, params, source.render_with_poses)
    for bone in ("upper", "lower"):
        moved = warp_mask(getattr(layers, f"{bone}_mask"), getattr(pair.poses, bone))
        assert mask_dice(moved, getattr(pair.followup_layers, f"{bone}_mask")) >= 0.98


def test_same_params_same_pair_and_noise_free_option() -> None:
    layers = rod_layers()
    config = PairConfig(noise=False)
    params = sample_pair_params(np.random.default_rng(1), layers.pixel_spacing_mm, config)
    first, second = make_pair(layers, params), make_pair(layers, params)
    assert np.array_equal(first.followup, second.followup)
    assert np.array_equal(first.baseline, first.baseline_clean)


# ------------------------------------------------------------------------------------------
# the soft tissue moves with the bones that carry it


def _poses(flex_upper: float, flex_lower: float, d_px: float, centre=(60.0, 50.0), axis_deg=8.0):
    params = sample_pair_params(np.random.default_rng(0), 0.175, PairConfig())
    params = PairParams.from_dict({**params.to_dict(), "upper_flexion_deg": flex_upper, "lower_flexion_deg": flex_lower,
                                   "jsn_px": d_px, "jsn_mm": d_px * 0.175})
    return pair_poses(params, centre, axis_deg), centre, axis_deg


def test_soft_tissue_moves_with_the_hand_when_the_bones_do() -> None:
    poses, centre, axis_deg = _poses(0.0, 0.0, 0.0)
    xs, ys = soft_tissue_sources((100, 120), poses.upper, poses.lower, poses.soft, centre, axis_deg, 11.4)
    grid_y, grid_x = np.mgrid[0:100, 0:120].astype(np.float64)
    expected = poses.soft.inverse().apply(np.stack([grid_x, grid_y], axis=-1))
    assert np.abs(xs - expected[..., 0]).max() < 1e-9 and np.abs(ys - expected[..., 1]).max() < 1e-9


def test_soft_tissue_follows_each_bone_away_from_the_joint_and_blends_smoothly_across_it() -> None:
    poses, centre, axis_deg = _poses(4.0, -3.0, 2.5)
    blend_px = 11.4
    xs, ys = soft_tissue_sources((100, 120), poses.upper, poses.lower, poses.soft, centre, axis_deg, blend_px)
    grid_y, grid_x = np.mgrid[0:100, 0:120].astype(np.float64)
    follow = np.stack([grid_x, grid_y], axis=-1)
    along = (poses.soft.inverse().apply(follow) - np.array(centre)) @ axis_vector(axis_deg)
    for pose, side in ((poses.upper, along < -blend_px), (poses.lower, along > blend_px)):
        back = pose.inverse().apply(follow)
        assert side.sum() > 1000
        assert np.abs(xs - back[..., 0])[side].max() < 1e-9 and np.abs(ys - back[..., 1])[side].max() < 1e-9
    # across the band the tissue is stretched or compressed (by the flexion's lever and d), but
    # never torn (neighbours come from neighbours) nor folded (positive Jacobian)
    dxs_dy, dxs_dx = np.gradient(xs)
    dys_dy, dys_dx = np.gradient(ys)
    assert max(np.hypot(dxs_dx, dys_dx).max(), np.hypot(dxs_dy, dys_dy).max()) < 1.6
    assert (dxs_dx * dys_dy - dxs_dy * dys_dx).min() > 0.3


def test_a_flexed_bone_takes_its_soft_tissue_along() -> None:
    """A raster pair: the follow-up soft layer far above the joint is the baseline's moved by the
    upper bone's pose, not by the hand's."""
    layers = rod_layers()
    textured = layers.soft * (1.0 + 0.2 * np.sin(np.arange(layers.shape[1]) / 3.0))[None, :]
    layers = layers.replace(soft=textured.astype(np.float32))
    params = sample_pair_params(np.random.default_rng(3), layers.pixel_spacing_mm, PairConfig(noise=False))
    params = PairParams.from_dict({**params.to_dict(), "upper_flexion_deg": 5.0, "lower_flexion_deg": 0.0})
    pair = make_pair(layers, params)
    from jsnsynth.synth.shift import warp_layer

    centre, axis_deg = pair.baseline_layers.joint_center_xy, pair.baseline_layers.joint_axis_deg
    with_upper = warp_layer(layers.soft, pair.poses.upper)
    with_hand = warp_layer(layers.soft, pair.poses.soft)
    grid_y, grid_x = np.mgrid[0:layers.shape[0], 0:layers.shape[1]].astype(np.float64)
    hand_xy = pair.poses.soft.inverse().apply(np.stack([grid_x, grid_y], axis=-1))
    far_above = ((hand_xy - np.array(centre)) @ axis_vector(axis_deg) < -SOFT_TISSUE_BLEND_MM / layers.pixel_spacing_mm - 2)
    far_above &= (grid_x > 4) & (grid_x < layers.shape[1] - 5) & (grid_y > 4)
    follow_soft = pair.followup_layers.soft
    assert np.abs(follow_soft - with_upper)[far_above].max() < 0.01 * layers.soft.max()
    assert np.abs(follow_soft - with_hand)[far_above].max() > 0.05 * layers.soft.max()


def test_soft_tissue_blend_must_be_positive() -> None:
    with pytest.raises(InputError, match="soft-tissue blend"):
        PairConfig(soft_tissue_blend_mm=0.0)


def test_noise_draws_change_only_the_noise() -> None:
    params = sample_pair_params(np.random.default_rng(0), 0.175, PairConfig())
    first, second = with_noise_draw(params, 800.0, 0), with_noise_draw(params, 800.0, 1)
    assert (first.jsn_px, first.upper_flexion_deg, first.global_scale) == (second.jsn_px, second.upper_flexion_deg, second.global_scale)
    seeds = {first.baseline_imaging.noise_seed, first.followup_imaging.noise_seed,
             second.baseline_imaging.noise_seed, second.followup_imaging.noise_seed}
    assert len(seeds) == 4 and first.baseline_imaging.photons_per_px == 800.0
    with pytest.raises(InputError):
        with_noise_draw(params, 800.0, 4000)


@pytest.mark.parametrize("move", [{"global_dx": 0.5, "global_dy": -0.3}, {"global_angle_deg": 2.0}])
def test_a_raster_follow_up_moved_as_a_whole_is_the_moved_baseline_image(move: dict) -> None:
    """With the same imaging and nothing but a rigid move of the whole joint, the follow-up is the
    baseline image moved, even where the bone layers carry pixel-scale texture (real crops do):
    the bones are moved as band-limited signals and exp(-a) is taken at twice the resolution.
    Moved by cubic B-splines and imaged on the pixels, the follow-up was ten times further off
    (rms 4e-4), and real-layer pairs read 0.001-0.002 px of narrowing that was not there. (The
    soft tissue, which carries no truth and moves non-rigidly with the bones, is resampled by a
    bicubic remap; textured, it leaves ~5e-4 here, and no measurable JSN bias: docs/dataset.md.)"""
    import dataclasses

    from jsnsynth.synth.shift import warp_layer

    layers = rod_layers()
    layers = layers.replace(upper=layers.upper * (1 + 0.15 * np.random.default_rng(2).standard_normal(layers.shape)))
    params = sample_pair_params(np.random.default_rng(1), layers.pixel_spacing_mm, PairConfig(noise=False))
    still = {"jsn_px": 0.0, "jsn_mm": 0.0, "upper_flexion_deg": 0.0, "lower_flexion_deg": 0.0, "global_angle_deg": 0.0,
             "global_scale": 1.0, "global_dx": 0.0, "global_dy": 0.0}
    params = dataclasses.replace(params, followup_imaging=params.baseline_imaging, **{**still, **move})
    pair = make_pair(layers, params)
    expected = warp_layer(pair.baseline_clean.astype(np.float64), pair.poses.soft)
    difference = (pair.followup_clean - expected)[20:-20, 20:-20]
    assert np.sqrt(np.mean(difference**2)) < 1.5e-4


def test_the_samplers_take_a_seed_for_a_generator() -> None:
    # an int seed raised "AttributeError: 'int' object has no attribute 'uniform'"
    from jsnsynth.synth.phantom import sample_phantom_params

    assert sample_phantom_params(3) == sample_phantom_params(np.random.default_rng(3))
    assert sample_pair_params(3, 0.175) == sample_pair_params(np.random.default_rng(3), 0.175)
