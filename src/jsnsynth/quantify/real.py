"""Real-series protocol without ground truth (the registration paper's reproducibility test).

For every joint series of a finger-joint folder (1-4 visits, ``manifest.csv`` rows in visit
order) and every visit pair ``i < j``:

- JSN measured on the original images and after ``n_shifts`` (9) random integer shifts of both
  images (each image by its own shift in ``[-3, 3]^2`` px, edges replicated, masks moved with
  them); the trials' SD is the reproducibility;
- mismatching: the trial farthest from the mean is dropped until the SD is below
  ``mismatch_sd_mm`` (0.3 mm); every dropped trial counts as a mismatch (trials the method
  refuses as bad input, e.g. a visit whose two masks coincide, are counted apart);
- transitivity for series with three or more visits: ``JSN_ij - (JSN_ik + JSN_kj)`` for every
  ``i < k < j`` (original images); for a method that reports a standard error (``jsn_se_px``),
  each residual is also divided by the three measurements' combined standard error, a check of
  that error without ground truth (``transitivity_z_rms``: about 1 when it is honest).

Millimetres use the nominal 0.175 mm/px (the crops publish no spacing).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from jsnsynth.errors import InputError, OutputError
from jsnsynth.figures import figure_bytes, new_figure
from jsnsynth.quantify.quantifier import jsn_from_transforms, mean_similarity
from jsnsynth.quantify.validate import (
    ResumeLog,
    call_method,
    check_no_report_of,
    check_report_of_same_run,
    check_some_estimate,
    failure_reason,
    file_stamps,
    load_method,
    method_failure,
    method_in_use,
    method_stamps,
    read_estimate,
    report_paths,
    use_method,
)
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.fingerjoints import FingerJointRecord, read_manifest
from jsnsynth.synth.io import (
    check_output_folder,
    check_writable,
    json_text,
    read_mask,
    read_radiograph,
    write_files_atomic,
)
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM, check_pixel_spacing
from jsnsynth.workers import check_num_proc, ordered_results


#: The files of :func:`validate_real`'s report, by their key in its ``outputs``.
REPORT_NAMES = {"pairs": "real_pairs.csv", "figure": "real_series.png", "summary": "real_summary.json"}


def shift_image(image: np.ndarray, shift_xy: tuple[int, int], replicate: bool = True) -> np.ndarray:
    """Integer translation by ``(sx, sy)`` px; edges replicated (images) or zero (masks)."""
    matrix = np.array([[1, 0, shift_xy[0]], [0, 1, shift_xy[1]]], dtype=np.float64)
    border = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
    source = image.astype(np.uint8) if image.dtype == bool else image
    moved = cv2.warpAffine(source, matrix, image.shape[::-1], flags=cv2.INTER_NEAREST, borderMode=border)
    return moved.astype(bool) if image.dtype == bool else moved


def drop_outlier_trials(values_mm: np.ndarray, max_sd_mm: float) -> tuple[np.ndarray, int]:
    """Drop the trial farthest from the mean until the SD is below ``max_sd_mm``; return (kept, dropped).

    Two trials that still disagree lose one of them (a single trial has no spread left).
    """
    kept = np.asarray(values_mm, dtype=np.float64)
    dropped = 0
    while kept.size > 1 and kept.std(ddof=1) >= max_sd_mm:
        kept = np.delete(kept, int(np.argmax(np.abs(kept - kept.mean()))))
        dropped += 1
    return kept, dropped


def multi_visit_series(folder: str | os.PathLike, limit_series: int | None = None) -> list[tuple[str, list[FingerJointRecord]]]:
    """The series of a finger-joint folder with two or more visits, in manifest order, as
    ``(series name, visits)``; only the first ``limit_series`` when given."""
    series: dict[str, list[FingerJointRecord]] = {}
    for record in read_manifest(folder):
        series.setdefault(record.series, []).append(record)
    chosen = [(name, visits) for name, visits in series.items() if len(visits) >= 2]
    return chosen if limit_series is None else chosen[:limit_series]


def load_visit(record: FingerJointRecord) -> dict:
    """One visit's image (integer pixels at its bit depth) and bone masks, as the methods take them."""
    image = read_radiograph(record.image)
    shape = image.intensity.shape
    pixels = np.rint(image.intensity * ((1 << image.bit_depth) - 1)).astype(np.uint16 if image.bit_depth > 8 else np.uint8)
    return {
        "image": pixels,
        "upper": read_mask(record.mask_upper, shape),
        "lower": read_mask(record.mask_lower, shape),
        "name": record.name,
    }


