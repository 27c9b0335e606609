"""Tests of the validation harness: dataset reading, plugin methods, metrics, bad datasets."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jsnsynth.cli import main
from jsnsynth.errors import InputError, OutputError
from jsnsynth.quantify.quantifier import jsn_from_transforms
from jsnsynth.quantify.real import drop_outlier_trials, transitivity_common_centre, transitivity_summary, validate_real
from jsnsynth.quantify.reference import ecc_quantify
from jsnsynth.quantify.toy import toy_pair
from jsnsynth.quantify.validate import (
    IMAGING_FIELDS,
    ResumeLog,
    load_method,
    method_stamps,
    noise_level_of,
    read_estimate,
    read_pairs,
    rmse_interval,
    summarize,
    validate_dataset,
    validate_records,
)
from jsnsynth.synth.dataset import simulate_pair
from jsnsynth.synth.geometry import Similarity, axis_vector
from jsnsynth.synth.io import encode_png
from jsnsynth.synth.pairs import PairConfig
from jsnsynth.synth.sources import PhantomSource
from jsnsynth.synth.xray import ImagingParams, ImagingRanges, quantize


def _png16(image):
    return {"bytes": encode_png(quantize(image, 16)), "path": None}


def _mask(mask):
    return {"bytes": encode_png(np.where(mask, 255, 0).astype(np.uint8)), "path": None}


def _write_dataset(folder: Path, jsn_values=(0.5, -1.0, 1.2)) -> Path:
    """A tiny contract-3 dataset made from the analytic toy joint (exact truth)."""
    rows = []
    for i, d in enumerate(jsn_values):
        base_im = ImagingParams(photons_per_px=3e4, noise_seed=10 + i)
        follow_im = ImagingParams(photons_per_px=3e4, noise_seed=20 + i)
        pair = toy_pair(d, baseline_imaging=base_im, followup_imaging=follow_im)
        clean = toy_pair(d, baseline_imaging=base_im.without_noise(), followup_imaging=follow_im.without_noise())
        row = {
            "pair_id": f"pair-{i:07d}", "source": "toy", "joint_id": "toy-0", "split": "test",
            "baseline": _png16(pair["baseline"]), "followup": _png16(pair["followup"]),
            "baseline_clean": _png16(clean["baseline"]), "followup_clean": _png16(clean["followup"]),
            "baseline_upper_mask": _mask(pair["upper_mask"]), "baseline_lower_mask": _mask(pair["lower_mask"]),
            "followup_upper_mask": _mask(pair["followup_upper_mask"]), "followup_lower_mask": _mask(pair["followup_lower_mask"]),
            "pixel_spacing_mm": 0.175, "jsn_px": d, "jsn_mm": d * 0.175,
            "joint_center_x": pair["center_xy"][0], "joint_center_y": pair["center_xy"][1], "joint_axis_deg": 0.0,
        }
        for bone in ("upper", "lower"):
            t = pair[bone]
            row.update({f"{bone}_scale": t.scale, f"{bone}_angle_deg": t.angle_deg, f"{bone}_dx": t.dx, f"{bone}_dy": t.dy})
        for role, params in (("baseline", base_im), ("followup", follow_im)):
            record = params.to_dict()
            row.update({f"{role}_{name}": record[name] for name in IMAGING_FIELDS})
        rows.append(row)
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("toy dataset\n")
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "test-00000-of-00001.parquet")
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("ds") / "toy")


def test_validate_bundled_method_reports_accuracy_and_crlb(dataset, tmp_path):
    summary = validate_dataset(dataset, "register", tmp_path / "out")
    overall = summary["overall"]
    assert overall["n"] == 3 and overall["mismatch_rate"] == 0.0
    assert overall["rmse_px"] < 0.1
    assert 0 < overall["crlb_rms_px"] < 0.05
    assert overall["loa_px"][0] < overall["bias_px"] < overall["loa_px"][1]
    for name in ("summary.json", "pairs.csv", "bland_altman.png", "error_vs_truth.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert {"noise_level", "abs_jsn_px", "source", "split"} <= set(summary["breakdown"])
    # the bundled method reports its standard errors, and they are read
    assert overall["n_with_se"] == 3 and overall["z_rms"] > 0 and 0 <= overall["coverage_95"] <= 1


def test_plugin_method_loaded_by_module_function(dataset, tmp_path, monkeypatch, capsys):
    # stdout is the JSON alone: what the plug-in prints, and the line naming the report, go to stderr
    plugin = tmp_path / "my_jsn_plugin.py"
    plugin.write_text(textwrap.dedent('''
        def always_half(baseline, followup, upper_mask, lower_mask, **kwargs):
            print("measuring")
            return {"jsn_px": 0.5}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = main(["validate", str(dataset), "--method", "my_jsn_plugin:always_half", "--out", str(tmp_path / "v")])
    assert rc == 0
    captured = capsys.readouterr()
    overall = json.loads(captured.out)["overall"]
    assert captured.err.count("measuring") == 3 and "report written to" in captured.err
    errors = np.array([0.5 - 0.5, 0.5 + 1.0, 0.5 - 1.2])
    assert overall["rmse_px"] == pytest.approx(float(np.sqrt(np.mean(errors**2))))
    assert overall["mismatch_rate"] == pytest.approx(2 / 3)
    sys.modules.pop("my_jsn_plugin", None)


def _interrupted_then_resumed(run, stop_at: int) -> tuple[list[int], list[int]]:
    """Run ``run(method)`` with a method that stops (Ctrl-C) at its ``stop_at``-th call, then
    again with one that does not; the calls each run made (by its first argument's mean)."""
    calls: list[list[int]] = [[], []]

    def measure(baseline, followup, *args, **kwargs):  # one name for both runs: one resume log
        calls[resumed].append(int(round(float(np.mean(followup)))))
        if not resumed and len(calls[0]) == stop_at:
            raise KeyboardInterrupt
        return {"jsn_px": float(np.mean(followup) - np.mean(baseline)) / 100.0}

    resumed = 0
    with pytest.raises(KeyboardInterrupt):
        run(measure)
    resumed = 1
    run(measure)
    return calls[0], calls[1]


def test_validate_resumes_a_run_and_only_on_the_same_dataset(dataset, tmp_path):
    """The resume log was keyed by the dataset's path alone: a dataset written anew at that path
    was scored with the old rows' truth."""
    folder = _variant(dataset, tmp_path / "ds")
    whole = validate_dataset(folder, lambda b, f, *a, **k: {"jsn_px": float(np.mean(f) - np.mean(b)) / 100.0},
                             tmp_path / "whole", with_crlb=False)
    first, second = _interrupted_then_resumed(lambda m: validate_dataset(folder, m, tmp_path / "out", with_crlb=False), 2)
    assert len(first) == 2 and len(second) == 2  # the pair logged before the stop is not measured again
    resumed = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert resumed["overall"]["rmse_px"] == pytest.approx(whole["overall"]["rmse_px"], abs=0, rel=0)
    assert not list((tmp_path / "out").glob(".validate-*"))  # the log goes once the report is written
    # interrupted again, then the dataset is rebuilt at the same path with other truths

    with pytest.raises(KeyboardInterrupt):
        validate_dataset(folder, _stop_on_second_call(), tmp_path / "again", with_crlb=False)
    shutil.rmtree(folder)
    _write_dataset(folder, jsn_values=(2.0, -2.5, 0.25))
    validate_dataset(folder, _stop_on_second_call(stop=False), tmp_path / "again", with_crlb=False)
    truths = [line.split(",") for line in (tmp_path / "again" / "pairs.csv").read_text().splitlines()]
    column = truths[0].index("truth_px")
    assert [float(row[column]) for row in truths[1:]] == [2.0, -2.5, 0.25]


def test_a_plugin_edited_between_runs_is_measured_anew(dataset, tmp_path, monkeypatch):
    """The resume log was keyed by the method's name: a plug-in mended after a run stopped kept
    the results its first version had logged."""
    plugin = tmp_path / "edited_plugin.py"
    version_1 = ("import os\ncalls = []\ndef measure(*args, **kwargs):\n    calls.append(1)\n"
                 "    if len(calls) == 2 and os.environ.get('STOP_PLUGIN'):\n        raise KeyboardInterrupt\n    return 1.0\n")
    plugin.write_text(version_1)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("STOP_PLUGIN", "1")
    with pytest.raises(KeyboardInterrupt):
        validate_dataset(dataset, "edited_plugin:measure", tmp_path / "out", with_crlb=False)
    assert len(list((tmp_path / "out").glob(".validate-*.jsonl"))) == 1  # the first pair is logged
    plugin.write_text(version_1.replace("return 1.0", "return 0.25  # mended"))
    sys.modules.pop("edited_plugin", None)
    monkeypatch.delenv("STOP_PLUGIN")
    validate_dataset(dataset, "edited_plugin:measure", tmp_path / "out", with_crlb=False)
    rows = (tmp_path / "out" / "pairs.csv").read_text().splitlines()
    column = rows[0].split(",").index("estimate_px")
    assert {float(row.split(",")[column]) for row in rows[1:]} == {0.25}
    sys.modules.pop("edited_plugin", None)


def test_method_stamps_name_the_file_of_a_function_or_of_a_callable_object(tmp_path, monkeypatch):
    (tmp_path / "stamped_plugin.py").write_text(
        "class Measure:\n    def __call__(self, *args, **kwargs):\n        return 0.0\n\n"
        "measure = Measure()\n\ndef function(*args, **kwargs):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import stamped_plugin

    for method in (stamped_plugin.function, stamped_plugin.measure):
        stamps = method_stamps(method)[1]
        assert stamps is not None and stamps[0][0] == os.path.realpath(tmp_path / "stamped_plugin.py")
    assert method_stamps(len)[1] is None  # a builtin has no file
    sys.modules.pop("stamped_plugin", None)


def _stop_on_second_call(stop: bool = True):
    calls = []

    def measure(baseline, followup, *args, **kwargs):
        calls.append(1)
        if stop and len(calls) == 2:
            raise KeyboardInterrupt
        return 0.0

    return measure


def test_a_plugin_that_exits_on_import_is_an_error(dataset, tmp_path, monkeypatch, capsys):
    """``sys.exit(0)`` in a plug-in module ended 'validate' silently with exit code 0."""
    (tmp_path / "exiting_plugin.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["validate", str(dataset), "--method", "exiting_plugin:f"]) == 1
    assert "cannot import module 'exiting_plugin' (SystemExit: 0)" in _one_error(capsys)


def test_a_plugins_warning_over_several_lines_is_shown_in_one(dataset, tmp_path, monkeypatch, capsys):
    (tmp_path / "chatty_plugin.py").write_text(
        "import warnings\ndef half(*args, **kwargs):\n    warnings.warn('first line\\n  second line')\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["validate", str(dataset), "--method", "chatty_plugin:half", "--limit", "1"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == ["jsnsynth: warning: first line second line"]


def test_a_plugin_in_the_current_folder_is_found(dataset, tmp_path, monkeypatch, capsys):
    """The console script does not put the current folder on sys.path, as ``python -m`` does."""
    (tmp_path / "local_jsn_plugin.py").write_text("def half(*args, **kwargs):\n    return 0.5\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(dataset), "--method", "local_jsn_plugin:half", "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["n"] == 1
    sys.modules.pop("local_jsn_plugin", None)


def test_a_run_stopped_before_any_pair_leaves_no_folder(dataset, tmp_path, monkeypatch, capsys):
    # Ctrl-C on the first pair: nothing to resume, and the --out folder this run made was left empty
    plugin = tmp_path / "stopping_plugin.py"
    plugin.write_text(textwrap.dedent('''
        def stop(baseline, followup, upper_mask, lower_mask, **kwargs):
            raise KeyboardInterrupt
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "report"
    assert main(["validate", str(dataset), "--method", "stopping_plugin:stop", "--out", str(out)]) == 130
    assert not out.exists()
    assert capsys.readouterr().err.splitlines() == ["jsnsynth: interrupted; rerun the same command to resume"]
    sys.modules.pop("stopping_plugin", None)


def test_a_method_must_return_a_number():
    # text and booleans are a plug-in's mistake: "0.1" used to count as 0.1 px and True as 1 px
    assert read_estimate(np.float32(0.25))[0] == 0.25 and read_estimate(np.array(-1.5))[0] == -1.5
    assert read_estimate({"jsn_px": 2, "jsn_se_px": np.float64(0.1)})[:1] == (2.0,)
    for output in ("0.1", True, np.bool_(False), np.array(True), np.complex128(1 + 2j), bytearray(b"0.1"), [0.1], None):
        with pytest.raises(InputError, match="expected"):
            read_estimate(output)
    for output in ({"jsn_px": "0.1"}, {"jsn_px": 0.1, "jsn_se_px": "small"}):
        with pytest.raises(InputError, match="expected a number"):
            read_estimate(output)


def test_a_method_failing_on_one_pair_does_not_end_the_run(dataset):
    """Any exception on one pair (a plug-in's bug, a singular fit) is that pair's failure."""
    calls = []

    def flaky(baseline, followup, upper_mask, lower_mask, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise np.linalg.LinAlgError("Singular matrix")
        return {"jsn_px": 0.0}


    rows = validate_records(list(read_pairs(dataset)), flaky, with_crlb=False)
    assert [row["method_error"] for row in rows] == ["", "LinAlgError: Singular matrix", ""]
    overall = summarize(rows)
    assert overall["n"] == 3 and overall["n_estimated"] == 2 and overall["mismatch_rate"] >= 1 / 3


def test_reference_methods_run_through_the_same_interface(dataset):
    for method in ("poc", "ecc"):
        summary = validate_dataset(dataset, method, limit=2, with_crlb=False)
        assert summary["overall"]["n"] == 2


def test_ecc_reference_that_leaves_the_bone_is_flagged_not_reported():
    # A benchmark pair (phantom, noise-free, seed 7, pair 44) on which OpenCV's ECC ran off to a
    # JSN of -317 px (46 px RMSE over its 48-pair row); the guard keeps the start and flags it.
    config = PairConfig(imaging=ImagingRanges(photons_per_px=(1e4, 1e4), electronic_noise=(2e-4, 4e-4)),
                        noise=False, jsn_px=(-3.0, 3.0))
    pair = simulate_pair(PhantomSource(), "phantom-000510", 44, 7, config)
    layers = pair.baseline_layers
    result = ecc_quantify(quantize(pair.baseline), quantize(pair.followup), layers.upper_mask, layers.lower_mask,
                          joint_center_xy=layers.joint_center_xy, joint_axis_deg=layers.joint_axis_deg)
    assert result.mismatch and abs(result.jsn_px - pair.jsn_px) < 3.0


def test_unknown_method_and_wrong_schema_are_one_line_errors(dataset, tmp_path, capsys):
    with pytest.raises(InputError):
        load_method("no_such_module_xyz:f")
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"pair_id": "a", "jsn_px": 1.0}]), bad / "data" / "test-00000-of-00001.parquet")
    for args in (["validate", str(bad)], ["validate", str(tmp_path / "missing")],
                 ["validate", str(dataset), "--method", "nomodule_q:fn"], ["validate", str(dataset), "--split", "train"]):
        rc = main(args)
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err.startswith("jsnsynth: error:") and len(err.splitlines()) == 1


def test_summarize_and_trial_dropping():
    rows = [{"error_px": e, "pixel_spacing_mm": 0.2, "crlb_px": 0.1, "time_s": 0.5, "flagged": False}
            for e in (0.1, -0.1, 0.7)]
    stats = summarize(rows)
    assert stats["rmse_px"] == pytest.approx(np.sqrt((0.01 + 0.01 + 0.49) / 3))
    assert stats["mismatch_rate"] == pytest.approx(1 / 3)
    assert stats["efficiency"] == pytest.approx(stats["rmse_px"] / 0.1)
    kept, dropped = drop_outlier_trials(np.array([0.0, 0.01, -0.01, 0.02, 2.0]), 0.3)
    assert dropped == 1 and kept.size == 4
    # two trials that disagree: one of them is a mismatch (the dropping stopped at two)
    kept, dropped = drop_outlier_trials(np.array([0.0, 1.0]), 0.3)
    assert dropped == 1 and kept.size == 1


def test_summary_over_the_unflagged_pairs_and_of_the_reported_errors():
    """A methods paper needs what a user who trusts the flags gets, and whether the standard
    errors a method reports are honest: both were missing (a method's jsn_se_px was ignored)."""
    base = {"pixel_spacing_mm": 0.2, "crlb_px": 0.1, "time_s": 0.5}
    rows = [{**base, "error_px": 0.02, "flagged": False, "se_px": 0.01},
            {**base, "error_px": -0.01, "flagged": False, "se_px": 0.01},
            {**base, "error_px": 0.9, "flagged": True, "se_px": 0.3},
            {**base, "error_px": float("nan"), "flagged": False, "se_px": float("nan")}]
    stats = summarize(rows)
    assert stats["n_unflagged"] == 2 and stats["mismatch_rate_unflagged"] == 0.0
    assert stats["rmse_unflagged_px"] == pytest.approx(np.sqrt((0.02**2 + 0.01**2) / 2))
    assert stats["max_abs_error_unflagged_px"] == pytest.approx(0.02)
    # the flagged pair's error is left out, as its estimate is
    assert stats["n_with_se"] == 2
    assert stats["z_rms"] == pytest.approx(np.sqrt((4 + 1) / 2))
    assert stats["coverage_95"] == pytest.approx(1 / 2)
    # a method that reports no error, or rows logged before the column: no z
    plain = summarize([{k: v for k, v in row.items() if k != "se_px"} for row in rows])
    assert plain["n_with_se"] == 0 and plain["z_rms"] is None and plain["coverage_95"] is None


def test_efficiency_compares_the_rmse_and_the_bound_over_the_same_pairs():
    """A failed pair's bound entered the mean CRLB, not the RMSE: efficiency 0.014 (better than the
    bound) for a method exactly at it; a pair without a bound, the other way round."""
    good = {"error_px": 0.01, "pixel_spacing_mm": 0.2, "crlb_px": 0.01, "time_s": 0.5, "flagged": False}
    failed = {**good, "error_px": float("nan"), "crlb_px": 1.0}
    unbounded = {**good, "error_px": 5.0, "crlb_px": float("nan")}
    assert summarize([good, failed])["efficiency"] == pytest.approx(1.0)
    assert summarize([good, unbounded])["efficiency"] == pytest.approx(1.0)
    assert summarize([good, failed])["crlb_rms_px"] == pytest.approx(np.sqrt((0.01**2 + 1.0) / 2))
    # a noise-free pair's bound is the quantisation's (1e-5 px): no efficiency of thousands
    noise_free = {**good, "crlb_px": 1e-5, "noise_level": "none"}
    assert summarize([good, noise_free])["efficiency"] == pytest.approx(1.0)
    assert summarize([noise_free])["efficiency"] is None
    assert summarize([noise_free])["crlb_rms_px"] == pytest.approx(1e-5)


def test_noise_level_counts_electronic_noise_by_its_size():
    """Electronic noise alone was labelled 'low' whatever its size."""
    def record(photons, electronic):
        return {f"{role}_{name}": value for role in ("baseline", "followup")
                for name, value in (("photons_per_px", photons), ("electronic_noise", electronic))}

    assert noise_level_of(record(None, 0.0)) == "none"
    assert noise_level_of(record(None, 1e-3)) == "low"  # as 1e6 photons
    assert noise_level_of(record(None, 0.02)) == "high"  # as 2 500 photons
    assert noise_level_of(record(1e4, 2e-4)) == "medium"  # the benchmark's medium level
    assert noise_level_of(record(0.0, 0.0)) == "high"  # no count: labelled, and refused by the bound by name


def test_a_mismatch_flag_must_be_a_boolean():
    """``bool("false")`` counted a plug-in's 'not flagged' as flagged."""
    assert read_estimate({"jsn_px": 0.1, "mismatch": np.bool_(True)})[1] is True
    assert read_estimate({"jsn_px": 0.1, "mismatch": 0})[1] is False
    assert read_estimate({"jsn_px": 0.1, "mismatch": None})[1] is False
    with pytest.raises(InputError, match="method returned mismatch 'false' of type str; expected a boolean"):
        read_estimate({"jsn_px": 0.1, "mismatch": "false"})


def test_a_standard_error_must_be_a_number_of_zero_or_more():
    """A plug-in's jsn_se_px of -0.1 was written to pairs.csv and left out of the z-scores unsaid."""
    assert math.isnan(read_estimate({"jsn_px": 0.1, "jsn_se_px": None})[2])
    assert read_estimate({"jsn_px": 0.1, "jsn_se_px": np.float32(0.0)})[2] == 0.0  # as given
    assert read_estimate({"jsn_px": 0.1, "jsn_se_px": np.float64(0.02)})[2] == 0.02
    with pytest.raises(InputError, match="method returned jsn_se_px -0.1; a standard error is 0 or more"):
        read_estimate({"jsn_px": 0.1, "jsn_se_px": -0.1})
    with pytest.raises(InputError, match="method returned jsn_se_px of type str"):
        read_estimate({"jsn_px": 0.1, "jsn_se_px": "small"})


def test_rmse_interval_covers_the_true_rmse_about_95_percent_of_the_time():
    """48 errors of SD 0.01 px (a benchmark row), 400 times: the interval holds 0.01 px in about 95 %
    of the sets (measured 91 %: a percentile bootstrap runs a little short at small n), and it
    is reproducible."""
    rng = np.random.default_rng(3)
    sets = rng.normal(0.0, 0.01, size=(400, 48))
    intervals = np.array([rmse_interval(errors) for errors in sets])
    covered = np.mean((intervals[:, 0] <= 0.01) & (0.01 <= intervals[:, 1]))
    assert 0.90 <= covered <= 0.98, covered
    rmse = np.sqrt(np.mean(sets**2, axis=1))
    assert np.all((intervals[:, 0] < rmse) & (rmse < intervals[:, 1]))
    assert rmse_interval(sets[0]) == rmse_interval(sets[0].copy())
    assert rmse_interval(np.array([0.1])) is None


def test_validate_real_rejects_missing_folder(tmp_path, capsys):
    rc = main(["validate-real", str(tmp_path / "nothing")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("jsnsynth: error:")


def _toy_series(tmp_path: Path) -> Path:
    """A one-series folder of three visits of the toy joint, JSN 0, 0.6 and 1.4 px."""
    folder = tmp_path / "joints"
    series = folder / "00001_L_2"
    series.mkdir(parents=True)
    rows = ["series,series_id,side,joint_code,image,mask_upper,mask_lower,soft_tissue"]
    for visit, d in enumerate((0.0, 0.6, 1.4)):
        pair = toy_pair(d)
        stem = f"v{visit}"
        (series / f"{stem}.png").write_bytes(encode_png(quantize(pair["followup"], 16)))
        # every visit is delineated on its own image, as in the real folder
        (series / f"{stem}_mask_upper.png").write_bytes(encode_png(np.where(pair["followup_upper_mask"], 255, 0).astype(np.uint8)))
        (series / f"{stem}_mask_lower.png").write_bytes(encode_png(np.where(pair["followup_lower_mask"], 255, 0).astype(np.uint8)))
        rows.append(f"00001_L_2,00001,L,2,00001_L_2/{stem}.png,00001_L_2/{stem}_mask_upper.png,"
                    f"00001_L_2/{stem}_mask_lower.png,00001_L_2/{stem}.png")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_validate_real_protocol_on_a_toy_series(tmp_path):
    summary = validate_real(_toy_series(tmp_path), n_shifts=2, out_dir=tmp_path / "out")
    assert summary["n_pairs"] == 3 and summary["n_triplets"] == 1
    assert summary["mismatching_rate"] == 0.0
    assert summary["sd_trials_mm_mean"] < 0.02
    assert summary["transitivity_rms_mm"] < 0.02
    assert (tmp_path / "out" / "real_series.png").stat().st_size > 0


def _visit_series(tmp_path, n_visits: int):
    """A one-series folder whose visit ``v`` is a flat image of level ``40 (v + 1)``: a method can
    read from the images which two visits it was given."""
    folder = tmp_path / "joints"
    series = folder / "00001_L_2"
    series.mkdir(parents=True)
    rows = ["series,series_id,side,joint_code,image,mask_upper,mask_lower,soft_tissue"]
    mask = np.zeros((32, 32), np.uint8)
    mask[:12] = 255
    lower = np.zeros((32, 32), np.uint8)
    lower[20:] = 255
    for visit in range(n_visits):
        (series / f"v{visit}.png").write_bytes(encode_png(np.full((32, 32), 40 * (visit + 1), np.uint8)))
        for name, m in (("upper", mask), ("lower", lower)):
            (series / f"v{visit}_mask_{name}.png").write_bytes(encode_png(m))
        rows.append(f"00001_L_2,00001,L,2,00001_L_2/v{visit}.png,00001_L_2/v{visit}_mask_upper.png,"
                    f"00001_L_2/v{visit}_mask_lower.png,00001_L_2/v{visit}.png")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def _visits(baseline, followup) -> tuple[int, int]:
    return int(round(baseline.mean() / 40)) - 1, int(round(followup.mean() / 40)) - 1


def test_validate_real_reports_transitivity_apart_for_flagged_measurements(tmp_path):
    """A method that is right except on one visit pair, which it flags: the unflagged triplets
    close, the flagged one does not, and the summary says both."""
    truth = (0.0, 0.5, 1.1, 1.6)  # JSN of each visit against the first, px
    folder = _visit_series(tmp_path, len(truth))

    def method(baseline, followup, *args, **kwargs):
        i, j = _visits(baseline, followup)
        wrong = (i, j) == (0, 3)
        return {"jsn_px": truth[j] - truth[i] + (2.0 if wrong else 0.0), "mismatch": wrong}

    summary = validate_real(folder, method, n_shifts=0)
    assert summary["n_triplets"] == 4 and summary["n_triplets_unflagged"] == 2
    assert summary["transitivity_rms_unflagged_mm"] == pytest.approx(0.0, abs=1e-9)
    assert summary["transitivity_rms_mm"] > 0.1
    assert summary["transitivity_z_rms"] is None  # the method reports no standard error


def test_validate_real_measures_transitivity_in_reported_standard_errors(tmp_path):
    """A method off by a known amount on each visit pair, reporting a standard error: each
    triplet's residual over the root sum of squares of its three errors."""
    truth = (0.0, 0.5, 1.1, 1.6)
    folder = _visit_series(tmp_path, len(truth))
    errors = {(0, 1): 0.1, (0, 2): -0.2, (0, 3): 0.3, (1, 2): 0.0, (1, 3): 0.1, (2, 3): -0.1}
    se = {pair: 0.05 * (1 + pair[0] + pair[1]) for pair in errors}

    def method(baseline, followup, *args, **kwargs):
        i, j = _visits(baseline, followup)
        return {"jsn_px": truth[j] - truth[i] + errors[(i, j)], "jsn_se_px": se[(i, j)]}

    summary = validate_real(folder, method, n_shifts=0)
    triplets = [(i, k, j) for i in range(4) for k in range(i + 1, 4) for j in range(k + 1, 4)]
    z = [(errors[(i, j)] - errors[(i, k)] - errors[(k, j)]) / math.sqrt(se[(i, j)] ** 2 + se[(i, k)] ** 2 + se[(k, j)] ** 2)
         for i, k, j in triplets]
    assert summary["n_triplets_with_se"] == 4
    assert summary["transitivity_z_rms"] == pytest.approx(math.sqrt(np.mean(np.square(z))), rel=1e-9)


def test_validate_real_report_when_no_triplet_could_be_measured(tmp_path):
    """The method refuses one visit pair of the only triplet: no transitivity residual, and the
    report (summary, table and figure) is still written."""
    folder = _visit_series(tmp_path, 3)

    def method(baseline, followup, *args, **kwargs):
        i, j = _visits(baseline, followup)
        if (i, j) == (0, 2):
            raise InputError("refused")
        return float(j - i)

    summary = validate_real(folder, method, n_shifts=0, out_dir=tmp_path / "out")
    assert summary["n_triplets"] == 1 and summary["n_triplets_measured"] == 0
    assert summary["transitivity_rms_mm"] is None and summary["n_pairs_refused"] == 1
    assert (tmp_path / "out" / "real_series.png").stat().st_size > 0


def _bone_moves(d_px, flexion_deg, centre, axis_deg, repositioning):
    """Per-bone transforms of one visit pair: the lower bone flexes about ``centre``, the upper
    bone flexes and moves by ``d_px`` along the axis, then the whole joint is repositioned."""

    cx, cy = centre
    shift = d_px * axis_vector(axis_deg)
    upper = Similarity(1.0, flexion_deg, float(shift[0]), float(shift[1]), cx, cy).then(repositioning)
    lower = Similarity(1.0, -flexion_deg, 0.0, 0.0, cx, cy).then(repositioning)
    return upper, lower


def test_transitivity_with_a_common_centre_isolates_the_method():
    """Exact transforms that compose (T_ij = T_kj o T_ik per bone) close the transitivity loop to
    second order about one common centre, even when each visit's own centre is elsewhere."""

    centre_i, axis = (120.0, 110.0), 4.0
    up_ik, lo_ik = _bone_moves(1.2, 1.5, centre_i, axis, Similarity(1.02, 2.0, 3.0, -2.0, *centre_i))
    # visit k's own joint centre (from its own masks) lies a few pixels away from c_i's image
    centre_k = tuple(float(v) for v in (0.5 * (up_ik.apply(np.array(centre_i)) + lo_ik.apply(np.array(centre_i))) + [4.0, -3.0]))
    up_kj, lo_kj = _bone_moves(0.8, -2.0, centre_k, axis + 2.0, Similarity(0.98, -1.0, -2.0, 1.5, *centre_k))
    up_ij, lo_ij = up_ik.then(up_kj), lo_ik.then(lo_kj)

    def geometry(upper, lower, centre, axis_deg):
        return {"upper": upper, "lower": lower, "joint_center_xy": centre, "joint_axis_deg": axis_deg}

    g_ik, g_kj, g_ij = geometry(up_ik, lo_ik, centre_i, axis), geometry(up_kj, lo_kj, centre_k, axis + 2.0), geometry(up_ij, lo_ij, centre_i, axis)
    jsn_ij, jsn_ik, jsn_kj = transitivity_common_centre(g_ik, g_kj, g_ij)
    assert abs(jsn_ij - (jsn_ik + jsn_kj)) < 2e-3
    assert abs(jsn_ik - 1.2) < 1e-9  # opposite flexions: the mean rotation is zero
    own = jsn_from_transforms(up_ij, lo_ij, centre_i, axis) - (
        jsn_from_transforms(up_ik, lo_ik, centre_i, axis) + jsn_from_transforms(up_kj, lo_kj, centre_k, axis + 2.0))
    assert abs(own) > 10 * abs(jsn_ij - (jsn_ik + jsn_kj))  # own centres: the centre offset enters


def test_transitivity_summary_leaves_out_triplets_with_a_refused_pair():
    """A visit pair the method refused leaves its triplets without a residual: they must not
    count as measured, nor make the summary say the residuals were not taken about a common
    centre (which they all were)."""
    def triplet(residual, flagged, common, own):
        return {"residual_mm": residual, "flagged": flagged, "common_centre": common, "residual_own_centres_mm": own}

    triplets = [triplet(0.01, False, True, 0.02), triplet(float("nan"), False, False, float("nan")),
                triplet(-0.03, True, True, 0.05)]
    summary = transitivity_summary(triplets)
    assert summary["n_triplets"] == 3 and summary["n_triplets_measured"] == 2
    assert summary["transitivity_common_centre"] is True
    assert summary["transitivity_rms_mm"] == pytest.approx(math.sqrt((0.01**2 + 0.03**2) / 2))
    assert summary["transitivity_max_mm"] == pytest.approx(0.03)
    assert summary["n_triplets_unflagged"] == 1 and summary["transitivity_rms_unflagged_mm"] == pytest.approx(0.01)
    assert summary["transitivity_rms_own_centres_mm"] == pytest.approx(math.sqrt((0.02**2 + 0.05**2) / 2))
    # a measured triplet that fell back to its own centres (a method without transforms)
    assert transitivity_summary(triplets + [triplet(0.02, False, False, 0.02)])["transitivity_common_centre"] is False
    assert transitivity_summary([])["transitivity_rms_mm"] is None


def _variant(dataset: Path, folder: Path, column: str | None = None, values=None, state: object = None) -> Path:
    """A copy of ``dataset`` in ``folder`` with ``column`` replaced by ``values`` (one per row), and
    a run record ``state`` when given."""
    table = pq.read_table(dataset / "data" / "test-00000-of-00001.parquet")
    if column is not None:
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("toy dataset\n")
    pq.write_table(table, folder / "data" / "test-00000-of-00001.parquet")
    if state is not None:
        (folder / ".jsnsynth_state.json").write_text(json.dumps(state))
    return folder


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("jsnsynth: error:") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.skipif(sys.platform == "win32", reason="folder locks are POSIX flock")
def test_a_report_folder_another_run_writes_to_is_refused(dataset, tmp_path, capsys):
    # two runs into one report folder both said they wrote their report, the files being the
    # last one's (dataset runs were held apart already)
    out, real_out = tmp_path / "report", tmp_path / "real"
    for folder, name, args in ((out, "validate", ["validate", str(dataset)]),
                               (real_out, "validate-real", ["validate-real", str(_toy_series(tmp_path))])):
        running = ResumeLog(folder, name, ["a run at work, with other options"])
        assert main([*args, "--out", str(folder)]) == 1
        assert _one_error(capsys) == (f"jsnsynth: error: {folder}: another jsnsynth run is writing to this folder; "
                                      "wait for it to end, or choose another folder")
        assert not [p.name for p in folder.iterdir() if not p.name.startswith(".")]  # no report
        running.keep_if_resumable()  # it ends, having logged nothing: its log goes, and the folder
        assert main([*args, "--out", str(folder)]) == 0
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no log, no lock left
        capsys.readouterr()
    # a run of another command into the folder writes other files: it goes ahead beside one at work
    running = ResumeLog(real_out, "validate-real", ["at work"])
    assert main(["validate", str(dataset), "--out", str(tmp_path / "beside"), "--limit", "1"]) == 0
    running.keep_if_resumable()
    # a run that failed let the folder go: the next one in the same process is not refused
    with pytest.raises(InputError):
        validate_dataset(dataset, method=lambda *args, **kwargs: float("nan"), out_dir=tmp_path / "again")
    assert validate_dataset(dataset, out_dir=tmp_path / "again", limit=1)["overall"]["n"] == 1


def test_validate_refuses_an_unfinished_dataset_run(dataset, tmp_path, capsys):
    """An interrupted 'jsnsynth dataset' run was scored on the shards it had written, exit 0."""
    unfinished = _variant(dataset, tmp_path / "unfinished", state={"generator": "jsnsynth", "complete": False})
    assert main(["validate", str(unfinished)]) == 1
    assert "unfinished" in _one_error(capsys)
    no_card = _variant(dataset, tmp_path / "no_card", state={"generator": "jsnsynth", "complete": True})
    (no_card / "README.md").unlink()
    assert main(["validate", str(no_card)]) == 1
    assert "README.md" in _one_error(capsys)
    listed = _variant(dataset, tmp_path / "listed", state=["not", "a", "record"])
    assert main(["validate", str(listed)]) == 1
    assert "not a jsnsynth run record" in _one_error(capsys)


@pytest.mark.parametrize(("column", "values", "message"), [
    ("jsn_px", ["x", "y", "z"], "column 'jsn_px' holds string, not numbers"),
    ("jsn_px", [float("nan"), 1.0, 2.0], "column 'jsn_px' holds nan, not a finite number (pair pair-0000000)"),
    ("jsn_px", pa.array([None, 1.0, 2.0], pa.float64()), "column 'jsn_px' is null (pair pair-0000000)"),
    ("joint_center_x", [float("nan")] * 3, "column 'joint_center_x' holds nan"),
    ("joint_center_x", [1e6] * 3, "'joint_center_x', 'joint_center_y' (1e+06,"),
    ("pixel_spacing_mm", [0.0] * 3, "column 'pixel_spacing_mm' holds 0.0, not a positive number"),
    # the display chain gives the bound: a null gamma ended the run with a TypeError naming nothing
    ("baseline_gamma", pa.array([None, 1.0, 1.0], pa.float64()), "column 'baseline_gamma' is null (pair pair-0000000)"),
    ("followup_window_high", [float("inf")] * 3, "column 'followup_window_high' holds inf, not a finite number"),
    ("baseline_clean", [_png16(np.zeros((64, 64)))] * 3, "column 'baseline_clean' is 64x64, column 'baseline' is 96x96"),
    ("followup_clean", [{"bytes": cv2.imencode(".png", np.zeros((96, 96, 3), np.uint16))[1].tobytes(), "path": None}] * 3,
     "column 'followup_clean' is not a greyscale image"),
])
def test_a_dataset_with_unusable_truth_or_images_is_refused_naming_the_column(dataset, tmp_path, capsys, column,
                                                                              values, message):
    """Such datasets were scored (a NaN truth as the method's failure, exit 0) or ended with a
    generic 'ValueError'/'IndexError' line."""
    bad = _variant(dataset, tmp_path / "bad", column, values)
    assert main(["validate", str(bad), "--limit", "1"]) == 1
    err = _one_error(capsys)
    assert message in err and "test-00000-of-00001.parquet" in err


def _plugin(tmp_path, monkeypatch, body: str) -> str:
    """A module ``jsn_fail_plugin`` with ``method`` of body ``body``; returns its method spec."""
    sys.modules.pop("jsn_fail_plugin", None)
    (tmp_path / "jsn_fail_plugin.py").write_text(textwrap.dedent(f'''
        import sys
        def method(baseline, followup, upper_mask, lower_mask, **kwargs):
            {body}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "jsn_fail_plugin:method"


@pytest.mark.parametrize(("body", "reason"), [
    ('raise RuntimeError("boom")', "RuntimeError: boom"),
    ("return None", "method returned NoneType"),
    ('return float("nan")', "returned a JSN that is not a finite number (nan)"),
    ("sys.exit(0)", "SystemExit: 0"),
])
def test_validate_fails_when_the_method_estimates_no_pair(dataset, tmp_path, monkeypatch, capsys, body, reason):
    """Such a run printed an empty summary and exited 0, as if the method had been validated."""
    spec = _plugin(tmp_path, monkeypatch, body)
    out = tmp_path / "report"
    assert main(["validate", str(dataset), "--method", spec, "--out", str(out), "--limit", "2"]) == 1
    assert _one_error(capsys).startswith(f"jsnsynth: error: method {spec} failed on all 2 pairs; first: {reason}")
    assert not out.exists()  # no report, no resume log, no folder of its own left behind


def test_validate_output_is_strict_json(dataset, tmp_path, monkeypatch, capsys):
    """An estimate of 1e308 made the RMSE infinite: stdout and summary.json held 'Infinity'/'NaN'."""
    spec = _plugin(tmp_path, monkeypatch, "return 1e308")
    assert main(["validate", str(dataset), "--method", spec, "--out", str(tmp_path / "v"), "--limit", "2"]) == 0
    printed = capsys.readouterr().out

    def refuse(token):
        raise AssertionError(f"non-JSON token {token}")

    overall = json.loads(printed[: printed.rindex("}") + 1], parse_constant=refuse)["overall"]
    assert overall["rmse_px"] is None and overall["rmse_ci95_px"] == [None, None]
    summary = json.loads((tmp_path / "v" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["overall"]["rmse_px"] is None


def test_validate_real_takes_a_method_failure_per_trial(tmp_path):
    """A method that raised anything but InputError ended validate-real ('RuntimeError: boom'); one
    that failed on every trial then reported an empty summary with exit 0."""
    folder = _visit_series(tmp_path, 3)

    def sometimes(baseline, followup, *args, **kwargs):
        i, j = _visits(baseline, followup)
        if (i, j) == (0, 2):
            raise RuntimeError("boom")
        return float(j - i)

    summary = validate_real(folder, sometimes, n_shifts=0, out_dir=tmp_path / "some")
    assert summary["n_pairs_refused"] == 1 and summary["n_trials"] == 2
    # real_pairs.csv names each pair's visits by file, and says why one was refused
    with open(tmp_path / "some" / "real_pairs.csv", newline="") as handle:
        pairs = {(int(r["visit_i"]), int(r["visit_j"])): r for r in csv.DictReader(handle)}
    assert (pairs[(0, 2)]["image_i"], pairs[(0, 2)]["image_j"]) == ("v0.png", "v2.png")
    assert pairs[(0, 2)]["refusal"] == "RuntimeError: boom" and pairs[(0, 1)]["refusal"] == ""

    def always(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(InputError, match="failed on all 3 trials; first: RuntimeError: boom"):
        validate_real(folder, always, n_shifts=0, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_validate_real_counts_flags_among_the_trials_it_measured(tmp_path):
    """Refused trials were counted as flagged but not as trials: a flag rate of 1.5."""
    folder = _visit_series(tmp_path, 3)

    def method(baseline, followup, *args, **kwargs):
        i, j = _visits(baseline, followup)
        if (i, j) == (0, 2):
            raise RuntimeError("boom")
        return {"jsn_px": float(j - i), "mismatch": True}

    summary = validate_real(folder, method, n_shifts=0)
    assert summary["n_trials"] == 2 and summary["n_trials_refused"] == 1 and summary["flag_rate"] == 1.0


def test_validate_real_resumes_an_interrupted_run(tmp_path):
    """Like 'validate', a long validate-real run goes on where Ctrl-C stopped it: the pairs it
    had measured are not measured again, and the report is the uninterrupted run's."""
    folder = _visit_series(tmp_path, 4)

    def uninterrupted(baseline, followup, *args, **kwargs):
        return {"jsn_px": float(np.mean(followup) - np.mean(baseline)) / 100.0}

    ignored = ("time_per_trial_s", "outputs", "method")  # the clock, the folder, the function's name
    validate_real(folder, uninterrupted, n_shifts=2, out_dir=tmp_path / "whole")
    first, second = _interrupted_then_resumed(
        lambda m: validate_real(folder, m, n_shifts=2, out_dir=tmp_path / "out"), stop_at=7)
    assert len(first) == 7 and len(second) == 6 * 3 - 6  # two pairs of 3 trials logged, the third redone
    resumed = json.loads((tmp_path / "out" / "real_summary.json").read_text())
    expected = json.loads((tmp_path / "whole" / "real_summary.json").read_text())
    for summary in (resumed, expected):
        for key in ignored:
            summary.pop(key)
    assert resumed == expected
    assert not list((tmp_path / "out").glob(".validate-real-*"))


def test_validate_real_logs_transforms_given_as_numpy_values(tmp_path):
    """With --out, a plug-in whose transforms held numpy scalars or arrays ended the run: the
    resume log could not write them."""
    folder = _visit_series(tmp_path, 3)

    class Result:
        def __init__(self, i, j):
            self.jsn_px = np.float64(j - i)
            self.upper = Similarity(np.float32(1.0), np.float32(0.0), np.float32(j - i), np.float32(0.0), 16.0, 16.0)
            self.lower = Similarity(1.0, 0.0, 0.0, 0.0, 16.0, 16.0)
            self.joint_center_xy = np.array([16.0, 16.0])
            self.joint_axis_deg = np.float64(0.0)

    def method(baseline, followup, *args, **kwargs):
        return Result(*_visits(baseline, followup))

    summary = validate_real(folder, method, n_shifts=0, out_dir=tmp_path / "out")
    assert summary["n_pairs"] == 3 and summary["transitivity_common_centre"]


def _two_series(tmp_path: Path) -> Path:
    """Two one-pair series, A and B, of the flat images of :func:`_visit_series`."""
    folder = tmp_path / "joints"
    rows = ["series,series_id,side,joint_code,image,mask_upper,mask_lower,soft_tissue"]
    upper = np.zeros((32, 32), np.uint8)
    upper[:12] = 255
    lower = np.zeros((32, 32), np.uint8)
    lower[20:] = 255
    for name in ("0000A_L_2", "0000B_L_2"):
        (folder / name).mkdir(parents=True)
        for visit in range(2):
            (folder / name / f"v{visit}.png").write_bytes(encode_png(np.full((32, 32), 40 * (visit + 1), np.uint8)))
            for part, m in (("upper", upper), ("lower", lower)):
                (folder / name / f"v{visit}_mask_{part}.png").write_bytes(encode_png(m))
            rows.append(f"{name},{name[:5]},L,2,{name}/v{visit}.png,{name}/v{visit}_mask_upper.png,"
                        f"{name}/v{visit}_mask_lower.png,{name}/v{visit}.png")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_validate_real_resumes_past_a_repaired_file(tmp_path):
    """A run stopped by a damaged mask kept a log keyed by every input's stamp: once the mask was
    mended, nothing matched, series measured before were measured again, and the old log stayed."""
    folder = _two_series(tmp_path)
    mask = folder / "0000B_L_2" / "v1_mask_lower.png"
    good = mask.read_bytes()
    mask.write_bytes(b"not a png")
    calls = []

    def method(baseline, followup, *args, **kwargs):
        calls.append(1)
        return {"jsn_px": 0.0}

    with pytest.raises(InputError, match="v1_mask_lower.png"):
        validate_real(folder, method, n_shifts=0, out_dir=tmp_path / "out")
    assert len(calls) == 1  # series A
    mask.write_bytes(good)
    summary = validate_real(folder, method, n_shifts=0, out_dir=tmp_path / "out")
    assert len(calls) == 2 and summary["n_pairs"] == 2  # only series B measured again
    assert not list((tmp_path / "out").glob(".validate-real-*"))


def test_a_missing_visit_file_is_named_with_out_too(tmp_path):
    """With --out the stamps of the inputs were taken first: a missing file was a bare
    FileNotFoundError instead of the line that names it."""
    folder = _two_series(tmp_path)
    (folder / "0000B_L_2" / "v1.png").unlink()
    with pytest.raises(InputError, match="v1.png"):
        validate_real(folder, lambda *a, **k: 0.0, n_shifts=0, out_dir=tmp_path / "out")


def test_a_log_line_cut_by_a_kill_does_not_swallow_the_next(tmp_path):
    log = ResumeLog(tmp_path / "out", "validate", ["key"])
    log.append({"pair_id": "a"})
    with open(log.path, "a") as handle:
        handle.write('{"pair_id": "b", "est')  # killed mid-write
    log.keep_if_resumable()  # the run ends: its folder goes with it
    resumed = ResumeLog(tmp_path / "out", "validate", ["key"])
    resumed.append({"pair_id": "c"})
    assert set(resumed.logged("pair_id")) == {"a", "c"}


def test_a_finished_report_leaves_the_other_commands_logs(tmp_path):
    """'validate' finishing in a folder removed an interrupted 'validate-real' run's log there too
    (its name starts with '.validate-')."""
    real = ResumeLog(tmp_path / "out", "validate-real", ["real"])
    real.append({"pair": 0})
    real.keep_if_resumable()  # interrupted, one after the other
    stale = ResumeLog(tmp_path / "out", "validate", ["other options"])
    stale.append({"pair_id": "a"})
    stale.keep_if_resumable()
    ResumeLog(tmp_path / "out", "validate", ["these options"]).finish()
    assert real.path.exists() and not stale.path.exists()


def test_validate_real_checks_its_output_folder_before_the_work(tmp_path):
    folder = _visit_series(tmp_path, 2)
    (tmp_path / "taken").write_text("a file")
    calls = []

    def method(*args, **kwargs):
        calls.append(1)
        return 0.0

    with pytest.raises(OutputError, match="exists and is not a folder"):
        validate_real(folder, method, n_shifts=0, out_dir=tmp_path / "taken")
    assert not calls


def test_a_method_that_changes_its_inputs_changes_no_bound(dataset):
    """The harness handed a method the record's own arrays and then computed the pair's bound
    from them: a mask cleared in place took every bound (and the efficiency) with it."""
    records = list(read_pairs(dataset))

    def clears_its_masks(baseline, followup, upper, lower, **kwargs):
        upper[:] = False
        lower[:] = False
        baseline[:] = 0
        return 0.0

    spoiled = validate_records(records, clears_its_masks)
    clean = validate_records(list(read_pairs(dataset)), lambda *args, **kwargs: 0.0)
    assert [row["crlb_px"] for row in spoiled] == [row["crlb_px"] for row in clean]
    assert all(math.isfinite(row["crlb_px"]) for row in spoiled)


def test_the_flag_rate_does_not_depend_on_how_a_method_fails(dataset):
    """A method that raised on a pair had it counted as flagged; one that returned NaN, not."""
    def raises(baseline, followup, *args, **kwargs):
        if np.mean(followup) > np.mean(baseline):
            raise ValueError("no estimate")
        return {"jsn_px": 0.0, "mismatch": True}

    def returns_nan(baseline, followup, *args, **kwargs):
        if np.mean(followup) > np.mean(baseline):
            return float("nan")
        return {"jsn_px": 0.0, "mismatch": True}

    summaries = [summarize(validate_records(list(read_pairs(dataset)), method, with_crlb=False))
                 for method in (raises, returns_nan)]
    assert summaries[0]["n_estimated"] == summaries[1]["n_estimated"] < summaries[0]["n"]
    assert summaries[0]["flag_rate"] == summaries[1]["flag_rate"] == 1.0  # over the estimated pairs
    assert summaries[0]["mismatch_rate"] == summaries[1]["mismatch_rate"]


def test_a_folder_that_is_no_dataset_and_an_empty_split_are_named(dataset, tmp_path, capsys):
    """A folder of other files was called 'an unfinished or incomplete dataset'; --split ""
    scored every split as 'all'."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert main(["validate", str(tmp_path / "notes")]) == 1
    assert "not a dataset (no README.md card, no data/ shards)" in _one_error(capsys)
    assert main(["validate", str(dataset), "--split", ""]) == 1
    assert "the split to validate is empty" in _one_error(capsys)


def test_a_plugin_gets_only_the_keywords_it_takes(dataset, tmp_path, monkeypatch, capsys):
    """A plug-in written as f(baseline, followup, upper_mask, lower_mask, pixel_spacing_mm=0.175)
    failed on every pair: 'unexpected keyword argument followup_upper_mask'. A NaN it returns is
    named in pairs.csv, and the failures are counted on stderr."""
    (tmp_path / "plain_method.py").write_text(textwrap.dedent("""
        import numpy as np
        calls = []
        def jsn(baseline, followup, upper_mask, lower_mask, pixel_spacing_mm=0.175):
            calls.append(1)
            return float("nan") if len(calls) == 2 else 0.25
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["validate", str(dataset), "--method", "plain_method:jsn", "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "method plain_method:jsn failed on 1 of 3 pairs (counted as mismatches); first: returned a JSN that is not a " \
           "finite number (nan)" in err
    rows = (tmp_path / "report" / "pairs.csv").read_text().splitlines()
    assert sum("not a finite number" in row for row in rows) == 1
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["overall"]["n_estimated"] == 2


def test_a_pair_in_two_shards_is_refused(dataset, tmp_path, capsys):
    """A shard copied beside the run's own had every pair of it scored twice, without a word."""

    copy = tmp_path / "copied"
    shutil.copytree(dataset, copy)
    shard = sorted((copy / "data").glob("*.parquet"))[0]
    shutil.copy(shard, shard.with_name(shard.name.replace("-00000-", "-00001-")))
    assert main(["validate", str(copy), "--out", str(tmp_path / "report")]) == 1
    assert "pair pair-0000000 is in test-00000-of-00001.parquet as well; a dataset holds each pair once" in _one_error(capsys)


def test_a_report_folder_of_another_method_is_refused(dataset, tmp_path, monkeypatch, capsys):
    """A second method's report written into the first's folder replaced it without a word."""
    (tmp_path / "other_method.py").write_text("def jsn(baseline, followup, upper_mask, lower_mask):\n    return 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "report")
    assert main(["validate", str(dataset), "--method", "poc", "--out", out]) == 0
    capsys.readouterr()
    before = (tmp_path / "report" / "summary.json").read_bytes()
    assert main(["validate", str(dataset), "--method", "other_method:jsn", "--out", out]) == 1
    assert "holds the report of another run (method poc, dataset" in _one_error(capsys)
    assert (tmp_path / "report" / "summary.json").read_bytes() == before
    # the same run again rewrites its own report
    assert main(["validate", str(dataset) + "/", "--method", "poc", "--out", out]) == 0
    capsys.readouterr()
    # someone's own summary.json was written over without a word
    for text in ('{"notes": "mine"}', "not json", "[1, 2]"):
        mine = tmp_path / "mine"
        mine.mkdir(exist_ok=True)
        (mine / "summary.json").write_text(text)
        assert main(["validate", str(dataset), "--method", "poc", "--out", str(mine)]) == 1
        assert "summary.json: is not a report of this command" in _one_error(capsys)
        assert (mine / "summary.json").read_text() == text


def test_the_same_run_from_another_folder_rewrites_its_report(dataset, tmp_path, monkeypatch, capsys):
    """A report stored its dataset's path as typed, relative to where it was run: the same run
    from another folder (`../ds` for `ds`) was refused as 'another run' naming the same values.
    `--split all` is the report's own word for every split, and was refused as an unknown split."""
    (tmp_path / "here" / "there").mkdir(parents=True)
    shutil.copytree(dataset, tmp_path / "here" / "ds")
    monkeypatch.chdir(tmp_path / "here")
    assert main(["validate", "ds", "--method", "poc", "--limit", "2", "--out", "report"]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "here" / "report" / "summary.json").read_text())
    assert summary["dataset"] == str(tmp_path / "here" / "ds")
    monkeypatch.chdir(tmp_path / "here" / "there")
    assert main(["validate", "../ds", "--method", "poc", "--limit", "2", "--split", "all", "--out", "../report"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "here" / "report" / "summary.json").read_text())["split"] == "all"
    assert main(["validate", "../ds", "--method", "poc", "--limit", "2", "--split", "test"]) == 0
    capsys.readouterr()


def test_validate_real_from_another_folder_rewrites_its_report(tmp_path, monkeypatch, capsys):
    """As `validate`'s: the same `validate-real` run, the folder typed otherwise, is the same run."""
    joints = _toy_series(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["validate-real", joints.name, "--method", "poc", "--out", "real"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "real" / "real_summary.json").read_text())["folder"] == str(joints)
    monkeypatch.chdir(joints)
    assert main(["validate-real", ".", "--method", "poc", "--out", "../real"]) == 0
    capsys.readouterr()


def test_a_report_folder_inside_the_dataset_is_refused(dataset, tmp_path, capsys):
    """A report written into the dataset's folder (even its data/) became part of the dataset,
    which `publish` uploads whole."""
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    for inside in (copy / "report", copy / "data"):
        assert main(["validate", str(copy), "--method", "poc", "--limit", "2", "--out", str(inside)]) == 1
        assert "is inside the dataset" in _one_error(capsys)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_validate_and_validate_real_keep_out_of_each_others_report_folders(dataset, tmp_path, capsys):
    """`validate` then `validate-real` into one folder (or the other way) left both reports side by
    side; and `validate-real --out` inside its own folder wrote the report among the crops."""
    joints = _toy_series(tmp_path)
    out = tmp_path / "report"
    assert main(["validate", str(dataset), "--method", "poc", "--limit", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["validate-real", str(joints), "--method", "poc", "--out", str(out)]) == 1
    assert _one_error(capsys) == f"jsnsynth: error: {out}: holds the report of jsnsynth validate; choose another folder"
    real_out = tmp_path / "real"
    assert main(["validate-real", str(joints), "--method", "poc", "--out", str(real_out)]) == 0
    capsys.readouterr()
    assert main(["validate", str(dataset), "--method", "poc", "--limit", "2", "--out", str(real_out)]) == 1
    assert "holds the report of jsnsynth validate-real; choose another folder" in _one_error(capsys)
    before = sorted(p.relative_to(joints) for p in joints.rglob("*"))
    for inside in (joints, joints / "report"):
        assert main(["validate-real", str(joints), "--method", "poc", "--out", str(inside)]) == 1
        assert "is inside the folder" in _one_error(capsys)
    assert sorted(p.relative_to(joints) for p in joints.rglob("*")) == before


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("time_s", "cpu_time_s", "time_per_trial_s")} for row in rows]


def test_validate_gives_the_same_rows_with_worker_processes(dataset, tmp_path, monkeypatch, capfd):
    # a plug-in in a worker prints to the worker's own stdout, which is the command's: what it
    # prints must go to stderr there as well, or the JSON on stdout is spoiled
    plugin = tmp_path / "my_worker_plugin.py"
    plugin.write_text(textwrap.dedent('''
        from jsnsynth.quantify.quantifier import quantify_pair
        def measured(*args, **kwargs):
            print("measuring")
            return quantify_pair(*args, **kwargs)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    runs = {}
    for num_proc in (1, 2):
        out = tmp_path / f"report{num_proc}"
        assert main(["validate", str(dataset), "--method", "my_worker_plugin:measured", "--out", str(out),
                     "--num-proc", str(num_proc)]) == 0
        captured = capfd.readouterr()
        assert json.loads(captured.out)["method"] == "my_worker_plugin:measured"
        assert captured.err.count("measuring") == 3
        with open(out / "pairs.csv", newline="") as handle:
            runs[num_proc] = _without_times(list(csv.DictReader(handle)))
    assert runs[1] == runs[2] and len(runs[1]) == 3
    assert all(row["method_error"] == "" for row in runs[2])
    sys.modules.pop("my_worker_plugin", None)


def test_a_method_workers_cannot_import_is_one_error(dataset):
    records = list(read_pairs(dataset))
    with pytest.raises(InputError, match=r"^the method cannot be sent to a worker process \(.*\); use one process"):
        validate_records(records, lambda *args, **kwargs: 0.0, num_proc=2)
    assert len(validate_records(records, lambda *args, **kwargs: 0.0)) == 3  # in this process it runs


def test_a_plugin_that_ends_its_worker_process_stops_the_run_in_one_line(dataset, tmp_path, monkeypatch, capsys):
    # in one process a plug-in calling os._exit ends the command itself; a worker's end is noticed
    spec = _plugin(tmp_path, monkeypatch, "import os; os._exit(0)")
    out = tmp_path / "report"
    assert main(["validate", str(dataset), "--method", spec, "--out", str(out), "--num-proc", "2"]) == 1
    assert _one_error(capsys).startswith("jsnsynth: error: a worker process stopped abruptly (killed, or out of "
                                         "memory?) after 0 pair(s); rerun the same command to resume")
    assert not out.exists()  # nothing measured: no log, no folder left behind


def test_validate_real_gives_the_same_trials_with_worker_processes(tmp_path, monkeypatch):
    folder = _toy_series(tmp_path)
    # the bundled method, noting which process measured
    pids = tmp_path / "pids.txt"
    (tmp_path / "jsn_pid_plugin.py").write_text(textwrap.dedent(f'''
        import os
        from jsnsynth.quantify.quantifier import quantify_pair
        def measured(*args, **kwargs):
            with open({str(pids)!r}, "a") as handle:
                handle.write(f"{{os.getpid()}}\\n")
            return quantify_pair(*args, **kwargs)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    summaries, rows, measured_by = {}, {}, {}
    for num_proc in (1, 2):
        out = tmp_path / f"out{num_proc}"
        summaries[num_proc] = validate_real(folder, "jsn_pid_plugin:measured", out_dir=out, n_shifts=2,
                                            num_proc=num_proc)
        measured_by[num_proc] = set(pids.read_text().split())
        pids.unlink()
        with open(out / "real_pairs.csv", newline="") as handle:
            rows[num_proc] = _without_times(list(csv.DictReader(handle)))
    sys.modules.pop("jsn_pid_plugin", None)
    assert measured_by[1] == {str(os.getpid())} and str(os.getpid()) not in measured_by[2]
    assert rows[1] == rows[2] and len(rows[1]) == 3
    assert json.loads((tmp_path / "out1" / "real_summary.json").read_text())["transitivity"] == \
        json.loads((tmp_path / "out2" / "real_summary.json").read_text())["transitivity"]
    assert summaries[1]["n_pairs"] == summaries[2]["n_pairs"] == 3


def test_a_method_only_this_process_knows_is_one_error_from_the_workers(dataset, monkeypatch):
    # a module put into sys.modules from a notebook: imported here, not in a fresh worker, where
    # every worker printed a traceback and the run blamed a kill or the memory
    import types

    module = types.ModuleType("jsn_dynamic_plugin")
    module.method = lambda *args, **kwargs: 0.0
    monkeypatch.setitem(sys.modules, "jsn_dynamic_plugin", module)
    records = list(read_pairs(dataset))
    assert len(validate_records(records, "jsn_dynamic_plugin:method")) == 3  # one process: it runs
    with pytest.raises(InputError, match=r"^the method cannot be set up in a worker process \(method "
                                         r"'jsn_dynamic_plugin:method': cannot import module"):
        validate_records(records, "jsn_dynamic_plugin:method", num_proc=2)


def test_a_run_with_worker_processes_resumes_where_a_worker_ended(dataset, tmp_path, monkeypatch, capsys):
    """A worker that ends mid-run (a plug-in's os._exit on its third call) stops the run;
    the pairs measured before are kept, the rerun measures only the others, and the report is
    the one an uninterrupted run writes."""
    calls = tmp_path / "calls.txt"
    spec = _plugin(tmp_path, monkeypatch, f'''
            import os
            import time
            import numpy as np
            with open({str(calls)!r}, "a") as handle:
                handle.write("call\\n")
            if os.environ.get("END_THIRD_CALL") and open({str(calls)!r}).read().count("call") == 3:
                time.sleep(2.0)  # the other worker's pair is handed over first
                os._exit(0)
            return float(np.mean(followup) - np.mean(baseline)) / 100.0''')
    whole = tmp_path / "whole"
    assert main(["validate", str(dataset), "--method", spec, "--out", str(whole)]) == 0
    capsys.readouterr()
    calls.unlink()
    out = tmp_path / "report"
    command = ["validate", str(dataset), "--method", spec, "--out", str(out), "--num-proc", "2"]
    monkeypatch.setenv("END_THIRD_CALL", "1")
    assert main(command) == 1
    message = _one_error(capsys)
    assert "a worker process stopped abruptly" in message and "rerun the same command to resume" in message
    kept = int(re.search(r"after (\d+) pair\(s\)", message).group(1))
    assert kept >= 1 and len(list(out.glob(".validate-*.jsonl"))) == 1
    monkeypatch.delenv("END_THIRD_CALL")
    assert main(command) == 0
    capsys.readouterr()
    assert calls.read_text().count("call") == 3 + (3 - kept)  # only the pairs not kept, measured again
    with open(out / "pairs.csv", newline="") as handle, open(whole / "pairs.csv", newline="") as reference:
        assert _without_times(list(csv.DictReader(handle))) == _without_times(list(csv.DictReader(reference)))
    sys.modules.pop("jsn_fail_plugin", None)


def test_a_worker_that_ends_without_out_says_nothing_was_kept(dataset, tmp_path, monkeypatch, capsys):
    spec = _plugin(tmp_path, monkeypatch, "import os; os._exit(0)")
    assert main(["validate", str(dataset), "--method", spec, "--num-proc", "2"]) == 1
    assert "after 0 pair(s); nothing was kept: run it again" in _one_error(capsys)


@pytest.mark.parametrize("num_proc", [0, -2, 1.5, True])
def test_worker_counts_that_are_not_whole_and_positive_are_refused_by_every_runner(dataset, tmp_path, num_proc):
    """validate_dataset(num_proc=0) ran in this process, while build_dataset refused it in the
    command line's words (an outside probe)."""
    from jsnsynth.quantify.batch import quantify_table
    from jsnsynth.synth.dataset import build_dataset
    from jsnsynth.synth.sources import PhantomSource

    message = r"worker processes \(num_proc, --num-proc\) must be a whole number of at least 1"
    for run in (lambda: validate_dataset(dataset, "poc", num_proc=num_proc),
                lambda: validate_real(tmp_path / "none", num_proc=num_proc),
                lambda: quantify_table(tmp_path / "none.csv", tmp_path / "out.csv", num_proc=num_proc),
                lambda: build_dataset(PhantomSource(n_joints=1, size_px=64, pixel_spacing_mm=0.7), tmp_path / "ds", 1,
                                      num_proc=num_proc)):
        with pytest.raises(InputError, match=message):
            run()
    assert not any(tmp_path.iterdir())
    if num_proc == 0:  # the limit likewise: 2.5 took 3 pairs, -1 said "no pairs to validate"
        for limit in (2.5, -1, 0):
            with pytest.raises(InputError, match="the limit on pairs must be a whole number of at least 1"):
                validate_dataset(dataset, "poc", limit=limit)


def test_validate_real_takes_the_crops_pixel_spacing(tmp_path, capsys):
    """validate-real's millimetres were at the nominal 0.175 mm/px, whatever the crops' spacing:
    `--pixel-spacing` states it, and the report says which was used."""
    joints = _toy_series(tmp_path)
    assert main(["validate-real", str(joints), "--method", "poc", "--limit-series", "1"]) == 0
    nominal = json.loads(capsys.readouterr().out)
    assert nominal["pixel_spacing_mm"] == 0.175 and nominal["pixel_spacing_source"].startswith("nominal (0.175 mm/px")
    assert main(["validate-real", str(joints), "--method", "poc", "--limit-series", "1", "--pixel-spacing", "0.35"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["pixel_spacing_mm"] == 0.35 and given["pixel_spacing_source"] == "option"
    assert given["sd_trials_mm_mean"] == pytest.approx(2.0 * nominal["sd_trials_mm_mean"], rel=1e-6)
    assert main(["validate-real", str(joints), "--pixel-spacing", "5"]) == 2
    # a report at one spacing is not rewritten by a run at another without a word
    out = str(tmp_path / "report")
    assert main(["validate-real", str(joints), "--method", "poc", "--limit-series", "1", "--out", out]) == 0
    capsys.readouterr()
    assert main(["validate-real", str(joints), "--method", "poc", "--limit-series", "1", "--pixel-spacing", "0.35",
                 "--out", out]) == 1
    assert "holds the report of another run" in capsys.readouterr().err
