"""The loader of the finger-joint folder format, on a tiny fixture made here and on the real data."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from jsnsynth.errors import InputError
from jsnsynth.synth.fingerjoints import MANIFEST_COLUMNS, load_fingerjoint, read_manifest
from jsnsynth.synth.xray import intensity_to_attenuation


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
    assert np.all(layers.upper[~arrays["upper"]] == 0) and np.all(layers.lower[~arrays["lower"]] == 0)
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
    (tmp_path / "manifest.csv").write_text("series,image\n")
    with pytest.raises(InputError, match="missing column"):
        read_manifest(tmp_path)


def test_real_crops_load(fingerjoints_dir: Path) -> None:
    records = read_manifest(fingerjoints_dir)
    assert len(records) > 1000
    for record in records[:: len(records) // 5]:
        layers = load_fingerjoint(record)
        assert layers.shape == (256, 256)
        assert layers.upper_mask.any() and layers.lower_mask.any()
        x, y = layers.joint_center_xy
        assert 0 < x < 256 and 0 < y < 256
