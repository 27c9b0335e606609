"""``jsnsynth quantify-batch``: a table of visit pairs measured in one run."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import jsnsynth.quantify.batch as batch
from jsnsynth.cli import main
from jsnsynth.errors import InputError
from jsnsynth.quantify.quantifier import quantify_files
from jsnsynth.quantify.toy import toy_pair
from jsnsynth.quantify.validate import ResumeLog
from jsnsynth.synth.io import encode_png
from jsnsynth.synth.xray import quantize


def _write_pairs(folder: Path, shifts: tuple[float, ...]) -> Path:
    """Toy visit pairs of the given JSN changes as files, and a table of them (relative paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["id,baseline,followup,upper_mask,lower_mask"]
    for k, d in enumerate(shifts):
        pair = toy_pair(d)
        for name in ("baseline", "followup"):
            (folder / f"{name}{k}.png").write_bytes(encode_png(quantize(pair[name], 16)))
        for name in ("upper_mask", "lower_mask"):
            (folder / f"{name}{k}.png").write_bytes(encode_png(np.where(pair[name], 255, 0).astype(np.uint8)))
        rows.append(f"pair{k},baseline{k}.png,followup{k}.png,upper_mask{k}.png,lower_mask{k}.png")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def _results(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_table_of_pairs_is_measured_as_one_pair_at_a_time(tmp_path, capsys):
    """One `jsnsynth quantify` per pair paid Python's start-up each time; the table's rows must be
    the same measurements, in the table's order, and a refused pair must not stop the others."""
    table = _write_pairs(tmp_path / "study", (0.5, -0.3))
    with open(table, "a") as handle:  # a pair whose follow-up is missing
        handle.write("gone,baseline0.png,absent.png,upper_mask0.png,lower_mask0.png\n")
    assert main(["quantify-batch", str(table), "--out", str(tmp_path / "out" / "results.csv")]) == 1
    captured = capsys.readouterr()
    assert "measured 2 of 3 pair(s)" in captured.out
    assert captured.err.strip().splitlines() == [
        f"jsnsynth: error: 1 of 3 pair(s) refused; first, gone: {tmp_path / 'study' / 'absent.png'}: no such file"]
    rows = _results(tmp_path / "out" / "results.csv")
    assert [row["id"] for row in rows] == ["pair0", "pair1", "gone"]
    for k, row in enumerate(rows[:2]):
        single = quantify_files(*(str(tmp_path / "study" / f"{name}{k}.png")
                                  for name in ("baseline", "followup", "upper_mask", "lower_mask")))
        assert float(row["jsn_px"]) == pytest.approx(single["jsn_px"], abs=1e-12)
        assert float(row["jsn_se_mm"]) == pytest.approx(single["jsn_se_mm"], abs=1e-12)
        assert row["mismatch"] == str(single["mismatch"]) and row["error"] == ""
    assert rows[2]["jsn_px"] == "" and "no such file" in rows[2]["error"]
    assert not list((tmp_path / "out").glob(".quantify-batch*"))  # the resume log goes with the report
    # the images are named as the table names them, wherever the command runs (they were the
    # paths as read, relative to the working folder: other bytes from another folder)
    assert [(row["baseline"], row["followup"]) for row in rows] == [
        ("baseline0.png", "followup0.png"), ("baseline1.png", "followup1.png"), ("baseline0.png", "absent.png")]


def test_an_interrupted_batch_resumes_where_it_stopped(tmp_path, monkeypatch):
    table = _write_pairs(tmp_path / "study", (0.5, -0.3, 0.2))
    calls = []
    measure = batch.quantify_files

    def stopping(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(batch, "quantify_files", stopping)
    out = tmp_path / "out" / "results.csv"
    with pytest.raises(KeyboardInterrupt):
        batch.quantify_table(table, out)
    assert not out.exists() and len(list(out.parent.glob(".quantify-batch*"))) == 1
    calls.clear()
    monkeypatch.setattr(batch, "quantify_files", lambda *a, **k: (calls.append(a[0]), measure(*a, **k))[1])
    rows = batch.quantify_table(table, out)
    assert [Path(c).name for c in calls] == ["baseline1.png", "baseline2.png"]  # the first pair from the log
    assert [row["id"] for row in rows] == ["pair0", "pair1", "pair2"] and all(row["jsn_px"] != "" for row in rows)
    assert not list(out.parent.glob(".quantify-batch*"))  # finished: the log goes, a rerun measures afresh


def _stopped_at_the_second_pair(table: Path, out: Path, monkeypatch) -> list[str]:
    """Run ``table`` until its second pair is reached, as a Ctrl-C there would stop it; from then
    on the baselines measured are recorded in the list returned."""
    measure = batch.quantify_files

    def stopping_at_the_second(*args, **kwargs):
        if Path(args[0]).name == "baseline1.png":
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(batch, "quantify_files", stopping_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        batch.quantify_table(table, out)
    calls: list[str] = []
    monkeypatch.setattr(batch, "quantify_files", lambda *a, **k: (calls.append(Path(a[0]).name), measure(*a, **k))[1])
    return calls


def test_a_logged_pair_whose_files_changed_is_measured_anew(tmp_path, monkeypatch):
    table = _write_pairs(tmp_path / "study", (0.5, -0.3))
    out = tmp_path / "out" / "results.csv"
    calls = _stopped_at_the_second_pair(table, out, monkeypatch)
    # the first pair's follow-up replaced (by the second's) after it was logged
    (tmp_path / "study" / "followup0.png").write_bytes((tmp_path / "study" / "followup1.png").read_bytes())
    batch.quantify_table(table, out)
    assert calls == ["baseline0.png", "baseline1.png"]


@pytest.mark.parametrize("column", ["pixel_spacing_mm", "joint_axis_deg"])
def test_a_logged_pair_whose_row_changed_is_measured_anew(tmp_path, monkeypatch, column):
    """A spacing (or a joint axis) added to the table after a run stopped applied to the rows
    still to come alone: the results mixed two settings, the logged rows' jsn_mm at the nominal
    spacing (an outside probe)."""
    table = _write_pairs(tmp_path / "study", (0.5, -0.3))
    out = tmp_path / "out" / "results.csv"
    calls = _stopped_at_the_second_pair(table, out, monkeypatch)
    value = "0.1" if column == "pixel_spacing_mm" else "2"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([f"{lines[0]},{column}"] + [f"{line},{value}" for line in lines[1:]]) + "\n")
    rows = batch.quantify_table(table, out)
    assert calls == ["baseline0.png", "baseline1.png"]
    if column == "pixel_spacing_mm":
        assert [row["pixel_spacing_mm"] for row in rows] == [0.1, 0.1]


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty (a table of pairs needs a header row: baseline, followup, upper_mask, lower_mask)"),
    (" \n\n", "empty (a table"),
    ("baseline,followup,upper_mask\na,b,c\n",
     "missing column(s) lower_mask (needs baseline, followup, upper_mask, lower_mask; the header reads "
     "'baseline,followup,upper_mask')"),
    ("baseline,followup,upper_mask,lower_mask,spacing\na,b,c,d,0.1\n", "unknown column(s) spacing"),
    ("baseline,followup,upper_mask,lower_mask\n", "lists no pairs"),
    ("baseline,followup,upper_mask,lower_mask\na,,c,d\n", "row 1 has no followup"),
    ("baseline,followup,upper_mask,lower_mask,pixel_spacing_mm\na,b,c,d,fine\n", "pixel_spacing_mm 'fine' is not a number"),
    ("baseline,followup,upper_mask,lower_mask,pixel_spacing_mm\na,b,c,d,175\n", "is not a radiograph's"),
    ("baseline,followup,upper_mask,lower_mask,joint_center_x\na,b,c,d,12\n", "half a joint centre"),
    ("baseline,followup,upper_mask,lower_mask,followup_upper_mask\na,b,c,d,e\n", "one follow-up mask"),
    ("id,baseline,followup,upper_mask,lower_mask\nx,a,b,c,d\nx,a,b,c,d\n", "the id 'x' names more than one pair"),
    ("baseline,followup,upper_mask,lower_mask\na,b,c,d,e\n", "row 1 has more cells than the header"),
    # the reader kept the last of two same-named cells: another image than meant, without a word
    ("baseline,baseline,followup,upper_mask,lower_mask\na,z,b,c,d\n", "names the column 'baseline' twice"),
    ("baseline,followup,upper_mask,lower_mask,,\na,b,c,d,,\n", "the header has an empty cell (column 5)"),
    ("baseline,followup,upper_mask,lower_mask,pixel_spacing_mm\na,b,c,d,1_0\n", "pixel_spacing_mm '1_0' is not a number"),
    ("id,baseline,followup,upper_mask,lower_mask\n,a,b,c,d\n1,a,b,c,d\n",
     "the id '1' names more than one pair (a row without an id takes its number: row 1)"),
])
def test_a_bad_table_is_a_one_line_error_before_any_work(tmp_path, capsys, text, message):
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(InputError) as info:
        batch.read_pair_table(tmp_path / "pairs.csv")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert main(["quantify-batch", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out.csv")]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("header, separator", [("ID,Baseline,Followup,Upper_Mask,Lower_Mask", ","),
                                               ("id;baseline;followup;upper_mask;lower_mask", ";"),
                                               ("id\tbaseline\tfollowup\t upper_mask\tlower_mask", "\t")])
def test_a_table_as_spreadsheets_save_it_is_read(tmp_path, header, separator):
    """Column names in capitals, or cells separated by semicolons (a spreadsheet where the
    decimal mark is a comma) or tabs, were refused as missing every column."""
    spacing = "0.15" if separator == "," else "0,15"  # such a spreadsheet's decimal mark
    (tmp_path / "pairs.csv").write_text(f"{header}{separator}pixel_spacing_mm\n"
                                        + separator.join(["p1", "a 1.png", "b.png", "u.png", "l.png", spacing]) + "\n")
    rows = batch.read_pair_table(tmp_path / "pairs.csv")
    assert [(row["id"], row["as_written"]["baseline"], row["pixel_spacing_mm"]) for row in rows] == [("p1", "a 1.png", 0.15)]
    assert rows[0]["lower_mask"] == str(tmp_path / "l.png")


def test_the_results_table_must_not_be_an_input(tmp_path, capsys):
    table = _write_pairs(tmp_path / "study", (0.5,))
    # nor be named as a spreadsheet: an .xlsx file held CSV text, without a word
    assert main(["quantify-batch", str(table), "--out", str(tmp_path / "results.xlsx")]) == 1
    assert "results.xlsx: the results table is written as CSV; name it .csv, not .xlsx" in capsys.readouterr().err
    assert not (tmp_path / "results.xlsx").exists()
    # a name with a dot in it is no other format
    assert main(["quantify-batch", str(table), "--out", str(tmp_path / "results_v1.2")]) == 0
    assert (tmp_path / "results_v1.2").read_text().startswith("id,baseline")
    assert main(["quantify-batch", str(table), "--out", str(table)]) == 1
    assert "pairs.csv" in capsys.readouterr().err
    assert table.read_text().startswith("id,baseline")


def test_worker_processes_write_the_same_results_table(tmp_path, capsys):
    table = _write_pairs(tmp_path / "study", (0.5, -0.3, 0.2))
    with open(table, "a") as handle:  # a refused pair among them, in the middle of a task
        handle.write("gone,baseline0.png,absent.png,upper_mask0.png,lower_mask0.png\n")
    with open(table, "a") as handle:
        handle.write("last,baseline1.png,followup1.png,upper_mask1.png,lower_mask1.png\n")
    tables = {}
    for num_proc in (1, 2):
        out = tmp_path / f"out{num_proc}" / "results.csv"
        assert main(["quantify-batch", str(table), "--out", str(out), "--num-proc", str(num_proc)]) == 1
        assert "measured 4 of 5 pair(s)" in capsys.readouterr().out
        tables[num_proc] = out.read_bytes()
    assert tables[1] == tables[2]
    assert [row["id"] for row in _results(tmp_path / "out2" / "results.csv")] == ["pair0", "pair1", "pair2", "gone", "last"]


def test_a_rows_own_spacing_is_labelled_as_the_tables(tmp_path):
    # a row's own spacing was reported as `option`, which names --pixel-spacing: in a table that
    # used both, the results could not tell which applied
    table = _write_pairs(tmp_path / "study", (0.5, -0.3))
    lines = table.read_text().splitlines()
    lines[0] += ",pixel_spacing_mm"
    lines[1] += ",0.1"
    lines[2] += ","
    table.write_text("\n".join(lines) + "\n")
    rows = batch.quantify_table(table, tmp_path / "results.csv", pixel_spacing_mm=0.2)
    assert [(row["pixel_spacing_source"], float(row["pixel_spacing_mm"])) for row in rows] == [("table", 0.1), ("option", 0.2)]
    assert float(rows[0]["jsn_mm"]) == pytest.approx(0.1 * float(rows[0]["jsn_px"]))


@pytest.mark.skipif(sys.platform == "win32", reason="folder locks are POSIX flock")
def test_a_results_table_another_run_writes_is_refused(tmp_path, capsys):
    table = _write_pairs(tmp_path / "study", (0.5,))
    out = tmp_path / "out"
    running = ResumeLog(out, "quantify-batch-results.csv", ["a run at work"])
    assert main(["quantify-batch", str(table), "--out", str(out / "results.csv")]) == 1
    assert capsys.readouterr().err.strip() == (f"jsnsynth: error: {out / 'results.csv'}: another jsnsynth run is "
                                               "writing it; wait for it to end, or choose another output")
    assert not (out / "results.csv").exists()
    # a table of another name in the same folder goes ahead beside it
    assert main(["quantify-batch", str(table), "--out", str(out / "other.csv")]) == 0
    running.keep_if_resumable()
    assert main(["quantify-batch", str(table), "--out", str(out / "results.csv")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["other.csv", "results.csv"]  # no log, no lock left


def test_a_results_table_of_a_long_name_is_written(tmp_path):
    # its log and lock file, named after it, passed the file system's 255 bytes: a raw OSError
    # (File name too long), and the folder it made was left behind
    table = _write_pairs(tmp_path / "study", (0.5,))
    out = tmp_path / "out" / ("r" * 230 + ".csv")
    assert main(["quantify-batch", str(table), "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == [out.name]
