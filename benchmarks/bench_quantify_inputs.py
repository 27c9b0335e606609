"""The same pair stored differently: how far the bundled JSN quantifier's answer moves.

Real visit pairs (the first two visits of the first ``--series`` multi-visit series of the
finger-joint folder, follow-up masks given) are measured as they are and after each change of how
they are stored, applied alike to both images and all masks: 16-bit instead of 8-bit, padded on
one side, mirrored, turned (the joint frame given, turned with them: by quarter turns, and by
15 deg as a group that straightens its crops by their joint axis stores them, the corners left
black or mirrored), masks eroded or dilated, up- or downsampled, sharpened or equalised as sites
process radiographs for display (both visits alike, or the follow-up alone), the follow-up alone
given a smooth field (a heel effect that changed) or scatter or glare (a share of the signal
spread by a broad Gaussian kernel) or blurred along one direction (a patient's motion), or both
given the lines of an anti-scatter grid. Real visits
differ in 3-D pose, so the table gives the largest change of JSN, for the pairs the method does
not flag and, apart, for those it does. Synthetic noise-free pairs (the dataset builder, phantom
and real layers) show the same changes against exact truth. Masks from the bundled LSN in place
of the drawn ones are a row of both tables. Writes the tables to docs/quantify.md (between the
``bench_quantify_inputs`` markers).

    .venv/bin/python benchmarks/bench_quantify_inputs.py --fingerjoints ../shared/data/fingerjoints
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from docblock import write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from jsnsynth.lsn.infer import load_model, separate_intensity
from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_pair
from jsnsynth.quantify.register import RegistrationSettings
from jsnsynth.quantify.real import load_visit, multi_visit_series
from jsnsynth.quantify.validate import read_pairs, summarize, validate_records
from jsnsynth.synth.dataset import build_dataset
from jsnsynth.synth.geometry import frame_under_affine
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM
from jsnsynth.synth.pairs import PairConfig
from jsnsynth.synth.sources import open_source
from jsnsynth.synth.xray import BlurSpectrum, ImagingRanges

#: A pair: ``(baseline, follow-up, upper, lower, follow-up upper, follow-up lower)``.
Pair = tuple[np.ndarray, ...]
#: Paddings tried: every side, these widths, a constant (zero) fill and the edge replicated.
PAD_WIDTHS_PX = (7, 40, 101)
MASK_CHANGE_PX = 2
#: Resolutions tried: factor -> label.
RESAMPLINGS = {2.0: "upsampled x 2 (cubic)", 0.5: "downsampled x 0.5 (pixel area)"}


def padded(pair: Pair, side: str, width: int, mode: str) -> Pair:
    """Every array of ``pair`` padded by ``width`` px on ``side`` (masks with background)."""
    widths = {"top": ((width, 0), (0, 0)), "bottom": ((0, width), (0, 0)),
              "left": ((0, 0), (width, 0)), "right": ((0, 0), (0, width))}[side]
    return tuple(np.pad(a, widths) if a.dtype == bool or mode == "constant" else np.pad(a, widths, mode="edge")
                 for a in pair)


def masks_changed(pair: Pair, grow: bool) -> Pair:
    """The masks eroded or dilated by :data:`MASK_CHANGE_PX` (a square element); dilated lower
    masks keep out of the upper ones."""
    kernel = np.ones((2 * MASK_CHANGE_PX + 1,) * 2, np.uint8)
    change = cv2.dilate if grow else cv2.erode
    base, follow, *masks = pair
    upper, lower, f_upper, f_lower = (change(m.astype(np.uint8), kernel) > 0 for m in masks)
    return base, follow, upper, lower & ~upper, f_upper, f_lower & ~f_upper


def turned(pair: Pair, quarter_turns: int, frame: tuple) -> tuple[Pair, tuple]:
    """``pair`` turned by ``quarter_turns`` x 90 deg counter-clockwise (``np.rot90``), and the
    joint frame ``((x, y), axis_deg)`` turned with it."""
    (x, y), axis_deg = frame
    height, width = pair[0].shape
    for turn in range(quarter_turns):  # (x, y) -> (y, W - 1 - x), W the width before this turn
        x, y = y, (width if turn % 2 == 0 else height) - 1 - x
    return tuple(np.ascontiguousarray(np.rot90(a, quarter_turns)) for a in pair), ((x, y), axis_deg - 90.0 * quarter_turns)


#: Turn of a crop straightened by its joint axis (``turned_by``), degrees counter-clockwise.
STRAIGHTENED_DEG = 15.0
#: Corners ``turned_by`` leaves: label -> OpenCV border mode, and for a constant border whether
#: it is the image type's highest value (white) rather than 0.
CORNERS = {"black corners": (cv2.BORDER_CONSTANT, False), "white corners": (cv2.BORDER_CONSTANT, True),
           "corners mirrored": (cv2.BORDER_REFLECT, False)}


def turned_by(pair: Pair, frame: tuple, angle_deg: float, corners: str) -> tuple[Pair, tuple]:
    """``pair`` turned by ``angle_deg`` counter-clockwise about the array's centre, as a group
    that straightens its crops by their joint axis stores them (``cv2.warpAffine``: images
    bicubic with the :data:`CORNERS` named, masks nearest with empty corners), and the joint
    frame ``((x, y), axis_deg)`` turned with it."""
    height, width = pair[0].shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle_deg, 1.0)
    border, white = CORNERS[corners]

    def one(a: np.ndarray) -> np.ndarray:
        if a.dtype == bool:
            return cv2.warpAffine(a.astype(np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST) > 0
        value = float(np.iinfo(a.dtype).max) if white else 0.0
        return cv2.warpAffine(a, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=border,
                              borderValue=value)

    return tuple(one(a) for a in pair), frame_under_affine(matrix, *frame)


#: The follow-up alone turned by this much: two visits straightened by different angles, beyond
#: the coarse stage's first starts (about 20 deg; its wide search reaches them).
FOLLOWUP_TURN_DEG = 25.0


def followup_turned(pair: Pair, angle_deg: float) -> Pair:
    """``pair`` with its follow-up alone (image and masks) turned by ``angle_deg`` with black
    corners (:func:`turned_by`); the baseline, and with it the joint frame, stay as they are."""
    turned, _ = turned_by(pair, ((0.0, 0.0), 0.0), angle_deg, "black corners")
    return (pair[0], turned[1], pair[2], pair[3], turned[4], turned[5])


def mirrored(pair: Pair) -> Pair:
    """``pair`` mirrored left-right."""
    return tuple(np.ascontiguousarray(a[:, ::-1]) for a in pair)


#: Display processing as sites apply it after acquisition, and a smooth field one visit has and
#: the other not: label -> (which images, function of an image in [0, 1]). Unsharp masking
#: ``f + amount (f - G_sigma * f)``, clipped; CLAHE at 16 bits; a field rising linearly from the
#: top of the crop to its bottom by ``a`` of the display range (a heel effect or scatter that
#: changed between the visits), clipped; a Gaussian blur of covariance ``diag(a, b)`` (px^2)
#: on the stored intensities (a motion during the follow-up's exposure).
PROCESSINGS = {
    "the follow-up alone 1 % brighter at the bottom than at the top (a linear field)": ((1,), ("field", 0.01, 0.0)),
    "the follow-up alone with 5 % scatter or glare, a blurred copy of itself (sigma 20 px)": ((1,), ("glare", 0.05, 20.0)),
    "the follow-up alone with 5 % scatter or glare, a blurred copy of itself (sigma 60 px)": ((1,), ("glare", 0.05, 60.0)),
    "the follow-up alone blurred by a motion down the picture (along the finger: 2.25 px^2 more variance down the "
    "columns)": ((1,), ("motion", 0.0, 2.25)),
    "the follow-up alone blurred by a motion across the picture (across the finger: 2.25 px^2 more variance along "
    "the rows)": ((1,), ("motion", 2.25, 0.0)),
    "both visits with lines fixed to the detector (an anti-scatter grid's: 2 %, period 4.3 px)":
        ((0, 1), ("lines", 0.02, 4.3)),
    "both visits sharpened alike (unsharp mask, sigma 8 px, amount 0.6)": ((0, 1), ("unsharp", 8.0, 0.6)),
    "the follow-up alone sharpened (unsharp mask, sigma 3 px, amount 0.5)": ((1,), ("unsharp", 3.0, 0.5)),
    "the follow-up alone equalised (CLAHE, clip limit 2, 4 x 4 tiles)": ((1,), ("clahe", 2.0, 4)),
}


def unsharp_masked(intensity: np.ndarray, sigma_px: float, amount: float) -> np.ndarray:
    """An intensity image in [0, 1] sharpened as a site's display processing does it:
    ``f + amount (f - G_sigma * f)``, clipped to [0, 1] (float64)."""
    f = np.asarray(intensity, dtype=np.float64)
    return np.clip(f + amount * (f - cv2.GaussianBlur(f, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)), 0.0, 1.0)


def clahe_equalised(intensity: np.ndarray, clip_limit: float, tiles: int, bits: int) -> np.ndarray:
    """An intensity image in [0, 1] equalised by OpenCV's CLAHE at the ``bits`` (8 or 16) it is
    stored with (float64 in [0, 1]). The depth matters: the clip limit is per histogram bin, and
    8-bit data equalised at 16 bits fills one bin in 257, which the limit flattens to nearly a
    linear stretch."""
    top = float((1 << bits) - 1)
    stored = np.rint(np.clip(intensity, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(stored) / top


def processed(pair: Pair, label: str) -> Pair:
    """``pair`` with the :data:`PROCESSINGS` entry ``label`` applied to its images, stored back in
    their own type (rounded)."""
    which, (kind, a, b) = PROCESSINGS[label]

    def one(image: np.ndarray) -> np.ndarray:
        top = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
        f = image.astype(np.float64) / top
        bits = 8 if image.dtype == np.uint8 else 16
        if kind == "clahe":
            out = clahe_equalised(f, a, b, bits)
        elif kind == "glare":  # a share of the signal spread by a broad kernel: (1 - a) f + a G_b * f
            out = (1.0 - a) * f + a * cv2.GaussianBlur(f, (0, 0), b, borderType=cv2.BORDER_REFLECT)
        elif kind == "motion":  # a Gaussian of covariance diag(a, b): the mean blur of a steady motion
            out = np.clip(BlurSpectrum(f, 16).blurred_by_covariance((a, b, 0.0)), 0.0, 1.0)
        elif kind == "lines":  # rows brighter and darker by turns, fixed to the array while the joint moves
            out = np.clip(f + a * np.cos(2.0 * np.pi * np.arange(f.shape[0]) / b + 0.3)[:, None], 0.0, 1.0)
        elif kind == "field":
            out = np.clip(f + a * np.linspace(-0.5, 0.5, f.shape[0])[:, None], 0.0, 1.0)
        else:
            out = unsharp_masked(f, a, b)
        return np.rint(out * top).astype(image.dtype) if top != 1.0 else out.astype(image.dtype)

    return tuple(one(a) if k in which else a for k, a in enumerate(pair))


def resampled(pair: Pair, factor: float) -> Pair:
    """``pair`` at ``factor`` times the resolution: up, images cubic and masks nearest; down,
    images by pixel area and masks by majority. ``cv2.resize`` puts pixel centre ``x`` at
    ``factor (x + 0.5) - 0.5``."""
    def one(a: np.ndarray) -> np.ndarray:
        size = (int(round(factor * a.shape[1])), int(round(factor * a.shape[0])))
        if a.dtype == bool:
            if factor > 1:
                return cv2.resize(a.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            return cv2.resize(a.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
        return cv2.resize(a, size, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
    return tuple(one(a) for a in pair)


def measure(pair: Pair, spacing_mm: float = DEFAULT_PIXEL_SPACING_MM, frame: tuple | None = None,
            settings: RegistrationSettings = RegistrationSettings()):
    """``quantify_pair`` of a pair (its default joint frame unless ``frame`` is given)."""
    base, follow, upper, lower, f_upper, f_lower = pair
    center, axis = frame if frame is not None else (None, None)
    return quantify_pair(base, follow, upper, lower, spacing_mm, f_upper, f_lower, joint_center_xy=center,
                         joint_axis_deg=axis, settings=settings)


#: The blur matched in its mean only (without method step 3's match of a blur that differs by
#: direction): the rows of a motion are also measured so, to show what the match does.
MEAN_BLUR_MATCH = RegistrationSettings(match_blur_anisotropy=False)


def lsn_masks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bundled LSN's upper and lower masks of a stored crop (what ``jsnsynth separate`` writes)."""
    intensity = image / float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else image
    layers = separate_intensity(np.asarray(intensity, np.float64), load_model()).layers
    return layers.upper_mask, layers.lower_mask