def measure_pair(
    base: dict, follow: dict, method: Callable, rng: np.random.Generator, n_shifts: int, max_shift_px: int, spacing_mm: float
) -> list[dict]:
    """JSN of one visit pair on the originals and after ``n_shifts`` random integer shifts of both."""
    trials = []
    for trial in range(n_shifts + 1):
        if trial == 0:
            sb, sf = (0, 0), (0, 0)
        else:
            sb = tuple(int(v) for v in rng.integers(-max_shift_px, max_shift_px + 1, size=2))
            sf = tuple(int(v) for v in rng.integers(-max_shift_px, max_shift_px + 1, size=2))
        start = time.perf_counter()
        try:
            result = call_method(
                method,
                (shift_image(base["image"], sb), shift_image(follow["image"], sf),
                 shift_image(base["upper"], sb, False), shift_image(base["lower"], sb, False)),
                {"pixel_spacing_mm": spacing_mm,
                 "followup_upper_mask": shift_image(follow["upper"], sf, False),
                 "followup_lower_mask": shift_image(follow["lower"], sf, False)},
            )
            jsn_px, flagged, se_px = read_estimate(result)
            error = "" if math.isfinite(jsn_px) else failure_reason({"estimate_px": jsn_px})
        except (Exception, SystemExit) as exc:  # noqa: BLE001  (as in validate: one trial's failure, not the run's)
            result, jsn_px, flagged, se_px, error = None, float("nan"), True, float("nan"), method_failure(exc)
        elapsed = time.perf_counter() - start
        trials.append({"trial": trial, "shift_baseline": sb, "shift_followup": sf, "jsn_px": jsn_px,
                       "jsn_mm": jsn_px * spacing_mm, "jsn_se_mm": se_px * spacing_mm, "flagged": flagged, "time_s": elapsed,
                       "geometry": _geometry_of(result) if trial == 0 else None, "method_error": error})
    return trials


def _geometry_of(result: Any) -> dict | None:
    """The per-bone transforms, centre and axis of a result, when the method reports them."""
    needed = ("upper", "lower", "joint_center_xy", "joint_axis_deg")
    if result is None or not all(hasattr(result, name) for name in needed):
        return None
    if not all(isinstance(getattr(result, name), Similarity) for name in ("upper", "lower")):
        return None
    return {name: getattr(result, name) for name in needed}


def _loggable(trial: dict) -> dict:
    """A trial as a line of the resume log: its transforms as plain numbers (a method may give
    numpy scalars or arrays, which JSON does not take)."""
    geometry = trial["geometry"]
    if geometry is not None:
        geometry = {
            "upper": {k: float(v) for k, v in dataclasses.asdict(geometry["upper"]).items()},
            "lower": {k: float(v) for k, v in dataclasses.asdict(geometry["lower"]).items()},
            "joint_center_xy": [float(v) for v in geometry["joint_center_xy"]],
            "joint_axis_deg": float(geometry["joint_axis_deg"]),
        }
    return {**trial, "geometry": geometry}


def _from_log(trial: dict) -> dict:
    """:func:`_loggable` undone."""
    geometry = trial["geometry"]
    if geometry is not None:
        geometry = {**geometry, "upper": Similarity(**geometry["upper"]), "lower": Similarity(**geometry["lower"]),
                    "joint_center_xy": tuple(geometry["joint_center_xy"])}
    return {**trial, "geometry": geometry}


