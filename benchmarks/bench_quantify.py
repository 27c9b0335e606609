"""Accuracy and speed of the bundled JSN quantifier against the two reference methods.

Builds small pair datasets with the dataset builder (``jsnsynth.synth.dataset.build_dataset``)
from the phantom and from real layers (``--fingerjoints``) at three noise levels plus a
noise-free set, validates every method on them with the CRLB, and writes the table to
docs/quantify.md (between markers) and plots to docs/figures/quantify_*.png.

    .venv/bin/python benchmarks/bench_quantify.py --fingerjoints ../shared/data/fingerjoints --pairs 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from docblock import local_figures, write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_pair
from jsnsynth.quantify.reliability import save_residual_figure
from jsnsynth.quantify.validate import breakdown, read_pairs, summarize, validate_records, write_report
from jsnsynth.synth.dataset import build_dataset
from jsnsynth.synth.pairs import PairConfig
from jsnsynth.synth.sources import open_source
from jsnsynth.synth.xray import ImagingRanges

NOISE_LEVELS = {  # photons per pixel (both visits); electronic noise fixed small
    "none": None,
    "low": (4.0e4, 5.0e4),
    "medium": (8.0e3, 1.2e4),
    "high": (2.0e3, 3.0e3),
}
METHODS = ("register", "poc", "ecc")


def make_dataset(source_spec: str, level: str, n_pairs: int, out: Path, seed: int, source=None) -> Path:
    """The benchmark's pairs of one source at one noise level; ``source``: an opened source
    (an ``lsn:`` one, which synth does not open) instead of ``source_spec``'s."""
    photons = NOISE_LEVELS[level]
    imaging = ImagingRanges(photons_per_px=photons or (1e4, 1e4), electronic_noise=(2e-4, 4e-4))
    config = PairConfig(imaging=imaging, noise=photons is not None, jsn_px=(-3.0, 3.0))
    folder = out / f"{source_spec.split(':')[0]}-{level}"
    build_dataset(source or open_source(source_spec), folder, n_pairs=n_pairs, seed=seed, layers_every=0,
                  split_fractions=(0.0, 0.0, 1.0), pair_config=config, quiet=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, help="real finger-joint folder (real-layer source)")
    parser.add_argument("--pairs", type=int, default=48, help="pairs per source and noise level")
    parser.add_argument("--no-phantom", action="store_true")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    sources = [] if args.no_phantom else ["phantom"]
    if args.fingerjoints:
        sources.append(f"fingerjoints:{args.fingerjoints}")
    results = []
    all_rows = {}
    warmed: set[str] = set()
    args.load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sources:
            for level in NOISE_LEVELS:
                t0 = time.perf_counter()
                folder = make_dataset(spec, level, args.pairs, Path(tmp), args.seed)
                records = list(read_pairs(folder))
                print(f"built {folder.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                if level == "medium":
                    # the figure shows the baseline's pixels: a real crop's stays out of the repository
                    folder_for = args.docs / "figures" if spec == "phantom" else local_figures(args.docs)
                    write_residual_example(records[0], folder_for / f"quantify_residuals_{spec.split(':')[0]}.png")
                for method in METHODS:
                    if method not in warmed:
                        # the first pairs a process measures pay for lazy imports and the allocator
                        # (the speed table's first passes: up to 72 ms a pair against 46): warm each
                        # method up once, untimed
                        validate_records(records[:2], method, with_crlb=False)
                        warmed.add(method)
                    rows = validate_records(records, method, with_crlb=True)
                    stats = summarize(rows)
                    # CPU time of the method alone: what one core does, whatever the machine's load
                    stats["cpu_pairs_per_s"] = len(rows) / max(sum(r["cpu_time_s"] for r in rows), 1e-9)
                    all_rows.setdefault((spec.split(":")[0], method), []).extend(rows)
                    results.append({"source": spec.split(":")[0], "noise": level, "method": method, **stats})
                    print(json.dumps({k: results[-1].get(k) for k in ("source", "noise", "method", "rmse_px", "sd_mm", "mismatch_rate", "efficiency", "pairs_per_s")}), file=sys.stderr)
    figures = args.docs / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for (source, method), rows in all_rows.items():
        if method == "register":
            write_report(rows, {"method": method, "dataset": f"{source} benchmark", "overall": summarize(rows),
                                "breakdown": breakdown(rows)}, figures, prefix=f"quantify_{source}_")
    for stale in figures.glob("quantify_*_pairs.csv"):
        stale.unlink()
    for stale in figures.glob("quantify_*_summary.json"):
        stale.unlink()
    args.load_end = os.getloadavg()[0]
    write_table(results, args.docs / "quantify.md", args)
    return 0


def write_residual_example(record: dict, path: Path) -> None:
    """The residual figure of the bundled method on one benchmark pair."""
    result = quantify_pair(
        record["baseline"], record["followup"], record["baseline_upper_mask"], record["baseline_lower_mask"],
        pixel_spacing_mm=float(record["pixel_spacing_mm"]),
        joint_center_xy=(float(record["joint_center_x"]), float(record["joint_center_y"])), keep_residuals=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_residual_figure(result, record["baseline"], path)


def fmt(value, digits=4):
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_interval(interval, digits=4):
    return "" if interval is None else f" ({interval[0]:.{digits}f}–{interval[1]:.{digits}f})"


def write_table(results: list[dict], doc: Path, args) -> None:
    lines = [
        "| source | noise | method | RMSE px (95 % CI) | bias px | SD mm | mismatch | flagged | sqrt(mean CRLB) px | efficiency | "
        "error / reported SE, RMS | pairs/s | pairs/s (1 core CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['source']} | {r['noise']} | {r['method']} | {fmt(r.get('rmse_px'))}{fmt_interval(r.get('rmse_ci95_px'))} | {fmt(r.get('bias_px'))} | "
            f"{fmt(r.get('sd_mm'))} | {100 * r['mismatch_rate']:.0f} % | {100 * r['flag_rate']:.0f} % | "
            f"{fmt(r.get('crlb_rms_px'))} | {fmt(r.get('efficiency'), 1)} | {fmt(r.get('z_rms'), 1)} | "
            f"{fmt(r.get('pairs_per_s'), 1)} | {fmt(r.get('cpu_pairs_per_s'), 1)} |"
        )
    table = "\n".join(lines)
    command = f"`.venv/bin/python benchmarks/bench_quantify.py --pairs {args.pairs}" + (
        f" --fingerjoints {args.fingerjoints}`" if args.fingerjoints else "`")
    block = f"Generated by {command} ({args.pairs} pairs per row, |d| <= 3 px, default repositioning: rotation <= 3 deg, magnification 0.97-1.03, translation <= 5 px, flexion <= 2 deg, independent blur 0.5-1.2 px / window / gamma per visit; timings on a shared 2-core machine, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {args.load_start:.1f} at the start and {args.load_end:.1f} at the end: pairs/s is wall-clock per pair as `validate` reports it, in one pass after an untimed warm-up of each method on two pairs, the last column the method's own CPU time; noise-free rows: the bound is that of the 16-bit quantisation alone, and `validate` gives no efficiency for noise-free pairs; error / reported SE is `validate`'s z_rms over the unflagged pairs, about 1 where a method's standard error is honest, a dash for a method that reports none).\n\n{table}"
    write_doc_block(doc, "bench_quantify", block, title="Quantifier")


if __name__ == "__main__":
    sys.exit(main())
