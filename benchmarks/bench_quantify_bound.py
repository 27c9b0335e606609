"""How far the Cramér-Rao bound of ``validate`` moves when the visits' imaging is left unknown.

``jsnsynth validate`` bounds the JSN of a pair with each bone's similarity and an intensity bias
as the only unknowns (``jsnsynth.quantify.crlb``): the blur, window and gamma of both visits are
taken as known. A method is told none of them. This script profiles them out of the same Fisher
information, on the benchmark's pair sets (``bench_quantify.make_dataset``, same seed: the same
pairs as its table), and sets the bundled quantifier's RMSE on those pairs against each bound:

* imaging known: the bound ``validate`` reports (checked against ``pair_crlb_px``);
* the follow-up's display unknown relative to the baseline's: a gain, a gamma ratio (``v ln v``)
  and a blur difference (``Laplacian / 2``, the heat equation), shared by both bones;
* and the gamma the two displays share: a blur difference acts on the detected signal, before
  the display's gamma, so a pair's intensities depend on the common gamma wherever the blurs
  differ, in a ring along each edge that partly looks like a change of the bone's scale. Its
  column is the follow-up's change with the common gamma, the baseline held fixed: both visits'
  gammas scaled by ``1 + eps`` through the exact chain (window, gamma, the blur difference as a
  Gaussian of the detected signal; a sharper follow-up by the first-order term), central
  differences.

    .venv/bin/python benchmarks/bench_quantify_bound.py --fingerjoints ../shared/data/fingerjoints
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_quantify import NOISE_LEVELS, make_dataset  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from docblock import command_line, write_doc_block  # noqa: E402
from scipy import ndimage

from jsnsynth.quantify.crlb import bone_design, display_noise_std_from_clean, fisher_information, quantisation_variance
from jsnsynth.quantify.quantifier import jsn_gradient, keep_freed_heap
from jsnsynth.quantify.register import RegistrationSettings, bone_region, profile_out, resolution_scale
from jsnsynth.quantify.validate import _as_display, imaging_of, pair_crlb_px, read_pairs, summarize, validate_records
from jsnsynth.quantify.warp import params_from_similarity, sample_spline, spline_coefficients
from jsnsynth.synth.geometry import Similarity
from jsnsynth.synth.xray import ImagingParams

BOUNDS = ("known", "relative", "common_gamma")
#: relative step of the common gamma for the central difference
GAMMA_STEP = 1e-3


def follow_up_given_common_gamma(base_clean: np.ndarray, base: ImagingParams, follow: ImagingParams, eps: float) -> np.ndarray:
    """The follow-up display (in the baseline's frame) that the baseline display predicts when
    both visits' gammas are ``(1 + eps)`` times the recorded ones."""
    detected = base.window_low + (base.window_high - base.window_low) * np.clip(base_clean, 0.0, 1.0) ** (1.0 / (base.gamma * (1 + eps)))
    blur_difference_px2 = follow.blur_sigma_px**2 - base.blur_sigma_px**2
    if blur_difference_px2 > 0:
        detected = ndimage.gaussian_filter(detected, math.sqrt(blur_difference_px2), mode="nearest", truncate=6.0)
    else:  # the follow-up is the sharper one: the heat equation's first-order term backwards
        detected = detected + 0.5 * blur_difference_px2 * ndimage.laplace(detected, mode="nearest")
    scaled = np.clip((detected - follow.window_low) / (follow.window_high - follow.window_low), 0.0, 1.0)
    return scaled ** (follow.gamma * (1 + eps))


def pair_bounds(record: dict) -> dict[str, float]:
    """sqrt(CRLB) of the JSN (px) of one dataset pair with the imaging known, with the
    follow-up's display unknown relative to the baseline's, and with the common gamma unknown too."""
    cx, cy = float(record["joint_center_x"]), float(record["joint_center_y"])
    poses = {bone: Similarity(float(record[f"{bone}_scale"]), float(record[f"{bone}_angle_deg"]), float(record[f"{bone}_dx"]),
                              float(record[f"{bone}_dy"]), cx, cy) for bone in ("upper", "lower")}
    base_clean, follow_clean = _as_display(record["baseline_clean"]), _as_display(record["followup_clean"])
    base_imaging, follow_imaging = imaging_of(record, "baseline"), imaging_of(record, "followup")
    quantisation = quantisation_variance(16)
    base_var = display_noise_std_from_clean(base_clean, base_imaging) ** 2 + quantisation
    follow_var = display_noise_std_from_clean(follow_clean, follow_imaging) ** 2 + quantisation
    common_gamma = (follow_up_given_common_gamma(base_clean, base_imaging, follow_imaging, GAMMA_STEP)
                    - follow_up_given_common_gamma(base_clean, base_imaging, follow_imaging, -GAMMA_STEP)) / (2 * GAMMA_STEP)
    settings = RegistrationSettings().for_resolution(resolution_scale(follow_clean.shape))
    coefficients = spline_coefficients(follow_clean)
    laplacian = spline_coefficients(ndimage.laplace(follow_clean, mode="nearest"))
    masks = {bone: np.asarray(record[f"baseline_{bone}_mask"], bool) for bone in ("upper", "lower")}
    # unknowns: upper (a, b, tx, ty, bias), lower (the same), then gain, gamma ratio, blur difference, common gamma
    fisher = np.zeros((14, 14))
    for k, (bone, other) in enumerate((("upper", "lower"), ("lower", "upper"))):
        region = bone_region(masks[bone], masks[other], settings.dilate_px, 1, settings.border_px)
        # the rows validate's bound is made of (crlb.bone_design), with the nuisances' columns beside them
        bone_columns, variance, samples = bone_design(coefficients, region, poses[bone], (cx, cy), base_var, follow_var)
        value = samples["value"]
        columns = np.zeros((value.size, 14))
        columns[:, 5 * k: 5 * k + 5] = bone_columns
        columns[:, 10] = value
        columns[:, 11] = value * np.log(np.clip(value, 1e-6, None))
        columns[:, 12] = 0.5 * sample_spline(laplacian, samples["wx"], samples["wy"])[0].astype(np.float64)  # heat equation
        columns[:, 13] = common_gamma[samples["ys"], samples["xs"]]
        fisher += fisher_information(columns, variance)
    params = {bone: params_from_similarity(poses[bone], cx, cy) for bone in ("upper", "lower")}
    gradient = jsn_gradient(params["upper"], params["lower"], float(record["joint_axis_deg"]))
    geometry = [0, 1, 2, 3, 5, 6, 7, 8]
    out = {}
    for name, nuisances in (("known", [4, 9]), ("relative", [4, 9, 10, 11, 12]), ("common_gamma", [4, 9, 10, 11, 12, 13])):
        order = geometry + nuisances
        information = profile_out(fisher[np.ix_(order, order)], len(geometry))
        out[name] = math.sqrt(float(gradient @ np.linalg.solve(information, gradient)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, help="real finger-joint folder (real-layer source)")
    parser.add_argument("--pairs", type=int, default=48, help="pairs per source and noise level")
    parser.add_argument("--seed", type=int, default=7, help="the benchmark's seed (bench_quantify.py)")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    keep_freed_heap()
    sources = ["phantom"] + ([f"fingerjoints:{args.fingerjoints}"] if args.fingerjoints else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sources:
            for level in (name for name in NOISE_LEVELS if NOISE_LEVELS[name] is not None):
                folder = make_dataset(spec, level, args.pairs, Path(tmp), args.seed)
                records = list(read_pairs(folder))
                bounds = {name: [] for name in BOUNDS}
                for record in records:
                    pair = pair_bounds(record)
                    known = pair_crlb_px(record)
                    if not math.isclose(pair["known"], known, rel_tol=1e-6):
                        raise SystemExit(f"the 'known' bound {pair['known']} is not validate's {known}")
                    for name in BOUNDS:
                        bounds[name].append(pair[name])
                rmse = summarize(validate_records(records, "register", with_crlb=False))["rmse_px"]
                row = {"source": spec.split(":")[0], "noise": level, "rmse_px": rmse,
                       **{name: math.sqrt(float(np.mean(np.square(values)))) for name, values in bounds.items()}}
                rows.append(row)
                print(row, file=sys.stderr)
    lines = [
        "| source | noise | RMSE px | sqrt(mean CRLB) px: imaging known (`validate`) | follow-up's gain, gamma ratio and blur difference unknown | and the common gamma unknown | efficiency: imaging known | efficiency: all of it unknown |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['source']} | {row['noise']} | {row['rmse_px']:.4f} | {row['known']:.5f} | {row['relative']:.5f} | "
                     f"{row['common_gamma']:.5f} | {row['rmse_px'] / row['known']:.1f} | {row['rmse_px'] / row['common_gamma']:.1f} |")
    command = command_line("bench_quantify_bound.py", [("fingerjoints", args.fingerjoints, None), ("pairs", args.pairs, 48),
                                                        ("seed", args.seed, 7)])
    block = (f"Generated by {command} ({args.pairs} pairs per row: the sets of the benchmark table below, same seed; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).\n\n" + "\n".join(lines))
    write_doc_block(args.docs / "quantify.md", "bench_quantify_bound", block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
