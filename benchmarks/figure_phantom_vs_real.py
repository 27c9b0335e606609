"""Phantoms beside real finger-joint crops: a figure and a realism table for docs/phantom.md.

    .venv/bin/python benchmarks/figure_phantom_vs_real.py --fingerjoints ../shared/data/fingerjoints

Renders phantoms through the sampled imaging chain (``sample_imaging_params``, noise on) and
compares them with real crops (8-bit JPEG) on four statistics, each computed per image and
summarised over the set:

* intensity: pooled histogram of display values; Wasserstein-1 (earth mover's) distance between
  the pooled phantom and real distributions, and their 1st/50th/99th percentiles and mean;
* radially averaged power spectrum (Hann window): log-log slope over 0.05-0.25 cycles/px (how
  fast detail falls off), and the share of power above 0.25 cycles/px (pixel-scale smoothness);
* edge sharpness: 99th percentile of the gradient magnitude divided by the 1-99 % intensity range;
* noise: Immerkaer's fast estimate (a Laplacian-difference mask on the whole image), in grey levels
  of 255;
* trabecular texture: standard deviation of a band-pass (difference of Gaussians, sigma 1 and 3 px)
  inside the bones (masks eroded by 7 px, away from the cortical edges), grey levels of 255.

Phantoms are quantised to 8 bits like the real crops before measuring. Writes the table between
the ``phantom_realism`` markers, docs/figures/phantom_examples.png (eight phantoms) and, for a
look side by side, docs/figures/local/phantom_vs_real.png (the same phantoms above eight real
crops; not committed, see ``docblock.local_figures``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from docblock import local_figures, write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from jsnsynth.synth.fingerjoints import read_manifest  # noqa: E402
from jsnsynth.synth.phantom import render_phantom, sample_phantom_params  # noqa: E402
from jsnsynth.synth.xray import quantize, render_radiograph, sample_imaging_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "phantom.md"
FIGURE = ROOT / "docs" / "figures" / "phantom_examples.png"
SIDE_BY_SIDE_FIGURE = local_figures() / "phantom_vs_real.png"


def phantom_images(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` phantom radiographs as 8-bit arrays (sample i from SeedSequence([seed, i])) and bone masks."""
    images, masks = [], []
    for index in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        layers = render_phantom(sample_phantom_params(rng))
        display = render_radiograph(layers.attenuation(), sample_imaging_params(rng))
        images.append(quantize(display, 8))
        masks.append(layers.upper_mask | layers.lower_mask)
    return images, masks


