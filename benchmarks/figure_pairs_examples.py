"""Figure of a few simulated pairs with their truth: docs/figures/pairs_examples.png.

    .venv/bin/python benchmarks/figure_pairs_examples.py [--fingerjoints ../shared/data/fingerjoints]

With ``--fingerjoints`` the last pair is a real-layer pair and the figure goes to
docs/figures/local/pairs_examples_fingerjoints.png instead (it shows a real crop, which is not
committed: see ``docblock.local_figures``).

Each row is one pair: baseline, follow-up (both as written to the dataset, with noise), the raw
difference of the noise-free images, and the difference after undoing the global repositioning G
(the follow-up resampled by G^-1), where what is left is the bones' own motion: the JSN change of the
upper bone and the flexion of both bones. Differences are of the attenuation layers (before blur,
noise and display), so the change of exposure and display window between visits does not hide them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from docblock import local_figures  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "figures" / "pairs_examples.png"
REAL_FIGURE = local_figures() / "pairs_examples_fingerjoints.png"


def simulate(source, index: int, seed: int, jsn_px: tuple[float, float]):
    """One pair from ``source`` exactly as the dataset builder makes pair ``index``."""
    from jsnsynth.synth.dataset import simulate_pair
    from jsnsynth.synth.pairs import PairConfig

    joint = source.joint_ids()[index % len(source.joint_ids())]
    return simulate_pair(source, joint, index, seed, PairConfig(jsn_px=jsn_px))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help=f"default {FIGURE}, or {REAL_FIGURE} with --fingerjoints (a figure of a real pair must not go into a committed folder)")
    args = parser.parse_args()
    if args.out is None:
        args.out = FIGURE if args.fingerjoints is None else REAL_FIGURE

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jsnsynth.synth.shift import warp_layer
    from jsnsynth.synth.sources import FingerJointsSource, PhantomSource

    phantom = PhantomSource(n_joints=10)
    examples = [("phantom", simulate(phantom, 1, 0, (2.5, 3.0))), ("phantom", simulate(phantom, 2, 0, (-3.0, -2.5)))]
    if args.fingerjoints is not None:
        real = FingerJointsSource(args.fingerjoints)
        examples.append(("fingerjoints", simulate(real, 3, 0, (2.5, 3.0))))
    else:
        examples.append(("phantom", simulate(phantom, 3, 0, (-0.5, 0.5))))

    fig, axes = plt.subplots(len(examples), 4, figsize=(10, 2.95 * len(examples)), dpi=110,
                             gridspec_kw={"hspace": 0.42, "wspace": 0.04})
    for row, (name, pair) in zip(axes, examples):
        p = pair.params
        base_att = pair.baseline_layers.attenuation()
        follow_att = pair.followup_layers.attenuation()
        raw_diff = follow_att - base_att
        bone_diff = warp_layer(follow_att, pair.poses.soft.inverse()) - base_att
        limit = max(float(np.percentile(np.abs(raw_diff), 99.5)), 1e-3)
        cx, cy = pair.baseline_layers.joint_center_xy
        panels = [
            (pair.baseline, "gray", None, "baseline (as stored)"),
            (pair.followup, "gray", None, "follow-up (as stored)"),
            (raw_diff, "RdBu_r", limit, "Δ attenuation (follow-up − baseline)"),
            (bone_diff, "RdBu_r", limit, "Δ attenuation after undoing G"),
        ]
        for ax, (image, cmap, lim, title) in zip(row, panels):
            if lim is None:
                ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
            else:
                ax.imshow(image, cmap=cmap, vmin=-lim, vmax=lim)
            ax.plot([cx], [cy], "+", color="#ffbf00", ms=8, mew=1.5)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        truth = (
            f"{name}: JSN change d = {p.jsn_px:+.2f} px = {p.jsn_mm:+.3f} mm "
            f"({'narrowing' if p.jsn_px > 0 else 'widening'});  "
            f"flexion upper {p.upper_flexion_deg:+.2f}°, lower {p.lower_flexion_deg:+.2f}°;  "
            f"G: rotation {p.global_angle_deg:+.2f}°, scale {p.global_scale:.3f}, "
            f"shift ({p.global_dx:+.1f}, {p.global_dy:+.1f}) px"
        )
        row[0].text(0.0, 1.17, truth, transform=row[0].transAxes, fontsize=8, ha="left", va="bottom")
    fig.suptitle("jsnsynth pairs (+ = baseline joint centre; red = more attenuation at follow-up)", fontsize=9, y=0.995)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
