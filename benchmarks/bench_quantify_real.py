"""Real-series protocol (shifted trials, mismatching rate, transitivity) on the finger-joint folder.

    .venv/bin/python benchmarks/bench_quantify_real.py --fingerjoints ../shared/data/fingerjoints --limit-series 20
    .venv/bin/python benchmarks/bench_quantify_real.py --fingerjoints ../shared/data/fingerjoints --whole-folder --num-proc 2

Besides the protocol of ``jsnsynth validate-real``, each visit pair is measured both ways, and
``JSN(i->j) + JSN(j->i)`` (each about its own baseline's joint frame) says how far a method's
answer depends on which visit it calls the baseline. Writes docs/figures/quantify_real_series.png
and the numbers into docs/quantify.md (between markers). ``--whole-folder`` runs the bundled
method alone on every series with two or more visits (no round trip) into a block of its own.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from docblock import write_doc_block  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import numpy as np

from jsnsynth.quantify.quantifier import keep_freed_heap
from jsnsynth.quantify.real import load_visit, measure_pair, multi_visit_series, validate_real
from jsnsynth.quantify.validate import load_method
from jsnsynth.synth.layers import DEFAULT_PIXEL_SPACING_MM


def _rounded(value: float | None, digits: int) -> str:
    """A summary figure for the table: rounded, or "-" where the method gives none."""
    return "-" if value is None else str(round(value, digits))


def round_trip(folder: Path, method: str | Callable, limit_series: int) -> dict:
    """``JSN(i->j) + JSN(j->i)`` (mm) over the visit pairs of the first ``limit_series`` series
    with two or more visits (the series ``validate_real`` takes): mean and RMS, over all pairs
    both directions of which were measured and over those neither of which was flagged."""
    _, function = load_method(method)
    sums, unflagged = [], []
    rng = np.random.default_rng(0)  # unused: no shifted trials
    for _, visits in multi_visit_series(folder, limit_series):
        loaded = [load_visit(v) for v in visits]
        for i in range(len(loaded)):
            for j in range(i + 1, len(loaded)):
                forward, backward = (measure_pair(a, b, function, rng, 0, 0, DEFAULT_PIXEL_SPACING_MM)[0]
                                     for a, b in ((loaded[i], loaded[j]), (loaded[j], loaded[i])))
                total = forward["jsn_mm"] + backward["jsn_mm"]
                if np.isfinite(total):
                    sums.append(total)
                    if not (forward["flagged"] or backward["flagged"]):
                        unflagged.append(total)
    sums, unflagged = np.asarray(sums), np.asarray(unflagged)
    return {"n": sums.size, "mean_mm": float(sums.mean()), "rms_mm": float(np.sqrt(np.mean(sums**2))),
            "n_unflagged": unflagged.size,
            "rms_unflagged_mm": float(np.sqrt(np.mean(unflagged**2))) if unflagged.size else None}


def whole_folder(args: argparse.Namespace) -> int:
    """The protocol of ``jsnsynth validate-real`` with the bundled method on every series: one
    row, written into its own block of docs/quantify.md."""
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        s = validate_real(args.fingerjoints, "register", tmp, None, num_proc=args.num_proc)
        with open(Path(tmp) / "real_pairs.csv", newline="") as handle:
            pairs = list(csv.DictReader(handle))
    wall_s = time.perf_counter() - start
    dropping = [row for row in pairs if int(row["n_dropped"]) > 0]  # the pairs behind the mismatching rate
    # every trial measured (a refused trial is counted apart)
    all_flagged = [row for row in dropping if int(row["n_flagged"]) == int(row["n_trials"]) - int(row["n_refused"])]
    row = (f"| register | {s['n_series']} | {s['n_pairs']} | {s['n_trials']} | {s['sd_trials_mm_mean']:.4f} | "
           f"{s['sd_trials_mm_median']:.4f} | {100 * s['mismatching_rate']:.2f} % | {100 * s['flag_rate']:.0f} % | "
           f"{len(dropping)} ({len(all_flagged)}) | {_rounded(s['transitivity_rms_mm'], 3)} ({s['n_triplets_measured']}) | "
           f"{_rounded(s['transitivity_rms_unflagged_mm'], 4)} ({s['n_triplets_unflagged']}) | "
           f"{s['n_trials_refused']} ({s['n_pairs_refused']}) | {wall_s:.0f} |")
    print(row, file=sys.stderr)
    table = "\n".join([
        "| method | series | visit pairs | trials | mean SD of trials (mm) | median SD (mm) | mismatching | flagged | "
        "pairs with a trial dropped (every trial measured flagged) | transitivity RMS, common centre (mm) (triplets) | "
        "transitivity RMS, no pair flagged (mm) (triplets) | trials refused (pairs) | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|", row])
    load = f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    block = (f"Generated by `.venv/bin/python benchmarks/bench_quantify_real.py --fingerjoints {args.fingerjoints} "
             f"--whole-folder --num-proc {args.num_proc}` (every series with two or more visits, the protocol of "
             f"`jsnsynth validate-real`: the original and 9 shifted trials per visit pair; trials: those measured, the "
             f"refused apart; 0.175 mm/px nominal; shared "
             f"2-core machine, {load}; wall-clock seconds of the whole run).\n\n{table}")
    write_doc_block(args.docs / "quantify.md", "bench_quantify_real_whole", block, title="Quantifier")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, required=True)
    parser.add_argument("--limit-series", type=int, default=20)
    parser.add_argument("--methods", default="register,poc,ecc")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--whole-folder", action="store_true",
                        help="the bundled method alone on every multi-visit series (its own block)")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes (with --whole-folder)")
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    if args.whole_folder:
        return whole_folder(args)
    rows = []
    load_start = os.getloadavg()[0]
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            s = validate_real(args.fingerjoints, method, tmp, args.limit_series)
            if method == "register":
                (args.docs / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(tmp) / "real_series.png", args.docs / "figures" / "quantify_real_series.png")
        trip = round_trip(args.fingerjoints, method, args.limit_series)
        rows.append(f"| {method} | {s['n_series']} | {s['n_pairs']} | {s['sd_trials_mm_mean']:.4f} | "
                    f"{s['sd_trials_mm_median']:.4f} | {100 * s['mismatching_rate']:.2f} % | {100 * s['flag_rate']:.0f} % | "
                    f"{_rounded(s['transitivity_rms_mm'], 4)} | {_rounded(s['transitivity_rms_own_centres_mm'], 4)} | "
                    f"{s['n_triplets']} | {_rounded(s['transitivity_rms_unflagged_mm'], 4)} ({s['n_triplets_unflagged']}) | "
                    f"{_rounded(s['transitivity_z_rms'], 2)} | {trip['mean_mm']:+.4f} / {trip['rms_mm']:.4f} ({trip['n']}) | "
                    f"{_rounded(trip['rms_unflagged_mm'], 4)} ({trip['n_unflagged']}) | {s['time_per_trial_s']:.3f} |")
        print(rows[-1], file=sys.stderr)
    table = "\n".join([
        "| method | series | visit pairs | mean SD of trials (mm) | median SD (mm) | mismatching | flagged | transitivity RMS, common centre (mm) | transitivity RMS, own centres (mm) | triplets | transitivity RMS, no pair flagged (mm) (triplets) | transitivity residual / reported SE, RMS | round trip JSN(i->j) + JSN(j->i), mean / RMS (mm) (pairs) | round trip RMS, neither way flagged (mm) (pairs) | s/trial |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    load = f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    block = (f"Generated by `.venv/bin/python benchmarks/bench_quantify_real.py "
             f"--fingerjoints {args.fingerjoints} --limit-series {args.limit_series}` (0.175 mm/px nominal; the first "
             f"{args.limit_series} multi-visit series; shared 2-core machine, {load}; transitivity: all three JSNs of a triplet evaluated at visit i's joint centre and axis, and, for comparison, each pair about its own baseline's centre; residual / SE: each residual over the root sum of squares of its three measurements' reported `jsn_se_px`, for methods that report one; round trip: each visit pair measured both ways on the original images, each direction about its own baseline's joint frame, so a flexion between the visits leaves a little even for a perfect method).\n\n{table}")
    doc = args.docs / "quantify.md"
    write_doc_block(doc, "bench_quantify_real", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
