"""The JointLayers data model, joint-centre location and the Similarity convention."""

from __future__ import annotations

import numpy as np
import pytest

from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.layers import JointLayers, joint_center_from_masks, mask_pixels


def _boxes(shape=(40, 30), gap=(18, 22)) -> tuple[np.ndarray, np.ndarray]:
    upper = np.zeros(shape, bool)
    lower = np.zeros(shape, bool)
    upper[: gap[0], 8:22] = True
    lower[gap[1]:, 6:24] = True
    return upper, lower


def test_joint_center_is_the_middle_of_the_gap() -> None:
    upper, lower = _boxes()
    x, y = joint_center_from_masks(upper, lower)
    # The upper bone's last row is 17 (edge at 17.5), the lower bone's first row is 22 (edge at 21.5).
    assert x == pytest.approx(14.5) and y == pytest.approx(19.5)


def test_joint_center_needs_two_bones_sharing_columns() -> None:
    upper, lower = _boxes()
    with pytest.raises(InputError, match="upper-bone mask is empty"):
        joint_center_from_masks(np.zeros_like(upper), lower)
    side = np.zeros_like(lower)
    side[25:, 25:] = True
    with pytest.raises(InputError, match="share no column"):
        joint_center_from_masks(upper, side)


def test_layers_validate_shapes_values_and_spacing() -> None:
    upper_mask, lower_mask = _boxes()
    zeros = np.zeros(upper_mask.shape, np.float32)
    layers = JointLayers(zeros + 0.3, upper_mask * 1.0, lower_mask * 2.0, upper_mask, lower_mask)
    assert layers.attenuation().dtype == np.float32 and layers.shape == (40, 30)
    np.testing.assert_allclose(layers.axis_xy, [0.0, 1.0], atol=1e-15)
    with pytest.raises(InputError, match="shape"):
        JointLayers(zeros, zeros[:-1], zeros, upper_mask, lower_mask)
    with pytest.raises(InputError, match="NaN"):
        JointLayers(zeros + np.nan, zeros, zeros, upper_mask, lower_mask)
    with pytest.raises(InputError, match="negative"):
        JointLayers(zeros - 1, zeros, zeros, upper_mask, lower_mask)
    with pytest.raises(InputError, match="pixel spacing"):
        JointLayers(zeros, zeros, zeros, upper_mask, lower_mask, pixel_spacing_mm=0.0)


def test_similarity_maps_its_centre_by_its_translation_and_inverts() -> None:
    t = Similarity(scale=1.02, angle_deg=3.0, dx=1.25, dy=-0.5, cx=10.0, cy=20.0)
    np.testing.assert_allclose(t.apply(np.array([10.0, 20.0])), [11.25, 19.5])
    points = np.random.default_rng(0).uniform(0, 50, (10, 2))
    np.testing.assert_allclose(t.inverse().apply(t.apply(points)), points, atol=1e-12)
    u = Similarity(scale=0.98, angle_deg=-1.0, dx=0.3, dy=0.7, cx=5.0, cy=5.0)
    np.testing.assert_allclose(t.then(u).apply(points), u.apply(t.apply(points)), atol=1e-12)
    np.testing.assert_allclose(t.about(0.0, 0.0).apply(points), t.apply(points), atol=1e-12)
    assert Similarity.from_dict(t.to_dict()) == t


def test_positive_angle_turns_x_towards_y() -> None:
    quarter = Similarity(angle_deg=90.0)
    np.testing.assert_allclose(quarter.apply(np.array([1.0, 0.0])), [0.0, 1.0], atol=1e-12)
    # The joint axis rotates with the same sign.
    np.testing.assert_allclose(axis_vector(90.0), quarter.apply(np.array([0.0, 1.0])), atol=1e-12)


def test_joint_center_ignores_the_lips_of_a_concave_base() -> None:
    # Upper bone: a concave base whose lips (columns 6-9 and 21-24) reach lower than its middle;
    # lower bone: a domed head. The centre must sit above the head, not beside a lip.
    shape = (60, 31)
    upper = np.zeros(shape, bool)
    lower = np.zeros(shape, bool)
    upper[:25, 6:25] = True
    upper[25:29, 6:10] = True
    upper[25:29, 21:25] = True
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    lower[((cols - 15) / 9.0) ** 2 + ((rows - 45) / 15.0) ** 2 <= 1.0] = True
    x, y = joint_center_from_masks(upper, lower)
    assert x == pytest.approx(15.0, abs=0.5)
    assert y == pytest.approx((24.5 + 29.5) / 2, abs=0.5)


def _two_bones(angle_deg: float, shape=(160, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle over a dome, rotated by ``angle_deg`` about the image centre."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    a = np.radians(angle_deg)
    # Undo the rotation: (s, t) are the coordinates across and along the joint axis.
    x, y = cols - 80.0, rows - 80.0
    s = x * np.cos(a) + y * np.sin(a)
    t = -x * np.sin(a) + y * np.cos(a)
    upper = (np.abs(s) <= 22) & (t <= -4) & (t >= -60)
    lower = (s / 26.0) ** 2 + ((t - 36.0) / 32.0) ** 2 <= 1.0
    return upper, lower


@pytest.mark.parametrize("angle_deg", [-7.0, 0.0, 4.0])
def test_joint_frame_recovers_axis_and_centre_of_a_rotated_joint(angle_deg: float) -> None:
    from jsnsynth.synth.layers import joint_frame_from_masks

    upper, lower = _two_bones(angle_deg)
    (x, y), axis = joint_frame_from_masks(upper, lower)
    assert axis == pytest.approx(angle_deg, abs=0.5)
    # The gap runs from t = -4 to t = 4 on the axis through the image centre: centre (80, 80).
    assert x == pytest.approx(80.0, abs=0.7) and y == pytest.approx(80.0, abs=0.7)


def test_side_by_side_or_swapped_masks_are_not_a_joint() -> None:
    from jsnsynth.synth.layers import joint_axis_from_masks

    upper, lower = _two_bones(0.0)
    with pytest.raises(InputError, match="lies below the lower-bone mask .*: are the two masks swapped"):
        joint_axis_from_masks(lower, upper)
    left = np.zeros((60, 60), bool)
    right = np.zeros((60, 60), bool)
    left[:, :10] = True
    right[:, 50:] = True
    with pytest.raises(InputError, match="not below"):
        joint_axis_from_masks(left, right)


@pytest.mark.parametrize("size_px", [96, 128])
def test_joint_axis_of_bones_as_wide_as_the_crop(size_px: int) -> None:
    """Small phantoms whose bones fill the crop's width: only the rounded bone ends have whole
    cross-sections, whose mid-points once turned the axis by 20-70 deg; the centroid line is kept."""
    from jsnsynth.synth.layers import joint_axis_from_masks
    from jsnsynth.synth.sources import PhantomSource

    source = PhantomSource(n_joints=8, size_px=size_px)
    for k in range(8):
        layers = source.load(f"phantom-{k:06d}", np.random.default_rng(k))
        assert abs(joint_axis_from_masks(layers.upper_mask, layers.lower_mask) - layers.joint_axis_deg) < 5.0


def test_mask_pixels_are_nonzeros_rows_and_columns():
    mask = np.random.default_rng(0).random((37, 53)) > 0.6
    rows, cols = mask_pixels(mask)
    expected_rows, expected_cols = np.nonzero(mask)
    assert np.array_equal(rows, expected_rows) and np.array_equal(cols, expected_cols)
    assert rows.dtype == expected_rows.dtype
    empty_rows, empty_cols = mask_pixels(np.zeros((4, 5), bool))
    assert empty_rows.size == empty_cols.size == 0
