"""Validation harness: run any JSN method on a labelled pair dataset and compare with the truth.

A *method* is any callable with the signature of
:func:`~jsnsynth.quantify.quantifier.quantify_pair`::

    method(baseline, followup, upper_mask, lower_mask, pixel_spacing_mm=..., followup_upper_mask=...,
           followup_lower_mask=..., joint_center_xy=..., joint_axis_deg=...) -> JsnResult | dict | float

(the keywords a method does not take are not passed: the four arrays are all it needs),
returning a :class:`~jsnsynth.quantify.quantifier.JsnResult`, a mapping with ``jsn_px`` (and
optionally ``mismatch``), or the JSN in pixels as a float (+ = narrowing). Images are passed as
stored (uint16 for jsnsynth datasets), masks as bool arrays. Name a method on the command line
as ``module:function``, or ``register`` (bundled), ``poc`` or ``ecc`` (reference methods).

Per pair the harness records the estimate, its error, the time, the method's flag, and the
Cramér-Rao lower bound of the JSN under the recorded noise model (:mod:`jsnsynth.quantify.crlb`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from jsnsynth import __version__
from jsnsynth.errors import InputError, OutputError, exception_line
from jsnsynth.figures import figure_bytes, new_figure
from jsnsynth.quantify.crlb import display_noise_std_from_clean, jsn_crlb_px
from jsnsynth.quantify.quantifier import real_number
from jsnsynth.quantify.register import RegistrationSettings, resolution_scale
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.io import check_writable, decode_png, held_folder, json_text, make_output_folder, write_files_atomic
from jsnsynth.synth.xray import ImagingParams
from jsnsynth.workers import check_num_proc, in_worker, ordered_results

#: Columns of the ``pairs`` config this harness needs (contract 3), by kind.
IMAGING_FIELDS = ("blur_sigma_px", "photons_per_px", "electronic_noise", "window_low", "window_high", "gamma", "noise_seed")
IMAGE_COLUMNS = ("baseline", "followup", "baseline_clean", "followup_clean")
MASK_COLUMNS = ("baseline_upper_mask", "baseline_lower_mask", "followup_upper_mask", "followup_lower_mask")
#: Columns that must hold a finite number in every row: the truth and the frame it is stated in
#: (a NaN truth would be scored as the method's failure, a string would end the run midway).
FINITE_COLUMNS = (
    ("pixel_spacing_mm", "jsn_px", "joint_center_x", "joint_center_y", "joint_axis_deg")
    + tuple(f"{bone}_{name}" for bone in ("upper", "lower") for name in ("scale", "angle_deg", "dx", "dy"))
)
#: Imaging columns that may be null: no quantum noise, no electronic noise, no noise draw to replay.
NULLABLE_IMAGING_FIELDS = ("photons_per_px", "electronic_noise", "noise_seed")
#: Imaging columns of both images, and those of them that may be null.
IMAGING_COLUMNS = tuple(f"{role}_{name}" for role in ("baseline", "followup") for name in IMAGING_FIELDS)
NULLABLE_NUMBER_COLUMNS = tuple(f"{role}_{name}" for role in ("baseline", "followup") for name in NULLABLE_IMAGING_FIELDS)
#: Columns that must hold a finite number in every row, the display chain's among them (the
#: Cramér-Rao bound is computed from it).
FINITE_VALUE_COLUMNS = FINITE_COLUMNS + tuple(c for c in IMAGING_COLUMNS if c not in NULLABLE_NUMBER_COLUMNS)
REQUIRED_COLUMNS = (
    ("pair_id", "source", "joint_id", "split") + IMAGE_COLUMNS + MASK_COLUMNS + FINITE_COLUMNS + ("jsn_mm",)
    + IMAGING_COLUMNS
)
#: |error| above which a pair counts as a mismatch (px).
MISMATCH_PX = 0.5
#: Edges of the |d| bins of the breakdown (px).
JSN_BINS_PX = (0.0, 0.5, 1.0, 2.0, math.inf)
#: Resamples of the RMSE's bootstrap interval (fixed seed: the same rows give the same interval).
BOOTSTRAP_RESAMPLES = 2000
BUILTIN_METHODS = {
    "register": "jsnsynth.quantify.quantifier:quantify_pair",
    "poc": "jsnsynth.quantify.reference:poc_quantify",
    "ecc": "jsnsynth.quantify.reference:ecc_quantify",
}


# ---------------------------------------------------------------------------------------------
# Reading a dataset


def dataset_shards(folder: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The ``data/<split>-*.parquet`` shards of a pair dataset, checked against contract 3.

    A folder written by ``jsnsynth dataset`` must be a finished run (its run record says
    complete); any dataset must have its card. Every shard's columns are checked by name and
    type, and the truth columns (:data:`FINITE_COLUMNS`) by value, before a pair is scored.

    Raises:
        InputError: not a folder, an unfinished run, no card, no shards, the split is absent, or
            a shard that lacks a column or holds a truth that is not a finite number.
    """
    import pyarrow.parquet as pq

    from jsnsynth.synth.dataset import CARD_NAME, PAIRS_DIR, STATE_NAME, check_finished_run  # as publish's

    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"{folder}: is a file, not a dataset folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such dataset folder")
    if split is not None and not split.strip():
        raise InputError("the split to validate is empty: name one (train, validation, test) or leave it out for all")
    if not any((folder / name).exists() for name in (CARD_NAME, PAIRS_DIR, STATE_NAME)):
        raise InputError(f"{folder}: not a dataset (no {CARD_NAME} card, no {PAIRS_DIR}/ shards)")
    check_finished_run(folder, record_required=False)
    shards = sorted((folder / PAIRS_DIR).glob("*.parquet"))
    if not shards:
        raise InputError(f"{folder}: not a pair dataset (no {PAIRS_DIR}/*.parquet shards)")
    if split is not None:
        available = sorted({s.name.split("-")[0] for s in shards})
        shards = [s for s in shards if s.name.split("-")[0] == split]
        if not shards:
            raise InputError(f"{folder}: no '{split}' split (available: {', '.join(available)})")
    for shard in shards:
        try:
            schema = pq.read_schema(shard)
        except Exception as exc:
            raise InputError(f"{shard}: unreadable parquet shard ({exc.__class__.__name__})") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if missing:
            raise InputError(f"{shard}: wrong dataset schema, missing column(s) {', '.join(missing[:6])}")
        check_number_columns(shard, schema)
        check_truth_values(shard)
    return shards


