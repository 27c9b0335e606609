"""Steady-state speed and memory of the bundled quantifier on one core.

    .venv/bin/python benchmarks/bench_quantify_speed.py [--fingerjoints ../shared/data/fingerjoints]

``bench_quantify.py`` times every pair once, inside a validation run, on whatever else the
machine is doing. This script measures the quantifier alone the way ``timeit`` does: each pair
of a noise-free and a high-noise set (256x256, built as in ``bench_quantify.py``) is measured
``--repeats`` times in CPU seconds of this process (one thread; the runs of a pair a whole pass
over the sets apart, since the machine's speed drifts over minutes), and the fastest run counts,
which removes the other processes' interference but not the quantifier's own work. It also
reports the first run of each pair, and the process's peak resident memory. The noise-free
phantom set is timed again resampled to each of ``--sizes`` (the quantifier's lengths follow the
picture's size). Writes its table between the ``bench_quantify_speed`` markers of
docs/quantify.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from bench_quantify import make_dataset  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from bench_quantify_inputs import resampled  # noqa: E402
from docblock import command_line, write_doc_block  # noqa: E402

from jsnsynth.quantify.quantifier import keep_freed_heap, quantify_pair  # noqa: E402
from jsnsynth.quantify.validate import method_arguments, read_pairs  # noqa: E402


def cpu_seconds(sets: list[list[dict]], repeats: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per set and pair: the CPU time of the first run and the fastest of ``repeats`` (seconds).

    The runs of one pair are spread over the whole benchmark (one pass over every set, then the
    next), not taken back to back: this machine's speed drifts over minutes, and back-to-back
    runs of a pair all land in the same slow or fast spell.
    """
    runs = [[[] for _ in records] for records in sets]
    for _ in range(repeats):
        for records, set_runs in zip(sets, runs):
            for record, pair_runs in zip(records, set_runs):
                args, kwargs = method_arguments(record)
                start = time.process_time()
                quantify_pair(*args, **kwargs)
                pair_runs.append(time.process_time() - start)
    return [(np.array([r[0] for r in set_runs]), np.array([min(r) for r in set_runs])) for set_runs in runs]


def resampled_record(record: dict, size_px: int) -> dict:
    """``record`` with its images and masks resampled to ``size_px`` on the larger side, and its
    spacing and joint frame to match."""
    factor = size_px / max(np.asarray(record["baseline"]).shape)
    names = ("baseline", "followup", "baseline_upper_mask", "baseline_lower_mask", "followup_upper_mask",
             "followup_lower_mask")
    arrays = resampled(tuple(np.asarray(record[name]) for name in names), factor)
    return {**record, **dict(zip(names, arrays)), "pixel_spacing_mm": float(record["pixel_spacing_mm"]) / factor,
            "joint_center_x": factor * (float(record["joint_center_x"]) + 0.5) - 0.5,
            "joint_center_y": factor * (float(record["joint_center_y"]) + 0.5) - 0.5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fingerjoints", type=Path, help="real finger-joint folder (real-layer source)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per set")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each pair, one pass over all sets each")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 512],
                        help="larger sides (px) the noise-free phantom set is also timed at")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    keep_freed_heap()  # as the jsnsynth commands do
    sources = ["phantom"] + ([f"fingerjoints:{args.fingerjoints}"] if args.fingerjoints else [])
    lines = ["| source | noise | pairs | CPU ms per pair, fastest of "
             f"{args.repeats} (median / mean) | pairs/s on one core | first run, mean ms |", "|---|---|---|---|---|---|"]
    load_start = os.getloadavg()[0]
    labels, sets = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sources:
            for level in ("none", "high"):
                labels.append((spec.split(":")[0], level))
                sets.append(list(read_pairs(make_dataset(spec, level, args.pairs, Path(tmp), args.seed))))
        for size_px in args.sizes:
            labels.append(("phantom", f"none, resampled to {size_px} px"))
            sets.append([resampled_record(record, size_px) for record in sets[0]])
    for (source, level), records, (first, fastest) in zip(labels, sets, cpu_seconds(sets, args.repeats)):
        lines.append(f"| {source} | {level} | {len(records)} | {1e3 * np.median(fastest):.1f} / "
                     f"{1e3 * fastest.mean():.1f} | {1.0 / fastest.mean():.1f} | {1e3 * first.mean():.1f} |")
        print(lines[-1], flush=True)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    command = command_line("bench_quantify_speed.py", [
        ("fingerjoints", args.fingerjoints, None), ("pairs", args.pairs, 16), ("repeats", args.repeats, 5),
        ("seed", args.seed, 5), ("sizes", args.sizes, [128, 512])])
    resampled_note = ", and the noise-free phantoms resampled: cubic up, pixel area down" if args.sizes else ""
    block = (f"Generated by {command} (256x256 pairs as in the benchmark above, seed {args.seed}{resampled_note}; "
             "one thread, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; CPU time of this process; load average "
             f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; peak resident memory of the "
             f"whole process, pairs and Python included: {peak_mib:.0f} MiB).\n\n" + "\n".join(lines))
    print(block)
    if not args.no_doc:
        write_doc_block(args.docs / "quantify.md", "bench_quantify_speed", block, title="Quantifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