def jsn_about_reference(geometry: dict, reference_xy: np.ndarray, axis_deg: float) -> float:
    """JSN (px of the pair's baseline) of a measured pair re-evaluated about another centre and axis.

    JSN depends on where it is measured when the bones flex between visits (relative rotation x
    offset of the centre), so a transitivity check must evaluate all three pairs at the same
    anatomical point: see :func:`transitivity_common_centre`.
    """
    return jsn_from_transforms(geometry["upper"], geometry["lower"], (float(reference_xy[0]), float(reference_xy[1])), axis_deg)


def transitivity_common_centre(g_ik: dict, g_kj: dict, g_ij: dict) -> tuple[float, float, float] | None:
    """``(JSN_ij, JSN_ik, JSN_kj)`` in px of visit ``i``, all at visit ``i``'s joint centre and axis.

    Visit ``i``'s centre ``c_i`` is carried into visit ``k`` by the mean similarity ``M_ik`` of the
    two bones (the repositioning), the axis is turned by its angle, and ``JSN_kj`` (in pixels of
    visit ``k``) is divided by ``M_ik``'s scale to be in pixels of visit ``i``. Then the three numbers
    differ only by the method's own errors (and second-order terms of the composition).
    """
    if g_ik is None or g_kj is None or g_ij is None:
        return None
    centre_i = np.array(g_ij["joint_center_xy"], dtype=np.float64)
    axis_i = float(g_ij["joint_axis_deg"])
    jsn_ij = jsn_about_reference(g_ij, centre_i, axis_i)
    jsn_ik = jsn_about_reference(g_ik, centre_i, axis_i)
    mean = mean_similarity(g_ik["upper"], g_ik["lower"], float(centre_i[0]), float(centre_i[1]))
    centre_k = mean.apply(centre_i)
    jsn_kj = jsn_about_reference(g_kj, centre_k, axis_i + mean.angle_deg) / mean.scale
    return jsn_ij, jsn_ik, jsn_kj


