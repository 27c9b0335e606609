"""Many visit pairs at once: ``jsnsynth quantify-batch PAIRS.csv --out RESULTS.csv``.

A study measures hundreds of visit pairs; one ``jsnsynth quantify`` per pair pays the start-up of
Python and the libraries each time (about a second, twenty times the measurement). This reads a
table of pairs, measures each with :func:`~jsnsynth.quantify.quantifier.quantify_files`, and
writes one row per pair. A pair the quantifier refuses gets its one-line reason in the ``error``
column, and the others are still measured; an interrupted run resumes from its log.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsnsynth.errors import InputError, JsnSynthError, OutputError
from jsnsynth.quantify.quantifier import RESULT_VERSION, keep_freed_heap, quantify_files
from jsnsynth.quantify.validate import ResumeLog, file_stamps, method_failure
from jsnsynth.synth.io import check_outputs_apart, check_writable, write_bytes_atomic
from jsnsynth.synth.layers import check_pixel_spacing
from jsnsynth.workers import check_num_proc, in_worker, ordered_results

#: Columns a table of pairs must have: paths of the images and of the baseline's masks.
REQUIRED_COLUMNS = ("baseline", "followup", "upper_mask", "lower_mask")
#: Columns it may have: a name for the pair, the follow-up's masks, the pixel spacing (mm) and
#: the joint frame (px, degrees), each as ``jsnsynth quantify``'s options.
OPTIONAL_COLUMNS = ("id", "followup_upper_mask", "followup_lower_mask", "pixel_spacing_mm", "joint_center_x",
                    "joint_center_y", "joint_axis_deg")
_PATH_COLUMNS = ("baseline", "followup", "upper_mask", "lower_mask", "followup_upper_mask", "followup_lower_mask")
#: Suffixes of other formats, which a results table (CSV text) must not be named with.
NOT_CSV_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".tsv", ".json", ".parquet")
#: Columns of the results table, in order.
RESULT_COLUMNS = ("id", "baseline", "followup", "jsn_px", "jsn_mm", "jsn_se_px", "jsn_se_mm", "reliability", "mismatch",
                  "flags", "pixel_spacing_mm", "pixel_spacing_source", "joint_center_x", "joint_center_y",
                  "joint_axis_deg", "error")
#: Version of the results table's rows, part of a resume log's key (2: the images named as the
#: table names them, not as read from the working folder; 3: each row's settings in its log
#: entry, and the quantifier's coarse stage changed): a run begun by another version starts
#: afresh rather than mixing the two.
TABLE_VERSION = 3


def read_pair_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The pairs of a CSV table, paths taken relative to the table's folder.

    Returns:
        Per row: ``id`` (the row's own, else its number from 1), the six paths (None where
        empty), ``pixel_spacing_mm``, ``joint_center_xy`` and ``joint_axis_deg`` (None where
        empty), and ``as_written``: the images' cells as the table has them.

    Raises:
        InputError: a file that is not a readable CSV table, a missing column, an unknown one,
            a row without an image or a baseline mask, a number that is not one, a spacing no
            radiograph has, half a joint centre, half the follow-up's masks, or no row at all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such table of pairs") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc.__class__.__name__})") from None
    if not text.strip():
        raise InputError(f"{path}: empty (a table of pairs needs a header row: {', '.join(REQUIRED_COLUMNS)})")
    header = text.splitlines()[0]
    # a spreadsheet saved where the decimal mark is a comma separates its cells by semicolons (or tabs)
    delimiter = next((d for d in (";", "\t") if d in header and "," not in header), ",")
    try:
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        # column names as a person types them: 'Baseline', ' upper_mask'
        fields = reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        if any(not name for name in fields):
            raise InputError(f"{path}: the header has an empty cell (column {fields.index('') + 1})")
        twice = [c for c in dict.fromkeys(fields) if fields.count(c) > 1]
        if twice:  # the reader keeps the last such cell: another image than the user meant
            raise InputError(f"{path}: the header names the column {twice[0]!r} twice")
        missing = [c for c in REQUIRED_COLUMNS if c not in fields]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)}; "
                             f"the header reads {header.strip()[:120]!r})")
        unknown = [c for c in fields if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if unknown:  # a misspelt optional column would be ignored without a word
            raise InputError(f"{path}: unknown column(s) {', '.join(unknown)} (may also have {', '.join(OPTIONAL_COLUMNS)})")
        rows = [_pair_of(row, number, path, decimal_comma=delimiter != ",")
                for number, row in enumerate(reader, start=1)]
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV table ({exc})") from None
    if not rows:
        raise InputError(f"{path}: lists no pairs")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        numbered = [str(number) for number, row in enumerate(rows, start=1) if row["id"] == repeated and row["id_from_row"]]
        because = f" (a row without an id takes its number: row {numbered[0]})" if numbered else ""
        raise InputError(f"{path}: the id {repeated!r} names more than one pair{because}")
    for row in rows:
        del row["id_from_row"]
    return rows


def _pair_of(row: dict, number: int, table: Path, decimal_comma: bool = False) -> dict[str, Any]:
    """One row of the table as a pair (see :func:`read_pair_table`); ``decimal_comma``: numbers
    may be written ``0,175``, as where a spreadsheet separates cells by semicolons or tabs."""
    where = f"{table}: row {number}"
    if None in row.values() or None in row:
        raise InputError(f"{where} has {'fewer' if None in row.values() else 'more'} cells than the header")
    cell = {name: (row.get(name) or "").strip() for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    for name in REQUIRED_COLUMNS:
        if not cell[name]:
            raise InputError(f"{where} has no {name}")
    if bool(cell["followup_upper_mask"]) != bool(cell["followup_lower_mask"]):
        raise InputError(f"{where} gives one follow-up mask: give both or neither")
    if bool(cell["joint_center_x"]) != bool(cell["joint_center_y"]):
        raise InputError(f"{where} gives half a joint centre: give joint_center_x and joint_center_y, or neither")

    def number_in(name: str) -> float | None:
        if not cell[name]:
            return None
        try:
            if "_" in cell[name]:  # Python's float reads '1_0' as 10
                raise ValueError
            value = float(cell[name].replace(",", ".", 1) if decimal_comma else cell[name])
        except ValueError:
            raise InputError(f"{where}: {name} {cell[name]!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"{where}: {name} {cell[name]!r} is not a finite number")
        return value

    spacing = number_in("pixel_spacing_mm")
    if spacing is not None:
        check_pixel_spacing(spacing, f"{where}: pixel_spacing_mm")
    center = (number_in("joint_center_x"), number_in("joint_center_y")) if cell["joint_center_x"] else None
    pair = {"id": cell["id"] or str(number), "id_from_row": not cell["id"], "pixel_spacing_mm": spacing,
            "joint_center_xy": center, "joint_axis_deg": number_in("joint_axis_deg")}
    for name in _PATH_COLUMNS:
        pair[name] = str(table.parent / cell[name]) if cell[name] else None
    # the results name the images as the table does: the same table gives the same results
    # wherever the command runs (they were the paths as read, from the working folder)
    pair["as_written"] = {name: cell[name] for name in ("baseline", "followup")}
    return pair


def _settings_of(pair: dict) -> list:
    """What of a pair besides its files' bytes makes its result: its paths, spacing and joint
    frame, as a resume log's JSON gives them back."""
    return json.loads(json.dumps([[pair[name] for name in _PATH_COLUMNS], pair["pixel_spacing_mm"],
                                  pair["joint_center_xy"], pair["joint_axis_deg"]]))


