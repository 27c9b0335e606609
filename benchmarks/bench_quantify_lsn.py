"""The quantifier on pairs made from the LSN's layers of real crops it never saw.

A user's own crops reach the pair builder through the LSN (``jsnsynth dataset --source
lsn:DIR``): the network separates each crop, and the pairs' bones, masks and truth are its
layers'. This benchmark builds pairs that way from the held-out series of the finger-joint folder
(``jsnsynth.lsn.data.is_heldout_series``: series the bundled weights were not trained on) and,
for comparison, from the same series' layers cut by the hand-drawn masks (``fingerjoints``
source), at the main benchmark's noise levels and nuisances, and validates the bundled quantifier
on both. It writes the table to docs/quantify.md (between markers).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_quantify_lsn.py --fingerjoints ../shared/data/fingerjoints
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_quantify import NOISE_LEVELS, fmt, fmt_interval, make_dataset  # noqa: E402  (benchmarks/ on sys.path)
from docblock import command_line, write_doc_block  # noqa: E402

from jsnsynth.errors import InputError
from jsnsynth.lsn.data import is_heldout_series
from jsnsynth.lsn.source import LsnSource
from jsnsynth.quantify.quantifier import keep_freed_heap
from jsnsynth.quantify.validate import read_pairs, summarize, validate_records
from jsnsynth.synth.fingerjoints import MANIFEST_NAME


def heldout_crops(fingerjoints: Path, crops: Path, max_series: int | None) -> list[str]:
    """Copy the radiographs of the held-out series into ``crops``, one sub-folder per series (its
    visits), as a user would hand the ``lsn`` source (masks and soft-tissue images are the LSN's
    to make); return the series."""
    rows = manifest_rows(fingerjoints)[1]
    series = sorted({row["series"] for row in rows if is_heldout_series(row["series_id"])})[:max_series]
    for row in rows:
        if row["series"] in series:
            (crops / row["series"]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fingerjoints / row["image"], crops / row["series"] / Path(row["image"]).name)
    return series


def drawn_folder(fingerjoints: Path, folder: Path, series: list[str]) -> Path:
    """A finger-joint folder of ``series`` alone: their manifest rows, their folders linked."""
    columns, rows = manifest_rows(fingerjoints)
    folder.mkdir()
    with open(folder / MANIFEST_NAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(row for row in rows if row["series"] in set(series))
    for name in series:
        (folder / name).symlink_to((fingerjoints / name).resolve(), target_is_directory=True)
    return folder


def manifest_rows(fingerjoints: Path) -> tuple[list[str], list[dict]]:
    """The columns and rows of a finger-joint folder's manifest."""
    with open(fingerjoints / MANIFEST_NAME, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def refused_series(crops: Path) -> list[str]:
    """Remove the series the ``lsn`` source refuses (a crop whose LSN masks make no joint, or
    overlap past what the quantifier takes: ``jsnsynth dataset`` names it and asks for it to be
    left out) and return their names with the reason."""
    source, refused = LsnSource(crops), []
    for joint_id in source.joint_ids():
        try:
            source.check_joints([joint_id])
        except InputError as exc:
            shutil.rmtree(crops / joint_id)
            refused.append(f"{joint_id} ({str(exc).split(': ')[1]})")  # the reason, not the path or the advice
    return refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, required=True, help="real finger-joint folder")
    parser.add_argument("--pairs", type=int, default=48, help="pairs per source and noise level")
    parser.add_argument("--max-series", type=int, default=None, help="the first N held-out series (default: all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        fingerjoints, crops = args.fingerjoints.resolve(), Path(tmp) / "crops"
        series = heldout_crops(fingerjoints, crops, args.max_series)
        refused = refused_series(crops)
        n_series = len(series)
        drawn = drawn_folder(fingerjoints, Path(tmp) / "fingerjoints",
                             [name for name in series if (crops / name).is_dir()])
        sources = {"drawn masks (fingerjoints)": (f"fingerjoints:{drawn}", None),
                   "the LSN (lsn)": ("lsn", LsnSource(crops))}
        for label, (spec, source) in sources.items():
            for level in NOISE_LEVELS:
                t0 = time.perf_counter()
                folder = make_dataset(spec, level, args.pairs, Path(tmp) / label.split()[-1].strip("()"), args.seed,
                                      source=source)
                records = list(read_pairs(folder))
                print(f"built {label} {level} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
                stats = summarize(validate_records(records, "register", with_crlb=True))
                results.append({"layers": label, "noise": level, **stats})
                print(json.dumps({k: results[-1].get(k) for k in ("layers", "noise", "rmse_px", "bias_px", "efficiency")}),
                      file=sys.stderr)
    lines = [
        "| layers cut by | noise | RMSE px (95 % CI) | bias px | SD mm | mismatch | flagged | sqrt(mean CRLB) px | "
        "efficiency | error / reported SE, RMS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['layers']} | {r['noise']} | {fmt(r.get('rmse_px'))}{fmt_interval(r.get('rmse_ci95_px'))} | "
            f"{fmt(r.get('bias_px'))} | {fmt(r.get('sd_mm'))} | {100 * r['mismatch_rate']:.0f} % | "
            f"{100 * r['flag_rate']:.0f} % | {fmt(r.get('crlb_rms_px'))} | {fmt(r.get('efficiency'), 1)} | "
            f"{fmt(r.get('z_rms'), 1)} |"
        )
    command = command_line("bench_quantify_lsn.py", [
        ("fingerjoints", args.fingerjoints, None), ("pairs", args.pairs, 48), ("max-series", args.max_series, None),
        ("seed", args.seed, 7)])
    left_out = f"; left out of both, as the `lsn` source refuses it: {'; '.join(refused)}" if refused else ""
    block = (f"Generated by {command} ({n_series - len(refused)} of the {n_series} held-out series, the LSN's "
             f"evaluation split{left_out}; {args.pairs} pairs per row, the main benchmark's nuisances, noise levels and "
             "seed; the quantifier `register`; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load_start:.1f} at the start "
             f"and {os.getloadavg()[0]:.1f} at the end).\n\n" + "\n".join(lines))
    write_doc_block(args.docs / "quantify.md", "bench_quantify_lsn", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