def validate_real(
    folder: str | os.PathLike,
    method: str | Callable = "register",
    out_dir: str | os.PathLike | None = None,
    limit_series: int | None = None,
    n_shifts: int = 9,
    max_shift_px: int = 3,
    mismatch_sd_mm: float = 0.3,
    pixel_spacing_mm: float | None = None,
    seed: int = 0,
    num_proc: int = 1,
) -> dict:
    """Run the real-series protocol (module docstring) and optionally write its report.

    Args:
        folder: finger-joint folder with ``manifest.csv``.
        method: builtin name, ``module:function`` or a callable (as for validation).
        out_dir: where to write ``real_summary.json``, ``real_pairs.csv`` and ``real_series.png``;
            None writes nothing. An interrupted run resumes from the per-pair log it keeps there.
        limit_series: only the first N series with at least two visits.
        n_shifts: shifted trials per pair besides the original.
        max_shift_px: largest integer shift per axis.
        mismatch_sd_mm: SD below which the trial dropping stops.
        pixel_spacing_mm: the crops' pixel spacing (mm), for the millimetres and the method;
            None: the nominal 0.175 mm/px.
        seed: base seed of the shifts (``SeedSequence([seed, pair number])``).
        num_proc: worker processes (the trials are the same but for their times).

    Returns:
        Summary with ``sd_trials_mm`` (mean and median over pairs), ``mismatching_rate``,
        ``transitivity_rms_mm`` and counts.

    Raises:
        InputError: missing folder/manifest, unreadable images or masks (naming the file), or a
            method that measured no trial at all.
        OutputError: ``out_dir`` or a report file in it cannot be written (checked before the work).
    """
    check_num_proc(num_proc)
    # the crops' own headers are not read: the nominal spacing is all that is known
    spacing_source = "option" if pixel_spacing_mm is not None else f"nominal ({DEFAULT_PIXEL_SPACING_MM:g} mm/px)"
    pixel_spacing_mm = (DEFAULT_PIXEL_SPACING_MM if pixel_spacing_mm is None
                        else check_pixel_spacing(pixel_spacing_mm, "pixel spacing"))
    method_name, function = load_method(method)
    if out_dir is not None:
        check_output_folder(out_dir)
        if Path(os.path.realpath(out_dir)).is_relative_to(os.path.realpath(folder)):
            # the report's files would lie among the crops (validate refuses its dataset alike)
            raise OutputError(f"{out_dir}: is inside the folder {folder}; write the report outside it")
        check_report_of_same_run(os.path.join(out_dir, REPORT_NAMES["summary"]),
                                 {"method": method_name, "folder": os.path.abspath(folder),
                                  "pixel_spacing_mm": pixel_spacing_mm})
        paths = report_paths(Path(out_dir))
        check_no_report_of(out_dir, "validate", [paths["summary"].name, paths["pairs"].name])
        for name in REPORT_NAMES.values():
            check_writable(os.path.join(out_dir, name))
    chosen = multi_visit_series(folder, limit_series)
    if not chosen:
        raise InputError(f"{folder}: no series with two or more visits")
    log, logged = None, {}
    if out_dir is not None:
        # each pair's line holds the stamps of its two visits' files: a file repaired after a run
        # stopped on it costs only the pairs that read it
        # (not the series limit: pairs are numbered in manifest order, so a longer or shorter run
        # shares the numbers of the series both take, and each line's stamps say whether it fits)
        log = ResumeLog(out_dir, "validate-real", [str(Path(folder).resolve()), method_name, method_stamps(function),
                                                   n_shifts, max_shift_px, mismatch_sd_mm, pixel_spacing_mm, seed])
    try:  # whatever stops the run keeps what is logged for a rerun, and lets the folder go
        if log is not None:
            logged = log.logged("pair")
        pair_rows, transitivity, trials = _measure_series(
            chosen, method if isinstance(method, str) else function, n_shifts, max_shift_px, mismatch_sd_mm,
            pixel_spacing_mm, seed, logged, log.append if log else None, num_proc)
        try:
            check_some_estimate(trials, method_name, "trials")
        except InputError:  # a finished run with nothing to report: nothing to resume either
            if log is not None:
                log.discard()
            raise
        # absolute: the report says where its folder is, and a rerun from elsewhere is the same run
        summary = {"folder": os.path.abspath(folder), "method": method_name,
                   **real_summary(pair_rows, transitivity, len(chosen), pixel_spacing_mm, spacing_source)}
        if log is not None:
            out = log.path.parent  # the log made the folder
            paths = {key: out / name for key, name in REPORT_NAMES.items()}
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(pair_rows[0]))
            writer.writeheader()
            writer.writerows(pair_rows)
            figure = _real_figure(pair_rows, transitivity, summary)
            summary["outputs"] = {key: str(path) for key, path in paths.items()}
            # all three or none; strict JSON (a number that is not finite is null)
            write_files_atomic({
                paths["pairs"]: buffer.getvalue().encode(),
                paths["figure"]: figure,
                paths["summary"]: (json_text({**summary, "transitivity": transitivity}) + "\n").encode(),
            })
            log.finish()
    except BaseException:  # stopped (Ctrl-C, an unreadable image, a report that cannot be written)
        if log is not None:
            log.keep_if_resumable()  # (nothing to keep after a discard)
        raise
    return summary