def _result_row(pair: dict, record: dict | None, error: str) -> dict[str, Any]:
    """The results table's row of one pair: its record's figures, or its error."""
    row: dict[str, Any] = {name: "" for name in RESULT_COLUMNS}
    row.update(id=pair["id"], **pair["as_written"], error=error)
    if record is not None:
        for name in ("jsn_px", "jsn_mm", "jsn_se_px", "jsn_se_mm", "reliability", "mismatch", "pixel_spacing_mm",
                     "pixel_spacing_source", "joint_axis_deg"):
            row[name] = record[name]
        row["joint_center_x"], row["joint_center_y"] = record["joint_center_xy"]
        row["flags"] = "; ".join(record["flags"])
    return row


# the spacing of this thread (the command's, or a worker's) for pairs that state none
_SPACING = threading.local()


def _use_spacing(pixel_spacing_mm: float | None) -> None:
    """Make ``pixel_spacing_mm`` the spacing :func:`_measured_row` gives pairs that state none (in
    this process, or in a worker: :func:`jsnsynth.workers.ordered_results`)."""
    if in_worker():  # the heap setting the command makes in its own process
        keep_freed_heap()
    _SPACING.default = pixel_spacing_mm


def _measured_row(pair: dict) -> dict[str, Any]:
    """The results row of one pair: its JSN, or its refusal in its own words."""
    try:
        record = quantify_files(
            pair["baseline"], pair["followup"], pair["upper_mask"], pair["lower_mask"],
            pair["followup_upper_mask"], pair["followup_lower_mask"],
            pair["pixel_spacing_mm"] if pair["pixel_spacing_mm"] is not None else _SPACING.default,
            joint_center_xy=pair["joint_center_xy"], joint_axis_deg=pair["joint_axis_deg"])
    except JsnSynthError as exc:  # this pair's refusal; the others go on
        return _result_row(pair, None, method_failure(exc))
    if pair["pixel_spacing_mm"] is not None:  # the row's own, not --pixel-spacing's
        record["pixel_spacing_source"] = "table"
    return _result_row(pair, record, "")