def real_images(root: Path, n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` real crops (one per joint series where possible), 8-bit greyscale, and bone masks."""
    records = read_manifest(root)
    rng = np.random.default_rng(seed)
    by_series: dict[str, list] = {}
    for record in records:
        by_series.setdefault(record.series, []).append(record)
    series = sorted(by_series)
    picked = [by_series[s][0] for s in rng.permutation(series)[:n]]
    images, masks = [], []
    for record in picked:
        image = cv2.imread(str(record.image), cv2.IMREAD_GRAYSCALE)
        upper = cv2.imread(str(record.mask_upper), cv2.IMREAD_GRAYSCALE)
        lower = cv2.imread(str(record.mask_lower), cv2.IMREAD_GRAYSCALE)
        if image is None or upper is None or lower is None:
            raise SystemExit(f"cannot read {record.image} or its masks")
        images.append(image)
        masks.append((upper > 0) | (lower > 0))
    return images, masks


def texture_std(image: np.ndarray, bone_mask: np.ndarray) -> float:
    """Band-pass (DoG sigma 1 and 3 px) standard deviation inside the eroded bone mask."""
    values = image.astype(np.float64)
    band = cv2.GaussianBlur(values, (0, 0), 1.0) - cv2.GaussianBlur(values, (0, 0), 3.0)
    inside = cv2.erode(bone_mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    return float(band[inside].std()) if inside.any() else float("nan")


def radial_spectrum(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum (Hann-windowed, mean removed): (frequency, power)."""
    values = image.astype(np.float64) / 255.0
    values = values - values.mean()
    window = np.outer(np.hanning(values.shape[0]), np.hanning(values.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(values * window))) ** 2
    h, w = values.shape
    fy = (np.arange(h) - h // 2) / h
    fx = (np.arange(w) - w // 2) / w
    radius = np.hypot(*np.meshgrid(fx, fy))
    bins = np.linspace(0.0, 0.5, 65)
    index = np.digitize(radius.ravel(), bins) - 1
    valid = (index >= 0) & (index < len(bins) - 1)
    total = np.bincount(index[valid], weights=power.ravel()[valid], minlength=len(bins) - 1)
    count = np.bincount(index[valid], minlength=len(bins) - 1)
    centres = 0.5 * (bins[1:] + bins[:-1])
    return centres, total / np.maximum(count, 1)


def spectrum_stats(image: np.ndarray) -> tuple[float, float]:
    """(log-log slope over 0.05-0.25 cycles/px, share of power above 0.25 cycles/px)."""
    freq, power = radial_spectrum(image)
    band = (freq >= 0.05) & (freq <= 0.25)
    slope = float(np.polyfit(np.log(freq[band]), np.log(power[band] + 1e-30), 1)[0])
    high = float(power[freq > 0.25].sum() / power[freq > 0.01].sum())
    return slope, high


def edge_sharpness(image: np.ndarray) -> float:
    """99th percentile of the gradient magnitude over the 1-99 % intensity range (1/px)."""
    values = image.astype(np.float64)
    gy, gx = np.gradient(values)
    lo, hi = np.percentile(values, [1, 99])
    return float(np.percentile(np.hypot(gx, gy), 99) / max(hi - lo, 1e-9))


def noise_sigma(image: np.ndarray) -> float:
    """Immerkaer's fast noise estimate, grey levels (of 255)."""
    values = image.astype(np.float64)
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = cv2.filter2D(values, -1, mask, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    h, w = values.shape
    return float(math.sqrt(math.pi / 2.0) * np.abs(response).sum() / (6.0 * (w - 2) * (h - 2)))


def summarise(images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, object]:
    """Per-set statistics (medians over images, pooled intensity)."""
    pooled = np.concatenate([im.ravel() for im in images]).astype(np.float64) / 255.0
    spectra = np.array([spectrum_stats(im) for im in images])
    return {
        "pooled": pooled,
        "percentiles": np.percentile(pooled, [1, 50, 99]),
        "mean": float(pooled.mean()),
        "slope": float(np.median(spectra[:, 0])),
        "high": float(np.median(spectra[:, 1])),
        "edge": float(np.median([edge_sharpness(im) for im in images])),
        "noise": float(np.median([noise_sigma(im) for im in images])),
        "texture": float(np.nanmedian([texture_std(im, m) for im, m in zip(images, masks)])),
    }


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-D earth mover's distance between two samples (via their quantile functions)."""
    q = np.linspace(0.0005, 0.9995, 2000)
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def realism_table(ph: dict, real: dict, n_ph: int, n_real: int) -> str:
    """Markdown table of the statistics."""
    p_ph, p_re = ph["percentiles"], real["percentiles"]
    rows = [
        ("intensity mean", f"{ph['mean']:.3f}", f"{real['mean']:.3f}"),
        ("intensity 1 / 50 / 99 % percentiles", "{:.2f} / {:.2f} / {:.2f}".format(*p_ph),
         "{:.2f} / {:.2f} / {:.2f}".format(*p_re)),
        ("power-spectrum slope, 0.05-0.25 cyc/px (median)", f"{ph['slope']:.2f}", f"{real['slope']:.2f}"),
        ("power share above 0.25 cyc/px (median)", f"{ph['high']:.2e}", f"{real['high']:.2e}"),
        ("edge sharpness, p99 gradient / range, 1/px (median)", f"{ph['edge']:.3f}", f"{real['edge']:.3f}"),
        ("noise (Immerkaer), grey levels of 255 (median)", f"{ph['noise']:.2f}", f"{real['noise']:.2f}"),
        ("trabecular texture, band-pass std in bone, grey levels (median)", f"{ph['texture']:.2f}",
         f"{real['texture']:.2f}"),
    ]
    lines = [
        f"| statistic | phantoms (n={n_ph}) | real crops (n={n_real}) |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Wasserstein-1 distance between the pooled intensity distributions: "
        f"**{wasserstein(ph['pooled'], real['pooled']):.3f}** (intensity units, 0-1).",
    ]
    return "\n".join(lines)


def save_figure(rows: list[tuple[str, list[np.ndarray]]], title: str, path: Path) -> None:
    """One row of eight images per ``(label, images)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 8, figsize=(16, 0.4 + 2.0 * len(rows)), squeeze=False)
    for row, (label, images) in enumerate(rows):
        for col in range(8):
            ax = axes[row, col]
            ax.imshow(images[col], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=12)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, required=True, help="folder of the real crops (manifest.csv)")
    parser.add_argument("--n", type=int, default=200, help="images per set for the statistics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true", help="print the table instead of writing docs/phantom.md")
    args = parser.parse_args(argv)
    if not (args.fingerjoints / "manifest.csv").is_file():
        print(f"no manifest.csv in {args.fingerjoints}", file=sys.stderr)
        return 1
    phantoms, phantom_masks = phantom_images(args.n, args.seed)
    reals, real_masks = real_images(args.fingerjoints, args.n, args.seed)
    save_figure([("phantom", phantoms[:8])], "jsnsynth phantoms through the sampled imaging chain", FIGURE)
    save_figure([("phantom", phantoms[:8]), ("real crop", reals[:8])],
                "Top: jsnsynth phantoms through the sampled imaging chain.  Bottom: real finger-joint crops.",
                SIDE_BY_SIDE_FIGURE)
    table = realism_table(summarise(phantoms, phantom_masks), summarise(reals, real_masks), len(phantoms), len(reals))
    command = "`.venv/bin/python benchmarks/figure_phantom_vs_real.py --fingerjoints ../shared/data/fingerjoints`"
    block = f"Made by {command} (seed {args.seed}).\n\n{table}"
    print(table)
    if not args.no_doc:
        write_doc_block(DOC, "phantom_realism", block, title="Phantom")
        print(f"wrote {FIGURE}, {SIDE_BY_SIDE_FIGURE} and the table in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
