"""The same real visit pair at other resolutions: how the bundled quantifier follows the picture.

The first two visits of the first ``--series`` multi-visit series of the finger-joint folder
(follow-up masks given, default joint frame) are measured as stored (256 px) and resampled by
each of ``--factors`` (cubic up, pixel area down; masks nearest up, by majority down; the pixel
spacing divided by the factor), twice: as the quantifier runs (its lengths and limits in pixels
follow the picture's size, ``register.resolution_scale``) and with the picture taken for a
256 px crop whatever its size (the settings and limits of 256 px crops). The change of JSN in
mm against the 256 px reading is given for the pairs not flagged there.

A second table asks whether the pixel spacing would be the better measure of the resolution:
noise-free phantom datasets of other sizes and spacings (``--phantom-pairs`` each), measured as
the quantifier runs and with the scale taken from the spacing (0.175 mm/px over the pair's).
jsnsynth's phantoms set their blur in pixels, so a finer spacing is not a finer detector there,
and a larger size at 0.175 mm/px frames more around the same joint.

A third table shows why pictures under ``quantifier.MIN_LONG_SIDE_PX`` are refused: default-noise
phantom pairs (``--small-pairs``) reduced by pixel area to smaller pictures, measured with that
limit lifted, against their truth.

Writes the tables between the ``bench_quantify_resolution`` markers of docs/quantify.md.

    .venv/bin/python benchmarks/bench_quantify_resolution.py --fingerjoints ../shared/data/fingerjoints
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from bench_quantify_inputs import resampled  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from docblock import command_line, write_doc_block  # noqa: E402

from jsnsynth.errors import InputError
from jsnsynth.quantify import quantifier, register
from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_pair
from jsnsynth.quantify.real import load_visit, multi_visit_series
from jsnsynth.quantify.validate import method_arguments, read_pairs
from jsnsynth.synth.dataset import build_dataset
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM
from jsnsynth.synth.pairs import PairConfig
from jsnsynth.synth.sources import open_source

FACTORS = (0.5, 0.75, 1.5, 2.0, 3.0, 4.0)
#: Picture sizes of the third table (px, larger side).
SMALL_SIZES_PX = (256, 96, 64, 48, 32)
#: Phantom datasets of the second table: (size px, pixel spacing mm); the last two frame less
#: than a joint (11 and 17 mm: the picture's edges cut the bones; warned about as such).
PHANTOM_SETS = ((256, 0.1), (256, 0.25), (512, DEFAULT_PIXEL_SPACING_MM), (768, DEFAULT_PIXEL_SPACING_MM),
                (96, DEFAULT_PIXEL_SPACING_MM), (64, DEFAULT_PIXEL_SPACING_MM))


@contextlib.contextmanager
def fixed_scale(scale: float) -> Iterator[None]:
    """Within: every picture is registered at ``scale`` (``register.resolution_scale``),
    whatever its size."""
    by_size = register.resolution_scale
    register.resolution_scale = lambda shape: scale
    try:
        yield
    finally:
        register.resolution_scale = by_size


@contextlib.contextmanager
def no_size_limit() -> Iterator[None]:
    """Within: pictures of any size are measured (``quantifier.MIN_LONG_SIDE_PX`` lifted)."""
    limit = quantifier.MIN_LONG_SIDE_PX
    quantifier.MIN_LONG_SIDE_PX = 0
    try:
        yield
    finally:
        quantifier.MIN_LONG_SIDE_PX = limit


def small_picture_rows(n_pairs: int, seed: int, tmp: Path) -> list[str]:
    """Rows of the third table: JSN errors of default-noise phantom pairs reduced to smaller pictures."""
    folder = tmp / "phantom_small"
    build_dataset(open_source("phantom"), folder, n_pairs=n_pairs, seed=seed, layers_every=0,
                  split_fractions=(0.0, 0.0, 1.0), pair_config=PairConfig(jsn_px=(-3.0, 3.0)), quiet=True)
    records = list(read_pairs(folder))
    names = ("baseline", "followup", "baseline_upper_mask", "baseline_lower_mask", "followup_upper_mask",
             "followup_lower_mask")
    lines = []
    for size_px in SMALL_SIZES_PX:
        errors, in_se, refused = [], [], 0
        for record in records:
            factor = size_px / max(np.asarray(record["baseline"]).shape)
            pair = resampled(tuple(np.asarray(record[name]) for name in names), factor)
            center = (factor * (float(record["joint_center_x"]) + 0.5) - 0.5,
                      factor * (float(record["joint_center_y"]) + 0.5) - 0.5)
            try:
                # no spacing: the errors are read in pixels, and 32 px of a 45 mm field (1.4 mm/px)
                # is beyond the spacings the quantifier takes (it refused every pair)
                with no_size_limit():
                    result = quantify_pair(*pair[:4], None, *pair[4:],
                                           joint_center_xy=center, joint_axis_deg=float(record["joint_axis_deg"]))
            except InputError:  # too few pixels left in a bone's region
                refused += 1
                continue
            error = result.jsn_px - factor * float(record["jsn_px"])
            errors.append(error / factor)  # in pixels of the 256 px grid
            in_se.append(error / result.jsn_se_px)
        errors_px, in_se = np.array(errors), np.abs(np.array(in_se))
        lines.append(f"| {size_px} | {len(errors)} ({refused} refused) | {np.sqrt(np.mean(errors_px**2)):.4f} | "
                     f"{np.sqrt(np.mean(errors_px**2)) * DEFAULT_PIXEL_SPACING_MM:.4f} | {np.median(in_se):.2f} | "
                     f"{int(np.sum(in_se > 3))} |")
        print(lines[-1], file=sys.stderr)
    return lines


def phantom_rows(n_pairs: int, seed: int, tmp: Path) -> list[str]:
    """Rows of the second table: JSN RMSE of noise-free phantom datasets, scale by size and by spacing."""
    lines = []
    for size_px, spacing_mm in PHANTOM_SETS:
        folder = tmp / f"phantom_{size_px}_{spacing_mm}"
        build_dataset(open_source("phantom", size_px=size_px, pixel_spacing_mm=spacing_mm), folder, n_pairs=n_pairs,
                      seed=seed, layers_every=0, split_fractions=(0.0, 0.0, 1.0),
                      pair_config=PairConfig(noise=False, jsn_px=(-3.0, 3.0)), quiet=True)
        errors: dict[str, list[float]] = {"size": [], "spacing": []}
        for record in read_pairs(folder):
            args, kwargs = method_arguments(record)
            truth = float(record["jsn_px"])
            errors["size"].append(quantify_pair(*args, **kwargs).jsn_px - truth)
            with fixed_scale(DEFAULT_PIXEL_SPACING_MM / spacing_mm):
                errors["spacing"].append(quantify_pair(*args, **kwargs).jsn_px - truth)
        rmse = {key: float(np.sqrt(np.mean(np.square(value)))) for key, value in errors.items()}
        lines.append(f"| {size_px} | {spacing_mm:g} | {n_pairs} | {rmse['size']:.4f} | {rmse['spacing']:.4f} |")
        print(lines[-1], file=sys.stderr)
    return lines


def measure(pair: tuple[np.ndarray, ...], spacing_mm: float):
    """``quantify_pair`` of ``(baseline, follow-up, upper, lower, follow-up upper, follow-up lower)``."""
    return quantify_pair(*pair[:4], spacing_mm, *pair[4:])


def row(factor: float, changes: list[tuple[float, float, bool]]) -> str:
    """Mean, RMS and largest change (mm), largest in standard errors, and pairs newly flagged."""
    change = np.array([c for c, _, _ in changes])
    in_se = np.array([z for _, z, _ in changes])
    flagged = sum(flag for *_, flag in changes)
    return (f"{change.mean():+.4f} / {np.sqrt(np.mean(change**2)):.4f} / {np.abs(change).max():.4f} "
            f"({np.abs(in_se).max():.2f} SE), {flagged} newly flagged")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, required=True, help="real finger-joint folder")
    parser.add_argument("--series", type=int, default=30, help="real visit pairs (one per series)")
    parser.add_argument("--factors", type=float, nargs="+", default=list(FACTORS))
    parser.add_argument("--phantom-pairs", type=int, default=16, help="pairs per phantom dataset")
    parser.add_argument("--small-pairs", type=int, default=30, help="pairs of the small-picture table")
    parser.add_argument("--seed", type=int, default=5, help="seed of the phantom datasets")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    followed: dict[float, list] = {f: [] for f in args.factors}
    as_256: dict[float, list] = {f: [] for f in args.factors}
    n_flagged = 0
    for name, visits in multi_visit_series(args.fingerjoints, args.series):
        base, follow = load_visit(visits[0]), load_visit(visits[1])
        pair = (base["image"], follow["image"], base["upper"], base["lower"], follow["upper"], follow["lower"])
        reference = measure(pair, DEFAULT_PIXEL_SPACING_MM)
        if reference.mismatch:
            n_flagged += 1
            continue
        se_mm = reference.jsn_se_px * reference.pixel_spacing_mm
        for factor in args.factors:
            other = resampled(pair, factor)
            for results, context in ((followed, contextlib.nullcontext()), (as_256, fixed_scale(1.0))):
                with context:
                    result = measure(other, DEFAULT_PIXEL_SPACING_MM / factor)
                change = result.jsn_mm - reference.jsn_mm
                results[factor].append((change, change / se_mm, result.mismatch))
        print(f"{name}: {reference.jsn_mm:+.4f} mm", file=sys.stderr)
    lines = ["| resampled by | picture px | pairs | settings of 256 px crops: change of JSN mm, mean / RMS / largest "
             "(largest in the pair's SE), newly flagged (counted in the figures) | settings following the picture "
             "(as the quantifier runs) |",
             "|---|---|---|---|---|"]
    for factor in args.factors:
        lines.append(f"| x {factor:g} | {round(256 * factor)} | {len(followed[factor])} | {row(factor, as_256[factor])} | "
                     f"{row(factor, followed[factor])} |")
        print(lines[-1], file=sys.stderr)
    phantoms = ["| phantom size px | pixel spacing mm | pairs | JSN RMSE px, scale from the size (as the quantifier runs) "
                "| JSN RMSE px, scale from the spacing |", "|---|---|---|---|---|"]
    small = ["| picture px (larger side) | pairs | JSN RMSE, px of the 256 px grid | the same, mm | median "
             "\\|error\\| / reported SE | pairs over 3 SE |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        phantoms += phantom_rows(args.phantom_pairs, args.seed, Path(tmp))
        small += small_picture_rows(args.small_pairs, args.seed, Path(tmp))
    command = command_line("bench_quantify_resolution.py", [
        ("fingerjoints", args.fingerjoints, None), ("series", args.series, 30), ("factors", args.factors, list(FACTORS)),
        ("phantom-pairs", args.phantom_pairs, 16), ("small-pairs", args.small_pairs, 30), ("seed", args.seed, 5)])
    block = (f"Generated by {command} (visits 0 and 1 of the first {args.series} multi-visit series, follow-up masks "
             f"given, default joint frame; {n_flagged} pairs flagged at 256 px left out; change against the 256 px "
             "reading, 0.175 mm/px nominal, the spacing divided by the factor. Phantom datasets: noise-free, default "
             f"ranges, JSN change within +-3 px, seed {args.seed}, the dataset's joint frame; the small-picture "
             f"table: default noise, reduced by pixel area, {quantifier.MIN_LONG_SIDE_PX} px limit lifted).\n\n"
             + "\n".join(lines) + "\n\n" + "\n".join(phantoms) + "\n\n" + "\n".join(small))
    write_doc_block(args.docs / "quantify.md", "bench_quantify_resolution", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
