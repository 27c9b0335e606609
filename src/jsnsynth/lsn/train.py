"""Training of the Layer Separation Network from a JSON config (``jsnsynth lsn train``).

The run is deterministic given the config's seed (and the same torch thread count): the model's
initial weights come from ``torch.manual_seed(seed)`` and example ``k`` of the stream from
``SeedSequence([seed, k])`` (:func:`jsnsynth.lsn.data.make_batch`). It checkpoints every
``checkpoint_every`` steps (atomically) and resumes from the last checkpoint when started again
with the same output folder; ``log.csv`` gets one row per logged step.

Losses, per layer and on the masks (:func:`separation_loss`):

* attenuation L1 of the three layers against the targets (fractions x input attenuation);
* L1 of the layers' horizontal and vertical differences (gradient loss: sharp bone edges in the
  bone layers, none in the soft layer);
* bone masks: binary cross-entropy + soft Dice;
* a smoothness prior on the soft layer over and around the bones (:func:`soft_roughness`);
* the same at 1/4 and 1/2 size (deep supervision) with half weight.

The mask loss is down-weighted near the hand-drawn mask edges (see :mod:`jsnsynth.lsn.data`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jsnsynth.errors import InputError, OutputError
from jsnsynth.lsn.data import (
    MixConfig,
    build_real_cache,
    make_batch,
    make_pool,
    render_phantom_pool,
)
from jsnsynth.lsn.model import (
    SIZE_MULTIPLE,
    LayerSeparationNet,
    ModelConfig,
    compose_fractions,
    intensity_attenuation,
    layers_from_fractions,
    normalise_intensity,
)
from jsnsynth.synth.io import check_output_folder, check_outputs_apart, check_writable, make_output_folder

LOG_COLUMNS = ("step", "loss", "layer", "gradient", "mask", "smooth", "lr", "seconds")


@dataclass(frozen=True)
class LossWeights:
    """Relative weights of the loss terms."""

    layer: float = 1.0
    gradient: float = 1.0
    mask_bce: float = 0.5
    mask_dice: float = 0.5
    soft_smooth: float = 0.5
    aux: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (the committed JSON config).

    Relative paths are taken from the current folder (the repository root).

    Attributes:
        seed: base seed of the model initialisation and of the example stream.
        steps: optimiser steps.
        batch_size: examples per step.
        lr: peak learning rate (AdamW), reached after ``warmup_steps``, cosine decay to 5 %.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up.
        fingerjoints: the real finger-joint folder ("" for none: phantoms alone); a folder that
            does not exist is an error.
        cache: the ``.npz`` cache of the decoded real crops (gitignored location).
        n_phantoms: phantoms rendered into the pool (0: none; none either when the phantom
            module is missing).
        checkpoint_every: steps between checkpoints (and log rows).
        threads: torch CPU threads (0: torch's default).
        model: :class:`ModelConfig` record.
        mix: :class:`MixConfig` record.
        loss: :class:`LossWeights` record.
    """

    seed: int = 0
    steps: int = 4000
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    fingerjoints: str = "../shared/data/fingerjoints"
    cache: str = "runs/lsn/real_cache.npz"
    n_phantoms: int = 200
    checkpoint_every: int = 100
    threads: int = 0
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())
    mix: dict = field(default_factory=lambda: asdict(MixConfig()))
    loss: dict = field(default_factory=lambda: asdict(LossWeights()))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a JSON config; unknown keys are an error (typos must not pass silently), and so are
        values out of their range (:func:`config_value_problem`)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such config file")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a JSON text file (not UTF-8)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: the config must be a JSON object")
        unknown = sorted(set(record) - set(cls.__dataclass_fields__) - {"comment"})
        # the nested records too: their readers drop unknown keys (a weights file of another
        # version still loads), so a typo there trained with the default without a word
        for key, kind in (("model", ModelConfig), ("mix", MixConfig), ("loss", LossWeights)):
            if key in record and not isinstance(record[key], dict):
                raise InputError(f"{path}: '{key}' must be a JSON object")
            unknown += sorted(f"{key}.{name}" for name in set(record.get(key, {})) - set(kind.__dataclass_fields__))
        if unknown:
            raise InputError(f"{path}: unknown config key(s) {', '.join(unknown)}")
        record.pop("comment", None)
        try:
            return cls(**record)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def __post_init__(self) -> None:
        problem = config_value_problem(asdict(self))
        if problem:
            raise InputError(problem)

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return asdict(self)


