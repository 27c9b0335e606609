"""The loader of the finger-joint folder format, on a tiny fixture made here and on the real data."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from jsnsynth.errors import InputError
from jsnsynth.synth.fingerjoints import MANIFEST_COLUMNS, fill_smooth, layers_from_images, load_fingerjoint, read_manifest
from jsnsynth.synth.io import read_mask
from jsnsynth.synth.shift import fourier_translate
from jsnsynth.synth.xray import attenuation_to_intensity, intensity_to_attenuation


def _make_folder(root: Path, drop_mask: bool = False) -> dict[str, np.ndarray]:
    """Write one series with one 48x32 joint: PNG radiograph, masks and soft-tissue image."""
    series = root / "00001_L_5"
    series.mkdir(parents=True)
    soft = np.full((48, 32), 90, np.uint8)
    image = soft.copy()
    upper = np.zeros((48, 32), np.uint8)
    lower = np.zeros((48, 32), np.uint8)
    upper[:20, 8:24] = 255
    lower[26:, 6:26] = 255
    image[upper > 0] = 200
    image[lower > 0] = 180
    cv2.imwrite(str(series / "a.png"), image)
    cv2.imwrite(str(series / "a_soft.png"), soft)
    cv2.imwrite(str(series / "a_mask_upper.png"), upper)
    if not drop_mask:
        cv2.imwrite(str(series / "a_mask_lower.png"), lower)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerow(["00001_L_5", "00001", "L", "5", "00001_L_5/a.png", "00001_L_5/a_mask_upper.png",
                         "00001_L_5/a_mask_lower.png", "00001_L_5/a_soft.png"])
    return {"image": image, "soft": soft, "upper": upper > 0, "lower": lower > 0}


def test_loader_builds_layers_that_add_up_to_the_image(tmp_path: Path) -> None:
    arrays = _make_folder(tmp_path)
    (record,) = read_manifest(tmp_path)
    layers = load_fingerjoint(record)
    total = intensity_to_attenuation(arrays["image"] / 255.0)
    np.testing.assert_allclose(layers.attenuation(), total, atol=1e-5)
    np.testing.assert_allclose(layers.soft, intensity_to_attenuation(arrays["soft"] / 255.0), atol=1e-6)
    expected_upper = intensity_to_attenuation(200 / 255) - intensity_to_attenuation(90 / 255)
    np.testing.assert_allclose(layers.upper[arrays["upper"]], expected_upper, atol=1e-5)
    # (the smooth fill of the constant soft tissue under the bones is that constant to rounding)
    assert np.abs(layers.upper[~arrays["upper"]]).max() < 1e-9 and np.abs(layers.lower[~arrays["lower"]]).max() < 1e-9
    assert layers.joint_center_xy == pytest.approx((15.5, 22.5))
    assert layers.metadata["series"] == "00001_L_5" and layers.metadata["pixel_spacing_is_nominal"]


def test_missing_mask_is_named(tmp_path: Path) -> None:
    _make_folder(tmp_path, drop_mask=True)
    (record,) = read_manifest(tmp_path)
    with pytest.raises(InputError, match="a_mask_lower.png: no such file"):
        load_fingerjoint(record)


def test_folder_without_manifest_or_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no manifest.csv"):
        read_manifest(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        read_manifest(tmp_path / "absent")
    (tmp_path / "a_file.txt").write_text("x")
    with pytest.raises(InputError, match="a_file.txt: not a folder"):
        read_manifest(tmp_path / "a_file.txt")
    (tmp_path / "manifest.csv").write_text("series,image\n")
    with pytest.raises(InputError, match="missing column.s. mask_upper, mask_lower"):
        read_manifest(tmp_path)


def test_a_manifest_of_the_required_columns_alone_is_read(tmp_path: Path) -> None:
    """A user's own series for validate-real: the series, images and masks are all it uses; a
    manifest without soft-tissue images, series ids, sides or joint codes was refused."""
    arrays = _make_folder(tmp_path)
    (tmp_path / "manifest.csv").write_text(
        "series,image,mask_upper,mask_lower\n00001_L_5,00001_L_5/a.png,00001_L_5/a_mask_upper.png,00001_L_5/a_mask_lower.png\n")
    (record,) = read_manifest(tmp_path)
    assert (record.series, record.series_id, record.side, record.soft_tissue.name) == (
        "00001_L_5", "00001_L_5", "", "<missing soft-tissue image>")
    assert (read_mask(record.mask_upper) == arrays["upper"]).all()


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\xff\xfe binary", "not a readable CSV text file (UnicodeDecodeError)"),
    (",".join(MANIFEST_COLUMNS).encode() + b"\nonly,three,cells\n", "line 2 has fewer cells than the header"),
    (b"series,image,mask_upper,mask_lower\ns,,u.png,l.png\n", "line 2 has no image"),
    (b"series,image,mask_upper,mask_lower\n,a.png,u.png,l.png\n", "line 2 has no series"),
    # an image listed twice: validate-real paired the visit with itself (JSN 0) into its statistics
    (b"series,image,mask_upper,mask_lower\ns,s/a.png,u.png,l.png\ns,s/b.png,u.png,l.png\ns,s/./a.png,u.png,l.png\n",
     "line 4 lists the image s/./a.png again (line 2 lists it first)"),
    # an image given by an absolute path outside the folder is named as written (it was a ValueError)
    (b"series,image,mask_upper,mask_lower\ns,/elsewhere/a.png,u.png,l.png\ns,/elsewhere/a.png,u.png,l.png\n",
     "line 3 lists the image /elsewhere/a.png again (line 2 lists it first)"),
])
def test_unreadable_manifest_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    """A binary manifest.csv ended with "UnicodeDecodeError: 'utf-8' codec can't decode ..."."""
    (tmp_path / "manifest.csv").write_bytes(content)
    with pytest.raises(InputError, match="manifest.csv") as info:
        read_manifest(tmp_path)
    assert message in str(info.value)


def test_real_crops_load(fingerjoints_dir: Path) -> None:
    records = read_manifest(fingerjoints_dir)
    assert len(records) > 1000
    for record in records[:: len(records) // 5]:
        layers = load_fingerjoint(record)
        assert layers.shape == (256, 256)
        assert layers.upper_mask.any() and layers.lower_mask.any()
        x, y = layers.joint_center_xy
        assert 0 < x < 256 and 0 < y < 256


def test_bone_shares_are_whole_inside_masks_smooth_and_never_exceed_one() -> None:
    from jsnsynth.synth.fingerjoints import RIM_TAPER_END_PX, bone_shares

    upper = np.zeros((60, 40), bool)
    lower = np.zeros((60, 40), bool)
    upper[:25, 10:30] = True
    lower[33:, 8:32] = True
    lower[20:25, 18:22] = True  # a small overlap
    share_upper, share_lower = bone_shares(upper, lower)
    assert np.all(share_upper[upper & ~lower] == 1.0) and np.all(share_lower[lower & ~upper] == 1.0)
    np.testing.assert_allclose(share_upper[upper & lower], 0.5)
    assert np.all(share_upper + share_lower <= 1.0 + 1e-12) and np.all(share_upper >= 0)
    # In the 8-px joint space the shares hand over smoothly from one bone to the other.
    column = share_upper[24:34, 26]
    assert np.all(np.diff(column) < 0) and np.abs(np.diff(column)).max() < 0.5
    # Beyond the taper nothing is bone.
    wide_upper = np.zeros((60, 80), bool)
    wide_upper[:25, 10:30] = True
    wide_lower = np.zeros((60, 80), bool)
    wide_lower[33:, 8:32] = True
    far_upper, far_lower = bone_shares(wide_upper, wide_lower)
    assert np.all(far_upper[:, 30 + int(RIM_TAPER_END_PX) + 1 :] == 0)
    assert np.all(far_lower[:, 32 + int(RIM_TAPER_END_PX) + 1 :] == 0)


def test_a_blurred_rim_outside_the_mask_goes_with_the_bone(tmp_path: Path) -> None:
    soft = np.full((64, 48), 0.3)
    bone = np.zeros((64, 48))
    bone[:26, 12:36] = 0.5
    import cv2 as _cv2

    blurred_bone = _cv2.GaussianBlur(bone, (0, 0), 1.5)
    image = 1.0 - (1.0 - soft) * (1.0 - blurred_bone)
    upper = bone > 0
    upper[24:26] = False  # the drawn mask stops two pixels short of the cortical edge
    lower = np.zeros_like(upper)
    lower[40:, 10:38] = True
    layers = layers_from_images(image, soft, upper, lower)
    expected_soft = intensity_to_attenuation(soft)
    # Beyond the mask the rim is bone, not soft tissue: the soft layer is the bone-free one.
    # (to 5e-3, 1.4 % of the bone: the weight tapers from 3 px outside the mask, leaving a sliver of the tail)
    np.testing.assert_allclose(layers.soft[:40], expected_soft[:40], atol=5e-3)
    assert layers.upper[25:29, 24].min() > 0
    np.testing.assert_allclose(layers.attenuation(), intensity_to_attenuation(image), atol=1e-6)


def test_fill_smooth_keeps_known_pixels_and_interpolates_a_plane():
    yy, xx = np.mgrid[0:40, 0:50].astype(float)
    plane = 0.3 + 0.01 * xx + 0.005 * yy
    known = np.ones_like(plane, bool)
    known[10:30, 15:35] = False
    filled = fill_smooth(np.where(known, plane, 0.0), known, relax_iterations=200)
    assert np.array_equal(filled[known], plane[known])
    assert np.abs(filled - plane).max() < 0.02  # a smooth fill of a plane stays near the plane


def test_a_dip_of_the_soft_tissue_image_under_a_bone_moves_with_the_bone():
    """The soft-tissue images are darker under the bones; that dip must not stay behind."""
    yy, xx = np.mgrid[0:64, 0:48].astype(float)
    soft_tissue = 0.25 + 0.002 * xx  # what the soft layer should be: smooth under the bones too
    upper = np.zeros((64, 48), bool)
    upper[:26, 12:36] = True
    lower = np.zeros_like(upper)
    lower[34:, 10:38] = True
    dip = 0.15 * cv2.GaussianBlur((upper | lower).astype(float), (0, 0), 1.0)  # displaced tissue
    bone = 0.6 * cv2.GaussianBlur((upper | lower).astype(float), (0, 0), 1.0)
    total = soft_tissue - dip + bone
    layers = layers_from_images(attenuation_to_intensity(total), attenuation_to_intensity(soft_tissue - dip), upper, lower)
    np.testing.assert_allclose(layers.attenuation(), total, atol=1e-6)
    # the soft layer is the smooth tissue under the bones too, not the dipped soft-tissue image
    # (which is up to 0.15 lower there) ...
    inside = upper | lower
    assert np.abs(layers.soft - soft_tissue)[inside].max() < 0.01
    # ... and the bone layers carry the net contrast, bone minus the tissue it displaces
    np.testing.assert_allclose((layers.upper + layers.lower)[inside], (bone - dip)[inside], atol=0.01)


def test_saturated_pixels_leave_no_spike_for_a_shift_to_ring():
    """A few pixels at full scale inside a bone (as in 11 % of the real crops): the inverse mapping
    would make them an attenuation of 11.1 among values near 2; they are filled from their
    neighbours instead, so the layer stays smooth there and a sub-pixel shift of it does not
    ring along the shift (with the spike: 0.007 in attenuation 20 px away, against 5e-5)."""
    xx = np.mgrid[0:96, 0:64][1].astype(float)
    soft_tissue = np.full((96, 64), 0.3)
    upper = np.zeros((96, 64), bool)
    upper[:44, 14:50] = True
    lower = np.zeros_like(upper)
    lower[52:, 12:52] = True
    bone = cv2.GaussianBlur((upper | lower).astype(float), (0, 0), 1.5) * (1.5 + 0.3 * np.sin(xx / 5.0))
    image = attenuation_to_intensity(soft_tissue + bone)
    image[38:40, 30:33] = 1.0  # six saturated pixels on the upper bone
    layers = layers_from_images(image, attenuation_to_intensity(soft_tissue), upper, lower)
    assert layers.metadata["saturated_px"] == 6
    unsaturated = image < 1.0
    assert layers.attenuation().max() <= intensity_to_attenuation(image[unsaturated]).max() + 1e-5  # float32 layers
    assert np.abs(layers.attenuation() - intensity_to_attenuation(image))[unsaturated].max() < 1e-5
    moved = fourier_translate(layers.upper, np.array([0.0, 0.5]))
    reference = fourier_translate(layers_from_images(attenuation_to_intensity(soft_tissue + bone),
                                                     attenuation_to_intensity(soft_tissue), upper, lower).upper, np.array([0.0, 0.5]))
    assert np.abs(moved - reference)[:18, 30:33].max() < 1e-3


def test_distance_to_a_mask_is_the_exact_euclidean_one() -> None:
    """To float32 rounding. (It is SciPy's: OpenCV's 'precise' transform, as exact, let its last
    bits follow the state of the heap, now and then, so datasets of real crops differed from run
    to run; that was caught by comparing whole datasets, and no small mask shows it reliably.)"""
    from scipy import ndimage

    from jsnsynth.synth.fingerjoints import _distance_to

    yy, xx = np.mgrid[:256, :256]
    mask = ((xx - 120) / 70.0) ** 2 + ((yy - 60) / 45.0) ** 2 < 1.0
    exact = ndimage.distance_transform_edt(~mask)
    assert np.array_equal(_distance_to(mask), exact.astype(np.float32))  # to float32 rounding