def check_number_columns(shard: Path, schema: Any) -> None:
    """Refuse a shard whose truth, frame or imaging columns are not numbers (a string ``jsn_px``).

    Raises:
        InputError: wrong dataset schema, naming the shard and the column.
    """
    import pyarrow as pa

    for name in FINITE_COLUMNS + IMAGING_COLUMNS:
        kind = schema.field(name).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if not (numeric or (name in NULLABLE_NUMBER_COLUMNS and pa.types.is_null(kind))):
            raise InputError(f"{shard}: wrong dataset schema, column '{name}' holds {kind}, not numbers")


def check_truth_values(shard: Path) -> None:
    """Refuse a shard with a null or non-finite value in a :data:`FINITE_VALUE_COLUMNS` column
    (the truth, its frame, the display chain), or a pixel spacing that is not positive (reads
    only those columns: cheap).

    Raises:
        InputError: wrong dataset schema, naming the shard, the column and the first pair.
    """
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(shard, columns=["pair_id", *FINITE_VALUE_COLUMNS])
    except Exception as exc:
        raise InputError(f"{shard}: unreadable parquet shard ({exc.__class__.__name__})") from None
    pair_ids = table.column("pair_id").to_pylist()
    for name in FINITE_VALUE_COLUMNS:
        column = table.column(name)
        if column.null_count:
            first = column.to_pylist().index(None)
            raise InputError(f"{shard}: wrong dataset schema, column '{name}' is null (pair {pair_ids[first]})")
        values = column.to_numpy().astype(np.float64)
        bad = ~np.isfinite(values) | ((values <= 0) if name == "pixel_spacing_mm" else False)
        if bad.any():
            first = int(np.argmax(bad))
            what = "a positive number" if name == "pixel_spacing_mm" else "a finite number"
            raise InputError(f"{shard}: wrong dataset schema, column '{name}' holds {values[first]}, not {what} "
                             f"(pair {pair_ids[first]})")


def _decode(value: Any, name: str, pair_id: str) -> np.ndarray:
    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise InputError(f"pair {pair_id}: column '{name}' holds no image bytes")
    try:
        return decode_png(data)
    except InputError as exc:  # with what the decoder said of them
        raise InputError(f"pair {pair_id}: column '{name}': {exc}") from None


def check_pair_images(row: dict, where: str) -> None:
    """Refuse a decoded pair whose images or masks are not greyscale or not all of one size, or
    whose joint centre is not a point of them (the truth would be stated off the picture).

    Args:
        row: a pair as :func:`read_pairs` decodes it.
        where: the shard and pair, for the message.

    Raises:
        InputError: naming the column.
    """
    height, width = np.shape(row["baseline"])[:2]
    for name in IMAGE_COLUMNS + MASK_COLUMNS:
        pixels = row[name]
        if pixels.ndim != 2:
            raise InputError(f"{where}: column '{name}' is not a greyscale image (array of shape {pixels.shape})")
        if pixels.shape != (height, width):
            raise InputError(f"{where}: column '{name}' is {pixels.shape[1]}x{pixels.shape[0]}, "
                             f"column 'baseline' is {width}x{height}")
    x, y = float(row["joint_center_x"]), float(row["joint_center_y"])
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        raise InputError(f"{where}: columns 'joint_center_x', 'joint_center_y' ({x:g}, {y:g}) are not inside "
                         f"the {width}x{height} images")


def read_pairs(folder: str | os.PathLike, split: str | None = None, limit: int | None = None) -> Iterator[dict]:
    """Yield the pairs of a dataset as dicts: images as stored arrays, masks as bool arrays.

    Raises:
        InputError: see :func:`dataset_shards`; a pair with an unreadable image, or images of
            different sizes (:func:`check_pair_images`); a pair in two shards.
    """
    return read_shards(dataset_shards(folder, split), limit)


def read_shards(shards: list[Path], limit: int | None = None) -> Iterator[dict]:
    """:func:`read_pairs` of shards already checked by :func:`dataset_shards`."""
    import pyarrow.parquet as pq

    count = 0
    seen: dict[str, Path] = {}
    for shard in shards:
        table = pq.read_table(shard, columns=list(REQUIRED_COLUMNS))
        for row in table.to_pylist():
            if limit is not None and count >= limit:
                return
            pair_id = str(row["pair_id"])
            if pair_id in seen:  # a shard copied or left beside the run's own: each pair counted twice
                raise InputError(f"{shard}: pair {pair_id} is in {seen[pair_id].name} as well; a dataset holds each "
                                 "pair once")
            seen[pair_id] = shard
            for name in IMAGE_COLUMNS:
                row[name] = _decode(row[name], name, pair_id)
            for name in MASK_COLUMNS:
                row[name] = _decode(row[name], name, pair_id) > 0
            check_pair_images(row, f"{shard}: pair {pair_id}")
            count += 1
            yield row


# ---------------------------------------------------------------------------------------------
# Methods


def check_method_spelling(spec: str) -> None:
    """Refuse a method named neither as a builtin nor ``module:function`` (whether the module
    imports is :func:`load_method`'s matter).

    Raises:
        InputError: naming what was given.
    """
    module_name, _, attr = spec.partition(":")
    if spec not in BUILTIN_METHODS and not (module_name and attr):
        raise InputError(f"'{spec}' is none of {', '.join(BUILTIN_METHODS)} and not module:function")


