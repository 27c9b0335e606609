"""Sources of joint layers (contract 2): protocol, phantom, finger-joint folders, clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from jsnsynth.cli import main
from jsnsynth.errors import InputError
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.io import check_measurable_size, encode_png, read_mask, write_bytes_atomic
from jsnsynth.synth.layers import JointLayers
from jsnsynth.synth.pairs import PairConfig
from jsnsynth.synth.sources import FingerJointsSource, JointSource, PhantomSource, open_source

MANIFEST_HEADER = ["series", "series_id", "side", "joint_code", "image", "mask_upper", "mask_lower", "soft_tissue"]


def _synthetic_crop(size: int, gap_px: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A smooth joint crop: (image, soft image, upper mask, lower mask), 8-bit-like intensities."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float64)
    c = size / 2 + rng.uniform(-2, 2)
    head = size * 0.45
    radius = size * 0.2
    dist = np.where(y < head, np.abs(x - c), np.hypot(x - c, y - head))
    upper_mask = dist < radius
    lower_mask = (y > head + radius + gap_px) & (np.abs(x - c) < radius * 1.1)
    soft_att = 0.25 + 0.1 * np.exp(-((x - c) / (size * 0.4)) ** 2)
    bone_att = 0.5 * upper_mask + 0.45 * lower_mask
    image = 1 - np.exp(-(soft_att + bone_att))
    soft = 1 - np.exp(-soft_att)
    return image, soft, upper_mask, lower_mask


def make_fingerjoint_folder(root: Path, n_series: int = 5, visits: int = 2, size: int = 64) -> Path:
    """Write a tiny folder in the finger-joint format (PNG images) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_series):
        series = f"{s:05d}_L_{2 + s % 3}"
        for v in range(visits):
            image, soft, upper, lower = _synthetic_crop(size, 3.0 + v, seed=10 * s + v)
            stem = f"{series}/visit{v}"
            write_bytes_atomic(root / f"{stem}.png", encode_png(np.rint(image * 255).astype(np.uint8)))
            write_bytes_atomic(root / f"{stem}_soft.png", encode_png(np.rint(soft * 255).astype(np.uint8)))
            write_bytes_atomic(root / f"{stem}_mask_upper.png", encode_png(upper.astype(np.uint8) * 255))
            write_bytes_atomic(root / f"{stem}_mask_lower.png", encode_png(lower.astype(np.uint8) * 255))
            rows.append([series, f"{s:05d}", "L", str(2 + s % 3), f"{stem}.png", f"{stem}_mask_upper.png",
                         f"{stem}_mask_lower.png", f"{stem}_soft.png"])
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_HEADER)
        writer.writerows(rows)
    return root


def test_fingerjoints_source_groups_visits_by_series(tmp_path: Path) -> None:
    source = FingerJointsSource(make_fingerjoint_folder(tmp_path / "fj", n_series=3, visits=2))
    assert isinstance(source, JointSource)
    assert source.exact_pose_rendering is False
    assert source.joint_ids() == ["00000_L_2", "00001_L_3", "00002_L_4"]
    seen = set()
    for seed in range(12):
        layers = source.load("00001_L_3", np.random.default_rng(seed))
        assert isinstance(layers, JointLayers) and layers.shape == (64, 64)
        assert layers.metadata["joint_id"] == "00001_L_3" and layers.metadata["source"] == "fingerjoints"
        seen.add(layers.metadata["image"])
    assert seen == {"visit0.png", "visit1.png"}  # the rng picks among the series' visits
    assert source.describe()["n_images"] == 6


def test_open_source_spellings(tmp_path: Path) -> None:
    folder = make_fingerjoint_folder(tmp_path / "fj", n_series=1, visits=1)
    assert isinstance(open_source(f"fingerjoints:{folder}"), FingerJointsSource)
    assert isinstance(open_source("phantom", n_joints=3), PhantomSource)
    assert len(open_source("phantom", n_joints=3).joint_ids()) == 3
    for bad in ("phantoms", "fingerjoints", "phantom:x", "lsn"):
        with pytest.raises(InputError):
            open_source(bad)