def _measure_series(
    chosen: list[tuple[str, list[FingerJointRecord]]],
    method: str | Callable,
    n_shifts: int,
    max_shift_px: int,
    mismatch_sd_mm: float,
    pixel_spacing_mm: float,
    seed: int,
    logged: dict[int, dict],
    on_pair: Callable[[dict], None] | None,
    num_proc: int = 1,
) -> tuple[list[dict], list[dict], list[dict]]:
    """:func:`validate_real`'s measurements: the per-pair rows, the per-triplet records and every
    trial's estimate. Pairs in ``logged`` (by their number in the run) are taken from there;
    the others are measured in this process or by ``num_proc`` worker processes (the same
    trials either way, but for their times), and each is passed to ``on_pair``."""
    keep_stamps = bool(logged) or on_pair is not None  # the stamps only matter to a log (a run with --out)
    pairs = []  # (pair number, visit i, visit j, stamps of their files), in the run's order
    for _, visits in chosen:
        for i in range(len(visits)):
            for j in range(i + 1, len(visits)):
                inputs = (file_stamps(path for visit in (visits[i], visits[j])
                                      for path in (visit.image, visit.mask_upper, visit.mask_lower))
                          if keep_stamps else None)
                pairs.append((len(pairs), visits[i], visits[j], inputs))
    trials_of = {number: [_from_log(trial) for trial in logged[number]["trials"]]
                 for number, _, _, inputs in pairs if number in logged and logged[number]["inputs"] == inputs}
    pending = [(number, base, follow) for number, base, follow, _ in pairs if number not in trials_of]
    job = (method, n_shifts, max_shift_px, pixel_spacing_mm, seed)
    resume_hint = ("the pairs measured are kept: rerun the same command to resume" if on_pair is not None
                   else "nothing was kept: run it again")
    measured = ordered_results(_use_protocol, _measure_numbered_pair, job, pending, num_proc, what="visit pair",
                               job_name="the method", resume_hint=resume_hint)
    # closed on the way out: an error in the loop ends the workers at once
    with contextlib.closing(measured):
        for trials, (number, _, _) in zip(measured, pending):
            trials_of[number] = trials
            if on_pair is not None:
                on_pair({"pair": number, "inputs": pairs[number][3], "trials": [_loggable(trial) for trial in trials]})

    pair_rows: list[dict] = []
    transitivity: list[dict] = []
    all_trials: list[dict] = []
    pair_number = 0
    for name, visits in chosen:
        jsn, se, geometry, flagged = {}, {}, {}, {}
        for i in range(len(visits)):
            for j in range(i + 1, len(visits)):
                trials = trials_of[pair_number]
                pair_number += 1
                all_trials.extend({"estimate_px": t["jsn_px"], "method_error": t["method_error"]} for t in trials)
                values = np.array([t["jsn_mm"] for t in trials])
                finite = values[np.isfinite(values)]
                kept, dropped = drop_outlier_trials(finite, mismatch_sd_mm)
                jsn[(i, j)] = trials[0]["jsn_mm"]
                se[(i, j)] = trials[0]["jsn_se_mm"]
                geometry[(i, j)] = trials[0]["geometry"]
                flagged[(i, j)] = bool(trials[0]["flagged"])
                refusals = [t["method_error"] for t in trials if t["method_error"]]
                pair_rows.append({
                    "series": name, "visit_i": i, "visit_j": j,
                    "image_i": visits[i].image.name, "image_j": visits[j].image.name,
                    "jsn_mm_original": trials[0]["jsn_mm"],
                    "jsn_mm_mean": float(finite.mean()) if finite.size else float("nan"),
                    "sd_trials_mm": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                    "sd_kept_mm": float(kept.std(ddof=1)) if kept.size > 1 else float("nan"),
                    "n_trials": int(values.size), "n_dropped": dropped,
                    "n_refused": int(values.size - finite.size),
                    # of the trials measured: a refused trial is counted apart (n_refused)
                    "n_flagged": int(sum(t["flagged"] for t in trials if math.isfinite(t["jsn_px"]))),
                    "time_per_trial_s": float(np.nanmean([t["time_s"] for t in trials])),
                    # why the method refused (the first trial's reason: the same images refused alike)
                    "refusal": refusals[0] if refusals else "",
                })
        for i in range(len(visits)):
            for k in range(i + 1, len(visits)):
                for j in range(k + 1, len(visits)):
                    # each pair about its own baseline's centre (the registration paper's protocol)
                    own_residual = jsn[(i, j)] - (jsn[(i, k)] + jsn[(k, j)])
                    # all three about visit i's centre: isolates the method's own error
                    common = transitivity_common_centre(geometry[(i, k)], geometry[(k, j)], geometry[(i, j)])
                    if common is None:  # the method reports no transforms: own centres only
                        direct_mm, sum_mm = jsn[(i, j)], jsn[(i, k)] + jsn[(k, j)]
                    else:
                        direct_mm = common[0] * pixel_spacing_mm
                        sum_mm = (common[1] + common[2]) * pixel_spacing_mm
                    transitivity.append({"series": name, "i": i, "k": k, "j": j, "jsn_ij_mm": direct_mm,
                                         "sum_mm": sum_mm, "residual_mm": direct_mm - sum_mm,
                                         "common_centre": common is not None,
                                         # the three errors as if independent (they share visits' noise)
                                         "residual_se_mm": math.sqrt(se[(i, j)] ** 2 + se[(i, k)] ** 2 + se[(k, j)] ** 2),
                                         "flagged": flagged[(i, k)] or flagged[(k, j)] or flagged[(i, j)],
                                         "residual_own_centres_mm": own_residual})
    return pair_rows, transitivity, all_trials


