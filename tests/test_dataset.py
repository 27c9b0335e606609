"""Dataset builder: layout, determinism across workers, resume, load_dataset round trip, errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from jsnsynth.cli import main
from jsnsynth.errors import InputError, OutputError
from jsnsynth.synth.dataset import (
    PAIRS_DIR,
    SCHEMA_VERSION,
    STATE_NAME,
    UNFINISHED_DIR,
    DatasetConfig,
    build_dataset,
    check_dataset_folder,
    features_dict,
    features_yaml,
    iter_pairs,
    layer_columns,
    layer_features,
    layer_pairs,
    pair_columns,
    pair_features,
    pair_params_from_row,
    plan_dataset,
    simulate_pair,
)
from jsnsynth.synth.io import decode_png, encode_png, write_bytes_atomic
from jsnsynth.synth.pairs import PairConfig, make_pair, sample_pair_params
from jsnsynth.synth.xray import ImagingRanges, quantize
from jsnsynth.synth.sources import FingerJointsSource, PhantomSource
from test_sources import make_fingerjoint_folder

CONTRACT_COLUMNS = [
    "pair_id", "source", "joint_id", "split", "baseline", "followup", "baseline_clean", "followup_clean",
    "baseline_upper_mask", "baseline_lower_mask", "followup_upper_mask", "followup_lower_mask",
    "pixel_spacing_mm", "jsn_px", "jsn_mm", "joint_center_x", "joint_center_y", "joint_axis_deg",
    "upper_scale", "upper_angle_deg", "upper_dx", "upper_dy", "lower_scale", "lower_angle_deg", "lower_dx", "lower_dy",
] + [f"{role}_{name}" for role in ("baseline", "followup") for name in (
    "blur_sigma_px", "photons_per_px", "electronic_noise", "window_low", "window_high", "gamma", "noise_seed")]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def raster_source(tmp_path_factory) -> FingerJointsSource:
    return FingerJointsSource(make_fingerjoint_folder(tmp_path_factory.mktemp("fj") / "fj", n_series=6, visits=2))


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "phantom"
    build_dataset(PhantomSource(n_joints=8, size_px=64), out, 8, seed=4, shard_size=3, quiet=True)
    return out


def test_plain_column_lists_match_the_hf_features() -> None:
    # the builder writes features from plain lists (no `datasets` import): they must be HF's
    from datasets import DatasetInfo

    for columns, features in ((pair_columns(), pair_features()), (layer_columns(), layer_features())):
        assert features_dict(columns) == features.to_dict()
        assert features_yaml(columns) == DatasetInfo(features=features)._to_yaml_dict()["features"]


def test_layer_pairs_start_every_shard() -> None:
    plan = plan_dataset([f"j{i}" for i in range(30)], DatasetConfig(45, seed=1, shard_size=7))
    chosen = layer_pairs(plan, 3)
    for shard in plan.shards:
        assert shard.indices[0] in chosen  # every shard has layer rows
        assert chosen & set(shard.indices) == set(shard.indices[::3])
    assert layer_pairs(plan, 0) == frozenset()
    assert layer_pairs(plan, 1) == frozenset(range(45))


def test_layout_card_and_columns(phantom_dataset: Path) -> None:
    files = sorted(str(p.relative_to(phantom_dataset)) for p in phantom_dataset.rglob("*") if p.is_file())
    assert "README.md" in files and STATE_NAME in files
    shards = [f for f in files if f.startswith("data/")]
    assert shards and all(f.endswith(".parquet") and "-of-" in f for f in shards)
    assert any(f.startswith("layers/") for f in files)
    assert not any(f.endswith(".part") for f in files)
    card = (phantom_dataset / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] and "task_categories" in front and "jsnsynth" in front["tags"]
    assert {c["config_name"] for c in front["configs"]} == {"pairs", "layers"}
    assert {i["config_name"] for i in front["dataset_info"]} == {"pairs", "layers"}
    assert '"seed": 4' in card and "generator_version" in card and "Analytic physics phantoms" in card
    assert 'load_dataset("path/or/repo", "layers")' in card
    assert list(pair_features())[: len(CONTRACT_COLUMNS)] != []  # features exist
    assert set(CONTRACT_COLUMNS) <= set(pair_features())
    state = check_dataset_folder(phantom_dataset)
    assert state["complete"] and state["config"]["n_pairs"] == 8


def test_the_card_states_what_the_dataset_holds(raster_source: FingerJointsSource, tmp_path: Path) -> None:
    """The card counted every source joint the plan gave a split (240 'joints' for 9 pairs),
    named the source folder by its full local path, left out the phantom's size and spacing when
    they were the defaults, and listed the mm range beside the --jsn-px range that replaced it."""
    import re

    build_dataset(raster_source, tmp_path / "real", 3, seed=2, shard_size=2, layers_every=0, quiet=True,
                  pair_config=PairConfig(jsn_px=(-1.0, 1.0)))
    card = (tmp_path / "real" / "README.md").read_text()
    rows = list(iter_pairs(tmp_path / "real"))
    for split in ("train", "validation", "test"):
        joints = {row["joint_id"] for row in rows if row["split"] == split}
        pairs = sum(row["split"] == split for row in rows)
        assert f"| {split} | {pairs} | {len(joints)} |" in card
    assert str(raster_source.root) not in card and f'"root": "{raster_source.root.name}"' in card
    assert re.search(r'"jsn_mm": null', card) and re.search(r'"jsn_px": \[\s*-1.0,\s*1.0\s*\]', card)
    assert "photon count log-uniformly" in card
    # the local run record keeps the path (it tells one run's folder from another's)
    assert json.loads((tmp_path / "real" / STATE_NAME).read_text())["source_description"]["root"] == str(raster_source.root)
    build_dataset(PhantomSource(n_joints=2), tmp_path / "phantom", 2, seed=2, layers_every=0, quiet=True)
    card = (tmp_path / "phantom" / "README.md").read_text()
    assert '"size_px": 256' in card and '"pixel_spacing_mm": 0.175' in card
    # written without layers, its card must not show how to load them (the config does not exist)
    assert 'load_dataset("path/or/repo", "layers")' not in card and "no `layers` config" in card


def test_a_pair_is_replayed_from_its_row(phantom_dataset: Path) -> None:
    """dataset.md: every random quantity of a pair is a column, so a pair can be made again. The
    row's parameters with the joint's layers make the same images, bit for bit."""
    source = PhantomSource(n_joints=8, size_px=64)
    for row in list(iter_pairs(phantom_dataset))[:2]:
        replayed = simulate_pair(source, row["joint_id"], row["index"], 4, PairConfig())
        params = pair_params_from_row(row)
        assert params == replayed.params
        pair = make_pair(replayed.baseline_layers, params, source.render_with_poses)
        for name in ("baseline", "followup", "baseline_clean", "followup_clean"):
            assert np.array_equal(quantize(getattr(pair, name), 16), row[name])
    with pytest.raises(InputError, match="lacks jsn_px, jsn_mm, upper_flexion_deg, ...: not a jsnsynth pairs row"):
        pair_params_from_row({"image": 1})
    # a row of schema 1, before the motion blur's columns, is a pair without motion
    schema_1 = {key: value for key, value in row.items() if "motion" not in key}
    assert pair_params_from_row(schema_1) == pair_params_from_row(row)


def test_a_pair_that_comes_out_blank_is_refused_naming_its_joint(tmp_path: Path) -> None:
    # display windows above every intensity of the joint: all black, a pair no method could
    # measure, was written with its exact truth
    from jsnsynth.synth.xray import ImagingRanges

    config = PairConfig(imaging=ImagingRanges(window_low=(0.97, 0.97), window_high=(0.99, 0.99)), noise=False)
    with pytest.raises(InputError, match=r"joint phantom-000000: pair 0's baseline comes out all black through its "
                                         r"display window 0.970-0.990 \(the joint's intensities span"):
        build_dataset(PhantomSource(n_joints=1, size_px=64), tmp_path / "ds", 1, seed=1, layers_every=0, quiet=True,
                      split_fractions=(1.0, 0.0, 0.0), pair_config=config)
    assert not (tmp_path / "ds" / "data").exists()


def test_load_dataset_round_trip_keeps_16_bit_pixels(phantom_dataset: Path, monkeypatch, tmp_path: Path) -> None:
    from datasets import load_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = {r["pair_id"]: r for r in iter_pairs(phantom_dataset)}
    pairs = load_dataset(str(phantom_dataset), cache_dir=str(tmp_path / "cache"))
    loaded = [r for split in pairs.values() for r in split]
    assert len(loaded) == 8 and {r["pair_id"] for r in loaded} == set(rows)
    for row in loaded:
        stored = rows[row["pair_id"]]
        for name in ("baseline", "followup", "baseline_clean", "followup_clean"):
            pixels = np.array(row[name])
            assert pixels.dtype == np.uint16 and np.array_equal(pixels, stored[name])
        assert np.array(row["baseline"]).max() > 255 and len(np.unique(np.array(row["baseline"]))) > 256
        assert set(np.unique(np.array(row["followup_upper_mask"]))) <= {0, 255}
        assert row["jsn_mm"] == pytest.approx(row["jsn_px"] * row["pixel_spacing_mm"])
    layers = load_dataset(str(phantom_dataset), "layers", cache_dir=str(tmp_path / "cache"))
    sample = layers["train"].with_format("numpy")[0]
    assert sample["upper"].dtype == np.float32 and sample["upper"].shape == (64, 64)
    assert sample["role"] in ("baseline", "followup")


def test_load_dataset_gives_the_latest_run_written_under_a_folder_name(monkeypatch, tmp_path: Path) -> None:
    """``load_dataset`` keys its cache of a local folder on the folder's name and the card: with
    features alone on the card, a second run written under the same name (another seed, other
    pairs) loaded as the first run's pairs and truth. The card now states the shards' sizes."""
    from datasets import load_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cache = str(tmp_path / "cache")
    for seed, n_pairs in ((1, 6), (2, 6)):
        out = tmp_path / f"run{seed}" / "ds"
        build_dataset(PhantomSource(n_joints=4, size_px=64), out, n_pairs, seed=seed, shard_size=4, quiet=True)
        stored = sorted((r["pair_id"], r["jsn_px"]) for r in iter_pairs(out))
        loaded = load_dataset(str(out), cache_dir=cache)
        assert sorted((r["pair_id"], r["jsn_px"]) for split in loaded.values() for r in split) == stored
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    for info in front["dataset_info"]:
        assert info["download_size"] > 0 and info["dataset_size"] == sum(s["num_bytes"] for s in info["splits"])
    pairs_info = next(i for i in front["dataset_info"] if i["config_name"] == "pairs")
    assert sum(s["num_examples"] for s in pairs_info["splits"]) == 6


def test_splits_group_joints(raster_source: FingerJointsSource, tmp_path: Path) -> None:
    build_dataset(raster_source, tmp_path / "ds", 24, seed=1, shard_size=5, split_fractions=(0.5, 0.25, 0.25), quiet=True)
    rows = list(iter_pairs(tmp_path / "ds"))
    assert len(rows) == 24
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["joint_id"], row["split"]) == row["split"]
    assert set(split_of.values()) == {"train", "validation", "test"}
    plan = plan_dataset(raster_source.joint_ids(), DatasetConfig(24, seed=1, split_fractions=(0.5, 0.25, 0.25)))
    assert plan == plan_dataset(raster_source.joint_ids(), DatasetConfig(24, seed=1, split_fractions=(0.5, 0.25, 0.25)))


def test_same_bytes_for_one_and_two_processes(raster_source: FingerJointsSource, tmp_path: Path) -> None:
    build_dataset(raster_source, tmp_path / "one", 10, seed=7, num_proc=1, shard_size=3, quiet=True)
    build_dataset(raster_source, tmp_path / "two", 10, seed=7, num_proc=2, shard_size=3, quiet=True)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
    other = tmp_path / "other"
    build_dataset(raster_source, other, 10, seed=8, num_proc=1, shard_size=3, quiet=True)
    assert _digest(tmp_path / "one") != _digest(other)


def test_same_bytes_whatever_threads_the_calling_process_allows(raster_source: FingerJointsSource, tmp_path: Path) -> None:
    """Made in-process with OpenCV and BLAS free to use several threads (a user's shell, unlike
    these tests' OMP_NUM_THREADS=1), pairs differed from the workers' by one grey level in
    hundreds of pixels: multi-threaded kernels sum in another order."""
    import cv2
    from threadpoolctl import threadpool_limits

    build_dataset(raster_source, tmp_path / "one", 6, seed=7, num_proc=1, shard_size=3, quiet=True)
    before = cv2.getNumThreads()
    cv2.setNumThreads(4)
    try:
        with threadpool_limits(limits=4):
            build_dataset(raster_source, tmp_path / "threads", 6, seed=7, num_proc=1, shard_size=3, quiet=True)
        assert cv2.getNumThreads() == 4  # the caller's setting is given back
    finally:
        cv2.setNumThreads(before)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "threads")


def test_interrupted_then_resumed_equals_uninterrupted(raster_source: FingerJointsSource, tmp_path: Path) -> None:
    from datasets import load_dataset

    build_dataset(raster_source, tmp_path / "whole", 10, seed=3, shard_size=2, quiet=True)

    class Interrupt(Exception):
        pass

    written = []

    def stop_after_two(name: str) -> None:
        written.append(name)
        if len(written) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_dataset(raster_source, tmp_path / "resumed", 10, seed=3, shard_size=2, quiet=True, on_shard_written=stop_after_two)
    state = json.loads((tmp_path / "resumed" / STATE_NAME).read_text())
    assert not state["complete"] and len(state["completed_shards"]) == 2
    assert not (tmp_path / "resumed" / "README.md").exists()
    with pytest.raises(InputError, match="unfinished"):
        check_dataset_folder(tmp_path / "resumed")
    # nothing a loader could take for the dataset: the finished shards wait in a hidden folder,
    # and HF's loader once loaded the two shards of the interrupted run as a dataset of 4 pairs
    assert not (tmp_path / "resumed" / "data").exists() and not (tmp_path / "resumed" / "layers").exists()
    with pytest.raises(Exception, match="doesn't contain any data files"):
        load_dataset(str(tmp_path / "resumed"), cache_dir=str(tmp_path / "hf_cache"))
    # a half-written shard left by a kill is a *.part file: it must be cleaned up on resume
    (tmp_path / "resumed" / UNFINISHED_DIR / "data" / ".train-00009-of-00009.parquet.abc.part").write_bytes(b"half")
    result = build_dataset(raster_source, tmp_path / "resumed", 10, seed=3, shard_size=2, quiet=True)
    assert result.resumed_shards == 2
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "resumed")
    # running the finished command again changes nothing
    build_dataset(raster_source, tmp_path / "resumed", 10, seed=3, shard_size=2, quiet=True)
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "resumed")


def test_run_stopped_while_moving_its_shards_into_place_resumes(raster_source: FingerJointsSource, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    build_dataset(raster_source, tmp_path / "whole", 8, seed=3, shard_size=2, quiet=True)
    from datasets import load_dataset

    real_replace = os.replace

    def replace_but_not_layers(source, target) -> None:  # the pairs folder goes in, then the run dies
        if Path(target) == tmp_path / "stopped" / "layers":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_but_not_layers)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(raster_source, tmp_path / "stopped", 8, seed=3, shard_size=2, quiet=True)
    monkeypatch.undo()
    assert (tmp_path / "stopped" / "data").is_dir() and not (tmp_path / "stopped" / "layers").exists()
    with pytest.raises(InputError, match="unfinished"):
        check_dataset_folder(tmp_path / "stopped")
    # what a loader finds meanwhile is every pair (with layers/ moved first, it took the layers
    # rows for the dataset)
    loaded = load_dataset(str(tmp_path / "stopped"), cache_dir=str(tmp_path / "hf_cache"))
    assert sum(split.num_rows for split in loaded.values()) == 8 and "jsn_px" in loaded["train"].column_names
    # one layers shard already in place, the rest still waiting: the resumed run finishes the move
    staged = sorted((tmp_path / "stopped" / UNFINISHED_DIR / "layers").glob("*.parquet"))
    (tmp_path / "stopped" / "layers").mkdir()
    os.replace(staged[0], tmp_path / "stopped" / "layers" / staged[0].name)
    result = build_dataset(raster_source, tmp_path / "stopped", 8, seed=3, shard_size=2, quiet=True)
    assert result.resumed_shards == result.shards
    assert not (tmp_path / "stopped" / UNFINISHED_DIR).exists()
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "stopped")


def test_a_run_of_the_previous_record_format_resumes(tmp_path: Path) -> None:
    """The run record gained the phantom's size and spacing, and a null jsn_mm where jsn_px
    replaced it: an interrupted run whose record lacked them was refused as 'made with other
    parameters'."""
    config = PairConfig(jsn_px=(-1.0, 1.0))
    build_dataset(PhantomSource(n_joints=4, size_px=64), tmp_path / "whole", 4, seed=1, shard_size=1, layers_every=0,
                  quiet=True, pair_config=config)

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(PhantomSource(n_joints=4, size_px=64), tmp_path / "old", 4, seed=1, shard_size=1, layers_every=0,
                      quiet=True, pair_config=config, on_shard_written=stop)
    state_path = tmp_path / "old" / STATE_NAME
    state = json.loads(state_path.read_text())
    del state["source_description"]["size_px"], state["source_description"]["pixel_spacing_mm"]
    state["config"]["pair"]["jsn_mm"] = [-0.5, 0.5]  # as the earlier records kept it
    state_path.write_text(json.dumps(state))
    result = build_dataset(PhantomSource(n_joints=4, size_px=64), tmp_path / "old", 4, seed=1, shard_size=1,
                           layers_every=0, quiet=True, pair_config=config)
    assert result.resumed_shards == 1
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "old")
    # a real change of the options is still another dataset
    with pytest.raises(OutputError, match="other parameters"):
        build_dataset(PhantomSource(n_joints=4, size_px=64), tmp_path / "old", 4, seed=2, shard_size=1,
                      layers_every=0, quiet=True, pair_config=config)