def test_empty_and_missing_folders_and_joints_without_masks(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        FingerJointsSource(tmp_path / "empty")
    with pytest.raises(InputError, match="no such"):
        FingerJointsSource(tmp_path / "absent")
    folder = make_fingerjoint_folder(tmp_path / "fj", n_series=2, visits=1)
    (folder / "00001_L_3" / "visit0_mask_lower.png").unlink()
    with pytest.raises(InputError, match="00001_L_3/visit0 has no lower-bone mask"):
        FingerJointsSource(folder)


def test_phantom_source_follows_the_protocol() -> None:
    source = PhantomSource(n_joints=2, size_px=64)
    assert isinstance(source, JointSource) and source.exact_pose_rendering is True
    layers = source.load(source.joint_ids()[0], np.random.default_rng(3))
    assert layers.shape == (64, 64)
    assert layers.metadata["source"] == "phantom" and "phantom_params" in layers.metadata
    again = source.load(source.joint_ids()[0], np.random.default_rng(3))
    assert np.array_equal(layers.upper, again.upper)  # anatomy drawn from the rng only
    same = source.render_with_poses(layers, None, None, None)
    assert np.allclose(same.upper, layers.upper) and same.joint_center_xy == layers.joint_center_xy
    moved = source.render_with_poses(layers, Similarity(1, 0, 0, 1.5, *layers.joint_center_xy), None, None)
    assert not np.allclose(moved.upper, layers.upper) and np.array_equal(moved.lower, layers.lower)


def test_real_data_source(fingerjoints_dir: Path) -> None:
    with pytest.warns(UserWarning, match="left out"):
        source = FingerJointsSource(fingerjoints_dir)
    ids = source.joint_ids()
    # Images whose masks cannot be a joint, or overlap so much that the layers would be wrong,
    # are left out (about a quarter at the default 200 px); every series keeps a visit.
    assert source.describe()["n_images"] + len(source.excluded) == 1120
    assert 0 < len(source.excluded) < 1120 // 2 and len(ids) > 250
    layers = source.load(ids[0], np.random.default_rng(0))
    assert layers.shape == (256, 256) and layers.upper_mask.any() and layers.lower_mask.any()


@pytest.mark.parametrize(
    "spec, message",
    [("nonsense", "--source 'nonsense': give phantom, fingerjoints:DIR or lsn:DIR"), ("fingerjoints:{empty}", "empty"), ("fingerjoints:{nomask}", "has no upper-bone mask"),
     ("fingerjoints:{nomask}", "crops without one can be layered by the LSN: --source lsn:DIR"),
     ("fingerjoints:{absent}", "no such"), ("lsn:{absent}", "no such")],
)
def test_bad_sources_give_one_line_cli_errors(tmp_path: Path, capsys, spec: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    nomask = make_fingerjoint_folder(tmp_path / "nomask", n_series=1, visits=1)
    (nomask / "00000_L_2" / "visit0_mask_upper.png").unlink()
    spec = spec.format(empty=tmp_path / "empty", nomask=nomask, absent=tmp_path / "absent")
    rc = main(["dataset", "--source", spec, "--pairs", "2", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == (2 if spec == "nonsense" else 1)  # a misspelt source is a usage error
    assert err.startswith("jsnsynth: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written for a bad source


def test_images_whose_masks_are_not_a_joint_are_left_out_and_listed(tmp_path: Path) -> None:
    root = make_fingerjoint_folder(tmp_path / "fj", n_series=3, visits=2)
    # Swap the masks of one visit: its "lower" bone now lies above its "upper" one.
    upper_path = root / "00001_L_3/visit0_mask_upper.png"
    lower_path = root / "00001_L_3/visit0_mask_lower.png"
    upper_bytes, lower_bytes = upper_path.read_bytes(), lower_path.read_bytes()
    upper_path.write_bytes(lower_bytes)
    lower_path.write_bytes(upper_bytes)
    with pytest.warns(UserWarning, match="1 image"):
        source = FingerJointsSource(root)
    assert list(source.excluded) == ["00001_L_3/visit0"]
    assert "lies below the lower-bone mask" in source.excluded["00001_L_3/visit0"]
    assert [r.name for r in source.visits("00001_L_3")] == ["00001_L_3/visit1"]
    assert source.describe()["excluded_images"] == source.excluded


def test_a_mask_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    """The lower mask was checked against the upper one's size: a wrong-sized upper mask was
    reported as the lower mask's fault, with the upper mask's size given as the image's."""
    root = make_fingerjoint_folder(tmp_path / "fj", n_series=2, visits=2)
    upper_path = root / "00001_L_3/visit0_mask_upper.png"
    upper = read_mask(upper_path)
    write_bytes_atomic(upper_path, encode_png(upper[: upper.shape[0] // 2, : upper.shape[1] // 2].astype(np.uint8) * 255))
    with pytest.warns(UserWarning, match="1 image"):
        source = FingerJointsSource(root)
    height, width = upper.shape
    assert source.excluded["00001_L_3/visit0"] == (
        f"{upper_path}: mask is {width // 2}x{height // 2}, image is {width}x{height}")


def test_a_damaged_radiograph_is_an_error_not_a_mask_problem(tmp_path: Path) -> None:
    """Read with the masks' checks, a damaged image was left out as 'unusable bone masks'."""
    root = make_fingerjoint_folder(tmp_path / "fj", n_series=2, visits=2)
    image = root / "00001_L_3" / "visit0.png"
    image.write_bytes(b"not a png")
    with pytest.raises(InputError, match=str(image.name)):
        FingerJointsSource(root)



def test_a_crop_too_small_or_a_soft_tissue_image_of_another_size_is_an_error_up_front(tmp_path: Path) -> None:
    """A 10x10 crop (image, masks and soft tissue) made pairs labelled with JSNs of -1.7 to
    +2.8 px that the quantifier refuses to measure; a soft-tissue image of another size was an
    error only once shards had been written."""
    root = make_fingerjoint_folder(tmp_path / "fj", n_series=2, visits=2)
    stem = root / "00001_L_3" / "visit0"
    for suffix in (".png", "_soft.png", "_mask_upper.png", "_mask_lower.png"):
        path = stem.with_name(stem.name + suffix)
        write_bytes_atomic(path, encode_png(cv2.resize(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), (10, 10), interpolation=cv2.INTER_NEAREST)))
    with pytest.raises(InputError, match=r"visit0.png: crop is 10x10 px; the quantifier measures pairs of at least 32x32"):
        FingerJointsSource(root)
    root = make_fingerjoint_folder(tmp_path / "fj2", n_series=2, visits=2)
    soft = root / "00001_L_3" / "visit1_soft.png"
    write_bytes_atomic(soft, encode_png(np.zeros((48, 64), np.uint8)))
    with pytest.raises(InputError, match=r"visit1_soft.png: soft-tissue image is 64x48 px, radiograph is 64x64"):
        FingerJointsSource(root)


def test_a_crop_larger_than_the_quantifier_measures_is_refused() -> None:
    check_measurable_size((64, 4096), "edge.png")
    with pytest.raises(InputError, match=r"whole.png: crop is 4097x64 px; the quantifier measures joint crops of at most 4096"):
        check_measurable_size((64, 4097), "whole.png")


def test_a_phantom_too_small_to_frame_a_joint_is_refused_up_front() -> None:
    # 64 px at 0.02 mm/px (1.3 mm): half the draws failed at their first pair, "upper-bone mask is empty"
    with pytest.raises(InputError, match="frames 1.3 mm, too little of a joint"):
        PhantomSource(n_joints=2, size_px=64, pixel_spacing_mm=0.02)
    PhantomSource(n_joints=2, size_px=64, pixel_spacing_mm=0.05)


def test_crops_of_other_sizes_share_a_dataset_layers_included(tmp_path: Path) -> None:
    """The layers config stored a shard's layers only at one width: a folder of crops of two sizes
    stopped a default build ('layers of one shard must share their image width'), and the run,
    resumed, stopped there again (an outside probe)."""
    import shutil

    import pyarrow.parquet as pq

    from jsnsynth.synth.dataset import build_dataset

    small = make_fingerjoint_folder(tmp_path / "small", n_series=2, visits=1, size=64)
    large = make_fingerjoint_folder(tmp_path / "large", n_series=2, visits=1, size=96)
    with open(large / "manifest.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    renamed = [[cell.replace("00000_", "10000_").replace("00001_", "10001_") for cell in row] for row in rows]
    for old, new in ((rows[0][0], renamed[0][0]), (rows[1][0], renamed[1][0])):
        shutil.copytree(large / old, small / new)
    with open(small / "manifest.csv", "a", newline="") as handle:
        csv.writer(handle).writerows(renamed)
    result = build_dataset(FingerJointsSource(small), tmp_path / "ds", 8, seed=2, layers_every=1, shard_size=8,
                           split_fractions=(1.0, 0.0, 0.0), quiet=True, pair_config=PairConfig(noise=False))
    assert result.n_pairs == 8
    layers = pq.read_table(sorted((tmp_path / "ds" / "layers").glob("*.parquet"))[0]).to_pylist()
    sizes = {(len(row["soft"]), len(row["soft"][0])) for row in layers}
    assert sizes == {(64, 64), (96, 96)}
    for row in layers:
        assert all(len(line) == len(row["soft"][0]) for line in row["upper"])