def _is_int(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value: object, least: float, most: float = math.inf, above: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value > least if above else value >= least) and value <= most


def _is_range(value: object, least: float) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v, least) for v in value)
            and value[0] <= value[1])


def config_value_problem(record: dict) -> str | None:
    """What is wrong with the values of a training config record (its keys already checked),
    or None. A config of ``"steps": -1`` trained nothing and wrote the untrained network as
    weights; ``"p_real": 2`` or a NaN learning rate trained on a mix or a rate that means nothing."""
    checks = {
        "seed": (lambda v: _is_int(v, 0), "an integer >= 0"),
        "steps": (lambda v: _is_int(v, 1), "an integer >= 1"),
        "batch_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
        "lr": (lambda v: _is_number(v, 0.0, above=True), "a number > 0"),
        "weight_decay": (lambda v: _is_number(v, 0.0), "a number >= 0"),
        "warmup_steps": (lambda v: _is_int(v, 0), "an integer >= 0"),
        "fingerjoints": (lambda v: isinstance(v, str), 'a folder name ("" for none)'),
        "cache": (lambda v: isinstance(v, str) and bool(v.strip()), "a file name"),
        "n_phantoms": (lambda v: _is_int(v, 0), "an integer >= 0"),
        "checkpoint_every": (lambda v: _is_int(v, 1), "an integer >= 1"),
        "threads": (lambda v: _is_int(v, 0), "an integer >= 0"),
    }
    for key, (check, text) in checks.items():
        if key in record and not check(record[key]):
            return f"'{key}' must be {text}, got {json.dumps(record[key])}"
    mix = record.get("mix", {})
    mix_checks = {
        "crop_px": (lambda v: _is_int(v, SIZE_MULTIPLE) and v % SIZE_MULTIPLE == 0 and v <= 256,
                    f"a multiple of {SIZE_MULTIPLE} from {SIZE_MULTIPLE} to 256"),
        **{name: (lambda v: _is_number(v, 0.0, 1.0), "a probability in [0, 1]")
           for name in ("p_real", "p_overlap", "p_phantom", "p_restyle")},
        "overlap_px": (lambda v: _is_range(v, 0.0), "a [low, high] range of pixels >= 0"),
        "attenuation_scale": (lambda v: _is_range(v, 0.0) and v[0] > 0, "a [low, high] range of factors > 0"),
        "soft_reference": (lambda v: v in ("dataset", "smooth"), '"dataset" or "smooth"'),
    }
    for key, (check, text) in mix_checks.items():
        if key in mix and not check(mix[key]):
            return f"'mix.{key}' must be {text}, got {json.dumps(mix[key])}"
    kinds = {**asdict(MixConfig()), **mix}
    if not any(kinds[name] > 0 for name in ("p_real", "p_overlap", "p_phantom")):
        return "'mix' draws no example: p_real, p_overlap and p_phantom are all 0"
    for key, value in record.get("loss", {}).items():
        if not _is_number(value, 0.0):
            return f"'loss.{key}' must be a weight >= 0, got {json.dumps(value)}"
    levels = {"encoder_channels": len(ModelConfig().encoder_channels), "decoder_channels": len(ModelConfig().decoder_channels)}
    for key, value in record.get("model", {}).items():
        if not (isinstance(value, (list, tuple)) and len(value) == levels[key] and all(_is_int(v, 1) for v in value)):
            return f"'model.{key}' must be a list of {levels[key]} channel counts >= 1, got {json.dumps(value)}"
    return None


