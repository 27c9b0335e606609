"""How the bundled JSN quantifier holds up beyond the dataset builder's default ranges.

Builds noise-free pair sets (the dataset builder, ``PairConfig``) whose JSN change, repositioning
and flexion are drawn from wider ranges than the defaults, one nuisance widened at a time and
then all together, pairs whose visits have heel effects or motion blurs of their own, the default pairs cut
and padded back to size as users pad their crops, and pairs without any repositioning or
flexion (noise-free and noisy),
from the phantom and from real layers (``--fingerjoints``), and writes the accuracy table to
docs/quantify.md (between the ``bench_quantify_ranges`` markers).

    .venv/bin/python benchmarks/bench_quantify_ranges.py --fingerjoints ../shared/data/fingerjoints
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from docblock import write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_pair
from jsnsynth.quantify.register import RegistrationSettings
from jsnsynth.quantify.validate import read_pairs, summarize, validate_records
from jsnsynth.synth.dataset import build_dataset
from jsnsynth.synth.pairs import PairConfig
from jsnsynth.synth.sources import open_source
from jsnsynth.synth.xray import ImagingRanges

#: Each row widens some ranges of ``PairConfig`` (the rest stay at their defaults, JSN change within +-3 px).
RANGES = {
    "defaults": {},
    "JSN change within +-5 px": {"jsn_px": (-5.0, 5.0)},
    "repositioning: rotation <= 10 deg, translation <= 20 px, magnification 0.9-1.1": {
        "rotation_deg": 10.0, "translation_px": 20.0, "magnification": (0.9, 1.1)},
    # beyond the narrow coarse starts' reach (about 20 deg, 0.84-1.15): the wide search's
    "repositioning: rotation <= 45 deg, translation <= 20 px, magnification 0.7-1.45": {
        "rotation_deg": 45.0, "translation_px": 20.0, "magnification": (0.7, 1.45)},
    "flexion <= 6 deg per bone": {"flexion_deg": 6.0},
    "all of the above (flexion <= 5 deg)": {
        "jsn_px": (-5.0, 5.0), "rotation_deg": 10.0, "translation_px": 20.0, "magnification": (0.9, 1.1),
        "flexion_deg": 5.0},
    # a smooth field that differs between the visits (`jsnsynth dataset --heel-gain`)
    "a heel effect of 1-5 % across the picture per visit, in any direction": {"heel_gain": (0.01, 0.05)},
    # stronger than a heel puts across a joint crop: the blur search's plane (method step 3)
    "a heel effect of 3 % per visit, in any direction": {"heel_gain": (0.03, 0.03)},
    "a heel effect of 10 % per visit, in any direction": {"heel_gain": (0.1, 0.1)},
    # a patient's motion during an exposure (`jsnsynth dataset --motion-blur-px2`)
    "a motion blur of 1-3 px^2 per visit, in any direction": {"motion_blur_px2": (1.0, 3.0)},
    # larger: the match's bias grows, and beyond its reach (about 8 px^2) a pair is a mismatch
    "a motion blur of 4-8 px^2 per visit, in any direction": {"motion_blur_px2": (4.0, 8.0)},
    "a motion blur of 10-16 px^2 per visit, in any direction": {"motion_blur_px2": (10.0, 16.0)},
    # a detector blur past the default 0.5-1.2 px (0.3-0.4 mm at 0.175 mm/px): the coarse stage's
    # intensity mapping, fitted on the whole joint at one alignment, takes some of the bones'
    # relative move for contrast (docs/quantify-history.md, session 32), which the visits matched
    # again where the fit ended take out in part (session 33)
    "a detector blur of 1.6-2.4 px per visit": {"blur_sigma_px": (1.6, 2.4)},
    # narrower: every pixel of a bone lands at the same fraction between the follow-up's pixels,
    # where interpolated noise once pulled the fit (docs/quantify-method.md, step 4)
    "no repositioning and no flexion": {
        "rotation_deg": 0.0, "translation_px": 0.0, "magnification": (1.0, 1.0), "flexion_deg": 0.0},
    "no repositioning and no flexion, 2,500 photons per pixel": {
        "rotation_deg": 0.0, "translation_px": 0.0, "magnification": (1.0, 1.0), "flexion_deg": 0.0,
        "photons_per_px": 2500.0},
}


#: Crops padded to size: ``PADDED_ROWS`` rows cut off the top and the bottom of both images and
#: masks of each default pair, and filled back as named (the masks with background).
PADDINGS = {
    "mean fill": {"mode": "constant", "fill": "mean"},
    "zero fill": {"mode": "constant", "fill": "zero"},
    "mirrored": {"mode": "symmetric"},
}
PADDED_ROWS = 28


def padded_method(padding: dict) -> Callable:
    """``quantify_pair`` on the pair's crop with :data:`PADDED_ROWS` rows cut at the top and the
    bottom and padded back as ``padding`` says."""

    def pad(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        picture, widths = array[PADDED_ROWS:-PADDED_ROWS], ((PADDED_ROWS, PADDED_ROWS), (0, 0))
        if array.dtype == bool:
            return np.pad(picture, widths)
        if padding["mode"] == "constant":
            fill = 0 if padding["fill"] == "zero" else picture.mean().astype(picture.dtype)
            return np.pad(picture, widths, constant_values=fill)
        return np.pad(picture, widths, mode=padding["mode"])

    def method(baseline, followup, upper_mask, lower_mask, pixel_spacing_mm=None, followup_upper_mask=None,
               followup_lower_mask=None, **kwargs):
        return quantify_pair(pad(baseline), pad(followup), pad(upper_mask), pad(lower_mask), pixel_spacing_mm,
                             pad(followup_upper_mask), pad(followup_lower_mask), **kwargs)

    return method


def mean_blur_match_method(*args, **kwargs):
    """``quantify_pair`` without the match of a blur that differs by direction."""
    return quantify_pair(*args, **kwargs, settings=RegistrationSettings(match_blur_anisotropy=False))


def pair_config(widened: dict) -> PairConfig:
    """Pairs (independent blur, window and gamma per visit) with ``widened`` ranges: noise-free,
    or with the noise of ``photons_per_px`` when the row gives it."""
    options = {"jsn_px": (-3.0, 3.0), **widened}
    photons = options.pop("photons_per_px", None)
    heel_gain = options.pop("heel_gain", (0.0, 0.0))
    motion_blur_px2 = options.pop("motion_blur_px2", (0.0, 0.0))
    blur_sigma_px = options.pop("blur_sigma_px", ImagingRanges.blur_sigma_px)
    imaging = ImagingRanges(photons_per_px=(photons or 1e4,) * 2, electronic_noise=(2e-4, 4e-4), heel_gain=heel_gain,
                            motion_blur_px2=motion_blur_px2, blur_sigma_px=blur_sigma_px)
    return PairConfig(imaging=imaging, noise=photons is not None, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, help="real finger-joint folder (real-layer source)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per source and row")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    sources = ["phantom"] + ([f"fingerjoints:{args.fingerjoints}"] if args.fingerjoints else [])
    lines = [
        "| source | ranges | RMSE px | bias px | max abs error px | mismatch | flagged | max abs error unflagged px |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sources:
            source = spec.split(":")[0]
            for k, (label, widened) in enumerate(RANGES.items()):
                folder = Path(tmp) / f"{source}-{k}"
                build_dataset(open_source(spec), folder, n_pairs=args.pairs, seed=args.seed, layers_every=0,
                              split_fractions=(0.0, 0.0, 1.0), pair_config=pair_config(widened), quiet=True)
                records = list(read_pairs(folder))
                methods = {label: quantify_pair}
                if "motion_blur_px2" in widened:  # against the blur matched in its mean only (method step 3)
                    methods[f"{label}, blurs matched in their mean only"] = mean_blur_match_method
                if not widened:
                    methods.update({f"defaults, crop padded: {PADDED_ROWS} rows cut at the top and the bottom, {name}":
                                    padded_method(padding) for name, padding in PADDINGS.items()})
                for row_label, method in methods.items():
                    rows = validate_records(records, method, with_crlb=False)
                    stats = summarize(rows)
                    worst = max(abs(r["error_px"]) for r in rows)
                    unflagged = stats["max_abs_error_unflagged_px"]
                    lines.append(f"| {source} | {row_label} | {stats['rmse_px']:.4f} | {stats['bias_px']:+.4f} | "
                                 f"{worst:.3f} | {100 * stats['mismatch_rate']:.0f} % | {100 * stats['flag_rate']:.0f} % | "
                                 f"{'-' if unflagged is None else f'{unflagged:.3f}'} |")
                    print(lines[-1], file=sys.stderr)
    command = "`.venv/bin/python benchmarks/bench_quantify_ranges.py" + (
        f" --fingerjoints {args.fingerjoints}`" if args.fingerjoints else "`")
    block = (f"Generated by {command} ({args.pairs} pairs per row, noise-free unless the row names a photon count, seed {args.seed}; "
             "blur, window and gamma drawn independently per visit as in the defaults).\n\n" + "\n".join(lines))
    write_doc_block(args.docs / "quantify.md", "bench_quantify_ranges", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
