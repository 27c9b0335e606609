"""Load a jsnsynth pair dataset with Hugging Face `datasets` and read the 16-bit images.

Run:  jsnsynth dataset --source phantom --pairs 20 --out ds/ --quiet
      python examples/load_dataset.py ds/
"""

from __future__ import annotations

import sys

import numpy as np
from datasets import load_dataset


def main(folder: str) -> None:
    pairs = load_dataset(folder)  # config "pairs"; splits train / validation / test by joint
    print(pairs)
    row = pairs["train"][0]
    baseline = np.array(row["baseline"])  # PIL 16-bit image -> uint16 array, no loss
    followup = np.array(row["followup"])
    print(f"baseline {baseline.dtype} {baseline.shape}, range {baseline.min()}..{baseline.max()}")
    print(f"follow-up {followup.dtype}, mean difference {followup.astype(float).mean() - baseline.astype(float).mean():+.1f} grey levels")
    print(f"truth: JSN {row['jsn_px']:+.4f} px = {row['jsn_mm']:+.4f} mm (positive = narrowing)")
    print(f"upper bone moved by dx={row['upper_dx']:+.3f}, dy={row['upper_dy']:+.3f} px at the joint centre")
    print(f"follow-up photons/px {row['followup_photons_per_px']}, blur {row['followup_blur_sigma_px']:.2f} px")
    layers = load_dataset(folder, "layers")
    print(layers)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ds")
