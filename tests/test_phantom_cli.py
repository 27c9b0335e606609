"""``jsnsynth phantom``: on-disk format, determinism, resuming, and one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from jsnsynth.cli import main
from jsnsynth.synth import phantom_io
from jsnsynth.synth.io import decode_png, read_float_tiff
from jsnsynth.synth.layers import PIXEL_SPACING_RANGE_MM
from jsnsynth.synth.phantom import PhantomParams, check_phantom_field, render_phantom
from jsnsynth.synth.phantom_io import SAMPLE_FILES, read_phantom_sample, write_phantom_samples
from jsnsynth.synth.xray import ImagingParams, quantize, render_radiograph

SMALL = ["--size", "64", "--pixel-spacing", "0.7"]


def _run(args: list[str]) -> int:
    return main(["phantom", *args])


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "phantoms"
    assert _run(["--n", "2", "--out", str(out), "--seed", "5", *SMALL, "--joint-type", "mcp"]) == 0
    assert str(out) in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["phantom_00000", "phantom_00001"]
    sample = out / "phantom_00001"
    assert sorted(p.name for p in sample.iterdir()) == sorted(SAMPLE_FILES)

    layers, record = read_phantom_sample(sample)
    assert record["index"] == 1 and record["seed"] == 5 and record["seed_sequence"] == [5, 1]
    assert record["phantom_params"]["joint_type"] == "mcp"
    assert record["pixel_spacing_mm"] == 0.7 and record["size_px"] == 64
    assert record["jsw_mm"] == record["phantom_params"]["jsw_mm"]
    assert record["jsnsynth_version"]
    # The record replays the sample exactly: layers, masks and the 16-bit radiograph.
    params = PhantomParams.from_dict(record["phantom_params"])
    again = render_phantom(params)
    for name in ("soft", "upper", "lower"):
        assert np.array_equal(read_float_tiff(sample / f"{name}.tiff"), getattr(again, name))
    for name in ("upper", "lower"):
        mask = decode_png((sample / f"{name}_mask.png").read_bytes())
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, getattr(again, name) > 0)
    radiograph = decode_png((sample / "radiograph.png").read_bytes())
    assert radiograph.dtype == np.uint16 and radiograph.shape == (64, 64)
    imaging = ImagingParams.from_dict(record["imaging_params"])
    assert not imaging.noise_free
    assert np.array_equal(radiograph, quantize(render_radiograph(again.attenuation(), imaging), 16))
    assert layers.joint_center_xy == again.joint_center_xy


def test_same_seed_same_bytes_and_no_noise(tmp_path: Path) -> None:
    args = ["--n", "2", "--seed", "9", *SMALL]
    assert _run([*args, "--out", str(tmp_path / "a")]) == 0
    assert _run([*args, "--out", str(tmp_path / "b")]) == 0
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
    assert _run([*args, "--no-noise", "--out", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "phantom_00000" / "record.json").read_text())
    assert ImagingParams.from_dict(record["imaging_params"]).noise_free


def test_rerun_resumes_and_skips_complete_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    assert _run(["--n", "1", "--out", str(out), *SMALL]) == 0
    first = (out / "phantom_00000" / "record.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(["--n", "3", "--out", str(out), *SMALL]) == 0
    assert "1 already there" in capsys.readouterr().out
    assert (out / "phantom_00000" / "record.json").stat().st_mtime_ns == first
    assert len(list(out.iterdir())) == 3
    # fewer than the folder holds: refused (it said "1 already there" and left all 3)
    assert _run(["--n", "1", "--out", str(out), *SMALL]) == 1
    err = _one_error_line(capsys)
    assert "holds samples up to phantom_00002, beyond the 1 asked for; give --n 3 or more" in err
    assert len(list(out.iterdir())) == 3
    # a sample renamed beyond the others: named, with the --n that takes it (it said "holds 3
    # samples, more than the 3 asked for")
    (out / "phantom_00002").rename(out / "phantom_00007")
    assert _run(["--n", "3", "--out", str(out), *SMALL]) == 1
    assert "holds samples up to phantom_00007, beyond the 3 asked for; give --n 8 or more" in _one_error_line(capsys)
    # with --n 8, the sample of another place is found before anything is written
    assert _run(["--n", "8", "--out", str(out), *SMALL]) == 1
    assert "phantom_00007: its record is of sample 2, not 7" in _one_error_line(capsys)
    assert sorted(entry.name for entry in out.iterdir()) == ["phantom_00000", "phantom_00001", "phantom_00007"]


def test_interrupted_run_leaves_no_partial_sample_and_resumes(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "p"
    original = phantom_io.encode_float_tiff
    calls = {"n": 0}

    def failing_encode(values: np.ndarray) -> bytes:
        calls["n"] += 1
        if calls["n"] == 5:  # inside the second sample, after some of its files were written
            raise KeyboardInterrupt
        return original(values)

    monkeypatch.setattr(phantom_io, "encode_float_tiff", failing_encode)
    assert _run(["--n", "3", "--out", str(out), *SMALL]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["phantom_00000"]  # no partial folder left
    monkeypatch.setattr(phantom_io, "encode_float_tiff", original)
    assert _run(["--n", "3", "--out", str(out), *SMALL]) == 0
    assert _run(["--n", "3", "--out", str(tmp_path / "clean"), *SMALL]) == 0
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "clean")


def test_leftover_partial_folders_are_removed_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "p"
    (out / ".phantom_00000.abc123.part").mkdir(parents=True)
    (out / ".phantom_00000.abc123.part" / "soft.tiff").write_bytes(b"half")
    assert _run(["--n", "1", "--out", str(out), *SMALL]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["phantom_00000"]


def test_folder_with_unrelated_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert _run(["--n", "1", "--out", str(tmp_path), *SMALL]) == 1
    err = _one_error_line(capsys)
    assert err.startswith("jsnsynth: error:") and "not phantom samples" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_path_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert _run(["--n", "1", "--out", str(target), *SMALL]) == 1
    assert "not a folder" in _one_error_line(capsys)


def test_samples_of_another_run_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    assert _run(["--n", "1", "--out", str(out), "--seed", "1", *SMALL]) == 0
    capsys.readouterr()
    assert _run(["--n", "1", "--out", str(out), "--seed", "2", *SMALL]) == 1
    # named by what differs (it listed all the earlier settings)
    assert "written by a run with other settings (--seed 1, now 2); use a new --out folder" in \
        _one_error_line(capsys)
    assert _run(["--n", "1", "--out", str(out), "--seed", "1", "--no-noise", *SMALL]) == 1
    assert "(--noise, now --no-noise)" in _one_error_line(capsys)
    (out / "phantom_00000").rename(out / "phantom_00001")  # a sample renamed: same settings, other place
    assert _run(["--n", "2", "--out", str(out), "--seed", "1", *SMALL]) == 1
    assert "phantom_00001: its record is of sample 0, not 1 (a renamed or copied folder)" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "args",
    [
        ["--n", "0"],
        ["--n", "-3"],
        ["--n", "1", "--size", "8"],
        ["--n", "1", "--pixel-spacing", "0"],
        ["--n", "1", "--size", "16"],  # --help once promised 16; the phantom needs 64
        ["--n", "1", "--size", "5000"],  # once taken: 7 s and 2 GB for an empty field
        ["--n", "1", "--pixel-spacing", "1e-9"],  # once accepted: the range shared with quantify and separate
        ["--n", "1", "--joint-type", "knee"],
        ["--n", "1", "--seed", "-1"],
    ],
)
def test_bad_options_are_usage_errors(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p"
    assert _run([*args, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("jsnsynth: error: Invalid value")
    assert not out.exists()


def test_library_rejects_n_below_one(tmp_path: Path) -> None:
    from jsnsynth.errors import InputError

    with pytest.raises(InputError, match=">= 1"):
        write_phantom_samples(tmp_path / "p", 0)


@pytest.mark.parametrize("size_px", [63, 4097, 100.5, float("nan"), float("inf")])
def test_library_rejects_sizes_out_of_range(size_px: float, tmp_path: Path) -> None:
    from jsnsynth.errors import InputError

    with pytest.raises(InputError, match="64 to 4096 pixels"):
        write_phantom_samples(tmp_path / "p", 1, size_px=size_px)
    assert not (tmp_path / "p").exists()


def test_phantom_field_too_small_is_refused_and_one_wider_or_narrower_than_a_crop_is_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the phantom command wrote 1.3 mm fields (no joint in them) that the dataset source refused
    out = tmp_path / "small"
    assert main(["phantom", "--n", "1", "--size", "64", "--pixel-spacing", "0.02", "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "frames 1.3 mm, too little of a joint" in err[0] and not out.exists()
    # --size 1024 at the default spacing frames 179 mm: a cone of a finger, said so, still written
    with pytest.warns(UserWarning, match=r"frames 179 mm, more than a joint's crop .*\(0\.04375 mm/px"):
        check_phantom_field(1024, 0.175)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_phantom_field(512, 0.175)  # 90 mm: no word
        check_phantom_field(256, 0.12)  # 30.7 mm: the widest joints' sides just cut
    # --size 64 at the default spacing frames 11 mm, less than a joint: its edges cut the bones
    # (noise-free pairs measured 0.05 px RMSE against 0.007 at 256 px, without a word)
    with pytest.warns(UserWarning, match=r"frames 11\.2 mm, under 30 mm: its bones, 26-41 mm .*\(0\.7 mm/px frames what"):
        check_phantom_field(64, 0.175)
    with pytest.warns(UserWarning, match=r"a phantom of 256 px at 0\.05 mm/px frames 12\.8 mm, under 30 mm"):
        check_phantom_field(256, 0.05)
    # the phantom's millimetres are twice anatomy's: 256 px at 0.1 mm/px (26 mm) cut its bones into
    # bands along which fits slid by 10 px, 0.8 px of JSN off unflagged, without a word (15 mm was
    # the limit, an anatomical joint's); so were 96 px at the default spacing, 0.015 px RMSE
    for size_px, spacing_mm, field in ((256, 0.1, r"25\.6"), (96, 0.175, r"16\.8"), (171, 0.175, r"29\.9")):
        with pytest.warns(UserWarning, match=rf"frames {field} mm, under 30 mm: its bones, 26-41 mm across in the "
                                             "phantom's millimetres"):
            check_phantom_field(size_px, spacing_mm)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="a folder no one can make a folder in (Linux /proc)")
def test_an_output_folder_that_cannot_be_made_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # mkdir's FileNotFoundError reached the user through the catch-all line, with its type name
    assert main(["phantom", "--n", "1", "--out", "/proc/jsnsynth-phantoms"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["jsnsynth: error: cannot make the folder /proc/jsnsynth-phantoms: No such file or directory"]


def test_the_advice_on_a_wide_field_is_a_spacing_the_options_take():
    # --size 4096 advised 0.01094 mm/px, which --pixel-spacing then refused (its range starts at 0.02)
    with pytest.warns(UserWarning, match=r"frames 717 mm, .*\(0\.02 mm/px, the finest taken, frames 82 mm\)"):
        check_phantom_field(4096, 0.175)
    assert PIXEL_SPACING_RANGE_MM[0] == 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_phantom_field(4096, 0.02)  # the advice taken: no warning