def load_method(spec: str | Callable) -> tuple[str, Callable]:
    """Resolve a method: a callable, a builtin name (register, poc, ecc) or ``module:function``
    (imported from ``sys.path``, with the current folder appended to it).

    Raises:
        InputError: unknown name, unimportable module or missing/non-callable attribute.
    """
    if callable(spec):
        return getattr(spec, "__name__", "callable"), spec
    spec = str(spec)
    check_method_spelling(spec)
    module_name, _, attr = BUILTIN_METHODS.get(spec, spec).partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        # as `python -m` would: a plug-in module in the current folder is found
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() on import is no method
        raise InputError(f"method '{spec}': cannot import module '{module_name}' ({exc.__class__.__name__}: {exc})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise InputError(f"method '{spec}': module '{module_name}' has no callable '{attr}'")
    return spec, function


def _number(value: Any, what: str) -> float:
    """A method's number as a float (:func:`~jsnsynth.quantify.quantifier.real_number`); text
    and booleans are a method's mistake, not a JSN of 0.1 or 1 px."""
    try:
        return real_number(value)
    except TypeError:
        raise InputError(f"method returned {what} of type {type(value).__name__}; expected a number") from None


def _standard_error(value: Any) -> float:
    """A method's ``jsn_se_px`` as given (NaN for none); a negative one is refused."""
    if value is None:
        return float("nan")
    se_px = _number(value, "jsn_se_px")
    if se_px < 0.0:
        raise InputError(f"method returned jsn_se_px {se_px:g}; a standard error is 0 or more (NaN for none)")
    return se_px


def _flag(value: Any) -> bool:
    """A method's mismatch flag as a bool: a boolean, or 0 / 1 (Python, numpy or torch scalars);
    None is no flag. Text is a method's mistake: ``bool("false")`` would count the pair as flagged."""
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    dtype = str(getattr(value, "dtype", ""))
    if not isinstance(value, (str, bytes, bytearray)) and ("bool" in dtype or "int" in dtype or isinstance(value, int)):
        with contextlib.suppress(Exception):  # noqa: BLE001  (a third-party scalar that is no scalar)
            number = float(value)
            if number in (0.0, 1.0):
                return bool(number)
    raise InputError(f"method returned mismatch {value!r} of type {type(value).__name__}; expected a boolean")


def read_estimate(output: Any) -> tuple[float, bool, float]:
    """``(jsn_px, flagged, jsn_se_px)`` from whatever a method returned; the standard error is
    NaN when the method reports none (:func:`_standard_error`).

    Raises:
        InputError: a value that is not a number, or a negative standard error (a method's
            mistake: the pair is its failure; it was written to pairs.csv and left out of the
            z-scores unsaid).
    """
    if hasattr(output, "jsn_px"):
        return (_number(output.jsn_px, "jsn_px"), _flag(getattr(output, "mismatch", False)),
                _standard_error(getattr(output, "jsn_se_px", None)))
    if isinstance(output, dict):
        if "jsn_px" not in output:
            raise InputError("method returned a mapping without 'jsn_px'")
        return (_number(output["jsn_px"], "jsn_px"), _flag(output.get("mismatch", False)),
                _standard_error(output.get("jsn_se_px")))
    try:
        return _number(output, "a value"), False, float("nan")
    except InputError:
        raise InputError(f"method returned {type(output).__name__}; expected JsnResult, a mapping with jsn_px, "
                         "or a number") from None


# ---------------------------------------------------------------------------------------------
# Per pair


def imaging_of(record: dict, role: str) -> ImagingParams:
    """The recorded :class:`ImagingParams` of the ``baseline`` or ``followup`` image (a null
    electronic noise is none, a null noise seed 0; a null photon count is no quantum noise).

    Raises:
        InputError: a display chain that is no chain (a window whose white is not above its
            black, a gamma that is not positive), naming the pair.
    """
    values = {name: record[f"{role}_{name}"] for name in IMAGING_FIELDS}
    values["electronic_noise"] = values["electronic_noise"] or 0.0
    values["noise_seed"] = values["noise_seed"] or 0
    try:
        return ImagingParams.from_dict(values)
    except InputError as exc:
        raise InputError(f"pair {record['pair_id']}: wrong {role} imaging record ({exc})") from None


def noise_level_of(record: dict) -> str:
    """A coarse noise label from the recorded noise: none, low, medium or high.

    Each image's noise is taken as an equivalent photon count at full transmission,
    ``1 / (1 / photons + electronic^2)`` (the two variances add), so that electronic noise alone
    is labelled by its size, not always "low"; the noisier image decides.
    """
    equivalent = []
    for role in ("baseline", "followup"):
        photons = record.get(f"{role}_photons_per_px")
        electronic = float(record.get(f"{role}_electronic_noise") or 0.0)
        photons = math.inf if photons is None else float(photons)
        # a count that is no count (0, negative, NaN) is 'high' here; the bound refuses it by name
        quantum = 0.0 if photons == math.inf else (1.0 / photons if photons > 0 else math.inf)
        variance = quantum + electronic**2
        equivalent.append(1.0 / variance if variance > 0 else math.inf)
    lowest = min(equivalent)
    if math.isinf(lowest):
        return "none"
    if lowest >= 2.0e4:
        return "low"
    if lowest >= 5.0e3:
        return "medium"
    return "high"


def _as_display(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float64) / 65535.0
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float64) / 255.0
    return pixels.astype(np.float64)


def pair_crlb_px(record: dict) -> float:
    """CRLB (std, px) of the JSN of one dataset pair from its clean images and imaging records."""
    center = (float(record["joint_center_x"]), float(record["joint_center_y"]))
    transforms = {
        bone: Similarity(
            float(record[f"{bone}_scale"]), float(record[f"{bone}_angle_deg"]),
            float(record[f"{bone}_dx"]), float(record[f"{bone}_dy"]), *center,
        )
        for bone in ("upper", "lower")
    }
    base_clean = _as_display(record["baseline_clean"])
    follow_clean = _as_display(record["followup_clean"])
    bits = 16 if np.asarray(record["baseline"]).dtype == np.uint16 else 8
    # the regions of the quantifier, whose bands follow the picture's size
    settings = RegistrationSettings().for_resolution(resolution_scale(follow_clean.shape))
    return jsn_crlb_px(
        follow_clean,
        record["baseline_upper_mask"],
        record["baseline_lower_mask"],
        transforms["upper"],
        transforms["lower"],
        center,
        float(record["joint_axis_deg"]),
        display_noise_std_from_clean(base_clean, imaging_of(record, "baseline")),
        display_noise_std_from_clean(follow_clean, imaging_of(record, "followup")),
        bit_depth=bits,
        dilate_px=settings.dilate_px,
        border_px=settings.border_px,
        thin_overlap_px=settings.thin_overlap_px,
    )