# the protocol of this thread (the harness's, or a worker's): set by _use_protocol
_PROTOCOL = threading.local()


def _use_protocol(job: tuple) -> None:
    """Make ``(method, n_shifts, max_shift_px, pixel_spacing_mm, seed)`` what
    :func:`_measure_numbered_pair` runs (in this process, or in a worker:
    :func:`jsnsynth.workers.ordered_results`)."""
    method, n_shifts, max_shift_px, pixel_spacing_mm, seed = job
    use_method((method, False))
    _PROTOCOL.settings = {"n_shifts": n_shifts, "max_shift_px": max_shift_px, "pixel_spacing_mm": pixel_spacing_mm,
                          "seed": seed}


def _measure_numbered_pair(pair: tuple[int, FingerJointRecord, FingerJointRecord]) -> list[dict]:
    """:func:`measure_pair` of the run's pair number ``pair[0]`` (its shifts drawn from
    ``SeedSequence([seed, number])``), its two visits read here."""
    number, base, follow = pair
    protocol = _PROTOCOL.settings
    rng = np.random.default_rng(np.random.SeedSequence([protocol["seed"], number]))
    return measure_pair(load_visit(base), load_visit(follow), method_in_use(), rng, protocol["n_shifts"],
                        protocol["max_shift_px"], protocol["pixel_spacing_mm"])


def real_summary(pair_rows: list[dict], transitivity: list[dict], n_series: int, pixel_spacing_mm: float,
                 pixel_spacing_source: str) -> dict[str, Any]:
    """The figures of :func:`validate_real`'s summary from its per-pair and per-triplet records."""
    sds = np.array([r["sd_trials_mm"] for r in pair_rows], dtype=np.float64)
    # trials the method refused (bad input such as overlapping masks) are reported apart
    n_refused = sum(r["n_refused"] for r in pair_rows)
    n_trials = sum(r["n_trials"] for r in pair_rows) - n_refused
    n_dropped = sum(r["n_dropped"] for r in pair_rows)
    summary: dict[str, Any] = {
        "pixel_spacing_mm": pixel_spacing_mm,
        "pixel_spacing_source": pixel_spacing_source,
        "n_series": n_series,
        "n_pairs": len(pair_rows),
        "n_trials": n_trials,
        "n_trials_refused": n_refused,
        # no SD without shifted trials (n_shifts=0): NaN, not a warning
        "sd_trials_mm_mean": float(np.nanmean(sds)) if np.isfinite(sds).any() else float("nan"),
        "sd_trials_mm_median": float(np.nanmedian(sds)) if np.isfinite(sds).any() else float("nan"),
        "mismatching_rate": n_dropped / n_trials if n_trials else float("nan"),
        "flag_rate": sum(r["n_flagged"] for r in pair_rows) / n_trials if n_trials else float("nan"),
        **transitivity_summary(transitivity),
        "time_per_trial_s": float(np.nanmean([r["time_per_trial_s"] for r in pair_rows])),
        "n_pairs_refused": int(sum(not math.isfinite(r["jsn_mm_original"]) for r in pair_rows)),
    }
    return summary