def test_a_phantom_option_given_at_its_default_resumes_the_run_begun_without_it(tmp_path: Path) -> None:
    """``--size 256 --pixel-spacing 0.175`` draw the pairs that neither option draws, so each
    resumes a run begun the other way (they were refused: '--size default, now 256'); the card
    and the record state the options of the run that finished."""

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    plain, stated = PhantomSource(n_joints=3), PhantomSource(n_joints=3, size_px=256, pixel_spacing_mm=0.175)
    build_dataset(plain, tmp_path / "whole", 3, seed=1, shard_size=1, layers_every=0, quiet=True)
    for begun, resumed, name in ((plain, stated, "a"), (stated, plain, "b")):
        with pytest.raises(KeyboardInterrupt):
            build_dataset(begun, tmp_path / name, 3, seed=1, shard_size=1, layers_every=0, quiet=True,
                          on_shard_written=stop)
        result = build_dataset(resumed, tmp_path / name, 3, seed=1, shard_size=1, layers_every=0, quiet=True)
        assert result.resumed_shards == 1
        assert _digest(tmp_path / "whole" / PAIRS_DIR) == _digest(tmp_path / name / PAIRS_DIR)
    with pytest.raises(OutputError, match=r"other parameters \(--size 256 \(the default\), now 128\)"):
        build_dataset(PhantomSource(n_joints=3, size_px=128), tmp_path / "whole", 3, seed=1, shard_size=1,
                      layers_every=0, quiet=True)


