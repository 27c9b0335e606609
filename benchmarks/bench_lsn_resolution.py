"""The LSN at other resolutions: what ``--pixel-spacing`` is for, and why a crop's size is not
taken for its resolution.

    .venv/bin/python benchmarks/bench_lsn_resolution.py --fingerjoints ../shared/data/fingerjoints

Mean mask Dice (both bones) of the bundled weights, one CPU thread:

* held-out real crops (``jsnsynth.lsn.data.is_heldout_series``), resampled by ``--factors``
  (cubic up, pixel area down), separated without a spacing (taken at the training 0.175 mm/px),
  with their true spacing (0.175 mm/px over the factor), and with the spacing their size would
  imply for a 256 px crop; masks brought back to 256 px and scored against the drawn masks;
* held-out phantoms of 512 px at 0.175 mm/px, which frame more around the same joint: without a
  spacing, and with the one their size would imply; scored against their exact masks;

and the CPU time of a separation of each resampled crop given its spacing (one thread).

Writes the table between the ``bench_lsn_resolution`` markers of docs/lsn.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from docblock import command_line, write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from jsnsynth.lsn.data import build_real_cache, load_real_cache
from jsnsynth.lsn.infer import TRAINING_PIXEL_SPACING_MM, load_model, separate_intensity
from jsnsynth.synth.phantom import render_phantom, sample_phantom_params
from jsnsynth.synth.xray import attenuation_to_intensity

REPO = Path(__file__).resolve().parents[1]
FACTORS = (0.5, 2.0, 4.0)
#: Seeds of the wide-field phantoms (none used in training: the training phantoms draw from their own seeds).
WIDE_PHANTOM_SEED = 771_001


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def mask_dice(intensity: np.ndarray, spacing_mm: float | None, truth: tuple[np.ndarray, np.ndarray], model,
              times_s: list[float] | None = None) -> float:
    """Mean Dice of the two bone masks of a separation, brought back to the truth's grid; the
    separation's CPU time is appended to ``times_s`` when given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.process_time()
        layers = separate_intensity(np.clip(intensity, 0.0, 1.0), model, spacing_mm).layers
        if times_s is not None:
            times_s.append(time.process_time() - start)
    height, width = truth[0].shape
    masks = [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
             for m in (layers.upper_mask, layers.lower_mask)]
    return 0.5 * (dice(masks[0], truth[0]) + dice(masks[1], truth[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "lsn" / "real_cache.npz")
    parser.add_argument("--crops", type=int, default=40, help="held-out real crops")
    parser.add_argument("--phantoms", type=int, default=12, help="wide-field phantoms")
    parser.add_argument("--factors", type=float, nargs="+", default=list(FACTORS))
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model()
    cache = build_real_cache(args.fingerjoints, args.cache) if not args.cache.is_file() else load_real_cache(args.cache)
    held = cache.indices(heldout=True)[: args.crops]
    lines = ["| input | n | no spacing (taken at 0.175 mm/px) | its true spacing | the spacing its size implies | CPU ms per crop, its true spacing (median) |",
             "|---|---|---|---|---|---|"]
    stored_times: list[float] = []
    as_stored = [mask_dice(cache.image[i] / 255.0, None, (cache.upper_mask[i], cache.lower_mask[i]), model, stored_times)
                 for i in held]
    lines.append(f"| held-out real crops as stored (256 px) | {len(held)} | {np.mean(as_stored):.3f} | = | = | "
                 f"{1000 * np.median(stored_times):.0f} |")
    for factor in args.factors:
        scores: dict[str, list[float]] = {"none": [], "true": []}
        times: list[float] = []
        for i in held:
            image = (cache.image[i] / 255.0).astype(np.float32)
            size = (round(256 * factor), round(256 * factor))
            resized = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
            truth = (cache.upper_mask[i], cache.lower_mask[i])
            scores["none"].append(mask_dice(resized, None, truth, model))
            scores["true"].append(mask_dice(resized, TRAINING_PIXEL_SPACING_MM / factor, truth, model, times))
        # a crop's size implies the true spacing here (256 px crops resampled): the third column is
        # the second
        lines.append(f"| held-out real crops resampled x {factor:g} ({round(256 * factor)} px) | {len(held)} | "
                     f"{np.mean(scores['none']):.3f} (worst {np.min(scores['none']):.3f}) | "
                     f"{np.mean(scores['true']):.3f} (worst {np.min(scores['true']):.3f}) | = | {1000 * np.median(times):.0f} |")
        print(lines[-1], file=sys.stderr)
    wide: dict[str, list[float]] = {"none": [], "size": []}
    for k in range(args.phantoms):
        rng = np.random.default_rng(np.random.SeedSequence([WIDE_PHANTOM_SEED, k]))
        truth = render_phantom(sample_phantom_params(rng, size_px=512))
        intensity = attenuation_to_intensity(truth.soft + truth.upper + truth.lower)
        masks = (truth.upper_mask, truth.lower_mask)
        wide["none"].append(mask_dice(intensity, None, masks, model))
        wide["size"].append(mask_dice(intensity, TRAINING_PIXEL_SPACING_MM * 2, masks, model))
    lines.append(f"| phantoms of 512 px at 0.175 mm/px (a wider field), noise-free | {args.phantoms} | "
                 f"{np.mean(wide['none']):.3f} (worst {np.min(wide['none']):.3f}) | = | "
                 f"{np.mean(wide['size']):.3f} (worst {np.min(wide['size']):.3f}) | |")
    print(lines[-1], file=sys.stderr)
    command = command_line("bench_lsn_resolution.py", [
        ("fingerjoints", args.fingerjoints, None), ("crops", args.crops, 40), ("phantoms", args.phantoms, 12),
        ("factors", args.factors, list(FACTORS))])
    block = (f"Generated by {command} (mean mask Dice of both bones, bundled weights; real crops: the first "
             f"{len(held)} held-out crops against their drawn masks, masks brought back to 256 px; phantoms: seed "
             f"{WIDE_PHANTOM_SEED}, against their exact masks; '=' : the same as the column before).\n\n"
             + "\n".join(lines))
    write_doc_block(args.docs / "lsn.md", "bench_lsn_resolution", block, title="Layer Separation Network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
