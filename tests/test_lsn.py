"""Tests of the Layer Separation Network: model, data, training, inference, CLI, source.

Everything runs on tiny synthetic crops (64 px) and a tiny model, except the tests of the
bundled weights, which use the shipped file on 64-96 px crops.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import socket
import warnings
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import scipy.ndimage
import torch

from jsnsynth.cli import main
from jsnsynth.errors import InputError
from jsnsynth.lsn.data import (
    ExampleParams,
    MixConfig,
    RealCache,
    is_heldout_series,
    joint_gap_px,
    make_batch,
    make_example,
    make_pool,
    reference_attenuations,
    shift_down_edge,
    smooth_reference_attenuations,
)
from jsnsynth.lsn.infer import (
    DEFAULT_WEIGHTS,
    TRAINING_PIXEL_SPACING_MM,
    UNSURE_FRACTION,
    folder_crops,
    load_model,
    looks_inverted,
    output_names,
    separate_intensity,
    undecided_fraction,
    warn_if_doubtful,
)
from jsnsynth.lsn.model import (
    BAND_FULL_PX,
    BAND_MAX_EUCLIDEAN_PX,
    LayerSeparationNet,
    ModelConfig,
    band_gate,
    compose_fractions,
    intensity_attenuation,
    layers_from_fractions,
    normalise_intensity,
)
from jsnsynth.lsn.train import LossWeights, TrainConfig, batch_to_tensors, export_weights, separation_loss, train
from jsnsynth.picture import find_fill
from jsnsynth.synth.fingerjoints import RIM_TAPER_END_PX
from jsnsynth.synth.io import encode_png, read_float_tiff, write_bytes_atomic
from jsnsynth.synth.xray import intensity_to_attenuation

TINY = ModelConfig(encoder_channels=(4, 4, 8, 8, 8, 8), decoder_channels=(8, 8, 4, 4, 4))
#: Sum-to-input tolerance of the layers, relative to the input attenuation (float32 rounding).
SUM_RTOL = 1e-5


def synthetic_joint(size: int = 64, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A toy joint: smooth soft tissue plus an upper and a lower bone (ellipses) with a gap.

    Returns ``(image uint8, soft uint8, upper_mask, lower_mask)`` like the real cache holds.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    soft = 0.4 + 0.3 * np.exp(-((xx - size / 2) / (0.35 * size)) ** 2)
    cx = size / 2 + rng.uniform(-3, 3)
    gap = size * 0.06
    upper = ((xx - cx) / (0.22 * size)) ** 2 + ((yy - (size / 2 - gap - 0.25 * size)) / (0.25 * size)) ** 2 < 1
    lower = ((xx - cx) / (0.24 * size)) ** 2 + ((yy - (size / 2 + gap + 0.25 * size)) / (0.25 * size)) ** 2 < 1
    # detector blur spreads each bone's edge a little beyond its (tight) mask, as in real crops
    total = soft + cv2.GaussianBlur(0.5 * upper + 0.6 * lower, (0, 0), 1.2)
    image = np.rint((1 - np.exp(-total)) * 255).astype(np.uint8)
    soft_image = np.rint((1 - np.exp(-soft)) * 255).astype(np.uint8)
    return image, soft_image, upper, lower


def synthetic_cache(count: int = 4, size: int = 64) -> RealCache:
    joints = [synthetic_joint(size, seed) for seed in range(count)]
    return RealCache(
        image=np.stack([j[0] for j in joints]),
        soft=np.stack([j[1] for j in joints]),
        upper_mask=np.stack([j[2] for j in joints]),
        lower_mask=np.stack([j[3] for j in joints]),
        series_id=np.array([f"{k:05d}" for k in range(count)]),
        name=np.array([f"s{k}/img" for k in range(count)]),
    )


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = LayerSeparationNet(TINY).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    export_weights(model, path, {"test": True})
    return str(path)


# ------------------------------------------------------------------------------------------
# model


def test_model_outputs_shapes_nonnegative_and_sum_to_input():
    torch.manual_seed(0)
    model = LayerSeparationNet(TINY)
    intensity = torch.rand(2, 1, 64, 96) * 0.95
    with torch.no_grad():
        out = model(normalise_intensity(intensity))
    assert out["share_logits"].shape == (2, 3, 64, 96)
    assert out["mask_logits"].shape == (2, 2, 64, 96)
    assert [a[0].shape[-2:] for a in out["aux"]] == [(16, 24), (32, 48)]
    attenuation = intensity_attenuation(intensity)
    for masks in (torch.sigmoid(out["mask_logits"]), (out["mask_logits"] > 0).float()):
        layers = layers_from_fractions(compose_fractions(out["share_logits"], masks), attenuation)
        assert layers.shape == (2, 3, 64, 96)
        assert float(layers.min()) >= 0.0
        assert torch.allclose(layers.sum(1, keepdim=True), attenuation, rtol=SUM_RTOL, atol=1e-6)
    hard = torch.zeros(2, 2, 64, 96)
    hard[:, 0, 10:20, 20:40] = 1.0
    hard[:, 1, 40:50, 50:70] = 1.0
    layers = layers_from_fractions(compose_fractions(out["share_logits"], hard), attenuation)
    for b in range(2):
        distance = scipy.ndimage.distance_transform_edt(hard[0, b].numpy() == 0)
        # bones are exactly zero beyond the stated band around their masks ...
        assert float(layers[:, 1 + b][:, distance > BAND_MAX_EUCLIDEAN_PX].abs().max()) == 0.0
        # ... and ungated (the network's share alone decides) within BAND_FULL_PX of them
        gate = band_gate(hard)[:, b]
        assert float(gate[:, distance <= BAND_FULL_PX].min()) == 1.0


def test_band_gate_tapers_smoothly_and_scales_with_the_pixel_size():
    mask = torch.zeros(1, 2, 96, 96)
    mask[0, :, 40:56, 40:56] = 1.0
    gate = band_gate(mask)[0, 0].numpy()
    distance = scipy.ndimage.distance_transform_edt(mask[0, 0].numpy() == 0)
    assert gate[distance > BAND_MAX_EUCLIDEAN_PX].max() == 0.0
    assert gate[distance <= BAND_FULL_PX].min() == 1.0
    row = gate[48, 56:]  # along a row away from the mask: non-increasing
    assert np.all(np.diff(row) <= 1e-7)
    assert np.abs(np.diff(row)).max() < 0.35  # tapered, not a step
    half = band_gate(mask[..., ::2, ::2], pixel_scale=2.0)[0, 0].numpy()
    reach = lambda g: int((g[g.shape[0] // 2] > 0).sum())  # noqa: E731
    assert abs(2 * reach(half) - reach(gate)) <= 4
    probability = torch.full_like(mask, 0.3)
    assert torch.allclose(band_gate(probability), probability)  # a flat probability stays itself


@pytest.mark.parametrize("pixel_scale", [0.0437, 0.5, 1.0, 4.0])
def test_band_gate_of_hard_masks_is_the_same_by_either_path(pixel_scale):
    # hard masks take OpenCV's 8-bit dilations (a separation at 0.044 mm/px spent 1.5 s of a
    # 1024 px crop in torch's max-pooling); masks that need gradients take torch's
    masks = torch.from_numpy((np.random.default_rng(1).random((2, 2, 70, 90)) > 0.995).astype(np.float32))
    masks[0, 0, :3, :] = 1.0  # touching the picture's edge
    masks[1, 1, :, -2:] = 1.0
    assert torch.equal(band_gate(masks, pixel_scale), band_gate(masks.clone().requires_grad_(True), pixel_scale).detach())


def test_normalisation_ignores_exposure_offset_and_scale():
    intensity = torch.rand(1, 1, 32, 32) * 0.5
    a = normalise_intensity(intensity)
    b = normalise_intensity(0.2 + 1.5 * intensity)
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------
# data


def test_heldout_split_is_a_fixed_function_of_the_series_id():
    flags = [is_heldout_series(f"{k:05d}") for k in range(400)]
    assert flags == [is_heldout_series(f"{k:05d}") for k in range(400)]
    assert 0.08 < np.mean(flags) < 0.22


def test_shift_down_edge_pads_with_the_top_row():
    values = np.arange(12, dtype=float).reshape(4, 3)
    shifted = shift_down_edge(values, 2)
    assert np.array_equal(shifted[:3], np.repeat(values[:1], 3, axis=0))
    assert np.array_equal(shifted[2:], values[:2])


def test_pseudo_overlap_example_has_exact_fractions_and_moved_mask():
    cache = synthetic_cache(2)
    pool = make_pool(cache, np.arange(2))
    gap = joint_gap_px(cache.upper_mask[0], cache.lower_mask[0])
    assert gap > 0
    mix = MixConfig(crop_px=64)
    params = ExampleParams(kind="overlap", source_index=0, crop_x=0, crop_y=0, flip=False, shift_px=gap + 3)
    example = make_example(pool, params, mix)
    assert np.allclose(example.fractions.sum(0), 1.0, atol=1e-5)
    assert (example.fractions >= 0).all()
    overlap = (example.masks[0] > 0) & (example.masks[1] > 0)
    assert overlap.any()  # the bones now overlap
    assert np.array_equal(example.masks[0] > 0, shift_down_edge(cache.upper_mask[0], gap + 3))
    # the input is the recomposition of the exact layers
    total = intensity_to_attenuation(example.image)
    # the upper bone's rim moved with it: zero only beyond the reference rule's 10 px taper
    # (from either mask: near the lower bone the upper one keeps a tiny distance-weighted share)
    far = scipy.ndimage.distance_transform_edt((example.masks[0] == 0) & (example.masks[1] == 0)) > RIM_TAPER_END_PX + 1
    assert (example.fractions[1][far] == 0).all()
    near_lower_only = (scipy.ndimage.distance_transform_edt(example.masks[0] == 0) > RIM_TAPER_END_PX + 1) & ~far
    assert example.fractions[1][near_lower_only].max() < 0.01
    assert np.isfinite(total).all()


@pytest.mark.parametrize("rule", [reference_attenuations, smooth_reference_attenuations])
def test_reference_layers_add_up_to_the_image(rule):
    image, soft, upper_mask, lower_mask = synthetic_joint(64)
    layers = rule(image, soft, upper_mask, lower_mask)
    assert min(float(v.min()) for v in layers) >= 0
    assert np.allclose(sum(layers), intensity_to_attenuation(image / 255.0), atol=1e-5)
    # the bone layers hold the blurred rim just outside the drawn masks, and nothing beyond the taper
    beyond = scipy.ndimage.distance_transform_edt(~(upper_mask | lower_mask)) >= RIM_TAPER_END_PX
    for layer, mask in ((layers[1], upper_mask), (layers[2], lower_mask)):
        assert (layer[beyond] == 0).all()
        distance = scipy.ndimage.distance_transform_edt(~mask)
        assert layer[(distance > 0) & (distance <= 2)].max() > 0
    # ... so no bright rim is left in the soft layer around the bones (the toy's soft tissue is known)
    rim = (scipy.ndimage.distance_transform_edt(~(upper_mask | lower_mask)) <= 4) & ~(upper_mask | lower_mask)
    true_soft = intensity_to_attenuation(soft / 255.0)
    rim_signal = intensity_to_attenuation(image / 255.0) - true_soft
    assert rim_signal[rim].max() > 0.1  # the blurred edge does reach outside the masks
    gradient = lambda a: np.hypot(*np.gradient(np.asarray(a, np.float64)))  # noqa: E731
    assert gradient(layers[0])[rim].mean() < 0.3 * gradient(intensity_to_attenuation(image / 255.0))[rim].mean()
    if rule is reference_attenuations:  # the exact soft-tissue image: the soft layer is that image
        assert np.abs(layers[0] - true_soft)[rim].max() < 0.02


def test_batches_are_deterministic_given_the_seed():
    pool = make_pool(synthetic_cache(3), np.arange(3))
    mix = MixConfig(crop_px=48, soft_reference="smooth")
    a, ra = make_batch(pool, mix, seed=5, step=2, batch_size=3)
    b, rb = make_batch(pool, mix, seed=5, step=2, batch_size=3)
    assert ra == rb
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert ExampleParams.from_dict(ra[0]).to_dict() == ra[0]


# ------------------------------------------------------------------------------------------
# training


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    pool = make_pool(synthetic_cache(2), np.arange(2))
    arrays, _ = make_batch(pool, MixConfig(crop_px=64, p_restyle=0.0), seed=1, step=0, batch_size=4)
    batch = batch_to_tensors(arrays, torch.device("cpu"))
    model = LayerSeparationNet(TINY)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        terms = separation_loss(model(normalise_intensity(batch["image"])), batch, LossWeights())
        optimiser.zero_grad()
        terms["loss"].backward()
        optimiser.step()
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0]


def _tiny_config(steps: int) -> TrainConfig:
    return TrainConfig(
        seed=3, steps=steps, batch_size=2, lr=1e-3, warmup_steps=1, fingerjoints="/nonexistent",
        n_phantoms=0, checkpoint_every=2, threads=0, model=TINY.to_dict(),
        mix={"crop_px": 32},
    )


def test_train_writes_log_resumes_and_is_deterministic(tmp_path):
    pool = make_pool(synthetic_cache(2), np.arange(2))
    config = _tiny_config(4)
    first = train(config, tmp_path / "a", progress=False, pool=pool)
    second = train(config, tmp_path / "b", progress=False, pool=pool)
    sa = torch.load(first, weights_only=True)["state_dict"]
    sb = torch.load(second, weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with open(tmp_path / "a" / "log.csv", newline="") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [2, 4]
    # resume: a run stopped after 2 steps and restarted ends where an uninterrupted run does
    (tmp_path / "c").mkdir()
    train(_tiny_config(2), tmp_path / "c", progress=False, pool=pool)
    (tmp_path / "c" / "config.json").unlink()  # same run, longer schedule: allowed by hand
    log = (tmp_path / "c" / "log.csv").read_text().splitlines()
    # the step-2 row's seconds made large, and a row cut short after it (a kill as it was written)
    (tmp_path / "c" / "log.csv").write_text("\n".join([log[0], log[1].rsplit(",", 1)[0] + ",1000.0", "2,0.5"]) + "\n")
    resumed = train(config, tmp_path / "c", progress=False, pool=pool)
    assert torch.load(resumed, weights_only=True)["training"]["steps"] == 4
    with open(tmp_path / "c" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [2, 4]
    # the seconds count the whole run: they restarted from 0 at each resume
    assert float(rows[1]["seconds"]) >= 1000.0


def test_train_refuses_outputs_that_overwrite_or_cannot_be_written_before_training(tmp_path, capsys):
    """--export onto the config, or onto the run's own log or checkpoint, was written over at the
    end, exit 0 (the next run failed on the log with a UnicodeDecodeError); an export path that
    was a folder or unwritable failed only after the training, with a raw exception and a
    '.part' file left beside it; a --out folder of a user's files had its log.csv overwritten."""
    from jsnsynth.lsn.train import _atomic_torch_save

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(_tiny_config(2).to_dict()))
    original = config.read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,loss\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (["--export", str(config)], f"{config}: the output would overwrite the input {config}"),
        (["--export", str(run / "log.csv")], "the output would overwrite the input"),
        (["--export", str(run / "checkpoint.pt")], "the output would overwrite the input"),
        (["--export", str(tmp_path)], f"cannot write {tmp_path}: it is a folder"),
        (["--export", str(blocker / "w.pt")], f"cannot write {blocker / 'w.pt'}: {blocker} is a file, not a folder"),
    ]
    for options, message in cases:
        assert main(["lsn", "train", "--config", str(config), "--out", str(run), *options]) == 1, options
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and message in lines[0], (options, lines)
    assert config.read_bytes() == original and sorted(p.name for p in run.iterdir()) == ["log.csv"]
    # a folder of someone's files is not a run folder
    (run / "notes.txt").write_text("mine")
    assert main(["lsn", "train", "--config", str(config), "--out", str(run)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"{run}: holds notes.txt and no run of 'lsn train'" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == ["log.csv", "notes.txt"]
    # what a run keeps beside its files passes: its config, an export written into it before
    # (the same command again was refused), a folder holding a run (these stop later, at the
    # config's missing crops, past the checks)
    own = tmp_path / "own"
    own.mkdir()
    (own / "tiny.json").write_text(config.read_text())
    (own / "final.pt").write_bytes(b"weights")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "config.json").write_text(json.dumps(_tiny_config(2).to_dict()))
    (resumed / "final.pt").write_bytes(b"weights")
    for argv in (["--config", str(own / "tiny.json"), "--out", str(own), "--export", str(own / "final.pt")],
                 ["--config", str(config), "--out", str(resumed), "--export", str(resumed / "final.pt")]):
        assert main(["lsn", "train", *argv]) == 1
        assert "no such finger-joint folder" in capsys.readouterr().err
    # a save that fails leaves no '.part' behind
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        _atomic_torch_save({"x": 1}, tmp_path / "taken")
    assert not (tmp_path / ".taken.part").exists()


def test_training_without_its_real_crops_is_refused(tmp_path, monkeypatch):
    """Run from a folder where the config's ../shared/data/fingerjoints did not resolve, the
    default config trained on phantoms alone, without a word."""
    from jsnsynth.lsn.train import build_pool

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=rf"\.\./shared/data/fingerjoints: no such finger-joint folder \(the config's "
                                         rf"fingerjoints, taken from {tmp_path}: run from the repository root"):
        train(TrainConfig(n_phantoms=5), tmp_path / "run", progress=False)
    # refused, the run leaves no config behind: the same command with the data mended was
    # refused as "a different config"
    assert not (tmp_path / "run" / "config.json").exists()
    with pytest.raises(InputError, match=r"^/nonexistent: no such finger-joint folder \(the config's fingerjoints\); "
                                         r"set \"fingerjoints\": \"\" to train on phantoms alone$"):
        build_pool(TrainConfig(fingerjoints="/nonexistent", n_phantoms=5), tmp_path)
    with pytest.raises(InputError, match="neither real crops .* nor phantoms"):
        build_pool(TrainConfig(fingerjoints="", n_phantoms=0), tmp_path)