def test_a_folder_of_another_run_names_what_differs(tmp_path: Path, raster_source: FingerJointsSource) -> None:
    """Rerun into the folder of another run, the refusal names the options that differ, and for
    an unfinished run says that its own command resumes it. Another source is named as such,
    not by what follows from it (its citation came first)."""

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    source = PhantomSource(n_joints=4, size_px=64)
    build_dataset(source, tmp_path / "done", 2, seed=1, layers_every=0, quiet=True)
    # by the options that differ, with their values (it named the record's entries, config.seed)
    with pytest.raises(OutputError, match=r"other parameters \(--seed 1, now 2\); choose a new folder"):
        build_dataset(source, tmp_path / "done", 2, seed=2, layers_every=0, quiet=True)
    # one JSN range, as each run gave it (both options were listed, the one not given as such)
    with pytest.raises(OutputError, match=r"other parameters \(--jsn-mm -0\.5 0\.5, now --jsn-px -3 3\); choose"):
        build_dataset(source, tmp_path / "done", 2, seed=1, layers_every=0, quiet=True,
                      pair_config=PairConfig(jsn_mm=None, jsn_px=(-3.0, 3.0)))
    with pytest.raises(OutputError, match=r"other parameters \(source differs: phantom, now fingerjoints\); choose"):
        build_dataset(raster_source, tmp_path / "done", 2, seed=1, layers_every=0, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(source, tmp_path / "begun", 4, seed=1, shard_size=1, layers_every=0, quiet=True,
                      on_shard_written=stop)
    with pytest.raises(OutputError, match=r"\(--motion-blur-px2 0 0, now 1 2\); rerun the command it "
                                          r"was begun with to resume it"):
        build_dataset(source, tmp_path / "begun", 4, seed=1, shard_size=1, layers_every=0, quiet=True,
                      pair_config=PairConfig(imaging=ImagingRanges(motion_blur_px2=(1.0, 2.0))))
    # what no option sets (only the Python API), by the record's entry
    with pytest.raises(OutputError, match=r"\(config\.pair\.imaging\.gamma differs\); rerun"):
        build_dataset(source, tmp_path / "begun", 4, seed=1, shard_size=1, layers_every=0, quiet=True,
                      pair_config=PairConfig(imaging=ImagingRanges(gamma=(0.9, 1.1))))


def test_an_interrupted_run_of_an_earlier_schema_is_not_resumed(tmp_path: Path) -> None:
    """A run begun by a jsnsynth writing schema 1 (no motion columns): its shards have other
    columns, so a resume would mix them; it is refused, naming the schemas."""

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(PhantomSource(n_joints=4, size_px=64), tmp_path / "old", 4, seed=1, shard_size=1, layers_every=0,
                      quiet=True, on_shard_written=stop)
    state_path = tmp_path / "old" / STATE_NAME
    state = json.loads(state_path.read_text())
    state["schema_version"] = 1
    del state["config"]["pair"]["imaging"]["motion_blur_px2"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(OutputError, match=f"holds a run of dataset schema 1 \\(this jsnsynth writes schema {SCHEMA_VERSION}"):
        build_dataset(PhantomSource(n_joints=4, size_px=64), tmp_path / "old", 4, seed=1, shard_size=1, layers_every=0,
                      quiet=True)


def test_resuming_on_changed_source_files_is_refused(tmp_path: Path) -> None:
    """An interrupted run resumed after the source folder's crops were replaced mixed the old
    and the new layers in one dataset, without a word."""
    root = make_fingerjoint_folder(tmp_path / "fj", n_series=4, visits=2)

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(FingerJointsSource(root), tmp_path / "run", 6, seed=1, shard_size=1, layers_every=0,
                      quiet=True, on_shard_written=stop)
    crop = root / "00002_L_4" / "visit1.png"
    original = crop.read_bytes()
    write_bytes_atomic(crop, encode_png(np.ascontiguousarray(decode_png(original)[:, ::-1])))
    with pytest.raises(OutputError, match="begun on other source files"):
        build_dataset(FingerJointsSource(root), tmp_path / "run", 6, seed=1, shard_size=1, layers_every=0, quiet=True)
    crop.write_bytes(original)
    result = build_dataset(FingerJointsSource(root), tmp_path / "run", 6, seed=1, shard_size=1, layers_every=0, quiet=True)
    assert result.resumed_shards == 1
    write_bytes_atomic(crop, encode_png(np.ascontiguousarray(decode_png(original)[:, ::-1])))
    with pytest.raises(OutputError, match="holds a dataset made from other source files"):  # finished: nothing to resume
        build_dataset(FingerJointsSource(root), tmp_path / "run", 6, seed=1, shard_size=1, layers_every=0, quiet=True)
    crop.write_bytes(original)
    # a run recorded before the files were digested resumes on its parameters alone
    build_dataset(FingerJointsSource(root), tmp_path / "whole", 6, seed=1, shard_size=1, layers_every=0, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(FingerJointsSource(root), tmp_path / "old", 6, seed=1, shard_size=1, layers_every=0,
                      quiet=True, on_shard_written=stop)
    state_path = tmp_path / "old" / STATE_NAME
    state = json.loads(state_path.read_text())
    del state["source_digest"]
    state_path.write_text(json.dumps(state))
    build_dataset(FingerJointsSource(root), tmp_path / "old", 6, seed=1, shard_size=1, layers_every=0, quiet=True)
    assert _digest(tmp_path / "whole") == _digest(tmp_path / "old")


class DoubtfulJointsSource(FingerJointsSource):
    """Finger joints, each warned about the first time it loads in a process (as the ``lsn``
    source warns about a crop that looks inverted)."""

    def load(self, joint_id: str, rng: np.random.Generator):
        warned = self.__dict__.setdefault("warned", set())
        if joint_id not in warned:
            warned.add(joint_id)
            warnings.warn(f"{joint_id}: looks doubtful")
        return super().load(joint_id, rng)


def test_a_sources_warning_is_shown_once_whatever_the_workers(tmp_path: Path) -> None:
    """With --num-proc N a source's warning about a joint came once per worker that loaded it,
    printed by the workers themselves."""
    root = make_fingerjoint_folder(tmp_path / "fj", n_series=3, visits=2)
    for num_proc in (1, 2):
        source = DoubtfulJointsSource(root)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_dataset(source, tmp_path / f"run{num_proc}", 12, seed=1, num_proc=num_proc, shard_size=2,
                          layers_every=0, quiet=True)
        doubtful = sorted(str(w.message) for w in caught if "looks doubtful" in str(w.message))
        assert doubtful == sorted(f"{joint}: looks doubtful" for joint in source.joint_ids()), num_proc


class FailingJointSource(DoubtfulJointsSource):
    """Doubtful joints, of which one then fails to load."""

    def load(self, joint_id: str, rng: np.random.Generator):
        layers = super().load(joint_id, rng)
        if joint_id == self.joint_ids()[-1]:
            raise InputError(f"{joint_id}: no bone found")
        return layers


def test_what_a_worker_said_about_a_pair_that_failed_is_shown(tmp_path: Path, capfd) -> None:
    """With the workers' warnings handed to the parent with their rows, those of a pair that then
    failed were lost: the line that explains the error."""
    source = FailingJointSource(make_fingerjoint_folder(tmp_path / "fj", n_series=3, visits=2))
    with pytest.raises(InputError, match="no bone found"):
        build_dataset(source, tmp_path / "run", 12, seed=1, num_proc=2, shard_size=2, layers_every=0, quiet=True)
    assert f"{source.joint_ids()[-1]}: looks doubtful" in capfd.readouterr().err


def test_a_run_resumes_with_its_source_folder_named_otherwise(tmp_path: Path, monkeypatch) -> None:
    """A run begun on ``fj`` and resumed on its absolute path was refused as 'made with other
    parameters': the record compared the folder as typed."""
    make_fingerjoint_folder(tmp_path / "fj", n_series=4, visits=2)
    shutil.copytree(tmp_path / "fj", tmp_path / "copy")
    monkeypatch.chdir(tmp_path)

    def stop(name: str) -> None:
        raise KeyboardInterrupt

    def build(root: Path, run: str, **options):
        return build_dataset(FingerJointsSource(root), tmp_path / run, 6, seed=1, shard_size=1, layers_every=0,
                             quiet=True, **options)

    whole = build(Path("fj"), "whole")
    for run, resumed_on in (("absolute", tmp_path / "fj"), ("copied", tmp_path / "copy")):
        with pytest.raises(KeyboardInterrupt):
            build(Path("fj"), run, on_shard_written=stop)
        assert build(resumed_on, run).resumed_shards == 1
        # the same pairs, byte for byte (the card names the folder as each command typed it)
        shards = [{name: sha for name, sha in _digest(tmp_path / folder).items() if name.endswith(".parquet")}
                  for folder in ("whole", run)]
        assert whole.resumed_shards == 0 and shards[0] and shards[0] == shards[1]
    # typed otherwise and its files changed: told as such
    with pytest.raises(KeyboardInterrupt):
        build(Path("fj"), "changed", on_shard_written=stop)
    crop = tmp_path / "copy" / "00002_L_4" / "visit1.png"
    write_bytes_atomic(crop, encode_png(np.ascontiguousarray(decode_png(crop.read_bytes())[:, ::-1])))
    with pytest.raises(OutputError, match="begun on other source files"):
        build(tmp_path / "copy", "changed")
    # a folder of other joints is another run
    make_fingerjoint_folder(tmp_path / "fj2", n_series=5, visits=2)
    with pytest.raises(OutputError, match="made with other parameters"):
        build(Path("fj2"), "absolute")


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs process groups (POSIX)")
def test_ctrl_c_stops_a_multiprocess_run_in_one_line(tmp_path: Path) -> None:
    # Ctrl-C reaches the whole process group: the workers took it too, printed their tracebacks
    # (up to 76 lines) and once left the parent waiting for good on a pool whose workers had died
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "jsnsynth.cli", "dataset", "--source", "phantom", "--pairs", "20000", "--size", "64",
               "--pixel-spacing", "0.7", "--layers-every", "0", "--num-proc", "2", "--out", str(out), "--quiet"]
    # Ctrl-C's default action in the run, whoever started the tests: a job started in the
    # background of a non-interactive shell ignores SIGINT, and a child inherits that
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list((out / UNFINISHED_DIR / "data").glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the pool is at work once a shard is written
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the workers too, whatever happened
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert err.decode().splitlines() == ["jsnsynth: interrupted; rerun the same command to resume"]  # one line


def _worker_pids(parent_pid: int) -> list[int]:
    """Pids of the spawned worker processes of ``parent_pid`` (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == parent_pid and b"spawn_main" in cmdline:
                pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc (Linux)")
def test_a_worker_killed_mid_run_stops_it_in_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    # a worker killed (by the system, out of memory) left a multiprocessing.Pool waiting for its
    # rows for ever: the run hung without a word
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "jsnsynth.cli", "dataset", "--source", "phantom", "--pairs", "600", "--size", "64",
               "--pixel-spacing", "0.7", "--layers-every", "0", "--num-proc", "2", "--shard-size", "10", "--out", str(out), "--quiet"]
    # Ctrl-C's default action in the run, whoever started the tests: a job started in the
    # background of a non-interactive shell ignores SIGINT, and a child inherits that
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list((out / UNFINISHED_DIR / "data").glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the workers are at work once a shard is written
        workers = _worker_pids(process.pid)
        assert process.poll() is None and len(workers) == 2, "the run ended before a worker could be killed"
        os.kill(workers[0], signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jsnsynth: error: a worker process stopped abruptly"), lines
    assert "rerun the same command to resume" in lines[0]
    completed = json.loads((out / STATE_NAME).read_text())["completed_shards"]
    assert completed  # kept, and taken up again
    resumed = subprocess.run(command, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert json.loads((out / STATE_NAME).read_text())["complete"]
    pair_ids = [row["pair_id"] for row in iter_pairs(out)]
    assert len(pair_ids) == len(set(pair_ids)) == 600


@pytest.mark.skipif(sys.platform == "win32", reason="folder locks are POSIX flock")
def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    # two runs started into one folder both said 'wrote 150 pairs', the files being the last one's
    from jsnsynth.synth.io import held_folder

    out = tmp_path / "ds"
    out.mkdir()

    def build(seed: int):
        return build_dataset(PhantomSource(n_joints=4, size_px=64), out, 4, seed=seed, shard_size=2, layers_every=0,
                             quiet=True)

    with held_folder(out):  # a run at work: the lock is the process's, whatever holds it
        with pytest.raises(OutputError, match="another jsnsynth run is writing to this folder"):
            build(2)
        assert not any(out.iterdir())  # nothing touched
    build(1)  # the lock went with the run that held it
    with held_folder(out):
        with pytest.raises(OutputError, match="another jsnsynth run"):
            build(1)  # even the same command: it would resume under the running one
    assert build(1).resumed_shards == 2


def test_a_source_that_workers_cannot_import_is_refused_in_one_error(tmp_path: Path) -> None:
    # a source class defined at the prompt or in a notebook: each spawned worker failed to unpickle
    # it in its start-up and printed a traceback, and multiprocessing.Pool started new workers that
    # failed alike, for ever
    script = f"""
import sys
from jsnsynth.errors import InputError
from jsnsynth.synth.dataset import build_dataset
from jsnsynth.synth.sources import PhantomSource
class MySource(PhantomSource):
    pass
try:
    build_dataset(MySource(n_joints=8, size_px=64), {str(tmp_path / "ds")!r}, 8, num_proc=2, shard_size=2,
                  layers_every=0, quiet=True)
except InputError as exc:
    print(exc)
    sys.exit(3)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 3, done.stderr.decode()
    assert done.stdout.decode().startswith("the joint source cannot be sent to a worker process (AttributeError")
    assert "define its class or function in an importable module" in done.stdout.decode()
    assert b"Traceback" not in done.stderr
    assert not (tmp_path / "ds").exists()  # nothing written: nothing left


def test_output_folder_with_other_content_or_other_run(raster_source: FingerJointsSource, tmp_path: Path, capsys) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="other files"):
        build_dataset(raster_source, busy, 2, quiet=True)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    build_dataset(raster_source, tmp_path / "ds", 3, seed=1, quiet=True)
    with pytest.raises(OutputError, match="other parameters"):
        build_dataset(raster_source, tmp_path / "ds", 3, seed=2, quiet=True)
    rc = main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(busy), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("jsnsynth: error:") and len(err.strip().splitlines()) == 1


def test_cli_builds_a_small_phantom_dataset(tmp_path: Path, capsys) -> None:
    rc = main(["dataset", "--source", "phantom", "--pairs", "3", "--out", str(tmp_path / "ds"), "--seed", "2",
               "--size", "64", "--layers-every", "0", "--jsn-px", "-3", "3", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 3 pairs" in out and "load_dataset" in out
    rows = list(iter_pairs(tmp_path / "ds"))
    assert all(-3 <= r["jsn_px"] <= 3 and r["baseline"].shape == (64, 64) for r in rows)
    assert not (tmp_path / "ds" / "layers").exists()


def test_cli_sets_the_photon_counts(tmp_path: Path, capsys) -> None:
    """The noise level of a dataset could only be set from Python (the benchmark's ImagingRanges)."""
    rc = main(["dataset", "--source", "phantom", "--pairs", "3", "--out", str(tmp_path / "ds"), "--size", "64",
               "--layers-every", "0", "--photons-per-px", "2000", "3000", "--quiet"])
    assert rc == 0
    photons = [row[f"{role}_photons_per_px"] for row in iter_pairs(tmp_path / "ds") for role in ("baseline", "followup")]
    assert len(photons) == 6 and all(2000 <= p <= 3000 for p in photons)
    capsys.readouterr()
    assert main(["dataset", "--source", "phantom", "--pairs", "3", "--out", str(tmp_path / "ds2"),
                 "--photons-per-px", "2000", "3000", "--no-noise"]) == 2
    assert "--no-noise" in capsys.readouterr().err


@pytest.mark.parametrize("option, drawn, direction, good, limit, rmse_px", [
    ("heel-gain", "heel_gain", "heel_angle_deg", (0.02, 0.04), 0.5, 0.03),
    ("motion-blur-px2", "motion_blur_px2", "motion_angle_deg", (1.0, 3.0), 16.0, 0.05),
])
def test_cli_sets_a_nuisance_per_image(tmp_path: Path, capsys, option, drawn, direction, good, limit, rmse_px) -> None:
    """A heel effect (a smooth field that one visit has and the other not: the quantifier once
    read 0.1 px of narrowing per 1 %) and a patient's motion during an exposure: drawn per image
    (size and direction), recorded, and the pairs' truth measured through them (the chain
    itself: test_xray). A range the wrong way round, or past the limit, is a usage error (exit 2)
    naming the option."""
    from jsnsynth.quantify.validate import validate_dataset

    rc = main(["dataset", "--source", "phantom", "--pairs", "4", "--out", str(tmp_path / "ds"), "--no-noise",
               "--layers-every", "0", f"--{option}", *map(str, good), "--split", "0", "0", "1", "--quiet"])
    assert rc == 0
    rows = list(iter_pairs(tmp_path / "ds"))
    sizes = [row[f"{role}_{drawn}"] for row in rows for role in ("baseline", "followup")]
    angles = {row[f"{role}_{direction}"] for row in rows for role in ("baseline", "followup")}
    assert len(sizes) == 8 and all(good[0] <= v <= good[1] for v in sizes) and len(angles) == 8
    assert validate_dataset(tmp_path / "ds")["overall"]["rmse_px"] < rmse_px
    capsys.readouterr()
    assert main(["dataset", "--source", "phantom", "--pairs", "3", "--out", str(tmp_path / "ds2"),
                 f"--{option}", *map(str, good[::-1])]) == 2
    assert f"'--{option}': LOW {good[1]:g} is above HIGH {good[0]:g}" in capsys.readouterr().err
    assert main(["dataset", "--source", "phantom", "--pairs", "3", "--out", str(tmp_path / "ds3"),
                 f"--{option}", str(good[0]), str(1.5 * limit)]) == 2
    assert not (tmp_path / "ds2").exists() and not (tmp_path / "ds3").exists()


def test_a_jsn_range_past_a_joints_space_is_warned_about(tmp_path: Path, capsys) -> None:
    """--jsn-mm -5 5 (millimetres typed as if pixels) drew a pair narrowed by 3.8 mm, its bones
    over each other, without a word."""
    base = ["dataset", "--source", "phantom", "--pairs", "1", "--size", "128", "--layers-every", "0", "--quiet",
            "--split", "1", "0", "0"]
    assert main(base + ["--out", str(tmp_path / "mm"), "--jsn-mm", "-2.5", "2.5"]) == 0
    assert "--jsn-mm up to 2.5 mm narrows joints by more than a finger joint's space" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "px"), "--jsn-px", "-3", "12"]) == 0
    assert "--jsn-px up to 12 px (2.1 mm at 0.175 mm/px)" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "plain"), "--jsn-mm", "-1", "1.5"]) == 0
    assert "space" not in capsys.readouterr().err
    # and widened by more than a joint's space (an outside probe's --jsn-mm -5 -1: not a word)
    assert main(base + ["--out", str(tmp_path / "wide"), "--jsn-mm", "-5", "-1"]) == 0
    assert "--jsn-mm down to -5 mm widens joints by more than a finger joint's space" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "wide_px"), "--jsn-px", "-32", "3"]) == 0
    assert "--jsn-px down to -32 px (-5.6 mm at 0.175 mm/px) widens" in capsys.readouterr().err


