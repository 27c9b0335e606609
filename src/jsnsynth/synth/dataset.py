"""Dataset builder: labelled baseline/follow-up pairs written as a Hugging Face dataset (Hub layout).

Layout of an output folder (contract 3 of the design)::

    README.md                                  dataset card (YAML front matter + text)
    data/<split>-00000-of-0000n.parquet        config "pairs": one row per pair
    layers/<split>-00000-of-0000n.parquet      config "layers": one row per image, three layers
    .jsnsynth_state.json                       run record: parameters, completed shards
    .jsnsynth_unfinished/{data,layers}/...     shards of a run not yet finished (hidden)

Images are 16-bit PNG bytes encoded here (:func:`jsnsynth.synth.io.encode_png`) inside HF
``Image`` features (``{"bytes", "path": None}``), written without deflate compression because the
zstd-compressed parquet shard compresses them better and faster; masks are 8-bit PNG (0/255). Attenuation layers
are float32 2-D arrays (``Sequence(Sequence(Value("float32")))``), stored exactly.

Determinism. Everything is planned from the seed before any pair is made: the split of every
source joint (train/validation/test by joint, never by pair), the joint of every pair, and the
shards. Pair ``i`` draws everything from ``SeedSequence([seed, i])``, so its bytes do not depend on
the number of worker processes; shards are written in a fixed order with fixed parquet settings
(no timestamps). Each shard is written under a temporary name and renamed when complete; the state
file lists finished shards, so an interrupted run resumes where it stopped.

Nothing half-written. Until the last shard is done, the shards wait in a hidden folder, which
``datasets.load_dataset`` does not look into (it skips hidden paths): an interrupted run's folder
is not a dataset, where it would otherwise load as a smaller one without a word. The finished
shards are then moved into ``data/`` and ``layers/`` (each folder by one rename, pairs first), and
the card is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jsnsynth import __version__
from jsnsynth.errors import InputError, OutputError
from jsnsynth.synth.io import (
    decode_png,
    encode_png,
    held_folder,
    make_output_folder,
    remove_partial_outputs,
    strict_json_value,
    write_bytes_atomic,
)
from jsnsynth.synth.layers import joint_frame_from_masks
from jsnsynth.synth.phantom import PhantomParams
from jsnsynth.synth.pairs import (
    Pair,
    PairConfig,
    PairParams,
    check_followup_joint_in_image,
    make_pair,
    sample_pair_params,
)
from jsnsynth.synth.sources import JointSource
from jsnsynth.synth.xray import ImagingParams, quantize
from jsnsynth.threads import single_threaded
from jsnsynth.workers import check_num_proc, ordered_results

STATE_NAME = ".jsnsynth_state.json"
CARD_NAME = "README.md"
PAIRS_DIR = "data"
LAYERS_DIR = "layers"
#: Shards of a run not yet finished, hidden from ``datasets.load_dataset``.
UNFINISHED_DIR = ".jsnsynth_unfinished"
SPLITS = ("train", "validation", "test")
IMAGING_FIELDS = tuple(ImagingParams.__dataclass_fields__)
#: The columns of a ``pairs`` row that :func:`pair_params_from_row` reads.
IMAGING_COLUMNS = tuple(f"{role}_{name}" for role in ("baseline", "followup") for name in IMAGING_FIELDS)
PAIR_PARAM_COLUMNS = (*(f.name for f in dataclass_fields(PairParams) if not f.name.endswith("_imaging")),
                      *IMAGING_COLUMNS)
#: Bumped when the columns or their meaning change (2: the motion blur's columns).
SCHEMA_VERSION = 2
#: Columns a schema-1 dataset does not have, read as their defaults (no motion blur).
SCHEMA_1_ABSENT_COLUMNS = tuple(f"{role}_{name}" for role in ("baseline", "followup")
                                for name in ("motion_blur_px2", "motion_angle_deg"))


@dataclass(frozen=True)
class DatasetConfig:
    """Every generation parameter of a dataset (recorded in the state file and the card).

    Attributes:
        n_pairs: number of pairs.
        seed: base seed; pair ``i`` uses ``SeedSequence([seed, i])``.
        split_fractions: fractions of *source joints* in train, validation and test.
        shard_size: pairs per parquet shard.
        layers_every: write the ``layers`` rows (both images of the pair) for every
            ``layers_every``-th pair of each shard, starting with its first (so every shard has
            layer rows); 1 for every pair, 0 for no layers config. Default 10: the float32
            layers are 4x the bytes of a pair and most of the writing time.
        pair: ranges of the JSN change and the nuisances.
    """

    n_pairs: int
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    shard_size: int = 100
    layers_every: int = 10
    pair: PairConfig = field(default_factory=PairConfig)

    def __post_init__(self) -> None:
        for name, what, least in (("n_pairs", "number of pairs", 1), ("shard_size", "shard size", 1),
                                  ("layers_every", "layers_every", 0), ("seed", "seed", 0)):
            value = getattr(self, name)
            # a fraction (2.5 pairs) or text failed later with Python's own TypeError
            whole = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)) or (
                isinstance(value, (float, np.floating)) and float(value).is_integer())
            if not whole or value < least:
                raise InputError(f"{what} must be a whole number >= {least}, got {value!r}")
            object.__setattr__(self, name, int(value))  # 10.0 or a numpy integer, recorded as an int
        if not isinstance(self.pair, PairConfig):
            raise InputError(f"pair_config must be a PairConfig, got {type(self.pair).__name__}")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
            raise InputError(f"split fractions must be three numbers >= 0 summing to 1, got {self.split_fractions}")

    def to_dict(self) -> dict:
        """JSON-ready record."""
        return {
            "n_pairs": self.n_pairs,
            "seed": self.seed,
            "split_fractions": list(self.split_fractions),
            "shard_size": self.shard_size,
            "layers_every": self.layers_every,
            "pair": strict_json_value(self.pair.to_dict()),
        }


# ---------------------------------------------------------------------------------------------
# Plan: splits by joint, joint of each pair, shards


@dataclass(frozen=True)
class Shard:
    """One parquet shard: its split, number, count and the global pair indices it holds."""

    split: str
    number: int
    count: int
    indices: tuple[int, ...]

    @property
    def file_name(self) -> str:
        """``<split>-0000i-of-0000n.parquet``."""
        return f"{self.split}-{self.number:05d}-of-{self.count:05d}.parquet"


@dataclass(frozen=True)
class Plan:
    """Deterministic assignment of joints to splits and pairs to joints and shards."""

    joint_of_pair: tuple[str, ...]
    split_of_joint: dict[str, str]
    shards: tuple[Shard, ...]

    def split_of_pair(self, index: int) -> str:
        """Split of pair ``index`` (the split of its joint)."""
        return self.split_of_joint[self.joint_of_pair[index]]


def _plan_rng(seed: int) -> np.random.Generator:
    # a spawn key keeps the planning stream apart from every SeedSequence([seed, i]) of a pair
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x51A7,)))


def plan_dataset(joint_ids: list[str], config: DatasetConfig) -> Plan:
    """Split the joints, give each pair a joint, group pairs into shards (all from the seed).

    Joints are shuffled once; the first ``train`` fraction (rounded, at least one joint) goes to
    train, then validation, then test. Pairs cycle through a second shuffle of the joints, so
    every joint is used about equally often.
    """
    if not joint_ids:
        raise InputError("the source has no joints")
    if len(set(joint_ids)) != len(joint_ids):
        raise InputError("the source lists a joint id more than once")
    rng = _plan_rng(config.seed)
    n = len(joint_ids)
    shuffled = [joint_ids[i] for i in rng.permutation(n)]
    n_val = int(round(config.split_fractions[1] * n))
    n_test = int(round(config.split_fractions[2] * n))
    n_train = n - n_val - n_test
    while n_train < 1 and config.split_fractions[0] > 0 and (n_test or n_val):
        # too few joints for the fractions: train keeps at least one
        if n_test:
            n_test -= 1
        else:
            n_val -= 1
        n_train += 1
    split_of_joint = {}
    for k, joint in enumerate(shuffled):
        split_of_joint[joint] = "train" if k < n_train else ("validation" if k < n_train + n_val else "test")
    cycle = [joint_ids[i] for i in rng.permutation(n)]
    joint_of_pair = tuple(cycle[i % n] for i in range(config.n_pairs))
    shards = []
    for split in SPLITS:
        members = [i for i in range(config.n_pairs) if split_of_joint[joint_of_pair[i]] == split]
        count = math.ceil(len(members) / config.shard_size)
        for number in range(count):
            chunk = members[number * config.shard_size : (number + 1) * config.shard_size]
            shards.append(Shard(split, number, count, tuple(chunk)))
    return Plan(joint_of_pair, split_of_joint, tuple(shards))


def warn_empty_splits(plan: Plan, config: DatasetConfig) -> None:
    """A one-line warning for each split asked for (a fraction above 0) that gets no pairs: too
    few source joints for the fractions, or too few pairs to reach the split's joints."""
    n_joints = len(plan.split_of_joint)
    for split, fraction in zip(SPLITS, config.split_fractions):
        if fraction > 0 and not any(shard.split == split for shard in plan.shards):
            joints = sum(s == split for s in plan.split_of_joint.values())
            reason = (f"{n_joints} source joint(s) are too few for the split fractions" if not joints else
                      f"none of the {config.n_pairs} pairs falls on its {joints} joint(s)")
            warnings.warn(f"split '{split}' gets no pairs ({reason}); splits group source joints, never pairs",
                          stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Features (columns)


#: Column kinds: a HF ``Value`` dtype, ``"image"`` (HF ``Image``: PNG bytes) or ``"layer"`` (a float32
#: 2-D array, HF ``List(List(Value("float32")))``). The builder works from these plain lists, so
#: writing a dataset never imports ``datasets`` (a 2-3 s import, longer than a small run).
Columns = list[tuple[str, str]]


def pair_columns() -> Columns:
    """``(name, kind)`` of every column of the ``pairs`` config, in order."""
    columns = [("pair_id", "string"), ("index", "int64"), ("source", "string"), ("joint_id", "string"), ("split", "string")]
    columns += [(name, "image") for name in (
        "baseline", "followup", "baseline_clean", "followup_clean",
        "baseline_upper_mask", "baseline_lower_mask", "followup_upper_mask", "followup_lower_mask",
    )]
    columns += [("height", "int32"), ("width", "int32")]
    columns += [(name, "float64") for name in (
        "pixel_spacing_mm", "jsn_px", "jsn_mm", "joint_center_x", "joint_center_y", "joint_axis_deg",
    )]
    for bone in ("upper", "lower"):
        columns += [(f"{bone}_{name}", "float64") for name in ("scale", "angle_deg", "dx", "dy")]
    columns += [(name, "float64") for name in (
        "upper_flexion_deg", "lower_flexion_deg", "global_scale", "global_angle_deg", "global_dx", "global_dy",
    )]
    for role in ("baseline", "followup"):
        columns += [(f"{role}_{name}", _imaging_kind(name)) for name in IMAGING_FIELDS]
    columns.append(("source_metadata", "string"))
    return columns


def layer_columns() -> Columns:
    """``(name, kind)`` of every column of the ``layers`` config (one row per image), in order."""
    columns = [(name, "string") for name in ("image_id", "pair_id", "role", "source", "joint_id", "split")]
    columns += [("image", "image"), ("image_clean", "image")]
    columns += [("soft", "layer"), ("upper", "layer"), ("lower", "layer")]
    columns += [("upper_mask", "image"), ("lower_mask", "image")]
    columns += [(name, "float64") for name in ("pixel_spacing_mm", "joint_center_x", "joint_center_y", "joint_axis_deg")]
    columns += [(name, _imaging_kind(name)) for name in IMAGING_FIELDS]
    return columns


def _imaging_kind(name: str) -> str:
    return "int64" if name == "noise_seed" else "float64"


def _hf_feature(kind: str):
    from datasets import Image, List, Value

    if kind == "image":
        return Image()
    if kind == "layer":
        return List(List(Value("float32")))
    return Value(kind)


def pair_features():
    """HF ``Features`` of the ``pairs`` config, in column order."""
    from datasets import Features

    return Features({name: _hf_feature(kind) for name, kind in pair_columns()})


def layer_features():
    """HF ``Features`` of the ``layers`` config (one row per image), in column order."""
    from datasets import Features

    return Features({name: _hf_feature(kind) for name, kind in layer_columns()})


def features_dict(columns: Columns) -> dict:
    """``Features.to_dict()`` of ``columns``, built without importing ``datasets``."""
    out: dict[str, Any] = {}
    for name, kind in columns:
        if kind == "image":
            out[name] = {"_type": "Image"}
        elif kind == "layer":
            out[name] = {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"}, "_type": "List"}
        else:
            out[name] = {"dtype": kind, "_type": "Value"}
    return out


def features_yaml(columns: Columns) -> list:
    """The dataset card's ``features`` list of ``columns`` (as ``DatasetInfo._to_yaml_dict``)."""
    out = []
    for name, kind in columns:
        if kind == "image":
            out.append({"name": name, "dtype": "image"})
        elif kind == "layer":
            out.append({"name": name, "list": {"list": "float32"}})
        else:
            out.append({"name": name, "dtype": kind})
    return out


# ---------------------------------------------------------------------------------------------
# One pair -> rows (runs in worker processes)


def _png16(display: np.ndarray) -> dict:
    # Stored (uncompressed) PNG: the zstd parquet shard compresses these rows better than PNG's
    # deflate would, at a fifth of the encoding cost (benchmarks/bench_dataset.py).
    return {"bytes": encode_png(quantize(display, 16), compress=False), "path": None}


def _png_mask(mask: np.ndarray) -> dict:
    return {"bytes": encode_png(np.where(mask, 255, 0).astype(np.uint8)), "path": None}


def _imaging_columns(params: ImagingParams, prefix: str) -> dict:
    record = params.to_dict()
    return {f"{prefix}{name}": record[name] for name in IMAGING_FIELDS}


def pair_row(pair: Pair, pair_id: str, index: int, source_name: str, joint_id: str, split: str) -> dict:
    """The ``pairs`` row of one simulated pair (every recorded parameter a column)."""
    base = pair.baseline_layers
    follow = pair.followup_layers
    p = pair.params
    row: dict[str, Any] = {
        "pair_id": pair_id,
        "index": index,
        "source": source_name,
        "joint_id": joint_id,
        "split": split,
        "baseline": _png16(pair.baseline),
        "followup": _png16(pair.followup),
        "baseline_clean": _png16(pair.baseline_clean),
        "followup_clean": _png16(pair.followup_clean),
        "baseline_upper_mask": _png_mask(base.upper_mask),
        "baseline_lower_mask": _png_mask(base.lower_mask),
        "followup_upper_mask": _png_mask(follow.upper_mask),
        "followup_lower_mask": _png_mask(follow.lower_mask),
        "height": base.shape[0],
        "width": base.shape[1],
        "pixel_spacing_mm": base.pixel_spacing_mm,
        "jsn_px": p.jsn_px,
        "jsn_mm": p.jsn_mm,
        "joint_center_x": base.joint_center_xy[0],
        "joint_center_y": base.joint_center_xy[1],
        "joint_axis_deg": base.joint_axis_deg,
    }
    for bone, pose in (("upper", pair.poses.upper), ("lower", pair.poses.lower)):
        row.update({f"{bone}_scale": pose.scale, f"{bone}_angle_deg": pose.angle_deg, f"{bone}_dx": pose.dx, f"{bone}_dy": pose.dy})
    row.update(
        {
            "upper_flexion_deg": p.upper_flexion_deg,
            "lower_flexion_deg": p.lower_flexion_deg,
            "global_scale": p.global_scale,
            "global_angle_deg": p.global_angle_deg,
            "global_dx": p.global_dx,
            "global_dy": p.global_dy,
        }
    )
    row.update(_imaging_columns(p.baseline_imaging, "baseline_"))
    row.update(_imaging_columns(p.followup_imaging, "followup_"))
    row["source_metadata"] = json.dumps(strict_json_value(base.metadata), sort_keys=True)
    return row


def pair_params_from_row(row: Mapping[str, Any]) -> PairParams:
    """The :class:`~jsnsynth.synth.pairs.PairParams` a ``pairs`` row records (its JSN change,
    flexions, repositioning and both imaging chains): with the joint's baseline layers,
    :func:`~jsnsynth.synth.pairs.make_pair` makes the pair again.

    Raises:
        InputError: a row without those columns (of another schema).
    """
    missing = [name for name in PAIR_PARAM_COLUMNS if name not in row and name not in SCHEMA_1_ABSENT_COLUMNS]
    if missing:
        raise InputError(f"the row lacks {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}: "
                         "not a jsnsynth pairs row")
    values = {name: row[name] for name in PAIR_PARAM_COLUMNS if name not in IMAGING_COLUMNS}
    for role in ("baseline", "followup"):
        values[f"{role}_imaging"] = ImagingParams.from_dict(
            {name: row[f"{role}_{name}"] for name in IMAGING_FIELDS if f"{role}_{name}" in row})
    return PairParams(**values)


def layer_rows(pair: Pair, pair_row_: dict) -> list[dict]:
    """The two ``layers`` rows (baseline, follow-up) of one pair, reusing its ``pairs`` row's PNGs."""
    rows = []
    pair_id, source_name, joint_id, split = (pair_row_[k] for k in ("pair_id", "source", "joint_id", "split"))
    for role, layers, imaging in (
        ("baseline", pair.baseline_layers, pair.params.baseline_imaging),
        ("followup", pair.followup_layers, pair.params.followup_imaging),
    ):
        row: dict[str, Any] = {
            "image_id": f"{pair_id}-{role}",
            "pair_id": pair_id,
            "role": role,
            "source": source_name,
            "joint_id": joint_id,
            "split": split,
            "image": pair_row_[role],
            "image_clean": pair_row_[f"{role}_clean"],
            "soft": np.ascontiguousarray(layers.soft, dtype=np.float32),
            "upper": np.ascontiguousarray(layers.upper, dtype=np.float32),
            "lower": np.ascontiguousarray(layers.lower, dtype=np.float32),
            "upper_mask": pair_row_[f"{role}_upper_mask"],
            "lower_mask": pair_row_[f"{role}_lower_mask"],
            "pixel_spacing_mm": layers.pixel_spacing_mm,
            "joint_center_x": pair.baseline_layers.joint_center_xy[0],
            "joint_center_y": pair.baseline_layers.joint_center_xy[1],
            "joint_axis_deg": pair.baseline_layers.joint_axis_deg,
        }
        row.update(_imaging_columns(imaging, ""))
        rows.append(row)
    return rows


def pair_id_of(index: int) -> str:
    """Stable id of pair ``index``."""
    return f"pair-{index:07d}"


#: Least spread of a pair's noise-free image, share of the display range: below it the image is
#: blank (a joint's intensities all below or above the display window drawn), and no method
#: could measure the pair.
MIN_IMAGE_RANGE = 0.01


def simulate_pair(source: JointSource, joint_id: str, index: int, seed: int, config: PairConfig) -> Pair:
    """Load joint ``joint_id`` and simulate pair ``index`` from ``SeedSequence([seed, index])``.

    Raises:
        InputError: the pair options can move the joint out of the image
            (:func:`~jsnsynth.synth.pairs.check_followup_joint_in_image`), or an image of the pair
            comes out blank (see :data:`MIN_IMAGE_RANGE`).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    layers = source.load(joint_id, rng)
    joint_frame = joint_frame_from_masks(layers.upper_mask, layers.lower_mask)
    try:
        check_followup_joint_in_image(config, layers.pixel_spacing_mm, joint_frame[0], layers.upper_mask.shape)
    except InputError as exc:
        raise InputError(f"joint {joint_id}: {exc}") from None
    params = sample_pair_params(rng, layers.pixel_spacing_mm, config)
    renderer = source.render_with_poses if getattr(source, "exact_pose_rendering", False) else None
    pair = make_pair(layers, params, renderer, config.soft_tissue_blend_mm, joint_frame)
    for role in ("baseline", "followup"):
        clean = getattr(pair, f"{role}_clean")
        if float(clean.max() - clean.min()) < MIN_IMAGE_RANGE:
            imaging = getattr(params, f"{role}_imaging")
            intensity = 1.0 - np.exp(-layers.attenuation())
            shade = "black" if float(clean.mean()) < 0.5 else "white"
            raise InputError(
                f"joint {joint_id}: pair {index}'s {role} comes out all {shade} through its display window "
                f"{imaging.window_low:.3f}-{imaging.window_high:.3f} (the joint's intensities span "
                f"{float(intensity.min()):.3f}-{float(intensity.max()):.3f}): no method could measure it"
            )
    return pair


# the job of this process (the builder's, or a worker's): set by _use_job
_WORKER: dict[str, Any] = {}


def _use_job(job: tuple[JointSource, Plan, DatasetConfig]) -> None:
    """Make ``(source, plan, config)`` the job that :func:`_rows_for` computes rows of (in this
    process, or in a worker: :func:`jsnsynth.workers.ordered_results`)."""
    source, plan, config = job
    _WORKER.clear()
    _WORKER.update(source=source, plan=plan, config=config, layer_pairs=layer_pairs(plan, config.layers_every))


def layer_pairs(plan: Plan, layers_every: int) -> frozenset[int]:
    """Indices of the pairs whose images go into the ``layers`` config: every ``layers_every``-th
    pair of each shard, starting with its first (none for 0)."""
    if not layers_every:
        return frozenset()
    return frozenset(i for shard in plan.shards for i in shard.indices[::layers_every])


def _rows_for(index: int) -> tuple[dict, list[dict]]:
    source, plan, config = _WORKER["source"], _WORKER["plan"], _WORKER["config"]
    joint_id = plan.joint_of_pair[index]
    split = plan.split_of_pair(index)
    pair = simulate_pair(source, joint_id, index, config.seed, config.pair)
    row = pair_row(pair, pair_id_of(index), index, source.name, joint_id, split)
    layers = layer_rows(pair, row) if index in _WORKER["layer_pairs"] else []
    return row, layers


# ---------------------------------------------------------------------------------------------
# Parquet writing


def _storage_type(kind: str) -> pa.DataType:
    if kind == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.from_numpy_dtype(np.dtype(kind)) if kind != "string" else pa.string()


def _layer_array(arrays: list[np.ndarray]) -> pa.Array:
    """Nested list array ``list<list<float32>>`` from 2-D arrays of any sizes, without Python
    loops over their rows (crops of other widths in one shard, as an ``lsn:`` folder of a site's
    crops holds, stopped a build that could then never resume)."""
    if not arrays:  # a shard none of whose pairs is a layers pair
        return pa.array([], type=pa.list_(pa.list_(pa.float32())))
    heights = [a.shape[0] for a in arrays]
    row_widths = np.repeat([a.shape[1] for a in arrays], heights)
    flat = pa.array(np.concatenate([a.reshape(-1) for a in arrays]), type=pa.float32())
    inner_offsets = pa.array(np.concatenate([[0], np.cumsum(row_widths)]).astype(np.int32))
    rows = pa.ListArray.from_arrays(inner_offsets, flat)
    outer_offsets = pa.array(np.concatenate([[0], np.cumsum(heights)]).astype(np.int32))
    return pa.ListArray.from_arrays(outer_offsets, rows)


def rows_to_table(rows: list[dict], columns: Columns) -> pa.Table:
    """Arrow table of ``rows`` with the storage types of ``columns`` and their HF metadata."""
    arrays = []
    fields = []
    for name, kind in columns:
        values = [row[name] for row in rows]
        if kind == "layer":
            arrays.append(_layer_array(values))
        elif kind == "image":  # built from its two children: much cheaper than converting dicts
            arrays.append(pa.StructArray.from_arrays(
                [pa.array([v["bytes"] for v in values], pa.binary()), pa.array([v["path"] for v in values], pa.string())],
                fields=list(_storage_type("image")),
            ))
        else:
            arrays.append(pa.array(values, type=_storage_type(kind)))
        fields.append(pa.field(name, arrays[-1].type))
    metadata = {"huggingface": json.dumps({"info": {"features": features_dict(columns)}})}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` with fixed settings (no timestamps) via a temporary name and a rename."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        # zstd level 1: as small as level 3 on these columns (PNG rows, float32 layers) at half
        # the time; byte-stream split makes float32 layers ~25 % smaller and faster to compress.
        compression="zstd",
        compression_level=1,
        use_byte_stream_split=[f"{f.name}.list.element.list.element" for f in table.schema if pa.types.is_list(f.type)] or False,
        row_group_size=64,
        use_dictionary=False,
        write_statistics=False,
        store_schema=True,
    )
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------------------
# State file and output folder checks


def _state_record(source: JointSource, config: DatasetConfig, plan: Plan) -> dict:
    describe = getattr(source, "describe", None)
    content_digest = getattr(source, "content_digest", None)
    digest = {"source_digest": content_digest()} if callable(content_digest) else {}
    return {
        "generator": "jsnsynth",
        "generator_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "source": source.name,
        "source_description": strict_json_value(describe() if callable(describe) else {"source": source.name}),
        "citation": source.citation,
        "config": config.to_dict(),
        "plan_digest": _plan_digest(plan),
        **digest,
    }


def _plan_digest(plan: Plan) -> str:
    text = json.dumps([plan.joint_of_pair, sorted(plan.split_of_joint.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def _read_state(folder: Path, as_input: bool = False) -> dict | None:
    """The run record of ``folder`` (None when it has none).

    Raises:
        OutputError: an unreadable record in an output folder (remove it or choose another);
            ``InputError`` instead when the folder is a dataset being read (``as_input``).
    """
    path = folder / STATE_NAME
    if not path.is_file():
        return None
    error = InputError if as_input else OutputError
    advice = "" if as_input else "; remove the folder or choose another"
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise error(f"{path}: unreadable run record{advice}") from None
    if not isinstance(state, dict):  # valid JSON, but not a record this code wrote
        raise error(f"{path}: not a jsnsynth run record (a JSON {type(state).__name__}, not an object){advice}")
    return state


def _write_state(out_dir: Path, record: dict, completed: list[str], complete: bool) -> None:
    state = dict(record, completed_shards=sorted(completed), complete=complete)
    write_bytes_atomic(out_dir / STATE_NAME, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


def _prepare_output(out_dir: Path, record: dict) -> list[str]:
    """Check the folder is new, empty, or an earlier run of the same dataset; return finished shards."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        make_output_folder(out_dir)
        return []
    state = _read_state(out_dir)
    if state is None:
        raise OutputError(f"{out_dir}: folder holds other files (not a jsnsynth dataset run); choose an empty or new folder")
    earlier = {k: v for k, v in state.items() if k not in ("completed_shards", "complete")}
    # runs recorded before the source's files were digested resume on the parameters alone
    files = "digest" if "source_digest" in earlier else "folder"
    same = _run_identity(earlier, files) == _run_identity(record, files)
    # an earlier run that failed before its first shard (a bad option, an unusable source) left
    # only its record: nothing to keep, so the corrected command may start afresh
    nothing_written = not state.get("completed_shards") and not _pairs_shards_on_disk(out_dir)
    if not same and not nothing_written:
        if files == "digest" and _run_identity(earlier, None) == _run_identity(record, None):
            if state.get("complete"):
                raise OutputError(f"{out_dir}: holds a dataset made from other source files (the source's files "
                                  "changed since); choose a new folder")
            raise OutputError(
                f"{out_dir}: holds a run begun on other source files (the source's files changed since); "
                "resume it on the files it began with, or choose a new folder"
            )
        if earlier.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            # its shards have other columns: a resume would mix them
            raise OutputError(f"{out_dir}: holds a run of dataset schema {earlier.get('schema_version')} (this jsnsynth "
                              f"writes schema {SCHEMA_VERSION}, with other columns); choose a new folder")
        what = _what_differs(_run_identity(earlier, files), _run_identity(record, files))
        then = ("choose a new folder" if state.get("complete")
                else "rerun the command it was begun with to resume it, or choose a new folder")
        raise OutputError(f"{out_dir}: holds a dataset made with other parameters ({what}); {then}")
    for folder in (out_dir, out_dir / UNFINISHED_DIR):
        for sub in (PAIRS_DIR, LAYERS_DIR):
            remove_partial_outputs(folder / sub)
    remove_partial_outputs(out_dir)
    if not same:
        return []
    # a shard waits in the hidden folder until the run ends; a run stopped while the shards were
    # being moved into place (or one of a version that wrote them there at once) has some there
    return [
        name for name in state.get("completed_shards", [])
        if (out_dir / UNFINISHED_DIR / PAIRS_DIR / name).is_file() or (out_dir / PAIRS_DIR / name).is_file()
    ]


def _run_identity(record: dict, files: str | None = "digest") -> dict:
    """What of a run record decides the dataset's bytes, to tell an earlier run of the same
    command: the record less what only describes the run, as the records of earlier versions of
    this release wrote it. The phantom's effective size and spacing (stated since 2026-11-24; a
    choice of them is in its overrides) go, as do overrides at the phantom's defaults (``--size
    256`` makes the dataset that no ``--size`` makes), and a ``jsn_mm`` range that ``jsn_px`` replaced is
    null (earlier records kept it): otherwise an interrupted run of an earlier version was
    refused as 'made with other parameters'.

    ``files`` says what stands for the source's files: ``"digest"`` their digest
    (``source_digest``), not the folder as typed (relative or absolute, or a copy elsewhere: the
    same bytes); ``"folder"`` the folder (records of earlier versions have no digest); None
    neither, to tell a run whose files alone changed."""
    record = json.loads(json.dumps(record))  # a deep copy
    description = record.get("source_description")
    if files != "digest":
        record.pop("source_digest", None)
    if files != "folder" and isinstance(description, dict):
        description.pop("root", None)
    if isinstance(description, dict) and record.get("source") == "phantom":
        description.pop("size_px", None)
        description.pop("pixel_spacing_mm", None)
        overrides = description.get("phantom_overrides")
        if isinstance(overrides, dict):
            # an option given at the phantom's default draws the same dataset as one left out
            for name in ("size_px", "pixel_spacing_mm"):
                if name in overrides and overrides[name] == getattr(PhantomParams, name):
                    del overrides[name]
    pair = record.get("config", {}).get("pair") if isinstance(record.get("config"), dict) else None
    if isinstance(pair, dict) and pair.get("jsn_px") is not None:
        pair["jsn_mm"] = None
    return record


#: The ``jsnsynth dataset`` option behind each entry of a run record that one sets.
_OPTION_OF_ENTRY = {
    "config.n_pairs": "--pairs", "config.seed": "--seed", "config.shard_size": "--shard-size",
    "config.layers_every": "--layers-every", "config.split_fractions": "--split",
    "config.pair.jsn_mm": "--jsn-mm", "config.pair.jsn_px": "--jsn-px", "config.pair.flexion_deg": "--flexion-deg",
    "config.pair.rotation_deg": "--rotation-deg", "config.pair.magnification": "--magnification",
    "config.pair.translation_px": "--translation-px", "config.pair.soft_tissue_blend_mm": "--soft-tissue-blend-mm",
    "config.pair.noise": "--no-noise", "config.pair.imaging.photons_per_px": "--photons-per-px",
    "config.pair.imaging.heel_gain": "--heel-gain", "config.pair.imaging.motion_blur_px2": "--motion-blur-px2",
    "source_description.phantom_overrides.size_px": "--size",
    "source_description.phantom_overrides.pixel_spacing_mm": "--pixel-spacing",
    "source_description.pixel_spacing_mm": "--pixel-spacing",
    "source_description.max_mask_overlap_px": "--max-mask-overlap",
}


def _what_differs(earlier: dict, now: dict) -> str:
    """What sets two runs' records apart, for the refusal to resume into another run's folder:
    the source, else the options that differ with their values (``--seed 1, now 2``), else the
    record's entries by name (what no option sets)."""
    differ = _differing_entries(earlier, now)
    if "source" in differ:
        # the rest (its description, citation, the plan) follows from the source
        return f"source differs: {earlier.get('source')}, now {now.get('source')}"

    def entry(record: Any, name: str) -> Any:
        for key in name.split("."):
            record = record.get(key) if isinstance(record, dict) else None
        return record

    def value(record: dict, name: str) -> str:
        record = entry(record, name)
        if name == "config.pair.noise":
            return "with noise" if record else "--no-noise"
        if isinstance(record, list):
            return " ".join(f"{item:g}" if isinstance(item, float) else str(item) for item in record)
        if record is None:  # the option left out: its value where the record knows it
            default = getattr(PhantomParams, name.rpartition(".")[2], None) if ".phantom_overrides." in name else None
            return "default" if default is None else f"{default:g} (the default)"
        return f"{record:g}" if isinstance(record, float) else str(record)

    options = {}
    for name in differ:
        if name in _OPTION_OF_ENTRY:
            options.setdefault(_OPTION_OF_ENTRY[name], (value(earlier, name), value(now, name)))

    def jsn_range(record: dict) -> str:
        """The one JSN range, as the run gave it: in px or in mm."""
        if entry(record, "config.pair.jsn_px") is not None:
            return f"--jsn-px {value(record, 'config.pair.jsn_px')}"
        return f"--jsn-mm {value(record, 'config.pair.jsn_mm')}"

    changes = [f"{before}, now {after}" if option == "--no-noise" else f"{option} {before}, now {after}"
               for option, (before, after) in options.items() if option not in ("--jsn-mm", "--jsn-px")]
    if "--jsn-mm" in options or "--jsn-px" in options:
        changes.append(f"{jsn_range(earlier)}, now {jsn_range(now)}")
    if changes:
        # entries no option sets (the phantom's joint count, the plan's digest) follow from these
        return "; ".join(changes)
    # the plan's digest and the citation follow from the rest: named only when nothing else differs
    differ = [name for name in differ if name not in ("plan_digest", "citation")] or differ
    if not differ:
        return "source, seed, pairs or options differ"
    return f"{', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''} {'differs' if len(differ) == 1 else 'differ'}"


def _differing_entries(earlier: Any, now: Any, path: str = "") -> list[str]:
    """The dotted names of the entries of two run records that differ (``config.pair.seed``...)."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        names = list(earlier) + [name for name in now if name not in earlier]
        return [entry for name in names
                for entry in _differing_entries(earlier.get(name), now.get(name), f"{path}.{name}" if path else name)]
    return [] if earlier == now else [path or "the record"]


def _pairs_shards_on_disk(out_dir: Path) -> bool:
    return any(
        any((folder / PAIRS_DIR).glob("*.parquet")) for folder in (out_dir / UNFINISHED_DIR, out_dir)
    )


def _move_shards_into_place(out_dir: Path) -> None:
    """Move the finished run's shards from the hidden folder into ``data/`` and ``layers/``.

    Pairs first: a run stopped between the two moves leaves the whole ``pairs`` config in place
    and ``layers/`` hidden (the other way round, ``datasets.load_dataset`` took ``layers/`` for
    the dataset, without its card to say otherwise). Each folder is one rename when it does not
    exist yet, else its shards are moved one by one (a run stopped while moving them, then resumed).
    """
    staging = out_dir / UNFINISHED_DIR
    for sub in (PAIRS_DIR, LAYERS_DIR):
        staged, final = staging / sub, out_dir / sub
        if not staged.is_dir():
            continue
        if not final.exists():
            os.replace(staged, final)
            continue
        for shard in sorted(staged.glob("*.parquet")):
            os.replace(shard, final / shard.name)
        staged.rmdir()
    with contextlib.suppress(OSError):  # already gone
        staging.rmdir()


@contextlib.contextmanager
def _removed_if_nothing_written(out_dir: Path, existed: bool, plan: Plan) -> Iterator[None]:
    """Undo the output folder's set-up when the run fails before its first pairs shard is on disk.

    Such a run (an unreadable image of the source, an interrupt) has nothing to resume, and a
    folder holding only its run record would look like a dataset to the next command. The run
    record, a layers shard written just before its pairs shard failed, and the empty shard
    folders go, and ``out_dir`` itself when this run created it and it is empty; a folder that
    existed, and anything else in it, stays.
    """
    try:
        yield
    except BaseException:
        if not _pairs_shards_on_disk(out_dir):
            (out_dir / STATE_NAME).unlink(missing_ok=True)
            staging = out_dir / UNFINISHED_DIR
            for shard in plan.shards:
                (staging / LAYERS_DIR / shard.file_name).unlink(missing_ok=True)
            folders = (staging / PAIRS_DIR, staging / LAYERS_DIR, staging, *(() if existed else (out_dir,)))
            for folder in folders:
                with contextlib.suppress(OSError):  # not empty, or already gone: leave it
                    folder.rmdir()
        raise


# ---------------------------------------------------------------------------------------------
# The builder


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_dataset` made."""

    out_dir: Path
    n_pairs: int
    split_sizes: dict[str, int]
    shards: int
    resumed_shards: int


#: Pairs a worker computes per task: enough to keep the workers busy while the parent writes a
#: shard, few enough that the rows waiting to be written stay small.
_PAIRS_PER_TASK = 4


def _iter_rows(
    source: JointSource, plan: Plan, config: DatasetConfig, indices: list[int], num_proc: int, scratch_dir: Path
) -> Iterator[tuple[dict, list[dict]]]:
    """Rows of ``indices`` in order, computed in-process or by ``num_proc`` workers
    (:func:`jsnsynth.workers.ordered_results`, handing them over in files of ``scratch_dir``).

    Raises:
        InputError: the source cannot be sent to a worker process.
        WorkerError: a worker process stopped abruptly (killed, out of memory).
    """
    return ordered_results(
        _use_job, _rows_for, (source, plan, config), indices, num_proc, scratch_dir, items_per_task=_PAIRS_PER_TASK,
        what="pair", job_name="the joint source",
        resume_hint="the finished shards are kept: rerun the same command to resume")


def build_dataset(
    source: JointSource,
    out_dir: str | os.PathLike,
    n_pairs: int,
    seed: int = 0,
    num_proc: int = 1,
    shard_size: int = 100,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    layers_every: int = 10,
    pair_config: PairConfig | None = None,
    quiet: bool = False,
    on_shard_written: Callable[[str], None] | None = None,
) -> BuildResult:
    """Simulate ``n_pairs`` pairs from ``source`` and write them as a Hub-layout dataset.

    Args:
        source: any :class:`~jsnsynth.synth.sources.JointSource`.
        out_dir: new or empty folder, or the folder of an interrupted run of the same command
            (it resumes).
        n_pairs: number of pairs.
        seed: base seed (pair ``i`` uses ``SeedSequence([seed, i])``).
        num_proc: worker processes (the output bytes do not depend on it).
        shard_size: pairs per parquet shard.
        split_fractions: fractions of source joints in train/validation/test.
        layers_every: layers rows for every k-th pair (0: no ``layers`` config).
        pair_config: ranges of the JSN change and the nuisances.
        quiet: no progress bar.
        on_shard_written: called with each shard's file name after it is complete (for tests and
            progress reporting).

    Returns:
        :class:`BuildResult`.

    Raises:
        InputError: bad options or an unusable source.
        OutputError: ``out_dir`` holds something else, or another run's dataset.
    """
    from tqdm.auto import tqdm

    config = DatasetConfig(n_pairs, seed, tuple(split_fractions), shard_size, layers_every,
                           PairConfig() if pair_config is None else pair_config)
    check_num_proc(num_proc)
    out_dir = Path(out_dir)
    plan = plan_dataset(list(source.joint_ids()), config)
    check_joints = getattr(source, "check_joints", None)
    if check_joints is not None:  # an unusable joint stopped a run half-way, which a resume could not pass
        with single_threaded():  # as the pairs are made: the same verdicts
            check_joints(sorted(set(plan.joint_of_pair)))
    record = _state_record(source, config, plan)
    existed = out_dir.exists()
    if existed and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    check_not_inside_a_dataset(out_dir)
    make_output_folder(out_dir)  # first: the folder is what the lock holds
    with held_folder(out_dir):
        finished = _prepare_output(out_dir, record)
        warn_empty_splits(plan, config)
        _write_state(out_dir, record, finished, complete=False)
        pending = [s for s in plan.shards if s.file_name not in finished]
        indices = [i for shard in pending for i in shard.indices]
        completed = list(finished)
        staging = out_dir / UNFINISHED_DIR
        with _removed_if_nothing_written(out_dir, existed, plan), \
                tqdm(total=config.n_pairs, initial=config.n_pairs - len(indices), disable=quiet, unit="pair", desc="pairs") as bar:
            rows = _iter_rows(source, plan, config, indices, num_proc, staging / "rows")
            try:
                for shard in pending:
                    pair_rows, image_rows = [], []
                    for _ in shard.indices:
                        pair_part, layer_part = next(rows)
                        pair_rows.append(pair_part)
                        image_rows.extend(layer_part)
                        bar.update(1)
                    if config.layers_every:
                        # layers first: a shard counts as done only once its pairs file exists
                        write_parquet_atomic(rows_to_table(image_rows, layer_columns()), staging / LAYERS_DIR / shard.file_name)
                    write_parquet_atomic(rows_to_table(pair_rows, pair_columns()), staging / PAIRS_DIR / shard.file_name)
                    completed.append(shard.file_name)
                    _write_state(out_dir, record, completed, complete=False)
                    if on_shard_written is not None:
                        on_shard_written(shard.file_name)
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
        _move_shards_into_place(out_dir)
        split_sizes = {s: sum(len(sh.indices) for sh in plan.shards if sh.split == s) for s in SPLITS}
        write_bytes_atomic(out_dir / CARD_NAME, dataset_card(record, plan, split_sizes, shard_sizes(out_dir)).encode())
        _write_state(out_dir, record, completed, complete=True)
        return BuildResult(out_dir, config.n_pairs, split_sizes, len(plan.shards), len(finished))


# ---------------------------------------------------------------------------------------------
# Dataset card


def _card_record(record: dict) -> dict:
    """The run record as the card states it: a source folder by its name alone (the card is
    published; the local path, which may name a user or a machine, stays in the run record)."""
    description = record.get("source_description")
    if not isinstance(description, dict) or "root" not in description:
        return record
    # resolved: a folder given as '.' or '..' has no name of its own
    return dict(record, source_description=dict(description, root=Path(str(description["root"])).resolve().name))


def shard_sizes(out_dir: Path) -> dict[str, dict]:
    """Per config (``pairs``, ``layers``) the sizes the card states of the finished shards in
    ``out_dir``: ``splits`` (rows and uncompressed bytes per split, from the Parquet footers),
    ``download_size`` (bytes of the files) and ``dataset_size``: the fields ``push_to_hub`` writes
    (its ``num_bytes`` is the Arrow size; here it is the uncompressed Parquet size).

    They make the card differ between two runs written under one folder name: ``load_dataset``
    keys its cache of a local folder on the folder's name and the card, not on the files, and
    would otherwise hand back an earlier run's pairs. It also checks the rows against them.
    """
    import pyarrow.parquet as pq

    sizes = {}
    for config_name, folder in (("pairs", PAIRS_DIR), ("layers", LAYERS_DIR)):
        splits, download_size = [], 0
        for split in SPLITS:
            rows = num_bytes = 0
            for path in sorted((out_dir / folder).glob(f"{split}-*.parquet")):
                metadata = pq.read_metadata(path)
                rows += metadata.num_rows
                num_bytes += sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
                download_size += path.stat().st_size
            if rows:
                splits.append({"name": split, "num_bytes": num_bytes, "num_examples": rows})
        if splits:
            sizes[config_name] = {"splits": splits, "download_size": download_size,
                                  "dataset_size": sum(s["num_bytes"] for s in splits)}
    return sizes


def dataset_card(record: dict, plan: Plan, split_sizes: dict[str, int], sizes: dict[str, dict] | None = None) -> str:
    """The README.md of a dataset: YAML front matter (license, tags, configs, features, and the
    shards' :func:`shard_sizes` when given) and text."""
    import yaml

    splits = [s for s in SPLITS if split_sizes[s] > 0]
    layers_every = record["config"]["layers_every"]
    configs = [
        {
            "config_name": "pairs",
            "default": True,
            "data_files": [{"split": s, "path": f"{PAIRS_DIR}/{s}-*.parquet"} for s in splits],
        }
    ]
    sizes = sizes or {}
    infos = [{"config_name": "pairs", "features": features_yaml(pair_columns()), **sizes.get("pairs", {})}]
    if layers_every:
        configs.append(
            {"config_name": "layers", "data_files": [{"split": s, "path": f"{LAYERS_DIR}/{s}-*.parquet"} for s in splits]}
        )
        infos.append({"config_name": "layers", "features": features_yaml(layer_columns()), **sizes.get("layers", {})})
    real_source = record["source"] != "phantom"
    front = {
        "license": "other" if real_source else "cc-by-4.0",
        "task_categories": ["image-to-image", "image-classification"],
        "tags": ["jsnsynth", "radiography", "x-ray", "joint-space-narrowing", "rheumatoid-arthritis", "synthetic", "medical"],
        "pretty_name": f"jsnsynth pairs ({record['source']})",
        "size_categories": [_size_category(record["config"]["n_pairs"])],
        "configs": configs,
        "dataset_info": infos,
    }
    if real_source:
        front["license_name"] = "source-data-terms"
        if record["source"] == "fingerjoints":
            front["license_link"] = "https://github.com/pokeblow/BLS-GAN"
    # the joints the split's pairs were drawn from (the plan assigns every source joint a split,
    # and a dataset of fewer pairs than joints uses only some of them)
    n_joints = {s: len({plan.joint_of_pair[i] for shard in plan.shards if shard.split == s for i in shard.indices})
                for s in SPLITS}
    yaml_text = yaml.safe_dump(front, sort_keys=False, width=1000)
    params_json = json.dumps(_card_record(record), indent=2, sort_keys=True)
    split_lines = "\n".join(f"| {s} | {split_sizes[s]} | {n_joints[s]} |" for s in SPLITS)
    license_text = {
        "phantom": "Generated entirely from analytic phantoms: CC BY 4.0.",
        "fingerjoints": "The generated images derive from the source data below, which states no licence: use for "
                        "research only and respect the source's terms.",
    }.get(record["source"], "The generated images derive from the crops of the source below, whose terms are "
                            "their owner's: publish only what those terms allow.")
    if layers_every:
        layers_line = 'layers = load_dataset("path/or/repo", "layers") # single images with float32 layers\n'
        layers_text = ("The `layers` config holds\nthe baseline and follow-up of every `layers_every`-th pair of each "
                       "shard (starting with its first;\n`layers_every` is in the parameters below); its `soft`, "
                       "`upper`, `lower` are float32 attenuation layers (line integrals); the image is\n"
                       "`1 - exp(-(soft + upper + lower))` after blur, noise and the display window of its imaging "
                       "columns.")
    else:
        layers_line = ""
        layers_text = "This dataset has no `layers` config (written with `layers_every` 0)."
    return f"""---
{yaml_text}---

# jsnsynth longitudinal pairs — source `{record['source']}`

Baseline/follow-up finger-joint radiographs with an exactly known joint space narrowing (JSN) change,
generated by **jsnsynth {record['generator_version']}** (schema version {record['schema_version']}) with seed
**{record['config']['seed']}**: {record['config']['n_pairs']} pairs.

## Truth and sign convention

`jsn_px` is the commanded displacement `d` of the upper bone along the baseline joint axis (pointing from
the upper to the lower bone), in baseline pixels; `jsn_mm = jsn_px * pixel_spacing_mm`. **Positive means
narrowing.** Each bone k moves from baseline to follow-up by `T_k = G ∘ F_k` (columns `<bone>_scale`,
`<bone>_angle_deg`, `<bone>_dx`, `<bone>_dy`: a similarity about the baseline joint centre
`(joint_center_x, joint_center_y)`); `F_lower` is a small rotation about the joint centre, `F_upper` the
same followed by the translation `d` along the axis, and `G` the global repositioning (`global_*` columns).
So `(G⁻¹T_upper(c) − G⁻¹T_lower(c)) · axis = d` exactly. Coordinates are (x, y) = (column, row), y down,
pixel centres at integers; angles are positive from +x towards +y. The soft tissue carries no
truth: it moves with the bone that carries it, blended between the two across
±{record['config']['pair']['soft_tissue_blend_mm']} mm about the joint line.

## Splits

Splits group **source joints** (`joint_id`), never pairs, so no joint appears in two splits.

| split | pairs | joints |
|---|---|---|
{split_lines}

## Loading

```python
from datasets import load_dataset
pairs = load_dataset("path/or/repo")            # config "pairs"
{layers_line}import numpy as np
img = np.array(pairs["train"][0]["baseline"])   # uint16: 16-bit PNG, decode to I = img / 65535
```

Images (`baseline`, `followup`, `*_clean`) are 16-bit greyscale PNG (display intensity, bone bright);
`*_clean` are the same images without noise. Masks are 8-bit PNG, 0/255. {layers_text}
`photons_per_px` null means no quantum noise. Full schema: jsnsynth docs/dataset.md.

## Source and provenance

{record['citation']}

{license_text}

## Every generation parameter

Each pair draws its JSN change, flexions and repositioning uniformly from the ranges below, and
each of its two images its blur, electronic noise, window and gamma uniformly and its photon count log-uniformly,
and, where their ranges reach above 0, a heel effect and a motion blur uniformly with their directions
(`config.pair.imaging`); everything from `SeedSequence([seed, pair index])`.

```json
{params_json}
```
"""


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


# ---------------------------------------------------------------------------------------------
# Reading back (validation and light-weight access without the HF cache)


def check_dataset_folder(folder: str | os.PathLike) -> dict:
    """Verify ``folder`` is a complete jsnsynth dataset; return its run record.

    Raises:
        InputError: not a folder, no card, no run record, an unfinished run, or a shard whose
            columns are not the ``pairs`` schema.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {'is a file, not a dataset folder' if folder.exists() else 'no such dataset folder'}")
    state = check_finished_run(folder)
    shards = sorted((folder / PAIRS_DIR).glob("*.parquet"))
    if not shards:
        raise InputError(f"{folder}: no {PAIRS_DIR}/*.parquet shards")
    expected = {name for name, _ in pair_columns()}
    for shard in shards:
        try:
            names = set(pq.read_schema(shard).names)
        except Exception as exc:
            raise InputError(f"{shard}: unreadable parquet shard ({exc.__class__.__name__})") from None
        if not expected <= names:
            missing = sorted(expected - names)
            raise InputError(f"{shard}: wrong dataset schema, missing column(s) {', '.join(missing[:5])}")
    return state


def check_not_inside_a_dataset(out_dir: str | os.PathLike) -> None:
    """Refuse an output folder inside another dataset's shard folders (``data/``, ``layers/``, or
    its unfinished run's): its shards would be read, and published, as that dataset's.

    Raises:
        OutputError: naming the dataset folder and its shard folder.
    """
    real = Path(os.path.realpath(out_dir))
    for folder in real.parents:
        if not (folder / STATE_NAME).is_file():
            continue
        for subfolder in (PAIRS_DIR, LAYERS_DIR, UNFINISHED_DIR):
            if real.is_relative_to(folder / subfolder):
                raise OutputError(f"{out_dir}: is inside {subfolder}/ of the dataset {folder}; write the new dataset "
                                  "outside it")


def check_finished_run(folder: str | os.PathLike, record_required: bool = True) -> dict | None:
    """Verify that ``folder`` holds a finished dataset: its run record (when there is one, or
    always with ``record_required``) says complete, and it has its card; return the record.

    A run that was interrupted, or failed, holds only the shards it finished: scoring or
    publishing it would pass a part for the whole. A folder without a run record is a dataset
    made by another tool in the same layout (``record_required=False`` accepts it).

    Raises:
        InputError: no run record (when required) or not jsnsynth's, an unfinished run, no card,
            or shards missing (:func:`_check_shards_complete`).
    """
    folder = Path(folder)
    state = _read_state(folder, as_input=True)
    if state is None:
        if record_required:
            raise InputError(f"{folder}: not a jsnsynth dataset (no {STATE_NAME})")
    elif state.get("generator") != "jsnsynth":
        raise InputError(f"{folder}: {STATE_NAME} was not written by jsnsynth")
    elif not state.get("complete"):
        raise InputError(f"{folder}: the dataset run is unfinished; rerun the same 'jsnsynth dataset' command to resume")
    if not (folder / CARD_NAME).is_file():
        raise InputError(f"{folder}: no {CARD_NAME} dataset card (an unfinished or incomplete dataset)")
    _check_shards_complete(folder, state)
    _check_rows_as_carded(folder)
    return state


def _card_split_rows(folder: Path) -> dict[str, dict[str, int]]:
    """Per config, the rows per split that the card's ``dataset_info`` states (empty where it
    states none: another tool's card, or one unreadable as YAML front matter)."""
    import yaml

    text = (folder / CARD_NAME).read_text(encoding="utf-8", errors="replace")
    parts = text.split("\n---", 1) if text.startswith("---") else []
    try:
        front = yaml.safe_load(parts[0][3:]) if len(parts) == 2 else None
    except yaml.YAMLError:
        return {}
    infos = front.get("dataset_info") if isinstance(front, dict) else None
    rows: dict[str, dict[str, int]] = {}
    for info in infos if isinstance(infos, list) else []:
        if isinstance(info, dict) and isinstance(info.get("splits"), list):
            rows[str(info.get("config_name"))] = {str(split.get("name")): split.get("num_examples")
                                                  for split in info["splits"] if isinstance(split, dict)}
    return rows


def _check_rows_as_carded(folder: Path) -> None:
    """Refuse a dataset whose shards hold other numbers of rows than its card states (a shard cut
    short or emptied by hand was scored as the whole, where ``datasets.load_dataset`` refuses it).

    Raises:
        InputError: naming the config, the split and both counts.
    """
    carded = _card_split_rows(folder)
    if not carded:
        return
    present = {name: {split["name"]: split["num_examples"] for split in info["splits"]}
               for name, info in shard_sizes(folder).items()}
    for config_name, subfolder in (("pairs", PAIRS_DIR), ("layers", LAYERS_DIR)):
        # a config whose folder holds no shard is not checked: a copy of the pairs alone (the
        # Hub's data/ without layers/) is a whole dataset of pairs
        if config_name not in carded or not any((folder / subfolder).glob("*.parquet")):
            continue
        for split, expected in carded[config_name].items():
            found = present.get(config_name, {}).get(split, 0)
            if isinstance(expected, int) and found != expected:
                raise InputError(f"{folder}: the '{split}' split of its {config_name} holds {found} row(s) where its "
                                 f"{CARD_NAME} card states {expected}: a copy cut short or changed; copy it whole or "
                                 "build it again")


#: ``<split>-<i>-of-<n>.parquet``, the shard names of jsnsynth and of the Hub's ``push_to_hub``.
_SHARD_NAME = re.compile(r"(?P<split>.+)-(?P<number>\d+)-of-(?P<count>\d+)\.parquet")


def _check_shards_complete(folder: Path, state: dict | None) -> None:
    """Refuse a dataset folder that lacks shards it was written with, or holds others.

    A shard deleted or not copied left a dataset that ``validate`` scored and ``publish`` would
    upload as the whole (``datasets.load_dataset`` refuses it, its split sizes not the card's).
    The shards are the run record's ``completed_shards`` in ``data/`` and, with layers, in
    ``layers/``; without a record, every ``<split>-<i>-of-<n>`` of the names present.

    Raises:
        InputError: a shard missing, or one the run record does not list.
    """
    completed = state.get("completed_shards") if state is not None else None
    recorded = isinstance(completed, list)
    config = state.get("config") if state is not None else None
    with_layers = bool(config.get("layers_every")) if isinstance(config, dict) else False
    for subfolder in (PAIRS_DIR, LAYERS_DIR):
        present = {path.name for path in (folder / subfolder).glob("*.parquet")}
        if recorded and (subfolder == PAIRS_DIR or with_layers):
            expected = {str(name) for name in completed}
        elif recorded or not present:
            continue
        else:  # another tool's dataset: the numbering its names state
            expected = set(present)
            for name in present:
                match = _SHARD_NAME.fullmatch(name)
                if match is not None:
                    width, count = len(match["number"]), int(match["count"])
                    expected |= {f"{match['split']}-{i:0{width}d}-of-{match['count']}.parquet" for i in range(count)}
        missing, extra = sorted(expected - present), sorted(present - expected)
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise InputError(f"{folder}: {len(missing)} shard(s) missing from {subfolder}/ ({shown}): an incomplete "
                             "copy of the dataset; copy it whole or build it again")
        if extra:
            shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
            raise InputError(f"{folder}: {subfolder}/ holds {len(extra)} shard(s) that its run did not write ({shown})")


def iter_pairs(folder: str | os.PathLike, split: str | None = None) -> Iterator[dict]:
    """Yield the ``pairs`` rows of a dataset folder with images decoded to numpy arrays.

    Reads the parquet shards directly (no HF cache): PNG columns become uint16/uint8 arrays, masks
    bool arrays; everything else is as stored.
    """
    folder = Path(folder)
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    shards = sorted((folder / PAIRS_DIR).glob(pattern))
    if not shards:
        raise InputError(f"{folder}: no {PAIRS_DIR}/{pattern} shards")
    for shard in shards:
        for row in pq.read_table(shard).to_pylist():
            for name, value in row.items():
                if isinstance(value, dict) and "bytes" in value:
                    pixels = decode_png(value["bytes"])
                    row[name] = pixels > 0 if name.endswith("_mask") else pixels
            yield row
