"""Where the quantifier's noise-free error comes from: the same pairs with parts of the nuisance removed.

Noise-free phantom pairs (``make_pair`` from drawn ``PairParams``) are measured with every default
nuisance, then with parts of the two visits' imaging chains made equal, with a linear display,
without flexion, or with the follow-up mapped onto the baseline's display through the *true*
chains or both visits' true gammas undone (oracles a method cannot use); with ``--fingerjoints``, real-layer pairs the same way
(a second pair of columns). Real-layer pairs with flexion up to 6 deg per bone
are also measured with the soft tissue carried by the bones (the default) and held static (as
before that model), and real-layer pairs with one nuisance at a time and the same imaging for
both visits (what moving a raster layer can add to the error), and the same real-layer pairs
under independent noise draws (whether the bias grows with the noise). Writes the tables into
docs/quantify.md (between the ``bench_quantify_floor`` markers).

    .venv/bin/python benchmarks/bench_quantify_floor.py --fingerjoints ../shared/data/fingerjoints
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from docblock import write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import numpy as np

import jsnsynth.synth.soft_tissue as soft_tissue
from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_pair
from jsnsynth.synth.layers import joint_frame_from_masks
from jsnsynth.synth.pairs import PairConfig, PairParams, make_pair, sample_pair_params, with_noise_draw
from jsnsynth.synth.sources import open_source
from jsnsynth.synth.xray import ImagingParams, ImagingRanges

NOISE_FREE = ImagingRanges(photons_per_px=(1e4, 1e4), electronic_noise=(2e-4, 4e-4))


def same_imaging(params: PairParams) -> PairParams:
    return dataclasses.replace(params, followup_imaging=params.baseline_imaging)


def still(params: PairParams) -> PairParams:
    return dataclasses.replace(same_imaging(params), upper_flexion_deg=0.0, lower_flexion_deg=0.0, global_angle_deg=0.0,
                               global_scale=1.0, global_dx=0.0, global_dy=0.0)


def unflexed(params: PairParams) -> PairParams:
    return dataclasses.replace(same_imaging(params), upper_flexion_deg=0.0, lower_flexion_deg=0.0)


def linear_display(params: PairParams) -> PairParams:
    return dataclasses.replace(params, baseline_imaging=dataclasses.replace(params.baseline_imaging, gamma=1.0),
                               followup_imaging=dataclasses.replace(params.followup_imaging, gamma=1.0))


def same_blur(params: PairParams) -> PairParams:
    blur = params.baseline_imaging.blur_sigma_px
    return dataclasses.replace(params, followup_imaging=dataclasses.replace(params.followup_imaging, blur_sigma_px=blur))


def same_gamma(params: PairParams) -> PairParams:
    gamma = params.baseline_imaging.gamma
    return dataclasses.replace(params, followup_imaging=dataclasses.replace(params.followup_imaging, gamma=gamma))


def gamma_undone(display: np.ndarray, imaging: ImagingParams) -> np.ndarray:
    """A display with its true gamma undone: affine in the detected intensity (the window's part)."""
    return (np.clip(display, 0, 1) ** (1.0 / imaging.gamma)).astype(np.float32)


def to_baseline_display(followup: np.ndarray, baseline: ImagingParams, follow: ImagingParams) -> np.ndarray:
    """The follow-up's display intensities through the true chains onto the baseline's display."""
    intensity = follow.window_low + (follow.window_high - follow.window_low) * gamma_undone(followup, follow).astype(np.float64)
    scaled = np.clip((intensity - baseline.window_low) / (baseline.window_high - baseline.window_low), 0, 1)
    return (scaled**baseline.gamma).astype(np.float32)


#: Rows of the phantom table: (label, edit of the drawn parameters, oracle: None, "baseline
#: display" (the follow-up mapped through the true chains onto the baseline's display) or
#: "gammas undone" (both images with their true gammas undone)).
ROWS = [
    ("nothing of the imaging (same blur, window, gamma)", same_imaging, None),
    ("the repositioning and the JSN change only (same imaging, no flexion)", unflexed, None),
    ("nothing at all (same imaging, no flexion, no repositioning)", still, None),
    ("blur and window, with a linear display (gamma 1 for both)", linear_display, None),
    ("window and gamma (same blur)", same_blur, None),
    ("window and gamma (same blur), follow-up mapped through the true chains (oracle)", same_blur, "baseline display"),
    ("blur and window (same gamma)", same_gamma, None),
    ("blur, window and gamma (the default)", lambda p: p, None),
    ("blur, window and gamma, follow-up mapped through the true chains (oracle)", lambda p: p, "baseline display"),
    ("blur, window and gamma, both visits' true gammas undone (oracle)", lambda p: p, "gammas undone"),
]


def measure(source, joint_ids, n: int, seed: int, config: PairConfig, edit, oracle: str | None) -> np.ndarray:
    """JSN errors (px) of ``n`` noise-free pairs drawn with ``config`` and edited by ``edit``
    (``oracle``: see :data:`ROWS`)."""
    renderer = source.render_with_poses if source.exact_pose_rendering else None
    errors = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        layers = source.load(joint_ids[(k * 37) % len(joint_ids)], rng)
        params = edit(sample_pair_params(rng, layers.pixel_spacing_mm, config))
        pair = make_pair(layers, params, renderer)
        base, follow = pair.baseline_clean, pair.followup_clean
        if oracle == "baseline display":
            follow = to_baseline_display(follow, params.baseline_imaging, params.followup_imaging)
        elif oracle == "gammas undone":
            base = gamma_undone(base, params.baseline_imaging)
            follow = gamma_undone(follow, params.followup_imaging)
        centre, axis_deg = joint_frame_from_masks(layers.upper_mask, layers.lower_mask)
        result = quantify_pair(base, follow, layers.upper_mask, layers.lower_mask,
                               joint_center_xy=centre, joint_axis_deg=axis_deg)
        errors.append(result.jsn_px - pair.jsn_px)
    return np.asarray(errors)


def measure_noisy(source, joint_ids, n: int, seed: int, config: PairConfig, photons: float, draws: int) -> np.ndarray:
    """JSN errors (px) of the pairs of :func:`measure` (default nuisances) imaged at ``photons`` per
    pixel, ``draws`` noise realisations each. Every pair and draw gets its own noise: a draw index
    shared by all pairs would give every joint the same noise field, whose one-off pull then looks
    like a bias of the method (the draws of ``with_noise_draw`` are seeds, not joint-specific)."""
    if n * draws > 4000:
        raise SystemExit(f"{n} pairs x {draws} draws: with_noise_draw has 4000 seeds")
    renderer = source.render_with_poses if source.exact_pose_rendering else None
    errors = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        layers = source.load(joint_ids[(k * 37) % len(joint_ids)], rng)
        params = sample_pair_params(rng, layers.pixel_spacing_mm, config)
        centre, axis_deg = joint_frame_from_masks(layers.upper_mask, layers.lower_mask)
        for draw in range(draws):
            pair = make_pair(layers, with_noise_draw(params, photons, k * draws + draw), renderer)
            result = quantify_pair(pair.baseline, pair.followup, layers.upper_mask, layers.lower_mask,
                                   joint_center_xy=centre, joint_axis_deg=axis_deg)
            errors.append(result.jsn_px - pair.jsn_px)
    return np.asarray(errors)


def alone(keep: tuple[str, ...] = (), **changes):
    """Edit of drawn parameters: same imaging, nothing else differing but the drawn values named
    in ``keep`` (e.g. the flexion angles) and the fixed values in ``changes``."""
    still_params = {"upper_flexion_deg": 0.0, "lower_flexion_deg": 0.0, "global_angle_deg": 0.0, "global_scale": 1.0,
                    "global_dx": 0.0, "global_dy": 0.0, "jsn_px": 0.0, "jsn_mm": 0.0}

    def edit(params: PairParams) -> PairParams:
        kept = {name: getattr(params, name) for name in keep}
        return dataclasses.replace(same_imaging(params), **{**still_params, **kept, **changes})

    return edit


#: Rows of the one-nuisance-at-a-time table of real-layer pairs (same imaging for both visits).
NUISANCE_ROWS = [
    ("the JSN change only (within +-3 px)", alone(keep=("jsn_px", "jsn_mm"))),
    ("a translation of the whole joint by 0.5 px", alone(global_dy=0.5)),
    ("a magnification of 1.03", alone(global_scale=1.03)),
    ("a rotation of 3 deg", alone(global_angle_deg=3.0)),
    ("each bone's flexion (up to 2 deg)", alone(keep=("upper_flexion_deg", "lower_flexion_deg"))),
    ("flexion, repositioning and the JSN change", same_imaging),
]


def rmse(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(errors**2)))