def test_jsn_range_given_in_mm_and_px_is_refused(tmp_path: Path, capsys) -> None:
    # --jsn-px replaces --jsn-mm: the range in mm was dropped without a word
    assert main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(tmp_path / "ds"),
                 "--jsn-mm", "0.1", "0.1", "--jsn-px", "1", "1"]) == 2  # a usage error, as the README says
    assert capsys.readouterr().err.splitlines() == [
        "jsnsynth: error: --jsn-mm and --jsn-px both set the JSN range: give one of them (see 'jsnsynth dataset --help')"]
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("options, message", [
    (["--no-noise", "--photons-per-px", "2000", "3000"], "--photons-per-px sets the noise that --no-noise leaves out"),
    (["--split", "0.5", "0.5", "0.5"], "Invalid value for '--split': 0.5 0.5 0.5 sum to 1.5, not 1"),
])
def test_options_that_contradict_each_other_are_usage_errors(tmp_path: Path, capsys, options, message) -> None:
    # they exited 1, as a problem with the input does, where the README promises 2 for usage
    assert main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(tmp_path / "ds"), *options]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"jsnsynth: error: {message}") and line.endswith("(see 'jsnsynth dataset --help')"), line
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("args, message, code", [(["--pairs", "0"], "pairs", 2), (["--num-proc", "0"], "num-proc", 2),
                                                  (["--split", "0.5", "0.5", "0.5"], "split", 2)])
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys, args: list[str], message: str, code: int) -> None:
    # out of an option's range: a usage error (2); options that do not fit together: 1
    base = ["dataset", "--source", "phantom", "--pairs", "2", "--out", str(tmp_path / "ds"), "--quiet"]
    rc = main(base + args)
    err = capsys.readouterr().err
    assert rc == code and message in err and len(err.strip().splitlines()) == 1