def with_lsn_masks(pair: Pair) -> Pair:
    """``pair`` with every mask replaced by the LSN's of its image."""
    return (pair[0], pair[1], *lsn_masks(pair[0]), *lsn_masks(pair[1]))


def real_rows(folder: Path, n_series: int) -> list[str]:
    """Rows of the real-pair table."""
    # label -> (change, change in the reference's standard errors, reference flagged, flagged)
    variants: dict[str, list[tuple[float, float, bool, bool]]] = {}

    def record(label: str, change: float, reference, result) -> None:
        se = reference.jsn_se_px * (reference.pixel_spacing_mm if "mm" in label else 1.0)
        variants.setdefault(label, []).append((abs(change), abs(change) / se, reference.mismatch, result.mismatch))

    for name, visits in multi_visit_series(folder, n_series):
        b, f = load_visit(visits[0]), load_visit(visits[1])
        pair = (b["image"], f["image"], b["upper"], b["lower"], f["upper"], f["lower"])
        reference = measure(pair)
        frame = (reference.joint_center_xy, reference.joint_axis_deg)
        if pair[0].dtype == np.uint8:
            wide = tuple(a.astype(np.uint16) * 257 if a.dtype == np.uint8 else a for a in pair)
            result = measure(wide)
            record("8-bit stored as 16-bit (x 257)", result.jsn_px - reference.jsn_px, reference, result)
        for side in ("top", "bottom", "left", "right"):
            for width in PAD_WIDTHS_PX:
                for mode in ("constant", "edge"):
                    result = measure(padded(pair, side, width, mode))
                    record(f"padded by {'/'.join(map(str, PAD_WIDTHS_PX))} px on any side, zero or edge fill "
                           "(default frame)", result.jsn_px - reference.jsn_px, reference, result)
        result = measure(mirrored(pair))
        record("mirrored left-right (default frame)", result.jsn_px - reference.jsn_px, reference, result)
        for quarter_turns in (1, 2, 3):
            turned_pair, turned_frame = turned(pair, quarter_turns, frame)
            result = measure(turned_pair, frame=turned_frame)
            record("turned by 90, 180 or 270 deg, the frame given", result.jsn_px - reference.jsn_px, reference, result)
        for corners in CORNERS:
            straightened, straightened_frame = turned_by(pair, frame, STRAIGHTENED_DEG, corners)
            result = measure(straightened, frame=straightened_frame)
            record(f"turned by {STRAIGHTENED_DEG:g} deg (bicubic), {corners}, the frame given", result.jsn_px - reference.jsn_px,
                   reference, result)
        result = measure(turned_by(pair, frame, STRAIGHTENED_DEG, "black corners")[0])
        record(f"turned by {STRAIGHTENED_DEG:g} deg (bicubic), black corners, default frame", result.jsn_px - reference.jsn_px,
               reference, result)
        result = measure(followup_turned(pair, FOLLOWUP_TURN_DEG), frame=frame)
        record(f"the follow-up alone turned by {FOLLOWUP_TURN_DEG:g} deg (bicubic), black corners, the frame given",
               result.jsn_px - reference.jsn_px, reference, result)
        for grow, word in ((False, "eroded"), (True, "dilated")):
            result = measure(masks_changed(pair, grow))
            record(f"masks {word} by {MASK_CHANGE_PX} px", result.jsn_px - reference.jsn_px, reference, result)
        for factor, label in RESAMPLINGS.items():
            result = measure(resampled(pair, factor), DEFAULT_PIXEL_SPACING_MM / factor)
            record(f"{label}, spacing to match: change in mm", result.jsn_mm - reference.jsn_mm, reference, result)
        for label in PROCESSINGS:
            result = measure(processed(pair, label))
            record(label, result.jsn_px - reference.jsn_px, reference, result)
        lsn_pair = with_lsn_masks(pair)
        result = measure(lsn_pair, frame=frame)
        record("masks of both visits from the bundled LSN (`separate`), the drawn masks' frame given",
               result.jsn_px - reference.jsn_px, reference, result)
        result = measure(lsn_pair)
        record("masks of both visits from the bundled LSN, and the frame from them (default frame)",
               result.jsn_px - reference.jsn_px, reference, result)
        print(f"{name}: reference {reference.jsn_px:+.4f} px{' (flagged)' if reference.mismatch else ''}", file=sys.stderr)
    lines = []
    for label, changes in variants.items():
        kept = [(c, z) for c, z, ref_flag, _ in changes if not ref_flag]
        flagged = [c for c, _, ref_flag, _ in changes if ref_flag]
        newly = sum(1 for *_, ref_flag, flag in changes if flag and not ref_flag)
        lines.append(f"| {label} | {len(changes)} | {max((c for c, _ in kept), default=float('nan')):.4f} | "
                     f"{max((z for _, z in kept), default=float('nan')):.2f} | "
                     f"{max(flagged, default=float('nan')):.4f} | {newly} |")
        print(lines[-1], file=sys.stderr)
    return lines