def quantify_table(
    table: str | os.PathLike,
    out_csv: str | os.PathLike,
    pixel_spacing_mm: float | None = None,
    on_pair: Callable[[dict], None] | None = None,
    num_proc: int = 1,
) -> list[dict[str, Any]]:
    """Measure every pair of a table (:func:`read_pair_table`) and write the results table.

    A pair's own ``pixel_spacing_mm`` wins over ``pixel_spacing_mm``, which wins over the DICOM
    header and the nominal spacing, as in ``jsnsynth quantify``. Each pair measured is logged
    beside ``out_csv`` with the sizes and times of its files, so a run stopped (Ctrl-C, a kill)
    resumes where it stopped, measuring again only the pairs whose files or row changed; the results
    table is written at the end, whole, and the log then goes.

    Args:
        table: the CSV table of pairs.
        out_csv: the results table to write (:data:`RESULT_COLUMNS`; numbers as the JSON record
            gives them, empty where the pair was refused, with its reason in ``error``).
        pixel_spacing_mm: spacing for the pairs that state none (mm/px).
        on_pair: called with each results row as it is made (progress).
        num_proc: worker processes (the same results table either way).

    Returns:
        The results rows, in the table's order.

    Raises:
        InputError: the table (:func:`read_pair_table`), or a spacing no radiograph has.
        OutputError: a results table named as another format (:data:`NOT_CSV_SUFFIXES`: it
            would hold CSV text), that cannot be written, or that is one of the inputs.
        WorkerError: a worker process stopped abruptly.
    """
    check_num_proc(num_proc)
    if Path(out_csv).suffix.lower() in NOT_CSV_SUFFIXES:
        raise OutputError(f"{out_csv}: the results table is written as CSV; name it .csv, not {Path(out_csv).suffix}")
    if pixel_spacing_mm is not None:
        check_pixel_spacing(pixel_spacing_mm, "--pixel-spacing")
    pairs = read_pair_table(table)
    out_csv = Path(out_csv)
    check_outputs_apart([out_csv], [Path(table)] + [p[name] for p in pairs for name in _PATH_COLUMNS if p[name]])
    check_writable(out_csv)
    log = ResumeLog(out_csv.parent, f"quantify-batch-{out_csv.name}",
                    [str(Path(table).resolve()), pixel_spacing_mm, RESULT_VERSION, TABLE_VERSION], output=out_csv)
    rows_by_id: dict[str, dict[str, Any]] = {}
    pending = []  # (pair, stamps of its files) still to measure, in the table's order
    try:  # whatever stops the run keeps what is logged for a rerun, and lets the folder go
        done = log.logged("id")
        for pair in pairs:
            # a row's own settings count as its files do: a spacing or joint frame added to the
            # table after a run stopped was applied to the rows still to come alone, and the
            # results mixed the two
            stamps = [file_stamps(pair[name] for name in _PATH_COLUMNS if pair[name]), _settings_of(pair)]
            previous = done.get(pair["id"])
            if previous is not None and previous["stamps"] == stamps:
                rows_by_id[pair["id"]] = previous["row"]
            else:
                pending.append((pair, stamps))
        measured = ordered_results(_use_spacing, _measured_row, pixel_spacing_mm, [pair for pair, _ in pending],
                                   num_proc, what="pair", job_name="the spacing",
                                   resume_hint="the pairs measured are kept: rerun the same command to resume")
        # closed on the way out: an error in the loop ends the workers at once
        with contextlib.closing(measured):
            for row, (pair, stamps) in zip(measured, pending):
                rows_by_id[pair["id"]] = row
                log.append({"id": pair["id"], "stamps": stamps, "row": row})
                if on_pair is not None:
                    on_pair(row)
        rows = [rows_by_id[pair["id"]] for pair in pairs]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomic(out_csv, buffer.getvalue().encode())
        log.finish()
    except BaseException:
        log.keep_if_resumable()
        raise
    return rows