def test_progress_bar_and_quiet(tmp_path: Path, capsys) -> None:
    # a whole joint in 64 px (at 0.175 mm/px a 64 px phantom is warned about: it frames 11 mm)
    argv = ["dataset", "--source", "phantom", "--pairs", "2", "--size", "64", "--pixel-spacing", "0.7", "--layers-every",
            "0", "--split", "1", "0", "0"]
    assert main(argv + ["--out", str(tmp_path / "loud")]) == 0
    assert "pair" in capsys.readouterr().err  # tqdm writes its bar to stderr
    assert main(argv + ["--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_wrong_schema_is_rejected(phantom_dataset: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "broken"
    shutil.copytree(phantom_dataset, broken)
    shard = sorted((broken / "data").glob("*.parquet"))[0]
    pq.write_table(pa.table({"pair_id": ["x"], "jsn_px": [1.0]}), shard)
    with pytest.raises(InputError, match="wrong dataset schema"):
        check_dataset_folder(broken)


@pytest.mark.parametrize("change, message", [
    ("pairs shard deleted", "1 shard(s) missing from data/"),
    ("layers shard deleted", "1 shard(s) missing from layers/"),
    ("pairs shard deleted, no run record", "1 shard(s) missing from data/"),
    ("a shard added", "data/ holds 1 shard(s) that its run did not write"),
    # rows cut or a shard emptied by hand were scored as the whole (load_dataset refuses them)
    ("a shard cut short", "the 'train' split of its pairs holds"),
    ("a shard emptied", "the 'train' split of its pairs holds"),
    ("a layers shard cut short", "the 'train' split of its layers holds"),
    # the pairs alone, copied without layers/ (as from the Hub's data/), are a whole dataset
    ("the layers left out", ""),
])
def test_a_dataset_with_a_shard_missing_or_added_is_refused(phantom_dataset: Path, tmp_path: Path, change: str,
                                                            message: str) -> None:
    # a shard deleted or not copied: validate scored the part, publish would have uploaded it
    from jsnsynth.quantify.validate import dataset_shards

    folder = tmp_path / "copy"
    shutil.copytree(phantom_dataset, folder)
    shard = sorted((folder / "data").glob("train-*.parquet"))[1]
    if change.startswith("layers"):
        (folder / "layers" / shard.name).unlink()
    elif change == "the layers left out":
        shutil.rmtree(folder / "layers")
        (folder / STATE_NAME).unlink()  # its record lists the layers' shards: a copy of the Hub's
        dataset_shards(folder)
        return
    elif "cut short" in change or "emptied" in change:
        import pyarrow.parquet as pq

        target = folder / ("layers" if "layers" in change else "data") / shard.name
        table = pq.read_table(target)
        pq.write_table(table.slice(0, 0 if "emptied" in change else table.num_rows - 1), target)
    elif change == "a shard added":
        shutil.copy(shard, folder / "data" / "train-00009-of-00010.parquet")
    else:
        shard.unlink()
    if "no run record" in change:
        (folder / STATE_NAME).unlink()  # another tool's dataset: its shard names state the count
    else:
        with pytest.raises(InputError, match=re.escape(message)):
            check_dataset_folder(folder)  # publish's check
    with pytest.raises(InputError, match=re.escape(message)):
        dataset_shards(folder)  # validate's
    assert main(["validate", str(folder), "--out", str(tmp_path / "report")]) == 1


def test_a_dataset_inside_another_is_refused(phantom_dataset: Path, capsys) -> None:
    # its shards became part of the outer dataset, which validate scored and publish would upload
    for subfolder in ("data", "layers"):
        inside = phantom_dataset / subfolder / "x"
        argv = ["dataset", "--source", "phantom", "--pairs", "1", "--size", "64", "--pixel-spacing", "0.7",
                "--layers-every", "0", "--split", "1", "0", "0", "--quiet", "--out", str(inside)]
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert err == [f"jsnsynth: error: {inside}: is inside {subfolder}/ of the dataset {phantom_dataset.resolve()}; "
                       "write the new dataset outside it"] and not inside.exists()


def test_a_run_that_failed_before_its_first_shard_does_not_block_the_corrected_one(tmp_path) -> None:
    out = tmp_path / "ds"
    with pytest.raises(InputError, match="64 to 4096 pixels"):
        build_dataset(PhantomSource(n_joints=2, size_px=8), out, 2, seed=1, quiet=True)
    result = build_dataset(PhantomSource(n_joints=2, size_px=64), out, 2, seed=1, quiet=True, layers_every=0)
    assert result.n_pairs == 2 and (out / "README.md").is_file()


@pytest.mark.parametrize("options", [{"translation_px": math.inf}, {"rotation_deg": 720.0}, {"jsn_px": (500.0, 500.0)},
                                     {"magnification": (0.1, 1.0)}, {"jsn_mm": (-math.nan, 0.5)},
                                     {"noise": "no"}])  # a truthy string made noisy pairs
def test_pair_options_out_of_their_physical_range_are_refused(options) -> None:
    with pytest.raises(InputError, match="pair option"):
        PairConfig(**options)


@pytest.mark.parametrize("options, message", [
    ({"n_pairs": 2.5}, "number of pairs must be a whole number >= 1, got 2.5"),  # TypeError from range()
    ({"seed": 1.5}, "seed must be a whole number >= 0, got 1.5"),  # TypeError from SeedSequence
    ({"shard_size": "2"}, "shard size must be a whole number >= 1, got '2'"),
    ({"pair_config": {"noise": False}}, "pair_config must be a PairConfig, got dict"),  # AttributeError
    ({"pair_config": {}}, "pair_config must be a PairConfig, got dict"),  # taken for the defaults
])
def test_build_options_of_the_wrong_kind_are_refused_before_writing(tmp_path: Path, options, message) -> None:
    arguments = {"n_pairs": 2, **options}
    with pytest.raises(InputError, match=re.escape(message)):
        build_dataset(PhantomSource(n_joints=2, size_px=64), tmp_path / "ds", quiet=True, **arguments)
    assert not (tmp_path / "ds").exists()


def test_build_options_given_as_numpy_integers_or_whole_floats_are_recorded_as_integers(tmp_path: Path) -> None:
    result = build_dataset(PhantomSource(n_joints=2, size_px=64), tmp_path / "ok", np.int64(2), seed=np.int32(3),
                           layers_every=0.0, shard_size=2.0, quiet=True)
    config = json.loads((tmp_path / "ok" / STATE_NAME).read_text())["config"]
    assert result.n_pairs == 2 and (config["seed"], config["layers_every"], config["shard_size"]) == (3, 0, 2)
    assert all(type(config[name]) is int for name in ("n_pairs", "seed", "layers_every", "shard_size"))


@pytest.mark.parametrize("spacing_mm", [-0.175, 0.0, 5.0, math.nan])
def test_pairs_are_not_drawn_at_a_spacing_no_radiograph_has(spacing_mm) -> None:
    # a negative spacing gave jsn_px and jsn_mm opposite signs in the truth, without a word
    with pytest.raises(InputError, match="pixel spacing"):
        sample_pair_params(np.random.default_rng(0), spacing_mm, PairConfig(jsn_mm=(0.1, 0.1)))


@pytest.mark.parametrize("args, message", [
    # 5 mm at 0.02 mm/px is 250 px: the upper bone left the 256 px crop, and the label said 250 px
    (["--jsn-mm", "5", "5", "--pixel-spacing", "0.02"], "a JSN change of up to 5 mm is 250.0 px at 0.02 mm/px"),
    # the limits are in pixels whatever the size: a 64 px crop's joint moved out of it
    (["--size", "64", "--translation-px", "64"], "the follow-up's joint would leave it"),
    (["--size", "64", "--jsn-px", "32", "32"], "the follow-up's joint would leave it"),
    # checked against the image's size, not only each phantom's own joint centre, which lies
    # elsewhere in each: a run stopped at phantom 191 of 300, its shards written
    (["--size", "96", "--translation-px", "27"], "more than the 36 px it may move in the 96x96 image"),
])
def test_pair_options_that_move_the_joint_out_of_the_image_are_refused(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "ds"
    assert main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(out), "--quiet", *args]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()  # nothing written
    # the same reach on a crop that holds it: made, with the bones where the label says
    if "--size" in args:
        fits = list(args)
        fits[fits.index("--size") + 1] = "256"
        assert main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(tmp_path / "fits"), "--quiet",
                     "--layers-every", "0", *fits]) == 0