def _crlb_or_nan(record: dict) -> float:
    """:func:`pair_crlb_px`, or NaN where the bound does not exist (a singular Fisher matrix:
    bones too small or featureless to be registered at all)."""
    try:
        bound = pair_crlb_px(record)
    except np.linalg.LinAlgError:
        return float("nan")
    return bound if math.isfinite(bound) else float("nan")


def method_arguments(record: dict) -> tuple[tuple, dict]:
    """The arguments a method gets for one dataset record: ``quantify_pair``'s signature, images
    as stored, the follow-up masks, and the frame in which the dataset states its truth.

    The arrays are copies: a method that changes its inputs in place (a mask eroded with
    ``out=``) changed the record the pair's bound was then computed from."""
    def copy(name: str) -> np.ndarray:
        return np.array(record[name], copy=True)

    args = (copy("baseline"), copy("followup"), copy("baseline_upper_mask"), copy("baseline_lower_mask"))
    kwargs = {
        "pixel_spacing_mm": float(record["pixel_spacing_mm"]),
        "followup_upper_mask": copy("followup_upper_mask"),
        "followup_lower_mask": copy("followup_lower_mask"),
        "joint_center_xy": (float(record["joint_center_x"]), float(record["joint_center_y"])),
        "joint_axis_deg": float(record["joint_axis_deg"]),
    }
    return args, kwargs