def transitivity_summary(triplets: list[dict]) -> dict[str, Any]:
    """The transitivity figures of :func:`validate_real`'s summary from its per-triplet records.

    A triplet with a visit pair the method refused has no residual: it counts in
    ``n_triplets`` but not in ``n_triplets_measured``, the RMS values, or the question whether
    every residual was taken about a common centre.
    """
    measured = [t for t in triplets if math.isfinite(t["residual_mm"])]
    residuals = np.array([t["residual_mm"] for t in measured], dtype=np.float64)
    # the triplets whose three measurements the method did not flag: what a user who trusts
    # the flags gets
    trusted = np.array([t["residual_mm"] for t in measured if not t["flagged"]], dtype=np.float64)
    own = np.array([t["residual_own_centres_mm"] for t in triplets], dtype=np.float64)
    own = own[np.isfinite(own)]
    # residuals in units of their reported standard error, where the method reports one
    z = np.array([t["residual_mm"] / t["residual_se_mm"] for t in measured
                  if 0.0 < t.get("residual_se_mm", math.nan) < math.inf], dtype=np.float64)

    def rms(values: np.ndarray) -> float | None:
        return float(np.sqrt(np.mean(values**2))) if values.size else None

    return {
        "n_triplets": len(triplets),
        "n_triplets_measured": len(measured),
        "transitivity_rms_mm": rms(residuals),
        "transitivity_max_mm": float(np.max(np.abs(residuals))) if residuals.size else None,
        "n_triplets_unflagged": int(trusted.size),
        "transitivity_rms_unflagged_mm": rms(trusted),
        "transitivity_common_centre": bool(measured) and all(t["common_centre"] for t in measured),
        "transitivity_rms_own_centres_mm": rms(own),
        "n_triplets_with_se": int(z.size),
        "transitivity_z_rms": rms(z),
    }


def _real_figure(pair_rows: list[dict], transitivity: list[dict], summary: dict) -> bytes:
    fig = new_figure(figsize=(10, 4), constrained_layout=True)
    axes = fig.subplots(1, 2)
    sds = np.array([r["sd_trials_mm"] for r in pair_rows], dtype=np.float64)
    sds = sds[np.isfinite(sds)]
    positive = sds[sds > 0]
    if positive.size:
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, 25)
        axes[0].hist(positive, bins=bins, color="tab:blue")
        axes[0].set_xscale("log")
    axes[0].set_xlabel("SD of the 10 trials per visit pair (mm, 0.175 mm/px nominal)")
    axes[0].set_ylabel("visit pairs")
    axes[0].set_title(f"reproducibility: mean SD {summary['sd_trials_mm_mean']:.4f} mm, "
                      f"mismatching {100 * summary['mismatching_rate']:.2f} %", fontsize=9)
    if summary["n_triplets_measured"]:  # a triplet with a refused visit pair has no residual
        direct = [t["jsn_ij_mm"] for t in transitivity]
        composed = [t["sum_mm"] for t in transitivity]
        axes[1].scatter(composed, direct, s=10)
        lim = max([1e-3] + [abs(v) for v in direct + composed if math.isfinite(v)])
        axes[1].plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        axes[1].set_title(f"transitivity: RMS residual {summary['transitivity_rms_mm']:.4f} mm "
                          f"({summary['n_triplets_measured']} triplets)", fontsize=9)
    axes[1].set_xlabel("JSN_ik + JSN_kj (mm)")
    axes[1].set_ylabel("JSN_ij (mm)")
    return figure_bytes(fig)