class _UnreadableSource:
    """The raster source, but its images cannot be read (as a text file named .jpg once was)."""

    def __init__(self, source: FingerJointsSource) -> None:
        self.source = source
        self.name, self.citation, self.exact_pose_rendering = source.name, source.citation, False

    def joint_ids(self) -> list[str]:
        return self.source.joint_ids()

    def load(self, joint_id: str, rng: np.random.Generator):
        raise InputError(f"{joint_id}/visit0.png: not a readable image")


def test_a_run_that_fails_before_its_first_shard_leaves_no_record(raster_source, tmp_path: Path) -> None:
    """Such runs left a folder holding only .jsnsynth_state.json."""
    broken = _UnreadableSource(raster_source)
    with pytest.raises(InputError, match="not a readable image"):
        build_dataset(broken, tmp_path / "new", 2, quiet=True)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"  # the user's folder: kept, and left as it was
    empty.mkdir()
    with pytest.raises(InputError):
        build_dataset(broken, empty, 2, quiet=True)
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_dataset_size_is_checked_before_the_output_folder_is_made(tmp_path: Path, capsys) -> None:
    """--size 32 failed while the first pair was made, leaving the folder's run record behind;
    --size with a source of real crops was silently ignored."""
    out = tmp_path / "ds"
    assert main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(out), "--size", "32", "--quiet"]) == 2
    assert "32 is not in the range 64<=x<=4096" in capsys.readouterr().err and not out.exists()
    with pytest.raises(InputError, match="64 to 4096 pixels"):
        PhantomSource(n_joints=2, size_px=32)  # the library checks it as early
    folder = make_fingerjoint_folder(tmp_path / "fj", n_series=2, visits=1)
    rc = main(["dataset", "--source", f"fingerjoints:{folder}", "--pairs", "2", "--out", str(out), "--size", "128"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("jsnsynth: error: --size applies to --source phantom only") and not out.exists()
    # and --max-mask-overlap, for a source without drawn masks
    rc = main(["dataset", "--source", "phantom", "--pairs", "2", "--out", str(out), "--max-mask-overlap", "3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("jsnsynth: error: --max-mask-overlap applies to --source fingerjoints:DIR only")
    assert not out.exists()


@pytest.mark.parametrize("state", ['"x"', "[1, 2]", "\xff\xfe"])
def test_a_run_record_that_is_not_an_object_is_a_one_line_error(phantom_dataset: Path, tmp_path: Path, state) -> None:
    """A state file holding a string or a list gave "AttributeError: 'str' object has no attribute 'get'"."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(phantom_dataset, copy)
    (copy / STATE_NAME).write_bytes(state.encode("latin-1"))
    with pytest.raises(InputError, match=STATE_NAME):  # a dataset being read: an input
        check_dataset_folder(copy)
    with pytest.raises(OutputError, match=STATE_NAME):
        build_dataset(PhantomSource(n_joints=8, size_px=64), copy, 8, seed=4, shard_size=3, quiet=True)


def test_pixel_spacing_option_reaches_every_source(tmp_path: Path) -> None:
    """'jsnsynth dataset' had no --pixel-spacing: crops of real joints at another resolution
    (PNG, no header) could not be given theirs, and the LSN separated them as 0.175 mm/px."""
    from jsnsynth.cli import _dataset_source

    folder = make_fingerjoint_folder(tmp_path / "fj", n_series=2, visits=2)
    out = tmp_path / "ds"
    assert main(["dataset", "--source", f"fingerjoints:{folder}", "--pairs", "2", "--out", str(out),
                 "--pixel-spacing", "0.1", "--quiet", "--layers-every", "0"]) == 0
    rows = list(iter_pairs(out))
    assert [row["pixel_spacing_mm"] for row in rows] == [0.1, 0.1]
    assert all(row["jsn_mm"] == pytest.approx(0.1 * row["jsn_px"]) for row in rows)
    assert _dataset_source("phantom", 2, None, None, 0.12).load("0", np.random.default_rng(0)).pixel_spacing_mm == 0.12
    assert _dataset_source(f"lsn:{folder / '00000_L_2'}", 2, None, None, 0.12).pixel_spacing_mm == 0.12
    assert _dataset_source(f"fingerjoints:{folder}", 2, None, None, None).pixel_spacing_mm == 0.175


def test_the_card_names_a_source_folder_given_as_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_fingerjoint_folder(tmp_path / "fjdot", n_series=2, visits=2)
    monkeypatch.chdir(folder)
    build_dataset(FingerJointsSource("."), tmp_path / "ds", 2, seed=1, layers_every=0, quiet=True)
    assert '"root": "fjdot"' in (tmp_path / "ds" / "README.md").read_text()


def test_a_split_asked_for_that_gets_no_pairs_is_warned_about(raster_source: FingerJointsSource, tmp_path: Path) -> None:
    """Too few joints for the fractions left validation and test empty without a word."""
    with pytest.warns(UserWarning, match=r"split 'validation' gets no pairs \(3 source joint\(s\) are too few for the split fractions\)"):
        build_dataset(PhantomSource(n_joints=3, size_px=64), tmp_path / "few", 3, seed=1, layers_every=0, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dataset(PhantomSource(n_joints=3, size_px=64, pixel_spacing_mm=0.7), tmp_path / "train_only", 3, seed=1,
                      layers_every=0, split_fractions=(1.0, 0.0, 0.0), quiet=True)