def static_soft_tissue(shape, upper_pose, lower_pose, hand_pose, joint_center_xy, joint_axis_deg, blend_px):
    """The soft tissue moved by the hand's pose alone (the model before the soft tissue was
    carried): the carried model with both bones given the hand's pose."""
    return CARRIED(shape, hand_pose, hand_pose, hand_pose, joint_center_xy, joint_axis_deg, blend_px)


#: The soft-tissue model of the pairs (``soft_tissue.soft_tissue_sources``), kept while the A/B swaps it.
CARRIED = soft_tissue.soft_tissue_sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, help="real finger-joint folder (soft-tissue table)")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--bias-pairs", type=int, default=32, help="pairs per row of the one-nuisance-at-a-time table")
    parser.add_argument("--noise-draws", type=int, default=8, help="noise draws per pair in the noise-bias table")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    config = PairConfig(imaging=NOISE_FREE, noise=False, jsn_px=(-3.0, 3.0))
    sources = [("phantoms", open_source("phantom"))]
    if args.fingerjoints:
        real = open_source(f"fingerjoints:{args.fingerjoints}")
        sources.append(("real layers", real))
    lines = ["| the two visits differ in | " + " | ".join(f"{name}: JSN RMSE px | bias px" for name, _ in sources) + " |",
             "|---|" + "---|---|" * len(sources)]
    for label, edit, oracle in ROWS:
        cells = []
        for _, source in sources:
            errors = measure(source, source.joint_ids(), args.pairs, args.seed, config, edit, oracle)
            cells.append(f"{rmse(errors):.4f} | {errors.mean():+.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr)
    block = (f"Generated by `.venv/bin/python benchmarks/bench_quantify_floor.py"
             f"{' --fingerjoints ' + str(args.fingerjoints) if args.fingerjoints else ''}` ({args.pairs} noise-free "
             f"pairs per source, seed {args.seed}, default flexion and repositioning, JSN change within +-3 px).\n\n"
             + "\n".join(lines))
    if args.fingerjoints:
        soft_lines = ["| real-layer pairs, flexion up to | soft tissue carried by the bones (px) | soft tissue static (px) |",
                      "|---|---|---|"]
        for flexion in (2.0, 6.0):
            flexed = dataclasses.replace(config, flexion_deg=flexion)
            row = []
            for model in (CARRIED, static_soft_tissue):
                soft_tissue.soft_tissue_sources = model
                row.append(rmse(measure(real, real.joint_ids(), args.pairs, args.seed, flexed, lambda p: p, None)))
            soft_tissue.soft_tissue_sources = CARRIED
            soft_lines.append(f"| {flexion:g} deg per bone | {row[0]:.4f} | {row[1]:.4f} |")
            print(soft_lines[-1], file=sys.stderr)
        block += ("\n\nThe soft-tissue model of the pairs (JSN RMSE of the quantifier, noise-free, "
                  f"{args.pairs} pairs per cell):\n\n" + "\n".join(soft_lines))
        nuisance_lines = ["| real-layer pairs, same imaging for both visits; the follow-up differs by | JSN RMSE px | bias px |",
                          "|---|---|---|"]
        for label, edit in NUISANCE_ROWS:
            errors = measure(real, real.joint_ids(), args.bias_pairs, args.seed, config, edit, None)
            nuisance_lines.append(f"| {label} | {rmse(errors):.4f} | {errors.mean():+.4f} |")
            print(nuisance_lines[-1], file=sys.stderr)
        block += (f"\n\nOne nuisance at a time ({args.bias_pairs} noise-free real-layer pairs per row, same seed; "
                  "the bias is what the synthesis of a moved raster layer can add):\n\n" + "\n".join(nuisance_lines))
        noise_lines = ["| real-layer pairs, default nuisances | quantifications | bias px (standard error) | RMSE px |",
                       "|---|---|---|---|"]
        for photons in (None, 1e4, 2.5e3):
            if photons is None:
                errors, label = measure(real, real.joint_ids(), args.bias_pairs, args.seed, config, lambda p: p, None), "noise-free"
            else:
                errors = measure_noisy(real, real.joint_ids(), args.bias_pairs, args.seed, config, photons, args.noise_draws)
                label = f"{photons:,.0f} photons per pixel"
            se = errors.std(ddof=1) / np.sqrt(errors.size)
            noise_lines.append(f"| {label} | {errors.size} | {errors.mean():+.4f} ({se:.4f}) | {rmse(errors):.4f} |")
            print(noise_lines[-1], file=sys.stderr)
        block += (f"\n\nDoes the bias grow with the noise? The same {args.bias_pairs} real-layer pairs, noise-free and "
                  f"under {args.noise_draws} independent noise draws each:\n\n" + "\n".join(noise_lines))
    write_doc_block(args.docs / "quantify.md", "bench_quantify_floor", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