def test_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"stepz": 3}')
    with pytest.raises(InputError, match="unknown config key"):
        TrainConfig.from_json(path)
    # in the nested records too: a typo there trained with the default without a word
    path.write_text('{"mix": {"p_reall": 0.9}, "loss": {"layerr": 1.0}}')
    with pytest.raises(InputError, match=r"unknown config key\(s\) mix.p_reall, loss.layerr"):
        TrainConfig.from_json(path)
    rc = main(["lsn", "train", "--config", str(tmp_path / "missing.json")])
    assert rc == 1


@pytest.mark.parametrize("record, message", [
    # "steps": -1 trained nothing and wrote the untrained network as weights, exit 0
    ({"steps": -1}, "'steps' must be an integer >= 1, got -1"),
    ({"steps": 1.5}, "'steps' must be an integer >= 1, got 1.5"),
    ({"steps": "ten"}, "'steps' must be an integer >= 1, got \"ten\""),
    ({"steps": True}, "'steps' must be an integer >= 1, got true"),
    ({"batch_size": 0}, "'batch_size' must be an integer >= 1"),
    ({"lr": float("nan")}, "'lr' must be a number > 0, got NaN"),
    ({"mix": {"p_real": 2.0}}, "'mix.p_real' must be a probability in [0, 1], got 2.0"),
    ({"mix": {"crop_px": 100}}, "'mix.crop_px' must be a multiple of 32"),
    ({"mix": {"overlap_px": [5, 1]}}, "'mix.overlap_px' must be a [low, high] range"),
    ({"mix": {"p_real": 0, "p_overlap": 0, "p_phantom": 0}}, "'mix' draws no example"),
    ({"loss": {"layer": -1}}, "'loss.layer' must be a weight >= 0, got -1"),
    ({"model": {"encoder_channels": [8, 16]}}, "'model.encoder_channels' must be a list of 6 channel counts"),
])
def test_config_values_out_of_range_are_one_line_errors(tmp_path, capsys, record, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=re.escape(f"{path}: {message}")):
        TrainConfig.from_json(path)
    assert main(["lsn", "train", "--config", str(path), "--out", str(tmp_path / "run")]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message in lines[0] and not (tmp_path / "run").exists()


def test_weights_given_as_a_folder_are_named_so(tmp_path, capsys):
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), np.full((64, 64), 128, np.uint8))
    assert main(["separate", str(crop), "--weights", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"jsnsynth: error: {tmp_path}: is a folder, not an LSN weights file (.pt)"]


def test_config_values_in_range_pass_as_python_gives_them():
    # a model record of tuples (asdict of a ModelConfig) was refused as "must be a list"
    TrainConfig(model=asdict(ModelConfig()), mix=asdict(MixConfig()), loss={"layer": 2})


def test_config_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "crop.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InputError, match="crop.png: not a JSON text file"):
        TrainConfig.from_json(path)


# ------------------------------------------------------------------------------------------
# inference


@pytest.mark.filterwarnings("ignore:.*upper bone lay below")  # an untrained network's bones land anywhere
@pytest.mark.parametrize("shape,spacing", [((64, 64), None), ((70, 45), None), ((64, 80), 0.0875), ((96, 96), 0.3)])
def test_separation_keeps_size_and_sums_to_the_input(tiny_weights, shape, spacing):
    rng = np.random.default_rng(1)
    intensity = np.clip(cv2.GaussianBlur(rng.uniform(0.2, 0.9, shape), (0, 0), 2.0), 0, 1)
    model = load_model(tiny_weights)
    result = separate_intensity(intensity, model, pixel_spacing_mm=spacing)
    layers = result.layers
    assert layers.shape == shape
    assert min(layers.soft.min(), layers.upper.min(), layers.lower.min()) >= 0
    total = intensity_to_attenuation(intensity)
    assert np.allclose(layers.attenuation(), total, rtol=SUM_RTOL, atol=1e-6)
    for layer, mask in ((layers.upper, layers.upper_mask), (layers.lower, layers.lower_mask)):
        if mask.any():  # exactly zero beyond the band (in training pixels) around the mask
            band_px = BAND_MAX_EUCLIDEAN_PX * TRAINING_PIXEL_SPACING_MM / (spacing or TRAINING_PIXEL_SPACING_MM) + 1
            assert (layer[scipy.ndimage.distance_transform_edt(~mask) > band_px] == 0).all()
    assert np.allclose(result.recomposed, intensity, atol=1e-5)


@pytest.mark.parametrize("fill", ["zero", "white", "reflect"])
def test_padded_crop_is_separated_as_its_picture(fill):
    # the network never saw a fill around a joint: with 20 px of a constant one it called the
    # lower bone upper and the upper lower on 10 of 12 real crops. The picture is separated on
    # its own and the padding is soft tissue.
    image, _, _, _ = synthetic_joint(96)
    # a little noise: the toy joint's own edge columns repeat, which is padding as well
    intensity = np.clip(image / 255.0 + np.random.default_rng(0).normal(0.0, 0.002, image.shape), 0.0, 1.0)
    widths = ((20, 12), (7, 20))
    if fill == "reflect":
        padded = np.pad(intensity, widths, mode="reflect")
    else:
        padded = np.pad(intensity, widths, constant_values=0.0 if fill == "zero" else 1.0)
    model = load_model()
    plain = separate_intensity(intensity, model).layers
    result = separate_intensity(padded, model)
    layers = result.layers
    box = (slice(20, 116), slice(7, 103))
    for name in ("soft", "upper", "lower", "upper_mask", "lower_mask"):
        assert np.array_equal(getattr(layers, name)[box], getattr(plain, name)), name
    outside = np.ones(padded.shape, bool)
    outside[box] = False
    assert not (layers.upper_mask | layers.lower_mask)[outside].any()
    assert (layers.upper[outside] == 0).all() and (layers.lower[outside] == 0).all()
    assert np.allclose(layers.attenuation(), intensity_to_attenuation(padded), rtol=SUM_RTOL, atol=1e-6)
    assert layers.metadata["picture_box"] == [20, 116, 7, 103]


def test_bones_found_in_the_wrong_order_are_put_back(monkeypatch):
    # the crops' convention puts the upper bone on top: a network output with the two bones'
    # channels swapped comes back in order, with a warning that names the crop
    import jsnsynth.lsn.infer as infer

    image, _, _, _ = synthetic_joint(96)
    model = load_model()
    plain = separate_intensity(image / 255.0, model).layers
    assert plain.upper_mask.any() and plain.lower_mask.any()
    predict = infer.predict_logits

    def swapped(model, intensity):
        shares, masks = predict(model, intensity)
        return shares[[0, 2, 1]], masks[::-1]

    monkeypatch.setattr(infer, "predict_logits", swapped)
    with pytest.warns(UserWarning, match="crop.png: the network's upper bone lay below its lower one"):
        layers = separate_intensity(image / 255.0, model, name="crop.png").layers
    for name in ("soft", "upper", "lower", "upper_mask", "lower_mask"):
        assert np.array_equal(getattr(layers, name), getattr(plain, name)), name
    assert layers.metadata["bones_reordered"] and not plain.metadata["bones_reordered"]


def test_bundled_weights_load_offline(monkeypatch):
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size < 5_000_000

    def no_network(*args, **kwargs):
        raise AssertionError("the LSN tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = load_model()
    image, _, upper, lower = synthetic_joint(64)
    result = separate_intensity(image / 255.0, model)
    assert result.layers.shape == (64, 64)


def test_separate_cli_writes_every_output(tmp_path, capsys):
    image, _, _, _ = synthetic_joint(96)
    image16 = (image.astype(np.uint16) * 257)
    path = tmp_path / "crop.png"
    write_bytes_atomic(path, encode_png(image16))
    rc = main(["separate", str(path), "--out", str(tmp_path / "out")])
    assert rc == 0
    out = tmp_path / "out"
    names = ["crop_soft.tif", "crop_upper.tif", "crop_lower.tif", "crop_upper_mask.png", "crop_lower_mask.png",
             "crop_recomposed.png", "crop_panel.png"]
    for name in names:
        assert (out / name).is_file(), name
    total = sum(read_float_tiff(out / f"crop_{k}.tif").astype(np.float64) for k in ("soft", "upper", "lower"))
    assert np.allclose(total, intensity_to_attenuation(image16 / 65535.0), rtol=SUM_RTOL, atol=1e-5)
    recomposed = cv2.imread(str(out / "crop_recomposed.png"), cv2.IMREAD_UNCHANGED)
    assert recomposed.dtype == np.uint16
    assert "panel:" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["output_is_an_input", "output_is_a_folder"])
def test_separate_checks_every_output_before_any_work(tmp_path, capsys, case):
    """A crop named like another's output was overwritten (exit 0); a panel path that was a folder
    failed after six of the seven files had been written."""
    image, _, _, _ = synthetic_joint(64)
    crop = tmp_path / "a.png"
    write_bytes_atomic(crop, encode_png(image.astype(np.uint16) * 257))
    inputs = [crop]
    if case == "output_is_an_input":
        inputs.append(tmp_path / "a_recomposed.png")  # the recomposition of a.png would replace it
        write_bytes_atomic(inputs[-1], encode_png(image.astype(np.uint16) * 257))
    else:
        (tmp_path / "a_panel.png").mkdir()
    before = {p.name: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()}
    rc = main(["separate", *map(str, inputs), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("jsnsynth: error:") and "\n" not in err
    assert ("would overwrite the input" if case == "output_is_an_input" else "it is a folder") in err
    assert {p.name: p.read_bytes() if p.is_file() else None for p in tmp_path.iterdir()} == before


def _bad_inputs(tmp_path):
    text = tmp_path / "text.png"
    text.write_text("not an image")
    colour = tmp_path / "colour.png"
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    cv2.imwrite(str(colour), rgb)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((16, 16), 100, np.uint8))
    large = tmp_path / "large.png"  # a whole radiograph, not a joint crop
    cv2.imwrite(str(large), np.full((40, 4100), 100, np.uint8))
    nan = tmp_path / "nan.tif"
    values = np.full((64, 64), 0.5, np.float32)
    values[3, 4] = np.nan
    cv2.imwrite(str(nan), values)
    return {"not an image": text, "colour": colour, "too small": small, "too large": large, "NaN": nan,
            "missing": tmp_path / "nope.png"}


@pytest.mark.parametrize("case", ["not an image", "colour", "too small", "too large", "NaN", "missing"])
def test_separate_cli_rejects_bad_input_with_one_line(tmp_path, capsys, case):
    path = _bad_inputs(tmp_path)[case]
    rc = main(["separate", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("jsnsynth: error:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_separate_rejects_nan_array_and_bad_weights(tmp_path):
    values = np.full((64, 64), 0.5)
    values[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        separate_intensity(values, load_model())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(InputError, match="not an LSN weights file"):
        load_model(bad)


# ------------------------------------------------------------------------------------------
# source


def test_lsn_source_follows_the_source_protocol(tmp_path, tiny_weights):
    from jsnsynth.lsn.infer import separate_files
    from jsnsynth.lsn.source import LsnSource

    for k in range(2):
        cv2.imwrite(str(tmp_path / f"joint{k}.png"), synthetic_joint(64, k)[0])
    source = LsnSource(tmp_path)
    assert source.name == "lsn" and source.exact_pose_rendering is False and source.citation
    assert source.joint_ids() == ["joint0", "joint1"]
    layers = source.load("joint1", np.random.default_rng(0))
    assert layers.shape == (64, 64)
    assert layers.metadata["joint_id"] == "joint1"
    with pytest.raises(InputError):
        source.load("nope", np.random.default_rng(0))
    with pytest.raises(InputError):
        LsnSource(tmp_path / "empty")
    # the run's record names the weights by what they are, not where they are installed
    moved = tmp_path / "elsewhere" / "lsn.pt"
    moved.parent.mkdir()
    moved.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    assert LsnSource(tmp_path, weights=moved).content_digest() == LsnSource(tmp_path).content_digest()
    # a folder `separate` wrote into: its layers (float TIFFs) and masks are no crops
    separate_files([tmp_path / "joint0.png"], tmp_path)
    assert LsnSource(tmp_path).joint_ids() == ["joint0", "joint1"]
    # a crop the quantifier could not measure the pairs of (48 px on its longer side) is refused up front
    cv2.imwrite(str(tmp_path / "small.png"), synthetic_joint(48, 0)[0])
    with pytest.raises(InputError, match=r"small.png: crop is 48x48 px; the quantifier measures pairs of at least 32x32"):
        LsnSource(tmp_path)


def test_lsn_source_takes_a_sub_folder_as_one_joint_of_visits(tmp_path):
    """Each crop was a joint of its own, so two visits of one joint landed in train and in test;
    a sub-folder of crops is now one joint whose crops are its visits, its pairs drawn from them
    all, and a split keeps them together."""
    from jsnsynth.lsn.source import LsnSource, joint_crops
    from jsnsynth.synth.dataset import build_dataset, iter_pairs

    cv2.imwrite(str(tmp_path / "alone.png"), synthetic_joint(64, 0)[0])
    (tmp_path / "patient7").mkdir()
    for visit in range(3):
        cv2.imwrite(str(tmp_path / "patient7" / f"visit{visit}.png"), synthetic_joint(64, visit + 1)[0])
    (tmp_path / ".hidden").mkdir()
    cv2.imwrite(str(tmp_path / ".hidden" / "x.png"), synthetic_joint(64, 9)[0])
    # a sub-folder of drawn masks is no joint, nor are masks beside the crops
    (tmp_path / "masks").mkdir()
    mask = np.where(synthetic_joint(64, 0)[2], 255, 0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "masks" / "alone_upper.png"), mask)
    cv2.imwrite(str(tmp_path / "patient7" / "visit0_mask.png"), mask)
    source = LsnSource(tmp_path)
    assert source.joint_ids() == ["alone", "patient7"] and sum(map(len, joint_crops(tmp_path).values())) == 4
    drawn = {source.load("patient7", np.random.default_rng(seed)).metadata["image"] for seed in range(12)}
    assert drawn == {f"patient7/visit{visit}.png" for visit in range(3)}
    assert source.load("alone", np.random.default_rng(0)).metadata["image"] == "alone.png"
    build_dataset(source, tmp_path / "ds", 8, seed=3, layers_every=0, quiet=True, split_fractions=(0.5, 0.0, 0.5))
    splits = {}
    for row in iter_pairs(tmp_path / "ds"):
        splits.setdefault(row["joint_id"], set()).add(row["split"])
    assert set(splits) == {"alone", "patient7"} and all(len(found) == 1 for found in splits.values())
    # a sub-folder named as a crop is two joints of one id; a folder of nothing is refused
    cv2.imwrite(str(tmp_path / "patient7.png"), synthetic_joint(64, 5)[0])
    with pytest.raises(InputError, match=r"patient7: a sub-folder \(one joint's visits\) named as the crop patient7.png"):
        joint_crops(tmp_path)
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="holds no radiograph crops, in itself or in sub-folders"):
        joint_crops(tmp_path / "none")


def test_lsn_source_refuses_crops_too_faint_for_the_pairs(tmp_path):
    """12-bit data written unscaled into 16-bit PNGs peaks at a sixteenth of the range: the LSN's
    layers held a sixteenth of the attenuation, the dataset's display windows made blank
    follow-ups, and validate counted them as the method's failures."""
    from jsnsynth.lsn.source import LsnSource

    image = synthetic_joint(64, 0)[0]
    (tmp_path / "crops").mkdir()
    cv2.imwrite(str(tmp_path / "crops" / "full.png"), image.astype(np.uint16) * 257)
    assert LsnSource(tmp_path / "crops").joint_ids() == ["full"]
    cv2.imwrite(str(tmp_path / "crops" / "c12.png"), np.rint(image / 255.0 * 4095).astype(np.uint16))
    with pytest.raises(InputError, match=r"c12.png: its brightest pixel is 4\.6% of the file's range \(12- or 14-bit"):
        LsnSource(tmp_path / "crops")


def _with_masks(separate, upper_mask: np.ndarray, lower_mask: np.ndarray):
    """``separate`` (the LSN source's separation) with its bone masks replaced by these."""

    def separate_with_masks(*args, **kwargs):
        separation = separate(*args, **kwargs)
        separation.layers = separation.layers.replace(upper_mask=upper_mask, lower_mask=lower_mask)
        return separation

    return separate_with_masks


def test_lsn_source_names_a_crop_whose_bones_make_no_joint(tmp_path, monkeypatch):
    # a crop the network reads as two bones side by side: the pairs cannot place a joint, and the
    # error used to name no crop ("the lower-bone mask is not below the upper-bone mask")
    import jsnsynth.lsn.source as source_module
    from jsnsynth.lsn.source import LsnSource

    cv2.imwrite(str(tmp_path / "odd.png"), synthetic_joint(64)[0])
    separate = source_module.separate_intensity
    left, right = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    left[20:40, 5:25], right[20:40, 40:60] = True, True
    side_by_side = _with_masks(separate, left, right)
    monkeypatch.setattr(source_module, "separate_intensity", side_by_side)
    with pytest.raises(InputError, match=r"odd\.png: the LSN's bones do not make a joint \(the lower-bone mask is not below"):
        LsnSource(tmp_path).load("odd", np.random.default_rng(0))
    # and the dataset builder says so before it writes anything: at the crop's first pair, the
    # build stopped half-way, and without the crop the source differed, so it could not resume
    from jsnsynth.synth.dataset import build_dataset

    cv2.imwrite(str(tmp_path / "good.png"), synthetic_joint(64, 1)[0])
    def odd_only(*args, name="", **kwargs):
        return (side_by_side if name.endswith("odd.png") else separate)(*args, name=name, **kwargs)

    monkeypatch.setattr(source_module, "separate_intensity", odd_only)
    with pytest.raises(InputError, match=r"odd\.png: the LSN's bones do not make a joint"):
        # seed 2: the good crop's pair first, in a shard of its own, which was written
        build_dataset(LsnSource(tmp_path), tmp_path / "ds", 4, seed=2, shard_size=1, layers_every=0, quiet=True,
                      split_fractions=(1.0, 0.0, 0.0))
    assert not (tmp_path / "ds").exists()


def test_lsn_source_refuses_a_crop_whose_bone_masks_mostly_overlap(tmp_path, monkeypatch):
    # a collapsed joint the network was unsure of (a held-out real crop: 52 % of the smaller mask
    # in both): its pairs went into the dataset, and `quantify` refused every one
    import jsnsynth.lsn.source as source_module
    from jsnsynth.lsn.source import LsnSource

    cv2.imwrite(str(tmp_path / "collapsed.png"), synthetic_joint(64)[0])
    separate = source_module.separate_intensity
    upper, lower = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    upper[5:35, 20:44], lower[24:60, 20:44] = True, True  # 11 of 30 rows shared: 37 %
    monkeypatch.setattr(source_module, "separate_intensity", _with_masks(separate, upper, lower))
    LsnSource(tmp_path).load("collapsed", np.random.default_rng(0))  # within the quantifier's limit

    upper = np.zeros((64, 64), bool)
    upper[17:47, 20:44] = True  # 23 of 30 rows inside the lower mask: 77 %
    monkeypatch.setattr(source_module, "separate_intensity", _with_masks(separate, upper, lower))
    with pytest.raises(InputError, match=r"collapsed\.png: the LSN's bone masks overlap by 77% of the smaller one "
                                         r"\(more than 50%\).*leave the crop out"):
        LsnSource(tmp_path).load("collapsed", np.random.default_rng(0))


def test_lsn_source_says_what_a_separation_says_once(tmp_path, monkeypatch):
    """A warning of the separation itself (bones swapped back, a large crop without a spacing)
    was said again at every pair of the crop (and, once the crops were checked up front, by the
    check and again by the workers of --num-proc 2, which a patched function cannot reach)."""
    import jsnsynth.lsn.source as source_module
    from jsnsynth.lsn.source import LsnSource
    from jsnsynth.synth.dataset import build_dataset

    cv2.imwrite(str(tmp_path / "a.png"), synthetic_joint(64, 0)[0])
    separate = source_module.separate_intensity

    def warning(*args, **kwargs):
        warnings.warn("marker: what the separation says of the crop", UserWarning)
        return separate(*args, **kwargs)

    monkeypatch.setattr(source_module, "separate_intensity", warning)
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        build_dataset(LsnSource(tmp_path), tmp_path / "ds", 3, seed=0, layers_every=0, quiet=True,
                      split_fractions=(1.0, 0.0, 0.0))
    assert sum("marker" in message for message in shown) == 1


def test_clean_mask_keeps_the_largest_piece_and_fills_holes():
    from jsnsynth.lsn.infer import clean_mask

    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True
    mask[12:15, 12:15] = False  # a hole
    mask[35:38, 35:38] = True  # an island
    cleaned = clean_mask(mask)
    assert cleaned[12:15, 12:15].all() and not cleaned[35:38, 35:38].any()
    assert cleaned.sum() == 25 * 25
    assert not clean_mask(np.zeros((8, 8), bool)).any()


def test_separate_refuses_crops_without_a_joint_and_absurd_spacings_before_writing(tmp_path):
    from jsnsynth.lsn.infer import check_separation, separate_files

    joint = tmp_path / "joint.png"
    write_bytes_atomic(joint, encode_png(np.full((64, 64), 30000, np.uint16)))
    blank = tmp_path / "blank.png"  # featureless: the network finds no bone in it
    write_bytes_atomic(blank, encode_png(np.full((64, 64), 20000, np.uint16)))
    with pytest.raises(InputError, match="pixel spacing 5.0 mm"):
        separate_files([joint], tmp_path / "out", pixel_spacing_mm=5.0)
    with pytest.warns(UserWarning, match="no (upper|lower) bone found .*; not separated"):
        run = separate_files([blank], tmp_path / "out")
    assert run.panels == [] and [path for path, _ in run.refused] == [blank]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    some = np.zeros((64, 64), bool)
    some[:20] = True
    with pytest.raises(InputError, match="no lower bone found"):
        check_separation(some, np.zeros_like(some), "crop")
    with pytest.warns(UserWarning, match="cover 100%"):
        check_separation(some, ~some, "crop")
    # a speck of bone is what the network makes of a crop with no joint (a soft-tissue image)
    speck = np.zeros((64, 64), bool)
    speck[40:44, 30:34] = True  # 0.4 % of the crop
    lower = np.zeros((64, 64), bool)
    lower[40:] = True
    with pytest.warns(UserWarning, match=r"crop: little bone found \(upper 0\.4% of the crop"):
        check_separation(speck, lower, "crop")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_separation(some, lower, "crop")  # a joint's share each: nothing to say
    # masks overlapping past what quantify takes (a collapsed joint): quantify refused them later
    # with advice for a hand's drawing
    upper, lower = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    upper[:41], lower[20:] = True, True  # rows 20-40 in both: 21 of the upper's 41
    with pytest.warns(UserWarning, match=r"crop: the network's two bone masks overlap by 51% of the smaller"):
        check_separation(upper, lower, "crop")


def test_separate_writes_crop_by_crop_and_resumes(tmp_path, capsys, monkeypatch):
    """All crops' files were held in memory and written at the end (3.8 MB a crop), so a long
    run that was interrupted, or stopped by one bad crop, left nothing and started over; later a
    crop with no bone in it stopped the run, so the crops after it were never separated."""
    import jsnsynth.lsn.infer as infer

    # the bundled network in a weights file of other bytes: other weights, as far as a record knows
    payload = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    other_weights = str(tmp_path / "other.pt")
    torch.save({**payload, "training": {"copied": True}}, other_weights)

    crops = tmp_path / "crops"
    for seed in range(3):
        write_bytes_atomic(crops / f"joint{seed}.png", encode_png(synthetic_joint(64, seed)[0]))
    write_bytes_atomic(crops / "blank.png", encode_png(np.full((64, 64), 120, np.uint8)))  # no bone in it
    assert main(["separate", str(crops), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "blank.png: no" in captured.err and "; not separated" in captured.err
    assert captured.err.strip().splitlines()[-1] == (
        "jsnsynth: error: 1 of 4 crop(s) not separated, no bone found in them: blank.png")
    assert "wrote 3 separation(s)" in captured.out and "blank_panel" not in captured.out
    # the crop that comes first is refused, and the crops after it are still separated
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted([infer.SEPARATION_RECORD, *(n for k in range(3) for n in infer.output_names(f"joint{k}"))])
    (crops / "blank.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert main(["separate", str(crops), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 0 separation(s)" in out and "(3 already there)" in out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before
    # a crop changed, or another spacing: separated again
    write_bytes_atomic(crops / "joint1.png", encode_png(synthetic_joint(64, 7)[0]))
    assert main(["separate", str(crops), "--out", str(tmp_path / "out")]) == 0
    assert "wrote 1 separation(s)" in capsys.readouterr().out
    assert main(["separate", str(crops), "--out", str(tmp_path / "out"), "--pixel-spacing", "0.17"]) == 0
    assert "wrote 3 separation(s)" in capsys.readouterr().out
    assert main(["separate", str(crops), "--out", str(tmp_path / "out"), "--pixel-spacing", "0.17",
                 "--weights", other_weights]) == 0
    assert "wrote 3 separation(s)" in capsys.readouterr().out
    # an output deleted: that crop is made again, and the other outputs of its stem are still no
    # crops (the record lists the stem)
    (tmp_path / "out" / "joint2_panel.png").unlink()
    assert infer.folder_crops(tmp_path / "out") == []
    assert main(["separate", str(crops), "--out", str(tmp_path / "out"), "--pixel-spacing", "0.17",
                 "--weights", other_weights]) == 0
    assert "wrote 1 separation(s)" in capsys.readouterr().out and (tmp_path / "out" / "joint2_panel.png").is_file()
    # a crop's files replaced by another input's, the run cut before it recorded them: the first
    # input again is separated again, not skipped on its stale entry
    first = (tmp_path / "out" / "joint0_upper.tif").read_bytes()
    original_bytes = (crops / "joint0.png").read_bytes()
    write_bytes_atomic(crops / "joint0.png", encode_png(synthetic_joint(64, 9)[0]))
    new_digest = hashlib.sha256((crops / "joint0.png").read_bytes()).hexdigest()
    write_record = infer._write_separation_record

    def cut_before_recording(path, record):
        if record.get("joint0", {}).get("input_sha256") == new_digest:  # the new files are written
            raise KeyboardInterrupt
        write_record(path, record)

    monkeypatch.setattr(infer, "_write_separation_record", cut_before_recording)
    assert main(["separate", str(crops / "joint0.png"), "--out", str(tmp_path / "out"), "--pixel-spacing", "0.17",
                 "--weights", other_weights]) == 130
    monkeypatch.setattr(infer, "_write_separation_record", write_record)
    assert (tmp_path / "out" / "joint0_upper.tif").read_bytes() != first
    write_bytes_atomic(crops / "joint0.png", original_bytes)
    assert main(["separate", str(crops / "joint0.png"), "--out", str(tmp_path / "out"), "--pixel-spacing", "0.17",
                 "--weights", other_weights]) == 0
    assert "wrote 1 separation(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "joint0_upper.tif").read_bytes() == first
    # the record's path taken by a folder: refused before anything is written
    (tmp_path / "taken" / infer.SEPARATION_RECORD).mkdir(parents=True)
    assert main(["separate", str(crops), "--out", str(tmp_path / "taken")]) == 1
    assert "it is a folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == [infer.SEPARATION_RECORD]
    # interrupted inside the second crop: the first complete, nothing of the second; resumed, the
    # same bytes as a run that was never interrupted
    original, calls = infer.write_files_atomic, {"n": 0}

    def interrupted(files):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        original(files)

    monkeypatch.setattr(infer, "write_files_atomic", interrupted)
    assert main(["separate", str(crops), "--out", str(tmp_path / "cut")]) == 130
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted([infer.SEPARATION_RECORD,
                                                                            *infer.output_names("joint0")])
    monkeypatch.setattr(infer, "write_files_atomic", original)
    assert main(["separate", str(crops), "--out", str(tmp_path / "cut")]) == 0
    assert "wrote 2 separation(s) to" in capsys.readouterr().out
    assert main(["separate", str(crops), "--out", str(tmp_path / "whole")]) == 0
    for path in (tmp_path / "whole").iterdir():
        assert (tmp_path / "cut" / path.name).read_bytes() == path.read_bytes(), path.name
    # a crop replaced by one with no bone: refused, and the files of what it was before go, so no
    # other crop's layers stay under its name
    write_bytes_atomic(crops / "joint1.png", encode_png(np.full((64, 64), 120, np.uint8)))
    assert main(["separate", str(crops), "--out", str(tmp_path / "whole")]) == 1
    assert "joint1.png: no" in capsys.readouterr().err
    assert not any((tmp_path / "whole" / name).exists() for name in infer.output_names("joint1"))
    assert "joint1" not in json.loads((tmp_path / "whole" / infer.SEPARATION_RECORD).read_text())
    assert all((tmp_path / "whole" / name).is_file() for k in (0, 2) for name in infer.output_names(f"joint{k}"))
    # ... and so do they when the record that listed them is gone
    (tmp_path / "whole" / infer.SEPARATION_RECORD).unlink()
    write_bytes_atomic(crops / "joint2.png", encode_png(np.full((64, 64), 120, np.uint8)))
    assert main(["separate", str(crops), "--out", str(tmp_path / "whole")]) == 1
    assert not any((tmp_path / "whole" / name).exists() for k in (1, 2) for name in infer.output_names(f"joint{k}"))


def test_a_crop_stored_with_bone_dark_is_named(tmp_path, capsys):
    """An inverted crop was separated without a word into layers that are not bones."""
    image, _, _, _ = synthetic_joint(96)
    model = load_model()
    intensity = image / 255.0
    for crop, inverted in ((intensity, False), (1.0 - intensity, True)):
        assert looks_inverted(crop, separate_intensity(crop, model), model) is inverted
    write_bytes_atomic(tmp_path / "dark.png", encode_png(255 - image.astype(np.uint8)))
    write_bytes_atomic(tmp_path / "bright.png", encode_png(image.astype(np.uint8)))
    assert main(["separate", str(tmp_path / "dark.png"), str(tmp_path / "bright.png"), "--out", str(tmp_path / "out")]) == 0
    warnings_printed = [line for line in capsys.readouterr().err.splitlines() if "looks inverted" in line]
    assert len(warnings_printed) == 1 and "dark.png" in warnings_printed[0]


def _phantom_crop(seed: int = 0) -> np.ndarray:
    """A 256 px phantom radiograph (intensities in [0, 1]) the network separates surely."""
    from jsnsynth.synth.phantom import render_phantom, sample_phantom_params
    from jsnsynth.synth.xray import ImagingRanges, render_radiograph, sample_imaging_params

    rng = np.random.default_rng(seed)
    layers = render_phantom(sample_phantom_params(rng))
    return render_radiograph(layers.attenuation(), sample_imaging_params(rng, ImagingRanges(), noise=True))


def test_twelve_bit_data_in_sixteen_bit_files_separate_as_at_full_range():
    """12-bit data stored in 16-bit files (a sixteenth of the range) had been left partly
    unstandardised by the normalisation's floor: lower-bone Dice down to 0.33 on real crops."""
    model = load_model()
    levels = np.rint(_phantom_crop() * 4095)
    full = separate_intensity(levels / 4095, model).layers
    twelve_bit = separate_intensity(levels / 65535, model).layers
    for name in ("upper_mask", "lower_mask"):
        a, b = getattr(full, name), getattr(twelve_bit, name)
        assert a.any() and 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.999


def test_a_crop_the_network_is_unsure_of_is_named(tmp_path, capsys):
    """A crop turned by 90 deg (unlike the upright crops the network knows) was separated without
    a word in 23 of 30 real crops (mask Dice 0.33 / 0.61)."""
    crop = _phantom_crop(2)  # the network leaves 6 % of this one undecided once turned
    turned = np.ascontiguousarray(np.rot90(crop))
    write_bytes_atomic(tmp_path / "upright.png", encode_png(np.rint(crop * 65535).astype(np.uint16)))
    write_bytes_atomic(tmp_path / "turned.png", encode_png(np.rint(turned * 65535).astype(np.uint16)))
    assert main(["separate", str(tmp_path / "upright.png"), str(tmp_path / "turned.png"), "--out", str(tmp_path / "out")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "network is unsure" in line]
    assert len(warned) == 1 and "turned.png" in warned[0]


def test_a_crop_turned_upright_with_black_corners_is_separated_as_upright():
    """A crop straightened by its joint axis with ``cv2.warpAffine`` keeps black corners, a fill
    the network never saw: phantom crops turned by 15 deg gave mask Dice 0.66-0.91 / 0.52-0.87
    against their upright separation turned alike, with the bones swapped on three of four
    (real crops 0.56 / 0.77). The fill is now mirrored picture for the network, and soft tissue
    in the layers."""
    crop = _phantom_crop(1)
    turn = cv2.getRotationMatrix2D((127.5, 127.5), 15, 1)
    turned = cv2.warpAffine(crop, turn, (256, 256), flags=cv2.INTER_CUBIC)
    model = load_model()
    upright = separate_intensity(crop, model).layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither swapped nor unsure
        separation = separate_intensity(turned, model)
        warn_if_doubtful(turned, separation, model, None, "turned")
    layers = separation.layers
    for name in ("upper_mask", "lower_mask"):
        expected = cv2.warpAffine(getattr(upright, name).astype(np.uint8), turn, (256, 256), flags=cv2.INTER_NEAREST) > 0
        found = getattr(layers, name)
        assert 2 * (expected & found).sum() / (expected.sum() + found.sum()) > 0.97, name
    fill = find_fill(turned)
    assert layers.metadata["fill_px"] == fill.sum() >= (cv2.warpAffine(np.ones_like(crop), turn, (256, 256)) == 0).sum()
    assert not (layers.upper_mask | layers.lower_mask)[fill].any()
    assert (layers.upper[fill] == 0).all() and (layers.lower[fill] == 0).all()
    assert np.allclose(layers.attenuation(), intensity_to_attenuation(turned), rtol=SUM_RTOL, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_a_joint_turned_far_is_separated_upright(seed, monkeypatch):
    """The network knows joints leaning as real crops do (up to about 20 deg); turned by 40 deg,
    phantom crops lost up to 6 % of a mask (Dice 0.938-0.947 against their upright separation
    turned alike) and real crops turned by 30 / 45 deg 10 / 26 % (0.90 / 0.74, upper bone). Such a
    crop is now separated again turned upright."""
    import jsnsynth.lsn.infer as infer

    crop = _phantom_crop(seed)
    turn = cv2.getRotationMatrix2D((127.5, 127.5), 40, 1)
    turned = cv2.warpAffine(crop, turn, (256, 256), flags=cv2.INTER_CUBIC)
    model = load_model()
    upright = separate_intensity(crop, model).layers
    layers = separate_intensity(turned, model).layers
    for name in ("upper_mask", "lower_mask"):
        expected = cv2.warpAffine(getattr(upright, name).astype(np.uint8), turn, (256, 256), flags=cv2.INTER_NEAREST) > 0
        found = getattr(layers, name)
        assert 2 * (expected & found).sum() / (expected.sum() + found.sum()) > 0.965, name
    assert np.allclose(layers.attenuation(), intensity_to_attenuation(turned), rtol=SUM_RTOL, atol=1e-6)
    # a joint that leans as real crops do is separated once, as the network sees it
    monkeypatch.setattr(infer, "STRAIGHTEN_ABOVE_DEG", float("inf"))
    once = separate_intensity(crop, model).layers
    for name in ("soft", "upper", "lower", "upper_mask", "lower_mask"):
        assert np.array_equal(getattr(once, name), getattr(upright, name)), name


def test_a_crop_is_judged_unsure_over_its_picture_alone():
    """The undecided share was taken over the whole array, padding and fill (soft tissue by
    construction) included: a crop turned by 45 deg on a canvas that keeps it whole has half its
    pixels in the corners, and real crops so turned (mask Dice 0.73 / 0.84) were not warned about
    (0 of 23)."""
    turn = cv2.getRotationMatrix2D((127.5, 127.5), 45, 1)
    turn[:, 2] += 53.0
    turned = cv2.warpAffine(_phantom_crop(3), turn, (362, 362))
    model = load_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its bones come out swapped, and are put back
        separation = separate_intensity(turned, model)
    undecided = np.zeros(turned.shape, bool)
    for probability in (separation.upper_probability, separation.lower_probability):
        undecided |= (probability > 0.2) & (probability < 0.8)
    picture = ~find_fill(turned)
    assert undecided_fraction(separation) == pytest.approx(undecided.sum() / picture.sum())
    assert undecided_fraction(separation) > UNSURE_FRACTION > undecided.mean()
    with pytest.warns(UserWarning, match="network is unsure"):
        warn_if_doubtful(turned, separation, model, None, "turned")


def test_a_crop_framing_more_or_less_than_a_joint_is_warned_about():
    """A 2048 px crop separated at 0.175 mm/px (358 mm across) gave an upper mask of Dice 0.26,
    and a 256 px crop told 0.5 mm/px (a spacing mistyped) masks in fragments, both without a word."""
    model = load_model()
    wide = np.full((48, 1040), 0.3)
    with pytest.warns(UserWarning, match=r"1040x48 px crop taken at 0.175 mm/px would be 182 mm across; give its pixel"):
        separate_intensity(wide, model)
    with pytest.warns(UserWarning, match=r"1040x48 px crop at 0.12 mm/px frames 125 mm, more than a joint's crop "
                                         r"\(up to 120 mm\); is its pixel spacing right"):
        separate_intensity(wide, model, pixel_spacing_mm=0.12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        separate_intensity(wide, model, pixel_spacing_mm=0.05)
        separate_intensity(synthetic_joint(96)[0] / 255.0, model)
    # and one framing less than a joint: a 40 px crop at the default spacing was warned about
    # only as 'inverted'
    tiny = synthetic_joint(96)[0][28:68, 28:68] / 255.0
    with pytest.warns(UserWarning, match=r"40x40 px crop taken at 0.175 mm/px would be 7\.0 mm across, less than a "
                                         r"joint; give its pixel spacing"):
        separate_intensity(tiny, model)
    with pytest.warns(UserWarning, match=r"96x96 px crop at 0.05 mm/px frames 4\.8 mm, less than a joint's crop "
                                         r"\(15 mm or more\); is its pixel spacing right"):
        separate_intensity(synthetic_joint(96)[0] / 255.0, model, pixel_spacing_mm=0.05)


def test_a_crops_soft_tissue_layer_beside_it_is_no_crop(tmp_path):
    """A finger-joint folder keeps each crop's soft-tissue layer beside it (``ID_soft.jpg``):
    separated as a crop, a series folder gave twice its visits, bones found in soft tissue."""
    for name in ("a.jpg", "a_soft.jpg", "b.png", "b_soft.png", "lonely_soft.png"):
        write_bytes_atomic(tmp_path / name, encode_png(synthetic_joint(64, 1)[0]))
    assert [path.name for path in folder_crops(tmp_path)] == ["a.jpg", "b.png", "lonely_soft.png"]


def test_separate_takes_one_path_as_one_crop_and_names_a_stored_dtype(tmp_path):
    # a single string was read as a list of its characters ("another input has the same name ''"),
    # and a uint8 crop was refused only as "intensities must lie in [0, 1]"
    from jsnsynth.lsn.infer import separate_files

    crop = tmp_path / "a.png"
    write_bytes_atomic(crop, encode_png(synthetic_joint(64, 1)[0]))
    with pytest.raises(InputError, match="^2 names for 1 crops$"):
        separate_files(str(crop), tmp_path / "out", names=["a", "b"])
    with pytest.raises(InputError, match=r"intensities must lie in \[0, 1\] \(a uint8 array: divide by its full scale"):
        separate_intensity(synthetic_joint(64, 1)[0])


def test_separate_names_stay_inside_the_output_folder(tmp_path):
    # names=["../escaped"] or an absolute path wrote the crop's files outside out_dir
    from jsnsynth.lsn.infer import separate_files

    crop = tmp_path / "a.png"
    write_bytes_atomic(crop, encode_png(synthetic_joint(64, 1)[0]))
    for name in ("../escaped", str(tmp_path / "abs"), "", ".", "a/.", "a/", "a//b"):
        with pytest.raises(InputError, match="must be a path inside the output folder"):
            separate_files([crop], tmp_path / "out" / "g", names=[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_crops_two_folders_down_are_said_to_be_left_out(tmp_path):
    # site/joint/visit.png beside site/joint2/visit.png was read; site/patient/joint/visit.png
    # was left out without a word
    from jsnsynth.lsn.infer import folder_tree_crops

    write_bytes_atomic(tmp_path / "joint2" / "v0.png", encode_png(synthetic_joint(64, 0)[0]))
    assert [(p.name, f) for p, f in folder_tree_crops(tmp_path)] == [("v0.png", "joint2")]
    # drawn masks two levels down are no crops: nothing to say of them
    write_bytes_atomic(tmp_path / "joint2" / "masks" / "v0_upper.png",
                       encode_png(np.where(synthetic_joint(64, 0)[2], 255, 0).astype(np.uint8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [(p.name, f) for p, f in folder_tree_crops(tmp_path)] == [("v0.png", "joint2")]
    write_bytes_atomic(tmp_path / "patient" / "joint" / "v0.png", encode_png(synthetic_joint(64, 1)[0]))
    write_bytes_atomic(tmp_path / "patient" / "joint" / "v1.png", encode_png(synthetic_joint(64, 2)[0]))
    with pytest.warns(UserWarning, match=r"1 folder\(s\) two levels inside .* hold images, which are not read \(first: "
                                         r"patient/joint\)"):
        assert [(p.name, f) for p, f in folder_tree_crops(tmp_path)] == [("v0.png", "joint2")]


def test_a_mask_given_as_a_crop_is_refused_before_writing(tmp_path, capsys):
    """A mask named as a crop was separated into "bones", with warnings, and exit 0 (an outside
    probe); a folder's masks are left out of its crops (folder_tree_crops)."""
    write_bytes_atomic(tmp_path / "a.jpg", encode_png(synthetic_joint(64, 1)[0]))
    mask = tmp_path / "masks" / "upper.png"
    mask.parent.mkdir()
    write_bytes_atomic(mask, encode_png(np.where(synthetic_joint(64, 1)[2], 255, 0).astype(np.uint8)))
    assert main(["separate", str(tmp_path / "a.jpg"), str(mask), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"jsnsynth: error: {mask}: holds two values only, as a mask does, not a radiograph crop"]
    assert not (tmp_path / "out").exists()


def test_separate_takes_the_crops_of_a_folder(tmp_path, capsys):
    """A folder given to `separate` was refused as 'not a file'."""
    crops = tmp_path / "crops"
    for seed in range(2):
        write_bytes_atomic(crops / f"joint{seed}.png", encode_png(synthetic_joint(96, seed)[0]))
    (crops / "notes.txt").write_text("not a crop")
    assert main(["separate", str(crops), "--out", str(tmp_path / "out")]) == 0
    assert "wrote 2 separation(s)" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").glob("*_panel.png")} == {"joint0_panel.png", "joint1_panel.png"}
    # run on a folder that holds its own outputs, it takes the crops alone
    for path in (tmp_path / "out").iterdir():
        path.rename(crops / path.name)
    assert main(["separate", str(crops), "--out", str(tmp_path / "again")]) == 0
    assert "wrote 2 separation(s)" in capsys.readouterr().out
    # a crop merely named like an output (no other output of its stem beside it) is a crop
    write_bytes_atomic(crops / "joint2_panel.png", encode_png(synthetic_joint(96, 2)[0]))
    assert main(["separate", str(crops), "--out", str(tmp_path / "third")]) == 0
    assert "wrote 3 separation(s)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["separate", str(tmp_path / "empty"), "--out", str(tmp_path / "out2")]) == 1
    assert "empty: holds no radiograph crops" in capsys.readouterr().err


def test_separate_takes_the_radiographs_of_jsnsynth_phantoms_output(tmp_path, capsys):
    """`jsnsynth phantom`'s folder given to `separate` (or the lsn source) had its samples' layer
    files taken as crops: the run stopped on the first ('lower.tiff: floating-point images must
    hold intensities in [0, 1]')."""
    assert main(["phantom", "--n", "2", "--size", "128", "--pixel-spacing", "0.35", "--out", str(tmp_path / "ph")]) == 0
    capsys.readouterr()
    out = tmp_path / "layers"
    assert main(["separate", str(tmp_path / "ph"), "--pixel-spacing", "0.35", "--out", str(out)]) == 0
    assert "wrote 2 separation(s)" in capsys.readouterr().out
    panels = sorted(str(p.relative_to(out)) for p in out.rglob("*_panel.png"))
    assert panels == ["phantom_00000/radiograph_panel.png", "phantom_00001/radiograph_panel.png"]
    # a folder that merely holds files of those names beside others is read as ever
    assert [p.name for p in folder_crops(tmp_path / "ph" / "phantom_00000")] == ["radiograph.png"]
    (tmp_path / "ph" / "phantom_00000" / "record.json").unlink()
    assert "lower.tiff" in [p.name for p in folder_crops(tmp_path / "ph" / "phantom_00000")]


def test_separate_takes_a_folder_of_joints_visits_into_sub_folders(tmp_path, capsys):
    """A folder whose sub-folders hold each joint's visits (as the lsn dataset source reads one)
    was refused as holding no crops; and the drawn masks beside the crops were separated as crops
    (each a network pass, then refused as having no bone)."""
    crops = tmp_path / "study"
    for joint, seeds in (("jointA", (1, 2)), ("jointB", (3,))):
        for seed in seeds:
            image, _, upper_mask, _ = synthetic_joint(96, seed)
            write_bytes_atomic(crops / joint / f"visit{seed}.png", encode_png(image))
            write_bytes_atomic(crops / joint / f"visit{seed}_mask_upper.png", encode_png(upper_mask.astype(np.uint8) * 255))
    (crops / ".hidden").mkdir()
    write_bytes_atomic(crops / ".hidden" / "skip.png", encode_png(synthetic_joint(96, 4)[0]))
    out = tmp_path / "layers"
    assert main(["separate", str(crops), "--out", str(out)]) == 0
    assert "wrote 3 separation(s)" in capsys.readouterr().out
    panels = sorted(str(p.relative_to(out)) for p in out.rglob("*_panel.png"))
    assert panels == ["jointA/visit1_panel.png", "jointA/visit2_panel.png", "jointB/visit3_panel.png"]
    assert sorted(p.name for p in (out / "jointA").iterdir()) == sorted(output_names("visit1") + output_names("visit2"))
    assert main(["separate", str(crops), "--out", str(out)]) == 0  # run again: resumed, nothing redone
    assert "wrote 0 separation(s) to" in capsys.readouterr().out
    # the same file name in two joints' folders is two crops, not a collision
    write_bytes_atomic(crops / "jointB" / "visit1.png", encode_png(synthetic_joint(96, 5)[0]))
    assert main(["separate", str(crops), "--out", str(out)]) == 0
    assert "wrote 1 separation(s) to" in capsys.readouterr().out
    assert (out / "jointB" / "visit1_panel.png").is_file() and (out / "jointA" / "visit1_panel.png").is_file()
    # a folder with crops of its own leaves its sub-folders alone, as before (a colour photo in notes/)
    own = tmp_path / "own"
    write_bytes_atomic(own / "single.png", encode_png(synthetic_joint(96, 0)[0]))
    (own / "notes").mkdir()
    cv2.imwrite(str(own / "notes" / "photo.png"), np.dstack([np.zeros((40, 40), np.uint8), np.full((40, 40), 200, np.uint8), np.zeros((40, 40), np.uint8)]))
    assert main(["separate", str(own), "--out", str(tmp_path / "own_layers")]) == 0
    assert "wrote 1 separation(s)" in capsys.readouterr().out


def test_the_panel_titles_its_tiles():
    """The panel's six tiles had no titles: which was the soft layer, which the recomposition, a
    reader had to guess."""
    from jsnsynth.lsn.infer import PANEL_TITLES, panel_image

    crop = synthetic_joint(96)[0] / 255.0
    panel = panel_image(crop, separate_intensity(crop, load_model()))
    strip = panel.shape[0] - crop.shape[0]
    assert strip > 0 and panel.shape[1] == 6 * crop.shape[1] + 5 * 4 and len(PANEL_TITLES) == 6
    for k in range(6):  # each tile's strip holds dark text on white
        title = panel[:strip, k * (crop.shape[1] + 4): k * (crop.shape[1] + 4) + crop.shape[1]]
        assert title.min() < 128 and np.median(title) == 255
