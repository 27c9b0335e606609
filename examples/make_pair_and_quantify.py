"""Make one phantom baseline/follow-up pair with a known JSN, save it as files, and measure it.

Run:  python examples/make_pair_and_quantify.py [OUT_DIR]

Writes OUT_DIR/baseline.png, followup.png (16-bit), upper.png, lower.png (baseline masks),
truth.json and pairs.csv (the pair as a one-row table of pairs), then measures the pair with the
bundled quantifier. The same files work with the command line:
  jsnsynth quantify OUT/baseline.png OUT/followup.png --upper-mask OUT/upper.png
      --lower-mask OUT/lower.png --pixel-spacing 0.175
  jsnsynth quantify-batch OUT/pairs.csv --out OUT/results.csv --pixel-spacing 0.175
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from jsnsynth.quantify.quantifier import quantify_pair
from jsnsynth.synth.io import encode_png, write_bytes_atomic
from jsnsynth.synth.pairs import PairConfig, make_pair, sample_pair_params
from jsnsynth.synth.phantom import render_phantom, render_with_poses, sample_phantom_params
from jsnsynth.synth.xray import quantize


def main(out_dir: Path) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([2026, 0]))
    layers = render_phantom(sample_phantom_params(rng, joint_type="mcp"))
    # A 0.1 mm narrowing with the default nuisances of a second visit (flexion, repositioning,
    # magnification, exposure, blur, noise), every one of them drawn and recorded.
    params = sample_pair_params(rng, layers.pixel_spacing_mm, PairConfig(jsn_mm=(0.1, 0.1)))
    pair = make_pair(layers, params, render_with_poses=render_with_poses)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / "baseline.png", encode_png(quantize(pair.baseline)))
    write_bytes_atomic(out_dir / "followup.png", encode_png(quantize(pair.followup)))
    write_bytes_atomic(out_dir / "upper.png", encode_png(layers.upper_mask.astype(np.uint8) * 255))
    write_bytes_atomic(out_dir / "lower.png", encode_png(layers.lower_mask.astype(np.uint8) * 255))
    write_bytes_atomic(out_dir / "truth.json", json.dumps(params.to_dict(), indent=2).encode())
    # a study's table of visit pairs, here of one (paths relative to the table's folder)
    write_bytes_atomic(out_dir / "pairs.csv",
                       b"id,baseline,followup,upper_mask,lower_mask\nexample,baseline.png,followup.png,upper.png,lower.png\n")

    # No joint centre given: the quantifier reads JSN in the frame of the baseline masks, the
    # frame in which the pair's truth is stated (pair.baseline_layers.joint_center_xy).
    result = quantify_pair(pair.baseline, pair.followup, layers.upper_mask, layers.lower_mask, layers.pixel_spacing_mm)
    print(f"files in {out_dir}/")
    print(f"truth    JSN = {params.jsn_px:+.4f} px = {params.jsn_mm:+.4f} mm")
    print(f"measured JSN = {result.jsn_px:+.4f} px = {result.jsn_mm:+.4f} mm "
          f"(error {result.jsn_px - params.jsn_px:+.4f} px, reliability {result.reliability:.2f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("example_pair"))