def soft_dice_loss(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - Dice`` per image and channel, averaged (soft Dice on probabilities)."""
    dims = (-2, -1)
    overlap = (probabilities * targets).sum(dims)
    total = probabilities.sum(dims) + targets.sum(dims)
    return (1.0 - (2.0 * overlap + 1.0) / (total + 1.0)).mean()


def scale_loss(
    share_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    batch: dict,
    weights: LossWeights,
    pixel_scale: float = 1.0,
) -> dict:
    """The loss terms at one scale (targets already at the logits' size; ``pixel_scale``: the
    size of one of its pixels in full-size pixels, which scales the bone gate's band)."""
    attenuation = batch["attenuation"]
    fractions = compose_fractions(share_logits, torch.sigmoid(mask_logits), pixel_scale)
    layers = layers_from_fractions(fractions, attenuation)
    targets = layers_from_fractions(batch["fractions"], attenuation)
    # Normalise by each image's mean attenuation so exposure does not change the loss scale.
    norm = attenuation.mean(dim=(1, 2, 3), keepdim=True).clamp_min(0.05)
    error = (layers - targets) / norm
    # The layer targets are continuous across the mask edges (the rims belong to the bones), so
    # they are trusted everywhere; only the mask loss down-weights the drawn edges.
    weight = batch["weight"]
    layer = error.abs().mean()
    gradient = 0.5 * ((error[..., :, 1:] - error[..., :, :-1]).abs().mean() + (error[..., 1:, :] - error[..., :-1, :]).abs().mean())
    bce = F.binary_cross_entropy_with_logits(mask_logits, batch["masks"], weight=weight.expand_as(mask_logits))
    dice = soft_dice_loss(torch.sigmoid(mask_logits), batch["masks"])
    smooth = soft_roughness(layers[:, :1] / norm, batch["masks"])
    total = (
        weights.layer * layer
        + weights.gradient * gradient
        + weights.mask_bce * bce
        + weights.mask_dice * dice
        + weights.soft_smooth * smooth
    )
    return {"loss": total, "layer": layer, "gradient": gradient, "mask": bce + dice, "smooth": smooth}


def soft_roughness(soft: torch.Tensor, masks: torch.Tensor, margin_px: int = 6) -> torch.Tensor:
    """Mean ``|Laplacian|`` of the soft layer over the bones and a margin around them.

    Soft tissue is smooth; the mask-based references are not (bright cortical rims where a
    hand-drawn mask sits inside the bone edge, a step where the inpainting is too dark). This
    prior makes the network put rims and trabecular texture into the bone layers instead.
    """
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=soft.device).view(1, 1, 3, 3)
    laplacian = F.conv2d(F.pad(soft, (1, 1, 1, 1), mode="replicate"), kernel)
    region = F.max_pool2d(masks.amax(dim=1, keepdim=True), 2 * margin_px + 1, stride=1, padding=margin_px)
    return (laplacian.abs() * region).sum() / region.sum().clamp_min(1.0)


def _downsample_batch(batch: dict, size: tuple[int, int]) -> dict:
    pool = lambda t: F.adaptive_avg_pool2d(t, size)  # noqa: E731 - exact mean over 2^k blocks
    return {
        "attenuation": pool(batch["attenuation"]),
        "fractions": pool(batch["fractions"]),
        "masks": pool(batch["masks"]),
        "weight": pool(batch["weight"]),
    }


def separation_loss(outputs: dict, batch: dict, weights: LossWeights) -> dict:
    """Full loss: the full-size terms plus ``weights.aux`` x the mean of the deep-supervision terms."""
    terms = scale_loss(outputs["share_logits"], outputs["mask_logits"], batch, weights)
    for share_logits, mask_logits in outputs["aux"]:
        small = _downsample_batch(batch, tuple(share_logits.shape[-2:]))
        aux = scale_loss(share_logits, mask_logits, small, weights, batch["image"].shape[-1] / share_logits.shape[-1])
        for key in terms:
            terms[key] = terms[key] + weights.aux * aux[key] / len(outputs["aux"])
    return terms


def batch_to_tensors(arrays: dict, device: torch.device) -> dict:
    """numpy batch (:func:`make_batch`) -> tensors, with the input attenuation added."""
    batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    batch["attenuation"] = intensity_attenuation(batch["image"])
    return batch


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 5 % of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _atomic_torch_save(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.part")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: What a run folder holds (``train``): it is refused as ``--out`` when it holds anything else.
RUN_FILES = ("config.json", "checkpoint.pt", "log.csv", "weights.pt", "phantom_pool.npz")


def check_run_outputs(out_dir: str | os.PathLike, export: str | os.PathLike | None = None,
                      keep: tuple[str | os.PathLike, ...] = ()) -> None:
    """Refuse, before any training, a run folder and export path that cannot be written or would
    overwrite something: a folder of other files that holds no run (a user's own ``log.csv`` was
    overwritten), and an export onto one of ``keep`` (the config, the real crops' cache), a file
    of the run, a folder or an unwritable place (found only after the training, an hour later,
    with a raw exception and a ``.part`` file left).

    Args:
        out_dir: the run folder; one holding a run (its ``config.json``) may hold other files.
        export: the extra weights path, or None.
        keep: files the run reads (the config, ``config.cache``), which may lie in ``out_dir``.

    Raises:
        OutputError: naming the path and what is wrong with it.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    if out_dir.is_dir() and not (out_dir / "config.json").is_file():
        known = {Path(os.path.realpath(path)) for path in (*keep, *([export] if export is not None else []))}
        others = sorted(entry.name for entry in out_dir.iterdir()
                        if entry.name not in RUN_FILES and not entry.name.startswith(".")
                        and Path(os.path.realpath(entry)) not in known)
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise OutputError(f"{out_dir}: holds {others[0]}{more} and no run of 'lsn train' ({', '.join(RUN_FILES)}); "
                              "use a new or empty --out")
    if export is not None:
        check_outputs_apart([export], [*keep, *(out_dir / name for name in RUN_FILES if name != "weights.pt")])
        check_writable(export)


def export_weights(model: LayerSeparationNet, path: str | os.PathLike, record: dict) -> Path:
    """Write the inference weights: float16 state dict + model config + a training record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {"format": "jsnsynth-lsn-1", "model": model.config.to_dict(), "state_dict": state, "training": record}
    _atomic_torch_save(payload, path)
    return path


def build_pool(config: TrainConfig, out_dir: Path):
    """The training pool: real training-split crops from the cache, plus the phantom pool.

    Raises:
        InputError: the config names a finger-joint folder that does not exist (run from
            elsewhere, the default config trained on phantoms alone without a word), or it has
            neither real crops nor phantoms.
    """
    real = None
    indices = np.zeros(0, dtype=int)
    if config.fingerjoints:
        folder = Path(config.fingerjoints)
        if not folder.is_dir():
            where = ("" if folder.is_absolute()
                     else f", taken from {Path.cwd()}: run from the repository root with ../shared beside it")
            raise InputError(f"{config.fingerjoints}: no such finger-joint folder (the config's fingerjoints{where}); "
                             'set "fingerjoints": "" to train on phantoms alone')
        real = build_real_cache(config.fingerjoints, config.cache)
        indices = real.indices(heldout=False)
    elif config.n_phantoms == 0:
        raise InputError("the config has neither real crops (fingerjoints) nor phantoms (n_phantoms): nothing to train on")
    phantoms = []
    if config.n_phantoms > 0:
        phantom_cache = out_dir / "phantom_pool.npz"
        if phantom_cache.is_file():
            with np.load(phantom_cache) as data:
                phantoms = [tuple(data[f"p{k}_{i}"] for i in range(5)) for k in range(int(data["count"]))]
        else:
            phantoms = render_phantom_pool(config.n_phantoms, config.seed + 1)
            if phantoms:
                arrays = {f"p{k}_{i}": a for k, p in enumerate(phantoms) for i, a in enumerate(p)}
                tmp = phantom_cache.with_name(".phantom_pool.part.npz")
                np.savez(tmp, count=len(phantoms), **arrays)
                os.replace(tmp, phantom_cache)
    return make_pool(real, indices, phantoms)


def train(config: TrainConfig, out_dir: str | os.PathLike, export: str | os.PathLike | None = None,
          progress: bool = True, pool=None, config_path: str | os.PathLike | None = None) -> Path:
    """Train (or resume) a model; return the path of the exported weights.

    Args:
        config: the run's configuration.
        out_dir: folder for ``checkpoint.pt``, ``log.csv``, ``config.json``, ``weights.pt``.
        export: also write the final weights here (e.g. the bundled weights file).
        progress: show a tqdm progress bar.
        pool: a ready :class:`~jsnsynth.lsn.data.ExamplePool` (tests); built from the config
            otherwise.
        config_path: the file the config was read from, which the export must not replace.

    Raises:
        InputError: no training data, or an output folder holding another config's run.
        OutputError: see :func:`check_run_outputs`.
    """
    from tqdm import tqdm

    check_run_outputs(out_dir, export, keep=(config.cache, *([config_path] if config_path is not None else [])))
    out_dir = make_output_folder(out_dir)
    config_path = out_dir / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()) != config.to_dict():
        raise InputError(f"{out_dir}: holds a run with a different config; use another --out")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mix = MixConfig.from_dict(config.mix)
    weights = LossWeights(**config.loss)
    if pool is None:
        pool = build_pool(config, out_dir)
    # recorded once the config has been found usable: a run refused for its data left its config
    # behind, and the same command with the data mended was refused as "a different config"
    config_path.write_text(json.dumps(config.to_dict(), indent=2))

    torch.manual_seed(config.seed)
    model = LayerSeparationNet(ModelConfig.from_dict(config.model)).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    checkpoint_path = out_dir / "checkpoint.pt"
    if checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        start = int(checkpoint["step"])
    log_path = out_dir / "log.csv"
    # the log's seconds count the whole run: a resumed run goes on from its last row's
    seconds_before = _truncate_log(log_path, start)

    model.train()
    started = time.time()
    sums = {k: 0.0 for k in ("loss", "layer", "gradient", "mask", "smooth")}
    count = 0
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress, desc="lsn train")
    for step in bar:
        arrays, _ = make_batch(pool, mix, config.seed, step, config.batch_size)
        batch = batch_to_tensors(arrays, device)
        lr = learning_rate(config, step)
        for group in optimiser.param_groups:
            group["lr"] = lr
        outputs = model(normalise_intensity(batch["image"]))
        terms = separation_loss(outputs, batch, weights)
        optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimiser.step()
        for key in sums:
            sums[key] += float(terms[key].detach())
        count += 1
        bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            row = {k: sums[k] / count for k in sums}
            row.update(step=done, lr=lr, seconds=round(seconds_before + time.time() - started, 1))
            _append_log(log_path, row)
            sums = {k: 0.0 for k in sums}
            count = 0
            _atomic_torch_save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": done}, checkpoint_path)
    bar.close()
    record = {"config": config.to_dict(), "steps": config.steps}
    path = export_weights(model, out_dir / "weights.pt", record)
    if export is not None:
        export_weights(model, export, record)
        path = Path(export)
    return path


def _truncate_log(path: Path, step: int) -> float:
    """Keep the log rows up to ``step`` (a resumed run rewrites what came after); return the
    seconds of the last row kept (0 without one)."""
    if not path.is_file():
        return 0.0
    with open(path, newline="") as handle:
        # a row cut short (the process killed as it wrote) is dropped
        rows = [r for r in csv.DictReader(handle) if (done := _log_step(r)) is not None and done <= step]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return float(rows[-1]["seconds"]) if rows else 0.0


def _log_step(row: dict) -> int | None:
    """A log row's step, or None for a row that is not whole."""
    try:
        float(row["seconds"])
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


def _append_log(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in LOG_COLUMNS})