def synthetic_rows(spec: str, n_pairs: int, seed: int, tmp: Path) -> list[str]:
    """Rows of the synthetic table for one source: noise-free default pairs, as stored and changed."""
    folder = tmp / spec.split(":")[0]
    config = PairConfig(imaging=ImagingRanges(), noise=False, jsn_px=(-3.0, 3.0))
    build_dataset(open_source(spec), folder, n_pairs=n_pairs, seed=seed, layers_every=0,
                  split_fractions=(0.0, 0.0, 1.0), pair_config=config, quiet=True)
    records = list(read_pairs(folder))

    def changed(change: Callable[[Pair, tuple], tuple[Pair, tuple]],
                settings: RegistrationSettings = RegistrationSettings()) -> Callable:
        def method(baseline, followup, upper_mask, lower_mask, pixel_spacing_mm=None, followup_upper_mask=None,
                   followup_lower_mask=None, joint_center_xy=None, joint_axis_deg=None):
            pair = (baseline, followup, upper_mask, lower_mask, followup_upper_mask, followup_lower_mask)
            pair, frame = change(pair, (joint_center_xy, joint_axis_deg))
            return measure(pair, pixel_spacing_mm, frame, settings)
        return method

    def mirror(pair: Pair, frame: tuple) -> tuple[Pair, tuple]:
        (x, y), axis = frame
        return mirrored(pair), ((pair[0].shape[1] - 1 - x, y), -axis)

    def resampled_method(factor: float) -> Callable:
        def method(*args, joint_center_xy=None, joint_axis_deg=None, pixel_spacing_mm=None, **masks):
            # the JSN is read back in the stored pixels
            pair = resampled((*args, masks["followup_upper_mask"], masks["followup_lower_mask"]), factor)
            x, y = joint_center_xy
            center = (factor * (x + 0.5) - 0.5, factor * (y + 0.5) - 0.5)
            result = measure(pair, pixel_spacing_mm / factor, (center, joint_axis_deg))
            return dataclasses.replace(result, jsn_px=result.jsn_px / factor)
        return method

    methods = {
        "as stored": quantify_pair,
        "mirrored left-right (the frame mirrored)": changed(mirror),
        f"masks eroded by {MASK_CHANGE_PX} px": changed(lambda pair, frame: (masks_changed(pair, False), frame)),
        f"masks dilated by {MASK_CHANGE_PX} px": changed(lambda pair, frame: (masks_changed(pair, True), frame)),
        "masks from the bundled LSN (`separate`)": changed(lambda pair, frame: (with_lsn_masks(pair), frame)),
        **{f"turned by {STRAIGHTENED_DEG:g} deg (bicubic), {corners} (the frame turned)": changed(
            lambda pair, frame, corners=corners: turned_by(pair, frame, STRAIGHTENED_DEG, corners))
           for corners in CORNERS},
        f"turned by {STRAIGHTENED_DEG:g} deg (bicubic), black corners (default frame)": changed(
            lambda pair, frame: (turned_by(pair, frame, STRAIGHTENED_DEG, "black corners")[0], (None, None))),
        f"the follow-up alone turned by {FOLLOWUP_TURN_DEG:g} deg (bicubic), black corners (the frame as stored)":
            changed(lambda pair, frame: (followup_turned(pair, FOLLOWUP_TURN_DEG), frame)),
        **{f"{label} (JSN read in the stored pixels)": resampled_method(factor) for factor, label in RESAMPLINGS.items()},
        **{label: changed(lambda pair, frame, label=label: (processed(pair, label), frame)) for label in PROCESSINGS},
        **{f"{label}, blurs matched in their mean only": changed(
            lambda pair, frame, label=label: (processed(pair, label), frame), MEAN_BLUR_MATCH)
           for label in PROCESSINGS if PROCESSINGS[label][1][0] == "motion"},
    }
    lines, plain = [], None
    for label, method in methods.items():
        rows = validate_records(records, method, with_crlb=False)
        errors = np.array([row["error_px"] for row in rows])
        plain = errors if plain is None else plain
        stats = summarize(rows)
        lines.append(f"| {spec.split(':')[0]} | {label} | {stats['rmse_px']:.4f} | {stats['bias_px']:+.4f} | "
                     f"{np.max(np.abs(errors - plain)):.4f} | "
                     f"{100 * stats['flag_rate']:.0f} % |")
        print(lines[-1], file=sys.stderr)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, required=True, help="real finger-joint folder")
    parser.add_argument("--series", type=int, default=10, help="real visit pairs (one per series)")
    parser.add_argument("--pairs", type=int, default=16, help="synthetic pairs per source")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    real = ["| input, both images and all masks | variants | largest change of JSN, pairs not flagged (px) | "
            "the same, in the pair's reported standard errors | largest change, pairs flagged as they are (px) | "
            "variants flagged only once changed |",
            "|---|---|---|---|---|---|", *real_rows(args.fingerjoints, args.series)]
    synthetic = ["| source | input | JSN RMSE px | bias px | largest change of the error px | flagged |",
                 "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("phantom", f"fingerjoints:{args.fingerjoints}"):
            synthetic += synthetic_rows(spec, args.pairs, args.seed, Path(tmp))
    command = f"`.venv/bin/python benchmarks/bench_quantify_inputs.py --fingerjoints {args.fingerjoints}`"
    block = (f"Generated by {command} (real visit pairs: visits 0 and 1 of the first {args.series} multi-visit series, "
             "follow-up masks given, default joint frame unless the row says; a row's changes are all its variants over "
             "all pairs. Synthetic pairs: noise-free, default ranges, JSN change within +-3 px, "
             f"{args.pairs} per source, seed {args.seed}, the dataset's joint frame).\n\n"
             + "\n".join(real) + "\n\n" + "\n".join(synthetic))
    write_doc_block(args.docs / "quantify.md", "bench_quantify_inputs", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