def call_method(method: Callable, args: tuple, kwargs: dict) -> Any:
    """``method(*args, **kwargs)`` with only the keywords it takes: a plug-in written as
    ``f(baseline, followup, upper_mask, lower_mask, pixel_spacing_mm=0.175)`` failed on every pair
    for the follow-up masks and the joint frame it was not asked to take. One with ``**kwargs``
    gets them all."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature to read (some C functions)
        return method(*args, **kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return method(*args, **kwargs)
    names = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return method(*args, **{name: value for name, value in kwargs.items() if name in names})


def evaluate_pair(record: dict, method: Callable, with_crlb: bool = True) -> dict:
    """Run ``method`` on one pair and return its row of results (truth, estimate, error, CRLB)."""
    start = time.perf_counter()
    cpu_start = time.process_time()
    error_message = ""
    try:
        args, kwargs = method_arguments(record)
        output = call_method(method, args, kwargs)
        estimate, flagged, se_px = read_estimate(output)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (a plug-in's or our own failure on one pair,
        # even a sys.exit() in a plug-in, must not end the run, let alone with exit code 0)
        # no estimate, and so no flag: the flag rate is over the pairs a method estimated
        # (raising and returning NaN are the same failure), as validate-real's over its trials
        estimate, flagged, se_px, error_message = float("nan"), False, float("nan"), method_failure(exc)
    elapsed = time.perf_counter() - start
    cpu_elapsed = time.process_time() - cpu_start  # this process's CPU time (all its threads)
    spacing = float(record["pixel_spacing_mm"])
    truth = float(record["jsn_px"])
    row = {
        "pair_id": str(record["pair_id"]),
        "source": str(record["source"]),
        "joint_id": str(record["joint_id"]),
        "split": str(record["split"]),
        "noise_level": noise_level_of(record),
        "pixel_spacing_mm": spacing,
        "truth_px": truth,
        "estimate_px": estimate,
        "error_px": estimate - truth,
        "error_mm": (estimate - truth) * spacing,
        "flagged": bool(flagged),
        "time_s": elapsed,
        "cpu_time_s": cpu_elapsed,
        "crlb_px": _crlb_or_nan(record) if with_crlb else float("nan"),
        "method_error": error_message,
        "se_px": se_px,
    }
    if not math.isfinite(estimate) and not error_message:
        row["method_error"] = failure_reason(row)  # a NaN, said in pairs.csv as well
    return row


# ---------------------------------------------------------------------------------------------
# Summaries


def summarize(rows: list[dict]) -> dict:
    """Accuracy statistics of a list of per-pair rows (px and mm).

    Keys: n, rmse_px, rmse_ci95_px (:func:`rmse_interval`), bias_px, sd_px, loa_px (95 % limits
    of agreement, bias +- 1.96 SD), the same in mm, max_abs_error_px, mismatch_rate (|error| >
    0.5 px or no estimate), flag_rate (over the pairs with an estimate; None without any),
    time_per_pair_s, pairs_per_s, crlb_rms_px (sqrt of the mean CRLB variance over every pair
    with a bound: the dataset's, the same for every method) and efficiency (RMSE / sqrt of the
    mean CRLB variance, both over the pairs with an estimate, a bound and image noise; ``None``
    without such pairs: a noise-free pair's bound is that of the 16-bit quantisation alone, about
    1e-5 px, against which any method is thousands of times off). Over the pairs the method
    estimated and did not flag: n_unflagged, rmse_unflagged_px, max_abs_error_unflagged_px and
    mismatch_rate_unflagged (what a user who trusts the flags gets; the pairs it failed on are
    in mismatch_rate alone). For a method that reports a standard error (``jsn_se_px``), over
    those pairs: n_with_se, z_rms (RMS of error / standard error: about 1 if the errors it
    reports are honest) and coverage_95 (share of |error| within 1.96 of them); ``None`` without.
    """
    if not rows:
        return {"n": 0}
    errors = np.array([r["error_px"] for r in rows], dtype=np.float64)
    spacing = np.array([r["pixel_spacing_mm"] for r in rows], dtype=np.float64)
    finite = np.isfinite(errors)
    e = errors[finite]
    e_mm = (errors * spacing)[finite]
    crlb = np.array([r["crlb_px"] for r in rows], dtype=np.float64)
    times = np.array([r["time_s"] for r in rows], dtype=np.float64)
    out: dict[str, Any] = {"n": len(rows), "n_estimated": int(finite.sum())}
    if e.size:
        bias, sd = float(e.mean()), float(e.std(ddof=1)) if e.size > 1 else 0.0
        bias_mm, sd_mm = float(e_mm.mean()), float(e_mm.std(ddof=1)) if e.size > 1 else 0.0
        out.update(
            rmse_px=float(np.sqrt(np.mean(e**2))), rmse_ci95_px=rmse_interval(e), bias_px=bias, sd_px=sd,
            loa_px=[bias - 1.96 * sd, bias + 1.96 * sd],
            rmse_mm=float(np.sqrt(np.mean(e_mm**2))), bias_mm=bias_mm, sd_mm=sd_mm,
            loa_mm=[bias_mm - 1.96 * sd_mm, bias_mm + 1.96 * sd_mm],
            max_abs_error_px=float(np.max(np.abs(e))),
        )
    out["mismatch_rate"] = float(np.mean(~finite | (np.abs(np.nan_to_num(errors, nan=np.inf)) > MISMATCH_PX)))
    flagged = np.array([bool(r["flagged"]) for r in rows])
    out["flag_rate"] = float(np.mean(flagged[finite])) if finite.any() else None
    unflagged = finite & ~flagged
    out["n_unflagged"] = int(unflagged.sum())
    out["rmse_unflagged_px"] = float(np.sqrt(np.mean(errors[unflagged] ** 2))) if unflagged.any() else None
    out["max_abs_error_unflagged_px"] = float(np.max(np.abs(errors[unflagged]))) if unflagged.any() else None
    out["mismatch_rate_unflagged"] = float(np.mean(np.abs(errors[unflagged]) > MISMATCH_PX)) if unflagged.any() else None
    se = np.array([r.get("se_px", np.nan) for r in rows], dtype=np.float64)  # rows logged before it: none
    # over the unflagged pairs: a flagged pair's standard error is not to be trusted, as its estimate
    with_se = unflagged & np.isfinite(se) & (se > 0)
    out["n_with_se"] = int(with_se.sum())
    z = errors[with_se] / se[with_se]
    out["z_rms"] = float(np.sqrt(np.mean(z**2))) if z.size else None
    out["coverage_95"] = float(np.mean(np.abs(z) <= 1.96)) if z.size else None
    out["time_per_pair_s"] = float(times.mean())
    out["pairs_per_s"] = float(1.0 / times.mean()) if times.mean() > 0 else None
    if np.isfinite(crlb).any():
        out["crlb_rms_px"] = float(np.sqrt(np.nanmean(crlb**2)))
        # the RMSE and the bound over the same pairs: those with an estimate and a bound (a failed
        # pair has no error to count, a pair without a bound nothing to compare it with), and
        # with noise (a noise-free pair's error is the method's systematic floor, which no bound
        # of the noise speaks to)
        noisy = np.array([r.get("noise_level") != "none" for r in rows])
        both = finite & np.isfinite(crlb) & noisy
        crlb_both = float(np.sqrt(np.mean(crlb[both] ** 2))) if both.any() else 0.0
        out["efficiency"] = (float(np.sqrt(np.mean(errors[both] ** 2)) / crlb_both) if crlb_both > 0 else None)
    return out


def rmse_interval(errors: np.ndarray, coverage: float = 0.95) -> list[float] | None:
    """Percentile-bootstrap interval of the RMSE of ``errors`` (px), ``None`` below 2 errors.

    A target such as "RMSE below 0.01 px" is decided on a few dozen pairs, whose RMSE itself
    scatters by about ``1 / sqrt(2 n)`` (20 % at 12 pairs); the interval says how far. It runs a
    little short at such sizes (normal errors, 48 per set: 91 % of the 95 % intervals hold the
    true RMSE). The resampling is seeded, so the same errors always give the same interval.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size < 2:
        return None
    rng = np.random.default_rng(0)
    squares = errors**2
    # resampled in blocks: one (resamples x n) index table is 160 MB at 10 000 pairs
    block = max(1, 2_000_000 // errors.size)
    means = np.concatenate([
        squares[rng.integers(0, errors.size, size=(min(block, BOOTSTRAP_RESAMPLES - start), errors.size))].mean(axis=1)
        for start in range(0, BOOTSTRAP_RESAMPLES, block)
    ])
    tail = 50.0 * (1.0 - coverage)
    low, high = np.sqrt(np.percentile(means, [tail, 100.0 - tail]))
    return [float(low), float(high)]


def breakdown(rows: list[dict]) -> dict:
    """:func:`summarize` per noise level, per |truth| bin, per source and per split."""
    groups: dict[str, dict[str, list[dict]]] = {"noise_level": {}, "abs_jsn_px": {}, "source": {}, "split": {}}
    for row in rows:
        groups["noise_level"].setdefault(row["noise_level"], []).append(row)
        groups["source"].setdefault(row["source"], []).append(row)
        groups["split"].setdefault(row["split"], []).append(row)
        magnitude = abs(row["truth_px"])
        for lo, hi in zip(JSN_BINS_PX[:-1], JSN_BINS_PX[1:]):
            if lo <= magnitude < hi:
                groups["abs_jsn_px"].setdefault(f"[{lo:g}, {hi:g})", []).append(row)
    return {key: {name: summarize(members) for name, members in sorted(values.items())} for key, values in groups.items()}


# ---------------------------------------------------------------------------------------------
# Driver


def validate_records(
    records: Iterable[dict],
    method: str | Callable = "register",
    with_crlb: bool = True,
    done: dict[str, dict] | None = None,
    on_row: Callable[[dict], None] | None = None,
    num_proc: int = 1,
) -> list[dict]:
    """Evaluate ``method`` on every record, in this process or by ``num_proc`` worker processes
    (the same rows either way, in the records' order, but for the times); rows already in
    ``done`` (by pair id) are reused.

    Raises:
        InputError: the method cannot be sent to a worker process (a function defined at the
            prompt or in a notebook).
        WorkerError: a worker process stopped abruptly (killed, out of memory, or a plug-in that
            ended its process).
    """
    load_method(method)  # an unknown method is refused before any work
    done = done or {}
    order: list[str] = []

    def pending() -> Iterator[dict]:
        for record in records:
            order.append(str(record["pair_id"]))
            if order[-1] not in done:
                yield record

    measured = {}
    resume_hint = "rerun the same command to resume" if on_row is not None else "nothing was kept: run it again"
    for row in ordered_results(use_method, _evaluate, (method, with_crlb), pending(), num_proc, what="pair",
                               job_name="the method", resume_hint=resume_hint):
        measured[row["pair_id"]] = row
        if on_row is not None:
            on_row(row)
    return [done[pair_id] if pair_id in done else measured[pair_id] for pair_id in order]


# the method of this thread (the harness's, or a worker's): set by use_method
_METHOD = threading.local()


def use_method(job: tuple[str | Callable, bool]) -> None:
    """Make ``(method, with_crlb)`` the method this process runs (:func:`method_in_use`) and
    whether its rows get the Cramér-Rao bound: the set-up of a harness's items, in this process
    or in a worker (:func:`jsnsynth.workers.ordered_results`)."""
    method, with_crlb = job
    if in_worker():
        # the heap setting the jsnsynth commands make in their process (a sixth of a pair's
        # time), which a library call leaves to its caller's
        from jsnsynth.quantify.quantifier import keep_freed_heap

        keep_freed_heap()
    _METHOD.function = load_method(method)[1]
    _METHOD.with_crlb = with_crlb


def method_in_use() -> Callable:
    """The method :func:`use_method` set in this process."""
    return _METHOD.function


def _evaluate(record: dict) -> dict:
    """:func:`evaluate_pair` of one record with the method of :func:`use_method`."""
    return evaluate_pair(record, _METHOD.function, _METHOD.with_crlb)


def method_failure(exc: BaseException) -> str:
    """One line for a method's failure on one pair or trial: a refusal (``InputError``, bad
    input such as overlapping masks) in its own words, anything else with its type."""
    return str(exc) if isinstance(exc, InputError) else exception_line(exc)


def failure_reason(row: dict) -> str:
    """Why a row has no estimate: the method's error, or what it returned instead of a number."""
    if row.get("method_error"):
        return str(row["method_error"])
    return f"returned a JSN that is not a finite number ({row.get('estimate_px')})"


def check_some_estimate(rows: list[dict], method_name: str, what: str = "pairs") -> None:
    """Refuse a run in which the method estimated nothing: its statistics would be empty, and
    exit code 0 would tell a script that the method was validated. A run in which it failed on
    some gets a one-line warning (the report counts them; stderr says so).

    Raises:
        InputError: with the number of failures and the first one's reason.
    """
    failed = [r for r in rows if not math.isfinite(r.get("estimate_px", math.nan))]
    if rows and len(failed) == len(rows):
        raise InputError(f"method {method_name} failed on all {len(rows)} {what}; first: {failure_reason(failed[0])}")
    if failed:
        counted = "counted as mismatches" if what == "pairs" else "counted apart, as refused"
        warnings.warn(f"method {method_name} failed on {len(failed)} of {len(rows)} {what} ({counted}); "
                      f"first: {failure_reason(failed[0])}", stacklevel=2)


def file_stamps(paths: Iterable[str | os.PathLike]) -> list[list]:
    """Name, size and modification time of each file (None for a file that is not there, which
    the run then reports): what tells a run's inputs from the same inputs written anew."""
    stamps = []
    for path in paths:
        try:
            stat = os.stat(path)
            stamps.append([os.path.realpath(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            stamps.append([os.path.realpath(path), None, None])
    return stamps


def method_stamps(function: Callable) -> list:
    """What tells one version of a method from another, for a resume log's key: jsnsynth's
    version, and the :func:`file_stamps` of the file that defines ``function`` (a plug-in edited
    between two runs under the same ``module:function`` name must not reuse the first one's
    results). A callable without a source file (a builtin, a C extension) adds nothing."""
    target = inspect.unwrap(function) if callable(function) else function
    target = getattr(target, "func", target)  # functools.partial
    source = None
    for candidate in (target, type(target)):  # a function, or an object with __call__ (its class)
        try:
            source = inspect.getsourcefile(candidate)
        except TypeError:  # an instance, a builtin
            continue
        if source:
            break
    return [__version__, file_stamps([source]) if source else None]


class ResumeLog:
    """The log that lets an interrupted run go on where it stopped.

    One JSON line per finished item in ``out_dir/.<name>-<key>.jsonl`` (a name over 100 bytes as
    a hash of it), the key a hash of what the items depend on (the options, and what the caller
    adds: :func:`file_stamps` of the inputs, or nothing when each item records the stamps of its
    own inputs), so a run with other options or rebuilt inputs starts a log of its own. A line
    cut short by an interruption is skipped. Once the report is written, the folder's logs of
    this name go (:meth:`finish`: a folder holds one report); a run that stops before any item is
    logged leaves none, nor the output folder if it made it. The log holds the folder for runs
    of its name (:func:`~jsnsynth.synth.io.held_folder`) until :meth:`finish`, :meth:`discard`
    or :meth:`keep_if_resumable`: two runs into one folder both wrote their report there, the
    files being the last one's.

    Raises:
        OutputError: the folder cannot be made, or another run of this name holds it.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, key_parts: list,
                 output: str | os.PathLike | None = None) -> None:
        self.created = not Path(out_dir).exists()
        out = make_output_folder(out_dir)
        key = hashlib.sha1(json.dumps(key_parts, default=str).encode()).hexdigest()[:12]
        # a long name (a results table's) within the file system's 255 bytes, as a hash of it
        self.name = name if len(name.encode()) <= 100 else f"log-{hashlib.sha1(name.encode()).hexdigest()[:16]}"
        self.path = out / f".{self.name}-{key}.jsonl"
        self._hold = contextlib.ExitStack()
        try:
            # another run of this name into the folder (its report, or ``output``) is refused;
            # runs writing other outputs there go ahead
            self._hold.enter_context(held_folder(out, f".{self.name}.lock", output))
            if self.path.exists() and self.path.stat().st_size:
                with open(self.path, "rb") as handle:
                    handle.seek(-1, os.SEEK_END)
                    cut = handle.read(1) != b"\n"
                if cut:  # a line cut by a kill: end it, so that the next item starts a line of its own
                    with open(self.path, "a") as handle:
                        handle.write("\n")
        except BaseException as exc:
            self._hold.close()
            if self.created:  # made for this run, which goes no further (empty unless another run's)
                with contextlib.suppress(OSError):
                    out.rmdir()
            if isinstance(exc, OSError):
                raise OutputError(f"{out}: cannot keep the run's log there ({exc.strerror or exception_line(exc)})") from None
            raise

    def logged(self, id_field: str) -> dict[Any, dict]:
        """The items logged by earlier runs, by their ``id_field``."""
        items: dict[Any, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption
                items[item[id_field]] = item
        return items

    def append(self, item: dict) -> None:
        """Log one finished item."""
        with open(self.path, "a") as handle:
            handle.write(json.dumps(item) + "\n")

    def discard(self) -> None:
        """Remove the log, and the output folder if this run made it and it is empty; let the
        folder go."""
        self.path.unlink(missing_ok=True)
        self._hold.close()  # first: its lock file is in the folder
        if self.created:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    def keep_if_resumable(self) -> None:
        """After an interruption: keep the log only if it holds an item; let the folder go."""
        if not (self.path.exists() and self.path.stat().st_size):
            self.discard()
        self._hold.close()

    def finish(self) -> None:
        """After the report is written: remove this log and any other of this name in the folder
        (runs with other options or inputs, whose report this one replaced); let the folder go."""
        # the key's twelve hex digits: 'validate' must not take 'validate-real's logs
        for path in self.path.parent.glob(f".{self.name}-{'[0-9a-f]' * 12}.jsonl"):
            path.unlink(missing_ok=True)
        self._hold.close()

    def __del__(self) -> None:
        # a caller that raised between making the log and ending it: the folder is not held on
        # (in the same process a second run would be refused until the log was collected)
        hold = getattr(self, "_hold", None)
        if hold is not None:
            hold.close()


def validate_dataset(
    folder: str | os.PathLike,
    method: str | Callable = "register",
    out_dir: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    with_crlb: bool = True,
    num_proc: int = 1,
) -> dict:
    """Validate a JSN method on a pair dataset (contract 3) and write the report.

    Args:
        folder: the dataset folder (``README.md`` + ``data/<split>-*.parquet``).
        method: builtin name, ``module:function`` or a callable (see the module docstring).
        out_dir: where to write ``summary.json``, ``pairs.csv``, ``bland_altman.png`` and
            ``error_vs_truth.png``; None writes nothing. An interrupted run resumes from the
            per-pair log it keeps in ``out_dir``.
        split: only this split (None or ``"all"``: all).
        limit: at most this many pairs.
        with_crlb: compute the per-pair Cramér-Rao bound.
        num_proc: worker processes (:func:`validate_records`; the report is the same but for
            the times).

    Returns:
        The summary: ``overall`` statistics, the ``breakdown`` and the output paths.

    Raises:
        InputError: a missing folder, an unfinished dataset, a dataset of the wrong schema, an
            unknown split or method, a method that estimated no pair at all, or one that cannot
            be sent to a worker process.
        WorkerError: a worker process stopped abruptly.
        OutputError: ``out_dir`` exists and is not a folder, lies inside the dataset, holds another
            run's report, or a report file cannot be written.
    """
    folder = Path(folder)
    check_num_proc(num_proc)
    if split == "all":  # what the report records for no split: it names one run
        split = None
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"the limit on pairs must be a whole number of at least 1, got {limit!r}")  # 2.5 took 3
    method_name, function = load_method(method)
    shards = dataset_shards(folder, split)  # fail fast on a wrong schema
    # absolute: the report says where its dataset is, and a rerun from another folder is the same run
    dataset_path = os.path.abspath(folder)
    log = None
    if out_dir is not None:
        if Path(os.path.realpath(out_dir)).is_relative_to(os.path.realpath(folder)):
            # the report would become part of the dataset: `publish` uploads the whole folder
            raise OutputError(f"{out_dir}: is inside the dataset {folder}; write the report outside it")
        check_report_of_same_run(report_paths(Path(out_dir))["summary"],
                                 {"method": method_name, "dataset": dataset_path, "split": split or "all"})
        from jsnsynth.quantify.real import REPORT_NAMES as REAL_REPORT_NAMES  # real imports this module

        check_no_report_of(out_dir, "validate-real", [REAL_REPORT_NAMES["summary"]])
        log = ResumeLog(out_dir, "validate", [str(folder.resolve()), method_name, method_stamps(function), split,
                                              limit, with_crlb, file_stamps(shards)])
    try:  # whatever stops the run keeps what is logged for a rerun, and lets the folder go
        if log is not None:
            for path in report_paths(log.path.parent).values():  # before the long work, not after it
                check_writable(path)
        rows = validate_records(read_shards(shards, limit), method if isinstance(method, str) else function, with_crlb,
                                log.logged("pair_id") if log else None, log.append if log else None, num_proc)
        if not rows:
            if log is not None:
                log.discard()
            raise InputError(f"{folder}: no pairs to validate")
        try:
            check_some_estimate(rows, method_name)
        except InputError:
            # a finished run with nothing to report: nothing to resume either (a fixed plug-in
            # must start afresh)
            if log is not None:
                log.discard()
            raise
        summary = {
            "dataset": dataset_path,
            "method": method_name,
            "split": split or "all",
            "mismatch_threshold_px": MISMATCH_PX,
            "overall": summarize(rows),
            "breakdown": breakdown(rows),
        }
        if log is not None:
            summary["outputs"] = write_report(rows, summary, Path(out_dir))
            log.finish()
    except BaseException:  # stopped (Ctrl-C, an unreadable pair, a report that cannot be written)
        if log is not None:
            log.keep_if_resumable()  # (nothing to keep after a discard)
        raise
    return summary


def check_report_of_same_run(summary_path: str | os.PathLike, identity: dict) -> None:
    """Refuse an output folder whose finished report is another run's (another method, dataset
    or split): a folder holds one report, and the second method's replaced the first's without a
    word. The same run again (a plug-in mended, say) rewrites its report. A file of the report's
    name that is no report of the command (a user's own ``summary.json``) is refused too.

    Raises:
        OutputError: naming the report's run.
    """
    path = Path(summary_path)
    if not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or not any(key in earlier for key in identity):
        # someone's own file of that name: it was written over without a word
        raise OutputError(f"{path}: is not a report of this command, and the report would replace it; choose "
                          "another folder")

    def same(key: str, value: Any) -> bool:  # a dataset or folder given once as 'ds', once as './ds/'
        if key in ("dataset", "folder"):
            # reports store it absolute; one written before they did, relative to where it was run
            return os.path.realpath(str(earlier[key])) == os.path.realpath(str(value))
        return str(earlier[key]) == str(value)

    differ = [k for k, v in identity.items() if k in earlier and not same(k, v)]
    if differ:
        what = ", ".join(f"{k} {earlier[k]}" for k in identity if k in earlier)
        raise OutputError(f"{path.parent}: holds the report of another run ({what}); choose another folder")


def check_no_report_of(out_dir: str | os.PathLike, command: str, names: list[str]) -> None:
    """Refuse an output folder that holds the report of another command (all of ``names``, its
    files): a folder holds one report, and ``validate`` and ``validate-real`` wrote theirs side
    by side.

    Raises:
        OutputError: naming the command whose report the folder holds.
    """
    if all(os.path.isfile(os.path.join(out_dir, name)) for name in names):
        raise OutputError(f"{out_dir}: holds the report of jsnsynth {command}; choose another folder")


def report_paths(out: Path, prefix: str = "") -> dict[str, Path]:
    """The files :func:`write_report` writes into ``out``."""
    return {
        "summary": out / f"{prefix}summary.json",
        "pairs": out / f"{prefix}pairs.csv",
        "bland_altman": out / f"{prefix}bland_altman.png",
        "error_vs_truth": out / f"{prefix}error_vs_truth.png",
    }


def write_report(rows: list[dict], summary: dict, out: Path, prefix: str = "") -> dict:
    """Write ``summary.json`` (strict JSON: a number that is not finite is null), ``pairs.csv``
    and the two plots into ``out``, all of them or none."""
    paths = report_paths(out, prefix)
    buffer = io.StringIO()
    # union of the keys in order: rows resumed from an older run may lack newer columns
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    title = f"{summary.get('method', '')} on {Path(str(summary.get('dataset', ''))).name}"
    record = dict(summary)
    record["outputs"] = {k: str(v) for k, v in paths.items()}
    write_files_atomic({
        paths["pairs"]: buffer.getvalue().encode(),
        paths["bland_altman"]: bland_altman_png(rows, title),
        paths["error_vs_truth"]: error_vs_truth_png(rows, title),
        paths["summary"]: (json_text(record) + "\n").encode(),
    })
    return record["outputs"]


def bland_altman_png(rows: list[dict], title: str = "") -> bytes:
    """Bland-Altman plot (mm): difference estimate - truth against their mean, by noise level."""
    fig = new_figure(figsize=(6.4, 4.4), constrained_layout=True)
    ax = fig.subplots()
    for level in sorted({r["noise_level"] for r in rows}):
        sel = [r for r in rows if r["noise_level"] == level and math.isfinite(r["error_px"])]
        mean = [0.5 * (r["truth_px"] + r["estimate_px"]) * r["pixel_spacing_mm"] for r in sel]
        diff = [r["error_mm"] for r in sel]
        ax.scatter(mean, diff, s=12, alpha=0.7, label=f"noise {level}")
    errors = np.array([r["error_mm"] for r in rows if math.isfinite(r["error_mm"])])
    if errors.size > 1:
        bias, sd = errors.mean(), errors.std(ddof=1)
        for value, style in ((bias, "-"), (bias - 1.96 * sd, "--"), (bias + 1.96 * sd, "--")):
            ax.axhline(value, color="k", ls=style, lw=0.8)
        ax.set_title(f"{title}\nbias {bias:+.4f} mm, 95% LoA [{bias - 1.96 * sd:+.4f}, {bias + 1.96 * sd:+.4f}] mm", fontsize=9)
    ax.set_xlabel("mean of estimate and truth (mm)")
    ax.set_ylabel("estimate - truth (mm)")
    ax.legend(fontsize=8)
    return figure_bytes(fig)


def error_vs_truth_png(rows: list[dict], title: str = "") -> bytes:
    """Error (px) against the true JSN (px); each pair's +-2 sqrt(CRLB) drawn as a bar about zero."""
    fig = new_figure(figsize=(6.4, 4.4), constrained_layout=True)
    ax = fig.subplots()
    for index, level in enumerate(sorted({r["noise_level"] for r in rows})):
        colour = f"C{index}"
        sel = [r for r in rows if r["noise_level"] == level and math.isfinite(r["error_px"])]
        ax.scatter([r["truth_px"] for r in sel], [r["error_px"] for r in sel], s=14, alpha=0.8, color=colour,
                   label=f"noise {level}")
        bounded = [r for r in sel if math.isfinite(r["crlb_px"]) and r["crlb_px"] > 0]
        if bounded:
            ax.errorbar([r["truth_px"] + 0.02 * (index - 1.5) for r in bounded], [0.0] * len(bounded),
                        yerr=[2 * r["crlb_px"] for r in bounded], fmt="none", ecolor=colour, alpha=0.35, lw=2,
                        label=f"±2 sqrt(CRLB), {level}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("true JSN progression (px, + = narrowing)")
    ax.set_ylabel("estimate - truth (px)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return figure_bytes(fig)
